/**
 * Sequential reads of a source whose every read is a request (HTTP) made
 * into fewer, larger requests: what the `--sparsify` map reads its tables
 * through.
 *
 * @module
 */

import { MERGE_MAX } from "./_http.ts";
import type { RandomAccessSource } from "./source.ts";

/**
 * Options of {@linkcode SequentialReads}.
 *
 * @example Read ahead at most 64 KiB
 * ```ts
 * import assert from "node:assert";
 * import { SequentialReads } from "./sequential_reads.ts";
 * import { BytesSource } from "./source.ts";
 * const merged = new SequentialReads(new BytesSource(new Uint8Array(1 << 20)), { maxBytes: 65536 });
 * assert.strictEqual((await merged.read(0, 4096)).length, 4096);
 * ```
 */
export interface SequentialReadsOptions {
  /**
   * Most bytes fetched by one read (and held between reads), in bytes.
   * @default {16777216} (16 MiB, the largest request `HttpSource` merges)
   */
  maxBytes?: number;
}

/** A fetched span of the source, and how much of it reads have used. */
interface Span {
  offset: number;
  bytes: Uint8Array;
  used: number;
}

/**
 * A source that reads ahead where reads follow one another: a read that
 * starts where the previous one ended (or where the bytes fetched ahead
 * end) fetches more than it asks for, and the reads after it are answered
 * from those bytes. The span fetched doubles, up to `maxBytes`, only while
 * reads use at least half of the one before, so reads that jump about cost
 * what they ask for and at most as much again. Other reads go straight to
 * the source. Holds one span (at most `maxBytes`); answers are views of it,
 * as `HttpSource`'s are of a response.
 *
 * @example Ten 1 KiB reads in a row cost four reads of the source
 * ```ts
 * import assert from "node:assert";
 * import { SequentialReads } from "./sequential_reads.ts";
 * import { BytesSource } from "./source.ts";
 * const disk = new Uint8Array(1 << 20).map((_, i) => i % 251);
 * const bytes = new BytesSource(disk);
 * let reads = 0;
 * const counted = {
 *   size: bytes.size,
 *   read(offset: number, length: number) {
 *     reads++;
 *     return bytes.read(offset, length);
 *   },
 * };
 * const merged = new SequentialReads(counted);
 * for (let k = 0; k < 10; k++) {
 *   assert.deepStrictEqual(await merged.read(k * 1024, 1024), disk.subarray(k * 1024, (k + 1) * 1024));
 * }
 * assert.strictEqual(reads, 4);
 * ```
 */
export class SequentialReads implements RandomAccessSource {
  readonly #source: RandomAccessSource;
  readonly #max: number;
  #span: Span | undefined;
  /** Where the last read ended. */
  #end = -1;

  /**
   * Wraps `source`.
   *
   * @param source The source (not closed by this one).
   * @param options How far to read ahead.
   * @throws {RangeError} For a `maxBytes` that is not a positive integer.
   */
  constructor(
    source: RandomAccessSource,
    options: SequentialReadsOptions = {},
  ) {
    const max = options.maxBytes ?? MERGE_MAX;
    if (!Number.isSafeInteger(max) || max < 1) {
      throw new RangeError(
        `Cannot read ahead: maxBytes ${max} is out of range [1, 2^53)`,
      );
    }
    this.#source = source;
    this.#max = max;
  }

  /** The source's size. */
  get size(): number {
    return this.#source.size;
  }

  /** The source's name. */
  get name(): string | undefined {
    return this.#source.name;
  }

  /** The URL that answered, as the source says. */
  get url(): string | undefined {
    return this.#source.url;
  }

  /**
   * Reads `length` bytes at `offset` (fewer past the end of the source).
   *
   * @param offset First byte.
   * @param length Bytes wanted.
   * @returns The bytes, a view that may share a buffer with other reads.
   * @throws {Error} When the source cannot be read.
   */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const span = this.#span;
    const end = offset + length;
    if (
      span && offset >= span.offset &&
      end <= span.offset + span.bytes.length
    ) {
      span.used += length;
      this.#end = end;
      return span.bytes.subarray(offset - span.offset, end - span.offset);
    }
    const spanEnd = span ? span.offset + span.bytes.length : -1;
    const afterSpan = offset === spanEnd;
    if (length <= 0 || (!afterSpan && offset !== this.#end)) {
      this.#end = end;
      return await this.#source.read(offset, length);
    }
    // In a row: the next span is twice the last while reads used at least
    // half of it, else as long; a new run starts at twice the read.
    const grow = afterSpan && span!.used * 2 >= span!.bytes.length
      ? 2 * span!.bytes.length
      : afterSpan
      ? span!.bytes.length
      : 2 * length;
    const want = Math.min(
      Math.max(length, Math.min(this.#max, grow)),
      Math.max(length, this.size - offset),
    );
    this.#end = end;
    const bytes = await this.#source.read(offset, want);
    this.#span = { offset, bytes, used: Math.min(length, bytes.length) };
    return bytes.subarray(0, Math.min(length, bytes.length));
  }

  /** Drops the bytes held (the source stays open). */
  close(): void {
    this.#span = undefined;
  }
}
