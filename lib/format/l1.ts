/**
 * L1 table entries: pointers to L2 tables.
 *
 * ```text
 * Bit  0 -  8: reserved (0)
 *      9 - 55: host offset of the L2 table (cluster aligned), 0 = none
 *     56 - 62: reserved (0)
 *          63: COPIED, the L2 table's refcount is exactly one
 * ```
 *
 * @module
 */

import { ENTRY } from "./constants.ts";
import { joinU64, u32be } from "../bytes/binary.ts";
import { splitTableOffset } from "./_bytes.ts";

/**
 * A decoded L1 entry.
 *
 * @example Read an entry back from an L1 table
 * ```ts
 * import assert from "node:assert";
 * import { decodeL1Entry, encodeL1Entry, type L1Entry } from "./l1.ts";
 * const table = new Uint8Array(16);
 * encodeL1Entry(table, 1, { l2Offset: 0x30000, copied: true });
 * const e: L1Entry = decodeL1Entry(table, 1);
 * assert.deepStrictEqual(e, { l2Offset: 0x30000, copied: true, reserved: false });
 * ```
 */
export interface L1Entry {
  /** Host offset of the L2 table; 0 when the whole range is unallocated. */
  l2Offset: number;
  /** Bit 63: the L2 table's refcount is exactly one. */
  copied: boolean;
  /** Whether any reserved bit (0-8, 56-62) is set. */
  reserved: boolean;
}

/**
 * Decodes entry `index` of an L1 table.
 *
 * @param table The L1 table bytes.
 * @param index Entry number.
 * @returns The decoded entry.
 *
 * @example Decode
 * ```ts
 * import assert from "node:assert";
 * import { decodeL1Entry, encodeL1Entry } from "./l1.ts";
 * const table = new Uint8Array(16);
 * encodeL1Entry(table, 1, { l2Offset: 0x50000, copied: true });
 * assert(decodeL1Entry(table, 1).l2Offset === 0x50000);
 * ```
 */
export function decodeL1Entry(table: Uint8Array, index: number): L1Entry {
  const hi = u32be(table, index * 8);
  const lo = u32be(table, index * 8 + 4);
  return {
    l2Offset: joinU64(hi & ENTRY.OFFSET_HI, (lo & ENTRY.OFFSET_LO) >>> 0),
    copied: (hi & ENTRY.COPIED_HI) !== 0,
    reserved: (hi & ENTRY.L1_RESERVED_HI) !== 0 ||
      (lo & ENTRY.L1_RESERVED_LO) !== 0,
  };
}

/**
 * Encodes an L1 entry into a table.
 *
 * @param table The L1 table bytes.
 * @param index Entry number.
 * @param entry L2 offset (cluster aligned, below 2^56) and COPIED flag.
 * @throws {RangeError} When the offset is not 512-aligned or too large.
 *
 * @example Clear an entry
 * ```ts
 * import assert from "node:assert";
 * import { decodeL1Entry, encodeL1Entry } from "./l1.ts";
 * const table = new Uint8Array(8).fill(0xff);
 * encodeL1Entry(table, 0, { l2Offset: 0, copied: false });
 * assert(decodeL1Entry(table, 0).l2Offset === 0);
 * ```
 */
export function encodeL1Entry(
  table: Uint8Array,
  index: number,
  entry: { l2Offset: number; copied: boolean },
): void {
  const [hi, lo] = splitTableOffset(entry.l2Offset, "L1 entry");
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  view.setUint32(index * 8, (hi | (entry.copied ? ENTRY.COPIED_HI : 0)) >>> 0);
  view.setUint32(index * 8 + 4, lo);
}
