// The read-ahead queue behind readSegments(): an image's plan items go in,
// in guest order; segments come out in the same order, while the reads
// and decompression jobs of the next ones run. Its two rules:
//
// Budget. Work runs ahead of the consumer until one limit is reached:
// `jobs` reads and decompression jobs, `localBytes` guest bytes of them
// (`remoteBytes` while any reads from a remote source, lib/io/source.ts's
// isRemote(); `aheadBytes` while any reads from a source that fetches
// ahead itself, HttpSource), or `segments` queued in all. Holes, and
// pieces of a cluster that is already decompressed, cost no job and no
// byte: they must not keep reads from going out (over HTTP each read is a
// round trip), and `segments` keeps their queue short. Why these numbers:
// - A local file answers from the page cache: four chunks of 2 MiB. The
//   segment the consumer is writing has left the queue, and the next job
//   goes out only once it asks again: with two, a worker finished its job
//   with none queued behind it at 256 of 269 completions (expanding a
//   1 GiB zstd image, 557 MB of data), waiting for the main thread each
//   time; with four at 52, peak RSS 134 MiB instead of 121-125. More only
//   holds memory (4 MiB chunks: 123 MiB peak with 2 in flight, 165 MiB
//   with 8, no faster).
// - A remote source as many (a Blob's reads; HttpSource's without its
//   read window).
// - Over HTTP two: HttpSource fetches ahead of reads that run forward on
//   its own (its read window, several connections at once), so more here
//   only holds memory, in jobs waiting for the network. Expanding a
//   189 MB zstd image over a capped server (50 ms per request, 20 MB/s
//   per connection), peak RSS was 206 MiB with 8 chunks, 185 MiB with 4,
//   173 MiB with 2, no faster with more (it was 8 when the window did not
//   exist: bytes in flight hid round trips); a 293 MB image of less
//   compressible data (data clusters between compressed ones: many small
//   jobs) 185 MiB with 4, 168 MiB with 2, as fast.
// - 64 jobs: many small reads may be out at once (an HTTP source merges
//   reads asked for together); the bytes bound the memory.
//
// Buffers (only with `reuseBuffers`; lib/bytes/recycle.ts's BufferPool).
// - With a codec pool, every buffer below is one of the pool's carriers
//   (CodecPool.carrier/giveBack): one pool for payloads, clusters and
//   data. A pool per kind held the high-water mark of each kind and size
//   at once, most of it free: 20 MiB in the queue's pool and 14 MiB in
//   the carriers near the peak of the 293 MB image above.
// - A job takes its buffers when it is queued: a data piece's (read with
//   `readInto`) and the payload buffer a compressed group's bytes are
//   read into; the group's output buffer once those are read (a job
//   waiting for the network holds none).
// - The payload buffer goes back as soon as the payloads are copied into
//   a worker's job, or decompressed on this thread.
// - A segment's buffer is lent to the consumer when next() hands the
//   segment out, and comes back at the following next(): a consumer that
//   asks for reuseBuffers is done with a segment's bytes by the time it
//   asks for the next one (expandToFile() has written them).
// - Bytes kept longer than their segment (the last decompressed cluster,
//   for the next pieces of it) are a copy, never a view of a pooled buffer.
// - On an error or an early stop, buffers out are left to the collector.
// With `recycle` instead, segments' bytes (data read, clusters
// decompressed) are in a Recycler's chunk-sized buffers, which go round in
// queue order once the pipeline calls doneWith() on a later one; the
// payload buffers go back to a BufferPool as above.
// In debug mode (QCOW2PIPE_POISON=1) a buffer is filled with 0xDB when it
// goes back, so a consumer that breaks the rule reads garbage at once.

import { BufferPool, Recycler } from "../bytes/recycle.ts";
import { readError } from "../io/os_errors.ts";
import { isRemote } from "../io/source.ts";
import type { CodecPool } from "../codec/pool.ts";
import type { PlanItem, Segment } from "./image.ts";
import type { ImageSink } from "../io/sink.ts";
import {
  decompressError,
  inlineCodec,
  readCompressedItem,
  readCompressedPayload,
  readDataItem,
} from "./_read.ts";
import { compressedRange } from "../format/compressed.ts";
import { hex, InternalError } from "../format/errors.ts";
import { SECTOR_SIZE } from "../format/geometry.ts";

/** Largest data segment and decompression job when none is asked for. */
export const DEFAULT_CHUNK = 2 * 1024 * 1024;
/** Reads and decompression jobs ahead when none is asked for. */
export const DEFAULT_JOBS_AHEAD = 64;
/** Chunks of guest bytes ahead while every read is from a local file. */
export const LOCAL_CHUNKS_AHEAD = 4;
/** Chunks of guest bytes ahead while a read is from a remote source. */
export const REMOTE_CHUNKS_AHEAD = 4;
/**
 * Chunks of guest bytes ahead while a read is from a source that fetches
 * ahead itself (`fetchesAhead`: HttpSource's read window).
 */
export const FETCHED_CHUNKS_AHEAD = 2;
/**
 * Copies in flight, and the guest bytes of each, when data is copied file
 * to file: they hold no memory, and several large ones outstanding let a
 * cold disk answer them in parallel, as `qemu-img convert -m 16` keeps 16
 * requests out. Expanding a 2 GiB ext4 image of /usr (1 GB of data) from a
 * cold cache: 8 copies of 8 MiB about as fast as 16 of 16 MiB, ahead of 16
 * of 2 MiB and of 32 of 1 MiB (bench/RESULTS.md, issue 26).
 */
export const COPIES_AHEAD = 8;
export const COPY_CHUNK = 8 * 1024 * 1024;
/** Segments queued in all (holes included), per job allowed ahead. */
const SEGMENTS_PER_JOB = 16;

/** How much work may run ahead of the consumer. */
export interface ReadAheadBudget {
  /** Reads and decompression jobs queued. */
  jobs: number;
  /** Their guest bytes, while every one reads from a local source. */
  localBytes: number;
  /** Their guest bytes, while any reads from a remote source (`isRemote`). */
  remoteBytes: number;
  /** Their guest bytes, while any reads from a source that fetches ahead. */
  aheadBytes: number;
  /** Segments queued, holes included. */
  segments: number;
}

/**
 * The budget for a chunk size: `jobs` and `bytes` (both kinds of source)
 * when given, the defaults above otherwise.
 */
export function readAheadBudget(
  chunk: number,
  jobs = DEFAULT_JOBS_AHEAD,
  bytes?: number,
): ReadAheadBudget {
  return {
    jobs,
    localBytes: bytes ?? LOCAL_CHUNKS_AHEAD * chunk,
    remoteBytes: bytes ?? REMOTE_CHUNKS_AHEAD * chunk,
    aheadBytes: bytes ?? FETCHED_CHUNKS_AHEAD * chunk,
    segments: SEGMENTS_PER_JOB * jobs,
  };
}

/**
 * Where a queue's pooled buffers come from: the codec pool's carriers when
 * there is a pool, so that payloads, clusters and data share one pool's
 * buffers (see Buffers above), else a pool of its own.
 */
type Buffers = Pick<BufferPool, "take" | "put">;

/** A segment in the queue, read or still being read. */
interface Queued {
  segment: Promise<Segment>;
  /** Guest bytes of its read or decompression job; 0 for none. */
  bytes: number;
  /** Whether its job is a copy, file to file. */
  copy?: boolean;
  /** Whether its job reads from a remote source. */
  remote: boolean;
  /** Whether its job reads from a source that fetches ahead itself. */
  ahead?: boolean;
  /** The pooled buffer its bytes are in, known once it is read. */
  buffer?: () => Uint8Array | undefined;
  /** The plan items it reads, read again one by one when salvaging. */
  items?: PlanItem[];
  /** For a range the plan could not map: why (told when it is taken). */
  unreadable?: Error;
}

/**
 * Told of each guest range that reads as zeros instead of failing, in
 * guest order: `"read"` for a read that failed again when made piece by
 * piece (a compressed cluster's piece, or a 512-byte sector of data),
 * `"map"` for a range the image's tables could not map (a cluster or L2
 * table past the end of the file), where nothing was read.
 *
 * @example Count the bytes read as zeros
 * ```ts
 * import assert from "node:assert";
 * import type { SalvageReport } from "./_read_ahead.ts";
 * let lost = 0;
 * const report: SalvageReport = (_offset, length) => void (lost += length);
 * report(65536, 512, new Error("Cannot read: I/O error"), "read");
 * assert.strictEqual(lost, 512);
 * ```
 */
export type SalvageReport = (
  offset: number,
  length: number,
  error: Error,
  cause: "read" | "map",
) => void;

/** The last cluster decompressed, kept for the next pieces of it. */
interface LastCluster {
  item: PlanItem;
  cluster: Promise<Uint8Array>;
}

/** What a read-ahead queue needs. */
export interface ReadAheadOptions {
  /** Largest data segment, and most guest bytes per decompression job. */
  chunk: number;
  /** How far work runs ahead. */
  budget: ReadAheadBudget;
  /** Workers for decompression; without a pool it runs on this thread. */
  pool?: CodecPool;
  /** Read into buffers used again (see the buffer rule above). */
  reuseBuffers?: boolean;
  /** Read into buffers that go round in order (`ReadImageOptions.recycle`). */
  recycle?: boolean;
  /**
   * Copies a data piece's bytes to their guest offset in the output, file
   * to file; resolves false where it cannot, and the piece is read instead.
   */
  copy?: CopyRange;
  /** With it, a read that fails reads as zeros (see {@linkcode salvaged}). */
  salvage?: SalvageReport;
}

/**
 * Copies a range of a source to a guest offset of the output (an
 * `ImageSink.copyFrom`); false when it cannot.
 */
type CopyRange = NonNullable<ImageSink["copyFrom"]>;

/**
 * Plan items in, segments out in the same order, with reads and
 * decompression running ahead within a budget. The caller adds items
 * until {@linkcode ReadAhead.full}, then takes segments.
 */
export class ReadAhead {
  readonly #chunk: number;
  readonly #budget: ReadAheadBudget;
  readonly #pool: CodecPool | undefined;
  /** Cleared once a copy could not be made: the rest is read. */
  #copy: CopyRange | undefined;
  /** Of the queued segments, those whose job is a copy. */
  #copies = 0;
  /** With reuseBuffers: where every buffer of a job comes from. */
  readonly #buffers: Buffers | undefined;
  /** With recycle: where segments' buffers come from. */
  readonly #recycler: Recycler | undefined;
  /** Where compressed payloads are read, with either. */
  readonly #payloads: Buffers | undefined;
  /** Segments in guest order, oldest first. */
  readonly #queue: Queued[] = [];
  /** Of the queued segments, those with a job: how many, their bytes. */
  #jobs = 0;
  #jobBytes = 0;
  /** Of those jobs, the ones reading from a remote source. */
  #remoteJobs = 0;
  /** And the ones reading from a source that fetches ahead itself. */
  #aheadJobs = 0;
  /** Compressed items gathered for one decompression job. */
  #group: PlanItem[] = [];
  #groupBytes = 0;
  /**
   * The last cluster decompressed: an overlay with small clusters over a
   * compressed backing cluster reads that cluster in several pieces.
   */
  #last: LastCluster | undefined;
  /** The buffer of the segment last handed out, lent to the consumer. */
  #lent: Uint8Array | undefined;
  readonly #salvage: SalvageReport | undefined;

  /** @param options Chunk size, budget, pool, buffer reuse. */
  constructor(options: ReadAheadOptions) {
    this.#chunk = options.chunk;
    this.#budget = options.budget;
    this.#pool = options.pool;
    this.#copy = options.copy;
    this.#salvage = options.salvage;
    const pool = options.pool;
    const buffers = (): Buffers =>
      pool
        ? { take: (n) => pool.carrier(n), put: (b) => pool.giveBack(b) }
        : new BufferPool();
    this.#buffers = options.reuseBuffers ? buffers() : undefined;
    this.#recycler = !options.reuseBuffers && options.recycle
      ? new Recycler(options.chunk)
      : undefined;
    this.#payloads = this.#buffers ?? (this.#recycler ? buffers() : undefined);
  }

  /**
   * A recycled buffer for `length` bytes of a segment, if it fills at
   * least half of one: the budget counts a job's own bytes, so small
   * pieces (a grain every 16 MiB of a sparse disk) each holding a whole
   * chunk would multiply what is held (a 4 GiB sparse VMDK from a pipe
   * peaked at 275 MiB, against 158 MiB with fresh buffers).
   */
  #recycled(length: number): Uint8Array | undefined {
    const r = this.#recycler;
    return r && length <= r.size && 2 * length >= r.size ? r.take() : undefined;
  }

  /** Whether the budget is spent: segments must be taken before more is added. */
  get full(): boolean {
    const b = this.#budget;
    return this.#jobs >= b.jobs || this.#copies >= COPIES_AHEAD ||
      this.#jobBytes >= this.#byteBudget ||
      this.#queue.length >= b.segments;
  }

  /** The guest bytes jobs may hold, by the sources they read from. */
  get #byteBudget(): number {
    const b = this.#budget;
    if (this.#aheadJobs > 0) return b.aheadBytes;
    return this.#remoteJobs > 0 ? b.remoteBytes : b.localBytes;
  }

  /** Segments queued, read or not. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * The pieces `item` is added as: a data item in chunks (of at least
   * {@linkcode COPY_CHUNK} while data is copied), each its own read or
   * copy; any other item whole.
   */
  *pieces(item: PlanItem): Generator<PlanItem> {
    if (item.kind !== "data") {
      yield item;
      return;
    }
    const chunk = this.#copy ? Math.max(COPY_CHUNK, this.#chunk) : this.#chunk;
    for (let at = 0; at < item.length; at += chunk) {
      yield {
        ...item,
        offset: item.offset + at,
        length: Math.min(chunk, item.length - at),
        hostOffset: item.hostOffset! + at,
      };
    }
  }

  /**
   * Queues the segment of a plan item (a data item at most one chunk, see
   * {@linkcode ReadAhead.pieces}). Compressed items are gathered into one
   * job until a chunk's worth, or until an item that does not belong.
   */
  add(item: PlanItem): void {
    if (item.kind !== "compressed") {
      this.flush();
      if (item.kind === "data") this.#addData(item);
      else {
        const { offset, length } = item;
        this.#push(Promise.resolve({ offset, length, data: null }), 0);
      }
    } else if (
      this.#group.length === 0 && this.#last &&
      sameCluster(this.#last.item, item)
    ) {
      const from = item.offset - item.compressed!.clusterOffset;
      const { offset, length } = item;
      this.#push(
        this.#last.cluster.then((c) => ({
          offset,
          length,
          data: c.subarray(from, from + length),
        })),
        0,
        undefined,
        undefined,
        [item],
      );
    } else {
      // A group is decompressed with one codec and cluster size and read
      // from one file: images of a backing chain may differ in all three.
      const head = this.#group[0];
      if (
        head !== undefined && (head.source !== item.source ||
          head.compressed!.type !== item.compressed!.type ||
          head.compressed!.clusterSize !== item.compressed!.clusterSize)
      ) {
        this.flush();
      }
      this.#group.push(item);
      this.#groupBytes += item.compressed!.clusterSize;
      if (this.#groupBytes >= this.#chunk) this.flush();
    }
  }

  /** Sends the compressed items gathered so far as one job. */
  flush(): void {
    if (this.#group.length === 0) return;
    const items = this.#group;
    this.#group = [];
    this.#groupBytes = 0;
    const cs = items[0].compressed!.clusterSize;
    const n = items.length;
    const buffers = this.#buffers;
    // A recycled buffer is taken now (they go round in queue order); a
    // pooled one once the payloads are read: a job waiting for the
    // network holds no output buffer.
    const recycled = buffers ? undefined : this.#recycled(n * cs);
    const was = recycled?.buffer as ArrayBuffer | undefined;
    let out: Uint8Array | undefined = recycled;
    let size = recycled?.length ?? 0; // a transfer detaches `out`: 0 after
    const takeOut = () => {
      if (buffers) {
        out = buffers.take(n * cs);
        size = out.length;
      }
      return out;
    };
    const clusters = decompressClusters(
      items,
      this.#pool,
      takeOut,
      this.#payloads,
    );
    // With `out`, the clusters come back in its memory (a transfer gives
    // it a new ArrayBuffer): that is the buffer that goes back.
    let pooled: Uint8Array | undefined;
    this.#push(
      clusters.then((c) => {
        if (recycled) this.#recycler!.moved(was!, c.buffer as ArrayBuffer);
        else if (out) pooled = new Uint8Array(c.buffer, 0, size);
        return joinPieces(items, c);
      }),
      n * cs,
      items[0].source,
      () => pooled,
      items,
    );
    this.#last = {
      item: items[n - 1],
      // A copy when the clusters' buffer goes back.
      cluster: clusters.then((c) =>
        out ? c.slice((n - 1) * cs, n * cs) : c.subarray((n - 1) * cs, n * cs)
      ),
    };
    this.#last.cluster.catch(() => {}); // awaited by a later piece, if any
  }

  /**
   * The oldest segment, once read. The consumer is done with the one
   * handed out before: its buffer goes back.
   *
   * @throws {Qcow2Error} When its read or decompression failed.
   */
  async next(): Promise<Segment> {
    const entry = this.#queue.shift()!;
    if (entry.copy) this.#copies--;
    if (entry.bytes > 0) {
      this.#jobs--;
      this.#jobBytes -= entry.bytes;
      if (entry.remote) this.#remoteJobs--;
      if (entry.ahead) this.#aheadJobs--;
    }
    let segment: Segment;
    try {
      segment = await entry.segment;
    } catch (err) {
      // A crashed worker says nothing of the image: never salvaged.
      if (!this.#salvage || !entry.items || err instanceof InternalError) {
        throw err;
      }
      segment = await salvaged(entry.items, this.#salvage);
      entry.buffer = undefined; // its bytes are in a buffer of their own
    }
    if (entry.unreadable) {
      this.#salvage!(
        segment.offset,
        segment.length,
        entry.unreadable,
        "map",
      );
    }
    if (this.#lent) this.#buffers!.put(this.#lent);
    this.#lent = entry.buffer?.();
    return segment;
  }

  /**
   * Queues zeros for a range the plan could not map, when salvaging: the
   * report is made when its segment is taken, in guest order.
   */
  addUnreadable(offset: number, length: number, error: Error): void {
    this.flush();
    const segment = Promise.resolve({ offset, length, data: null });
    this.#queue.push({ segment, bytes: 0, remote: false, unreadable: error });
  }

  /** Forgets what is queued: the consumer stopped. */
  clear(): void {
    this.#queue.length = 0;
  }

  /**
   * Queues a copy of a data piece, file to file, read instead where it
   * cannot be copied (and then every piece after it is read). A copy
   * holds no memory, so it counts against {@linkcode COPIES_AHEAD} and not
   * against the bytes of the budget; a piece read instead reads into a
   * buffer of its own: at most COPIES_AHEAD of them, once.
   */
  #addCopy(piece: PlanItem, copy: CopyRange): void {
    const { offset, length } = piece;
    const source = piece.source!;
    const segment = copy(source, piece.hostOffset!, offset, length).then(
      async (copied): Promise<Segment> => {
        if (copied) return { offset, length, data: null, copied };
        this.#copy = undefined;
        return { offset, length, data: await readDataItem(piece) };
      },
    );
    segment.catch(() => {}); // awaited in order by next()
    this.#queue.push({
      segment,
      bytes: 0,
      remote: false,
      copy: true,
      items: [piece],
    });
    this.#copies++;
  }

  /** Queues a read of a data piece, into a pooled buffer when it can. */
  #addData(piece: PlanItem): void {
    if (this.#copy && piece.source) {
      this.#addCopy(piece, this.#copy);
      return;
    }
    const readInto = piece.source?.readInto !== undefined;
    const buffer = this.#buffers && readInto
      ? this.#buffers.take(piece.length)
      : undefined;
    const into = buffer ??
      (readInto ? this.#recycled(piece.length) : undefined);
    const { offset, length } = piece;
    this.#push(
      readDataItem(piece, into).then((data) => ({ offset, length, data })),
      length,
      piece.source,
      buffer && (() => buffer),
      [piece],
    );
  }

  /** Queues a segment whose job is `bytes` of I/O or decompression from `source`. */
  #push(
    segment: Promise<Segment>,
    bytes: number,
    source?: PlanItem["source"],
    buffer?: () => Uint8Array | undefined,
    items?: PlanItem[],
  ): void {
    segment.catch(() => {}); // awaited in order by next()
    const remote = bytes > 0 && (source === undefined || isRemote(source));
    const ahead = bytes > 0 && source?.fetchesAhead === true;
    this.#queue.push({ segment, bytes, remote, ahead, buffer, items });
    if (bytes > 0) {
      this.#jobs++;
      this.#jobBytes += bytes;
      if (remote) this.#remoteJobs++;
      if (ahead) this.#aheadJobs++;
    }
  }
}

/**
 * Reads and decompresses the clusters of consecutive compressed items as
 * one job, into the buffer `takeOut` gives once the payloads are read
 * (else a new buffer). Payloads are read into a carrier of the pool when
 * the source reads into buffers, else into a buffer from `buffers` when
 * given.
 */
async function decompressClusters(
  items: PlanItem[],
  pool: CodecPool | undefined,
  takeOut: () => Uint8Array | undefined,
  buffers: Buffers | undefined,
): Promise<Uint8Array> {
  const ranges = items.map((i) => compressedRange(i.compressed!.descriptor));
  const lo = Math.min(...ranges.map((r) => r.offset));
  const hi = Math.max(...ranges.map((r) => r.offset + r.length));
  const total = ranges.reduce((n, r) => n + r.length, 0);
  const { type, clusterSize } = items[0].compressed!;
  const cs = clusterSize;
  /** A codec's error, named by the item whose payload failed. */
  const failed = (err: unknown) =>
    decompressError(
      items[(err as { index?: number }).index ?? 0] ?? items[0],
      err,
    );
  let payloads: Uint8Array[];
  let into: Uint8Array | undefined; // the pooled buffer the payloads are in
  if (
    hi - lo <= 2 * total && items.every((i) => i.source === items[0].source)
  ) {
    // Usually packed back to back: one read for the whole group. With
    // workers and a source that reads into buffers, into one the job
    // carries to a worker as it is: the payloads are not copied again.
    let bytes: Uint8Array;
    const source = items[0].source!;
    const carried = pool && source.readInto ? pool.carrier(hi - lo) : undefined;
    if (!carried && buffers && source.readInto) into = buffers.take(hi - lo);
    const target = carried ?? into?.subarray(0, hi - lo);
    try {
      bytes = target
        ? target.subarray(0, await source.readInto!(lo, target))
        : await source.read(lo, hi - lo);
    } catch (err) {
      throw readError(`compressed clusters at host offset ${hex(lo)}`, err);
    }
    const spans = ranges.map((r) => {
      const from = Math.min(bytes.length, r.offset - lo);
      return {
        offset: from,
        length: Math.min(bytes.length, r.offset - lo + r.length) - from,
      };
    });
    if (carried) {
      try {
        return await pool!.decompressIn({ type }, bytes, spans, cs, takeOut());
      } catch (err) {
        throw failed(err);
      }
    }
    payloads = spans.map((r) => bytes.subarray(r.offset, r.offset + r.length));
  } else {
    payloads = await Promise.all(items.map(readCompressedPayload));
  }
  const out = takeOut();
  let clusters: Uint8Array;
  try {
    if (pool) {
      // The payloads are copied into the job at once: their buffer is free.
      const job = pool.decompress({ type }, payloads, cs, out);
      if (into) buffers!.put(into);
      clusters = await job;
    } else {
      const codec = await inlineCodec(type);
      clusters = out?.subarray(0, items.length * cs) ??
        new Uint8Array(items.length * cs);
      for (let i = 0; i < items.length; i++) {
        try {
          codec.decompressTo(
            payloads[i],
            clusters.subarray(i * cs, (i + 1) * cs),
          );
        } catch (err) {
          throw Object.assign(err as Error, { index: i });
        }
      }
      if (into) buffers!.put(into);
    }
  } catch (err) {
    throw failed(err);
  }
  return clusters;
}

/**
 * The bytes of a segment whose job failed, read again item by item on this
 * thread, as qemu-img's `--salvage` reads a failed request again sector by
 * sector: a compressed piece that fails again reads as zeros, and so does
 * each 512-byte sector of data that fails again; `report` is told of each.
 * One segment at a time, at most a chunk: memory stays bounded, and the
 * time is one read per sector of the failed range.
 */
async function salvaged(
  items: PlanItem[],
  report: SalvageReport,
): Promise<Segment> {
  const length = items.reduce((n, i) => n + i.length, 0);
  const out = new Uint8Array(length);
  const first = items[0].offset;
  const attempt = async (item: PlanItem): Promise<void> => {
    try {
      out.set(
        item.kind === "compressed"
          ? await readCompressedItem(item)
          : await readDataItem(item),
        item.offset - first,
      );
    } catch (err) {
      if (err instanceof InternalError) throw err;
      report(item.offset, item.length, err as Error, "read");
    }
  };
  for (const item of items) {
    if (item.kind === "compressed" || item.length <= SECTOR_SIZE) {
      await attempt(item);
      continue;
    }
    for (let at = 0; at < item.length; at += SECTOR_SIZE) {
      await attempt({
        ...item,
        offset: item.offset + at,
        length: Math.min(SECTOR_SIZE, item.length - at),
        hostOffset: item.hostOffset! + at,
      });
    }
  }
  return { offset: first, length, data: out };
}

/** Whether two compressed items are pieces of the same cluster. */
function sameCluster(a: PlanItem, b: PlanItem): boolean {
  return a.source === b.source &&
    a.compressed!.descriptor.hostOffset ===
      b.compressed!.descriptor.hostOffset &&
    a.compressed!.clusterOffset === b.compressed!.clusterOffset;
}

/** Cuts each item's bytes out of its decompressed cluster. */
function joinPieces(items: PlanItem[], clusters: Uint8Array): Segment {
  const clusterSize = items[0].compressed!.clusterSize;
  const offset = items[0].offset;
  const length = items.reduce((n, i) => n + i.length, 0);
  if (
    items.every((it) =>
      it.offset === it.compressed!.clusterOffset && it.length === clusterSize
    )
  ) {
    return { offset, length, data: clusters }; // whole clusters: already in place
  }
  const out = items.length === 1 ? undefined : new Uint8Array(length);
  let at = 0;
  for (let i = 0; i < items.length; i++) {
    const it = items[i];
    const from = i * clusterSize + (it.offset - it.compressed!.clusterOffset);
    const part = clusters.subarray(from, from + it.length);
    if (!out) return { offset, length, data: part };
    out.set(part, at);
    at += it.length;
  }
  return { offset, length, data: out! };
}
