/**
 * Reading a file (or stdin) as a stream of large chunks.
 *
 * @module
 */

import { openHoleProber } from "./_holes.ts";
import { fileError } from "../io/os_errors.ts";
import { Recycler } from "../bytes/recycle.ts";
import { isZero } from "../bytes/zeros.ts";

/**
 * A byte stream over a file, read in fresh chunks of `chunkSize` bytes
 * (Deno's own `file.readable` uses small chunks). The consumer owns each
 * chunk. Pulling drives the reads (backpressure); the file is closed at the
 * end or on cancel.
 *
 * @param file An open file (or `Deno.stdin`).
 * @param chunkSize Bytes per chunk.
 * @param name What the file is called in messages.
 * @returns The stream, which fails with an `IoError` when the file
 * cannot be read (`Cannot read disk.raw at offset 0: ...`, the OS error as
 * `cause`).
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
  name = "the file",
): ReadableStream<Uint8Array> {
  const read = readerFor(file);
  let at = 0;
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
          const n = await read(buf.subarray(filled));
          if (n === null) break;
          filled += n;
        }
      } catch (err) {
        close();
        throw fileError(`read ${name} at offset ${at + filled}`, err);
      }
      at += filled;
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

/**
 * Reads from a regular file synchronously (several times faster than
 * Deno's async reads, and the page cache answers at once); anything else
 * (stdin, pipes, sockets) asynchronously, so waiting for data never blocks
 * the event loop.
 */
function readerFor(
  file: { read(p: Uint8Array): Promise<number | null> },
): (p: Uint8Array) => number | null | Promise<number | null> {
  if (file instanceof Deno.FsFile) {
    try {
      if (file.statSync().isFile) return (p) => file.readSync(p);
    } catch {
      // not stat-able: read asynchronously
    }
  }
  return (p) => file.read(p);
}

/** Fills `buf` from the file position (on Deno's I/O threads); fewer bytes at its end. */
async function readUpTo(
  file: Deno.FsFile,
  buf: Uint8Array,
): Promise<Uint8Array> {
  const length = buf.length;
  let filled = 0;
  while (filled < length) {
    const n = await file.read(buf.subarray(filled));
    if (n === null) break;
    filled += n;
  }
  return buf.subarray(0, filled);
}

/**
 * A raw file as a stream for the forward pipeline, skipping its holes: data
 * extents are read in chunks of `chunkSize` bytes, holes (found with
 * `lseek(SEEK_DATA/SEEK_HOLE)` through FFI, as qemu-img does) become
 * `{ zeros: n }` and are never read. Without FFI (no permission, another
 * system) the whole file is read.
 *
 * @param path The file.
 * @param chunkSize Largest data chunk.
 * @param options `recycle`: take the chunks from a set of buffers that go
 * round instead of allocating each (a fresh buffer costs a page fault per
 * 4 KiB). Only for a pipeline that hands the chunks on in order and keeps
 * none of them, ending in `convert()` to an `ImageSink`: a chunk
 * is overwritten once the sink has written a later one's bytes.
 * @returns The stream (the file is closed at its end or on cancel).
 *
 * @example A file with a hole
 * ```ts
 * import assert from "node:assert";
 * import { sparseFileChunks } from "./file_stream.ts";
 * const path = await Deno.makeTempFile();
 * using file = await Deno.open(path, { write: true });
 * await file.seek(1 << 20, Deno.SeekMode.Start);
 * await file.write(new Uint8Array([1]));
 * let bytes = 0;
 * for await (const c of sparseFileChunks(path)) bytes += c instanceof Uint8Array ? c.length : c.zeros;
 * assert.strictEqual(bytes, (1 << 20) + 1);
 * await Deno.remove(path);
 * ```
 */
export function sparseFileChunks(
  path: string,
  chunkSize = 4 * 1024 * 1024,
  options: { recycle?: boolean } = {},
): ReadableStream<Uint8Array | { zeros: number }> {
  const buffers = options.recycle ? new Recycler(chunkSize) : undefined;
  let file: Deno.FsFile | undefined;
  let size = 0;
  let pos = 0;
  let dataEnd = 0; // end of the data extent being read
  const prober = openHoleProber();
  const probe = prober.open(path);
  const release = () => {
    probe?.close();
    prober[Symbol.dispose]();
    try {
      file?.close();
    } catch {
      // already closed
    }
  };
  type Piece = Uint8Array | { zeros: number };
  /** The next pieces of the file, none at its end. One runs at a time. */
  const step = async (): Promise<Piece[]> => {
    const at = pos;
    try {
      if (pos >= size) return [];
      if (pos >= dataEnd) {
        const found = probe?.find(pos);
        if (found === "enxio") {
          pos = size;
          return [{ zeros: size - at }];
        }
        if (found === undefined) {
          dataEnd = size; // no information: everything is data
        } else if (found.data > pos) {
          pos = Math.min(found.data, size);
          return [{ zeros: pos - at }];
        } else {
          dataEnd = Math.min(found.hole, size);
        }
        file!.seekSync(pos, Deno.SeekMode.Start);
      }
      const want = Math.min(chunkSize, dataEnd - pos);
      const into = buffers?.take().subarray(0, want) ?? new Uint8Array(want);
      const buf = await readUpTo(file!, into);
      if (buf.length < want) {
        // The file shrank while being read: the rest reads as zeros.
        pos = size;
        return [buf, { zeros: size - at - buf.length }];
      }
      pos += want;
      if (isZero(buf)) {
        // Zeros on disk (a zeroed journal, inode tables) go on as a hole:
        // the buffer is free again at once, and no stage scans it again.
        buffers?.giveBack(buf);
        return [{ zeros: want }];
      }
      return [buf];
    } catch (err) {
      throw fileError(`read ${path} at offset ${at}`, err);
    }
  };
  let ahead: Promise<Piece[]> | undefined;
  return new ReadableStream<Uint8Array | { zeros: number }>({
    async start() {
      try {
        file = await Deno.open(path, { read: true });
        size = (await file.stat()).size;
      } catch (err) {
        release();
        throw fileError(`open ${path}`, err);
      }
    },
    async pull(controller) {
      let pieces: Piece[];
      try {
        pieces = await (ahead ?? step());
      } catch (err) {
        release();
        throw err;
      }
      if (pieces.length === 0) {
        release();
        controller.close();
        return;
      }
      for (const piece of pieces) controller.enqueue(piece);
      // The next read runs on Deno's I/O threads while this one goes down
      // the pipeline (zero scan, writes) on this thread.
      ahead = step();
      ahead.catch(() => {}); // awaited by the next pull
    },
    cancel() {
      release();
    },
  }, { highWaterMark: 0 });
}
