/**
 * A raw image: guest bytes are the file's bytes.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { Extent, GuestImage, PlanItem } from "./image.ts";
import { checkRange } from "./qcow2_image.ts";
import { rawVirtualSize } from "../format/geometry.ts";
import { extentsOf, readThroughPlan } from "./_read.ts";

/**
 * A raw disk image over a random-access source. Its virtual size is the
 * file size rounded up to a whole sector (`rawVirtualSize`); the bytes past
 * the end of the file read as zeros.
 *
 * @example A 3-byte file is one 512-byte sector
 * ```ts
 * import assert from "node:assert";
 * import { RawImage } from "./raw_image.ts";
 * import { BytesSource } from "../io/source.ts";
 * await using image = new RawImage(new BytesSource(new Uint8Array([1, 2, 3])));
 * assert.strictEqual(image.virtualSize, 512);
 * assert.deepStrictEqual(await image.readAt(2, 2), new Uint8Array([3, 0]));
 * ```
 */
export class RawImage implements GuestImage {
  /** Always `raw`. */
  readonly format = "raw" as const;
  /** Raw images have no backing file. */
  readonly backing: undefined = undefined;
  readonly #source: RandomAccessSource;
  readonly #owned: boolean;

  /**
   * Wraps a source.
   *
   * @param source The bytes.
   * @param owned Whether {@linkcode RawImage.close} closes the source
   * (only for a source the image's opener opened itself).
   */
  constructor(source: RandomAccessSource, owned = false) {
    this.#source = source;
    this.#owned = owned;
  }

  /** The file size rounded up to a whole sector. */
  get virtualSize(): number {
    return rawVirtualSize(this.#source.size);
  }

  /** The image file. */
  get source(): RandomAccessSource {
    return this.#source;
  }

  /**
   * The one source a raw image reads.
   *
   * @returns `[source]`.
   */
  sources(): RandomAccessSource[] {
    return [this.#source];
  }

  /** The source's name. */
  get name(): string {
    return this.#source.name ?? "<raw>";
  }

  /**
   * Reads bytes.
   *
   * @param offset Offset.
   * @param length Length.
   * @returns The bytes.
   */
  readAt(offset: number, length: number): Promise<Uint8Array> {
    return readThroughPlan(this, offset, length);
  }

  /**
   * One data extent covering the range.
   *
   * @param offset Offset.
   * @param length Length.
   * @returns The extent.
   */
  extents(offset = 0, length?: number): AsyncGenerator<Extent> {
    return extentsOf(this, offset, length);
  }

  /**
   * Plans a read: the file's bytes as data, the tail of its last sector as
   * zeros.
   *
   * @param offset Offset.
   * @param length Length.
   * @param depth Depth in a backing chain.
   * @returns The plan.
   */
  async *plan(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    const inFile = Math.max(0, Math.min(length, this.#source.size - offset));
    if (inFile > 0) {
      yield {
        offset,
        length: inFile,
        kind: "data",
        depth,
        hostOffset: offset,
        file: this.#source.name,
        source: this.#source,
      };
    }
    if (inFile < length) {
      yield {
        offset: offset + inFile,
        length: length - inFile,
        kind: "zero",
        depth,
      };
    }
  }

  /**
   * Closes the source if the image owns it.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    if (this.#owned) await this.#source.close?.();
  }

  /** Same as {@linkcode RawImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
