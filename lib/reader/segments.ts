/**
 * The guest bytes of an image, in order, with reads and decompression
 * running ahead in parallel (bounded) and zero ranges left as holes.
 *
 * @module
 */

import { BufferPool } from "../io/_recycle.ts";
import type { CodecPool } from "../codec/pool.ts";
import type { GuestImage, PlanItem } from "./image.ts";
import {
  decompressError,
  inlineCodec,
  readCompressedPayload,
  readDataItem,
} from "./_read.ts";
import { compressedRange } from "../format/compressed.ts";
import { hex, Qcow2Error } from "../format/errors.ts";

/**
 * A run of guest bytes: `data` holds them, or is `null` when they are all
 * zeros (a hole).
 *
 * @example Count the bytes an expansion would write
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { readSegments, type Segment } from "./segments.ts";
 * const raw = new Uint8Array(1 << 20);
 * raw.fill(1, 0, 4096);
 * await using image = await openImage(raw);
 * const segments: Segment[] = await Array.fromAsync(readSegments(image));
 * assert.strictEqual(segments.reduce((n, s) => n + s.length, 0), 1 << 20);
 * ```
 */
export interface Segment {
  /** Guest offset. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** The bytes, or null for zeros. */
  data: Uint8Array | null;
}

/**
 * Options for reading an image in order.
 *
 * @example Read one MiB from the middle, in 64 KiB pieces
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { type ReadImageOptions, readSegments } from "./segments.ts";
 * await using image = await openImage(new Uint8Array(4 << 20).fill(2));
 * const options: ReadImageOptions = { offset: 1 << 20, length: 1 << 20, chunkSize: 65536 };
 * const pieces = await Array.fromAsync(readSegments(image, options));
 * assert.strictEqual(pieces.length, 16);
 * assert.strictEqual(pieces[0].offset, 1 << 20);
 * ```
 */
export interface ReadImageOptions {
  /** Workers for decompression; without a pool it runs on this thread. */
  pool?: CodecPool;
  /**
   * Largest data segment, and most guest bytes per decompression job.
   * @default {2097152} (2 MiB; bench/RESULTS.md, History, has the
   * measurement behind it)
   */
  chunkSize?: number;
  /**
   * Reads and decompression jobs running ahead of the consumer. Many small
   * ones can be out at once (over HTTP, each is a round trip, and reads
   * asked for together are merged); `maxInFlightBytes` bounds the memory.
   * @default {64}
   */
  maxInFlight?: number;
  /**
   * Guest bytes of the reads and decompression jobs running ahead.
   * @default {16 * chunkSize} (32 MiB) while any of them reads from a
   * source without `readInto` (over HTTP, where bytes in flight hide round
   * trips); else `2 * chunkSize`: a local file answers from the page
   * cache, two chunks keep two workers busy, and more only holds memory
   * (bench/RESULTS.md, History)
   */
  maxInFlightBytes?: number;
  /**
   * Read data into buffers that are used again once the consumer asks for
   * the next segment. For consumers that are done with a segment's bytes
   * by then, as `expandToFile()` is: fresh memory costs a
   * page fault per 4 KiB, several times the copy itself. Sources without
   * `readInto` read into fresh buffers anyway.
   * @default {false}
   */
  reuseBuffers?: boolean;
  /** Guest offset to start at. @default {0} */
  offset?: number;
  /** Bytes to read. @default {the rest of the disk} */
  length?: number;
}

const DEFAULT_CHUNK = 2 * 1024 * 1024;

/**
 * Reads an image's guest bytes in order as segments, holes for zero and
 * unallocated ranges. Work runs ahead of the consumer by at most
 * `maxInFlight` jobs of at most `chunkSize` bytes and `maxInFlightBytes`
 * in all, so memory stays bounded whatever the image size.
 *
 * @param image An opened image.
 * @param options Pool, chunk size, range.
 * @returns The segments, covering the range without gaps.
 *
 * @example Sum the data bytes of an image
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { readSegments } from "./segments.ts";
 * await using image = await openImage(new Uint8Array(4096).fill(1));
 * let bytes = 0;
 * for await (const s of readSegments(image)) bytes += s.data ? s.length : 0;
 * assert.strictEqual(bytes, 4096);
 * ```
 */
export async function* readSegments(
  image: GuestImage,
  options: ReadImageOptions = {},
): AsyncGenerator<Segment> {
  const chunk = options.chunkSize ?? DEFAULT_CHUNK;
  if (!Number.isInteger(chunk) || chunk < 512) {
    throw new RangeError(
      `Cannot read image: chunkSize ${chunk} is out of range [512, ∞)`,
    );
  }
  const maxInFlight = options.maxInFlight ?? 64;
  const remoteBytes = options.maxInFlightBytes ?? 16 * chunk;
  const localBytes = options.maxInFlightBytes ?? 2 * chunk;
  const start = options.offset ?? 0;
  const length = options.length ?? image.virtualSize - start;
  // Segments in order. Only reads and decompression count against
  // maxInFlight: holes are free, and must not keep reads from going out
  // (over HTTP every read is a round trip). The queue itself stays short.
  const queue: {
    job: Promise<Segment>;
    bytes: number;
    remote: boolean;
    /** The pooled buffer the segment's bytes are in, once it is known. */
    buffer?: () => Uint8Array | undefined;
  }[] = [];
  const buffers = options.reuseBuffers ? new BufferPool() : undefined;
  // The buffer of the segment last handed out, taken back one step later.
  let lent: Uint8Array | undefined;
  let io = 0;
  let ioBytes = 0;
  let remote = 0; // of the `io` jobs, those reading from the network
  const maxQueued = 16 * maxInFlight;
  let group: PlanItem[] = [];
  let groupBytes = 0;

  /**
   * Queues a segment; `bytes` of I/O (0 for holes and cached pieces) from
   * `source`.
   */
  const push = (
    job: Promise<Segment>,
    bytes: number,
    source?: PlanItem["source"],
    buffer?: () => Uint8Array | undefined,
  ) => {
    job.catch(() => {}); // awaited in order below; avoid unhandled rejections
    const far = bytes > 0 && typeof source?.readInto !== "function";
    queue.push({ job, bytes, remote: far, buffer });
    if (bytes > 0) {
      io++;
      ioBytes += bytes;
      if (far) remote++;
    }
  };
  const full = () =>
    io >= maxInFlight ||
    ioBytes >= (remote > 0 ? remoteBytes : localBytes) ||
    queue.length >= maxQueued;
  const next = async (): Promise<Segment> => {
    const entry = queue.shift()!;
    if (entry.bytes > 0) {
      io--;
      ioBytes -= entry.bytes;
      if (entry.remote) remote--;
    }
    const segment = await entry.job;
    // The consumer asked for this one: it is done with the one before.
    if (lent) buffers!.put(lent);
    lent = entry.buffer?.();
    return segment;
  };
  // The last decompressed cluster: an overlay with small clusters over a
  // compressed backing cluster reads that cluster in several pieces.
  let last: { item: PlanItem; cluster: Promise<Uint8Array> } | undefined;
  const flushGroup = () => {
    if (group.length === 0) return;
    const items = group;
    const cs = items[0].compressed!.clusterSize;
    const n = items.length;
    const out = buffers?.take(n * cs);
    const size = out?.length ?? 0; // a transfer detaches `out`: 0 after
    const clusters = decompressClusters(items, options.pool, out, buffers);
    // With `out`, the clusters come back in its memory (a transfer gives
    // it a new ArrayBuffer): that goes back to the pool.
    let pooled: Uint8Array | undefined;
    push(
      clusters.then((c) => {
        if (out) pooled = new Uint8Array(c.buffer, 0, size);
        return joinPieces(items, c);
      }),
      n * cs,
      items[0].source,
      () => pooled,
    );
    last = {
      item: items[n - 1],
      // A copy when the clusters' buffer goes round.
      cluster: clusters.then((c) =>
        out ? c.slice((n - 1) * cs, n * cs) : c.subarray((n - 1) * cs, n * cs)
      ),
    };
    last.cluster.catch(() => {});
    group = [];
    groupBytes = 0;
  };

  try {
    for await (const item of image.plan(start, length, 0)) {
      if (
        item.kind === "compressed" && group.length === 0 && last &&
        sameCluster(last.item, item)
      ) {
        const from = item.offset - item.compressed!.clusterOffset;
        push(
          last.cluster.then((c) => ({
            offset: item.offset,
            length: item.length,
            data: c.subarray(from, from + item.length),
          })),
          0,
        );
      } else if (item.kind === "compressed") {
        // A group is decompressed with one codec and cluster size and read
        // from one file: images of a backing chain may differ in all three.
        const head = group[0];
        if (
          head !== undefined && (head.source !== item.source ||
            head.compressed!.type !== item.compressed!.type ||
            head.compressed!.clusterSize !== item.compressed!.clusterSize)
        ) {
          flushGroup();
        }
        group.push(item);
        groupBytes += item.compressed!.clusterSize;
        if (groupBytes >= chunk) flushGroup();
      } else {
        flushGroup();
        if (item.kind === "data") {
          for (let at = 0; at < item.length; at += chunk) {
            const n = Math.min(chunk, item.length - at);
            const piece = {
              ...item,
              offset: item.offset + at,
              length: n,
              hostOffset: item.hostOffset! + at,
            };
            const buffer = buffers && item.source?.readInto
              ? buffers.take(n)
              : undefined;
            push(
              readDataItem(piece, buffer).then((data) => ({
                offset: piece.offset,
                length: n,
                data,
              })),
              n,
              item.source,
              buffer && (() => buffer),
            );
            while (full()) yield await next();
          }
        } else {
          push(
            Promise.resolve({
              offset: item.offset,
              length: item.length,
              data: null,
            }),
            0,
          );
        }
      }
      while (full()) yield await next();
    }
    flushGroup();
    while (queue.length > 0) yield await next();
  } finally {
    queue.length = 0;
  }
}

/**
 * Reads and decompresses the clusters of consecutive compressed items as
 * one job, into `out` when given (else a new buffer); payloads are read
 * into buffers from `buffers` when given.
 */
async function decompressClusters(
  items: PlanItem[],
  pool: CodecPool | undefined,
  out: Uint8Array | undefined,
  buffers: BufferPool | undefined,
): Promise<Uint8Array> {
  const ranges = items.map((i) => compressedRange(i.compressed!.descriptor));
  const lo = Math.min(...ranges.map((r) => r.offset));
  const hi = Math.max(...ranges.map((r) => r.offset + r.length));
  const total = ranges.reduce((n, r) => n + r.length, 0);
  let payloads: Uint8Array[];
  let into: Uint8Array | undefined; // a pooled buffer the payloads are in
  if (
    hi - lo <= 2 * total && items.every((i) => i.source === items[0].source)
  ) {
    // Usually packed back to back: one read for the whole group.
    let bytes: Uint8Array;
    const source = items[0].source!;
    if (buffers && source.readInto) into = buffers.take(hi - lo);
    try {
      bytes = into
        ? into.subarray(
          0,
          await source.readInto!(lo, into.subarray(0, hi - lo)),
        )
        : await source.read(lo, hi - lo);
    } catch (err) {
      throw new Qcow2Error(
        "IO",
        `Cannot read compressed clusters at host offset ${hex(lo)}: ${
          (err as Error).message
        }`,
        { offset: lo, cause: err },
      );
    }
    payloads = ranges.map((r) =>
      bytes.subarray(
        r.offset - lo,
        Math.min(bytes.length, r.offset - lo + r.length),
      )
    );
  } else {
    payloads = await Promise.all(items.map(readCompressedPayload));
  }
  const { type, clusterSize } = items[0].compressed!;
  const cs = clusterSize;
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
    const index = (err as { index?: number }).index ?? 0;
    throw decompressError(items[index] ?? items[0], err);
  }
  return clusters;
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

/**
 * The guest bytes of an image as a byte stream, in order, zeros included.
 * Pulling drives the reads, so a slow consumer slows the reading
 * (backpressure).
 *
 * @param image An opened image.
 * @param options Pool, chunk size, range.
 * @returns A stream of the guest bytes.
 *
 * @example Stream a raw image
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { imageReadable } from "./segments.ts";
 * await using image = await openImage(new Uint8Array(4096).fill(2));
 * const bytes = new Uint8Array(await new Response(imageReadable(image)).arrayBuffer());
 * assert.strictEqual(bytes.length, 4096);
 * ```
 */
export function imageReadable(
  image: GuestImage,
  options: ReadImageOptions = {},
): ReadableStream<Uint8Array> {
  const chunk = options.chunkSize ?? DEFAULT_CHUNK;
  const segments = readSegments(image, options);
  let zeroLeft = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (zeroLeft > 0) {
        const n = Math.min(zeroLeft, chunk);
        zeroLeft -= n;
        controller.enqueue(new Uint8Array(n));
        return;
      }
      const next = await segments.next();
      if (next.done) {
        controller.close();
        return;
      }
      const s = next.value;
      if (s.data) {
        controller.enqueue(s.data);
      } else if (s.length > 0) {
        const n = Math.min(s.length, chunk);
        zeroLeft = s.length - n;
        controller.enqueue(new Uint8Array(n));
      }
    },
    async cancel() {
      await segments.return(undefined);
    },
  }, { highWaterMark: 0 });
}

/**
 * An image's guest bytes as a stream for the forward pipeline: data as
 * bytes, zero ranges as `{ zeros: n }` holes that are never materialized
 * (so re-packing a sparse 1 TiB image reads only its data).
 *
 * @param image An opened image.
 * @param options Pool, chunk size, range.
 * @returns A stream the `ClusterChunkStream` accepts.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { imageChunks } from "./segments.ts";
 * await using image = await openImage(new Uint8Array(1024));
 * const chunks = await Array.fromAsync(imageChunks(image));
 * assert.strictEqual(chunks.length, 1);
 * ```
 */
export function imageChunks(
  image: GuestImage,
  options: ReadImageOptions = {},
): ReadableStream<Uint8Array | { zeros: number }> {
  const segments = readSegments(image, options);
  return new ReadableStream<Uint8Array | { zeros: number }>({
    async pull(controller) {
      const next = await segments.next();
      if (next.done) {
        controller.close();
        return;
      }
      const s = next.value;
      controller.enqueue(s.data ?? { zeros: s.length });
    },
    async cancel() {
      await segments.return(undefined);
    },
  }, { highWaterMark: 0 });
}
