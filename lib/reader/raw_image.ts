/**
 * A raw image: guest bytes are the file's bytes.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { Extent, GuestImage, PlanItem } from "./image.ts";
import { checkRange } from "./qcow2_image.ts";
import { readThroughPlan, toExtent } from "./_read.ts";

/**
 * A raw disk image over a random-access source.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { RawImage } from "./raw_image.ts";
 * import { BytesSource } from "../io/source.ts";
 * await using image = new RawImage(new BytesSource(new Uint8Array([1, 2, 3])));
 * assert.strictEqual(image.virtualSize, 3);
 * ```
 */
export class RawImage implements GuestImage {
  /** Always `raw`. */
  readonly format = "raw" as const;
  /** Raw images have no backing file. */
  readonly backing: undefined = undefined;
  readonly #source: RandomAccessSource;

  /**
   * Wraps a source.
   *
   * @param source The bytes.
   */
  constructor(source: RandomAccessSource) {
    this.#source = source;
  }

  /** The source's size. */
  get virtualSize(): number {
    return this.#source.size;
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
  async *extents(offset = 0, length?: number): AsyncGenerator<Extent> {
    const items = this.plan(offset, length ?? this.virtualSize - offset, 0);
    for await (const item of items) yield toExtent(item);
  }

  /**
   * Plans a read: one data item per range.
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
    if (length === 0) return;
    yield {
      offset,
      length,
      kind: "data",
      depth,
      hostOffset: offset,
      file: this.#source.name,
      source: this.#source,
    };
  }

  /**
   * Closes the source.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    await this.#source.close?.();
  }

  /** Same as {@linkcode RawImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
