/**
 * A qcow2 image opened for reading: header, active (or snapshot) L1 table,
 * a bounded L2 table cache, and the mapping of guest ranges to extents.
 *
 * @module
 */

import { hex, Qcow2Error } from "../format/errors.ts";
import type { Qcow2Header } from "../format/header.ts";
import {
  type Geometry,
  geometryOf,
  qcow2VirtualSize,
} from "../format/geometry.ts";
import { decodeL1Entry } from "../format/l1.ts";
import {
  decodeL2Entry,
  type L2Entry,
  type L2Layout,
  subclusterType,
} from "../format/l2.ts";
import { compressedRange } from "../format/compressed.ts";
import { COMPRESSION_TYPE, MAX_L1_BYTES } from "../format/constants.ts";
import type { SnapshotEntry } from "../format/snapshot.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { LruCache } from "../io/lru.ts";
import type { CompressionType } from "../codec/codecs.ts";
import type { Extent, GuestImage, PlanItem } from "./image.ts";
import { extentsOf, readThroughPlan } from "./_read.ts";

/** What a {@linkcode Qcow2Image} is built from; see `openImage`. */
export interface Qcow2ImageInit {
  /** The image file. */
  source: RandomAccessSource;
  /** Its parsed, validated header. */
  header: Qcow2Header;
  /** The backing image, opened. */
  backing: GuestImage | undefined;
  /** The external data file, opened. */
  dataFile: RandomAccessSource | undefined;
  /** The snapshot to read instead of the active state. */
  snapshot: SnapshotEntry | undefined;
  /** All snapshots of the image. */
  snapshots: SnapshotEntry[];
  /** L2 cache budget in bytes. */
  cacheBytes: number;
  /**
   * Whether closing the image closes `source` (only when its opener opened
   * it; a caller's source is left open). The data file and backing image
   * are always closed.
   */
  ownsSource?: boolean;
}

/**
 * A qcow2 image as the guest sees it (the active state, or one internal
 * snapshot). Open it with `openImage`.
 *
 * @example Open an image written by the forward pipeline
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { BytesSource } from "../io/source.ts";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * const qcow2 = await convertToBytes(new Uint8Array(100_000).fill(9));
 * await using image = await openImage(new BytesSource(qcow2));
 * assert.strictEqual(image.format, "qcow2");
 * assert.strictEqual((await image.readAt(99_999, 1))[0], 9);
 * ```
 */
export class Qcow2Image implements GuestImage {
  /** Always `qcow2`. */
  readonly format = "qcow2" as const;
  /** The parsed header. */
  readonly header: Qcow2Header;
  /** Table geometry. */
  readonly geometry: Geometry;
  /** Virtual size (of the snapshot, when one is selected). */
  readonly virtualSize: number;
  /** The backing image. */
  readonly backing: GuestImage | undefined;
  /** Internal snapshots. */
  readonly snapshots: SnapshotEntry[];
  /** The selected snapshot, if any. */
  readonly snapshot: SnapshotEntry | undefined;
  /** Compression type of compressed clusters. */
  readonly compressionType: CompressionType;
  readonly #source: RandomAccessSource;
  readonly #ownsSource: boolean;
  readonly #dataFile: RandomAccessSource | undefined;
  readonly #l1: Uint8Array;
  readonly #l1Offset: number;
  readonly #layout: L2Layout;
  readonly #cache: LruCache<number, Promise<Uint8Array>>;

  private constructor(init: Qcow2ImageInit, l1: Uint8Array, l1Offset: number) {
    this.header = init.header;
    this.geometry = geometryOf(init.header);
    this.virtualSize = qcow2VirtualSize(
      init.snapshot?.diskSize ?? init.header.size,
    );
    this.backing = init.backing;
    this.snapshots = init.snapshots;
    this.snapshot = init.snapshot;
    this.compressionType = init.header.compressionType === COMPRESSION_TYPE.ZSTD
      ? "zstd"
      : "zlib";
    this.#source = init.source;
    this.#ownsSource = init.ownsSource ?? false;
    this.#dataFile = init.dataFile;
    this.#l1 = l1;
    this.#l1Offset = l1Offset;
    this.#layout = {
      clusterBits: this.geometry.clusterBits,
      extendedL2: this.geometry.extendedL2,
      dataFile: this.geometry.dataFile,
    };
    this.#cache = new LruCache(init.cacheBytes);
  }

  /**
   * Loads the L1 table and builds the image. Used by `openImage`.
   *
   * @param init Source, header, backing and snapshot.
   * @returns The image.
   * @throws {Qcow2Error} When the L1 table lies outside the file.
   */
  static async create(init: Qcow2ImageInit): Promise<Qcow2Image> {
    const { header, source, snapshot } = init;
    const l1Size = snapshot ? snapshot.l1Size : header.l1Size;
    const l1Offset = snapshot ? snapshot.l1TableOffset : header.l1TableOffset;
    const what = snapshot ? `snapshot "${snapshot.name}" L1 table` : "L1 table";
    const clusterSize = 2 ** header.clusterBits;
    if (l1Size * 8 > MAX_L1_BYTES) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot open image: ${what} size ${l1Size} is out of range [0, ${
          MAX_L1_BYTES / 8
        }]`,
        { field: "l1_size" },
      );
    }
    if (l1Size > 0 && l1Offset % clusterSize !== 0) {
      throw new Qcow2Error(
        "UNALIGNED",
        `Cannot open image: ${what} offset ${
          hex(l1Offset)
        } is not aligned to the cluster size ${clusterSize}`,
        { offset: l1Offset, field: "l1_table_offset" },
      );
    }
    if (l1Size > 0 && l1Offset + l1Size * 8 > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open image: ${what} at ${
          hex(l1Offset)
        } with ${l1Size} entries ends past the end of the file (${source.size} bytes)`,
        { offset: l1Offset, field: "l1_table_offset" },
      );
    }
    const l1 = l1Size > 0
      ? await readExact(source, l1Offset, l1Size * 8, what)
      : new Uint8Array(0);
    const image = new Qcow2Image(init, l1, l1Offset);
    const declared = snapshot?.diskSize ?? header.size;
    const needed = Math.ceil(
      declared / (clusterSize * image.geometry.l2Entries),
    );
    if (l1Size < needed) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot open image: ${what} has ${l1Size} entries, too few for virtual size ${declared} (needs ${needed})`,
        { field: "l1_size" },
      );
    }
    return image;
  }

  /** Name of the image file. */
  get name(): string {
    return this.#source.name ?? "<qcow2>";
  }

  /** The image file. */
  get source(): RandomAccessSource {
    return this.#source;
  }

  /** The external data file, when the image has one. */
  get dataFile(): RandomAccessSource | undefined {
    return this.#dataFile;
  }

  /**
   * The image file, its data file, then the backing chain's sources.
   *
   * @returns The sources this image reads.
   */
  sources(): RandomAccessSource[] {
    return [
      this.#source,
      ...this.#dataFile ? [this.#dataFile] : [],
      ...this.backing?.sources() ?? [],
    ];
  }

  /** The L1 table in use (the active one, or the snapshot's). */
  get l1Table(): Uint8Array {
    return this.#l1;
  }

  /**
   * Reads guest bytes.
   *
   * @param offset Guest offset.
   * @param length Bytes wanted.
   * @returns The bytes.
   * @throws {RangeError} When the range leaves the virtual disk.
   * @throws {Qcow2Error} When the image is corrupt.
   */
  readAt(offset: number, length: number): Promise<Uint8Array> {
    return readThroughPlan(this, offset, length);
  }

  /**
   * Lists extents in order, following the backing chain for unallocated
   * ranges.
   *
   * @param offset Guest offset to start at.
   * @param length Bytes to cover.
   * @returns The extents.
   */
  extents(offset = 0, length?: number): AsyncGenerator<Extent> {
    return extentsOf(this, offset, length);
  }

  async #l2Table(l1Index: number, l2Offset: number): Promise<Uint8Array> {
    let table = this.#cache.get(l2Offset);
    if (!table) {
      table = this.#loadL2(l1Index, l2Offset);
      this.#cache.set(l2Offset, table, this.geometry.clusterSize);
      table.catch(() => {});
    }
    return await table;
  }

  async #loadL2(l1Index: number, l2Offset: number): Promise<Uint8Array> {
    const cs = this.geometry.clusterSize;
    const where = `L2 table at ${hex(l2Offset)} (L1 entry ${l1Index})`;
    if (l2Offset % cs !== 0) {
      throw new Qcow2Error(
        "UNALIGNED",
        `Cannot read image: ${where} is not aligned to the cluster size ${cs}`,
        {
          offset: this.#l1Offset + l1Index * 8,
        },
      );
    }
    if (l2Offset + cs > this.#source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read image: ${where} ends past the end of the file (${this.#source.size} bytes)`,
        { offset: this.#l1Offset + l1Index * 8 },
      );
    }
    const l1Bytes = this.#l1.length;
    if (l2Offset < this.#l1Offset + l1Bytes && this.#l1Offset < l2Offset + cs) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: ${where} overlaps the L1 table at ${
          hex(this.#l1Offset)
        }`,
        {
          offset: this.#l1Offset + l1Index * 8,
        },
      );
    }
    const rt = this.header.refcountTableOffset;
    const rtBytes = this.header.refcountTableClusters * cs;
    if (l2Offset < rt + rtBytes && rt < l2Offset + cs) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: ${where} overlaps the refcount table at ${hex(rt)}`,
        {
          offset: this.#l1Offset + l1Index * 8,
        },
      );
    }
    return await readExact(this.#source, l2Offset, cs, where);
  }

  /**
   * Plans reading `[offset, offset + length)`: one item per run of guest
   * bytes that read the same way, in order, descending into the backing
   * chain for unallocated runs.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth of this image in the chain.
   * @returns Plan items.
   */
  async *plan(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    const { clusterSize: cs, subclusterSize: scs, l2Entries, extendedL2 } =
      this.geometry;
    const end = offset + length;
    let table: Uint8Array | undefined;
    let tableIndex = -1;
    let entry: L2Entry | undefined;
    let entryCluster = -1;
    // The pending run of own-layer items, merged while they read alike.
    let run: PlanItem | undefined;
    for (let pos = offset; pos < end;) {
      const c = Math.floor(pos / cs);
      const l1Index = Math.floor(c / l2Entries);
      if (l1Index !== tableIndex) {
        table = await this.#l2For(l1Index);
        tableIndex = l1Index;
      }
      let item: PlanItem;
      if (!table) {
        const tableEnd = Math.min(end, (l1Index + 1) * l2Entries * cs);
        item = {
          offset: pos,
          length: tableEnd - pos,
          kind: "unallocated",
          depth,
        };
      } else {
        const clusterStart = c * cs;
        if (c !== entryCluster) {
          entry = decodeL2Entry(table, c % l2Entries, this.#layout);
          entryCluster = c;
          if (entry.type !== "compressed") {
            this.#checkHostCluster(entry, clusterStart);
          }
        }
        const clusterEnd = Math.min(end, clusterStart + cs);
        if (entry!.type === "compressed") {
          item = this.#compressedItem(entry!, pos, clusterStart, depth);
          item.length = clusterEnd - pos;
        } else {
          // One subcluster (the whole cluster without extended L2).
          const sc = extendedL2 ? Math.floor((pos - clusterStart) / scs) : 0;
          const scEnd = extendedL2
            ? Math.min(clusterEnd, clusterStart + (sc + 1) * scs)
            : clusterEnd;
          item = this.#subclusterItem(entry!, sc, pos, clusterStart, depth);
          item.length = scEnd - pos;
        }
      }
      pos += item.length;
      if (run && canExtend(run, item)) {
        run.length += item.length;
        continue;
      }
      if (run?.kind === "unallocated" && this.backing) {
        yield* this.#planBacking(run, depth);
      } else if (run) yield run;
      run = item;
    }
    if (run?.kind === "unallocated" && this.backing) {
      yield* this.#planBacking(run, depth);
    } else if (run) yield run;
  }

  /** The L2 table of L1 entry `l1Index`, or undefined where there is none. */
  async #l2For(l1Index: number): Promise<Uint8Array | undefined> {
    if (l1Index >= this.#l1.length / 8) return undefined;
    const { l2Offset } = decodeL1Entry(this.#l1, l1Index);
    return l2Offset === 0 ? undefined : await this.#l2Table(l1Index, l2Offset);
  }

  /** An unallocated run as the backing chain reads it. */
  #planBacking(run: PlanItem, depth: number): AsyncGenerator<PlanItem> {
    return planBacking(this.backing!, run.offset, run.length, depth + 1);
  }

  /** The item of a compressed cluster from `pos` (length set by the caller). */
  #compressedItem(
    entry: L2Entry,
    pos: number,
    clusterStart: number,
    depth: number,
  ): PlanItem {
    if (this.geometry.dataFile) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: guest cluster ${
          hex(clusterStart)
        } is compressed, which an image with an external data file cannot be`,
        { offset: entry.hostOffset },
      );
    }
    const range = compressedRange(entry.compressed!);
    if (range.offset >= this.#source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read image: compressed cluster for guest offset ${
          hex(clusterStart)
        } starts at host offset ${
          hex(range.offset)
        }, past the end of the file (${this.#source.size} bytes)`,
        { offset: range.offset },
      );
    }
    return {
      offset: pos,
      length: 0,
      kind: "compressed",
      depth,
      hostOffset: entry.hostOffset,
      file: this.#source.name,
      source: this.#source,
      compressed: {
        descriptor: entry.compressed!,
        clusterOffset: clusterStart,
        clusterSize: this.geometry.clusterSize,
        type: this.compressionType,
      },
    };
  }

  /** Refuses a host cluster that is unaligned, past the file, or misplaced in a data file. */
  #checkHostCluster(entry: L2Entry, clusterStart: number): void {
    const cs = this.geometry.clusterSize;
    const where = `guest cluster ${hex(clusterStart)} maps to`;
    if (
      (entry.type === "normal" || entry.type === "zero-alloc") &&
      entry.hostOffset % cs !== 0
    ) {
      throw new Qcow2Error(
        "UNALIGNED",
        `Cannot read image: ${where} host offset ${
          hex(entry.hostOffset)
        }, which is not aligned to the cluster size ${cs}`,
        { offset: entry.hostOffset },
      );
    }
    if (entry.type !== "normal") return;
    if (
      this.#dataFile === undefined && entry.hostOffset >= this.#source.size
    ) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read image: ${where} host offset ${
          hex(entry.hostOffset)
        }, past the end of the file (${this.#source.size} bytes)`,
        { offset: entry.hostOffset },
      );
    }
    if (this.#dataFile !== undefined && entry.hostOffset !== clusterStart) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: ${where} data file offset ${
          hex(entry.hostOffset)
        }; an external data file requires the same offset`,
        { offset: entry.hostOffset },
      );
    }
  }

  /** The item of subcluster `sc` from `pos` (length set by the caller). */
  #subclusterItem(
    entry: L2Entry,
    sc: number,
    pos: number,
    clusterStart: number,
    depth: number,
  ): PlanItem {
    const type = subclusterType(entry, sc, this.geometry.extendedL2);
    if (type === "invalid") {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: guest cluster ${
          hex(clusterStart)
        } has an invalid subcluster bitmap (allocation ${
          hex(entry.allocMask >>> 0)
        }, zero ${hex(entry.zeroMask >>> 0)})`,
      );
    }
    if (type === "normal") {
      const source = this.#dataFile ?? this.#source;
      return {
        offset: pos,
        length: 0,
        kind: "data",
        depth,
        hostOffset: entry.hostOffset + (pos - clusterStart),
        source,
        file: source.name,
      };
    }
    const kind = type === "zero-plain" || type === "zero-alloc"
      ? "zero"
      : "unallocated";
    return { offset: pos, length: 0, kind, depth };
  }

  /**
   * Closes the data file and backing chain, and the image file when the
   * image opened it.
   *
   * @returns When everything is closed.
   */
  async close(): Promise<void> {
    if (this.#ownsSource) await this.#source.close?.();
    await this.#dataFile?.close?.();
    await this.backing?.close();
  }

  /** Same as {@linkcode Qcow2Image.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Whether `item` continues `run`: the same kind, and for data the next host
 * byte (a compressed cluster is always an item of its own).
 */
function canExtend(run: PlanItem, item: PlanItem): boolean {
  if (run.kind !== item.kind || item.kind === "compressed") return false;
  return item.kind !== "data" ||
    run.hostOffset! + run.length === item.hostOffset;
}

/** Plans a range of a backing image; beyond its end the guest reads zeros. */
async function* planBacking(
  backing: GuestImage,
  offset: number,
  length: number,
  depth: number,
): AsyncGenerator<PlanItem> {
  const inside = Math.max(0, Math.min(length, backing.virtualSize - offset));
  if (inside > 0) yield* backing.plan(offset, inside, depth);
  if (inside < length) {
    yield {
      offset: offset + inside,
      length: length - inside,
      kind: "unallocated",
      depth,
    };
  }
}

/** Throws a RangeError unless `[offset, offset + length)` is inside the disk. */
export function checkRange(offset: number, length: number, size: number): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) ||
    offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new RangeError(
      `Cannot read guest range: [${offset}, ${
        offset + length
      }) is outside the virtual disk [0, ${size})`,
    );
  }
}

/** Reads exactly `length` bytes or throws a TRUNCATED Qcow2Error naming `what`. */
export async function readExact(
  source: RandomAccessSource,
  offset: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await source.read(offset, length);
  } catch (err) {
    throw new Qcow2Error(
      "IO",
      `Cannot read ${what} at ${hex(offset)}: ${(err as Error).message}`,
      {
        offset,
        cause: err,
      },
    );
  }
  if (bytes.length < length) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read ${what}: ${length} bytes at ${
        hex(offset)
      } run past the end of the file (${source.size} bytes)`,
      { offset },
    );
  }
  return bytes;
}
