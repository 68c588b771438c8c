/**
 * A VHD image (QEMU's `vpc`) as the guest sees it: a fixed disk (its bytes
 * followed by the footer), a dynamic disk (blocks located by the BAT, each
 * behind its sector bitmap), or a differencing disk (a dynamic disk whose
 * sector bitmaps say which sectors it holds; the others are its parent's).
 *
 * Reads follow QEMU 7.2's `vpc` driver where it reads the image: a
 * dynamic disk's allocated blocks are read whole, whatever their bitmaps
 * say, and its unallocated blocks read as zeros. QEMU reads a differencing
 * disk as a dynamic one, without its parent; here its parent is followed
 * and its bitmaps are honoured, as Virtual PC and Hyper-V read it.
 *
 * @module
 */

import { hex } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { LruCache } from "../../io/lru.ts";
import { rawVirtualSize } from "../../format/geometry.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import { PlannedImage } from "../_read.ts";
import { checkRange, readExact } from "../_bounds.ts";
import { fileStatus, SourceHoles } from "../_file_status.ts";
import {
  sectorBit,
  VHD_BAT_UNUSED,
  VHD_SECTOR,
  type VhdFooter,
  type VhdSubformat,
} from "./layout.ts";

/** The block map of a dynamic or differencing image. */
export interface VhdBlockMap {
  /** Bytes per block. */
  blockSize: number;
  /** Bytes of the sector bitmap before each block's data. */
  bitmapSize: number;
  /** BAT entries covering the virtual disk: the sector of each block's bitmap. */
  bat: Uint32Array;
}

/** What a {@linkcode VpcImage} is built from (see `vpcType`). */
export interface VpcImageInit {
  source: RandomAccessSource;
  /** What to call the image. */
  name: string;
  footer: VhdFooter;
  subformat: VhdSubformat;
  /** Virtual size in bytes, as QEMU computes it. */
  virtualSize: number;
  /** Dynamic and differencing images: the BAT. */
  blocks: VhdBlockMap | undefined;
  /** The parent's name as followed (differencing). */
  parentName: string | undefined;
  /** The parent, opened (differencing, unless only described). */
  backing: GuestImage | undefined;
  /** Bitmap cache budget in bytes. */
  cacheBytes: number;
  /** Whether closing the image closes `source`. */
  ownsSource: boolean;
}

/**
 * A VHD image. Open it with `openImage` (`format: "vpc"` for a fixed disk,
 * which probes as raw, in qemu-img too).
 *
 * @example Read a fixed VHD made by hand: its bytes, then its footer
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../open.ts";
 * const file = new Uint8Array(1024 + 512);
 * file.fill(7, 0, 1024);
 * const footer = file.subarray(1024);
 * const view = new DataView(footer.buffer, footer.byteOffset, 512);
 * footer.set(new TextEncoder().encode("conectixqem2"), 0);
 * footer.set(new TextEncoder().encode("qem2"), 28);
 * view.setBigUint64(48, 1024n); // current_size
 * view.setUint32(60, 2); // fixed
 * let sum = 0;
 * for (const b of footer) sum += b;
 * view.setUint32(64, ~sum >>> 0);
 * await using image = await openImage(file, { format: "vpc" });
 * assert.strictEqual(image.virtualSize, 1024);
 * assert.deepStrictEqual(await image.readAt(1022, 2), new Uint8Array([7, 7]));
 * ```
 */
export class VpcImage extends PlannedImage implements GuestImage {
  /** Always `vpc`, as qemu-img names VHD. */
  readonly format = "vpc" as const;
  /** Virtual size in bytes. */
  readonly virtualSize: number;
  /** The parent of a differencing image. */
  readonly backing: GuestImage | undefined;
  /** Fixed, dynamic or differencing. */
  readonly subformat: VhdSubformat;
  /** The footer. */
  readonly footer: VhdFooter;
  readonly #in: VpcImageInit;
  readonly #bitmaps: LruCache<number, Promise<Uint8Array>>;
  readonly #holes: SourceHoles;

  /**
   * @param init The parsed, checked structures and the opened parent.
   */
  constructor(init: VpcImageInit) {
    super();
    this.#in = init;
    this.virtualSize = init.virtualSize;
    this.backing = init.backing;
    this.subformat = init.subformat;
    this.footer = init.footer;
    this.#bitmaps = new LruCache(init.cacheBytes);
    this.#holes = new SourceHoles(init.source);
  }

  /** The image's name. */
  get name(): string {
    return this.#in.name;
  }

  /**
   * The image file, then the parent chain's sources.
   *
   * @returns The sources this image reads.
   */
  sources(): RandomAccessSource[] {
    return [this.#in.source, ...this.backing?.sources() ?? []];
  }

  /**
   * Plans reading `[offset, offset + length)`, descending into the parent
   * where a differencing image holds nothing.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth of this image in the chain.
   * @returns Plan items, in order.
   */
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    let run: PlanItem | undefined;
    for await (const item of this.#own(offset, length, depth)) {
      if (run && canExtend(run, item)) {
        run.length += item.length;
        continue;
      }
      if (run) yield* this.#resolve(run, depth);
      run = item;
    }
    if (run) yield* this.#resolve(run, depth);
  }

  /** A run of this image, or its parent's plan where it holds nothing. */
  async *#resolve(run: PlanItem, depth: number): AsyncGenerator<PlanItem> {
    if (run.kind !== "unallocated" || !this.backing) {
      yield run;
      return;
    }
    const backing = this.backing;
    const inside = Math.max(
      0,
      Math.min(run.length, backing.virtualSize - run.offset),
    );
    if (inside > 0) yield* backing.plan(run.offset, inside, depth + 1);
    if (inside < run.length) {
      yield {
        offset: run.offset + inside,
        length: run.length - inside,
        kind: "unallocated",
        depth,
      };
    }
  }

  /** This image's own items: data, zeros, or unallocated (differencing). */
  async *#own(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    const source = this.#in.source;
    const blocks = this.#in.blocks;
    if (blocks === undefined) {
      if (length > 0) {
        yield {
          offset,
          length,
          kind: "data",
          depth,
          hostOffset: offset,
          source,
          file: source.name,
        };
      }
      return;
    }
    const { blockSize, bitmapSize, bat } = blocks;
    const differencing = this.subformat === "differencing";
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const index = Math.floor(pos / blockSize);
      const inBlock = pos - index * blockSize;
      const n = Math.min(blockSize - inBlock, end - pos);
      const entry = bat[index];
      if (entry === VHD_BAT_UNUSED) {
        yield {
          offset: pos,
          length: n,
          kind: differencing ? "unallocated" : "zero",
          depth,
        };
        pos += n;
        continue;
      }
      const data = entry * VHD_SECTOR + bitmapSize;
      const item = (at: number, len: number, held: boolean): PlanItem =>
        held
          ? {
            offset: pos + at,
            length: len,
            kind: "data",
            depth,
            hostOffset: data + inBlock + at,
            source,
            file: source.name,
          }
          : { offset: pos + at, length: len, kind: "unallocated", depth };
      if (!differencing) {
        yield item(0, n, true);
      } else {
        const bitmap = await this.#bitmap(index, entry);
        for (let at = 0; at < n;) {
          let sector = Math.floor((inBlock + at) / VHD_SECTOR);
          const held = sectorBit(bitmap, sector);
          // The end of the run of sectors marked alike, from `pos`.
          let stop = (sector + 1) * VHD_SECTOR - inBlock;
          while (stop < n && sectorBit(bitmap, ++sector) === held) {
            stop += VHD_SECTOR;
          }
          const len = Math.min(stop, n) - at;
          yield item(at, len, held);
          at += len;
        }
      }
      pos += n;
    }
  }

  /** The sector bitmap of block `index` (cached). */
  #bitmap(index: number, entry: number): Promise<Uint8Array> {
    let bitmap = this.#bitmaps.get(index);
    if (!bitmap) {
      const at = entry * VHD_SECTOR;
      bitmap = readExact(
        this.#in.source,
        at,
        this.#in.blocks!.bitmapSize,
        `sector bitmap of block ${index} at ${hex(at)}`,
      );
      this.#bitmaps.set(index, bitmap, this.#in.blocks!.bitmapSize);
      bitmap.catch(() => {});
    }
    return bitmap;
  }

  /**
   * This image's own block status, as QEMU 7.2's `vpc_co_block_status()`
   * reports it: a fixed disk is data (split by the file's holes, which
   * QEMU asks the file for), a dynamic disk's blocks data and its
   * unallocated blocks zeros; a differencing disk's sectors that its
   * bitmaps do not mark are not allocated (its parent answers).
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param options Whether to ask the file system for holes.
   * @returns The runs, in order.
   */
  async *blockStatus(
    offset: number,
    length: number,
    options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    const file = this.#in.name;
    if (this.#in.blocks === undefined) {
      yield* this.#fixedStatus(offset, length, options, file);
      return;
    }
    for await (const item of this.#own(offset, length, 0)) {
      const run = { offset: item.offset, length: item.length };
      if (item.kind === "data") {
        yield {
          ...run,
          allocated: true,
          zero: false,
          data: true,
          hostOffset: item.hostOffset,
          file,
        };
      } else if (item.kind === "zero") {
        yield { ...run, allocated: true, zero: true, data: false };
      } else {
        yield { ...run, allocated: false, zero: true, data: false };
      }
    }
  }

  /** A fixed disk's bytes, split by the holes of the file when asked. */
  async *#fixedStatus(
    offset: number,
    length: number,
    options: BlockStatusOptions,
    file: string,
  ): AsyncGenerator<BlockStatus> {
    const probe = options.holes ? this.#holes.probe : undefined;
    const size = rawVirtualSize(this.#in.source.size);
    let done = 0;
    while (done < length) {
      const host = offset + done;
      const st = fileStatus(probe, size, host, length - done);
      const n = st.length === 0 ? length - done : st.length;
      yield {
        offset: host,
        length: n,
        allocated: true,
        zero: st.length === 0 || st.zero,
        data: true,
        hostOffset: host,
        file,
      };
      done += n;
    }
  }

  /**
   * What `info` says of the image: its virtual size, and the block size of
   * a dynamic or differencing disk as its cluster size (QEMU's
   * `vpc_get_info()`); the parent a differencing disk names.
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    const d: ImageDescription = {
      virtualSize: this.virtualSize,
      dirty: false,
      snapshots: [],
    };
    if (this.#in.blocks) d.clusterSize = this.#in.blocks.blockSize;
    if (this.#in.parentName !== undefined) d.backingFile = this.#in.parentName;
    return Promise.resolve(d);
  }

  /**
   * Closes the parent chain, and the image file when the image opened it.
   *
   * @returns When everything is closed.
   */
  async close(): Promise<void> {
    this.#holes.close();
    if (this.#in.ownsSource) await this.#in.source.close?.();
    await this.backing?.close();
  }

  /** Same as {@linkcode VpcImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Whether `item` continues `run`: same kind, and data at the next host byte. */
function canExtend(run: PlanItem, item: PlanItem): boolean {
  if (run.kind !== item.kind) return false;
  return item.kind !== "data" ||
    run.hostOffset! + run.length === item.hostOffset;
}
