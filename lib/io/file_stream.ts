/**
 * Reading a file (or stdin) as a stream of large chunks.
 *
 * @module
 */

/**
 * A byte stream over a file, read in fresh chunks of `chunkSize` bytes
 * (Deno's own `file.readable` uses small chunks). The consumer owns each
 * chunk. Pulling drives the reads (backpressure); the file is closed at the
 * end or on cancel.
 *
 * @param file An open file (or `Deno.stdin`).
 * @param chunkSize Bytes per chunk.
 * @returns The stream.
 *
 * @example Read a file
 * ```ts
 * import assert from "node:assert";
 * import { fileChunks } from "./file_stream.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(10_000).fill(1));
 * const chunks = await Array.fromAsync(fileChunks(await Deno.open(path), 4096));
 * assert.deepStrictEqual(chunks.map((c) => c.length), [4096, 4096, 1808]);
 * await Deno.remove(path);
 * ```
 */
export function fileChunks(
  file: { read(p: Uint8Array): Promise<number | null>; close(): void },
  chunkSize = 4 * 1024 * 1024,
): ReadableStream<Uint8Array> {
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      file.close();
    } catch {
      // already closed
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const buf = new Uint8Array(chunkSize);
      let filled = 0;
      try {
        while (filled < chunkSize) {
          const n = await file.read(buf.subarray(filled));
          if (n === null) break;
          filled += n;
        }
      } catch (err) {
        close();
        throw err;
      }
      if (filled > 0) {
        controller.enqueue(filled === chunkSize ? buf : buf.slice(0, filled));
      }
      if (filled < chunkSize) {
        close();
        controller.close();
      }
    },
    cancel() {
      close();
    },
  }, { highWaterMark: 0 });
}
