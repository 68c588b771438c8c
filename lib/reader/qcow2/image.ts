/**
 * A qcow2 image as the guest sees it: header, active (or snapshot) L1
 * table, a bounded L2 table cache, and the one guest → host lookup
 * ({@linkcode Qcow2Mapping}) that reads, block status and extents are built
 * on.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { Qcow2Header } from "../../format/header.ts";
import {
  type Geometry,
  geometryOf,
  qcow2VirtualSize,
} from "../../format/geometry.ts";
import { compressedRange } from "../../format/compressed.ts";
import {
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  MAX_L1_BYTES,
} from "../../format/constants.ts";
import type { SnapshotEntry } from "../../format/snapshot.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { LruCache } from "../../io/lru.ts";
import type { CompressionType } from "../../codec/codecs.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  GuestImage,
  ImageDescription,
  PlanItem,
} from "../image.ts";
import type { OpenedDataFile, OpenPurpose } from "../image_type.ts";
import { readPadded } from "../read.ts";
import { planBacking, PlannedImage, unreadable } from "../_read.ts";
import { checkRange, readExact } from "../_bounds.ts";
import { type Mapping, Qcow2Mapping } from "./mapping.ts";
import { Qcow2Status } from "./status.ts";
import { describeQcow2 } from "./info.ts";

/** Evicted L2 table buffers kept to be read into again. */
const SPARE_TABLES = 4;

/** How qemu-img starts its message for a snapshot's unusable L1 table. */
const SNAPSHOT_LOAD = "Failed to load snapshot: Snapshot L1 ";

/** What a {@linkcode Qcow2Image} is built from; see `openImage`. */
export interface Qcow2ImageInit {
  /** The image file. */
  source: RandomAccessSource;
  /** Its parsed, validated header. */
  header: Qcow2Header;
  /**
   * What it is opened for: a read checks its tables against the file at
   * open and as they are loaded; an inspection reads them as QEMU does.
   * @default {"read"}
   */
  purpose?: OpenPurpose;
  /** What to call it (default: the source's name). */
  name?: string;
  /** The backing image, opened. */
  backing: GuestImage | undefined;
  /** The external data file, followed. */
  dataFile: OpenedDataFile | undefined;
  /** The snapshot to read instead of the active state. */
  snapshot: SnapshotEntry | undefined;
  /** All snapshots of the image (undefined: not read, the image is inspected). */
  snapshots: SnapshotEntry[] | undefined;
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
 * import { openImage } from "../open.ts";
 * import { BytesSource } from "../../io/source.ts";
 * import { convertToBytes } from "../../writer/qcow2_writer.ts";
 * const qcow2 = await convertToBytes(new Uint8Array(100_000).fill(9));
 * await using image = await openImage(new BytesSource(qcow2));
 * assert.strictEqual(image.format, "qcow2");
 * assert.strictEqual((await image.readAt(99_999, 1))[0], 9);
 * ```
 */
export class Qcow2Image extends PlannedImage implements GuestImage {
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
  /** The selected snapshot, if any. */
  readonly snapshot: SnapshotEntry | undefined;
  /** Compression type of compressed clusters. */
  readonly compressionType: CompressionType;
  /** Whether guest data is encrypted (only an inspected image may be). */
  readonly encrypted: boolean;
  /** The guest → host lookup over the tables in use. */
  readonly mapping: Qcow2Mapping;
  readonly #name: string;
  readonly #purpose: OpenPurpose;
  readonly #snapshots: SnapshotEntry[] | undefined;
  readonly #source: RandomAccessSource;
  readonly #ownsSource: boolean;
  readonly #dataFile: OpenedDataFile | undefined;
  #l1: Promise<Uint8Array> | undefined;
  readonly #l1Offset: number;
  readonly #l1Size: number;
  readonly #cache: LruCache<number, Promise<Uint8Array>>;
  /** L2 table buffers the cache let go of, to read the next tables into. */
  readonly #spare: Uint8Array[] = [];
  #status: Qcow2Status | undefined;

  private constructor(init: Qcow2ImageInit, l1?: Uint8Array) {
    super();
    const { header, snapshot } = init;
    this.header = header;
    this.geometry = geometryOf(header);
    this.virtualSize = qcow2VirtualSize(snapshot?.diskSize ?? header.size);
    this.backing = init.backing;
    this.#snapshots = init.snapshots;
    this.snapshot = snapshot;
    this.compressionType = header.compressionType === COMPRESSION_TYPE.ZSTD
      ? "zstd"
      : "zlib";
    this.encrypted = header.cryptMethod !== CRYPT_METHOD.NONE;
    this.#name = init.name ?? init.source.name ?? "<qcow2>";
    this.#purpose = init.purpose ?? "read";
    this.#source = init.source;
    this.#ownsSource = init.ownsSource ?? false;
    this.#dataFile = init.dataFile;
    this.#l1 = l1 && Promise.resolve(l1);
    this.#l1Offset = snapshot ? snapshot.l1TableOffset : header.l1TableOffset;
    this.#l1Size = snapshot ? snapshot.l1Size : header.l1Size;
    this.#cache = new LruCache(init.cacheBytes, (table) => {
      table.then((bytes) => {
        if (this.#spare.length < SPARE_TABLES) this.#spare.push(bytes);
      }, () => {});
    });
    this.mapping = new Qcow2Mapping(
      this.geometry,
      () => this.#l1Table(),
      (l1Index, l2Offset, into) => this.#l2Table(l1Index, l2Offset, into),
    );
  }

  /**
   * Builds the image; to read it, loads and checks its L1 table first.
   * Used by the qcow2 image type and the stream decoder.
   *
   * @param init Source, header, backing and snapshot.
   * @returns The image.
   * @throws {Qcow2Error} When the L1 table lies outside the file or is too
   * small for the virtual size (reading only).
   */
  static async create(init: Qcow2ImageInit): Promise<Qcow2Image> {
    if ((init.purpose ?? "read") !== "read") return new Qcow2Image(init);
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
        {
          field: "l1_size",
          qemu: snapshot && { failure: SNAPSHOT_LOAD + "table too large" },
        },
      );
    }
    if (l1Size > 0 && l1Offset % clusterSize !== 0) {
      throw new Qcow2Error(
        "UNALIGNED",
        `Cannot open image: ${what} offset ${
          hex(l1Offset)
        } is not aligned to the cluster size ${clusterSize}`,
        {
          offset: l1Offset,
          field: "l1_table_offset",
          qemu: snapshot && { failure: SNAPSHOT_LOAD + "table offset invalid" },
        },
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
    const image = new Qcow2Image(init, l1);
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

  /** Name of the image for messages and reports. */
  get name(): string {
    return this.#name;
  }

  /** The image file. */
  get source(): RandomAccessSource {
    return this.#source;
  }

  /** The external data file, when the image has one and it was opened. */
  get dataFile(): RandomAccessSource | undefined {
    return this.#dataFile?.source;
  }

  /** Internal snapshots (empty when the image was only inspected). */
  get snapshots(): SnapshotEntry[] {
    return this.#snapshots ?? [];
  }

  /**
   * The image file, its data file, then the backing chain's sources.
   *
   * @returns The sources this image reads.
   */
  sources(): RandomAccessSource[] {
    const data = this.#dataFile?.source;
    return [
      this.#source,
      ...data ? [data] : [],
      ...this.backing?.sources() ?? [],
    ];
  }

  /**
   * The L1 table in use (the active one, or the snapshot's); an inspected
   * image reads it on first use, zero-filled past the end of the file.
   *
   * @returns The table.
   */
  l1Table(): Promise<Uint8Array> {
    return this.#l1Table();
  }

  #l1Table(): Promise<Uint8Array> {
    this.#l1 ??= readPadded(this.#source, this.#l1Offset, this.#l1Size * 8);
    return this.#l1;
  }

  /**
   * The L2 table, copied into `into`: the cached buffers are the cache's
   * alone, so that an evicted one is read into again (a walk of a large
   * sparse image otherwise leaves a fresh table of garbage per L1 entry,
   * which the garbage collector lets pile up by tens of MiB). The copy is
   * made as soon as the table is there, before any other load can run and
   * reuse the buffer.
   */
  async #l2Table(
    l1Index: number,
    l2Offset: number,
    into?: Uint8Array,
  ): Promise<Uint8Array> {
    let table = this.#cache.get(l2Offset);
    if (!table) {
      const spare = this.#spare.pop();
      table = this.#purpose === "read"
        ? this.#loadL2(l1Index, l2Offset, spare)
        : readPadded(this.#source, l2Offset, this.geometry.clusterSize, spare);
      this.#cache.set(l2Offset, table, this.geometry.clusterSize);
      table.catch(() => {});
    }
    if (!into) return await table;
    into.set(await table);
    return into;
  }

  /** Reads an L2 table to read the image: whole, and apart from the L1 and refcount tables. */
  async #loadL2(
    l1Index: number,
    l2Offset: number,
    into?: Uint8Array,
  ): Promise<Uint8Array> {
    const cs = this.geometry.clusterSize;
    const where = `L2 table at ${hex(l2Offset)} (L1 entry ${l1Index})`;
    const at = { offset: this.#l1Offset + l1Index * 8 };
    if (l2Offset + cs > this.#source.size) {
      const span = cs * this.geometry.l2Entries;
      throw unreadable(
        new Qcow2Error(
          "TRUNCATED",
          `Cannot read image: ${where} ends past the end of the file (${this.#source.size} bytes)`,
          at,
        ),
        { offset: l1Index * span, length: span },
      );
    }
    const l1Bytes = this.#l1Size * 8;
    if (l2Offset < this.#l1Offset + l1Bytes && this.#l1Offset < l2Offset + cs) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: ${where} overlaps the L1 table at ${
          hex(this.#l1Offset)
        }`,
        at,
      );
    }
    const rt = this.header.refcountTableOffset;
    const rtBytes = this.header.refcountTableClusters * cs;
    if (l2Offset < rt + rtBytes && rt < l2Offset + cs) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read image: ${where} overlaps the refcount table at ${hex(rt)}`,
        at,
      );
    }
    return await readExact(this.#source, l2Offset, cs, where, into);
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
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    // The pending run of own-layer items, merged while they read alike.
    let run: PlanItem | undefined;
    for await (const mapping of this.mapping.mappings(offset, length)) {
      const item = this.#item(mapping, depth);
      if (run && canExtend(run, item)) {
        run.length += item.length;
        continue;
      }
      if (run?.kind === "unallocated" && this.backing) {
        yield* planBacking(this.backing, run.offset, run.length, depth + 1);
      } else if (run) yield run;
      run = item;
    }
    if (run?.kind === "unallocated" && this.backing) {
      yield* planBacking(this.backing, run.offset, run.length, depth + 1);
    } else if (run) yield run;
  }

  /** The plan item of a mapping: how to read it, refusing what cannot be. */
  #item(m: Mapping, depth: number): PlanItem {
    const { offset, length } = m;
    switch (m.type) {
      case "normal":
        return this.#dataItem(m, depth);
      case "compressed":
        return this.#compressedItem(m, depth);
      case "zero-plain":
      case "zero-alloc":
        return { offset, length, kind: "zero", depth };
      default:
        return { offset, length, kind: "unallocated", depth };
    }
  }

  /** A run of data, which must lie in the file (its data file may be shorter: zeros). */
  #dataItem(m: Mapping, depth: number): PlanItem {
    if (this.encrypted) throw encryptedError();
    const cs = this.geometry.clusterSize;
    const host = m.hostOffset!;
    // The first cluster of the run that starts past the end of the file.
    const size = this.#source.size;
    const firstHost = host - (host % cs);
    const lastHost = host + m.length - 1 - ((host + m.length - 1) % cs);
    if (this.#dataFile === undefined && lastHost >= size) {
      const past = Math.max(firstHost, size + ((cs - (size % cs)) % cs));
      const guest = m.offset - (host - firstHost) + (past - firstHost);
      throw unreadable(
        new Qcow2Error(
          "TRUNCATED",
          `Cannot read image: guest cluster ${hex(guest)} maps to host offset ${
            hex(past)
          }, past the end of the file (${size} bytes)`,
          { offset: past },
        ),
        { offset: guest, length: cs },
      );
    }
    const source = this.#dataFile?.source ?? this.#source;
    return {
      offset: m.offset,
      length: m.length,
      kind: "data",
      depth,
      hostOffset: host,
      source,
      file: source.name,
    };
  }

  /** A compressed cluster (or part of it), which must start inside the file. */
  #compressedItem(m: Mapping, depth: number): PlanItem {
    if (this.encrypted) throw encryptedError();
    const cs = this.geometry.clusterSize;
    const clusterStart = m.offset - (m.offset % cs);
    if (m.compressed === undefined) throw m.undecodable!;
    const range = compressedRange(m.compressed);
    if (range.offset >= this.#source.size) {
      throw unreadable(
        new Qcow2Error(
          "TRUNCATED",
          `Cannot read image: compressed cluster for guest offset ${
            hex(clusterStart)
          } starts at host offset ${
            hex(range.offset)
          }, past the end of the file (${this.#source.size} bytes)`,
          { offset: range.offset },
        ),
        { offset: clusterStart, length: cs },
      );
    }
    return {
      offset: m.offset,
      length: m.length,
      kind: "compressed",
      depth,
      hostOffset: m.compressed.hostOffset,
      file: this.#source.name,
      source: this.#source,
      compressed: {
        descriptor: m.compressed,
        clusterOffset: clusterStart,
        clusterSize: cs,
        type: this.compressionType,
      },
    };
  }

  /**
   * This image's own block status, as QEMU's qcow2 driver reports it.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param options Whether to ask the file system for holes.
   * @returns The runs, in order.
   */
  blockStatus(
    offset: number,
    length: number,
    options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    this.#status ??= new Qcow2Status({
      name: this.#name,
      source: this.#source,
      dataFile: this.#dataFile,
      geometry: this.geometry,
      header: this.header,
      encrypted: this.encrypted,
      mapping: this.mapping,
    });
    return this.#status.runs(offset, length, options);
  }

  /**
   * What `info` says of the image.
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    return describeQcow2(this.#source, this.header, this.#snapshots);
  }

  /**
   * Closes the data file and backing chain, and the image file when the
   * image opened it.
   *
   * @returns When everything is closed.
   */
  async close(): Promise<void> {
    this.#status?.close();
    if (this.#ownsSource) await this.#source.close?.();
    await this.#dataFile?.source?.close?.();
    await this.backing?.close();
  }

  /** Same as {@linkcode Qcow2Image.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** An encrypted image's data cannot be read (it is only inspected). */
function encryptedError(): Qcow2Error {
  return new Qcow2Error(
    "ENCRYPTED",
    "Cannot read image: the image is encrypted and encryption is not supported",
  );
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
