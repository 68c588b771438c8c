/**
 * Persistent bitmaps: the bitmap directory and bitmap tables.
 *
 * Directory entry:
 * ```text
 *  0 bitmap_table_offset (u64)   8 bitmap_table_size (u32)   12 flags (u32)
 * 16 type (u8)   17 granularity_bits (u8)   18 name_size (u16)
 * 20 extra_data_size (u32)   24 extra data, name, padding to 8
 * ```
 * Bitmap table entry: bits 9-55 host cluster offset; bit 0, when the
 * offset is 0, says the cluster reads as all ones.
 *
 * @module
 */

import { hex, Qcow2Error } from "./errors.ts";
import { alignUp, decodeText, joinU64, viewOf } from "../bytes/binary.ts";
import { readU64 } from "./_bytes.ts";

/**
 * Bitmap flags (directory entry bytes 12-15).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { BITMAP_FLAGS } from "./bitmaps.ts";
 * assert(BITMAP_FLAGS.AUTO === 2);
 * ```
 */
export const BITMAP_FLAGS = {
  IN_USE: 1,
  AUTO: 2,
  EXTRA_DATA_COMPATIBLE: 4,
} as const;

/**
 * A decoded bitmap directory entry.
 *
 * @example One entry of a bitmap directory, decoded
 * ```ts
 * import assert from "node:assert";
 * import { BITMAP_FLAGS, type BitmapEntry, parseBitmapDirectory } from "./bitmaps.ts";
 * const dir = new Uint8Array(32);
 * const v = new DataView(dir.buffer);
 * v.setBigUint64(0, 0x70000n); // bitmap table offset
 * v.setUint32(8, 1); // table entries
 * v.setUint32(12, BITMAP_FLAGS.AUTO);
 * dir[16] = 1; // dirty tracking
 * dir[17] = 16; // one bit per 64 KiB
 * v.setUint16(18, 5); // name length, no extra data
 * dir.set(new TextEncoder().encode("dirty"), 24);
 * const [entry]: BitmapEntry[] = parseBitmapDirectory(dir, 1);
 * assert.strictEqual(entry.name, "dirty");
 * assert.strictEqual(2 ** entry.granularityBits, 65536);
 * ```
 */
export interface BitmapEntry {
  /** Host offset of the bitmap table. */
  tableOffset: number;
  /** Entries in the bitmap table. */
  tableSize: number;
  /** Flag bits, see {@linkcode BITMAP_FLAGS}. */
  flags: number;
  /** 1 = dirty tracking bitmap. */
  type: number;
  /** log2 of the bytes of guest disk one bit covers. */
  granularityBits: number;
  /** Bitmap name. */
  name: string;
  /** Type-specific extra data. */
  extraData: Uint8Array;
}

/**
 * Parses `count` entries of a bitmap directory.
 *
 * @param bytes The bitmap directory bytes.
 * @param count Number of bitmaps.
 * @param base Host offset of `bytes[0]`, for error messages.
 * @returns The entries in directory order.
 * @throws {Qcow2Error} `BAD_EXTENSION` when an entry runs past the
 * directory.
 *
 * @example An empty directory
 * ```ts
 * import assert from "node:assert";
 * import { parseBitmapDirectory } from "./bitmaps.ts";
 * assert(parseBitmapDirectory(new Uint8Array(0), 0).length === 0);
 * ```
 */
export function parseBitmapDirectory(
  bytes: Uint8Array,
  count: number,
  base = 0,
): BitmapEntry[] {
  const view = viewOf(bytes);
  const out: BitmapEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 24 > bytes.length) throw short(i, base + at);
    const nameSize = view.getUint16(at + 18);
    const extraSize = view.getUint32(at + 20);
    const end = at + 24 + extraSize + nameSize;
    if (end > bytes.length) throw short(i, base + at);
    out.push({
      tableOffset: readU64(
        view,
        at,
        "bitmap_table_offset",
        "parse bitmap directory",
        base,
      ),
      tableSize: view.getUint32(at + 8),
      flags: view.getUint32(at + 12),
      type: bytes[at + 16],
      granularityBits: bytes[at + 17],
      extraData: bytes.slice(at + 24, at + 24 + extraSize),
      name: decodeText(bytes.subarray(at + 24 + extraSize, end)),
    });
    at = alignUp(end, 8);
  }
  return out;
}

function short(index: number, offset: number): Qcow2Error {
  return new Qcow2Error(
    "BAD_EXTENSION",
    `Cannot parse bitmap directory: entry ${index} at ${
      hex(offset)
    } runs past the directory`,
    { offset },
  );
}

/**
 * Decodes entry `index` of a bitmap table.
 *
 * @param table The bitmap table bytes.
 * @param index Entry number.
 * @returns The data cluster's host offset (0 when none), whether an
 * unallocated cluster reads as all ones, and whether reserved bits are set.
 *
 * @example An all-ones cluster
 * ```ts
 * import assert from "node:assert";
 * import { decodeBitmapTableEntry } from "./bitmaps.ts";
 * const table = new Uint8Array(8);
 * table[7] = 1;
 * assert(decodeBitmapTableEntry(table, 0).allOnes);
 * ```
 */
export function decodeBitmapTableEntry(
  table: Uint8Array,
  index: number,
): { offset: number; allOnes: boolean; reserved: boolean } {
  const view = viewOf(table);
  const hi = view.getUint32(index * 8);
  const lo = view.getUint32(index * 8 + 4);
  const offset = joinU64(hi & 0x00ffffff, (lo & 0xfffffe00) >>> 0);
  // Bits 1-8 and 56-63 are reserved, and bit 0 too once there is an offset.
  const reserved = (hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0 ||
    (offset !== 0 && (lo & 1) !== 0);
  return { offset, allOnes: offset === 0 && (lo & 1) !== 0, reserved };
}
