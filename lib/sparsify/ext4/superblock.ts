/**
 * The ext2/3/4 superblock: the fields that decide where the group
 * descriptors and block bitmaps are, whether the filesystem is clean, and
 * which features it uses (Linux `struct ext4_super_block`, little-endian,
 * 1024 bytes at byte 1024 of the filesystem).
 *
 * @module
 */

import { crc32cRaw } from "../../bytes/crc.ts";
import { hex, Refusal } from "../_region.ts";

/** Byte offset of the superblock from the start of the filesystem. */
export const EXT4_SUPERBLOCK_OFFSET = 1024;
/** Size of the superblock. */
export const EXT4_SUPERBLOCK_SIZE = 1024;
/** `s_magic`. */
export const EXT4_MAGIC = 0xef53;
/** Most block groups handled (128 TiB with 4 KiB blocks). */
export const EXT4_MAX_GROUPS = 1 << 20;
/** `s_first_ino` of revision 0, and the least any revision may have. */
export const EXT4_GOOD_OLD_FIRST_INO = 11;
/** `s_creator_os` of GNU Hurd, whose inodes carry a translator block. */
const CREATOR_OS_HURD = 1;

/** Offsets of the superblock fields read here. */
export const SB = {
  /** `s_inodes_count` u32 */
  INODES_COUNT: 0x00,
  /** `s_blocks_count_lo` u32 */
  BLOCKS_COUNT_LO: 0x04,
  /** `s_free_blocks_count_lo` u32 */
  FREE_BLOCKS_COUNT_LO: 0x0c,
  /** `s_first_data_block` u32: 1 with 1 KiB blocks, else 0 */
  FIRST_DATA_BLOCK: 0x14,
  /** `s_log_block_size` u32: block size is 1024 << this */
  LOG_BLOCK_SIZE: 0x18,
  /** `s_log_cluster_size` u32 (bigalloc) */
  LOG_CLUSTER_SIZE: 0x1c,
  /** `s_blocks_per_group` u32 */
  BLOCKS_PER_GROUP: 0x20,
  /** `s_clusters_per_group` u32 */
  CLUSTERS_PER_GROUP: 0x24,
  /** `s_inodes_per_group` u32 */
  INODES_PER_GROUP: 0x28,
  /** `s_magic` u16 */
  MAGIC: 0x38,
  /** `s_state` u16: bit 0 cleanly unmounted, bit 1 errors, bit 2 orphans */
  STATE: 0x3a,
  /** `s_creator_os` u32: 0 Linux, 1 Hurd, 2 Masix, 3 FreeBSD, 4 Lites */
  CREATOR_OS: 0x48,
  /** `s_rev_level` u32: 0 original, 1 dynamic (inode size and features) */
  REV_LEVEL: 0x4c,
  /** `s_first_ino` u32: first inode that is not reserved (11 in revision 0) */
  FIRST_INO: 0x54,
  /** `s_inode_size` u16 */
  INODE_SIZE: 0x58,
  /** `s_block_group_nr` u16: the group a superblock copy is in (0 for the primary) */
  BLOCK_GROUP_NR: 0x5a,
  /** `s_feature_compat` u32 */
  FEATURE_COMPAT: 0x5c,
  /** `s_feature_incompat` u32 */
  FEATURE_INCOMPAT: 0x60,
  /** `s_feature_ro_compat` u32 */
  FEATURE_RO_COMPAT: 0x64,
  /** `s_uuid` 16 bytes */
  UUID: 0x68,
  /** `s_reserved_gdt_blocks` u16: blocks kept after the GDT for growth */
  RESERVED_GDT_BLOCKS: 0xce,
  /** `s_desc_size` u16: group descriptor size with 64bit */
  DESC_SIZE: 0xfe,
  /** `s_first_meta_bg` u32 */
  FIRST_META_BG: 0x104,
  /** `s_blocks_count_hi` u32 (64bit) */
  BLOCKS_COUNT_HI: 0x150,
  /** `s_free_blocks_count_hi` u32 (64bit) */
  FREE_BLOCKS_COUNT_HI: 0x158,
  /** `s_mmp_block` u64: the multi-mount protection block (mmp) */
  MMP_BLOCK: 0x168,
  /** `s_checksum_type` u8: 1 is crc32c */
  CHECKSUM_TYPE: 0x175,
  /** `s_backup_bgs` 2 x u32: the groups with backups under sparse_super2 */
  BACKUP_BGS: 0x24c,
  /** `s_checksum_seed` u32 (csum_seed) */
  CHECKSUM_SEED: 0x270,
  /** `s_checksum` u32: crc32c of the bytes before it */
  CHECKSUM: 0x3fc,
} as const;

/** `s_state` bits. */
export const STATE = {
  /** Cleanly unmounted. */
  VALID: 0x0001,
  /** Errors detected. */
  ERROR: 0x0002,
} as const;

/** `s_feature_compat` bits read here. */
export const COMPAT = {
  HAS_JOURNAL: 0x0004,
  SPARSE_SUPER2: 0x0200,
} as const;

/** `s_feature_incompat` bits. */
export const INCOMPAT = {
  COMPRESSION: 0x0001,
  FILETYPE: 0x0002,
  RECOVER: 0x0004,
  JOURNAL_DEV: 0x0008,
  META_BG: 0x0010,
  EXTENTS: 0x0040,
  BIT64: 0x0080,
  MMP: 0x0100,
  FLEX_BG: 0x0200,
  EA_INODE: 0x0400,
  DIRDATA: 0x1000,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;

/** `s_feature_ro_compat` bits. */
export const RO_COMPAT = {
  SPARSE_SUPER: 0x0001,
  LARGE_FILE: 0x0002,
  BTREE_DIR: 0x0004,
  HUGE_FILE: 0x0008,
  GDT_CSUM: 0x0010,
  DIR_NLINK: 0x0020,
  EXTRA_ISIZE: 0x0040,
  HAS_SNAPSHOT: 0x0080,
  QUOTA: 0x0100,
  BIGALLOC: 0x0200,
  METADATA_CSUM: 0x0400,
  REPLICA: 0x0800,
  READONLY: 0x1000,
  PROJECT: 0x2000,
  SHARED_BLOCKS: 0x4000,
  VERITY: 0x8000,
  ORPHAN_PRESENT: 0x10000,
} as const;

/**
 * Incompat features whose on-disk changes do not touch the block bitmaps
 * or are read here (META_BG, 64BIT, FLEX_BG, CSUM_SEED). RECOVER is known
 * but means the filesystem is not clean; COMPRESSION, JOURNAL_DEV and
 * DIRDATA are known and refused; any other bit is unknown and refused.
 */
const INCOMPAT_HANDLED = INCOMPAT.FILETYPE | INCOMPAT.META_BG |
  INCOMPAT.EXTENTS | INCOMPAT.BIT64 | INCOMPAT.MMP | INCOMPAT.FLEX_BG |
  INCOMPAT.EA_INODE | INCOMPAT.CSUM_SEED | INCOMPAT.LARGEDIR |
  INCOMPAT.INLINE_DATA | INCOMPAT.ENCRYPT | INCOMPAT.CASEFOLD;

/** Read-only-compatible features that leave the block bitmaps as read here. */
const RO_COMPAT_HANDLED = RO_COMPAT.SPARSE_SUPER | RO_COMPAT.LARGE_FILE |
  RO_COMPAT.BTREE_DIR | RO_COMPAT.HUGE_FILE | RO_COMPAT.GDT_CSUM |
  RO_COMPAT.DIR_NLINK | RO_COMPAT.EXTRA_ISIZE | RO_COMPAT.QUOTA |
  RO_COMPAT.METADATA_CSUM | RO_COMPAT.READONLY | RO_COMPAT.PROJECT |
  RO_COMPAT.SHARED_BLOCKS | RO_COMPAT.VERITY | RO_COMPAT.ORPHAN_PRESENT;

const NAMED: Array<[string, number, number]> = [
  ["compression", 0, INCOMPAT.COMPRESSION],
  [
    "journal_dev (an external journal, not a filesystem)",
    0,
    INCOMPAT.JOURNAL_DEV,
  ],
  ["dirdata", 0, INCOMPAT.DIRDATA],
  ["bigalloc", 1, RO_COMPAT.BIGALLOC],
  ["snapshot", 1, RO_COMPAT.HAS_SNAPSHOT],
  ["replica", 1, RO_COMPAT.REPLICA],
];

/** The superblock fields that matter for the free-block map. */
export interface Ext4Superblock {
  /** `ext2`, `ext3` or `ext4`, from the features. */
  flavor: "ext2" | "ext3" | "ext4";
  /** Block size in bytes. */
  blockSize: number;
  /** Blocks in the filesystem. */
  blocksCount: number;
  /** First block of group 0. */
  firstDataBlock: number;
  /** Blocks per group. */
  blocksPerGroup: number;
  /** Free blocks the superblock counts (`s_free_blocks_count`). */
  freeBlocksCount: number;
  /** Inodes per group. */
  inodesPerGroup: number;
  /** Inodes in the filesystem. */
  inodesCount: number;
  /** First inode that is not reserved. */
  firstIno: number;
  /** Inode size in bytes. */
  inodeSize: number;
  /** Block groups. */
  groupCount: number;
  /** Group descriptor size: 32, or `s_desc_size` with 64bit. */
  descSize: number;
  /** `s_feature_compat`. */
  compat: number;
  /** `s_feature_incompat`. */
  incompat: number;
  /** `s_feature_ro_compat`. */
  roCompat: number;
  /** `s_uuid`. */
  uuid: Uint8Array;
  /** `s_reserved_gdt_blocks`. */
  reservedGdtBlocks: number;
  /** `s_first_meta_bg`. */
  firstMetaBg: number;
  /** `s_backup_bgs` (sparse_super2). */
  backupBgs: [number, number];
  /** The MMP block with the mmp feature, else 0. */
  mmpBlock: number;
  /** Seed of the metadata checksums: `s_checksum_seed`, or crc32c(~0, uuid). */
  csumSeed: number;
}

/**
 * Whether a superblock field is set: `has(sb.incompat, INCOMPAT.FLEX_BG)`.
 *
 * @param field A feature word.
 * @param bit The feature bit.
 * @returns Whether it is set.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { has, INCOMPAT } from "./superblock.ts";
 * assert.ok(has(0x2c2, INCOMPAT.FLEX_BG));
 * ```
 */
export function has(field: number, bit: number): boolean {
  return (field & bit) !== 0;
}

/**
 * Whether 1024 bytes starting at byte 1024 of a region look like an ext
 * superblock (the magic only).
 *
 * @param head The first 2048 bytes of a region, or more.
 * @returns Whether `s_magic` is 0xef53.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isExt4 } from "./superblock.ts";
 * const head = new Uint8Array(2048);
 * head.set([0x53, 0xef], 1024 + 0x38);
 * assert.ok(isExt4(head));
 * ```
 */
export function isExt4(head: Uint8Array): boolean {
  const at = EXT4_SUPERBLOCK_OFFSET + SB.MAGIC;
  return head.length >= at + 2 &&
    (head[at] | (head[at + 1] << 8)) === EXT4_MAGIC;
}

/**
 * Names the flavor of an ext superblock from its features, as `blkid` does:
 * `ext4` with any ext4-only feature, else `ext3` with a journal, else
 * `ext2`.
 *
 * @param raw The 1024 superblock bytes.
 * @returns The flavor.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { ext4Flavor } from "./superblock.ts";
 * const raw = new Uint8Array(1024);
 * raw[0x4c] = 1; // s_rev_level 1
 * raw[0x5c] = 0x04; // has_journal
 * assert.strictEqual(ext4Flavor(raw), "ext3");
 * ```
 */
export function ext4Flavor(raw: Uint8Array): "ext2" | "ext3" | "ext4" {
  const v = new DataView(raw.buffer, raw.byteOffset, EXT4_SUPERBLOCK_SIZE);
  if (v.getUint32(SB.REV_LEVEL, true) === 0) return "ext2";
  const incompat = v.getUint32(SB.FEATURE_INCOMPAT, true);
  const roCompat = v.getUint32(SB.FEATURE_RO_COMPAT, true);
  if (
    has(
      incompat,
      INCOMPAT.EXTENTS | INCOMPAT.BIT64 | INCOMPAT.FLEX_BG |
        INCOMPAT.INLINE_DATA,
    ) ||
    has(
      roCompat,
      RO_COMPAT.HUGE_FILE | RO_COMPAT.GDT_CSUM | RO_COMPAT.DIR_NLINK |
        RO_COMPAT.EXTRA_ISIZE | RO_COMPAT.METADATA_CSUM,
    )
  ) return "ext4";
  return has(v.getUint32(SB.FEATURE_COMPAT, true), COMPAT.HAS_JOURNAL)
    ? "ext3"
    : "ext2";
}

/**
 * Parses the superblock and decides whether the filesystem can be mapped:
 * clean, no unknown or unsupported feature, checksum right (metadata_csum),
 * geometry consistent and inside the region (block count within the
 * partition, groups as the block count divides, inode count as the groups
 * multiply, descriptors and reserved GDT blocks fitting in group 0, free
 * count at most the block count), not made by GNU Hurd.
 *
 * @param raw The 1024 superblock bytes.
 * @param regionLength Bytes in the partition, when known.
 * @returns The fields the map needs.
 * @throws {Refusal} Saying why the filesystem is to be left as it is.
 *
 * @example A superblock whose magic is right and nothing else
 * ```ts
 * import assert from "node:assert";
 * import { parseExt4Superblock } from "./superblock.ts";
 * const raw = new Uint8Array(1024);
 * raw.set([0x53, 0xef], 0x38);
 * assert.throws(() => parseExt4Superblock(raw, 1 << 20), /not cleanly unmounted/);
 * ```
 */
export function parseExt4Superblock(
  raw: Uint8Array,
  regionLength: number | undefined,
): Ext4Superblock {
  const f = fieldsOf(raw);
  const { rev, compat, incompat, roCompat } = readFeatures(f);
  // The checksum first: with metadata_csum, nothing else is trusted before it.
  if (has(roCompat, RO_COMPAT.METADATA_CSUM)) checkChecksum(raw, f);
  checkState(f, rev, incompat);
  checkFeatures(incompat, roCompat);
  const blocks = readBlockGeometry(f, rev, incompat, regionLength);
  const { blockSize, groupCount } = blocks;
  const inodes = readInodeGeometry(f, rev, blockSize, groupCount);
  const descSize = readDescSize(f, incompat);
  const firstMetaBg = readDescriptorLayout(f, incompat, blocks, descSize);
  const creator = f.u32(SB.CREATOR_OS);
  if (creator === CREATOR_OS_HURD) {
    throw new Refusal(
      "made by GNU Hurd (s_creator_os 1), whose inodes may point at translator blocks that are not followed here",
    );
  }
  const freeBlocksCount = f.u32(SB.FREE_BLOCKS_COUNT_LO) +
    (has(incompat, INCOMPAT.BIT64)
      ? f.u32(SB.FREE_BLOCKS_COUNT_HI) * 0x1_0000_0000
      : 0);
  if (freeBlocksCount > blocks.blocksCount) {
    throw new Refusal(
      `s_free_blocks_count ${freeBlocksCount} is more than the ${blocks.blocksCount} blocks`,
    );
  }
  const uuid = raw.slice(SB.UUID, SB.UUID + 16);
  const csumSeed = has(incompat, INCOMPAT.CSUM_SEED)
    ? f.u32(SB.CHECKSUM_SEED)
    : crc32cRaw(0xffffffff, uuid);
  return {
    flavor: ext4Flavor(raw),
    ...blocks,
    freeBlocksCount,
    ...inodes,
    descSize,
    compat,
    incompat,
    roCompat,
    uuid,
    reservedGdtBlocks: f.u16(SB.RESERVED_GDT_BLOCKS),
    firstMetaBg,
    backupBgs: [f.u32(SB.BACKUP_BGS), f.u32(SB.BACKUP_BGS + 4)],
    mmpBlock: readMmpBlock(f, incompat, blocks),
    csumSeed,
  };
}

/** Little-endian readers of the superblock's fields. */
interface Fields {
  u32(at: number): number;
  u16(at: number): number;
}

function fieldsOf(raw: Uint8Array): Fields {
  const v = new DataView(raw.buffer, raw.byteOffset, EXT4_SUPERBLOCK_SIZE);
  return {
    u32: (at) => v.getUint32(at, true),
    u16: (at) => v.getUint16(at, true),
  };
}

/** The magic, the revision and the feature words (0 in revision 0). */
function readFeatures(
  f: Fields,
): { rev: number; compat: number; incompat: number; roCompat: number } {
  if (f.u16(SB.MAGIC) !== EXT4_MAGIC) {
    throw new Refusal(`superblock magic ${hex(f.u16(SB.MAGIC))} is not 0xef53`);
  }
  const rev = f.u32(SB.REV_LEVEL);
  return {
    rev,
    compat: rev === 0 ? 0 : f.u32(SB.FEATURE_COMPAT),
    incompat: rev === 0 ? 0 : f.u32(SB.FEATURE_INCOMPAT),
    roCompat: rev === 0 ? 0 : f.u32(SB.FEATURE_RO_COMPAT),
  };
}

/** metadata_csum: the checksum type and the superblock's crc32c. */
function checkChecksum(raw: Uint8Array, f: Fields): void {
  const type = raw[SB.CHECKSUM_TYPE];
  if (type !== 1) {
    throw new Refusal(`s_checksum_type ${type} is not 1 (crc32c)`);
  }
  const stored = f.u32(SB.CHECKSUM);
  const actual = crc32cRaw(0xffffffff, raw.subarray(0, SB.CHECKSUM));
  if (stored !== actual) {
    throw new Refusal(
      `superblock checksum ${hex(stored)} does not match its contents (${
        hex(actual)
      })`,
    );
  }
}

/** Cleanly unmounted, no errors, a known revision, the primary copy. */
function checkState(f: Fields, rev: number, incompat: number): void {
  const state = f.u16(SB.STATE);
  if (has(incompat, INCOMPAT.RECOVER)) {
    throw new Refusal(
      "not cleanly unmounted: the journal needs recovery (needs_recovery)",
    );
  }
  if (!has(state, STATE.VALID)) {
    throw new Refusal(`not cleanly unmounted (s_state ${hex(state)})`);
  }
  if (has(state, STATE.ERROR)) {
    throw new Refusal(`errors recorded (s_state ${hex(state)}): run e2fsck`);
  }
  if (rev > 1) throw new Refusal(`s_rev_level ${rev} is unknown`);
  if (rev !== 0 && f.u16(SB.BLOCK_GROUP_NR) !== 0) {
    throw new Refusal(
      `superblock is the backup copy of group ${
        f.u16(SB.BLOCK_GROUP_NR)
      } (s_block_group_nr), not the start of a filesystem`,
    );
  }
}

/** No feature that is not handled, named or unknown. */
function checkFeatures(incompat: number, roCompat: number): void {
  for (const [name, word, bit] of NAMED) {
    if (has(word === 0 ? incompat : roCompat, bit)) {
      throw new Refusal(`feature ${name} is not handled`);
    }
  }
  const unknownIncompat = incompat & ~INCOMPAT_HANDLED & ~INCOMPAT.RECOVER;
  if (unknownIncompat !== 0) {
    throw new Refusal(`unknown incompat feature bits ${hex(unknownIncompat)}`);
  }
  const unknownRo = roCompat & ~RO_COMPAT_HANDLED;
  if (unknownRo !== 0) {
    throw new Refusal(`unknown ro_compat feature bits ${hex(unknownRo)}`);
  }
}

/** Block size, blocks per group, block count and group count, checked. */
function readBlockGeometry(
  f: Fields,
  rev: number,
  incompat: number,
  regionLength: number | undefined,
): Pick<
  Ext4Superblock,
  | "blockSize"
  | "blocksCount"
  | "firstDataBlock"
  | "blocksPerGroup"
  | "groupCount"
> {
  const logBlock = f.u32(SB.LOG_BLOCK_SIZE);
  if (logBlock > 6) {
    throw new Refusal(`s_log_block_size ${logBlock} is out of range [0, 6]`);
  }
  const blockSize = 1024 << logBlock;
  if (f.u32(SB.LOG_CLUSTER_SIZE) !== logBlock) {
    throw new Refusal(
      `s_log_cluster_size ${
        f.u32(SB.LOG_CLUSTER_SIZE)
      } differs from s_log_block_size ${logBlock} without bigalloc`,
    );
  }
  const bpg = f.u32(SB.BLOCKS_PER_GROUP);
  if (bpg < 8 || bpg > 8 * blockSize || bpg % 8 !== 0) {
    throw new Refusal(
      `s_blocks_per_group ${bpg} is not a multiple of 8 in [8, ${
        8 * blockSize
      }]`,
    );
  }
  if (f.u32(SB.CLUSTERS_PER_GROUP) !== bpg && rev !== 0) {
    throw new Refusal(
      `s_clusters_per_group ${
        f.u32(SB.CLUSTERS_PER_GROUP)
      } differs from s_blocks_per_group ${bpg}`,
    );
  }
  const firstDataBlock = f.u32(SB.FIRST_DATA_BLOCK);
  if (firstDataBlock !== (blockSize === 1024 ? 1 : 0)) {
    throw new Refusal(
      `s_first_data_block ${firstDataBlock} is not ${
        blockSize === 1024 ? 1 : 0
      } for ${blockSize}-byte blocks`,
    );
  }
  const hi = has(incompat, INCOMPAT.BIT64) ? f.u32(SB.BLOCKS_COUNT_HI) : 0;
  const blocksCount = hi * 0x1_0000_0000 + f.u32(SB.BLOCKS_COUNT_LO);
  if (!Number.isSafeInteger(blocksCount * blockSize)) {
    throw new Refusal(`block count ${blocksCount} is out of range`);
  }
  if (blocksCount <= firstDataBlock) {
    throw new Refusal(`block count ${blocksCount} leaves no block groups`);
  }
  if (regionLength !== undefined && blocksCount * blockSize > regionLength) {
    throw new Refusal(
      `filesystem of ${
        blocksCount * blockSize
      } bytes is larger than its partition of ${regionLength} bytes: truncated`,
    );
  }
  const groupCount = Math.ceil((blocksCount - firstDataBlock) / bpg);
  if (groupCount > EXT4_MAX_GROUPS) {
    throw new Refusal(
      `${groupCount} block groups are more than the ${EXT4_MAX_GROUPS} handled`,
    );
  }
  return {
    blockSize,
    blocksCount,
    firstDataBlock,
    blocksPerGroup: bpg,
    groupCount,
  };
}

/** Inodes per group, inode size and the first free inode, checked against the inode count. */
function readInodeGeometry(
  f: Fields,
  rev: number,
  blockSize: number,
  groupCount: number,
): Pick<
  Ext4Superblock,
  "inodesPerGroup" | "inodeSize" | "inodesCount" | "firstIno"
> {
  const ipg = f.u32(SB.INODES_PER_GROUP);
  const inodeSize = rev === 0 ? 128 : f.u16(SB.INODE_SIZE);
  if (
    inodeSize < 128 || inodeSize > blockSize ||
    (inodeSize & (inodeSize - 1)) !== 0
  ) {
    throw new Refusal(`s_inode_size ${inodeSize} is out of range`);
  }
  if (ipg === 0 || ipg > 8 * blockSize) {
    throw new Refusal(
      `s_inodes_per_group ${ipg} is out of range [1, ${8 * blockSize}]`,
    );
  }
  const inodesCount = f.u32(SB.INODES_COUNT);
  if (inodesCount !== groupCount * ipg) {
    throw new Refusal(
      `s_inodes_count ${inodesCount} is not ${groupCount} groups x ${ipg} inodes`,
    );
  }
  const firstIno = rev === 0 ? EXT4_GOOD_OLD_FIRST_INO : f.u32(SB.FIRST_INO);
  if (firstIno < EXT4_GOOD_OLD_FIRST_INO) {
    throw new Refusal(
      `s_first_ino ${firstIno} is less than ${EXT4_GOOD_OLD_FIRST_INO}`,
    );
  }
  return { inodesPerGroup: ipg, inodeSize, inodesCount, firstIno };
}

/** The group descriptor size: 32, or s_desc_size with 64bit. */
function readDescSize(f: Fields, incompat: number): number {
  let descSize = 32;
  if (has(incompat, INCOMPAT.BIT64)) {
    descSize = f.u16(SB.DESC_SIZE);
    if (
      descSize < 64 || descSize > 1024 || (descSize & (descSize - 1)) !== 0
    ) {
      throw new Refusal(
        `s_desc_size ${descSize} is not a power of two in [64, 1024]`,
      );
    }
  }
  return descSize;
}

/**
 * `s_first_meta_bg`, after checking that the descriptor blocks kept after
 * the superblock (all of them, or those before the first meta group with
 * meta_bg) and the reserved GDT blocks fit in group 0, as mke2fs lays
 * them out.
 */
function readDescriptorLayout(
  f: Fields,
  incompat: number,
  blocks: Pick<
    Ext4Superblock,
    | "blockSize"
    | "groupCount"
    | "blocksPerGroup"
    | "blocksCount"
    | "firstDataBlock"
  >,
  descSize: number,
): number {
  const { blockSize, groupCount } = blocks;
  const descBlocks = Math.ceil(groupCount / (blockSize / descSize));
  const firstMetaBg = f.u32(SB.FIRST_META_BG);
  const metaBg = has(incompat, INCOMPAT.META_BG);
  if (metaBg && firstMetaBg > descBlocks) {
    throw new Refusal(
      `s_first_meta_bg ${firstMetaBg} is past the ${descBlocks} descriptor blocks`,
    );
  }
  const reserved = f.u16(SB.RESERVED_GDT_BLOCKS);
  if (reserved > blockSize / 4) {
    throw new Refusal(
      `s_reserved_gdt_blocks ${reserved} is more than ${blockSize / 4}`,
    );
  }
  const kept = metaBg ? firstMetaBg : descBlocks + reserved;
  const group0 = Math.min(
    blocks.blocksPerGroup,
    blocks.blocksCount - blocks.firstDataBlock,
  );
  if (1 + kept > group0) {
    throw new Refusal(
      `the superblock and ${kept} group descriptor blocks (${groupCount} groups of ${descSize}-byte descriptors${
        metaBg ? "" : `, ${reserved} reserved`
      }) do not fit in group 0 (${group0} blocks)`,
    );
  }
  return firstMetaBg;
}

/** `s_mmp_block` with the mmp feature (inside the filesystem), else 0. */
function readMmpBlock(
  f: Fields,
  incompat: number,
  blocks: Pick<Ext4Superblock, "blocksCount" | "firstDataBlock">,
): number {
  if (!has(incompat, INCOMPAT.MMP)) return 0;
  const block = f.u32(SB.MMP_BLOCK) + f.u32(SB.MMP_BLOCK + 4) * 0x1_0000_0000;
  if (block <= blocks.firstDataBlock || block >= blocks.blocksCount) {
    throw new Refusal(
      `s_mmp_block ${block} lies outside the filesystem (blocks ${
        blocks.firstDataBlock + 1
      }-${blocks.blocksCount - 1})`,
    );
  }
  return block;
}
