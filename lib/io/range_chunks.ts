/**
 * A random-access source read in order, range after range, for the forward
 * pipeline: what `--sparsify` streams between the free ranges it skips.
 *
 * @module
 */

import { isZero } from "../bytes/zeros.ts";
import { Recycler } from "../bytes/recycle.ts";
import { type HoleProbe, hostFiles } from "./host_files.ts";
import { MERGE_MAX } from "./_http.ts";
import { isRemote, type RandomAccessSource } from "./source.ts";

/**
 * Options of {@linkcode RangeChunks}.
 *
 * @example Read a source in 4 KiB chunks
 * ```ts
 * import assert from "node:assert";
 * import { RangeChunks } from "./range_chunks.ts";
 * import { BytesSource } from "./source.ts";
 * using reader = new RangeChunks(new BytesSource(new Uint8Array(10000).fill(1)), { chunkSize: 4096 });
 * const sizes = (await Array.fromAsync(reader.range(0, 10000))).map((c) => c instanceof Uint8Array ? c.length : -c.zeros);
 * assert.deepStrictEqual(sizes, [4096, 4096, 1808]);
 * ```
 */
export interface RangeChunksOptions {
  /**
   * Largest data chunk, in bytes, at least 512.
   * @default {4194304} (4 MiB)
   */
  chunkSize?: number;
  /**
   * Take the chunks from a set of buffers that go round instead of
   * allocating each (a fresh buffer costs a page fault per 4 KiB), as
   * `sparseFileChunks` does. Only for a pipeline that hands the chunks on
   * in order and keeps none of them, ending in `convert()` to an
   * `ImageSink`: a chunk is overwritten once the sink has written a later
   * one's bytes.
   * @default {false}
   */
  recycle?: boolean;
}

/**
 * Reads byte ranges of a source in chunks, for a pipeline that wants them
 * in disk order: a local file's holes (SEEK_DATA / SEEK_HOLE) and chunks
 * that read as zeros become `{ zeros: n }`, and a source that can read
 * into a caller's buffer fills buffers that go round (with `recycle`).
 *
 * @example Stream two ranges of a source, zeros as zero runs
 * ```ts
 * import assert from "node:assert";
 * import { RangeChunks } from "./range_chunks.ts";
 * import { BytesSource } from "./source.ts";
 * const bytes = new Uint8Array(8192);
 * bytes.fill(7, 0, 4096);
 * using reader = new RangeChunks(new BytesSource(bytes), { chunkSize: 4096 });
 * const first = await Array.fromAsync(reader.range(0, 4096));
 * assert.deepStrictEqual(first, [bytes.subarray(0, 4096)]);
 * assert.deepStrictEqual(await Array.fromAsync(reader.range(4096, 8192)), [{ zeros: 4096 }]);
 * ```
 */
export class RangeChunks implements Disposable {
  readonly #source: RandomAccessSource;
  readonly #chunkSize: number;
  readonly #buffers: Recycler | undefined;
  /** Chunks asked for ahead of the one handed on. */
  readonly #depth: number;
  #probe: HoleProbe | undefined;

  /**
   * Prepares to read `source`.
   *
   * @param source The source.
   * @param options Chunk size, recycling.
   * @throws {RangeError} For a chunk size out of range.
   */
  constructor(source: RandomAccessSource, options: RangeChunksOptions = {}) {
    const chunkSize = options.chunkSize ?? 4 * 1024 * 1024;
    if (!Number.isSafeInteger(chunkSize) || chunkSize < 512) {
      throw new RangeError(
        `Cannot read source: chunkSize ${chunkSize} is out of range [512, 2^53)`,
      );
    }
    this.#source = source;
    this.#chunkSize = chunkSize;
    // Buffers go round only where the source can fill them.
    const remote = isRemote(source);
    this.#buffers = options.recycle && !remote
      ? new Recycler(chunkSize)
      : undefined;
    // A local source (a file) is read a chunk at a time, as the system
    // reads ahead; a remote one (HTTP) is asked for as much as HttpSource
    // puts in one merged request, MERGE_MAX, so that a 4 MiB chunk does not
    // cost a round trip of its own.
    this.#depth = remote ? Math.max(1, Math.floor(MERGE_MAX / chunkSize)) : 1;
    // Where a local file has holes, when the runtime's file module can tell.
    this.#probe = hostFiles()?.holeProbe(source);
  }

  /**
   * The source's bytes in `[from, to)`, in chunks of at most `chunkSize`;
   * holes and chunks of zeros as `{ zeros: n }`. Past the end of the
   * source (it shrank) the range reads as zeros.
   *
   * @param from First byte.
   * @param to End of the range (exclusive).
   * @returns The chunks.
   * @throws {Error} When the source cannot be read.
   */
  async *range(
    from: number,
    to: number,
  ): AsyncGenerator<Uint8Array | { zeros: number }> {
    let pos = from;
    while (pos < to) {
      let dataEnd = to;
      const found = this.#probe?.find(pos);
      if (found === "enxio") {
        yield { zeros: to - pos };
        return;
      }
      if (found !== undefined) {
        if (found.data > pos) {
          const zeros = Math.min(found.data, to) - pos;
          yield { zeros };
          pos += zeros;
          continue;
        }
        dataEnd = Math.min(found.hole, to);
      }
      // Reads ahead: a source whose every read is a request (remote)
      // gets several chunks asked for together, which it may send as one
      // request, and the next ones asked for while these are handed on.
      const queue: Array<{ want: number; bytes: Promise<Uint8Array> }> = [];
      let asked = pos;
      try {
        while (pos < dataEnd) {
          if (queue.length <= this.#depth / 2) {
            for (
              let k = queue.length;
              k < this.#depth && asked < dataEnd;
              k++
            ) {
              const want = Math.min(this.#chunkSize, dataEnd - asked);
              const bytes = this.#read(asked, want);
              bytes.catch(() => {}); // reported when awaited
              queue.push({ want, bytes });
              asked += want;
            }
          }
          const { want, bytes: next } = queue.shift()!;
          const bytes = await next;
          if (bytes.length > 0 && isZero(bytes)) {
            // Zeros on disk go on as a zero run: the buffer is free again
            // at once, and no later stage scans it again.
            this.#buffers?.giveBack(bytes);
            yield { zeros: bytes.length };
          } else if (bytes.length > 0) yield bytes;
          if (bytes.length < want) {
            // The source ended early (it shrank): the rest reads as zeros.
            yield { zeros: to - pos - bytes.length };
            return;
          }
          pos += want;
        }
      } finally {
        // No read outlives the range (a consumer that stops early).
        await Promise.allSettled(queue.map((q) => q.bytes));
      }
    }
  }

  async #read(offset: number, length: number): Promise<Uint8Array> {
    if (!this.#buffers) return await this.#source.read(offset, length);
    const into = this.#buffers.take().subarray(0, length);
    const n = await this.#source.readInto!(offset, into);
    return into.subarray(0, n);
  }

  /** Releases the hole probe. */
  [Symbol.dispose](): void {
    this.#probe?.close();
    this.#probe = undefined;
  }
}
