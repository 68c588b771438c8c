/**
 * qcow2 written front to back as one byte stream, metadata first: header,
 * refcount table, refcount blocks, L1 table, L2 tables, then the data in
 * guest order. This is the layout a pipe (stdout, an HTTP upload body) needs,
 * and one our reader can expand from a pipe in one pass.
 *
 * Metadata can only be written once every cluster is placed, so the data
 * (and the finished L2 tables) wait in a spool file on disk until the input
 * ends. The spool holds exactly the output's data region plus its L2
 * tables, so it is never larger than the output.
 *
 * @module
 */

import { COMPRESSION_TYPE } from "../format/constants.ts";
import { defaultHeader, serializeHeader } from "../format/header.ts";
import { l1SizeFor } from "../format/geometry.ts";
import { encodeL1Entry } from "../format/l1.ts";
import { decodeL2Entry, encodeL2Entry, type L2Layout } from "../format/l2.ts";
import {
  encodeRefcountTableEntry,
  getRefcount,
  setRefcount,
} from "../format/refcount.ts";
import { CodecPool } from "../codec/pool.ts";
import { Spool } from "../io/spool.ts";
import { ClusterChunkStream } from "./chunk_stream.ts";
import { ZeroDetectStream } from "./zero_stream.ts";
import { CompressStream } from "./compress_stream.ts";
import { HostAllocator } from "./host_allocator.ts";
import type { Qcow2WriterOptions } from "./qcow2_writer.ts";
import type { ClusterRecord, ZeroBytes } from "./records.ts";

/**
 * Options of {@linkcode StreamableQcow2Writer}.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { StreamableWriterOptions } from "./streamable.ts";
 * const o: StreamableWriterOptions = { compression: "zstd", spoolDir: "/tmp" };
 * assert.strictEqual(o.spoolDir, "/tmp");
 * ```
 */
export interface StreamableWriterOptions extends Qcow2WriterOptions {
  /** Directory for the spool file. @default {the system temporary directory} */
  spoolDir?: string;
}

/**
 * What the streamable writer produced.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { StreamableSummary } from "./streamable.ts";
 * const s: Partial<StreamableSummary> = { spoolBytes: 0 };
 * assert.strictEqual(s.spoolBytes, 0);
 * ```
 */
export interface StreamableSummary {
  /** Exact input length. */
  inputSize: number;
  /** Virtual size in the header (input rounded up to 512). */
  virtualSize: number;
  /** Length of the qcow2 stream in bytes. */
  fileSize: number;
  /** Bytes that waited in the spool file. */
  spoolBytes: number;
  /** Guest clusters stored uncompressed. */
  dataClusters: number;
  /** Guest clusters stored compressed. */
  compressedClusters: number;
  /** Guest clusters left unallocated. */
  zeroClusters: number;
}

interface Collected {
  inputSize: number;
  /** Ordinal of each L2 table in the L2 spool, by L1 index (undefined: none). */
  l1: (number | undefined)[];
  tables: number;
  /** Refcount of each data-region cluster (index 0 is the dropped placeholder). */
  dataRefs: Uint16Array;
  dataClusters: number;
  counts: { data: number; compressed: number; zero: number };
}

/**
 * Raw bytes in, a complete qcow2 v3 image out as one ordered byte stream
 * (metadata first), for writing to a pipe or uploading. The output starts
 * once the input has ended; until then data waits in a spool file.
 *
 * @example Stream a qcow2 image into memory and open it
 * ```ts
 * import assert from "node:assert";
 * import { StreamableQcow2Writer } from "./streamable.ts";
 * import { openImage } from "../reader/open.ts";
 * await using writer = new StreamableQcow2Writer({ compression: "zlib", workers: 1 });
 * const out = ReadableStream.from([new Uint8Array(100_000).fill(8)]).pipeThrough(writer);
 * const bytes = new Uint8Array(await new Response(out).arrayBuffer());
 * await using image = await openImage(bytes);
 * assert.strictEqual((await image.readAt(99_999, 1))[0], 8);
 * ```
 */
export class StreamableQcow2Writer
  implements
    TransformStream<Uint8Array | ZeroBytes, Uint8Array>,
    AsyncDisposable {
  #writable: WritableStream<Uint8Array | ZeroBytes>;
  #readable: ReadableStream<Uint8Array>;
  #ownPool: CodecPool | undefined;
  #spool: Promise<Spool>;
  #summary: Promise<StreamableSummary>;

  /**
   * Builds the stages.
   *
   * @param options Cluster size, compression, refcount width, workers,
   * spool directory.
   * @throws {RangeError} For invalid options.
   */
  constructor(options: StreamableWriterOptions = {}) {
    if (options.backingFile || options.backingImage) {
      throw new RangeError(
        "Cannot write streamable qcow2: delta images (a backing file) are written by Qcow2Writer only",
      );
    }
    const clusterSize = options.clusterSize ?? 65536;
    const compression = options.compression ?? "none";
    if (
      compression !== "none" && compression !== "zlib" && compression !== "zstd"
    ) {
      throw new RangeError(
        `Cannot write qcow2: compression "${compression}" is not none, zlib or zstd`,
      );
    }
    // The data region is laid out as if it were a file of its own: its
    // cluster 0 stands for the header and is dropped when the region is
    // placed after the metadata (offset 0 would read as "unallocated").
    // No backfilling: the data must stay in guest order.
    const allocator = new HostAllocator({
      clusterSize,
      refcountBits: options.refcountBits,
      backfill: false,
    });
    const chunker = new ClusterChunkStream({ clusterSize });
    let records = chunker.readable.pipeThrough(
      new ZeroDetectStream({ clusterSize }),
    );
    if (compression !== "none") {
      let pool = options.pool;
      if (!pool) {
        pool = this.#ownPool = new CodecPool({ workers: options.workers });
      }
      records = records.pipeThrough(
        new CompressStream({
          pool,
          clusterSize,
          type: compression,
          level: options.level,
          backend: options.backend,
          zlibWindow: options.zlibWindow,
        }),
      );
    }
    this.#writable = chunker.writable;
    this.#spool = Spool.create(options.spoolDir);
    this.#spool.catch(() => {});
    const collected = this.#spool.then((spool) =>
      collect(records, allocator, spool, options.onProgress)
    );
    collected.catch(() => {});
    const { promise, resolve, reject } = Promise.withResolvers<
      StreamableSummary
    >();
    promise.catch(() => {});
    this.#summary = promise;
    const compressionType = compression === "zstd"
      ? COMPRESSION_TYPE.ZSTD
      : COMPRESSION_TYPE.ZLIB;
    let parts: AsyncGenerator<Uint8Array> | undefined;
    this.#readable = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        try {
          if (!parts) {
            const spool = await this.#spool;
            parts = emit(
              await collected,
              allocator,
              spool,
              compressionType,
              resolve,
            );
          }
          const next = await parts.next();
          if (next.done) controller.close();
          else controller.enqueue(next.value);
        } catch (err) {
          reject(err);
          throw err;
        }
      },
      cancel: async () => {
        await parts?.return(undefined);
        await (await this.#spool).close();
      },
    }, { highWaterMark: 0 });
  }

  /** Raw bytes in. */
  get writable(): WritableStream<Uint8Array | ZeroBytes> {
    return this.#writable;
  }

  /** The qcow2 image's bytes, in order. */
  get readable(): ReadableStream<Uint8Array> {
    return this.#readable;
  }

  /** Resolves once the whole image has been read from `readable`. */
  get summary(): Promise<StreamableSummary> {
    return this.#summary;
  }

  /**
   * Stops the workers this writer started and deletes the spool.
   *
   * @returns When done.
   */
  async close(): Promise<void> {
    await this.#ownPool?.close();
    await (await this.#spool.catch(() => undefined))?.close();
  }

  /** Same as {@linkcode StreamableQcow2Writer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Consumes cluster records: data into the spool's data region, L2 tables after it. */
async function collect(
  records: ReadableStream<ClusterRecord>,
  allocator: HostAllocator,
  spool: Spool,
  onProgress: ((n: number) => void) | undefined,
): Promise<Collected> {
  const cs = allocator.clusterSize;
  const E = cs / 8;
  const layout: L2Layout = {
    clusterBits: Math.log2(cs),
    extendedL2: false,
    dataFile: false,
  };
  // The data region grows from offset 0 of `dataSpool`; L2 tables go to a
  // second spool so the two never collide.
  await using tableSpool = await Spool.create();
  const tables = new Map<number, Uint8Array>();
  const l1: (number | undefined)[] = [];
  let tableCount = 0;
  let doneBelow = 0;
  let refs = new Uint16Array(1024);
  let inputSize = -1;
  let mapped = 0;
  const counts = { data: 0, compressed: 0, zero: 0 };

  const table = (index: number) => {
    const t = Math.floor(index / E);
    let tb = tables.get(t);
    if (!tb) tables.set(t, tb = new Uint8Array(cs));
    return tb;
  };
  const flushTables = async (limit: number) => {
    for (const t of [...tables.keys()].sort((a, b) => a - b)) {
      if (t >= limit) break;
      await tableSpool.writeAt(tableCount * cs, tables.get(t)!);
      tables.delete(t);
      l1[t] = tableCount++;
    }
    doneBelow = Math.max(doneBelow, limit);
  };
  const takeRefs = (all: boolean) => {
    for (const { index, block } of allocator.takeFinalBlocks(all)) {
      const first = index * allocator.blockEntries;
      const need = first + allocator.blockEntries;
      if (need > refs.length) {
        const bigger = new Uint16Array(Math.max(need, refs.length * 2));
        bigger.set(refs);
        refs = bigger;
      }
      for (let i = 0; i < allocator.blockEntries; i++) {
        refs[first + i] = getRefcount(block, i, allocator.refcountOrder);
      }
    }
  };

  for await (const record of records) {
    switch (record.kind) {
      case "data": {
        const at = allocator.allocClusters(record.count);
        await spool.writeAt(at, record.data);
        for (let i = 0; i < record.count; i++) {
          const index = record.index + i;
          encodeL2Entry(table(index), index % E, {
            type: "normal",
            hostOffset: at + i * cs,
            copied: true,
          }, layout);
        }
        counts.data += record.count;
        break;
      }
      case "compressed": {
        let from = 0;
        for (let i = 0; i < record.count; i++) {
          const length = record.lengths[i];
          const at = allocator.allocCompressed(length);
          await spool.writeAt(at, record.data.subarray(from, from + length));
          from += length;
          const index = record.index + i;
          encodeL2Entry(table(index), index % E, {
            type: "compressed",
            hostOffset: at,
            sectors: Math.ceil(length / 512),
          }, layout);
        }
        counts.compressed += record.count;
        break;
      }
      case "zero":
        counts.zero += record.count;
        break;
      case "end":
        inputSize = record.size;
        continue;
    }
    mapped += record.count * cs;
    onProgress?.(mapped);
    await flushTables(Math.floor((record.index + record.count) / E));
    takeRefs(false);
  }
  if (inputSize < 0) {
    throw new Error(
      "Cannot finish qcow2 stream: the input ended without an end record",
    );
  }
  await flushTables(Infinity);
  allocator.closeTail();
  takeRefs(true);
  const dataClusters = allocator.end / cs - 1;
  // Append the L2 tables after the data region in the main spool.
  const tablesReadable = await tableSpool.readable(0, tableCount * cs);
  let at = allocator.end;
  for await (const chunk of tablesReadable) {
    await spool.writeAt(at, chunk);
    at += chunk.length;
  }
  return {
    inputSize,
    l1,
    tables: tableCount,
    dataRefs: refs,
    dataClusters,
    counts,
  };
}

/** Produces the image bytes: metadata computed now, then the spooled tables and data. */
async function* emit(
  c: Collected,
  allocator: HostAllocator,
  spool: Spool,
  compressionType: number,
  done: (s: StreamableSummary) => void,
): AsyncGenerator<Uint8Array> {
  const cs = allocator.clusterSize;
  const clusterBits = Math.log2(cs);
  const order = allocator.refcountOrder;
  const R = allocator.blockEntries;
  const virtualSize = Math.ceil(c.inputSize / 512) * 512;
  const l1Size = l1SizeFor(virtualSize, clusterBits, false);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  // Header, refcount table (r), refcount blocks (nb), L1, L2 tables, data:
  // find the smallest refcount structures that cover the whole file.
  let nb = 1;
  let r = 1;
  for (;;) {
    const total = 1 + r + nb + l1Clusters + c.tables + c.dataClusters;
    const nb2 = Math.ceil(total / R);
    const r2 = Math.ceil((nb2 * 8) / cs);
    if (nb2 === nb && r2 === r) break;
    nb = nb2;
    r = r2;
  }
  const metaClusters = 1 + r + nb + l1Clusters + c.tables;
  // Data-region offset x (x >= cs) lands at file offset x + shift.
  const shift = (metaClusters - 1) * cs;
  const totalClusters = metaClusters + c.dataClusters;
  const reftableOffset = cs;
  const blocksOffset = (1 + r) * cs;
  const l1Offset = (1 + r + nb) * cs;
  const tablesOffset = l1Offset + l1Clusters * cs;

  const header = defaultHeader({
    size: virtualSize,
    clusterBits,
    refcountOrder: order,
    compressionType,
  });
  header.l1Size = l1Size;
  header.l1TableOffset = l1Size > 0 ? l1Offset : 0;
  header.refcountTableOffset = reftableOffset;
  header.refcountTableClusters = r;
  const headerCluster = new Uint8Array(cs);
  headerCluster.set(serializeHeader(header));
  yield headerCluster;

  const reftable = new Uint8Array(r * cs);
  for (let j = 0; j < nb; j++) {
    encodeRefcountTableEntry(reftable, j, blocksOffset + j * cs);
  }
  yield reftable;

  for (let j = 0; j < nb; j++) {
    const block = new Uint8Array(cs);
    for (let i = 0; i < R; i++) {
      const cluster = j * R + i;
      if (cluster >= totalClusters) break;
      const count = cluster < metaClusters
        ? 1
        : c.dataRefs[cluster - metaClusters + 1];
      if (count) setRefcount(block, i, order, count);
    }
    yield block;
  }

  if (l1Clusters > 0) {
    const l1 = new Uint8Array(l1Clusters * cs);
    c.l1.forEach((ordinal, t) => {
      if (ordinal !== undefined) {
        encodeL1Entry(l1, t, {
          l2Offset: tablesOffset + ordinal * cs,
          copied: true,
        });
      }
    });
    yield l1;
  }

  // L2 tables: rebase every offset from the data region to the file.
  const layout: L2Layout = { clusterBits, extendedL2: false, dataFile: false };
  const dataBytes = c.dataClusters * cs;
  const tables = (await spool.readable(cs + dataBytes, c.tables * cs, cs))
    .getReader();
  for (let k = 0; k < c.tables; k++) {
    const { value } = await tables.read();
    const table = value!.slice();
    for (let i = 0; i < cs / 8; i++) {
      const e = decodeL2Entry(table, i, layout);
      if (e.type === "normal") {
        encodeL2Entry(table, i, {
          type: "normal",
          hostOffset: e.hostOffset + shift,
          copied: true,
        }, layout);
      } else if (e.type === "compressed") {
        encodeL2Entry(table, i, {
          type: "compressed",
          hostOffset: e.hostOffset + shift,
          sectors: e.compressed!.sectors,
        }, layout);
      }
    }
    yield table;
  }
  await tables.cancel();

  for await (const chunk of await spool.readable(cs, dataBytes)) yield chunk;

  done({
    inputSize: c.inputSize,
    virtualSize,
    fileSize: totalClusters * cs,
    spoolBytes: dataBytes + c.tables * cs,
    dataClusters: c.counts.data,
    compressedClusters: c.counts.compressed,
    zeroClusters: c.counts.zero,
  });
}
