/**
 * Compressed cluster descriptors: where a compressed cluster's bytes live.
 *
 * With `x = 62 - (cluster_bits - 8)`, an L2 entry with bit 62 set holds:
 * ```text
 * Bit  0 - x-1: host byte offset of the compressed data (any alignment)
 *      x - 61:  number of additional 512-byte sectors beyond the one
 *               holding the offset
 * ```
 * The data runs from the offset to the end of the last sector; the last
 * sector may also hold the start of another compressed cluster, and the
 * sectors may cross host cluster boundaries.
 *
 * @module
 */

import { COMPRESSED_SECTOR_SIZE } from "./constants.ts";
import { hex, Qcow2Error } from "./errors.ts";
import { joinU64 } from "../bytes/binary.ts";

/**
 * A decoded compressed cluster descriptor.
 *
 * @example The host bytes a compressed L2 entry names
 * ```ts
 * import assert from "node:assert";
 * import { compressedRange, type CompressedDescriptor, decodeCompressedDescriptor, encodeCompressedDescriptor } from "./compressed.ts";
 * const [hi, lo] = encodeCompressedDescriptor({ hostOffset: 0x30200, sectors: 2 }, 16);
 * const d: CompressedDescriptor = decodeCompressedDescriptor(hi, lo, 16);
 * assert.deepStrictEqual(compressedRange(d), { offset: 0x30200, length: 1024 });
 * ```
 */
export interface CompressedDescriptor {
  /** Host byte offset of the compressed data. */
  hostOffset: number;
  /** Number of 512-byte sectors the data touches (the stored field + 1). */
  sectors: number;
}

/**
 * Bit position `x` where the sector count starts, for a cluster size.
 *
 * @param clusterBits log2 of the cluster size, 9 to 21.
 * @returns `62 - (clusterBits - 8)`.
 *
 * @example 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { compressedOffsetBits } from "./compressed.ts";
 * assert(compressedOffsetBits(16) === 54);
 * ```
 */
export function compressedOffsetBits(clusterBits: number): number {
  return 62 - (clusterBits - 8);
}

/**
 * Largest sector count a descriptor can hold for a cluster size.
 *
 * @param clusterBits log2 of the cluster size.
 * @returns `2^(clusterBits - 8)`.
 *
 * @example 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { maxCompressedSectors } from "./compressed.ts";
 * assert(maxCompressedSectors(16) === 256);
 * ```
 */
export function maxCompressedSectors(clusterBits: number): number {
  return 2 ** (clusterBits - 8);
}

/**
 * Decodes the descriptor of a compressed L2 entry from its u32 halves
 * (bits 62 and 63 are ignored).
 *
 * @param hi High half of the L2 entry (bits 32-63).
 * @param lo Low half of the L2 entry (bits 0-31).
 * @param clusterBits log2 of the cluster size.
 * @returns Host offset and sector count.
 * @throws {Qcow2Error} `OUT_OF_RANGE` when the offset has bits above 52 set
 * (past 8 PiB, beyond what this implementation addresses; the format itself
 * requires bits above 55 to be 0).
 *
 * @example Decode a 64 KiB-cluster descriptor
 * ```ts
 * import assert from "node:assert";
 * import { decodeCompressedDescriptor } from "./compressed.ts";
 * // 3 additional sectors at offset 0x50200
 * const d = decodeCompressedDescriptor(3 << 22, 0x50200, 16);
 * assert(d.hostOffset === 0x50200 && d.sectors === 4);
 * ```
 */
export function decodeCompressedDescriptor(
  hi: number,
  lo: number,
  clusterBits: number,
): CompressedDescriptor {
  const x = compressedOffsetBits(clusterBits);
  const hiOffsetBits = x - 32;
  const offsetHi = hi & ((1 << hiOffsetBits) - 1);
  if (offsetHi > 0x1fffff) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot decode compressed descriptor: host offset ${
        hex((BigInt(offsetHi) << 32n) | BigInt(lo))
      } is out of range [0, 2^53-1]`,
      { field: "compressed host offset" },
    );
  }
  const count = (hi >>> hiOffsetBits) & ((1 << (clusterBits - 8)) - 1);
  return { hostOffset: joinU64(offsetHi, lo), sectors: count + 1 };
}

/**
 * Encodes a descriptor into u32 halves, with bit 62 (compressed) set and
 * bit 63 clear.
 *
 * @param descriptor Host offset and sector count (1 to
 * {@linkcode maxCompressedSectors}).
 * @param clusterBits log2 of the cluster size.
 * @returns `[hi, lo]` halves of the L2 entry.
 * @throws {RangeError} When the offset does not fit in `x` bits or the
 * sector count is out of range.
 *
 * @example Round trip
 * ```ts
 * import assert from "node:assert";
 * import { decodeCompressedDescriptor, encodeCompressedDescriptor } from "./compressed.ts";
 * const [hi, lo] = encodeCompressedDescriptor({ hostOffset: 0x1fe00, sectors: 9 }, 21);
 * const d = decodeCompressedDescriptor(hi, lo, 21);
 * assert(d.hostOffset === 0x1fe00 && d.sectors === 9);
 * ```
 */
export function encodeCompressedDescriptor(
  descriptor: CompressedDescriptor,
  clusterBits: number,
): [number, number] {
  const x = compressedOffsetBits(clusterBits);
  const { hostOffset, sectors } = descriptor;
  const limit = Math.min(2 ** x, 2 ** 53);
  if (
    !Number.isSafeInteger(hostOffset) || hostOffset < 0 || hostOffset >= limit
  ) {
    throw new RangeError(
      `Cannot encode compressed descriptor: host offset ${hostOffset} is out of range [0, 2^${
        Math.min(x, 53)
      })`,
    );
  }
  const max = maxCompressedSectors(clusterBits);
  if (!Number.isInteger(sectors) || sectors < 1 || sectors > max) {
    throw new RangeError(
      `Cannot encode compressed descriptor: sector count ${sectors} is out of range [1, ${max}]`,
    );
  }
  const offsetHi = Math.floor(hostOffset / 0x1_0000_0000);
  const hi = (0x40000000 | ((sectors - 1) << (x - 32)) | offsetHi) >>> 0;
  return [hi, hostOffset >>> 0];
}

/**
 * The host byte range a descriptor covers, as QEMU computes it: from the
 * offset to the end of its last sector.
 *
 * @param descriptor A decoded descriptor.
 * @returns Start offset and length in bytes.
 *
 * @example Range of two sectors starting mid-sector
 * ```ts
 * import assert from "node:assert";
 * import { compressedRange } from "./compressed.ts";
 * const r = compressedRange({ hostOffset: 0x10100, sectors: 2 });
 * assert(r.offset === 0x10100 && r.length === 768);
 * ```
 */
export function compressedRange(
  descriptor: CompressedDescriptor,
): { offset: number; length: number } {
  return {
    offset: descriptor.hostOffset,
    length: descriptor.sectors * COMPRESSED_SECTOR_SIZE -
      (descriptor.hostOffset % COMPRESSED_SECTOR_SIZE),
  };
}

/**
 * Number of sectors a compressed payload of `length` bytes starting at
 * `hostOffset` touches, i.e. the `sectors` of its descriptor.
 *
 * @param hostOffset Where the payload starts.
 * @param length Payload length in bytes (at least 1).
 * @returns Sector count.
 *
 * @example A payload that crosses one sector boundary
 * ```ts
 * import assert from "node:assert";
 * import { sectorsFor } from "./compressed.ts";
 * assert(sectorsFor(1000, 100) === 2);
 * ```
 */
export function sectorsFor(hostOffset: number, length: number): number {
  const first = Math.floor(hostOffset / COMPRESSED_SECTOR_SIZE);
  const last = Math.floor((hostOffset + length - 1) / COMPRESSED_SECTOR_SIZE);
  return last - first + 1;
}

/**
 * Bytes a compressed payload of `length` bytes takes when it starts on a
 * sector boundary, as the writer places them: whole 512-byte sectors.
 *
 * @param length Payload length in bytes.
 * @returns The length rounded up to whole sectors.
 *
 * @example Payloads in whole sectors
 * ```ts
 * import assert from "node:assert";
 * import { compressedSpan } from "./compressed.ts";
 * assert.deepStrictEqual([1, 512, 513].map(compressedSpan), [512, 512, 1024]);
 * ```
 */
export function compressedSpan(length: number): number {
  return Math.ceil(length / COMPRESSED_SECTOR_SIZE) * COMPRESSED_SECTOR_SIZE;
}
