/**
 * A `Blob` (a browser `File`, Node's `fs.openAsBlob()`) as a random-access
 * source: each read slices the blob, so only the bytes asked for are in
 * memory, whatever the size of the file.
 *
 * @module
 */

import type { RandomAccessSource } from "./source.ts";

/**
 * A {@linkcode RandomAccessSource} over a `Blob`. In a browser this opens a
 * `File` the user picked without reading it whole; in Node,
 * `await fs.openAsBlob(path)` gives a file-backed blob.
 *
 * @example Open an image held in a Blob
 * ```ts
 * import assert from "node:assert";
 * import { BlobSource } from "./blob_source.ts";
 * import { openImage } from "../reader/open.ts";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * const qcow2 = await convertToBytes(new Uint8Array(70_000).fill(5), { workers: 0 });
 * const file = new File([qcow2.slice()], "disk.qcow2");
 * await using image = await openImage(new BlobSource(file));
 * assert.strictEqual(image.format, "qcow2");
 * assert.deepStrictEqual(await image.readAt(69_998, 2), new Uint8Array([5, 5]));
 * ```
 */
export class BlobSource implements RandomAccessSource {
  #blob: Blob;
  /** Name for messages: the file name when the blob is a `File`. */
  readonly name: string;

  /**
   * Wraps a blob (not read until asked).
   *
   * @param blob The bytes.
   * @param name A name for messages.
   * @default name The `File`'s name, else `"<blob>"`.
   */
  constructor(blob: Blob, name?: string) {
    this.#blob = blob;
    this.name = name ?? ((blob as { name?: string }).name || "<blob>");
  }

  /** Size in bytes. */
  get size(): number {
    return this.#blob.size;
  }

  /**
   * Reads bytes at an offset.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns The bytes (shorter at the end of the blob).
   */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const start = Math.min(offset, this.#blob.size);
    const end = Math.min(start + length, this.#blob.size);
    if (end <= start) return new Uint8Array(0);
    return new Uint8Array(await this.#blob.slice(start, end).arrayBuffer());
  }
}
