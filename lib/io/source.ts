/**
 * Random-access byte sources: what the reader opens images from.
 *
 * @module
 */

/**
 * Bytes that can be read at any offset: a file, a buffer, an HTTP resource.
 * Implement this to open images from anywhere.
 *
 * @example A source over a buffer
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "./source.ts";
 * const src = new BytesSource(new Uint8Array([1, 2, 3, 4]));
 * assert.deepStrictEqual(await src.read(1, 2), new Uint8Array([2, 3]));
 * ```
 */
export interface RandomAccessSource {
  /** Total size in bytes. */
  readonly size: number;
  /** A name for messages (a path or URL), when there is one. */
  readonly name?: string;
  /**
   * The URL that answered, when the bytes came over the network and a
   * redirect led elsewhere than `name`: the names an image gives resolve
   * against it, and its origin is the one the image may lead to.
   */
  readonly url?: string;
  /**
   * Reads `length` bytes at `offset`. Returns fewer only when the range runs
   * past the end of the source. The bytes may be a view into a buffer
   * shared with other reads (`HttpSource` answers reads merged into one
   * request so): copy them before transferring them to a worker.
   */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Reads into a buffer the caller owns (and may reuse): `into.length`
   * bytes at `offset`, fewer only past the end of the source. Optional: a
   * source whose reads land in fresh memory anyway leaves it out.
   *
   * @returns The number of bytes read.
   */
  readInto?(offset: number, into: Uint8Array): Promise<number>;
  /** Releases the source. */
  close?(): void | Promise<void>;
}

/**
 * A {@linkcode RandomAccessSource} over a `Uint8Array`.
 *
 * @example Read past the end
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "./source.ts";
 * const src = new BytesSource(new Uint8Array(10));
 * assert.strictEqual((await src.read(8, 4)).length, 2);
 * ```
 */
export class BytesSource implements RandomAccessSource {
  #bytes: Uint8Array;
  /** Name for messages. */
  readonly name: string;

  /**
   * Wraps a buffer (not copied).
   *
   * @param bytes The bytes.
   * @param name A name for messages.
   */
  constructor(bytes: Uint8Array, name = "<buffer>") {
    this.#bytes = bytes;
    this.name = name;
  }

  /** Size in bytes. */
  get size(): number {
    return this.#bytes.length;
  }

  /**
   * Returns a view of the bytes at `offset`.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns A subarray (shorter at the end of the buffer).
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    const start = Math.min(offset, this.#bytes.length);
    return Promise.resolve(
      this.#bytes.subarray(start, Math.min(start + length, this.#bytes.length)),
    );
  }
}
