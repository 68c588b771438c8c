/**
 * The guest bytes of an image, in order, with reads and decompression
 * running ahead in parallel (bounded) and zero ranges left as holes.
 *
 * @module
 */

import type { CodecPool } from "../codec/pool.ts";
import type { GuestImage, Segment } from "./image.ts";
import type { ImageSink } from "../io/sink.ts";
import {
  DEFAULT_CHUNK,
  ReadAhead,
  readAheadBudget,
  type SalvageReport,
} from "./_read_ahead.ts";

export type { Segment } from "./image.ts";
export type { SalvageReport } from "./_read_ahead.ts";
import { type GuestRange, unreadableRange } from "./_read.ts";
import { InternalError } from "../format/errors.ts";

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
   * @default {4 * chunkSize} (8 MiB): a local file answers from the page
   * cache, and four chunks keep two workers busy while the consumer
   * writes; over HTTP as many, `HttpSource` fetching ahead of reads that
   * run forward on its own (more only holds memory;
   * lib/reader/_read_ahead.ts)
   */
  maxInFlightBytes?: number;
  /**
   * Read data into buffers that are used again once the consumer asks for
   * the next segment: a segment's bytes may change after that. For
   * consumers that are done with a segment's bytes by then, as
   * `expandToFile()` is: fresh memory costs a page fault per 4 KiB,
   * several times the copy itself. Sources without `readInto` read data
   * into fresh buffers anyway.
   * @default {false}
   */
  reuseBuffers?: boolean;
  /**
   * Read data, and decompress clusters, into buffers that go round in
   * order (lib/bytes/recycle.ts): a buffer is used again once a later
   * segment's bytes were passed to `doneWith()`, as the writer's stages
   * and sinks do (`CompressStream` once it has copied them into its jobs,
   * `convert()` once its `ImageSink` has written them). For a pipeline
   * that hands the segments on in order and keeps no view of them past
   * that, such as `convert()`'s: fresh memory for every chunk costs page
   * faults and leaves garbage that raises the peak memory. Without a
   * `doneWith()` call nothing is reused. Ignored with `reuseBuffers`.
   * @default {false}
   */
  recycle?: boolean;
  /**
   * qemu-img's `convert --salvage`: a read that fails (a compressed
   * cluster that does not decompress, an I/O error) is read again piece by
   * piece, and what fails again reads as zeros, this function told of each
   * such range: a compressed cluster's piece, or a 512-byte sector of
   * data. Errors of the image's tables, and a codec worker that crashed,
   * still stop the read. Without it, the first failure does.
   */
  salvage?: SalvageReport;
  /** Guest offset to start at. @default {0} */
  offset?: number;
  /** Bytes to read. @default {the rest of the disk} */
  length?: number;
}

/**
 * Reads an image's guest bytes in order as segments, holes for zero and
 * unallocated ranges. Work runs ahead of the consumer by at most
 * `maxInFlight` jobs of at most `chunkSize` bytes and `maxInFlightBytes`
 * in all, so memory stays bounded whatever the image size.
 *
 * @param image An opened image.
 * @param options Pool, chunk size, range.
 * @param copy Copies a run of data from the file holding it to its guest
 * offset in an output (`ImageSink.copyFrom`): such a run comes out as a
 * segment `copied`, its bytes never read; where the copy cannot be made,
 * the run is read as usual.
 * @returns The segments, covering the range without gaps.
 * @throws {RangeError} When `chunkSize`, `maxInFlight` or
 * `maxInFlightBytes` is out of range.
 * @throws {Qcow2Error} When the image is corrupt or a read fails.
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
  copy?: ImageSink["copyFrom"],
): AsyncGenerator<Segment> {
  const chunk = options.chunkSize ?? DEFAULT_CHUNK;
  const { maxInFlight, maxInFlightBytes } = options;
  for (
    const [name, value, least] of [
      ["chunkSize", chunk, 512],
      ["maxInFlight", maxInFlight ?? 1, 1],
      ["maxInFlightBytes", maxInFlightBytes ?? 1, 1],
    ] as const
  ) {
    if (!Number.isInteger(value) || value < least) {
      throw new RangeError(
        `Cannot read image: ${name} ${value} is out of range [${least}, ∞)`,
      );
    }
  }
  const start = options.offset ?? 0;
  const length = options.length ?? image.virtualSize - start;
  const ahead = new ReadAhead({
    chunk,
    budget: readAheadBudget(chunk, maxInFlight, maxInFlightBytes),
    pool: options.pool,
    reuseBuffers: options.reuseBuffers,
    recycle: options.recycle,
    copy,
    salvage: options.salvage,
  });
  const end = start + length;
  try {
    // Planned up to `pos`; planning up to `limit`, where `hole` starts: a
    // range a salvaging read could not map, read as zeros.
    let pos = start;
    let limit = end;
    let hole: GuestRange & { error: Error } | undefined;
    while (pos < end) {
      try {
        if (limit > pos) {
          for await (const item of image.plan(pos, limit - pos, 0)) {
            for (const piece of ahead.pieces(item)) {
              ahead.add(piece);
              while (ahead.full) yield await ahead.next();
            }
            pos = item.offset + item.length;
          }
        }
      } catch (err) {
        const bad = options.salvage && !(err instanceof InternalError)
          ? unreadableRange(err)
          : undefined;
        const from = bad && Math.max(pos, bad.offset);
        const to = bad && Math.min(end, bad.offset + bad.length);
        // Only a range ahead of what was planned, and before `limit`:
        // every turn plans or skips something.
        if (from === undefined || to! <= from || from >= limit) throw err;
        hole = { offset: from, length: to! - from, error: err as Error };
        limit = from;
        continue;
      }
      pos = limit;
      if (hole) {
        ahead.addUnreadable(hole.offset, hole.length, hole.error);
        while (ahead.full) yield await ahead.next();
        pos = hole.offset + hole.length;
        hole = undefined;
        limit = end;
      }
    }
    ahead.flush();
    while (ahead.queued > 0) yield await ahead.next();
  } finally {
    ahead.clear();
  }
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
  return segmentsReadable(
    readSegments(image, options),
    options.chunkSize ?? DEFAULT_CHUNK,
  );
}

/**
 * Segments as a byte stream: data as it is, holes as zeros at most `chunk`
 * bytes at a time. `taken` is told of each segment once the consumer has
 * taken all of it (asked for what comes next).
 */
export function segmentsReadable(
  segments: AsyncGenerator<Segment>,
  chunk: number,
  taken?: (segment: Segment) => void,
): ReadableStream<Uint8Array> {
  let zeroLeft = 0;
  let last: Segment | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (zeroLeft > 0) {
        const n = Math.min(zeroLeft, chunk);
        zeroLeft -= n;
        controller.enqueue(new Uint8Array(n));
        return;
      }
      if (last) taken?.(last);
      const next = await segments.next();
      if (next.done) {
        controller.close();
        return;
      }
      const s = last = next.value;
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
