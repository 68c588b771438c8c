/**
 * The free-space map stage for sources read at random (files, HTTP with
 * Range requests, opened images): the map is made first from the
 * metadata, then only the ranges that are not free are read.
 *
 * @module
 */

import type { CodecPool } from "../codec/pool.ts";
import { RangeChunks } from "../io/range_chunks.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "../reader/image.ts";
import { readSegments } from "../reader/segments.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import { streamFrom } from "../bytes/portable.ts";
import { type FreeSpaceMap, mapFreeSpace } from "./map.ts";
import type { SparsifyReport } from "./report.ts";

/**
 * Options of {@linkcode freeSpaceChunks}.
 *
 * @example Read the kept part of a disk in 1 KiB chunks
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { freeSpaceChunks } from "./chunks.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a); // a bare swap area, old bytes in its pages
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const { readable } = await freeSpaceChunks(new BytesSource(disk), { chunkSize: 1024 });
 * const sizes = (await Array.fromAsync(readable)).map((c) => c instanceof Uint8Array ? c.length : -c.zeros);
 * assert.deepStrictEqual(sizes, [1024, 1024, 1024, 1024, -((1 << 20) - 4096)]);
 * ```
 */
export interface FreeSpaceChunksOptions {
  /** Decompression workers for a compressed image. */
  pool?: CodecPool;
  /**
   * Largest data chunk, in bytes.
   * @default {4194304} (4 MiB)
   */
  chunkSize?: number;
  /** A map made already (by {@linkcode mapFreeSpace} on the same input). */
  map?: FreeSpaceMap;
  /**
   * Read a raw source's chunks into buffers that go round instead of
   * allocating each (see `sparseFileChunks`): only for a pipeline that
   * hands the chunks on in order and keeps none of them, ending in
   * `convert()` to an `ImageSink`. Without it, each chunk is fresh memory.
   * @default {false}
   */
  recycle?: boolean;
}

/** A disk as a stream for the forward pipeline, and what its map found. *
 * @example Stream a bare swap area and say what was dropped
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { freeSpaceChunks, type SparsifiedStream } from "./chunks.ts";
 * const disk = new Uint8Array(1 << 20);
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const { readable, report }: SparsifiedStream = await freeSpaceChunks(new BytesSource(disk));
 * await readable.cancel();
 * assert.strictEqual(report.regions[0].found, "swap");
 * ```
 */
export interface SparsifiedStream {
  /** Bytes, with free ranges (and holes) as `{ zeros: n }`. */
  readable: ReadableStream<Uint8Array | ZeroBytes>;
  /** What was found and dropped. */
  report: SparsifyReport;
}

const DEFAULT_CHUNK = 4 * 1024 * 1024;

/**
 * Maps a disk's free space, then streams the disk for the forward
 * pipeline: free ranges become `{ zeros: n }` without being read, the rest
 * is read in chunks. A local file's holes are skipped too (SEEK_DATA /
 * SEEK_HOLE, as `sparseFileChunks` does), and an image's zero and
 * unallocated ranges stay zero runs.
 *
 * @param input A raw disk read at random, or an opened image.
 * @param options Pool, chunk size, a map made already.
 * @returns The stream and the report.
 * @throws {IoError} When the source cannot be read (a Qcow2Error when it
 * is an image whose content is bad).
 *
 * @example Convert a bare swap area: only its header page is stored
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { freeSpaceChunks } from "./chunks.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a); // old bytes everywhere
 * disk.fill(0, 1024, 4096);
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const { readable, report } = await freeSpaceChunks(new BytesSource(disk));
 * assert.strictEqual(report.regions[0].found, "swap");
 * const chunks = await Array.fromAsync(readable);
 * assert.deepStrictEqual(chunks[0], disk.subarray(0, 4096)); // the header, read
 * assert.deepStrictEqual(chunks.slice(1), [{ zeros: (1 << 20) - 4096 }]); // the rest, not read
 * ```
 */
export async function freeSpaceChunks(
  input: RandomAccessSource | GuestImage,
  options: FreeSpaceChunksOptions = {},
): Promise<SparsifiedStream> {
  const chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < 512) {
    throw new RangeError(
      `Cannot read disk: chunkSize ${chunkSize} is out of range [512, 2^53)`,
    );
  }
  const map = options.map ?? await mapFreeSpace(input);
  const size = "readAt" in input ? input.virtualSize : input.size;
  async function* all(): AsyncGenerator<Uint8Array | ZeroBytes> {
    // try/finally rather than `using`: Node 20, which runs the bundle,
    // cannot parse `using` declarations.
    const reader = "readAt" in input ? undefined : new RangeChunks(input, {
      chunkSize,
      recycle: options.recycle,
    });
    const kept = reader
      ? (from: number, to: number) => reader.range(from, to)
      : (from: number, to: number) =>
        imageRange(input as GuestImage, from, to, chunkSize, options.pool);
    try {
      let pos = 0;
      for await (const free of map.ranges()) {
        const start = Math.min(free.offset, size);
        const end = Math.min(free.offset + free.length, size);
        if (start > pos) yield* kept(pos, start);
        if (end > start) yield { zeros: end - start };
        pos = Math.max(pos, end);
      }
      if (pos < size) yield* kept(pos, size);
    } finally {
      reader?.[Symbol.dispose]();
    }
  }
  return { readable: streamFrom(all()), report: map.report };
}

/** An image's guest bytes in `[from, to)`: data, and its zero ranges as zeros. */
async function* imageRange(
  image: GuestImage,
  from: number,
  to: number,
  chunkSize: number,
  pool: CodecPool | undefined,
): AsyncGenerator<Uint8Array | ZeroBytes> {
  for await (
    const s of readSegments(image, {
      offset: from,
      length: to - from,
      chunkSize,
      pool,
    })
  ) yield s.data ?? { zeros: s.length };
}
