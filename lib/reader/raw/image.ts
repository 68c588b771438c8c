/**
 * A raw image: guest bytes are the file's bytes.
 *
 * @module
 */

import type { RandomAccessSource } from "../../io/source.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import { checkRange } from "../_bounds.ts";
import { rawVirtualSize } from "../../format/geometry.ts";
import { PlannedImage } from "../_read.ts";
import { fileStatus, SourceHoles } from "../_file_status.ts";

/**
 * A raw disk image over a random-access source. Its virtual size is the
 * file size rounded up to a whole sector (`rawVirtualSize`); the bytes past
 * the end of the file read as zeros.
 *
 * @example A 3-byte file is one 512-byte sector
 * ```ts
 * import assert from "node:assert";
 * import { RawImage } from "./image.ts";
 * import { BytesSource } from "../../io/source.ts";
 * await using image = new RawImage(new BytesSource(new Uint8Array([1, 2, 3])));
 * assert.strictEqual(image.virtualSize, 512);
 * assert.deepStrictEqual(await image.readAt(2, 2), new Uint8Array([3, 0]));
 * ```
 */
export class RawImage extends PlannedImage implements GuestImage {
  /** Always `raw`. */
  readonly format = "raw" as const;
  /** Raw images have no backing file. */
  readonly backing: undefined = undefined;
  readonly #source: RandomAccessSource;
  readonly #owned: boolean;
  readonly #name: string;
  readonly #holes: SourceHoles;

  /**
   * Wraps a source.
   *
   * @param source The bytes.
   * @param owned Whether {@linkcode RawImage.close} closes the source
   * (only for a source the image's opener opened itself).
   * @param name What to call the image (default: the source's name).
   */
  constructor(source: RandomAccessSource, owned = false, name?: string) {
    super();
    this.#source = source;
    this.#owned = owned;
    this.#name = name ?? source.name ?? "<raw>";
    this.#holes = new SourceHoles(source);
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

  /** The image's name (by default, its source's). */
  get name(): string {
    return this.#name;
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
  protected async *planRange(
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
   * The block status of the file, as QEMU's file driver reports it: data,
   * or zeros where the file has holes (when asked) and past its end.
   *
   * @param offset Offset.
   * @param length Length.
   * @param options Whether to ask the file system for holes.
   * @returns The runs, in order.
   */
  async *blockStatus(
    offset: number,
    length: number,
    options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    const probe = options.holes ? this.#holes.probe : undefined;
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const st = fileStatus(probe, this.virtualSize, pos, end - pos);
      if (st.length === 0) break;
      yield {
        offset: pos,
        length: st.length,
        allocated: true,
        zero: st.zero,
        data: !st.zero,
        hostOffset: pos,
        file: this.#name,
      };
      pos += st.length;
    }
  }

  /**
   * What `info` says of a raw image: its size.
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    return Promise.resolve({
      virtualSize: this.virtualSize,
      dirty: false,
      snapshots: [],
    });
  }

  /**
   * Closes the source if the image owns it.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    this.#holes.close();
    if (this.#owned) await this.#source.close?.();
  }

  /** Same as {@linkcode RawImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
