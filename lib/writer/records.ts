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
 *   `lengths[i]` bytes, the payloads back to back in `data`, or, with
 *   `offsets`, payload `i` at `offsets[i]`, each starting at a 512-byte
 *   boundary after the one before with zeros between (what
 *   `CompressStream` makes: the packer writes such runs without copying)
 * - `end`: the input is over; `size` is its exact length in bytes
 *
 * @example The records of a raw stream with a hole
 * ```ts
 * import assert from "node:assert";
 * import { ClusterChunkStream } from "./chunk_stream.ts";
 * import type { ClusterRecord } from "./records.ts";
 * const records: ClusterRecord[] = [];
 * await ReadableStream.from([new Uint8Array(1024).fill(1), { zeros: 2048 }])
 *   .pipeThrough(new ClusterChunkStream({ clusterSize: 512 }))
 *   .pipeTo(new WritableStream({ write: (r) => void records.push(r) }));
 * assert.deepStrictEqual(records.map((r) => r.kind), ["data", "zero", "end"]);
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
    offsets?: number[];
  }
  | { kind: "end"; size: number };

/**
 * What the chunker accepts besides bytes: a run of zero bytes that need not
 * be materialized (a hole in a sparse source, or free space found by the
 * free-space map of `--sparsify`).
 *
 * @example A 1 GiB hole costs nothing to convert
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "../convert.ts";
 * import { writesToBytes } from "./qcow2_writer.ts";
 * import type { HostWrite, ZeroBytes } from "./records.ts";
 * const hole: ZeroBytes = { zeros: 1 << 30 };
 * const { readable, writable } = new TransformStream<HostWrite, HostWrite>();
 * const bytes = writesToBytes(readable);
 * const summary = await convert(ReadableStream.from([hole]), writable);
 * assert.strictEqual(summary.virtualSize, 1 << 30);
 * assert.ok((await bytes).length < 1 << 20);
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
 * @example Where the packer puts a data cluster
 * ```ts
 * import assert from "node:assert";
 * import { ClusterPacker } from "./packer.ts";
 * import type { PlacedRecord } from "./records.ts";
 * const placed: PlacedRecord[] = [];
 * await ReadableStream.from([
 *   { kind: "data" as const, index: 0, count: 1, data: new Uint8Array(512).fill(1) },
 *   { kind: "end" as const, size: 512 },
 * ]).pipeThrough(new ClusterPacker({ clusterSize: 512 }))
 *   .pipeTo(new WritableStream({ write: (r) => void placed.push(r) }));
 * const normal = placed.find((r) => r.kind === "normal");
 * assert.ok(normal && normal.hostOffset % 512 === 0);
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
 * @example The writes of a conversion, gathered into a file image
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Writer } from "./qcow2_writer.ts";
 * import type { HostWrite } from "./records.ts";
 * await using writer = new Qcow2Writer({ workers: 1 });
 * const writes: HostWrite[] = [];
 * const done = writer.readable.pipeTo(new WritableStream({ write: (w) => void writes.push(w) }));
 * await ReadableStream.from([new Uint8Array(4096).fill(5)]).pipeTo(writer.writable);
 * await done;
 * assert.ok(writes.some((w) => w.offset === 0)); // the header
 * ```
 */
export interface HostWrite {
  /** Host offset. */
  offset: number;
  /** The bytes. */
  data: Uint8Array;
}
