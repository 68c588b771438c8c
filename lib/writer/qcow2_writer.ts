/**
 * The forward pipeline composed: raw bytes in, qcow2 v3 host writes out.
 *
 * @module
 */

import type { CodecPool } from "../codec/pool.ts";
import type { CodecBackend, ZlibWindow } from "../codec/codecs.ts";
import { writerStages } from "./_stages.ts";
import type { PackSummary, Qcow2PackStreamOptions } from "./pack_stream.ts";
import type { GuestImage } from "../reader/image.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import { streamFrom } from "../bytes/portable.ts";
import type { HostWrite } from "./records.ts";

/**
 * Options of the forward pipeline: the pack stage's (cluster size,
 * refcount width, backing file, progress), and compression.
 *
 * @example Small clusters, 8-bit refcounts
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "./qcow2_writer.ts";
 * const image = await convertToBytes(new Uint8Array(8192).fill(7), {
 *   clusterSize: 4096,
 *   refcountBits: 8,
 * });
 * const header = new DataView(image.buffer);
 * assert.strictEqual(header.getUint32(20), 12); // cluster_bits
 * assert.strictEqual(header.getUint32(96), 3); // refcount_order
 * // header, 2 data clusters, L2, L1, refcount block, refcount table
 * assert.strictEqual(image.length, 7 * 4096);
 * ```
 */
export interface Qcow2WriterOptions extends
  Pick<
    Qcow2PackStreamOptions,
    | "clusterSize"
    | "refcountBits"
    | "backingFile"
    | "onProgress"
    | "compat"
    | "lazyRefcounts"
  > {
  /**
   * `none` writes a sparse image; `zlib` and `zstd` compress clusters.
   * @default {"none"}
   */
  compression?: "none" | "zlib" | "zstd";
  /**
   * Compression level (zlib 1-9, zstd 1-22).
   * @default {defaultLevel(compression, backend, zlibWindow)}: zlib 4 on
   * node:zlib (9 with a 4 KiB window), 6 on fflate; zstd 3
   */
  level?: number;
  /**
   * zlib: deflate window in bytes, 32768 or 4096 (QEMU's); see
   * `CodecOptions.zlibWindow`.
   * @default {32768}
   */
  zlibWindow?: ZlibWindow;
  /**
   * Zero detection granularity in bytes, as qemu-img's `-S`: 0 stores
   * zeros as data (every cluster allocated); a size above the cluster size
   * leaves zeros unallocated only in whole aligned blocks of that size.
   * Ignored with compression, but for 0.
   * @default {clusterSize}
   */
  sparseSize?: number;
  /**
   * Compression workers; ignored when `pool` is given.
   * @default {navigator.hardwareConcurrency}
   */
  workers?: number;
  /** A pool to use (and not close) instead of starting one. */
  pool?: CodecPool;
  /**
   * Codec implementation.
   * @default {"auto"}
   */
  backend?: CodecBackend;
  /**
   * The backing file's guest view, opened by the caller: clusters that read
   * the same in it are left unallocated for it to answer, so the image
   * holds only what changed. Needs `backingFile`.
   */
  backingImage?: GuestImage;
}

/**
 * The whole forward pipeline as one transform: bytes (or `{ zeros }`
 * holes) in, host writes of a qcow2 v3 image out (the header last), through
 * `ClusterChunkStream → ZeroDetectStream → BackingDiffStream` (deltas)
 * `→ CompressStream` (compression) `→ Qcow2PackStream`.
 * {@linkcode Qcow2Writer.summary} resolves when the image is complete.
 * Start it, then close it with `await using` or
 * {@linkcode Qcow2Writer.close} to stop its workers.
 *
 * @example Write a qcow2 image into memory
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Writer, writesToBytes } from "./qcow2_writer.ts";
 * await using writer = new Qcow2Writer({ compression: "zstd", workers: 1 });
 * const writes = ReadableStream.from([new Uint8Array(70_000).fill(3)]).pipeThrough(writer);
 * const image = await writesToBytes(writes);
 * assert.strictEqual((await writer.summary).compressedClusters, 2);
 * assert.strictEqual(image[3], 0xfb);
 * ```
 */
export class Qcow2Writer
  implements
    TransformStream<Uint8Array | ZeroBytes, HostWrite>,
    AsyncDisposable {
  #writable: WritableStream<Uint8Array | ZeroBytes>;
  #readable: ReadableStream<HostWrite>;
  #summary: Promise<PackSummary>;
  #ownPool: CodecPool | undefined;

  /**
   * Builds the stages.
   *
   * @param options Cluster size, compression, refcount width, workers.
   * @throws {RangeError} For invalid options.
   */
  constructor(options: Qcow2WriterOptions = {}) {
    const stages = writerStages(options);
    this.#ownPool = stages.ownPool;
    this.#writable = stages.writable;
    this.#readable = stages.readable;
    this.#summary = stages.pack.summary;
  }

  /** Bytes in. */
  get writable(): WritableStream<Uint8Array | ZeroBytes> {
    return this.#writable;
  }

  /** Host writes out. */
  get readable(): ReadableStream<HostWrite> {
    return this.#readable;
  }

  /** Resolves with what was written once the image is complete. */
  get summary(): Promise<PackSummary> {
    return this.#summary;
  }

  /**
   * Stops the compression workers this writer started.
   *
   * @returns When they are stopped.
   */
  async close(): Promise<void> {
    await this.#ownPool?.close();
  }

  /** Same as {@linkcode Qcow2Writer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Collects host writes into one buffer: the image file's bytes.
 *
 * @param writes Host writes.
 * @returns The file contents.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { writesToBytes } from "./qcow2_writer.ts";
 * const bytes = await writesToBytes(ReadableStream.from([{ offset: 2, data: new Uint8Array([9]) }]));
 * assert.deepStrictEqual(bytes, new Uint8Array([0, 0, 9]));
 * ```
 */
export async function writesToBytes(
  writes: ReadableStream<HostWrite>,
): Promise<Uint8Array> {
  let buf = new Uint8Array(1 << 16);
  let size = 0;
  for await (const w of writes) {
    const end = w.offset + w.data.length;
    if (end > buf.length) {
      const bigger = new Uint8Array(Math.max(end, buf.length * 2));
      bigger.set(buf.subarray(0, size));
      buf = bigger;
    }
    buf.set(w.data, w.offset);
    size = Math.max(size, end);
  }
  return buf.slice(0, size);
}

/**
 * Converts raw bytes in memory to a qcow2 image in memory.
 *
 * @param raw The raw disk bytes.
 * @param options Writer options.
 * @returns The qcow2 image bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "./qcow2_writer.ts";
 * const image = await convertToBytes(new Uint8Array(1000).fill(1), { clusterSize: 512 });
 * assert.strictEqual(new DataView(image.buffer).getUint32(0), 0x514649fb);
 * ```
 */
export async function convertToBytes(
  raw: Uint8Array,
  options: Qcow2WriterOptions = {},
): Promise<Uint8Array> {
  // Not `await using`: Node 20, which runs the bundle, cannot parse it.
  const writer = new Qcow2Writer(options);
  try {
    return await writesToBytes(
      streamFrom([raw]).pipeThrough(writer),
    );
  } finally {
    await writer.close();
  }
}
