/**
 * qcow2 written front to back as one byte stream, metadata first: header,
 * refcount table, refcount blocks, L1 table, L2 tables, then the data in
 * guest order. This is the layout a pipe (stdout, an HTTP upload body) needs,
 * and one our reader can expand from a pipe in one pass.
 *
 * The stages are `Qcow2Writer`'s up to the packer. The packer places the
 * data region as a file of its own (no backfilling, so it stays in guest
 * order); the data waits in a spool file, and the cluster mappings in a
 * second one, until the input ends. Then the metadata's size is known and
 * the region lands right after it: the refcount blocks and the L2 tables are
 * built from the mappings, moved by that offset, each encoded once.
 *
 * @module
 */

import { doneWith } from "../io/_recycle.ts";
import { l1SizeFor } from "../format/geometry.ts";
import { encodeRefcountTableEntry } from "../format/refcount.ts";
import type { CodecPool } from "../codec/pool.ts";
import { Spool } from "../io/spool.ts";
import {
  headerCluster,
  l1Table,
  L2Tables,
  type MappingRecord,
  refcountSizing,
} from "./_metadata.ts";
import { recordStages } from "./_stages.ts";
import { HostAllocator } from "./host_allocator.ts";
import { ClusterPacker } from "./packer.ts";
import type { BackingFileName } from "./finalizer.ts";
import type { Qcow2WriterOptions } from "./qcow2_writer.ts";
import type { PlacedRecord, ZeroBytes } from "./records.ts";

/**
 * Options of {@linkcode StreamableQcow2Writer}: `Qcow2Writer`'s, and where
 * the spool files go.
 *
 * @example Spool into a directory of your own
 * ```ts
 * import assert from "node:assert";
 * import { StreamableQcow2Writer } from "./streamable.ts";
 * const spoolDir = await Deno.makeTempDir();
 * await using writer = new StreamableQcow2Writer({ spoolDir, clusterSize: 4096 });
 * const out = ReadableStream.from([new Uint8Array(8192).fill(1)]).pipeThrough(writer);
 * await new Response(out).arrayBuffer();
 * assert.strictEqual((await Array.fromAsync(Deno.readDir(spoolDir))).length, 2);
 * await writer.close(); // deletes the spool files
 * assert.strictEqual((await Array.fromAsync(Deno.readDir(spoolDir))).length, 0);
 * await Deno.remove(spoolDir);
 * ```
 */
export interface StreamableWriterOptions extends Qcow2WriterOptions {
  /** Directory for the spool files. @default {the system temporary directory} */
  spoolDir?: string;
}

/**
 * What the streamable writer produced.
 *
 * @example The stream's length and what it holds
 * ```ts
 * import assert from "node:assert";
 * import { StreamableQcow2Writer } from "./streamable.ts";
 * const raw = new Uint8Array(3 * 65536).fill(9, 0, 65536); // data, then zeros
 * await using writer = new StreamableQcow2Writer();
 * const out = ReadableStream.from([raw]).pipeThrough(writer);
 * const bytes = await new Response(out).arrayBuffer();
 * const summary = await writer.summary;
 * assert.strictEqual(summary.fileSize, bytes.byteLength);
 * assert.strictEqual(summary.dataClusters, 1);
 * assert.strictEqual(summary.zeroClusters, 2);
 * ```
 */
export interface StreamableSummary {
  /** Exact input length. */
  inputSize: number;
  /** Virtual size in the header (input rounded up to 512). */
  virtualSize: number;
  /** Length of the qcow2 stream in bytes. */
  fileSize: number;
  /** Bytes that waited in the spool files (the data region and its mappings). */
  spoolBytes: number;
  /** Guest clusters stored uncompressed. */
  dataClusters: number;
  /** Guest clusters stored compressed. */
  compressedClusters: number;
  /** Guest clusters that read as zeros (unallocated, or zero entries). */
  zeroClusters: number;
  /** Guest clusters left to the backing file (delta images). */
  backingClusters: number;
}

/**
 * Raw bytes in, a complete qcow2 v3 image out as one ordered byte stream
 * (metadata first), for writing to a pipe or uploading. The output starts
 * once the input has ended; until then data waits in a spool file. With
 * `backingFile` (and `backingImage`) it writes a delta image.
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
  #spools: Promise<Spools>;
  #summary: Promise<StreamableSummary>;

  /**
   * Builds the stages.
   *
   * @param options Cluster size, compression, refcount width, workers,
   * backing file, spool directory.
   * @throws {RangeError} For invalid options.
   */
  constructor(options: StreamableWriterOptions = {}) {
    const stages = recordStages(options);
    this.#ownPool = stages.ownPool;
    const region = new HostAllocator({
      clusterSize: stages.clusterSize,
      refcountBits: options.refcountBits,
      backfill: false,
    });
    const layout: Layout = {
      clusterSize: stages.clusterSize,
      refcountBits: options.refcountBits,
      compression: stages.compression,
      backingFile: options.backingFile,
    };
    this.#writable = stages.writable;
    this.#spools = createSpools(options.spoolDir, stages.clusterSize);
    this.#spools.catch(() => {});
    const placed = stages.records.pipeThrough(
      new ClusterPacker({ allocator: region }),
    );
    const collected = this.#spools.then((spools) =>
      collect(placed, region, spools, layout, options.onProgress)
    );
    collected.catch(() => {});
    const { promise, resolve, reject } = Promise.withResolvers<
      StreamableSummary
    >();
    promise.catch(() => {});
    this.#summary = promise;
    let parts: AsyncGenerator<Uint8Array> | undefined;
    this.#readable = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        try {
          parts ??= emit(await collected, layout, await this.#spools, resolve);
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
        await closeSpools(this.#spools);
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
   * Stops the workers this writer started and deletes the spool files.
   *
   * @returns When done.
   */
  async close(): Promise<void> {
    await this.#ownPool?.close();
    await closeSpools(this.#spools);
  }

  /** Same as {@linkcode StreamableQcow2Writer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The settings the metadata is built with. */
interface Layout {
  clusterSize: number;
  refcountBits: number | undefined;
  compression: "none" | "zlib" | "zstd";
  backingFile: BackingFileName | undefined;
}

/** The data region, and the mappings of guest clusters into it. */
interface Spools {
  data: Spool;
  mappings: MappingLog;
}

async function createSpools(
  dir: string | undefined,
  clusterSize: number,
): Promise<Spools> {
  const data = await Spool.create(dir);
  try {
    const mappings = new MappingLog(await Spool.create(dir), clusterSize);
    return { data, mappings };
  } catch (err) {
    await data.close();
    throw err;
  }
}

async function closeSpools(spools: Promise<Spools>): Promise<void> {
  const s = await spools.catch(() => undefined);
  await s?.data.close();
  await s?.mappings.spool.close();
}

/** What the input came to, once it has ended. */
interface Collected {
  inputSize: number;
  /** Indices of the L2 tables that hold entries, ascending. */
  tables: number[];
  /** Clusters of the data region. */
  dataClusters: number;
}

/**
 * Consumes the packer's output: data into the data spool (the region's
 * offset o at o - clusterSize: its cluster 0 stands for a header it does
 * not have), mappings into the log.
 */
async function collect(
  placed: ReadableStream<PlacedRecord>,
  region: HostAllocator,
  spools: Spools,
  layout: Layout,
  onProgress: ((guestBytes: number) => void) | undefined,
): Promise<Collected> {
  const cs = layout.clusterSize;
  const entries = cs / 8;
  const backing = layout.backingFile !== undefined;
  const tables: number[] = [];
  let inputSize = -1;
  let mapped = 0;
  for await (const record of placed) {
    if (record.kind === "write") {
      await spools.data.writeAt(record.offset - cs, record.data);
      doneWith(record.data); // written: buffers may go round
      continue;
    }
    if (record.kind === "end") {
      inputSize = record.size;
      continue;
    }
    await spools.mappings.add(record);
    if (L2Tables.writes(record, backing)) {
      const last = Math.floor((record.index + record.count - 1) / entries);
      let t = Math.floor(record.index / entries);
      if (tables.length > 0 && t <= tables.at(-1)!) t = tables.at(-1)! + 1;
      for (; t <= last; t++) tables.push(t);
    }
    mapped += record.count * cs;
    onProgress?.(mapped);
    // The region's refcounts are counted again once it is placed.
    region.takeFinalBlocks();
  }
  if (inputSize < 0) {
    throw new Error(
      "Cannot finish qcow2 stream: the input ended without an end record",
    );
  }
  await spools.mappings.flush();
  return { inputSize, tables, dataClusters: region.end / cs - 1 };
}

/** Where everything goes once the input has ended. */
interface Placement {
  virtualSize: number;
  l1Size: number;
  reftableClusters: number;
  blocks: number;
  /** Clusters before the data region. */
  metaClusters: number;
  blocksOffset: number;
  l1Offset: number;
  tablesOffset: number;
  /** What to add to a region offset to get a file offset. */
  shift: number;
}

function place(c: Collected, layout: Layout, blockEntries: number): Placement {
  const cs = layout.clusterSize;
  const virtualSize = Math.ceil(c.inputSize / 512) * 512;
  const l1Size = l1SizeFor(virtualSize, Math.log2(cs), false);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const { blocks, tableClusters } = refcountSizing(
    1 + l1Clusters + c.tables.length + c.dataClusters,
    blockEntries,
    cs,
  );
  const blocksOffset = (1 + tableClusters) * cs;
  const l1Offset = blocksOffset + blocks * cs;
  const tablesOffset = l1Offset + l1Clusters * cs;
  const metaClusters = tablesOffset / cs + c.tables.length;
  return {
    virtualSize,
    l1Size,
    reftableClusters: tableClusters,
    blocks,
    metaClusters,
    blocksOffset,
    l1Offset,
    tablesOffset,
    shift: (metaClusters - 1) * cs,
  };
}

/** Produces the image bytes: the metadata, then the spooled data. */
async function* emit(
  c: Collected,
  layout: Layout,
  spools: Spools,
  done: (s: StreamableSummary) => void,
): AsyncGenerator<Uint8Array> {
  const cs = layout.clusterSize;
  const refcounts = new HostAllocator({
    clusterSize: cs,
    refcountBits: layout.refcountBits,
    backfill: false,
  });
  const p = place(c, layout, refcounts.blockEntries);
  yield headerCluster({
    virtualSize: p.virtualSize,
    clusterSize: cs,
    refcountOrder: refcounts.refcountOrder,
    compression: layout.compression === "zstd" ? "zstd" : "zlib",
    l1Size: p.l1Size,
    l1TableOffset: p.l1Size > 0 ? p.l1Offset : 0,
    refcountTableOffset: cs,
    refcountTableClusters: p.reftableClusters,
    backingFile: layout.backingFile,
  });
  const reftable = new Uint8Array(p.reftableClusters * cs);
  for (let j = 0; j < p.blocks; j++) {
    encodeRefcountTableEntry(reftable, j, p.blocksOffset + j * cs);
  }
  yield reftable;
  yield* refcountBlocks(refcounts, p, c, spools.mappings);
  if (p.l1Size > 0) {
    const l2Offsets: number[] = [];
    c.tables.forEach((t, k) => l2Offsets[t] = p.tablesOffset + k * cs);
    yield l1Table(p.l1Size, cs, l2Offsets);
  }
  const l2 = new L2Tables(cs, layout.backingFile !== undefined);
  yield* l2Tables(l2, c.tables, p.shift, spools.mappings);
  const dataBytes = c.dataClusters * cs;
  yield* await spools.data.readable(0, dataBytes);
  done({
    inputSize: c.inputSize,
    virtualSize: p.virtualSize,
    fileSize: (p.metaClusters + c.dataClusters) * cs,
    spoolBytes: dataBytes + spools.mappings.bytes,
    dataClusters: l2.counts.data,
    compressedClusters: l2.counts.compressed,
    zeroClusters: l2.counts.zero,
    backingClusters: l2.counts.backing,
  });
}

/** The refcount blocks of the whole file: metadata, then the region moved into place. */
async function* refcountBlocks(
  refcounts: HostAllocator,
  p: Placement,
  c: Collected,
  mappings: MappingLog,
): AsyncGenerator<Uint8Array> {
  const cs = refcounts.clusterSize;
  let next = 0;
  const take = function* (all: boolean) {
    for (const { index, block } of refcounts.takeFinalBlocks(all)) {
      if (index !== next++) {
        throw new Error(
          `Internal error: refcount block ${index} is out of order`,
        );
      }
      yield block;
    }
  };
  refcounts.allocClusters(p.metaClusters - 1); // the header's is counted
  for await (const record of mappings.records(p.shift)) {
    if (record.kind === "normal") {
      refcounts.addReferences(record.hostOffset, record.count * cs);
    } else if (record.kind === "compressed") {
      record.hostOffsets.forEach((offset, i) =>
        refcounts.addReferences(offset, record.sectors[i] * 512)
      );
    }
    yield* take(false);
  }
  const end = (p.metaClusters + c.dataClusters) * cs;
  if (refcounts.end !== end) {
    throw new Error(
      `Internal error: the data region ends at ${refcounts.end}, not ${end}`,
    );
  }
  yield* take(true);
  if (next !== p.blocks) {
    throw new Error(
      `Internal error: ${next} refcount blocks written, ${p.blocks} placed`,
    );
  }
}

/** The L2 tables, in order, from the mappings moved into place. */
async function* l2Tables(
  l2: L2Tables,
  tables: number[],
  shift: number,
  mappings: MappingLog,
): AsyncGenerator<Uint8Array> {
  let k = 0;
  const take = function* (limit: number) {
    for (const { index, table } of l2.takeBelow(limit)) {
      if (index !== tables[k++]) {
        throw new Error(`Internal error: L2 table ${index} was not placed`);
      }
      yield table;
    }
  };
  const entries = mappings.clusterSize / 8;
  for await (const record of mappings.records(shift)) {
    l2.map(record);
    yield* take(Math.floor((record.index + record.count) / entries));
  }
  yield* take(Infinity);
  if (k !== tables.length) {
    throw new Error(
      `Internal error: ${k} L2 tables written, ${tables.length} placed`,
    );
  }
}

const KINDS = ["normal", "compressed", "zero", "backing"] as const;

/**
 * Mapping records parked in a spool, in guest order, as pairs of float64:
 * `[index, count * 4 + kind]`, then for `normal` `[hostOffset, 0]` and for
 * `compressed` one `[hostOffset, sectors]` a cluster.
 */
class MappingLog {
  readonly spool: Spool;
  readonly clusterSize: number;
  #pending: number[] = [];
  #bytes = 0;

  constructor(spool: Spool, clusterSize: number) {
    this.spool = spool;
    this.clusterSize = clusterSize;
  }

  /** Bytes parked. */
  get bytes(): number {
    return this.#bytes + this.#pending.length * 8;
  }

  async add(r: MappingRecord): Promise<void> {
    const out = this.#pending;
    out.push(r.index, r.count * 4 + KINDS.indexOf(r.kind));
    if (r.kind === "normal") out.push(r.hostOffset, 0);
    if (r.kind === "compressed") {
      for (let i = 0; i < r.count; i++) {
        out.push(r.hostOffsets[i], r.sectors[i]);
      }
    }
    if (out.length >= 8192) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.#pending.length === 0) return;
    const bytes = new Uint8Array(Float64Array.from(this.#pending).buffer);
    this.#pending = [];
    await this.spool.writeAt(this.#bytes, bytes);
    this.#bytes += bytes.length;
  }

  /** Reads the records back, host offsets moved by `shift`. */
  async *records(shift: number): AsyncGenerator<MappingRecord> {
    let carry = new Uint8Array(0);
    let open: MappingRecord | undefined;
    for await (const chunk of await this.spool.readable(0, this.#bytes)) {
      const bytes = new Uint8Array(carry.length + chunk.length);
      bytes.set(carry);
      bytes.set(chunk, carry.length);
      const whole = bytes.length - (bytes.length % 16);
      carry = bytes.slice(whole);
      const units = new Float64Array(bytes.buffer, 0, whole / 8);
      const done: MappingRecord[] = [];
      for (let u = 0; u < units.length; u += 2) {
        const [a, b] = [units[u], units[u + 1]];
        if (open?.kind === "normal") {
          open.hostOffset = a + shift;
        } else if (open?.kind === "compressed") {
          open.hostOffsets.push(a + shift);
          open.sectors.push(b);
          if (open.hostOffsets.length < open.count) continue;
        } else {
          const kind = KINDS[b % 4];
          const base = { index: a, count: Math.floor(b / 4) };
          open = kind === "normal"
            ? { kind, ...base, hostOffset: 0 }
            : kind === "compressed"
            ? { kind, ...base, hostOffsets: [], sectors: [] }
            : { kind, ...base };
          if (kind === "normal" || kind === "compressed") continue;
        }
        done.push(open!);
        open = undefined;
      }
      yield* done;
    }
  }
}
