/**
 * ext2/3/4 block groups: where the group descriptors are (plain, or spread
 * over meta groups with meta_bg), which groups carry superblock backups
 * (sparse_super, sparse_super2), the descriptors themselves with their
 * checksums (crc16 with uninit_bg, crc32c with metadata_csum), and the
 * blocks every group's metadata occupies. The rules follow the kernel and
 * e2fsprogs (`ext2fs_bg_has_super`, `ext2fs_descriptor_block_loc2`,
 * `ext2fs_super_and_bgd_loc2`).
 *
 * ```text
 * group descriptor (32 bytes, or s_desc_size with 64bit), little-endian:
 *  0x00 block bitmap lo   0x04 inode bitmap lo   0x08 inode table lo
 *  0x0c free blocks lo    0x12 flags (1 INODE_UNINIT, 2 BLOCK_UNINIT)
 *  0x18 block bitmap csum lo (u16)                0x1e descriptor checksum (u16)
 *  0x20 block bitmap hi   0x24 inode bitmap hi   0x28 inode table hi
 *  0x2c free blocks hi    0x38 block bitmap csum hi (u16)
 * ```
 *
 * @module
 */

import { crc16, crc32cRaw } from "../../bytes/crc.ts";
import { hex, Refusal } from "../_region.ts";
import {
  COMPAT,
  type Ext4Superblock,
  has,
  INCOMPAT,
  RO_COMPAT,
} from "./superblock.ts";

/** Group descriptor field offsets. */
export const GD = {
  BLOCK_BITMAP_LO: 0x00,
  INODE_BITMAP_LO: 0x04,
  INODE_TABLE_LO: 0x08,
  FREE_BLOCKS_LO: 0x0c,
  FLAGS: 0x12,
  BLOCK_BITMAP_CSUM_LO: 0x18,
  CHECKSUM: 0x1e,
  BLOCK_BITMAP_HI: 0x20,
  INODE_BITMAP_HI: 0x24,
  INODE_TABLE_HI: 0x28,
  FREE_BLOCKS_HI: 0x2c,
  BLOCK_BITMAP_CSUM_HI: 0x38,
} as const;

/** `bg_flags`: the block bitmap is not initialized; the kernel computes it. */
export const BG_BLOCK_UNINIT = 0x0002;
/** Descriptors at least this long carry all 32 bits of the bitmap checksum. */
const BLOCK_BITMAP_CSUM_HI_END = 0x3a;

/**
 * The group descriptors, one entry per group, appended as each is checked
 * (so that memory follows the descriptors actually read, not the group
 * count a superblock claims). Block numbers are filesystem blocks.
 */
export interface GroupTable {
  /** Block bitmap location. */
  blockBitmap: number[];
  /** Inode bitmap location. */
  inodeBitmap: number[];
  /** First block of the inode table. */
  inodeTable: number[];
  /** Free blocks the descriptor counts. */
  freeBlocks: number[];
  /** `bg_flags`. */
  flags: number[];
  /** Stored block bitmap checksum (16 or 32 bits). */
  bitmapCsum: number[];
}

/** A group table with no group yet. */
export function emptyGroupTable(): GroupTable {
  return {
    blockBitmap: [],
    inodeBitmap: [],
    inodeTable: [],
    freeBlocks: [],
    flags: [],
    bitmapCsum: [],
  };
}

/**
 * Whether group descriptors carry checksums (uninit_bg or metadata_csum):
 * only then are the BLOCK_UNINIT flags meaningful.
 */
export function hasGroupChecksums(sb: Ext4Superblock): boolean {
  return has(sb.roCompat, RO_COMPAT.GDT_CSUM | RO_COMPAT.METADATA_CSUM);
}

/** First block of group `g`. */
export function groupFirstBlock(sb: Ext4Superblock, g: number): number {
  return sb.firstDataBlock + g * sb.blocksPerGroup;
}

/** Blocks in group `g` (the last group may be short). */
export function groupBlocks(sb: Ext4Superblock, g: number): number {
  return Math.min(sb.blocksPerGroup, sb.blocksCount - groupFirstBlock(sb, g));
}

/** Blocks of one group's inode table. */
export function inodeTableBlocks(sb: Ext4Superblock): number {
  return Math.ceil(sb.inodesPerGroup * sb.inodeSize / sb.blockSize);
}

function descPerBlock(sb: Ext4Superblock): number {
  return sb.blockSize / sb.descSize;
}

/** Blocks the group descriptors take. */
export function descriptorBlockCount(sb: Ext4Superblock): number {
  return Math.ceil(sb.groupCount / descPerBlock(sb));
}

function isPowerOf(a: number, b: number): boolean {
  for (;;) {
    if (a < b) return false;
    if (a === b) return true;
    if (a % b !== 0) return false;
    a /= b;
  }
}

/**
 * Whether group `g` holds a superblock backup: every group without
 * sparse_super; groups 0, 1 and powers of 3, 5 and 7 with it; group 0 and
 * the two `s_backup_bgs` with sparse_super2.
 *
 * @param sb The superblock.
 * @param g The group.
 * @returns Whether it has a superblock copy.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { hasSuper } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * // sparse_super, no sparse_super2
 * const sb = { compat: 0, roCompat: 0x1 } as Ext4Superblock;
 * assert.deepStrictEqual([0, 1, 2, 3, 9, 25, 49, 50].map((g) => hasSuper(sb, g)),
 *   [true, true, false, true, true, true, true, false]);
 * ```
 */
export function hasSuper(sb: Ext4Superblock, g: number): boolean {
  if (g === 0) return true;
  if (has(sb.compat, COMPAT.SPARSE_SUPER2)) {
    return g === sb.backupBgs[0] || g === sb.backupBgs[1];
  }
  if (g <= 1 || !has(sb.roCompat, RO_COMPAT.SPARSE_SUPER)) return true;
  if (g % 2 === 0) return false;
  return isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7);
}

/**
 * Where descriptor block `i` of the primary copy is: right after the
 * superblock, or (meta_bg, from `s_first_meta_bg` on) in the first group
 * of meta group `i`, after its superblock backup if it has one.
 *
 * @param sb The superblock.
 * @param i Descriptor block index.
 * @returns Its block number.
 *
 * @example Without meta_bg, the table follows the superblock
 * ```ts
 * import assert from "node:assert";
 * import { descriptorBlock } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * const sb = { firstDataBlock: 0, incompat: 0 } as Ext4Superblock;
 * assert.strictEqual(descriptorBlock(sb, 2), 3);
 * ```
 */
export function descriptorBlock(sb: Ext4Superblock, i: number): number {
  if (!has(sb.incompat, INCOMPAT.META_BG) || i < sb.firstMetaBg) {
    return sb.firstDataBlock + i + 1;
  }
  const g = descPerBlock(sb) * i;
  return groupFirstBlock(sb, g) + (hasSuper(sb, g) ? 1 : 0);
}

/**
 * The blocks of group `g` that hold the superblock, its backups, the group
 * descriptors and the reserved GDT blocks (as `ext2fs_reserve_super_and_bgd`
 * marks them), as `[first, count]` pairs.
 *
 * @param sb The superblock.
 * @param g The group.
 * @returns The extents.
 *
 * @example Group 1 of a 4 KiB filesystem with one descriptor block and 63 reserved ones
 * ```ts
 * import assert from "node:assert";
 * import { superAndDescriptorExtents } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * const sb = { firstDataBlock: 0, blocksPerGroup: 32768, blocksCount: 262144, groupCount: 8,
 *   blockSize: 4096, descSize: 64, incompat: 0, compat: 0, roCompat: 1, reservedGdtBlocks: 63 } as Ext4Superblock;
 * assert.deepStrictEqual(superAndDescriptorExtents(sb, 1), [[32768, 1], [32769, 64]]);
 * assert.deepStrictEqual(superAndDescriptorExtents(sb, 2), []);
 * ```
 */
export function superAndDescriptorExtents(
  sb: Ext4Superblock,
  g: number,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const first = groupFirstBlock(sb, g);
  const metaBg = has(sb.incompat, INCOMPAT.META_BG);
  const oldDescBlocks = metaBg
    ? sb.firstMetaBg
    : descriptorBlockCount(sb) + sb.reservedGdtBlocks;
  const withSuper = hasSuper(sb, g);
  if (withSuper) out.push([first, 1]);
  const perBlock = descPerBlock(sb);
  if (!metaBg || Math.floor(g / perBlock) < sb.firstMetaBg) {
    if (withSuper && oldDescBlocks > 0) {
      const count = Math.min(oldDescBlocks, sb.blocksCount - (first + 1));
      if (count > 0) out.push([first + 1, count]);
    }
  } else {
    const r = g % perBlock;
    if (r === 0 || r === 1 || r === perBlock - 1) {
      out.push([first + (withSuper ? 1 : 0), 1]);
    }
  }
  return out;
}

function le32(n: number): Uint8Array {
  return Uint8Array.of(n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24);
}

/**
 * The checksum a group descriptor should carry: crc32c (low 16 bits) of
 * seed, group number and descriptor with metadata_csum; crc16 of UUID,
 * group number and descriptor with uninit_bg (gdt_csum).
 *
 * @param sb The superblock.
 * @param g The group.
 * @param desc The descriptor's `descSize` bytes.
 * @returns The 16-bit checksum.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { descriptorChecksum } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * const sb = { roCompat: 0x400, csumSeed: 0x12345678, descSize: 32 } as Ext4Superblock;
 * const desc = new Uint8Array(32);
 * assert.notStrictEqual(descriptorChecksum(sb, 0, desc), descriptorChecksum(sb, 1, desc));
 * ```
 */
export function descriptorChecksum(
  sb: Ext4Superblock,
  g: number,
  desc: Uint8Array,
): number {
  const tail = sb.descSize > 0x20 ? desc.subarray(0x20, sb.descSize) : null;
  if (has(sb.roCompat, RO_COMPAT.METADATA_CSUM)) {
    let c = crc32cRaw(sb.csumSeed, le32(g));
    c = crc32cRaw(c, desc.subarray(0, GD.CHECKSUM));
    c = crc32cRaw(c, new Uint8Array(2));
    if (tail) c = crc32cRaw(c, tail);
    return c & 0xffff;
  }
  let c = crc16(0xffff, sb.uuid);
  c = crc16(c, le32(g));
  c = crc16(c, desc.subarray(0, GD.CHECKSUM));
  if (tail && has(sb.incompat, INCOMPAT.BIT64)) c = crc16(c, tail);
  return c;
}

/**
 * The checksum a block bitmap should carry with metadata_csum: crc32c of
 * the seed and the bitmap's `blocksPerGroup / 8` bytes, compared in full
 * with 64-byte descriptors and in its low 16 bits with 32-byte ones.
 *
 * @param sb The superblock.
 * @param bitmap The bitmap block.
 * @returns The checksum, masked as the descriptor stores it.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { bitmapChecksum } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * const sb = { csumSeed: 0xffffffff, blocksPerGroup: 8192, descSize: 32 } as Ext4Superblock;
 * assert.ok(bitmapChecksum(sb, new Uint8Array(1024)) <= 0xffff);
 * ```
 */
export function bitmapChecksum(sb: Ext4Superblock, bitmap: Uint8Array): number {
  const c = crc32cRaw(sb.csumSeed, bitmap.subarray(0, sb.blocksPerGroup / 8));
  return sb.descSize >= BLOCK_BITMAP_CSUM_HI_END ? c : c & 0xffff;
}

/**
 * Parses group descriptors and appends them to a table: the descriptors in
 * `bytes` belong to the groups that follow those already in `table`. Each
 * is checked: its checksum (uninit_bg, metadata_csum), its bitmaps and
 * inode table inside the filesystem (and inside the group itself without
 * flex_bg, as the kernel checks), its free count at most its group's
 * blocks. The first descriptor that fails stops the parse.
 *
 * @param sb The superblock.
 * @param bytes Descriptor blocks back to back, in index order (descriptors
 * past the last group are ignored).
 * @param table The table to append to.
 * @returns The table.
 * @throws {Refusal} For a checksum mismatch or a location out of range.
 *
 * @example A descriptor that points outside the filesystem
 * ```ts
 * import assert from "node:assert";
 * import { parseGroupDescriptors } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * const sb = { blockSize: 1024, descSize: 32, groupCount: 1, firstDataBlock: 1, blocksPerGroup: 8192,
 *   blocksCount: 8193, inodesPerGroup: 128, inodeSize: 128, incompat: 0, roCompat: 0 } as Ext4Superblock;
 * const bytes = new Uint8Array(1024);
 * new DataView(bytes.buffer).setUint32(0, 99999, true); // block bitmap
 * assert.throws(() => parseGroupDescriptors(sb, bytes), /block bitmap of group 0 at block 99999/);
 * ```
 */
export function parseGroupDescriptors(
  sb: Ext4Superblock,
  bytes: Uint8Array,
  table: GroupTable = emptyGroupTable(),
): GroupTable {
  const t = table;
  const first = t.blockBitmap.length;
  const end = Math.min(
    sb.groupCount,
    first + Math.floor(bytes.length / sb.descSize),
  );
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const wide = sb.descSize >= 64;
  const checked = hasGroupChecksums(sb);
  const flex = has(sb.incompat, INCOMPAT.FLEX_BG);
  const itb = inodeTableBlocks(sb);
  for (let g = first; g < end; g++) {
    const at = (g - first) * sb.descSize;
    const u32 = (o: number) => view.getUint32(at + o, true);
    const u16 = (o: number) => view.getUint16(at + o, true);
    const loc = (lo: number, hi: number) =>
      (wide ? u32(hi) * 0x1_0000_0000 : 0) + u32(lo);
    if (checked) {
      const stored = u16(GD.CHECKSUM);
      const actual = descriptorChecksum(
        sb,
        g,
        bytes.subarray(at, at + sb.descSize),
      );
      if (stored !== actual) {
        throw new Refusal(
          `group descriptor ${g} checksum ${
            hex(stored)
          } does not match its contents (${hex(actual)})`,
        );
      }
    }
    const blockBitmap = loc(GD.BLOCK_BITMAP_LO, GD.BLOCK_BITMAP_HI);
    const inodeBitmap = loc(GD.INODE_BITMAP_LO, GD.INODE_BITMAP_HI);
    const inodeTable = loc(GD.INODE_TABLE_LO, GD.INODE_TABLE_HI);
    const freeBlocks = (wide ? u16(GD.FREE_BLOCKS_HI) * 0x10000 : 0) +
      u16(GD.FREE_BLOCKS_LO);
    const lo = flex ? sb.firstDataBlock : groupFirstBlock(sb, g);
    const hi = flex ? sb.blocksCount : lo + groupBlocks(sb, g);
    const where = flex ? "the filesystem" : `its group`;
    for (
      const [what, start, count] of [
        ["block bitmap", blockBitmap, 1],
        ["inode bitmap", inodeBitmap, 1],
        ["inode table", inodeTable, itb],
      ] as const
    ) {
      if (start < lo || start + count > hi) {
        throw new Refusal(
          `${what} of group ${g} at block ${start} lies outside ${where} (blocks ${lo}-${
            hi - 1
          })`,
        );
      }
    }
    if (freeBlocks > groupBlocks(sb, g)) {
      throw new Refusal(
        `group ${g} counts ${freeBlocks} free blocks, more than its ${
          groupBlocks(sb, g)
        }`,
      );
    }
    t.blockBitmap.push(blockBitmap);
    t.inodeBitmap.push(inodeBitmap);
    t.inodeTable.push(inodeTable);
    t.freeBlocks.push(freeBlocks);
    t.flags.push(checked ? u16(GD.FLAGS) : 0);
    t.bitmapCsum.push(
      (sb.descSize >= BLOCK_BITMAP_CSUM_HI_END
        ? u16(GD.BLOCK_BITMAP_CSUM_HI) * 0x10000
        : 0) + u16(GD.BLOCK_BITMAP_CSUM_LO),
    );
  }
  return t;
}

/**
 * Every block that holds filesystem metadata: superblocks, descriptor and
 * reserved GDT blocks, block and inode bitmaps, inode tables, the MMP
 * block. Sorted by
 * first block, as `[first, end)` pairs in one flat array.
 *
 * @param sb The superblock.
 * @param t The group table.
 * @returns `[first0, end0, first1, end1, ...]`.
 * @throws {Refusal} When two of them overlap (a descriptor pointing at
 * another structure).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { metadataExtents } from "./groups.ts";
 * import type { Ext4Superblock } from "./superblock.ts";
 * const sb = { firstDataBlock: 1, blocksPerGroup: 8192, blocksCount: 8193, groupCount: 1, blockSize: 1024,
 *   descSize: 32, incompat: 0, compat: 0, roCompat: 0, reservedGdtBlocks: 0, inodesPerGroup: 16, inodeSize: 128,
 *   mmpBlock: 0 } as Ext4Superblock;
 * const t = { blockBitmap: [3], inodeBitmap: [4], inodeTable: [5] } as unknown as Parameters<typeof metadataExtents>[1];
 * assert.deepStrictEqual([...metadataExtents(sb, t)], [1, 2, 2, 3, 3, 4, 4, 5, 5, 7]);
 * ```
 */
export function metadataExtents(
  sb: Ext4Superblock,
  t: GroupTable,
): Float64Array {
  const itb = inodeTableBlocks(sb);
  const starts: number[] = [];
  const ends: number[] = [];
  const add = (s: number, n: number) => {
    starts.push(s);
    ends.push(s + n);
  };
  for (let g = 0; g < sb.groupCount; g++) {
    for (const [s, n] of superAndDescriptorExtents(sb, g)) add(s, n);
    add(t.blockBitmap[g], 1);
    add(t.inodeBitmap[g], 1);
    add(t.inodeTable[g], itb);
  }
  if (sb.mmpBlock !== 0) add(sb.mmpBlock, 1);
  // meta_bg descriptor blocks before s_first_meta_bg are in group 0's extent.
  const order = Array.from(starts.keys()).sort((a, b) =>
    starts[a] - starts[b] || ends[a] - ends[b]
  );
  const out = new Float64Array(order.length * 2);
  let prevEnd = -1;
  order.forEach((i, k) => {
    if (starts[i] < prevEnd) {
      throw new Refusal(
        `metadata at block ${
          starts[i]
        } overlaps other metadata ending at block ${prevEnd - 1}`,
      );
    }
    prevEnd = ends[i];
    out[2 * k] = starts[i];
    out[2 * k + 1] = ends[i];
  });
  return out;
}
