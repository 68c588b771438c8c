// A node:zlib stream's native context, driven synchronously.

import { InternalError } from "../format/errors.ts";

/**
 * The native context behind a `node:zlib` stream, driven synchronously
 * through the handle that Node's (and Deno's) own `*Sync` functions use:
 * one context for every cluster instead of one per call, and output
 * written straight into the caller's buffer: faster than the `*Sync`
 * calls, several times so for decompression (bench/RESULTS.md, History,
 * has the measurement). `undefined` where the runtime lacks that handle;
 * the `*Sync` calls serve then.
 */
export class NativeContext {
  #handle: NativeHandle;
  #state: Uint32Array;
  #error: string | undefined;
  #probe = new Uint8Array(1);

  private constructor(handle: NativeHandle, state: Uint32Array) {
    this.#handle = handle;
    this.#state = state;
    // Called during writeSync; replaces the stream's handler, which would
    // destroy the stream.
    handle.onerror = (message) => {
      this.#error = String(message);
    };
  }

  static of(stream: unknown): NativeContext | undefined {
    const s = stream as {
      _handle?: Partial<NativeHandle>;
      _writeState?: unknown;
    };
    const h = s?._handle;
    if (
      typeof h?.writeSync !== "function" || typeof h.reset !== "function" ||
      !(s._writeState instanceof Uint32Array)
    ) {
      return undefined;
    }
    return new NativeContext(h as NativeHandle, s._writeState);
  }

  /**
   * Runs all of `input` through into `out`.
   *
   * @returns Bytes written and input bytes left unread.
   * @throws {InternalError} With the codec's message.
   */
  run(
    flush: number,
    input: Uint8Array,
    out: Uint8Array,
  ): { written: number; inputLeft: number } {
    this.#error = undefined;
    this.#handle.writeSync(
      flush,
      input,
      0,
      input.length,
      out,
      0,
      out.length,
    );
    const result = {
      written: out.length - this.#state[0],
      inputLeft: this.#state[1],
    };
    if (this.#error !== undefined) {
      this.#handle.reset();
      // Decompression turns it into a Qcow2Error (the data was bad); a
      // compressor that fails on bytes it was given is a bug.
      throw new InternalError(this.#error);
    }
    return result;
  }

  /** Whether the stream has output beyond what `run` had room for. */
  hasMore(flush: number): boolean {
    return this.run(flush, this.#probe.subarray(0, 0), this.#probe)
      .written > 0;
  }

  /** Ready for the next cluster. */
  reset(): void {
    this.#handle.reset();
  }
}

interface NativeHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    out: Uint8Array,
    outOffset: number,
    outLength: number,
  ): void;
  reset(): void;
  onerror: (message: string, errno: number) => void;
}
