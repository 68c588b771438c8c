/**
 * The last stage of the forward pipeline: cluster records in, the host
 * writes of a complete qcow2 v3 image out. It places the clusters (whole
 * ones cluster-aligned, compressed payloads packed at 512-byte granularity)
 * and writes the metadata (L2 tables, refcount blocks, L1 table, refcount
 * table, header) from one host allocator of its own.
 *
 * @module
 */

import { deferred } from "../bytes/portable.ts";
import type { CompressionType } from "../codec/codecs.ts";
import { MetadataFinalizer } from "./_finalizer.ts";
import { HostAllocator } from "./_host_allocator.ts";
import { MetadataFirstLayout } from "./_metadata_first.ts";
import { type PackSettings, packSettings } from "./_options.ts";
import { ClusterPacker } from "./_packer.ts";
import type { ClusterRecord, HostWrite } from "./records.ts";

/**
 * Options of {@linkcode Qcow2PackStream}.
 *
 * @example Small clusters, 8-bit refcounts, zstd named in the header
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2PackStream, type Qcow2PackStreamOptions } from "./pack_stream.ts";
 * import { writesToBytes } from "./qcow2_writer.ts";
 * const options: Qcow2PackStreamOptions = { clusterSize: 4096, refcountBits: 8, compressionType: "zstd" };
 * const image = await writesToBytes(
 *   ReadableStream.from([{ kind: "end" as const, size: 4096 }]).pipeThrough(new Qcow2PackStream(options)),
 * );
 * const header = new DataView(image.buffer);
 * assert.strictEqual(header.getUint32(20), 12); // cluster_bits
 * assert.strictEqual(header.getUint32(96), 3); // refcount_order
 * assert.strictEqual(image[104], 1); // compression_type: zstd
 * ```
 */
export interface Qcow2PackStreamOptions {
  /**
   * Cluster size in bytes, a power of two from 512 to 2 MiB; the stages
   * before must use the same.
   * @default {65536}
   */
  clusterSize?: number;
  /**
   * Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64.
   * @default {16}
   */
  refcountBits?: number;
  /**
   * The compression type recorded in the header (zstd also sets the
   * incompatible feature bit); the `compressed` records must be in it.
   * @default {"zlib"}
   */
  compressionType?: CompressionType;
  /**
   * The format version: `v2` is qemu-img's compat=0.10 (16-bit refcounts,
   * zlib, no zero entries: a delta stores zero clusters as data).
   * @default {"v3"}
   */
  compat?: "v2" | "v3";
  /**
   * Set the lazy refcounts feature bit (v3; qemu-img's lazy_refcounts=on).
   * The refcounts written are complete all the same.
   * @default {false}
   */
  lazyRefcounts?: boolean;
  /**
   * Make a delta image: the backing file named in the header (name as
   * stored, and format). Zero clusters become zero entries so that they do
   * not read from it.
   */
  backingFile?: BackingFileName;
  /** Called as guest bytes are mapped (after compression and packing). */
  onProgress?: (guestBytes: number) => void;
  /**
   * Lay the image out metadata first, for a pipe or an upload: header,
   * refcount table, refcount blocks, L1 table, L2 tables, then the data in
   * guest order. The writes then come in file order, back to back, once
   * the input has ended; until then the data and its mappings wait in two
   * spools that `spool` creates, deleted by
   * {@linkcode Qcow2PackStream.close}.
   * @default {undefined}: data first, each L2 table and refcount block
   * as soon as it is final, then the L1 table, the refcount table and the
   * header (offset 0) last; writes come while the input flows
   */
  streamable?: { spool: () => Promise<SpoolStore> };
}

/**
 * A backing file as an image names it: the name stored in the header and
 * the format in its backing format extension.
 *
 * @example Name a base image beside the delta
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes, type BackingFileName } from "../../mod.ts";
 * import { imageInfo } from "../tools/mod.ts";
 * const backingFile: BackingFileName = { name: "base.qcow2", format: "qcow2" };
 * const info = await imageInfo(await convertToBytes(new Uint8Array(4096), { backingFile }));
 * assert.strictEqual(info.backingFilename, "base.qcow2");
 * assert.strictEqual(info.backingFilenameFormat, "qcow2");
 * ```
 */
export interface BackingFileName {
  /** The name stored in the image (1 to 1023 bytes of UTF-8). */
  name: string;
  /** The backing file's format. */
  format: "qcow2" | "raw";
}

/**
 * Where the streamable layout parks bytes until the input ends: written at
 * any offset, read back in order, deleted on close. In Deno the
 * `StreamableQcow2Writer` uses temporary files.
 *
 * @example Park the data in memory (small images only)
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2PackStream, type SpoolStore } from "./pack_stream.ts";
 * function memorySpool(): Promise<SpoolStore> {
 *   let bytes = new Uint8Array(0);
 *   return Promise.resolve({
 *     writeAt(offset, data) {
 *       if (offset + data.length > bytes.length) {
 *         const grown = new Uint8Array(offset + data.length);
 *         grown.set(bytes);
 *         bytes = grown;
 *       }
 *       bytes.set(data, offset);
 *       return Promise.resolve();
 *     },
 *     readable: (start, length) => {
 *       const out = new Uint8Array(length);
 *       out.set(bytes.subarray(start, start + length));
 *       return Promise.resolve(ReadableStream.from([out]));
 *     },
 *     close: () => Promise.resolve(),
 *   });
 * }
 * const pack = new Qcow2PackStream({ clusterSize: 512, streamable: { spool: memorySpool } });
 * const writes = await Array.fromAsync(
 *   ReadableStream.from([
 *     { kind: "data" as const, index: 0, count: 1, data: new Uint8Array(512).fill(7) },
 *     { kind: "end" as const, size: 512 },
 *   ]).pipeThrough(pack),
 * );
 * assert.strictEqual(writes[0].offset, 0); // the header first
 * assert.deepStrictEqual(writes.at(-1)!.data, new Uint8Array(512).fill(7)); // the data last
 * assert.strictEqual((await pack.summary).spoolBytes, 512 + 32); // data and its mapping
 * ```
 */
export interface SpoolStore {
  /**
   * Stores bytes at an offset.
   *
   * @param offset Offset in the spool.
   * @param data The bytes (the caller may reuse them once this resolves).
   * @returns When stored.
   */
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Reads bytes back in order; what was never written reads as zeros.
   *
   * @param start First byte.
   * @param length Bytes to read.
   * @returns The bytes as a stream.
   */
  readable(start: number, length: number): Promise<ReadableStream<Uint8Array>>;
  /**
   * Deletes what was stored.
   *
   * @returns When deleted.
   */
  close(): Promise<void>;
}

/**
 * What {@linkcode Qcow2PackStream} wrote, once its readable side has
 * closed.
 *
 * @example Count what a writer stored
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Writer, writesToBytes } from "./qcow2_writer.ts";
 * const raw = new Uint8Array(3 * 65536);
 * raw.fill(1, 65536, 2 * 65536); // one data cluster between two zero ones
 * await using writer = new Qcow2Writer();
 * await writesToBytes(ReadableStream.from([raw]).pipeThrough(writer));
 * const summary = await writer.summary;
 * assert.strictEqual(summary.dataClusters, 1);
 * assert.strictEqual(summary.zeroClusters, 2);
 * ```
 */
export interface PackSummary {
  /** Exact input length in bytes. */
  inputSize: number;
  /** Virtual size written to the header (input rounded up to 512). */
  virtualSize: number;
  /** Size of the image file in bytes. */
  fileSize: number;
  /** Guest clusters stored uncompressed. */
  dataClusters: number;
  /** Guest clusters stored compressed. */
  compressedClusters: number;
  /** Guest clusters that read as zeros (unallocated, or zero entries). */
  zeroClusters: number;
  /** Guest clusters left to the backing file (delta images). */
  backingClusters: number;
  /** L2 tables written. */
  l2Tables: number;
  /** Refcount blocks written. */
  refcountBlocks: number;
  /**
   * Bytes that waited in the spools (the streamable layout's data region
   * and mappings); 0 in the default layout.
   */
  spoolBytes: number;
}

/**
 * Cluster records in, the host writes of a complete qcow2 v3 image out:
 * the clusters' bytes where it places them, then the metadata. It owns the
 * host allocator that both draw from, so a `compressed` payload may share a
 * host cluster with the one before and refcounts are exact. Memory holds
 * only the L2 tables and refcount blocks that can still change, the L1
 * table and the refcount table. With `streamable`, the metadata comes
 * first and the data waits in spools.
 *
 * The records must come in guest order and end with an `end` record; the
 * stages before (`ClusterChunkStream`, `ZeroDetectStream`,
 * `BackingDiffStream`, `CompressStream`) make them so.
 *
 * @example Pack chunked, zero-detected and compressed clusters into an image
 * ```ts
 * import assert from "node:assert";
 * import { ClusterChunkStream } from "./chunk_stream.ts";
 * import { ZeroDetectStream } from "./zero_stream.ts";
 * import { CompressStream } from "./compress_stream.ts";
 * import { Qcow2PackStream } from "./pack_stream.ts";
 * import { writesToBytes } from "./qcow2_writer.ts";
 * import { CodecPool } from "../codec/pool.ts";
 * import { openImage } from "../reader/open.ts";
 * await using pool = new CodecPool({ workers: 1 });
 * const clusterSize = 4096;
 * const raw = new Uint8Array(20_000).fill(3, 0, 5000); // data, then zeros
 * const pack = new Qcow2PackStream({ clusterSize, compressionType: "zstd" });
 * const image = await writesToBytes(
 *   ReadableStream.from([raw])
 *     .pipeThrough(new ClusterChunkStream({ clusterSize }))
 *     .pipeThrough(new ZeroDetectStream({ clusterSize }))
 *     .pipeThrough(new CompressStream({ pool, clusterSize, type: "zstd" }))
 *     .pipeThrough(pack),
 * );
 * const summary = await pack.summary;
 * assert.strictEqual(summary.compressedClusters, 2);
 * assert.strictEqual(summary.zeroClusters, 3);
 * await using opened = await openImage(image);
 * assert.deepStrictEqual(await opened.readAt(0, raw.length), raw);
 * ```
 */
export class Qcow2PackStream
  implements TransformStream<ClusterRecord, HostWrite>, AsyncDisposable {
  #writable: WritableStream<ClusterRecord>;
  #readable: ReadableStream<HostWrite>;
  #summary: Promise<PackSummary>;
  #close: () => Promise<void>;

  /**
   * Creates the stage (and, with `streamable`, starts creating its
   * spools).
   *
   * @param options Cluster size, refcount width, header fields, progress
   * callback, layout.
   * @throws {RangeError} For an invalid cluster size, refcount width,
   * compression type or backing file name.
   */
  constructor(options: Qcow2PackStreamOptions = {}) {
    const settings = packSettings(options);
    const stage = options.streamable
      ? metadataFirst(settings, options.streamable.spool)
      : metadataAfter(settings);
    this.#writable = stage.writable;
    this.#readable = stage.readable;
    this.#summary = stage.summary;
    this.#summary.catch(() => {}); // callers that never ask for the summary
    this.#close = stage.close;
  }

  /** Cluster records in, in guest order, the `end` record last. */
  get writable(): WritableStream<ClusterRecord> {
    return this.#writable;
  }

  /** Host writes out (the header last, or with `streamable` first). */
  get readable(): ReadableStream<HostWrite> {
    return this.#readable;
  }

  /** Resolves with what was written once the last write has been read. */
  get summary(): Promise<PackSummary> {
    return this.#summary;
  }

  /**
   * Deletes the spools of the streamable layout (nothing to do otherwise).
   *
   * @returns When they are deleted.
   */
  close(): Promise<void> {
    return this.#close();
  }

  /** Same as {@linkcode Qcow2PackStream.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The streams of one layout. */
interface Stage {
  writable: WritableStream<ClusterRecord>;
  readable: ReadableStream<HostWrite>;
  summary: Promise<PackSummary>;
  close: () => Promise<void>;
}

/** The default layout: writes as the records come, the metadata after. */
function metadataAfter(settings: PackSettings): Stage {
  const allocator = new HostAllocator(settings);
  const packer = new ClusterPacker(allocator);
  const finalizer = new MetadataFinalizer({ allocator, ...settings });
  const stream = new TransformStream<ClusterRecord, HostWrite>({
    transform(record, controller) {
      packer.place(
        record,
        (placed) => finalizer.accept(placed, (w) => controller.enqueue(w)),
      );
    },
    flush: () => packer.checkEnded(),
  });
  // The summary settles once the last write has been read (or the stream
  // has failed), which Transformer.cancel cannot tell on every runtime.
  const { readable, writable } = new TransformStream<HostWrite, HostWrite>();
  const summary = stream.readable.pipeTo(writable).then(() =>
    finalizer.summary!
  );
  return {
    writable: stream.writable,
    readable,
    summary,
    close: () => Promise.resolve(),
  };
}

/** The streamable layout: the input parked, then the file in order. */
function metadataFirst(
  settings: PackSettings,
  spool: () => Promise<SpoolStore>,
): Stage {
  const layout = new MetadataFirstLayout(settings, spool);
  const input = deferred<void>();
  input.promise.catch(() => {});
  const writable = new WritableStream<ClusterRecord>({
    async write(record) {
      try {
        await layout.accept(record);
      } catch (err) {
        input.reject(err);
        throw err;
      }
    },
    close: () => input.resolve(),
    abort: (reason) => input.reject(reason),
  });
  const result = deferred<PackSummary>();
  let writes: AsyncGenerator<HostWrite, PackSummary> | undefined;
  const readable = new ReadableStream<HostWrite>({
    async pull(controller) {
      try {
        if (!writes) {
          await input.promise;
          writes = layout.writes();
        }
        const next = await writes.next();
        if (next.done) {
          result.resolve(next.value);
          controller.close();
        } else {
          controller.enqueue(next.value);
        }
      } catch (err) {
        result.reject(err);
        throw err;
      }
    },
    async cancel(reason) {
      result.reject(reason);
      await writes?.return(undefined as never);
      await layout.close();
    },
  }, { highWaterMark: 0 });
  return {
    writable,
    readable,
    summary: result.promise,
    close: () => layout.close(),
  };
}
