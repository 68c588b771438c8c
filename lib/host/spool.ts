/**
 * Temporary spool files: bytes that must wait (for example the data of a
 * qcow2 image streamed metadata-first) are parked on disk, not in memory.
 *
 * @module
 */

import { join } from "node:path";
import { OutputFile } from "./output_file.ts";
import { fileChunks } from "./file_stream.ts";
import { makeTempDirIn, removeTempDir } from "./temp.ts";

/**
 * A temporary file written at any offset and read back in order; removed
 * on {@linkcode Spool.close}.
 *
 * @example Park bytes and read them back
 * ```ts
 * import assert from "node:assert";
 * import { Spool } from "./spool.ts";
 * await using spool = await Spool.create();
 * await spool.writeAt(3, new Uint8Array([9]));
 * const bytes = new Uint8Array(await new Response(await spool.readable(0, 4)).arrayBuffer());
 * assert.deepStrictEqual(bytes, new Uint8Array([0, 0, 0, 9]));
 * ```
 */
export class Spool implements AsyncDisposable {
  #out: OutputFile;
  #dir: string;
  #size = 0;

  private constructor(out: OutputFile, dir: string) {
    this.#out = out;
    this.#dir = dir;
  }

  /**
   * Creates an empty spool in a fresh temporary directory.
   *
   * @param parent Directory to create it in (default: the system's).
   * @returns The spool.
   */
  static async create(parent?: string): Promise<Spool> {
    // Registered as it is made, so that the CLI's signal handler removes
    // the whole directory (recursively) and not only the file inside it.
    const dir = makeTempDirIn("qcow2pipe-spool-", parent);
    try {
      return new Spool(await OutputFile.create(join(dir, "spool")), dir);
    } catch (err) {
      await removeTempDir(dir);
      throw err;
    }
  }

  /** Bytes written so far (the highest offset written). */
  get size(): number {
    return this.#size;
  }

  /**
   * Writes bytes at an offset.
   *
   * @param offset Offset in the spool.
   * @param data The bytes.
   */
  async writeAt(offset: number, data: Uint8Array): Promise<void> {
    await this.#out.writeAt(offset, data);
    this.#size = Math.max(this.#size, offset + data.length);
  }

  /**
   * Reads `[start, start + length)` in order; past what was written reads
   * zeros.
   *
   * @param start First byte.
   * @param length Bytes to read.
   * @param chunkSize Largest chunk.
   * @returns The bytes as a stream.
   */
  async readable(
    start: number,
    length: number,
    chunkSize = 4 * 1024 * 1024,
  ): Promise<ReadableStream<Uint8Array>> {
    await this.#out.flush();
    const file = await Deno.open(this.#out.writingPath, { read: true });
    await file.seek(start, Deno.SeekMode.Start);
    const reader = fileChunks(file, chunkSize).getReader();
    let left = length;
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (left <= 0) {
          await reader.cancel();
          controller.close();
          return;
        }
        const { value, done } = await reader.read();
        const chunk = done
          ? new Uint8Array(Math.min(left, chunkSize))
          : value.subarray(0, Math.min(left, value.length));
        left -= chunk.length;
        controller.enqueue(chunk);
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
  }

  /** Deletes the spool. */
  async close(): Promise<void> {
    await this.#out.abort();
    await removeTempDir(this.#dir);
  }

  /** Same as {@linkcode Spool.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
