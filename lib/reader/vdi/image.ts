/**
 * A VDI (VirtualBox) image as the guest sees it: the header, the block map
 * read whole at open, and one lookup ({@linkcode VdiImage.runs}) under
 * reads and block status.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { viewOf } from "../../bytes/binary.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  FormatCheck,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import { checkRange, readExact } from "../_bounds.ts";
import { PlannedImage } from "../_read.ts";
import { fileStatus, SourceHoles } from "../_file_status.ts";
import { rawVirtualSize } from "../../format/geometry.ts";
import { checkVdi } from "./check.ts";
import {
  isAllocated,
  parseVdiHeader,
  VDI_HEADER_SIZE,
  VDI_TYPE_STATIC,
  type VdiHeader,
} from "./header.ts";

/** A run of guest bytes that the block map maps one way. */
interface VdiRun {
  offset: number;
  length: number;
  /** Host offset of `offset`; absent where the blocks read as zeros. */
  hostOffset?: number;
}

/**
 * An opened VDI image, dynamic or static. Open it with `openImage` (an
 * example is on `vdiType`).
 */
export class VdiImage extends PlannedImage implements GuestImage {
  /** Always `vdi`. */
  readonly format = "vdi" as const;
  /** VDI images read here have no parent. */
  readonly backing: undefined = undefined;
  /** The parsed header. */
  readonly header: VdiHeader;
  readonly #source: RandomAccessSource;
  readonly #name: string;
  readonly #owned: boolean;
  readonly #bmap: Uint32Array;
  readonly #holes: SourceHoles;

  private constructor(
    source: RandomAccessSource,
    header: VdiHeader,
    bmap: Uint32Array,
    name: string,
    owned: boolean,
  ) {
    super();
    this.#source = source;
    this.header = header;
    this.#bmap = bmap;
    this.#name = name;
    this.#owned = owned;
    this.#holes = new SourceHoles(source);
  }

  /**
   * Reads the header and the part of the block map the disk uses, which
   * must lie in the file (so that what is allocated is bounded by the
   * file's size).
   *
   * @param source The image file.
   * @param name What to call it.
   * @param owned Whether closing the image closes the source.
   * @returns The image.
   * @throws {Qcow2Error} When the header is invalid or unsupported, or the
   * file is too short for it or its block map.
   */
  static async open(
    source: RandomAccessSource,
    name: string,
    owned: boolean,
  ): Promise<VdiImage> {
    const header = parseVdiHeader(
      await readExact(source, 0, VDI_HEADER_SIZE, "VDI header"),
    );
    const used = Math.ceil(header.diskSize / header.blockSize);
    const bytes = used * 4;
    if (header.offsetBmap + bytes > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open VDI image: the block map at ${
          hex(header.offsetBmap)
        } with ${used} entries ends past the end of the file (${source.size} bytes)`,
        { offset: header.offsetBmap, field: "offset_bmap" },
      );
    }
    const raw = bytes > 0
      ? await readExact(source, header.offsetBmap, bytes, "VDI block map")
      : new Uint8Array(0);
    const view = viewOf(raw);
    const bmap = new Uint32Array(used);
    for (let i = 0; i < used; i++) bmap[i] = view.getUint32(i * 4, true);
    return new VdiImage(source, header, bmap, name, owned);
  }

  /** Virtual size: `disk_size` rounded up to whole sectors. */
  get virtualSize(): number {
    return this.header.diskSize;
  }

  /** The image's name. */
  get name(): string {
    return this.#name;
  }

  /**
   * The one source a VDI image reads.
   *
   * @returns `[source]`.
   */
  sources(): RandomAccessSource[] {
    return [this.#source];
  }

  /**
   * The one guest → host lookup: runs of `[offset, offset + length)` in
   * order, with host offsets where blocks are allocated (consecutive
   * blocks merged when their data is contiguous in the file).
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @returns The runs.
   */
  *runs(offset: number, length: number): Generator<VdiRun> {
    const bs = this.header.blockSize;
    const end = offset + length;
    let run: VdiRun | undefined;
    for (let pos = offset; pos < end;) {
      const block = Math.floor(pos / bs);
      const within = pos - block * bs;
      const n = Math.min(bs - within, end - pos);
      const entry = this.#bmap[block];
      const host = isAllocated(entry)
        ? this.header.offsetData + entry * bs + within
        : undefined;
      if (
        run &&
        (host === undefined
          ? run.hostOffset === undefined
          : run.hostOffset !== undefined &&
            run.hostOffset + run.length === host)
      ) {
        run.length += n;
      } else {
        if (run) yield run;
        run = host === undefined
          ? { offset: pos, length: n }
          : { offset: pos, length: n, hostOffset: host };
      }
      pos += n;
    }
    if (run) yield run;
  }

  /**
   * Plans a read: allocated blocks as data, which must lie in the file;
   * unallocated and discarded blocks as zeros.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth in a backing chain.
   * @returns The plan.
   */
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    for (const r of this.runs(offset, length)) {
      if (r.hostOffset === undefined) {
        yield { offset: r.offset, length: r.length, kind: "zero", depth };
        continue;
      }
      const size = this.#source.size;
      if (r.hostOffset + r.length > size) {
        // The first guest byte of the run whose host byte is past the end.
        const inFile = Math.max(0, size - r.hostOffset);
        const guest = r.offset + inFile;
        const block = Math.floor(guest / this.header.blockSize);
        throw new Qcow2Error(
          "TRUNCATED",
          `Cannot read VDI image: block ${block} (guest offset ${
            hex(guest)
          }) maps to host offset ${
            hex(r.hostOffset + inFile)
          }, past the end of the file (${size} bytes)`,
          { offset: r.hostOffset + inFile },
        );
      }
      yield {
        offset: r.offset,
        length: r.length,
        kind: "data",
        depth,
        hostOffset: r.hostOffset,
        file: this.#source.name,
        source: this.#source,
      };
    }
  }

  /**
   * The image's own block status, as QEMU 7.2's `vdi_co_block_status()`
   * reports it: unallocated blocks read as zeros (and are the image's own
   * answer), allocated blocks are data at a host offset; a static image's
   * blocks are split by the holes of the file, as QEMU asks the file there.
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
    const recurse = options.holes &&
      this.header.imageType === VDI_TYPE_STATIC;
    const file = this.#name;
    for (const r of this.runs(offset, length)) {
      if (r.hostOffset === undefined) {
        yield {
          offset: r.offset,
          length: r.length,
          allocated: true,
          zero: true,
          data: false,
        };
        continue;
      }
      if (!recurse) {
        yield {
          offset: r.offset,
          length: r.length,
          allocated: true,
          zero: false,
          data: true,
          hostOffset: r.hostOffset,
          file,
        };
        continue;
      }
      yield* this.#splitByHoles(r, file);
    }
  }

  /** A run of allocated blocks split by the holes of the file. */
  *#splitByHoles(r: VdiRun, file: string): Generator<BlockStatus> {
    const size = rawVirtualSize(this.#source.size);
    const probe = this.#holes.probe;
    let done = 0;
    while (done < r.length) {
      const host = r.hostOffset! + done;
      const st = fileStatus(probe, size, host, r.length - done);
      let n = r.length - done;
      let zero = true;
      if (!(st.eof && (st.length === 0 || st.zero))) {
        n = st.length;
        zero = st.zero;
      }
      yield {
        offset: r.offset + done,
        length: n,
        allocated: true,
        zero,
        data: true,
        hostOffset: host,
        file,
      };
      done += n;
    }
  }

  /**
   * What `info` says of a VDI image: its size and block size.
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    return Promise.resolve({
      virtualSize: this.virtualSize,
      dirty: false,
      clusterSize: this.header.blockSize,
      snapshots: [],
    });
  }

  /**
   * QEMU's check of the block map (see {@linkcode checkVdi}).
   *
   * @returns What it found.
   */
  check(): Promise<FormatCheck> {
    return checkVdi(this.#source, this.header);
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

  /** Same as {@linkcode VdiImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
