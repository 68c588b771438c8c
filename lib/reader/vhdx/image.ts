/**
 * A VHDX image (fixed or dynamic) as the guest sees it: the BAT maps each
 * payload block to a run of the file, or says it reads as zeros. One
 * lookup ({@linkcode VhdxImage.mappings}) serves reads and extents.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  Extent,
  ExtentKind,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import { checkRange } from "../_bounds.ts";
import { extentsOf, readThroughPlan } from "../_read.ts";
import { batEntry, BLOCK_STATE } from "./layout.ts";
import type { VhdxLayout } from "./open.ts";

/** A guest run of one payload block, as its BAT entry maps it. */
export interface VhdxMapping {
  /** Guest offset. */
  offset: number;
  /** Length in bytes (within one block). */
  length: number;
  /** `data` (FULLY_PRESENT), `zero` (ZERO) or `unallocated` (the rest). */
  kind: Exclude<ExtentKind, "compressed">;
  /** File offset of `offset`, for `data`. */
  hostOffset?: number;
}

const STATE_NAMES: Record<number, string> = {
  4: "4 (reserved)",
  [BLOCK_STATE.PARTIALLY_PRESENT]:
    "PARTIALLY_PRESENT, which only a differencing image may use",
};

/**
 * A fixed or dynamic VHDX image. Open it with `openImage`.
 *
 * @example Read a VHDX image made by qemu-img
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../../../mod.ts";
 * const dir = await Deno.makeTempDir();
 * const run = (...args: string[]) => new Deno.Command("qemu-img", { args }).output();
 * await run("create", "-q", "-f", "vhdx", `${dir}/disk.vhdx`, "4M");
 * await using image = await openImage(`${dir}/disk.vhdx`);
 * assert.strictEqual(image.format, "vhdx");
 * assert.deepStrictEqual(await image.readAt(0, 4), new Uint8Array(4));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class VhdxImage implements GuestImage {
  /** Always `vhdx`. */
  readonly format = "vhdx" as const;
  /** Differencing images are refused, so there is no backing image. */
  readonly backing: undefined = undefined;
  /** The metadata read at open. */
  readonly layout: VhdxLayout;
  /** Virtual size: `virtual_disk_size` in whole 512-byte sectors. */
  readonly virtualSize: number;
  readonly #source: RandomAccessSource;
  readonly #owned: boolean;
  readonly #name: string;

  /**
   * Wraps an opened layout.
   *
   * @param source The image file.
   * @param layout Its metadata, from `readVhdx`.
   * @param owned Whether closing the image closes the source.
   * @param name What to call the image.
   */
  constructor(
    source: RandomAccessSource,
    layout: VhdxLayout,
    owned: boolean,
    name: string,
  ) {
    this.#source = source;
    this.layout = layout;
    this.#owned = owned;
    this.#name = name;
    this.virtualSize = Math.floor(layout.virtualDiskSize / 512) * 512;
  }

  /** The image's name. */
  get name(): string {
    return this.#name;
  }

  /**
   * The one source a VHDX image reads.
   *
   * @returns `[source]`.
   */
  sources(): RandomAccessSource[] {
    return [this.#source];
  }

  /**
   * The guest → host lookup: one run per payload block (or part of one)
   * over `[offset, offset + length)`, in order.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @returns The runs.
   * @throws {Qcow2Error} With code `CORRUPT` for a block whose state cannot
   * be read (PARTIALLY_PRESENT without a parent, or the reserved state 4).
   */
  *mappings(offset: number, length: number): Generator<VhdxMapping> {
    const { blockSize, chunkRatio, bat, batRegion } = this.layout;
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const block = Math.floor(pos / blockSize);
      const within = pos - block * blockSize;
      const n = Math.min(blockSize - within, end - pos);
      const index = block + Math.floor(block / chunkRatio);
      const e = batEntry(bat, index);
      switch (e.state) {
        case BLOCK_STATE.FULLY_PRESENT:
          yield {
            offset: pos,
            length: n,
            kind: "data",
            hostOffset: e.offset + within,
          };
          break;
        case BLOCK_STATE.ZERO:
          yield { offset: pos, length: n, kind: "zero" };
          break;
        case BLOCK_STATE.NOT_PRESENT:
        case BLOCK_STATE.UNDEFINED:
        case BLOCK_STATE.UNMAPPED:
        case BLOCK_STATE.UNMAPPED_V095:
          yield { offset: pos, length: n, kind: "unallocated" };
          break;
        default:
          throw new Qcow2Error(
            "CORRUPT",
            `Cannot read image ${this.#name}: BAT entry ${index} at ${
              hex(batRegion.offset + index * 8)
            } (guest offset ${hex(block * blockSize)}) has state ${
              STATE_NAMES[e.state]
            }`,
            { offset: batRegion.offset + index * 8, field: "bat" },
          );
      }
      pos += n;
    }
  }

  /**
   * Reads guest bytes.
   *
   * @param offset Guest offset.
   * @param length Bytes wanted.
   * @returns The bytes.
   */
  readAt(offset: number, length: number): Promise<Uint8Array> {
    return readThroughPlan(this, offset, length);
  }

  /**
   * Lists the extents of a range.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @returns The extents.
   */
  extents(offset = 0, length?: number): AsyncGenerator<Extent> {
    return extentsOf(this, offset, length);
  }

  /**
   * Plans reading a range: runs of blocks that read alike merged, data
   * runs while they are contiguous in the file.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth in a chain.
   * @returns The plan.
   */
  async *plan(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    let run: PlanItem | undefined;
    for (const m of this.mappings(offset, length)) {
      if (
        run && run.kind === m.kind &&
        (m.kind !== "data" || run.hostOffset! + run.length === m.hostOffset)
      ) {
        run.length += m.length;
        continue;
      }
      if (run) yield run;
      run = m.kind === "data"
        ? {
          ...m,
          depth,
          source: this.#source,
          file: this.#source.name,
        }
        : { ...m, depth };
    }
    if (run) yield run;
  }

  /**
   * This image's block status as QEMU reports it: its vhdx driver has no
   * block status of its own, so the block layer calls the whole range
   * allocated data (what `qemu-img map` prints for any VHDX image).
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param _options Unused: QEMU does not look at the file's holes here.
   * @returns One run.
   */
  async *blockStatus(
    offset: number,
    length: number,
    _options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    if (length > 0) {
      yield { offset, length, allocated: true, zero: false, data: true };
    }
  }

  /**
   * What `info` says of the image: its size, and its block size as the
   * cluster size (QEMU's `vhdx_get_info`).
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    return Promise.resolve({
      virtualSize: this.virtualSize,
      dirty: false,
      clusterSize: this.layout.blockSize,
      snapshots: [],
    });
  }

  /**
   * Closes the source if the image owns it.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    if (this.#owned) await this.#source.close?.();
  }

  /** Same as {@linkcode VhdxImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
