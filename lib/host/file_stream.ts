/**
 * Reading a file (or stdin) as a stream of large chunks.
 *
 * @module
 */

import type { HoleProbe } from "../io/host_files.ts";
import { openHoleProbe } from "./_holes.ts";
import { loadLibc, O_RDONLY } from "./_libc.ts";
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
 * Reads of a raw source in flight at once: from a cold cache a disk
 * answers several requests in parallel (`qemu-img convert -m 16` keeps 16
 * out). They run in parallel only through FFI (`pread` called
 * `nonblocking`, on Deno's blocking pool): Deno's own reads of a file run
 * on the main thread, one at a time (bench/RESULTS.md, issue 26).
 */
const READS_AHEAD = 8;

/**
 * A raw file as a stream for the forward pipeline, skipping its holes: data
 * extents are read in chunks of `chunkSize` bytes, holes (found with
 * `lseek(SEEK_DATA/SEEK_HOLE)` through FFI, as qemu-img does) become
 * `{ zeros: n }` and are never read. Without FFI (no permission, another
 * system) the whole file is read. Several reads run ahead at once: with
 * FFI on Linux through `pread` on a descriptor of its own (checked to be
 * the same file), each on a thread beside the main one; else each on a
 * descriptor of its own, in turn.
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
  /** Descriptors not reading now; all of them, to close. */
  const idle: Deno.FsFile[] = [];
  const files: Deno.FsFile[] = [];
  let size = 0;
  let pos = 0; // where the next piece starts
  let dataEnd = 0; // end of the data extent being read
  // Opened once the file is, and only on that very file.
  let probe: HoleProbe | undefined;
  const release = () => {
    probe?.close();
    probe = undefined;
    if (fd !== undefined) {
      // Closed once no pread uses it: the number could be reused meanwhile.
      const last = fd;
      fd = undefined;
      Promise.allSettled(ahead).then(() => libc!.close(last));
    }
    for (const file of files.splice(0)) {
      try {
        file.close();
      } catch {
        // already closed
      }
    }
  };
  type Piece = Uint8Array | { zeros: number };
  const libc = loadLibc();
  let fd: number | undefined; // with libc: pread(2) on it, in parallel
  /**
   * Fills `into` from offset `at` with pread(2); fewer bytes at the end of
   * the file, or undefined when a call failed (errno belongs to the pool's
   * thread: Deno's read then says why).
   */
  const pread = async (
    at: number,
    into: Uint8Array,
  ): Promise<Uint8Array | undefined> => {
    let filled = 0;
    while (filled < into.length) {
      const n = await libc!.pread(fd!, into.subarray(filled), at + filled);
      if (n < 0) return undefined;
      if (n === 0) break;
      filled += n;
    }
    return into.subarray(0, filled);
  };
  /** Reads `want` bytes at `at` on an idle descriptor. */
  const read = async (at: number, want: number): Promise<Piece[]> => {
    const into = buffers?.take().subarray(0, want) ?? new Uint8Array(want);
    let buf = fd === undefined ? undefined : await pread(at, into);
    const file = idle.pop()!;
    try {
      if (!buf) {
        file.seekSync(at, Deno.SeekMode.Start);
        buf = await readUpTo(file, into);
      }
      // The file shrank while being read: the rest reads as zeros.
      if (buf.length < want) return [buf, { zeros: want - buf.length }];
      return [buf];
    } catch (err) {
      throw fileError(`read ${path} at offset ${at}`, err);
    } finally {
      idle.push(file);
    }
  };
  /** The next pieces of the file as a job in order, none at its end. */
  const next = (): Promise<Piece[]> => {
    const at = pos;
    if (pos >= size) return Promise.resolve([]);
    if (pos >= dataEnd) {
      const found = probe?.find(pos);
      if (found === "enxio") {
        pos = size;
        return Promise.resolve([{ zeros: size - at }]);
      }
      if (found === undefined) {
        dataEnd = size; // no information: everything is data
      } else if (found.data > pos) {
        pos = Math.min(found.data, size);
        return Promise.resolve([{ zeros: pos - at }]);
      } else {
        dataEnd = Math.min(found.hole, size);
      }
    }
    const want = Math.min(chunkSize, dataEnd - pos);
    pos += want;
    return read(at, want);
  };
  /** Jobs in file order; reads among them run at once. */
  const ahead: Promise<Piece[]>[] = [];
  const fill = () => {
    while (ahead.length < READS_AHEAD && pos < size) {
      const job = next();
      job.catch(() => {}); // awaited in order by pull
      ahead.push(job);
    }
  };
  return new ReadableStream<Uint8Array | { zeros: number }>({
    async start() {
      try {
        let first: Deno.FileInfo | undefined;
        for (let i = 0; i < READS_AHEAD; i++) {
          const file = await Deno.open(path, { read: true });
          files.push(file);
          const info = await file.stat();
          first ??= info;
          if (info.dev !== first.dev || info.ino !== first.ino) {
            throw new Error("it was replaced while being opened");
          }
          idle.push(file);
        }
        size = first!.size;
        if (first!.ino !== null) {
          const opened = { dev: first!.dev, ino: first!.ino };
          probe = openHoleProbe(path, opened);
          fd = libc?.openChecked(path, O_RDONLY, opened);
        }
      } catch (err) {
        release();
        throw fileError(`open ${path}`, err);
      }
    },
    async pull(controller) {
      fill();
      let pieces: Piece[];
      try {
        pieces = await (ahead.shift() ?? Promise.resolve([]));
      } catch (err) {
        release();
        throw err;
      }
      if (pieces.length === 0) {
        release();
        controller.close();
        return;
      }
      for (const piece of pieces) {
        if (piece instanceof Uint8Array && isZero(piece)) {
          // Zeros on disk (a zeroed journal, inode tables) go on as a
          // hole: the buffer is free again at once, and no stage scans it
          // again.
          buffers?.giveBack(piece);
          controller.enqueue({ zeros: piece.length });
        } else controller.enqueue(piece);
      }
      // The next reads run on Deno's I/O threads while this piece goes
      // down the pipeline (zero scan, writes) on this thread.
      fill();
    },
    cancel() {
      release();
    },
  }, { highWaterMark: 0 });
}
