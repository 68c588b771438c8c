/**
 * The free-space map stage for byte streams (a pipe, an HTTP body): raw
 * source → FreeSpaceStream → ClusterChunkStream → …
 *
 * @module
 */

import type { ZeroBytes } from "../bytes/zeros.ts";
import { deferred, streamFrom } from "../bytes/portable.ts";
import { type Chunk, chunkLength, Lookahead } from "./_lookahead.ts";
import type { RegionReader } from "./_region.ts";
import { analyzeRegion, regionOf } from "./map.ts";
import { readDiskLayout } from "./partitions.ts";
import { rangesOf } from "./filesystem.ts";
import type { FreeRange, RegionReport, SparsifyReport } from "./report.ts";

/**
 * Options of {@linkcode FreeSpaceStream}.
 *
 * @example Hold back at most 1 MiB of a stream of known size
 * ```ts
 * import assert from "node:assert";
 * import { FreeSpaceStream } from "./stream.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a); // a bare swap area, old bytes in its pages
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const stage = new FreeSpaceStream({ size: disk.length, readAhead: 1 << 20 });
 * const out = await Array.fromAsync(ReadableStream.from([disk]).pipeThrough(stage));
 * assert.deepStrictEqual(out.at(-1), { zeros: (1 << 20) - 4096 });
 * ```
 */
export interface FreeSpaceStreamOptions {
  /** The disk size, when known (an HTTP Content-Length): partitions past it are refused as truncated. */
  size?: number;
  /**
   * Most bytes held back while the metadata of a partition is read ahead
   * of the output, in bytes, at least 1 MiB. Memory use grows with it.
   * @default {67108864} (64 MiB)
   */
  readAhead?: number;
}

const DEFAULT_READ_AHEAD = 64 * 1024 * 1024;
/** The read-ahead must hold a partition's first bytes (HEAD_BYTES) and more. */
const MIN_READ_AHEAD = 1024 * 1024;

/** A cursor over free ranges that cuts them out of pieces of input. */
class FreeCursor {
  #ranges: AsyncIterator<FreeRange> | undefined;
  #current: FreeRange | undefined;
  dropped = 0;

  constructor(ranges: AsyncIterator<FreeRange> | undefined) {
    this.#ranges = ranges;
  }

  async #advance(pos: number): Promise<FreeRange | undefined> {
    while (this.#ranges) {
      const c = this.#current;
      if (c && c.offset + c.length > pos) return c;
      const next = await this.#ranges.next();
      if (next.done) this.#ranges = undefined;
      else this.#current = next.value;
    }
    const c = this.#current;
    return c && c.offset + c.length > pos ? c : undefined;
  }

  /** The piece at `at`, with the free parts as zero runs. */
  async *cut(at: number, chunk: Chunk): AsyncGenerator<Chunk> {
    const n = chunkLength(chunk);
    if (!(chunk instanceof Uint8Array)) {
      yield chunk; // zeros already
      return;
    }
    let p = at;
    while (p < at + n) {
      const free = await this.#advance(p);
      if (!free || free.offset >= at + n) {
        yield chunk.subarray(p - at);
        return;
      }
      if (free.offset > p) {
        yield chunk.subarray(p - at, free.offset - at);
        p = free.offset;
      }
      const end = Math.min(free.offset + free.length, at + n);
      yield { zeros: end - p };
      this.dropped += end - p;
      p = end;
    }
  }
}

/**
 * Maps free space as a disk streams past: the partition table is read
 * from the first bytes, and each partition's metadata is read ahead of
 * its data (held back up to `readAhead` bytes); the bytes of free ranges
 * leave the stage as `{ zeros: n }`, everything else as it came. A
 * partition whose metadata lies beyond the read-ahead, or before data
 * already passed on, is left as it is, and the report says so. For an
 * ext4 with flex_bg (mke2fs's default) the bitmaps and inode tables of the
 * first 16 groups (2 GiB with 4 KiB blocks) follow the superblock: such
 * filesystems are mapped whole from a stream, when the extent tree and
 * attribute blocks of their files lie within the read-ahead too (ext2 and
 * ext3 files larger than 12 blocks have indirect blocks anywhere).
 *
 * @example Drop a bare swap area's free pages from a stream
 * ```ts
 * import assert from "node:assert";
 * import { FreeSpaceStream } from "./stream.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a);
 * disk.fill(0, 1024, 4096);
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const stage = new FreeSpaceStream();
 * const out = await Array.fromAsync(ReadableStream.from([disk]).pipeThrough(stage));
 * assert.deepStrictEqual(out.at(-1), { zeros: (1 << 20) - 4096 });
 * assert.strictEqual((await stage.report).freeBytes, (1 << 20) - 4096);
 * ```
 */
export class FreeSpaceStream
  implements TransformStream<Uint8Array | ZeroBytes, Uint8Array | ZeroBytes> {
  #writable: WritableStream<Uint8Array | ZeroBytes>;
  #readable: ReadableStream<Uint8Array | ZeroBytes>;
  #report: Promise<SparsifyReport>;

  /**
   * Creates the stage.
   *
   * @param options Disk size and read-ahead.
   * @throws {RangeError} For a read-ahead smaller than 1 MiB or a negative size.
   */
  constructor(options: FreeSpaceStreamOptions = {}) {
    const readAhead = options.readAhead ?? DEFAULT_READ_AHEAD;
    if (!Number.isSafeInteger(readAhead) || readAhead < MIN_READ_AHEAD) {
      throw new RangeError(
        `Cannot map free space: readAhead ${readAhead} is out of range [${MIN_READ_AHEAD}, 2^53)`,
      );
    }
    if (
      options.size !== undefined &&
      (!Number.isSafeInteger(options.size) || options.size < 0)
    ) {
      throw new RangeError(
        `Cannot map free space: size ${options.size} is not a non-negative integer`,
      );
    }
    const { readable, writable } = new TransformStream<Chunk, Chunk>(
      {},
      { highWaterMark: 1 },
      { highWaterMark: 0 },
    );
    this.#writable = writable;
    const { promise, resolve, reject } = deferred<SparsifyReport>();
    promise.catch(() => {}); // callers that never ask for the report
    this.#report = promise;
    const input = readable.getReader();
    const lookahead = new Lookahead(input, readAhead, options.size);
    async function* run(): AsyncGenerator<Chunk> {
      let ended = false;
      try {
        yield* mapStream(lookahead, resolve);
        ended = true;
      } catch (err) {
        reject(err);
        throw err;
      } finally {
        if (!ended) {
          // An error, or the consumer cancelled: stop the producer too.
          reject(
            new DOMException(
              "Cannot map free space: the stream was cancelled",
              "AbortError",
            ),
          );
          await input.cancel().catch(() => {});
        }
        input.releaseLock();
      }
    }
    this.#readable = streamFrom(run());
  }

  /** Disk bytes in. */
  get writable(): WritableStream<Uint8Array | ZeroBytes> {
    return this.#writable;
  }

  /** Disk bytes out, free ranges as zero runs. */
  get readable(): ReadableStream<Uint8Array | ZeroBytes> {
    return this.#readable;
  }

  /** Resolves with what was found and dropped once the stream has ended. */
  get report(): Promise<SparsifyReport> {
    return this.#report;
  }
}

/** The stage's work: table, then each partition as the stream reaches it. */
async function* mapStream(
  la: Lookahead,
  done: (report: SparsifyReport) => void,
): AsyncGenerator<Chunk> {
  const layout = await readDiskLayout(la.reader);
  const regions: RegionReport[] = [];
  for (const p of layout.partitions) {
    for await (const [, c] of la.take(p.offset)) yield c;
    la.retain();
    const result = await analyzeRegion(la.reader, p);
    const kept = la.retained();
    if (!result.analysis) {
      regions.push(result.report);
      continue;
    }
    const region = regionOf(kept, p);
    const cursor = new FreeCursor(
      absolute(region, rangesOf(result.analysis, region)),
    );
    for await (const [at, c] of la.take(p.offset + p.length)) {
      yield* cursor.cut(at, c);
    }
    regions.push({ ...result.report, freeBytes: cursor.dropped });
  }
  for await (const [, c] of la.take(Infinity)) yield c;
  for (const r of regions) {
    if (!Number.isFinite(r.length)) r.length = la.end - r.offset;
  }
  done({
    table: layout.table,
    ...(layout.problem ? { tableProblem: layout.problem } : {}),
    ...(layout.incomplete ? { tableIncomplete: layout.incomplete } : {}),
    regions,
    freeBytes: regions.reduce((n, r) => n + r.freeBytes, 0),
  });
}

async function* absolute(
  region: RegionReader,
  ranges: AsyncGenerator<FreeRange>,
): AsyncGenerator<FreeRange> {
  for await (const r of ranges) {
    yield { offset: region.offset + r.offset, length: r.length };
  }
}
