/**
 * Random-access byte sources: what the reader opens images from.
 *
 * @module
 */

import { fileError } from "./_errors.ts";

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
   * Reads `length` bytes at `offset`. Returns fewer only when the range runs
   * past the end of the source.
   */
  read(offset: number, length: number): Promise<Uint8Array>;
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

/**
 * A {@linkcode RandomAccessSource} over a file opened read-only. Reads are
 * synchronous seek-then-read pairs (Deno files have no positional read; the
 * synchronous calls are several times faster than the async ones and keep
 * each pair atomic).
 *
 * @example Read the first bytes of a file
 * ```ts
 * import assert from "node:assert";
 * import { FileSource } from "./source.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([7, 8, 9]));
 * await using src = await FileSource.open(path);
 * assert.deepStrictEqual(await src.read(1, 5), new Uint8Array([8, 9]));
 * await Deno.remove(path);
 * ```
 */
export class FileSource implements RandomAccessSource, AsyncDisposable {
  #file: Deno.FsFile;
  #size: number;
  /** The path the file was opened from. */
  readonly name: string;

  private constructor(file: Deno.FsFile, size: number, name: string) {
    this.#file = file;
    this.#size = size;
    this.name = name;
  }

  /**
   * Opens a file for reading.
   *
   * @param path File path.
   * @param name Name for messages and for resolving the names an image
   * gives (default: the path).
   * @returns The source.
   * @throws {Deno.errors.NotFound} When the file does not exist.
   * @throws {Deno.errors.IsADirectory} When `path` is a directory.
   */
  static async open(path: string, name: string = path): Promise<FileSource> {
    const file = await Deno.open(path, { read: true });
    try {
      const info = await file.stat();
      if (info.isDirectory) {
        throw new Deno.errors.IsADirectory(`Is a directory: ${path}`);
      }
      let size = info.size;
      if (!info.isFile) {
        // Block devices report size 0 in stat; find the end by seeking.
        size = await file.seek(0, Deno.SeekMode.End);
      }
      return new FileSource(file, size, name);
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /** Size in bytes when opened. */
  get size(): number {
    return this.#size;
  }

  /**
   * Reads bytes at an offset.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns The bytes (shorter at the end of the file).
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    try {
      return Promise.resolve(this.#readNow(offset, length));
    } catch (err) {
      return Promise.reject(
        fileError(`read ${this.name} at offset ${offset}`, err),
      );
    }
  }

  #readNow(offset: number, length: number): Uint8Array {
    const want = Math.max(0, Math.min(length, this.#size - offset));
    const out = new Uint8Array(want);
    if (want === 0) return out;
    this.#file.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < want) {
      const n = this.#file.readSync(out.subarray(done));
      if (n === null || n === 0) break;
      done += n;
    }
    return done === want ? out : out.subarray(0, done);
  }

  /** Closes the file. */
  close(): void {
    try {
      this.#file.close();
    } catch {
      // already closed
    }
  }

  /** Closes the file. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}
