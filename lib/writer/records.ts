/**
 * The records that flow between the forward pipeline's stages.
 *
 * ```text
 * bytes ─ ClusterChunkStream ─ ZeroDetectStream ─ CompressStream ─▶ ClusterRecord
 * ClusterRecord ─ Qcow2PackStream ─▶ HostWrite
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
 *   `CompressStream` makes: `Qcow2PackStream` writes such runs without
 *   copying)
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
