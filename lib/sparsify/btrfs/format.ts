/**
 * btrfs on-disk constants and byte helpers: the key types, tree ids,
 * block group and feature bits this reader knows, and how 64-bit fields
 * and keys are read. All fields are little-endian (Linux
 * `include/uapi/linux/btrfs_tree.h`, `btrfs.h`).
 *
 * ```text
 * key (17 bytes): objectid u64, type u8, offset u64
 * tree block header (101 bytes):
 *  0x00 csum[32]   0x20 fsid[16]   0x30 bytenr u64   0x38 flags u64
 *  0x40 chunk_tree_uuid[16]        0x50 generation u64
 *  0x58 owner u64  0x60 nritems u32  0x64 level u8
 * leaf item (25 bytes): key, data offset u32 (from the end of the
 *   header), data size u32
 * node pointer (33 bytes): key, blockptr u64, generation u64
 * ```
 *
 * @module
 */

import { Refusal } from "../_region.ts";

/** Byte offset of the primary superblock on the device. */
export const SUPER_OFFSET = 0x10000;
/** Bytes of a superblock. */
export const SUPER_SIZE = 4096;
/** The superblock's magic, at byte 0x40 of it. */
export const BTRFS_MAGIC = "_BHRfS_M";
/** Where the superblock copies are (the primary, then 64 MiB and 256 GiB). */
export const SUPER_MIRRORS: readonly number[] = [
  SUPER_OFFSET,
  64 * 1024 * 1024,
  256 * 1024 * 1024 * 1024,
];
/** The device's first MiB is never allocated (boot loaders live there). */
export const RESERVED_HEAD = 1024 * 1024;
/** Bytes of the checksum field at the start of every block. */
export const CSUM_FIELD = 32;
/** Deepest level of a tree (BTRFS_MAX_LEVEL is 8: levels 0 to 7). */
export const MAX_LEVEL = 7;

/** Tree block header layout. */
export const HEADER = {
  FSID: 0x20,
  BYTENR: 0x30,
  FLAGS: 0x38,
  CHUNK_TREE_UUID: 0x40,
  GENERATION: 0x50,
  OWNER: 0x58,
  NRITEMS: 0x60,
  LEVEL: 0x64,
  SIZE: 0x65,
} as const;
/** Bytes of a key. */
export const KEY_SIZE = 17;
/** Bytes of a leaf item header. */
export const ITEM_SIZE = 25;
/** Bytes of a node's key pointer. */
export const PTR_SIZE = 33;

/** `header.flags`: written, relocated; the top byte is the backref revision. */
export const HEADER_FLAG_WRITTEN = 0x1;
export const HEADER_FLAG_RELOC = 0x2;

/** Tree ids (the objectids of ROOT_ITEMs). */
export const TREE = {
  ROOT: 1,
  EXTENT: 2,
  CHUNK: 3,
  DEV: 4,
  FS: 5,
  CSUM: 7,
  BLOCK_GROUP: 11,
} as const;
/** `FIRST_CHUNK_TREE_OBJECTID`: the objectid of every CHUNK_ITEM. */
export const FIRST_CHUNK_TREE_OBJECTID = 256;
/** `DEV_ITEMS_OBJECTID`: the objectid of every DEV_ITEM. */
export const DEV_ITEMS_OBJECTID = 1;

/** Key types read or recognized here. */
export const KEY = {
  INODE_ITEM: 1,
  EXTENT_DATA: 108,
  EXTENT_CSUM: 128,
  ROOT_ITEM: 132,
  EXTENT_ITEM: 168,
  METADATA_ITEM: 169,
  EXTENT_OWNER_REF: 172,
  TREE_BLOCK_REF: 176,
  EXTENT_DATA_REF: 178,
  EXTENT_REF_V0: 180,
  SHARED_BLOCK_REF: 182,
  SHARED_DATA_REF: 184,
  BLOCK_GROUP_ITEM: 192,
  DEV_EXTENT: 204,
  DEV_ITEM: 216,
  CHUNK_ITEM: 228,
  TEMPORARY_ITEM: 248,
  PERSISTENT_ITEM: 249,
  DEV_REPLACE: 250,
} as const;

/** Block group (and chunk) type and profile bits. */
export const BG = {
  DATA: 0x1,
  SYSTEM: 0x2,
  METADATA: 0x4,
  RAID0: 0x8,
  RAID1: 0x10,
  DUP: 0x20,
  RAID10: 0x40,
  RAID5: 0x80,
  RAID6: 0x100,
  RAID1C3: 0x200,
  RAID1C4: 0x400,
} as const;
/** The type bits of a block group. */
export const BG_TYPE_MASK = BG.DATA | BG.SYSTEM | BG.METADATA;

/** Profile names for refusals (bits other than DUP need several devices). */
export const RAID_PROFILES: ReadonlyArray<[number, string]> = [
  [BG.RAID0, "raid0"],
  [BG.RAID1, "raid1"],
  [BG.RAID10, "raid10"],
  [BG.RAID5, "raid5"],
  [BG.RAID6, "raid6"],
  [BG.RAID1C3, "raid1c3"],
  [BG.RAID1C4, "raid1c4"],
];

/** `extent_item.flags`. */
export const EXTENT_FLAG_DATA = 0x1;
export const EXTENT_FLAG_TREE_BLOCK = 0x2;

/** `file_extent_item.type`. */
export const FILE_EXTENT = { INLINE: 0, REG: 1, PREALLOC: 2 } as const;

/**
 * Reads a u64 that must be a safe integer (addresses, lengths).
 *
 * @param view The bytes.
 * @param at Offset of the field.
 * @param what The field, for the refusal.
 * @returns The value.
 * @throws {Refusal} When it is 2^53 or more.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { u64 } from "./format.ts";
 * const view = new DataView(new ArrayBuffer(8));
 * view.setUint32(0, 5, true);
 * assert.strictEqual(u64(view, 0, "bytenr"), 5);
 * view.setUint32(4, 0xffffffff, true);
 * assert.throws(() => u64(view, 0, "bytenr"), /bytenr .* is out of range/);
 * ```
 */
export function u64(view: DataView, at: number, what: string): number {
  const hi = view.getUint32(at + 4, true);
  const lo = view.getUint32(at, true);
  if (hi > 0x1fffff) {
    throw new Refusal(
      `${what} 0x${hi.toString(16)}${
        lo.toString(16).padStart(8, "0")
      } is out of range (2^53 or more)`,
    );
  }
  return hi * 0x1_0000_0000 + lo;
}

/** A u64 flags field as a bigint (feature and profile bits reach bit 48). */
export function u64Bits(view: DataView, at: number): bigint {
  return view.getBigUint64(at, true);
}

/**
 * Compares two keys in place: objectid, then type, then offset, each
 * unsigned.
 *
 * @param a Bytes holding the first key.
 * @param ai Its offset.
 * @param b Bytes holding the second key.
 * @param bi Its offset.
 * @returns Negative, zero or positive.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { compareKeys } from "./format.ts";
 * const k = (obj: number, type: number, off: number) => {
 *   const b = new Uint8Array(17);
 *   const v = new DataView(b.buffer);
 *   v.setBigUint64(0, BigInt(obj), true);
 *   b[8] = type;
 *   v.setBigUint64(9, BigInt(off), true);
 *   return b;
 * };
 * assert.ok(compareKeys(k(256, 1, 0), 0, k(256, 12, 0), 0) < 0);
 * assert.ok(compareKeys(k(257, 1, 0), 0, k(256, 255, 9), 0) > 0);
 * assert.strictEqual(compareKeys(k(5, 132, 0), 0, k(5, 132, 0), 0), 0);
 * ```
 */
export function compareKeys(
  a: Uint8Array,
  ai: number,
  b: Uint8Array,
  bi: number,
): number {
  for (let i = 7; i >= 0; i--) {
    const d = a[ai + i] - b[bi + i];
    if (d !== 0) return d;
  }
  const t = a[ai + 8] - b[bi + 8];
  if (t !== 0) return t;
  for (let i = 16; i >= 9; i--) {
    const d = a[ai + i] - b[bi + i];
    if (d !== 0) return d;
  }
  return 0;
}

/**
 * A key as text for messages: `(256 EXTENT_DATA 0)` style, numbers only.
 *
 * @param bytes Bytes holding the key.
 * @param at Its offset.
 * @returns `(objectid type offset)`.
 */
export function keyText(bytes: Uint8Array, at: number): string {
  const v = new DataView(bytes.buffer, bytes.byteOffset + at, KEY_SIZE);
  return `(${v.getBigUint64(0, true)} ${v.getUint8(8)} ${
    v.getBigUint64(9, true)
  })`;
}

/** Whether the two byte ranges hold the same bytes. */
export function sameBytes(
  a: Uint8Array,
  ai: number,
  b: Uint8Array,
  bi: number,
  n: number,
): boolean {
  let i = 0;
  const ao = a.byteOffset + ai;
  const bo = b.byteOffset + bi;
  if (n >= 64 && (ao & 3) === 0 && (bo & 3) === 0) {
    const words = n >>> 2;
    const wa = new Uint32Array(a.buffer, ao, words);
    const wb = new Uint32Array(b.buffer, bo, words);
    for (let w = 0; w < words; w++) if (wa[w] !== wb[w]) return false;
    i = words << 2;
  }
  for (; i < n; i++) if (a[ai + i] !== b[bi + i]) return false;
  return true;
}

/** A 16-byte UUID as text. */
export function uuidText(b: Uint8Array, at: number): string {
  const h = [...b.subarray(at, at + 16)].map((x) =>
    x.toString(16).padStart(2, "0")
  ).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${
    h.slice(16, 20)
  }-${h.slice(20)}`;
}
