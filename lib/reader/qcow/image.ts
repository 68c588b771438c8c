/**
 * A qcow (version 1) image as the guest sees it: the header, the L1 table,
 * a bounded L2 cache, and one guest → host lookup
 * ({@linkcode QcowImage.mappings}) that reads and block status are built
 * on.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { LruCache } from "../../io/lru.ts";
import { viewOf } from "../../bytes/binary.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import type { OpenPurpose } from "../image_type.ts";
import { readPadded } from "../read.ts";
import { checkRange, readExact } from "../_bounds.ts";
import { planBacking, PlannedImage } from "../_read.ts";
import { decodeQcowL2Entry, type QcowHeader } from "./header.ts";

const SECTOR = 512;

/** A run of guest bytes the tables map one way. */
export interface QcowMapping {
  /** Guest offset. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** How it reads: not here, a stored cluster, or a compressed cluster. */
  type: "unallocated" | "normal" | "compressed";
  /** `normal`: host offset of `offset`; `compressed`: of the compressed bytes. */
  hostOffset?: number;
  /** `compressed`: bytes of the compressed stream. */
  compressedSize?: number;
}

/** What a {@linkcode QcowImage} is built from. */
export interface QcowImageInit {
  source: RandomAccessSource;
  header: QcowHeader;
  purpose: OpenPurpose;
  name: string;
  ownsSource: boolean;
  /** The backing file name as stored ("" or undefined: none). */
  backingFile: string | undefined;
  /** The backing image, opened. */
  backing: GuestImage | undefined;
  /** L2 cache budget in bytes. */
  cacheBytes: number;
}

/**
 * An opened qcow (version 1) image. Open it with `openImage`.
 */
export class QcowImage extends PlannedImage implements GuestImage {
  /** Always `qcow`. */
  readonly format = "qcow" as const;
  /** The parsed header. */
  readonly header: QcowHeader;
  /** The backing image, if any. */
  readonly backing: GuestImage | undefined;
  readonly #source: RandomAccessSource;
  readonly #name: string;
  readonly #purpose: OpenPurpose;
  readonly #owns: boolean;
  readonly #backingFile: string | undefined;
  readonly #clusterSize: number;
  readonly #l2Bytes: number;
  #l1: Promise<Uint8Array> | undefined;
  readonly #cache: LruCache<number, Promise<Uint8Array>>;

  private constructor(init: QcowImageInit, l1: Uint8Array | undefined) {
    super();
    this.header = init.header;
    this.backing = init.backing;
    this.#source = init.source;
    this.#name = init.name;
    this.#purpose = init.purpose;
    this.#owns = init.ownsSource;
    this.#backingFile = init.backingFile;
    this.#clusterSize = 2 ** init.header.clusterBits;
    this.#l2Bytes = 8 * 2 ** init.header.l2Bits;
    this.#l1 = l1 && Promise.resolve(l1);
    this.#cache = new LruCache(init.cacheBytes);
  }

  /**
   * Builds the image; to read it, loads its L1 table, which must lie in
   * the file. An inspected image reads it on first use, zero-filled past
   * the end of the file as QEMU reads it.
   *
   * @param init Source, header, backing.
   * @returns The image.
   * @throws {Qcow2Error} When the L1 table runs past the end of the file
   * (reading only).
   */
  static async create(init: QcowImageInit): Promise<QcowImage> {
    if (init.purpose !== "read") return new QcowImage(init, undefined);
    const { header, source } = init;
    const bytes = header.l1Size * 8;
    if (header.l1TableOffset + bytes > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open qcow image: the L1 table at ${
          hex(header.l1TableOffset)
        } with ${header.l1Size} entries ends past the end of the file (${source.size} bytes)`,
        { offset: header.l1TableOffset, field: "l1_table_offset" },
      );
    }
    const l1 = await readExact(source, header.l1TableOffset, bytes, "L1 table");
    return new QcowImage(init, l1);
  }

  /** Virtual size: the header's size rounded down to whole sectors. */
  get virtualSize(): number {
    return this.header.virtualSize;
  }

  /** The image's name. */
  get name(): string {
    return this.#name;
  }

  /**
   * The image file, then its backing chain's sources.
   *
   * @returns The sources.
   */
  sources(): RandomAccessSource[] {
    return [this.#source, ...this.backing?.sources() ?? []];
  }

  #l1Table(): Promise<Uint8Array> {
    this.#l1 ??= readPadded(
      this.#source,
      this.header.l1TableOffset,
      this.header.l1Size * 8,
    );
    return this.#l1;
  }

  async #l2Table(l1Index: number, l2Offset: number): Promise<Uint8Array> {
    let table = this.#cache.get(l2Offset);
    if (!table) {
      table = this.#loadL2(l1Index, l2Offset);
      this.#cache.set(l2Offset, table, this.#l2Bytes);
      table.catch(() => {});
    }
    return await table;
  }

  /** Reads an L2 table: whole to read the image, zero-filled past the end to inspect it. */
  async #loadL2(l1Index: number, l2Offset: number): Promise<Uint8Array> {
    if (this.#purpose !== "read") {
      return await readPadded(this.#source, l2Offset, this.#l2Bytes);
    }
    const where = `L2 table at ${hex(l2Offset)} (L1 entry ${l1Index})`;
    if (l2Offset + this.#l2Bytes > this.#source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow image: ${where} ends past the end of the file (${this.#source.size} bytes)`,
        { offset: this.header.l1TableOffset + l1Index * 8 },
      );
    }
    return await readExact(this.#source, l2Offset, this.#l2Bytes, where);
  }

  /**
   * The one guest → host lookup: the runs of `[offset, offset + length)`
   * in order, merged while they read alike (unallocated; stored clusters
   * contiguous in the file); each compressed cluster is a run of its own.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @returns The runs.
   */
  async *mappings(
    offset: number,
    length: number,
  ): AsyncGenerator<QcowMapping> {
    const cb = this.header.clusterBits;
    const cs = this.#clusterSize;
    const span = cs * 2 ** this.header.l2Bits;
    const end = offset + length;
    const l1 = viewOf(await this.#l1Table());
    let run: QcowMapping | undefined;
    /** Adds `next` to the run, or starts a new one: returns the run ended. */
    const add = (next: QcowMapping): QcowMapping | undefined => {
      if (
        run && run.type === next.type && next.type !== "compressed" &&
        (next.type === "unallocated" ||
          run.hostOffset! + run.length === next.hostOffset)
      ) {
        run.length += next.length;
        return undefined;
      }
      const ended = run;
      run = next;
      return ended;
    };
    for (let pos = offset; pos < end;) {
      const l1Index = Math.floor(pos / span);
      const spanEnd = Math.min(end, (l1Index + 1) * span);
      const l2Offset = l1.getUint32(l1Index * 8) * 2 ** 32 +
        l1.getUint32(l1Index * 8 + 4);
      if (l2Offset === 0) {
        const ended = add({
          offset: pos,
          length: spanEnd - pos,
          type: "unallocated",
        });
        if (ended) yield ended;
        pos = spanEnd;
        continue;
      }
      if (!Number.isSafeInteger(l2Offset)) {
        throw new Qcow2Error(
          "OUT_OF_RANGE",
          `Cannot read qcow image: L1 entry ${l1Index} holds L2 table offset ${
            hex(BigInt(l1.getBigUint64(l1Index * 8)))
          }, past 2^53`,
          { offset: this.header.l1TableOffset + l1Index * 8 },
        );
      }
      const l2 = viewOf(await this.#l2Table(l1Index, l2Offset));
      while (pos < spanEnd) {
        const within = pos % cs;
        const n = Math.min(cs - within, spanEnd - pos);
        const i = Math.floor((pos % span) / cs);
        const e = decodeQcowL2Entry(
          l2.getUint32(i * 8),
          l2.getUint32(i * 8 + 4),
          cb,
        );
        let next: QcowMapping;
        if (e.type === "unallocated") {
          next = { offset: pos, length: n, type: "unallocated" };
        } else if (!Number.isSafeInteger(e.hostOffset)) {
          throw new Qcow2Error(
            "OUT_OF_RANGE",
            `Cannot read qcow image: the L2 entry of guest offset ${
              hex(pos - within)
            } holds a host offset past 2^53`,
            { offset: l2Offset + i * 8 },
          );
        } else if (e.type === "normal") {
          next = {
            offset: pos,
            length: n,
            type: "normal",
            hostOffset: e.hostOffset + within,
          };
        } else {
          next = {
            offset: pos,
            length: n,
            type: "compressed",
            hostOffset: e.hostOffset,
            compressedSize: e.size,
          };
        }
        const ended = add(next);
        if (ended) yield ended;
        pos += n;
      }
    }
    if (run) yield run;
  }

  /**
   * Plans reading a range: stored and compressed clusters of this image,
   * and the backing chain (or zeros) where it allocates nothing.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth of this image in the chain.
   * @returns Plan items.
   */
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    for await (const m of this.mappings(offset, length)) {
      if (m.type === "normal") yield this.#dataItem(m, depth);
      else if (m.type === "compressed") yield this.#compressedItem(m, depth);
      else if (this.backing) {
        yield* planBacking(this.backing, m.offset, m.length, depth + 1);
      } else {
        yield {
          offset: m.offset,
          length: m.length,
          kind: "unallocated",
          depth,
        };
      }
    }
  }

  /** A run of stored clusters, which must be sector-aligned and in the file. */
  #dataItem(m: QcowMapping, depth: number): PlanItem {
    const cs = this.#clusterSize;
    const host = m.hostOffset!;
    const clusterHost = host - (m.offset % cs);
    if (clusterHost % SECTOR !== 0) {
      throw new Qcow2Error(
        "UNALIGNED",
        `Cannot read qcow image: guest offset ${
          hex(m.offset - (m.offset % cs))
        } maps to host offset ${
          hex(clusterHost)
        }, which is not a multiple of ${SECTOR}`,
        { offset: clusterHost },
      );
    }
    if (
      !Number.isSafeInteger(host + m.length) ||
      host + m.length > this.#source.size
    ) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow image: guest offset ${
          hex(m.offset)
        } maps to host offset ${
          hex(host)
        }, and ${m.length} bytes from there run past the end of the file (${this.#source.size} bytes)`,
        { offset: Number.isSafeInteger(host) ? host : undefined },
      );
    }
    return {
      offset: m.offset,
      length: m.length,
      kind: "data",
      depth,
      hostOffset: host,
      source: this.#source,
      file: this.#source.name,
    };
  }

  /** A compressed cluster (or part of it), which must lie in the file. */
  #compressedItem(m: QcowMapping, depth: number): PlanItem {
    const cs = this.#clusterSize;
    const clusterOffset = m.offset - (m.offset % cs);
    const host = m.hostOffset!;
    const size = m.compressedSize!;
    const where = `compressed cluster for guest offset ${
      hex(clusterOffset)
    } at host offset ${hex(host)} (${size} bytes)`;
    if (size === 0) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read qcow image: ${where} is empty`,
        { offset: host },
      );
    }
    if (!Number.isSafeInteger(host + size) || host + size > this.#source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow image: ${where} runs past the end of the file (${this.#source.size} bytes)`,
        { offset: Number.isSafeInteger(host) ? host : undefined },
      );
    }
    return {
      offset: m.offset,
      length: m.length,
      kind: "compressed",
      depth,
      hostOffset: host,
      file: this.#source.name,
      source: this.#source,
      compressed: {
        // The sectors the stream touches; the deflate stream ends itself.
        descriptor: {
          hostOffset: host,
          sectors: Math.ceil(((host % SECTOR) + size) / SECTOR),
        },
        clusterOffset,
        clusterSize: cs,
        type: "zlib",
      },
    };
  }

  /**
   * This image's own block status, as QEMU 7.2's `qcow_co_block_status()`
   * reports it: stored clusters are data at a host offset, compressed
   * clusters data without one, and unallocated clusters are left to the
   * backing image (or zeros).
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param _options Unused: QEMU does not ask the file here.
   * @returns The runs, in order.
   */
  async *blockStatus(
    offset: number,
    length: number,
    _options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    for await (const m of this.mappings(offset, length)) {
      const run = { offset: m.offset, length: m.length };
      if (m.type === "normal") {
        yield {
          ...run,
          allocated: true,
          zero: false,
          data: true,
          hostOffset: m.hostOffset,
          file: this.#name,
        };
      } else if (m.type === "compressed") {
        yield {
          ...run,
          allocated: true,
          zero: false,
          data: true,
          compressed: true,
        };
      } else {
        yield { ...run, allocated: false, zero: false, data: false };
      }
    }
  }

  /**
   * What `info` says of the image: size, cluster size, backing file.
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    const d: ImageDescription = {
      virtualSize: this.virtualSize,
      dirty: false,
      clusterSize: this.#clusterSize,
      snapshots: [],
    };
    if (this.#backingFile) d.backingFile = this.#backingFile;
    return Promise.resolve(d);
  }

  /**
   * Closes the backing chain, and the image file when the image opened it.
   *
   * @returns When everything is closed.
   */
  async close(): Promise<void> {
    if (this.#owns) await this.#source.close?.();
    await this.backing?.close();
  }

  /** Same as {@linkcode QcowImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
