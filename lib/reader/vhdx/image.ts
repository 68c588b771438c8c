/**
 * A VHDX image (fixed, dynamic or differencing) as the guest sees it: the
 * BAT maps each payload block to a run of the file, to zeros, or (through
 * the sector bitmap of a differencing image) to the parent. One lookup
 * ({@linkcode VhdxImage.mappings}) serves reads and extents.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  ExtentKind,
  FormatCheck,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import { checkRange } from "../_bounds.ts";
import { PlannedImage } from "../_read.ts";
import { readExact } from "../_bounds.ts";
import { batEntry, BLOCK_STATE } from "./layout.ts";
import { parentPath, type VhdxLayout } from "./open.ts";
import { checkVhdx } from "./check.ts";

/** A guest run of one payload block, as its BAT entry maps it. */
export interface VhdxMapping {
  /** Guest offset. */
  offset: number;
  /** Length in bytes (within one block). */
  length: number;
  /**
   * `data` (FULLY_PRESENT, or the sectors a PARTIALLY_PRESENT block's
   * bitmap marks), `zero` (ZERO) or `unallocated` (the rest: the parent's
   * bytes in a differencing image, zeros in any other).
   */
  kind: Exclude<ExtentKind, "compressed">;
  /** File offset of `offset`, for `data`. */
  hostOffset?: number;
}

const STATE_NAMES: Record<number, string> = {
  0: "0",
  4: "4 (reserved)",
  [BLOCK_STATE.PARTIALLY_PRESENT]:
    "PARTIALLY_PRESENT, which only a differencing image may use",
};

/**
 * A fixed, dynamic or differencing VHDX image. Open it with `openImage`.
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
export class VhdxImage extends PlannedImage implements GuestImage {
  /** Always `vhdx`. */
  readonly format = "vhdx" as const;
  /** The parent of a differencing image. */
  readonly backing: GuestImage | undefined;
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
   * @param backing The parent of a differencing image, opened.
   */
  constructor(
    source: RandomAccessSource,
    layout: VhdxLayout,
    owned: boolean,
    name: string,
    backing?: GuestImage,
  ) {
    super();
    this.backing = backing;
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
   * The image's file, then its parent's sources.
   *
   * @returns The sources.
   */
  sources(): RandomAccessSource[] {
    return [this.#source, ...this.backing?.sources() ?? []];
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
  async *mappings(
    offset: number,
    length: number,
  ): AsyncGenerator<VhdxMapping> {
    const { blockSize, chunkRatio, bat, parent } = this.layout;
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
        case BLOCK_STATE.PARTIALLY_PRESENT:
          if (parent === undefined) throw this.#badState(index, block);
          yield* this.#partial(block, e.offset, pos, n);
          break;
        default:
          throw this.#badState(index, block);
      }
      pos += n;
    }
  }

  /** A block state this image cannot read. */
  #badState(index: number, block: number): Qcow2Error {
    const { batRegion, bat, blockSize } = this.layout;
    const at = batRegion.offset + index * 8;
    return new Qcow2Error(
      "CORRUPT",
      `Cannot read image ${this.#name}: BAT entry ${index} at ${
        hex(at)
      } (guest offset ${hex(block * blockSize)}) has state ${
        STATE_NAMES[batEntry(bat, index).state]
      }`,
      { offset: at, field: "bat" },
    );
  }

  /**
   * The runs of a PARTIALLY_PRESENT block over `[pos, pos + n)`: a sector
   * whose bit is set in its chunk's sector bitmap (least significant bit
   * first) is in this file, any other is the parent's.
   */
  async *#partial(
    block: number,
    blockOffset: number,
    pos: number,
    n: number,
  ): AsyncGenerator<VhdxMapping> {
    const { blockSize, chunkRatio, bat, logicalSectorSize: ss } = this.layout;
    const chunk = Math.floor(block / chunkRatio);
    const bitmapAt =
      batEntry(bat, chunk * (chunkRatio + 1) + chunkRatio).offset;
    const blockStart = block * blockSize;
    const s0 = Math.floor((pos - blockStart) / ss);
    const s1 = Math.floor((pos + n - 1 - blockStart) / ss);
    // Bit of sector s of this block in the chunk's bitmap.
    const bit0 = (block % chunkRatio) * (blockSize / ss);
    const firstByte = (bit0 + s0) >> 3;
    const bits = await readExact(
      this.#source,
      bitmapAt + firstByte,
      ((bit0 + s1) >> 3) - firstByte + 1,
      `sector bitmap of chunk ${chunk} of ${this.#name}`,
    );
    const present = (s: number) => {
      const b = bit0 + s;
      return ((bits[(b >> 3) - firstByte] >> (b & 7)) & 1) === 1;
    };
    for (let s = s0; s <= s1;) {
      const own = present(s);
      let t = s + 1;
      while (t <= s1 && present(t) === own) t++;
      const from = Math.max(pos, blockStart + s * ss);
      const to = Math.min(pos + n, blockStart + t * ss);
      yield own
        ? {
          offset: from,
          length: to - from,
          kind: "data",
          hostOffset: blockOffset + (from - blockStart),
        }
        : { offset: from, length: to - from, kind: "unallocated" };
      s = t;
    }
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
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    let run: PlanItem | undefined;
    for await (const m of this.mappings(offset, length)) {
      if (
        run && run.kind === m.kind &&
        (m.kind !== "data" || run.hostOffset! + run.length === m.hostOffset)
      ) {
        run.length += m.length;
        continue;
      }
      if (run) yield* this.#resolve(run, depth);
      run = m.kind === "data"
        ? {
          ...m,
          depth,
          source: this.#source,
          file: this.#source.name,
        }
        : { ...m, depth };
    }
    if (run) yield* this.#resolve(run, depth);
  }

  /** An own run, or for an unallocated one the parent's plan (zeros past its end). */
  async *#resolve(run: PlanItem, depth: number): AsyncGenerator<PlanItem> {
    const parent = this.backing;
    if (run.kind !== "unallocated" || parent === undefined) {
      yield run;
      return;
    }
    const inside = Math.max(
      0,
      Math.min(run.length, parent.virtualSize - run.offset),
    );
    if (inside > 0) yield* parent.plan(run.offset, inside, depth + 1);
    if (inside < run.length) {
      yield {
        offset: run.offset + inside,
        length: run.length - inside,
        kind: "unallocated",
        depth,
      };
    }
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
    const d: ImageDescription = {
      virtualSize: this.virtualSize,
      dirty: false,
      clusterSize: this.layout.blockSize,
      snapshots: [],
    };
    const parent = this.layout.parent && parentPath(this.layout.parent);
    if (parent !== undefined) {
      d.backingFile = parent;
      d.backingFormat = "vhdx";
    }
    return Promise.resolve(d);
  }

  /**
   * QEMU's check of the BAT (see {@linkcode checkVhdx}); meaningful on an
   * image opened for `check`, whose blocks were not checked at open.
   *
   * @returns What it found.
   */
  check(): Promise<FormatCheck> {
    return Promise.resolve(checkVhdx(this.#source, this.layout));
  }

  /**
   * Closes the source if the image owns it.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    if (this.#owned) await this.#source.close?.();
    await this.backing?.close();
  }

  /** Same as {@linkcode VhdxImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
