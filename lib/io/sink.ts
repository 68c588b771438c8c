/**
 * Where images are written: bytes at offsets, then a commit with the final
 * size, or an abort. `OutputFile` is one (a local file renamed into place);
 * a browser can implement it over an Origin Private File System file, Node
 * over a `FileHandle`.
 *
 * @module
 */

import type { RandomAccessSource } from "./source.ts";

/**
 * A destination written at offsets and then committed (or aborted). The
 * writer calls {@linkcode ImageSink.writeAt} any number of times, then
 * {@linkcode ImageSink.commit}, or {@linkcode ImageSink.abort} when
 * anything fails (a failed commit included).
 *
 * @example Collect an image in memory
 * ```ts
 * import assert from "node:assert";
 * import type { ImageSink } from "./sink.ts";
 * import { convert } from "../convert.ts";
 * let image = new Uint8Array(0);
 * const parts: { offset: number; data: Uint8Array }[] = [];
 * const sink: ImageSink = {
 *   writeAt: (offset, data) => (parts.push({ offset, data: data.slice() }), Promise.resolve()),
 *   commit: (size) => {
 *     image = new Uint8Array(size);
 *     for (const p of parts) image.set(p.data, p.offset);
 *     return Promise.resolve();
 *   },
 *   abort: () => Promise.resolve(),
 * };
 * const raw = ReadableStream.from([new Uint8Array(100_000).fill(9)]);
 * const summary = await convert(raw, sink, { compression: "zlib", workers: 0 });
 * assert.strictEqual(image.length, summary.fileSize);
 * assert.strictEqual(image[3], 0xfb); // "QFI\xfb"
 * ```
 */
export interface ImageSink {
  /**
   * Writes bytes at an offset. The caller may reuse `data` once the
   * promise resolves.
   */
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  /**
   * Copies `length` bytes at `sourceOffset` of `source` to `offset` of the
   * output without reading them into memory (Linux's `copy_file_range`
   * between two local files). Optional: a sink that cannot leaves it out
   * or resolves false, and the caller reads the bytes and writes them.
   * Several copies may be in flight at once, each to its own range. Only
   * into a range that reads as zeros (a new file): holes of the source
   * may be left out.
   *
   * @returns Whether all the bytes were copied; false leaves the range for
   * {@linkcode ImageSink.writeAt}.
   */
  copyFrom?(
    source: RandomAccessSource,
    sourceOffset: number,
    offset: number,
    length: number,
  ): Promise<boolean>;
  /**
   * Completes the output with its final size (bytes never written read as
   * zeros), making it visible under its name.
   */
  commit(size: number): Promise<void>;
  /**
   * Discards the output. May follow a commit that failed, so it must be
   * harmless once the output is committed.
   */
  abort(): Promise<void>;
  /**
   * A block device: ranges must be written even when zero (there are no
   * holes to leave).
   * @default {false}
   */
  readonly isDevice?: boolean;
}
