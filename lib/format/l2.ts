/**
 * L2 table entries, standard (64-bit) and extended (128-bit, with
 * subcluster bitmaps), and the cluster types they describe.
 *
 * ```text
 * Bit  0 - 61: cluster descriptor (standard or compressed)
 *          62: COMPRESSED
 *          63: COPIED, refcount is exactly one
 * Standard descriptor:
 *          0: ZERO, the cluster reads as zeros (not with extended L2)
 *     1 -  8: reserved (0)
 *     9 - 55: host cluster offset (cluster aligned)
 *    56 - 61: reserved (0)
 * Extended L2 bitmap (second 64 bits):
 *     0 - 31: subcluster x allocated
 *    32 - 63: subcluster x - 32 reads as zeros
 * ```
 *
 * @module
 */

import { ENTRY, SUBCLUSTERS_PER_CLUSTER } from "./constants.ts";
import {
  type CompressedDescriptor,
  decodeCompressedDescriptor,
  encodeCompressedDescriptor,
} from "./compressed.ts";
import { splitTableOffset } from "./_bytes.ts";
import { u32be } from "../bytes/binary.ts";

/**
 * What a guest cluster holds, as QEMU classifies an L2 entry.
 *
 * - `unallocated`: read from the backing file, or zeros without one
 * - `zero-plain`: reads as zeros, no host cluster
 * - `zero-alloc`: reads as zeros, a host cluster is preallocated
 * - `normal`: data in a host cluster
 * - `compressed`: compressed data somewhere in the file
 *
 * @example The type of an encoded entry
 * ```ts
 * import assert from "node:assert";
 * import { type ClusterType, decodeL2Entry, encodeL2Entry } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: false, dataFile: false };
 * const table = new Uint8Array(8);
 * encodeL2Entry(table, 0, { type: "zero-plain" }, layout);
 * const type: ClusterType = decodeL2Entry(table, 0, layout).type;
 * assert.strictEqual(type, "zero-plain");
 * ```
 */
export type ClusterType =
  | "unallocated"
  | "zero-plain"
  | "zero-alloc"
  | "normal"
  | "compressed";

/**
 * How a table is laid out: what every L2 decode needs to know.
 *
 * @example A compressed entry read with the cluster size it was written at
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry, type L2Layout } from "./l2.ts";
 * const layout: L2Layout = { clusterBits: 12, extendedL2: false, dataFile: false };
 * const table = new Uint8Array(8);
 * encodeL2Entry(table, 0, { type: "compressed", hostOffset: 0x30200, sectors: 2 }, layout);
 * // The split between offset and sector count depends on the cluster size.
 * assert.strictEqual(decodeL2Entry(table, 0, layout).compressed?.sectors, 2);
 * assert.notStrictEqual(
 *   decodeL2Entry(table, 0, { ...layout, clusterBits: 16 }).compressed?.sectors,
 *   2,
 * );
 * ```
 */
export interface L2Layout {
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Whether entries are 128-bit extended entries. */
  extendedL2: boolean;
  /** Whether guest data lives in an external data file. */
  dataFile: boolean;
}

/**
 * A decoded L2 entry.
 *
 * @example Where a guest cluster is stored
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry, type L2Entry } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: false, dataFile: false };
 * const table = new Uint8Array(8);
 * encodeL2Entry(table, 0, { type: "normal", hostOffset: 0x50000, copied: true }, layout);
 * const entry: L2Entry = decodeL2Entry(table, 0, layout);
 * assert.strictEqual(entry.hostOffset, 0x50000);
 * assert.ok(entry.copied);
 * ```
 */
export interface L2Entry {
  /** The cluster type. */
  type: ClusterType;
  /**
   * Host cluster offset (`normal`, `zero-alloc`; and `unallocated` with
   * extended L2 when a host cluster is set), or the compressed data's byte
   * offset (`compressed`); otherwise 0.
   */
  hostOffset: number;
  /** Bit 63. */
  copied: boolean;
  /** Whether reserved bits of a standard descriptor are set. */
  reserved: boolean;
  /** Compressed clusters: the descriptor. */
  compressed?: CompressedDescriptor;
  /** Extended L2: subcluster allocation bits (0 otherwise). */
  allocMask: number;
  /** Extended L2: subcluster zero bits (0 otherwise). */
  zeroMask: number;
}

/**
 * Bytes per L2 entry: 8, or 16 with extended L2 entries.
 *
 * @param extendedL2 Whether the image uses extended L2 entries.
 * @returns Entry size in bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { l2EntrySize } from "./l2.ts";
 * assert(l2EntrySize(true) === 16);
 * ```
 */
export function l2EntrySize(extendedL2: boolean): number {
  return extendedL2 ? 16 : 8;
}

/**
 * Number of entries in one L2 table.
 *
 * @param clusterBits log2 of the cluster size.
 * @param extendedL2 Whether entries are extended.
 * @returns Entries per table.
 *
 * @example 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { l2Entries } from "./l2.ts";
 * assert(l2Entries(16, false) === 8192);
 * ```
 */
export function l2Entries(clusterBits: number, extendedL2: boolean): number {
  return 2 ** clusterBits / l2EntrySize(extendedL2);
}

/**
 * Decodes entry `index` of an L2 table the way QEMU classifies it
 * (`qcow2_get_cluster_type`): compressed if bit 62; zero if bit 0 without
 * extended L2; unallocated if the offset is 0 (unless an external data file
 * makes offset 0 valid with COPIED set); normal otherwise.
 *
 * @param table The L2 table bytes.
 * @param index Entry number.
 * @param layout Cluster size and entry format.
 * @returns The decoded entry.
 * @throws {Qcow2Error} `OUT_OF_RANGE` for a compressed offset past 2^53.
 *
 * @example Decode a zero cluster
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: false, dataFile: false };
 * const table = new Uint8Array(8);
 * encodeL2Entry(table, 0, { type: "zero-plain" }, layout);
 * assert(decodeL2Entry(table, 0, layout).type === "zero-plain");
 * ```
 */
export function decodeL2Entry(
  table: Uint8Array,
  index: number,
  layout: L2Layout,
): L2Entry {
  // Byte arithmetic, no DataView: this runs once per guest cluster.
  const at = index * (layout.extendedL2 ? 16 : 8);
  const hi = u32be(table, at);
  const lo = u32be(table, at + 4);
  const copied = (hi & ENTRY.COPIED_HI) !== 0;
  const allocMask = layout.extendedL2 ? u32be(table, at + 12) : 0;
  const zeroMask = layout.extendedL2 ? u32be(table, at + 8) : 0;
  if ((hi & ENTRY.COMPRESSED_HI) !== 0) {
    const compressed = decodeCompressedDescriptor(hi, lo, layout.clusterBits);
    return {
      type: "compressed",
      hostOffset: compressed.hostOffset,
      copied,
      reserved: false,
      compressed,
      allocMask,
      zeroMask,
    };
  }
  const hostOffset = (hi & ENTRY.OFFSET_HI) * 0x1_0000_0000 +
    ((lo & ENTRY.OFFSET_LO) >>> 0);
  const reserved = (hi & ENTRY.L2_RESERVED_HI) !== 0 ||
    (lo & ENTRY.L2_RESERVED_LO) !== 0;
  let type: ClusterType;
  if ((lo & ENTRY.ZERO_LO) !== 0 && !layout.extendedL2) {
    type = hostOffset !== 0 ? "zero-alloc" : "zero-plain";
  } else if (hostOffset === 0 && !(layout.dataFile && copied)) {
    type = "unallocated";
  } else {
    type = "normal";
  }
  return { type, hostOffset, copied, reserved, allocMask, zeroMask };
}

/**
 * What to encode into an L2 entry.
 *
 * @example A compressed cluster's entry
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry, type L2EntryInit } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: false, dataFile: false };
 * const init: L2EntryInit = { type: "compressed", hostOffset: 0x30200, sectors: 3 };
 * const table = new Uint8Array(8);
 * encodeL2Entry(table, 0, init, layout);
 * assert.deepStrictEqual(decodeL2Entry(table, 0, layout).compressed, { hostOffset: 0x30200, sectors: 3 });
 * ```
 */
export type L2EntryInit =
  | { type: "unallocated"; allocMask?: number; zeroMask?: number }
  | { type: "zero-plain" }
  | { type: "zero-alloc"; hostOffset: number; copied?: boolean }
  | {
    type: "normal";
    hostOffset: number;
    copied?: boolean;
    allocMask?: number;
    zeroMask?: number;
  }
  | { type: "compressed"; hostOffset: number; sectors: number };

/**
 * Encodes an L2 entry. With extended L2, `normal` entries default to all
 * subclusters allocated, and `zero-plain` is written as an unallocated
 * entry with all zero bits set.
 *
 * @param table The L2 table bytes.
 * @param index Entry number.
 * @param entry What the cluster holds.
 * @param layout Cluster size and entry format.
 * @throws {RangeError} For offsets that are unaligned or out of range.
 *
 * @example Encode a normal cluster with COPIED
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: true, dataFile: false };
 * const table = new Uint8Array(32);
 * encodeL2Entry(table, 1, { type: "normal", hostOffset: 0x70000, copied: true }, layout);
 * const e = decodeL2Entry(table, 1, layout);
 * assert(e.hostOffset === 0x70000 && e.allocMask === 0xffffffff);
 * ```
 */
export function encodeL2Entry(
  table: Uint8Array,
  index: number,
  entry: L2EntryInit,
  layout: L2Layout,
): void {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const at = index * l2EntrySize(layout.extendedL2);
  let hi = 0, lo = 0, allocMask = 0, zeroMask = 0;
  switch (entry.type) {
    case "unallocated":
      allocMask = entry.allocMask ?? 0;
      zeroMask = entry.zeroMask ?? 0;
      break;
    case "zero-plain":
      if (layout.extendedL2) zeroMask = ALL_SUBCLUSTERS;
      else lo = ENTRY.ZERO_LO;
      break;
    case "zero-alloc":
      [hi, lo] = splitTableOffset(entry.hostOffset, "L2 entry");
      if (entry.copied) hi |= ENTRY.COPIED_HI;
      if (layout.extendedL2) zeroMask = ALL_SUBCLUSTERS;
      else lo |= ENTRY.ZERO_LO;
      break;
    case "normal":
      [hi, lo] = splitTableOffset(entry.hostOffset, "L2 entry");
      if (entry.copied) hi |= ENTRY.COPIED_HI;
      allocMask = entry.allocMask ?? ALL_SUBCLUSTERS;
      zeroMask = entry.zeroMask ?? 0;
      break;
    case "compressed":
      [hi, lo] = encodeCompressedDescriptor(entry, layout.clusterBits);
      break;
  }
  view.setUint32(at, hi >>> 0);
  view.setUint32(at + 4, lo >>> 0);
  if (layout.extendedL2) {
    view.setUint32(at + 8, zeroMask >>> 0);
    view.setUint32(at + 12, allocMask >>> 0);
  }
}

const ALL_SUBCLUSTERS = 0xffffffff;

/**
 * How one subcluster reads: QEMU's subcluster types
 * (`qcow2_get_subcluster_type`). Without extended L2 every cluster is one
 * subcluster.
 *
 * - `normal`: data at the host cluster
 * - `compressed`: part of a compressed cluster
 * - `zero-plain`: reads as zeros, no host cluster
 * - `zero-alloc`: reads as zeros, a host cluster is allocated
 * - `unallocated-plain`: read from the backing file (or zeros), no host
 *   cluster
 * - `unallocated-alloc`: read from the backing file (or zeros), a host
 *   cluster is allocated (extended L2)
 * - `invalid`: the bitmap contradicts itself (a subcluster both allocated
 *   and zero, or allocated bits in an unallocated cluster)
 *
 * @example A cluster written only in its first half
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry, subclusterType, type SubclusterType } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: true, dataFile: false };
 * const table = new Uint8Array(16);
 * encodeL2Entry(table, 0, { type: "normal", hostOffset: 0x10000, allocMask: 0xffff }, layout);
 * const entry = decodeL2Entry(table, 0, layout);
 * const types: SubclusterType[] = [0, 31].map((sc) => subclusterType(entry, sc, true));
 * assert.deepStrictEqual(types, ["normal", "unallocated-alloc"]);
 * ```
 */
export type SubclusterType =
  | "normal"
  | "compressed"
  | "zero-plain"
  | "zero-alloc"
  | "unallocated-plain"
  | "unallocated-alloc"
  | "invalid";

/**
 * Classifies subcluster `sc` (0-31) of a decoded entry.
 *
 * @param entry A decoded L2 entry.
 * @param sc Subcluster index (ignored without extended L2).
 * @param extendedL2 Whether the image uses extended L2 entries.
 * @returns How the subcluster reads.
 *
 * @example A half-allocated cluster
 * ```ts
 * import assert from "node:assert";
 * import { decodeL2Entry, encodeL2Entry, subclusterType } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: true, dataFile: false };
 * const table = new Uint8Array(16);
 * encodeL2Entry(table, 0, {
 *   type: "normal", hostOffset: 0x10000, allocMask: 0x0000ffff, zeroMask: 0xffff0000,
 * }, layout);
 * const entry = decodeL2Entry(table, 0, layout);
 * assert(subclusterType(entry, 0, true) === "normal");
 * assert(subclusterType(entry, 20, true) === "zero-alloc");
 * ```
 */
export function subclusterType(
  entry: L2Entry,
  sc: number,
  extendedL2: boolean,
): SubclusterType {
  switch (entry.type) {
    case "compressed":
    case "zero-plain":
    case "zero-alloc":
      return entry.type;
  }
  if (!extendedL2) {
    return entry.type === "normal" ? "normal" : "unallocated-plain";
  }
  const bit = 1 << (sc % SUBCLUSTERS_PER_CLUSTER);
  if (entry.type === "normal") {
    if ((entry.allocMask & entry.zeroMask) !== 0) return "invalid";
    if ((entry.zeroMask & bit) !== 0) return "zero-alloc";
    return (entry.allocMask & bit) !== 0 ? "normal" : "unallocated-alloc";
  }
  if (entry.allocMask !== 0) return "invalid";
  return (entry.zeroMask & bit) !== 0 ? "zero-plain" : "unallocated-plain";
}
