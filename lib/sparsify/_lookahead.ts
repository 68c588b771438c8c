// A byte stream held back by a bounded amount, so that metadata ahead of
// the output position can be read before the bytes it describes are passed
// on. Private to lib/sparsify (the FreeSpaceStream stage).

import type { ZeroBytes } from "../bytes/zeros.ts";
import { InternalError } from "../format/errors.ts";
import { type DiskReader, Refusal } from "./_region.ts";

/** What flows: bytes, or a run of zero bytes. */
export type Chunk = Uint8Array | ZeroBytes;

/** Length of a chunk in bytes. */
export function chunkLength(c: Chunk): number {
  return c instanceof Uint8Array ? c.length : c.zeros;
}

/**
 * Input received but not yet passed on, from `base` (the output position)
 * to `end` (the input position). Reads for the analysis are served from it
 * and may pull more input, up to `limit` bytes past `base`.
 */
export class Lookahead {
  readonly #input: ReadableStreamDefaultReader<Chunk>;
  readonly #limit: number;
  readonly #size: number | undefined;
  #pending: Chunk[] = [];
  #base = 0;
  #end = 0;
  #done = false;
  #pulling: Promise<boolean> | undefined;
  #retained: Array<{ offset: number; bytes: Uint8Array }> | undefined;
  /** The reads kept, as `offset+length`. */
  #retainedAt = new Set<string>();

  constructor(
    input: ReadableStreamDefaultReader<Chunk>,
    limit: number,
    size: number | undefined,
  ) {
    this.#input = input;
    this.#limit = limit;
    this.#size = size;
    this.reader = {
      size,
      read: (offset, length, once) => this.#read(offset, length, once),
    };
  }

  /**
   * The disk as the analysis sees it: bytes in `[base, base + limit)`,
   * pulled from the input as needed.
   */
  readonly reader: DiskReader;

  async #read(
    offset: number,
    length: number,
    once = false,
  ): Promise<Uint8Array> {
    if (offset < this.#base) {
      throw new Refusal(
        `metadata at byte ${offset} was needed after the stream had passed it (at byte ${this.#base}); a stream is mapped only by metadata that precedes the data`,
      );
    }
    if (offset + length > this.#base + this.#limit) {
      throw new Refusal(
        `metadata at byte ${offset} lies more than ${this.#limit} bytes past byte ${this.#base} of the stream (the read-ahead limit); give a file or an http(s) URL with Range support instead`,
      );
    }
    while (this.#end < offset + length && await this.#pull());
    const n = Math.max(0, Math.min(length, this.#end - offset));
    const bytes = this.#copy(offset, n);
    // A read made again is kept once: a module re-reading a block (a
    // hostile filesystem can make one read the same block many times)
    // keeps no more than the read-ahead.
    if (!once && this.#retained && !this.#retainedAt.has(`${offset}+${n}`)) {
      this.#retained.push({ offset, bytes });
      this.#retainedAt.add(`${offset}+${n}`);
    }
    return bytes;
  }

  /** Bytes received so far. */
  get end(): number {
    return this.#end;
  }

  /**
   * Reads one more input chunk; false at the end of the input. Readers
   * asking at the same time share one pull, so that together they hold
   * back no more than one of them would.
   */
  #pull(): Promise<boolean> {
    this.#pulling ??= this.#pullOne().finally(() => {
      this.#pulling = undefined;
    });
    return this.#pulling;
  }

  async #pullOne(): Promise<boolean> {
    if (this.#done) return false;
    const { value, done } = await this.#input.read();
    if (done) {
      this.#done = true;
      return false;
    }
    if (!(value instanceof Uint8Array)) {
      const zeros = value?.zeros;
      if (!Number.isSafeInteger(zeros) || zeros < 0) {
        throw new RangeError(
          `Cannot map free space: zero run length ${zeros} is not a non-negative integer`,
        );
      }
    }
    const n = chunkLength(value);
    if (n > 0) {
      this.#pending.push(value);
      this.#end += n;
    }
    return true;
  }

  /** Copies `[offset, offset + length)` out of the pending chunks (must be there). */
  #copy(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let at = this.#base;
    for (const c of this.#pending) {
      const n = chunkLength(c);
      const from = Math.max(offset, at);
      const to = Math.min(offset + length, at + n);
      if (from < to && c instanceof Uint8Array) {
        out.set(c.subarray(from - at, to - at), from - offset);
      }
      at += n;
      if (at >= offset + length) break;
    }
    return out;
  }

  /** Bytes kept since `retain()`: at most what was read, once each. */
  get retainedBytes(): number {
    return (this.#retained ?? []).reduce((n, r) => n + r.bytes.length, 0);
  }

  /** Starts keeping every read made through `reader` (but those read `once`). */
  retain(): void {
    this.#retained = [];
    this.#retainedAt.clear();
  }

  /**
   * Stops keeping reads and returns a reader that serves exactly the reads
   * kept (the metadata a filesystem's free ranges are listed from).
   */
  retained(): DiskReader {
    const kept = this.#retained ?? [];
    this.#retained = undefined;
    this.#retainedAt.clear();
    return {
      size: this.#size,
      read(offset: number, length: number): Promise<Uint8Array> {
        for (const r of kept) {
          if (
            offset >= r.offset && offset + length <= r.offset + r.bytes.length
          ) {
            return Promise.resolve(
              r.bytes.subarray(offset - r.offset, offset - r.offset + length),
            );
          }
        }
        return Promise.reject(
          new InternalError(
            `Cannot map free space: bytes ${offset}-${
              offset + length - 1
            } were not kept from the stream`,
          ),
        );
      },
    };
  }

  /**
   * Passes on the input up to byte `until` (or its end), in pieces with
   * their offsets; `base` advances as they are taken.
   */
  async *take(until: number): AsyncGenerator<[number, Chunk]> {
    while (this.#base < until) {
      if (this.#pending.length === 0 && !await this.#pull()) return;
      const c = this.#pending[0];
      const n = chunkLength(c);
      const at = this.#base;
      if (at + n <= until) {
        this.#pending.shift();
        this.#base += n;
        yield [at, c];
      } else {
        const k = until - at;
        if (c instanceof Uint8Array) {
          this.#pending[0] = c.subarray(k);
          this.#base += k;
          yield [at, c.subarray(0, k)];
        } else {
          this.#pending[0] = { zeros: n - k };
          this.#base += k;
          yield [at, { zeros: k }];
        }
      }
    }
  }
}
