/**
 * Refcount blocks and the refcount table.
 *
 * A refcount block is one cluster of `cluster_size * 8 / refcount_bits`
 * entries, `refcount_bits = 1 << refcount_order` (1 to 64). Entries narrower
 * than a byte are packed with entry 0 in the least significant bits; wider
 * ones are big-endian. A refcount table entry holds the offset of a block in
 * bits 9-63 (bits 0-8 reserved), 0 meaning no block.
 *
 * @module
 */

import { MAX_REFCOUNT_ORDER, REFTABLE_RESERVED_LO } from "./constants.ts";
import { hex, Qcow2Error } from "./errors.ts";
import { joinU64 } from "../bytes/binary.ts";
import { splitTableOffset } from "./_bytes.ts";

function checkOrder(order: number): void {
  if (!Number.isInteger(order) || order < 0 || order > MAX_REFCOUNT_ORDER) {
    throw new RangeError(
      `Cannot use refcount_order ${order}: out of range [0, ${MAX_REFCOUNT_ORDER}]`,
    );
  }
}

/**
 * Largest refcount an entry of this width can hold (for 64-bit entries,
 * the largest safe integer).
 *
 * @param order refcount_order, 0 to 6.
 * @returns `2^(2^order) - 1`, capped at `Number.MAX_SAFE_INTEGER`.
 * @throws {RangeError} For an order outside 0..6.
 *
 * @example 16-bit refcounts
 * ```ts
 * import assert from "node:assert";
 * import { refcountMax } from "./refcount.ts";
 * assert(refcountMax(4) === 65535);
 * ```
 */
export function refcountMax(order: number): number {
  checkOrder(order);
  const bits = 1 << order;
  return bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
}

/**
 * Number of entries in a refcount block.
 *
 * @param clusterBits log2 of the cluster size.
 * @param order refcount_order.
 * @returns `cluster_size * 8 / refcount_bits`.
 *
 * @example 64 KiB clusters, 16-bit refcounts
 * ```ts
 * import assert from "node:assert";
 * import { refcountBlockEntries } from "./refcount.ts";
 * assert(refcountBlockEntries(16, 4) === 32768);
 * ```
 */
export function refcountBlockEntries(
  clusterBits: number,
  order: number,
): number {
  checkOrder(order);
  return 2 ** (clusterBits + 3 - order);
}

/**
 * How many refcount blocks and refcount table clusters count `clusters`
 * clusters and themselves, found as QEMU finds them
 * (`qcow2_refcount_metadata_size`): blocks and table grown together until
 * they no longer change. With `generous`, once they settle, room for half
 * as many table clusters again is added and they settle once more, as QEMU
 * does when it grows a refcount table.
 *
 * @param clusters Clusters to count, other than the blocks and table.
 * @param clusterBits log2 of the cluster size.
 * @param order refcount_order.
 * @param generous Leave room to grow, as QEMU's table growth does.
 * @returns Refcount blocks, and refcount table clusters.
 * @throws {RangeError} For an order outside 0..6.
 *
 * @example A fully allocated 1 GiB image with 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { refcountMetadataClusters } from "./refcount.ts";
 * assert.deepStrictEqual(refcountMetadataClusters(16387, 16, 4, false), { blocks: 1, table: 1 });
 * ```
 */
export function refcountMetadataClusters(
  clusters: number,
  clusterBits: number,
  order: number,
  generous: boolean,
): { blocks: number; table: number } {
  const perBlock = refcountBlockEntries(clusterBits, order);
  const perTableCluster = 2 ** clusterBits / 8;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTableCluster);
    n = clusters + blocks + table;
    if (n === last && generous) {
      clusters += Math.ceil(table / 2);
      n = 0;
      generous = false;
    }
  } while (n !== last);
  return { blocks, table };
}

/**
 * A stored refcount in decimal, exactly: a 64-bit refcount above 2^53
 * (`qemu-img check` prints such counts) loses digits as a number.
 *
 * @param block The refcount block.
 * @param index Entry number in the block.
 * @param order The image's refcount_order (0-6).
 * @returns The count in decimal.
 *
 * @example The largest 64-bit refcount
 * ```ts
 * import assert from "node:assert";
 * import { refcountDecimal } from "./refcount.ts";
 * const block = new Uint8Array(8).fill(0xff);
 * assert.strictEqual(refcountDecimal(block, 0, 6), "18446744073709551615");
 * ```
 */
export function refcountDecimal(
  block: Uint8Array,
  index: number,
  order: number,
): string {
  if (order !== 6) return String(getRefcount(block, index, order));
  return new DataView(block.buffer, block.byteOffset, block.byteLength)
    .getBigUint64(index * 8).toString();
}

/**
 * Reads entry `index` of a refcount block. 64-bit values above 2^53 are
 * returned rounded to the nearest double.
 *
 * @param block The refcount block bytes.
 * @param index Entry number.
 * @param order refcount_order, 0 to 6.
 * @returns The refcount.
 *
 * @example Read back a 1-bit refcount
 * ```ts
 * import assert from "node:assert";
 * import { getRefcount, setRefcount } from "./refcount.ts";
 * const block = new Uint8Array(512);
 * setRefcount(block, 9, 0, 1);
 * assert(getRefcount(block, 9, 0) === 1 && block[1] === 0b10);
 * ```
 */
export function getRefcount(
  block: Uint8Array,
  index: number,
  order: number,
): number {
  switch (order) {
    case 3:
      return block[index];
    case 4:
      return (block[index * 2] << 8) | block[index * 2 + 1];
    case 5: {
      const at = index * 4;
      return ((block[at] << 24) >>> 0) +
        ((block[at + 1] << 16) | (block[at + 2] << 8) | block[at + 3]);
    }
    case 6: {
      const view = new DataView(
        block.buffer,
        block.byteOffset,
        block.byteLength,
      );
      return joinU64(view.getUint32(index * 8), view.getUint32(index * 8 + 4));
    }
    default: {
      checkOrder(order);
      const bits = 1 << order;
      const bit = index * bits;
      return (block[bit >>> 3] >>> (bit & 7)) & ((1 << bits) - 1);
    }
  }
}

/**
 * Writes entry `index` of a refcount block.
 *
 * @param block The refcount block bytes.
 * @param index Entry number.
 * @param order refcount_order, 0 to 6.
 * @param value The refcount, 0 to {@linkcode refcountMax}.
 * @throws {RangeError} When the value does not fit the width.
 *
 * @example A 64-bit refcount
 * ```ts
 * import assert from "node:assert";
 * import { getRefcount, setRefcount } from "./refcount.ts";
 * const block = new Uint8Array(512);
 * setRefcount(block, 3, 6, 2 ** 40 + 5);
 * assert(getRefcount(block, 3, 6) === 2 ** 40 + 5);
 * ```
 */
export function setRefcount(
  block: Uint8Array,
  index: number,
  order: number,
  value: number,
): void {
  const max = refcountMax(order);
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(
      `Cannot set refcount: ${value} is out of range [0, ${max}] for ${
        1 << order
      }-bit refcounts`,
    );
  }
  switch (order) {
    case 3:
      block[index] = value;
      return;
    case 4:
      block[index * 2] = value >>> 8;
      block[index * 2 + 1] = value;
      return;
    case 5:
    case 6: {
      const view = new DataView(
        block.buffer,
        block.byteOffset,
        block.byteLength,
      );
      if (order === 5) {
        view.setUint32(index * 4, value);
      } else {
        view.setUint32(index * 8, Math.floor(value / 0x1_0000_0000));
        view.setUint32(index * 8 + 4, value >>> 0);
      }
      return;
    }
    default: {
      const bits = 1 << order;
      const bit = index * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      const at = bit >>> 3;
      block[at] = (block[at] & ~mask) | ((value << (bit & 7)) & mask);
    }
  }
}

/**
 * A decoded refcount table entry.
 *
 * @example Read an entry back from a refcount table
 * ```ts
 * import assert from "node:assert";
 * import { decodeRefcountTableEntry, encodeRefcountTableEntry, type RefcountTableEntry } from "./refcount.ts";
 * const table = new Uint8Array(8);
 * encodeRefcountTableEntry(table, 0, 0x20000);
 * const e: RefcountTableEntry = decodeRefcountTableEntry(table, 0);
 * assert.deepStrictEqual(e, { blockOffset: 0x20000, reserved: false });
 * ```
 */
export interface RefcountTableEntry {
  /** Host offset of the refcount block, 0 when none. */
  blockOffset: number;
  /** Whether reserved bits 0-8 are set. */
  reserved: boolean;
}

/**
 * Decodes entry `index` of a refcount table.
 *
 * @param table The refcount table bytes.
 * @param index Entry number.
 * @returns The decoded entry.
 * @throws {Qcow2Error} `OUT_OF_RANGE` for an offset at or past 2^53.
 *
 * @example Decode
 * ```ts
 * import assert from "node:assert";
 * import { decodeRefcountTableEntry, encodeRefcountTableEntry } from "./refcount.ts";
 * const table = new Uint8Array(8);
 * encodeRefcountTableEntry(table, 0, 0x30000);
 * assert(decodeRefcountTableEntry(table, 0).blockOffset === 0x30000);
 * ```
 */
export function decodeRefcountTableEntry(
  table: Uint8Array,
  index: number,
): RefcountTableEntry {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const hi = view.getUint32(index * 8);
  const lo = view.getUint32(index * 8 + 4);
  if (hi > 0x1fffff) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot decode refcount table entry ${index}: offset ${
        hex((BigInt(hi) << 32n) | BigInt(lo))
      } is out of range [0, 2^53-1]`,
      { field: "refcount table entry" },
    );
  }
  return {
    blockOffset: joinU64(hi, (lo & ~REFTABLE_RESERVED_LO) >>> 0),
    reserved: (lo & REFTABLE_RESERVED_LO) !== 0,
  };
}

/**
 * Encodes a refcount table entry.
 *
 * @param table The refcount table bytes.
 * @param index Entry number.
 * @param blockOffset Host offset of the block (512-aligned), or 0.
 * @throws {RangeError} When the offset is unaligned.
 *
 * @example Encode
 * ```ts
 * import assert from "node:assert";
 * import { encodeRefcountTableEntry } from "./refcount.ts";
 * const table = new Uint8Array(8);
 * encodeRefcountTableEntry(table, 0, 0x10000);
 * assert(table[5] === 1);
 * ```
 */
export function encodeRefcountTableEntry(
  table: Uint8Array,
  index: number,
  blockOffset: number,
): void {
  const [hi, lo] = splitTableOffset(blockOffset, "refcount table entry");
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  view.setUint32(index * 8, hi);
  view.setUint32(index * 8 + 4, lo);
}
