/**
 * The records that flow between the forward pipeline's stages.
 *
 * ```text
 * bytes ─ ClusterChunkStream ─ ZeroDetectStream ─ CompressStream ─▶ ClusterRecord
 * ClusterRecord ─ ClusterPacker ─▶ PlacedRecord ─ MetadataFinalizer ─▶ HostWrite
 * ```
 *
 * @module
 */

/**
 * A run of consecutive guest clusters, or the end of the input.
 *
 * - `data`: `count` whole clusters of bytes (`data.length === count * clusterSize`)
 * - `zero`: `count` clusters that read as zeros
 * - `backing`: `count` clusters that read the same as the backing image
 *   (delta images: left unallocated for the backing to answer)
 * - `compressed`: `count` clusters compressed; payload `i` is
 *   `lengths[i]` bytes, the payloads back to back in `data`
 * - `end`: the input is over; `size` is its exact length in bytes
 *
 * @example A run of two data clusters
 * ```ts
 * import assert from "node:assert";
 * import type { ClusterRecord } from "./records.ts";
 * const r: ClusterRecord = { kind: "data", index: 4, count: 2, data: new Uint8Array(1024) };
 * assert.strictEqual(r.kind, "data");
 * ```
 */
export type ClusterRecord =
  | { kind: "data"; index: number; count: number; data: Uint8Array }
  | { kind: "zero"; index: number; count: number }
  | { kind: "backing"; index: number; count: number }
  | {
    kind: "compressed";
    index: number;
    count: number;
    data: Uint8Array;
    lengths: number[];
  }
  | { kind: "end"; size: number };

/**
 * What the chunker accepts besides bytes: a run of zero bytes that need not
 * be materialized (a hole in a sparse source, or free space found by the
 * free-space map of `--sparsify`).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { ZeroBytes } from "./records.ts";
 * const hole: ZeroBytes = { zeros: 1 << 30 };
 * assert.strictEqual(hole.zeros, 1 << 30);
 * ```
 */
export interface ZeroBytes {
  /** Number of zero bytes. */
  zeros: number;
}

/**
 * The packer's output: guest clusters with their host placement, bytes to
 * write, and the end of input.
 *
 * - `normal`: guest clusters `index..index+count-1` live in the host
 *   clusters starting at `hostOffset`
 * - `compressed`: guest cluster `index + i` is compressed at
 *   `hostOffsets[i]` over `sectors[i]` sectors
 * - `zero`: clusters that read as zeros: left unallocated, or zero entries
 *   when the image has a backing file
 * - `backing`: clusters left unallocated for the backing file to answer
 * - `write`: bytes to write at a host offset
 * - `end`: the input is over; `size` is its exact length in bytes
 *
 * @example A normal run
 * ```ts
 * import assert from "node:assert";
 * import type { PlacedRecord } from "./records.ts";
 * const r: PlacedRecord = { kind: "normal", index: 0, count: 1, hostOffset: 0x30000 };
 * assert.strictEqual(r.kind, "normal");
 * ```
 */
export type PlacedRecord =
  | { kind: "normal"; index: number; count: number; hostOffset: number }
  | {
    kind: "compressed";
    index: number;
    count: number;
    hostOffsets: number[];
    sectors: number[];
  }
  | { kind: "zero"; index: number; count: number }
  | { kind: "backing"; index: number; count: number }
  | { kind: "write"; offset: number; data: Uint8Array }
  | { kind: "end"; size: number };

/**
 * Bytes to write at a host offset of the output file.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { HostWrite } from "./records.ts";
 * const w: HostWrite = { offset: 0, data: new Uint8Array(512) };
 * assert.strictEqual(w.offset, 0);
 * ```
 */
export interface HostWrite {
  /** Host offset. */
  offset: number;
  /** The bytes. */
  data: Uint8Array;
}
