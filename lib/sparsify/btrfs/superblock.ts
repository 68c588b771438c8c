/**
 * The btrfs superblock (`struct btrfs_super_block`, 4096 bytes at byte
 * 65536 of the device): its checksum, geometry, feature bits and the
 * fields that lead to the trees. Only the primary copy is read, as the
 * kernel mounts from it.
 *
 * ```text
 * 0x000 csum[32]        0x020 fsid[16]          0x030 bytenr u64
 * 0x038 flags u64       0x040 magic "_BHRfS_M"  0x048 generation u64
 * 0x050 root u64        0x058 chunk_root u64    0x060 log_root u64
 * 0x070 total_bytes u64 0x078 bytes_used u64    0x088 num_devices u64
 * 0x090 sectorsize u32  0x094 nodesize u32      0x0a0 sys_chunk_array_size u32
 * 0x0a4 chunk_root_generation u64               0x0ac compat_flags u64
 * 0x0b4 compat_ro_flags u64                     0x0bc incompat_flags u64
 * 0x0c4 csum_type u16   0x0c6 root_level u8     0x0c7 chunk_root_level u8
 * 0x0c9 dev_item (98 bytes: devid u64, total_bytes u64, bytes_used u64,
 *       ..., uuid[16] at +66, fsid[16] at +82)
 * 0x12b label[256]      0x23b metadata_uuid[16]  0x32b sys_chunk_array[2048]
 * ```
 *
 * @module
 */

import { crc32cRaw } from "../../bytes/crc.ts";
import { hex, Refusal } from "../_region.ts";
import {
  BTRFS_MAGIC,
  CSUM_FIELD,
  MAX_LEVEL,
  SUPER_OFFSET,
  SUPER_SIZE,
  u64,
  u64Bits,
} from "./format.ts";

/** Superblock field offsets. */
export const SB = {
  CSUM: 0x00,
  FSID: 0x20,
  BYTENR: 0x30,
  FLAGS: 0x38,
  MAGIC: 0x40,
  GENERATION: 0x48,
  ROOT: 0x50,
  CHUNK_ROOT: 0x58,
  LOG_ROOT: 0x60,
  TOTAL_BYTES: 0x70,
  BYTES_USED: 0x78,
  NUM_DEVICES: 0x88,
  SECTORSIZE: 0x90,
  NODESIZE: 0x94,
  SYS_CHUNK_ARRAY_SIZE: 0xa0,
  CHUNK_ROOT_GENERATION: 0xa4,
  COMPAT_FLAGS: 0xac,
  COMPAT_RO_FLAGS: 0xb4,
  INCOMPAT_FLAGS: 0xbc,
  CSUM_TYPE: 0xc4,
  ROOT_LEVEL: 0xc6,
  CHUNK_ROOT_LEVEL: 0xc7,
  DEV_ITEM: 0xc9,
  LABEL: 0x12b,
  METADATA_UUID: 0x23b,
  SYS_CHUNK_ARRAY: 0x32b,
} as const;
/** Most bytes of the system chunk array. */
export const SYS_CHUNK_ARRAY_MAX = 2048;

/** `dev_item` field offsets (in the superblock and in DEV_ITEMs). */
export const DEV_ITEM = {
  DEVID: 0,
  TOTAL_BYTES: 8,
  BYTES_USED: 16,
  UUID: 66,
  FSID: 82,
  SIZE: 98,
} as const;

/** `incompat_flags` bits. */
export const INCOMPAT = {
  MIXED_BACKREF: 1n << 0n,
  DEFAULT_SUBVOL: 1n << 1n,
  MIXED_GROUPS: 1n << 2n,
  COMPRESS_LZO: 1n << 3n,
  COMPRESS_ZSTD: 1n << 4n,
  BIG_METADATA: 1n << 5n,
  EXTENDED_IREF: 1n << 6n,
  RAID56: 1n << 7n,
  SKINNY_METADATA: 1n << 8n,
  NO_HOLES: 1n << 9n,
  METADATA_UUID: 1n << 10n,
  RAID1C34: 1n << 11n,
  ZONED: 1n << 12n,
  EXTENT_TREE_V2: 1n << 13n,
  RAID_STRIPE_TREE: 1n << 14n,
  SIMPLE_QUOTA: 1n << 16n,
  REMAP_TREE: 1n << 17n,
} as const;
/** Incompat features that change nothing this reader relies on. */
const INCOMPAT_HANDLED = INCOMPAT.MIXED_BACKREF | INCOMPAT.DEFAULT_SUBVOL |
  INCOMPAT.MIXED_GROUPS | INCOMPAT.COMPRESS_LZO | INCOMPAT.COMPRESS_ZSTD |
  INCOMPAT.BIG_METADATA | INCOMPAT.EXTENDED_IREF | INCOMPAT.SKINNY_METADATA |
  INCOMPAT.NO_HOLES | INCOMPAT.METADATA_UUID;
/** Incompat features known but not handled: the filesystem is left as it is. */
const INCOMPAT_REFUSED: ReadonlyArray<[bigint, string]> = [
  [INCOMPAT.RAID56, "raid56"],
  [INCOMPAT.RAID1C34, "raid1c34"],
  [INCOMPAT.ZONED, "zoned"],
  [INCOMPAT.EXTENT_TREE_V2, "extent-tree-v2"],
  [INCOMPAT.RAID_STRIPE_TREE, "raid-stripe-tree"],
  [INCOMPAT.SIMPLE_QUOTA, "simple quota"],
  [INCOMPAT.REMAP_TREE, "remap-tree"],
];

/** `compat_ro_flags` bits, all handled. */
export const COMPAT_RO = {
  FREE_SPACE_TREE: 1n << 0n,
  FREE_SPACE_TREE_VALID: 1n << 1n,
  VERITY: 1n << 2n,
  BLOCK_GROUP_TREE: 1n << 3n,
} as const;
const COMPAT_RO_HANDLED = COMPAT_RO.FREE_SPACE_TREE |
  COMPAT_RO.FREE_SPACE_TREE_VALID | COMPAT_RO.VERITY |
  COMPAT_RO.BLOCK_GROUP_TREE;

/** Superblock `flags` bits that say the filesystem is not a plain one. */
const SUPER_FLAGS: ReadonlyArray<[bigint, string]> = [
  [1n << 2n, "errors recorded (superblock flag ERROR)"],
  [1n << 32n, "a seed device (superblock flag SEEDING)"],
  [1n << 33n, "a metadata dump without data (superblock flag METADUMP)"],
  [1n << 34n, "a metadata dump without data (superblock flag METADUMP_V2)"],
  [1n << 35n, "an fsid change in progress (superblock flag CHANGING_FSID)"],
  [1n << 36n, "an fsid change in progress (superblock flag CHANGING_FSID_V2)"],
  [1n << 38n, "a conversion in progress (superblock flag CHANGING_BG_TREE)"],
  [1n << 39n, "a conversion in progress (superblock flag CHANGING_DATA_CSUM)"],
  [1n << 40n, "a conversion in progress (superblock flag CHANGING_META_CSUM)"],
];
/** Superblock `flags` bits that are harmless: WRITTEN, RELOC. */
const SUPER_FLAGS_OK = 0x3n;

/** `csum_type` names; only crc32c (0) is verified here. */
const CSUM_TYPES = ["crc32c", "xxhash64", "sha256", "blake2b"];

/** What the rest of the reader needs from the superblock, checked. */
export interface BtrfsSuperblock {
  /** The filesystem UUID. */
  fsid: Uint8Array;
  /** The UUID in tree block headers (metadata_uuid, or the fsid). */
  metadataFsid: Uint8Array;
  label: string;
  generation: number;
  /** Logical address, level and generation of the root tree's root. */
  root: number;
  rootLevel: number;
  chunkRoot: number;
  chunkRootLevel: number;
  chunkRootGeneration: number;
  /** Bytes of the filesystem (of its one device). */
  totalBytes: number;
  /** Bytes allocated to extents, all block groups together (logical). */
  bytesUsed: number;
  sectorsize: number;
  nodesize: number;
  incompat: bigint;
  compatRo: bigint;
  /** The device: id, size, bytes in dev extents, UUID. */
  devid: number;
  devTotalBytes: number;
  devBytesUsed: number;
  devUuid: Uint8Array;
  /** The system chunk array (bytes the sys_chunk_array_size says). */
  sysChunkArray: Uint8Array;
}

/**
 * Whether `head` (a partition's first bytes) holds a btrfs superblock
 * magic at byte 65600.
 *
 * @param head The first bytes.
 * @returns Whether the magic is there.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isBtrfs } from "./superblock.ts";
 * const head = new Uint8Array(0x11000);
 * assert.strictEqual(isBtrfs(head), false);
 * head.set(new TextEncoder().encode("_BHRfS_M"), 0x10040);
 * assert.strictEqual(isBtrfs(head), true);
 * ```
 */
export function isBtrfs(head: Uint8Array): boolean {
  const at = SUPER_OFFSET + SB.MAGIC;
  if (head.length < at + 8) return false;
  for (let i = 0; i < 8; i++) {
    if (head[at + i] !== BTRFS_MAGIC.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * The crc32c a btrfs block carries in its first four bytes: of every byte
 * after the 32-byte checksum field (initial value and final XOR ~0).
 *
 * @param block The block (superblock or tree block).
 * @returns The checksum.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { blockChecksum } from "./superblock.ts";
 * const block = new Uint8Array(4096);
 * assert.notStrictEqual(blockChecksum(block), blockChecksum(block.fill(1, 100, 101)));
 * ```
 */
export function blockChecksum(block: Uint8Array): number {
  return (crc32cRaw(0xffffffff, block.subarray(CSUM_FIELD)) ^ 0xffffffff) >>>
    0;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function bitsText(bits: bigint): string {
  return `0x${bits.toString(16)}`;
}

/**
 * Parses and checks the primary superblock: magic, checksum type and
 * checksum, its own location, sector and node sizes, feature bits, flags,
 * a log tree awaiting replay, the device count and the device's size
 * against the partition.
 *
 * @param raw The 4096 bytes at byte 65536.
 * @param regionLength The partition's length, when known.
 * @returns The checked fields.
 * @throws {Refusal} For anything this reader does not trust or handle.
 *
 * @example A superblock whose checksum does not match
 * ```ts
 * import assert from "node:assert";
 * import { parseBtrfsSuperblock } from "./superblock.ts";
 * const raw = new Uint8Array(4096);
 * raw.set(new TextEncoder().encode("_BHRfS_M"), 0x40);
 * assert.throws(() => parseBtrfsSuperblock(raw, 1 << 30), /superblock checksum 0x0 does not match/);
 * ```
 */
export function parseBtrfsSuperblock(
  raw: Uint8Array,
  regionLength: number | undefined,
): BtrfsSuperblock {
  if (raw.length !== SUPER_SIZE) {
    throw new Refusal(`superblock of ${raw.length} bytes is not ${SUPER_SIZE}`);
  }
  const view = new DataView(raw.buffer, raw.byteOffset, raw.length);
  for (let i = 0; i < 8; i++) {
    if (raw[SB.MAGIC + i] !== BTRFS_MAGIC.charCodeAt(i)) {
      throw new Refusal("no btrfs magic at byte 65600");
    }
  }
  const csumType = view.getUint16(SB.CSUM_TYPE, true);
  if (csumType !== 0) {
    throw new Refusal(
      csumType < CSUM_TYPES.length
        ? `checksum type ${CSUM_TYPES[csumType]} is not handled (only crc32c)`
        : `unknown checksum type ${csumType}`,
    );
  }
  const stored = view.getUint32(SB.CSUM, true);
  const actual = blockChecksum(raw);
  if (stored !== actual) {
    throw new Refusal(
      `superblock checksum ${hex(stored)} does not match its contents (${
        hex(actual)
      })`,
    );
  }
  const bytenr = u64(view, SB.BYTENR, "superblock bytenr");
  if (bytenr !== SUPER_OFFSET) {
    throw new Refusal(
      `superblock says it is at byte ${bytenr}, not ${SUPER_OFFSET}`,
    );
  }
  const flags = u64Bits(view, SB.FLAGS);
  for (const [bit, what] of SUPER_FLAGS) {
    if (flags & bit) throw new Refusal(what);
  }
  const unknownFlags = flags & ~SUPER_FLAGS_OK;
  if (unknownFlags) {
    throw new Refusal(`unknown superblock flags ${bitsText(unknownFlags)}`);
  }
  const compat = u64Bits(view, SB.COMPAT_FLAGS);
  if (compat) {
    throw new Refusal(`unknown compat feature bits ${bitsText(compat)}`);
  }
  const compatRo = u64Bits(view, SB.COMPAT_RO_FLAGS);
  const unknownRo = compatRo & ~COMPAT_RO_HANDLED;
  if (unknownRo) {
    throw new Refusal(`unknown compat_ro feature bits ${bitsText(unknownRo)}`);
  }
  const incompat = u64Bits(view, SB.INCOMPAT_FLAGS);
  for (const [bit, name] of INCOMPAT_REFUSED) {
    if (incompat & bit) throw new Refusal(`feature ${name} is not handled`);
  }
  const unknownIn = incompat &
    ~(INCOMPAT_HANDLED | INCOMPAT_REFUSED.reduce((a, [b]) => a | b, 0n));
  if (unknownIn) {
    throw new Refusal(`unknown incompat feature bits ${bitsText(unknownIn)}`);
  }
  const sectorsize = view.getUint32(SB.SECTORSIZE, true);
  if (!isPowerOfTwo(sectorsize) || sectorsize < 4096 || sectorsize > 65536) {
    throw new Refusal(
      `sectorsize ${sectorsize} is not a power of two in [4096, 65536]`,
    );
  }
  const nodesize = view.getUint32(SB.NODESIZE, true);
  if (!isPowerOfTwo(nodesize) || nodesize < sectorsize || nodesize > 65536) {
    throw new Refusal(
      `nodesize ${nodesize} is not a power of two in [${sectorsize}, 65536]`,
    );
  }
  const generation = u64(view, SB.GENERATION, "superblock generation");
  if (generation === 0) throw new Refusal("superblock generation is 0");
  const logRoot = u64Bits(view, SB.LOG_ROOT);
  if (logRoot !== 0n) {
    throw new Refusal(
      `a log tree awaits replay (log_root ${logRoot}): not cleanly unmounted`,
    );
  }
  const numDevices = u64Bits(view, SB.NUM_DEVICES);
  if (numDevices !== 1n) {
    throw new Refusal(
      `the filesystem spans ${numDevices} devices (num_devices): only single-device btrfs is handled`,
    );
  }
  const totalBytes = u64(view, SB.TOTAL_BYTES, "total_bytes");
  if (totalBytes < 2 * 1024 * 1024) {
    throw new Refusal(`total_bytes ${totalBytes} is too small for btrfs`);
  }
  if (regionLength !== undefined && totalBytes > regionLength) {
    throw new Refusal(
      `filesystem of ${totalBytes} bytes is larger than its partition of ${regionLength} bytes: truncated`,
    );
  }
  const aligned = (n: number) => n % sectorsize === 0;
  const root = u64(view, SB.ROOT, "root");
  const chunkRoot = u64(view, SB.CHUNK_ROOT, "chunk_root");
  for (
    const [name, at] of [["root", root], ["chunk_root", chunkRoot]] as const
  ) {
    if (at === 0 || !aligned(at)) {
      throw new Refusal(
        `${name} ${at} is not a multiple of sectorsize ${sectorsize}`,
      );
    }
  }
  const rootLevel = raw[SB.ROOT_LEVEL];
  const chunkRootLevel = raw[SB.CHUNK_ROOT_LEVEL];
  if (rootLevel > MAX_LEVEL || chunkRootLevel > MAX_LEVEL) {
    throw new Refusal(
      `root level ${rootLevel} or chunk root level ${chunkRootLevel} is above ${MAX_LEVEL}`,
    );
  }
  const chunkRootGeneration = u64(
    view,
    SB.CHUNK_ROOT_GENERATION,
    "chunk_root_generation",
  );
  if (chunkRootGeneration === 0 || chunkRootGeneration > generation) {
    throw new Refusal(
      `chunk_root_generation ${chunkRootGeneration} is not in [1, generation ${generation}]`,
    );
  }
  const sysSize = view.getUint32(SB.SYS_CHUNK_ARRAY_SIZE, true);
  if (sysSize === 0 || sysSize > SYS_CHUNK_ARRAY_MAX) {
    throw new Refusal(
      `sys_chunk_array_size ${sysSize} is not in [1, ${SYS_CHUNK_ARRAY_MAX}]`,
    );
  }
  const fsid = raw.slice(SB.FSID, SB.FSID + 16);
  const metadataFsid = incompat & INCOMPAT.METADATA_UUID
    ? raw.slice(SB.METADATA_UUID, SB.METADATA_UUID + 16)
    : fsid;
  const dev = SB.DEV_ITEM;
  const devTotalBytes = u64(
    view,
    dev + DEV_ITEM.TOTAL_BYTES,
    "dev_item total_bytes",
  );
  if (devTotalBytes !== totalBytes) {
    throw new Refusal(
      `dev_item total_bytes ${devTotalBytes} is not the filesystem's total_bytes ${totalBytes}`,
    );
  }
  const devBytesUsed = u64(
    view,
    dev + DEV_ITEM.BYTES_USED,
    "dev_item bytes_used",
  );
  if (devBytesUsed > devTotalBytes) {
    throw new Refusal(
      `dev_item bytes_used ${devBytesUsed} is more than its total_bytes ${devTotalBytes}`,
    );
  }
  for (let i = 0; i < 16; i++) {
    if (raw[dev + DEV_ITEM.FSID + i] !== metadataFsid[i]) {
      throw new Refusal("dev_item fsid is not the filesystem's");
    }
  }
  const labelBytes = raw.subarray(SB.LABEL, SB.LABEL + 256);
  const nul = labelBytes.indexOf(0);
  return {
    fsid,
    metadataFsid,
    label: new TextDecoder().decode(
      labelBytes.subarray(0, nul < 0 ? 256 : nul),
    ),
    generation,
    root,
    rootLevel,
    chunkRoot,
    chunkRootLevel,
    chunkRootGeneration,
    totalBytes,
    bytesUsed: u64(view, SB.BYTES_USED, "bytes_used"),
    sectorsize,
    nodesize,
    incompat,
    compatRo,
    devid: u64(view, dev + DEV_ITEM.DEVID, "dev_item devid"),
    devTotalBytes,
    devBytesUsed,
    devUuid: raw.slice(dev + DEV_ITEM.UUID, dev + DEV_ITEM.UUID + 16),
    sysChunkArray: raw.slice(SB.SYS_CHUNK_ARRAY, SB.SYS_CHUNK_ARRAY + sysSize),
  };
}
