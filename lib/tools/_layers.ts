// The inspection tools' view of an image chain: the qcow2 header (read as
// QEMU inspects an image: encrypted images and images with the corrupt bit
// set still open), the active L1 table, the stored refcounts, and the
// backing chain. It is built from the reader's model: from an opened
// GuestImage (compare), or, for images the reader refuses to read, from
// the same header reader and reference rules (info, check, map).

import { hex, Qcow2Error } from "../format/errors.ts";
import type { Qcow2Header } from "../format/header.ts";
import {
  type Geometry,
  geometryOf,
  qcow2VirtualSize,
  rawVirtualSize,
} from "../format/geometry.ts";
import { getRefcount } from "../format/refcount.ts";
import { CRYPT_METHOD } from "../format/constants.ts";
import { BytesSource, type RandomAccessSource } from "../io/source.ts";
import { hostFiles, openHostFile } from "../io/_host_files.ts";
import { LruCache } from "../io/lru.ts";
import { fileReason } from "../io/_errors.ts";

import type { ImageInput, OpenSource } from "./input.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { detectFormat, readPadded } from "../reader/_read.ts";
import {
  backingReferrer,
  declaredBackingFormat,
  ReferenceGate,
  type ReferencePolicy,
  type Referrer,
  topReferrer,
} from "../reader/references.ts";
import { type ImageFormat, readHeader } from "../reader/open.ts";
import type { GuestImage } from "../reader/image.ts";
import { Qcow2Image } from "../reader/qcow2_image.ts";
import { RawImage } from "../reader/raw_image.ts";

export type { ImageInput, OpenSource };

/** Opens the input as a source (paths through the runtime's file access). */
export async function sourceOf(input: ImageInput): Promise<RandomAccessSource> {
  if (typeof input === "string") {
    try {
      return await openHostFile(input);
    } catch (err) {
      if (err instanceof TypeError) throw err; // no file access: it says so
      throw new Qcow2Error(
        "IO",
        `Cannot open image ${input}: ${fileReason(err)}`,
        { cause: err },
      );
    }
  }
  if (input instanceof Uint8Array) return new BytesSource(input);
  return input;
}

/**
 * Runs `use` on the input as a source and its name, closing the source
 * afterwards only if it was opened here (never a caller's source).
 */
export async function withSource<T>(
  input: ImageInput,
  use: (source: RandomAccessSource, name: string) => Promise<T>,
): Promise<T> {
  const source = await sourceOf(input);
  const name = typeof input === "string" ? input : source.name ?? "<image>";
  try {
    return await use(source, name);
  } finally {
    if (source !== input) await source.close?.();
  }
}

/** A raw image: its bytes are the guest disk. */
export interface RawLayer {
  format: "raw";
  name: string;
  source: RandomAccessSource;
  /** Whether closing the layer closes the source (false for a caller's). */
  owned: boolean;
  /** QEMU's size: the file size rounded up to 512 bytes. */
  virtualSize: number;
  backing: undefined;
}

/** A qcow2 image with what the tools need of it. */
export interface Qcow2Layer {
  format: "qcow2";
  name: string;
  source: RandomAccessSource;
  /** Whether closing the layer closes the source (false for a caller's). */
  owned: boolean;
  header: Qcow2Header;
  geometry: Geometry;
  virtualSize: number;
  /** The active L1 table (zero-filled past the end of the file). */
  l1: Uint8Array;
  /** Whether guest data is encrypted (host offsets are then not reported). */
  encrypted: boolean;
  /**
   * Name of the external data file, when there is one: as QEMU resolves
   * it, for reports.
   */
  dataFileName: string | undefined;
  /** What the data file's name led to (the real path, when checked). */
  dataFilePath: string | undefined;
  /** The backing image, when opened. */
  backing: Layer | undefined;
  /** Stored refcounts. */
  refcounts: StoredRefcounts;
}

/** One image of a chain. */
export type Layer = RawLayer | Qcow2Layer;

/** Options for {@linkcode openLayer}. */
export interface OpenLayerOptions {
  /** Open the backing chain too. */
  backing: boolean;
  /** Format of the top image; probed when absent or `auto`. */
  format?: ImageFormat;
  /** Which backing and data files may be followed. */
  references?: ReferencePolicy;
  /** Opens related files by name. */
  openSource?: OpenSource;
  /** How the default opener fetches URLs. */
  http?: HttpTransport;
  /** Longest chain accepted. */
  maxDepth?: number;
}

/** Opens an image and (optionally) its backing chain. */
export async function openLayer(
  input: ImageInput,
  options: OpenLayerOptions,
): Promise<Layer> {
  const source = await sourceOf(input);
  const owned = typeof input === "string" || input instanceof Uint8Array;
  try {
    const name = typeof input === "string" ? input : source.name ?? "<image>";
    const given = options.format !== undefined && options.format !== "auto";
    const gate = new ReferenceGate({
      policy: options.references,
      maxDepth: options.maxDepth,
      openSource: options.openSource,
      http: options.http,
    });
    await gate.start(name);
    const layer = await openFrom(
      source,
      topReferrer(source.url ?? name, given, undefined, name),
      options,
      gate,
      given ? options.format : undefined,
    );
    layer.owned = owned;
    return layer;
  } catch (err) {
    if (owned) await source.close?.();
    throw err;
  }
}

async function openFrom(
  source: RandomAccessSource,
  referrer: Referrer,
  options: OpenLayerOptions,
  gate: ReferenceGate,
  format?: string,
): Promise<Layer> {
  const name = referrer.name;
  const qcow2 = (format ?? await detectFormat(source)) === "qcow2";
  if (!qcow2) {
    return {
      format: "raw",
      name,
      source,
      owned: true,
      virtualSize: rawVirtualSize(source.size),
      backing: undefined,
    };
  }
  const header = await readHeader(source, { inspection: true });
  const geometry = geometryOf(header);
  const l1 = await readPadded(source, header.l1TableOffset, header.l1Size * 8);
  const refcounts = await StoredRefcounts.load(source, header);
  const layer: Qcow2Layer = {
    format: "qcow2",
    name,
    source,
    owned: true,
    header,
    geometry,
    virtualSize: qcow2VirtualSize(header.size),
    l1,
    encrypted: header.cryptMethod !== CRYPT_METHOD.NONE,
    dataFileName: undefined,
    dataFilePath: undefined,
    backing: undefined,
    refcounts,
  };
  for (const ext of header.extensions) {
    if (ext.kind === "data-file") {
      const ref = await gate.dataFile(referrer, ext.name);
      layer.dataFileName = ref.name;
      layer.dataFilePath = ref.path;
    }
  }
  if (options.backing && header.backingFile) {
    const declared = declaredBackingFormat(header, header.backingFile);
    const ref = await gate.backing(referrer, header.backingFile);
    const backingSource = await gate.open(ref);
    try {
      layer.backing = await openFrom(
        backingSource,
        backingReferrer(referrer, ref, declared, backingSource),
        options,
        gate,
        declared,
      );
    } catch (err) {
      await backingSource.close?.();
      throw err;
    }
  }
  return layer;
}

/** Closes a layer and its backing chain. */
export async function closeLayer(layer: Layer | undefined): Promise<void> {
  for (let l = layer; l; l = l.backing) {
    if (l.owned) await l.source.close?.();
  }
}

/**
 * The tools' view of an image the reader opened: the same source, header,
 * L1 table and backing chain, nothing opened again. Closing the layer
 * closes nothing (the image owns what it opened).
 */
export async function layerOf(image: GuestImage): Promise<Layer> {
  if (image instanceof RawImage) {
    return {
      format: "raw",
      name: image.name,
      source: image.source,
      owned: false,
      virtualSize: image.virtualSize,
      backing: undefined,
    };
  }
  if (!(image instanceof Qcow2Image)) {
    throw new TypeError(`Cannot inspect image ${image.name}: unknown kind`);
  }
  const { header, source } = image;
  return {
    format: "qcow2",
    name: image.name,
    source,
    owned: false,
    header,
    geometry: image.geometry,
    virtualSize: image.virtualSize,
    l1: image.l1Table,
    encrypted: false,
    dataFileName: image.dataFile?.name,
    dataFilePath: image.dataFile &&
      (hostFiles()?.pathOf(image.dataFile) ?? image.dataFile.name),
    backing: image.backing && await layerOf(image.backing),
    refcounts: await StoredRefcounts.load(source, header),
  };
}

/** Splits a big-endian u64 of a table into a number (inexact above 2^53). */
export function u64At(view: DataView, at: number): number {
  return view.getUint32(at) * 0x1_0000_0000 + view.getUint32(at + 4);
}

/** Thrown by {@linkcode StoredRefcounts.get} for an unaligned refblock. */
export class RefblockError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RefblockError";
  }
}

/**
 * The refcounts stored in an image: its refcount table in memory, refcount
 * blocks read on demand through a small cache (as QEMU's
 * qcow2_get_refcount()).
 */
export class StoredRefcounts {
  /** Refcount table entries (raw, reserved bits included). */
  readonly table: number[];
  /** Low 32 bits of each entry, for alignment and reserved-bit checks. */
  readonly tableLow: Uint32Array;
  readonly #source: RandomAccessSource;
  readonly #clusterBits: number;
  readonly #order: number;
  readonly #blockBits: number;
  readonly #cache = new LruCache<number, Uint8Array>(8 * 1024 * 1024);

  private constructor(
    source: RandomAccessSource,
    header: Qcow2Header,
    table: Uint8Array,
  ) {
    this.#source = source;
    this.#clusterBits = header.clusterBits;
    this.#order = header.refcountOrder;
    this.#blockBits = header.clusterBits + 3 - header.refcountOrder;
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const n = table.length / 8;
    this.table = new Array(n);
    this.tableLow = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      this.table[i] = u64At(view, i * 8);
      this.tableLow[i] = view.getUint32(i * 8 + 4);
    }
  }

  /** Loads the refcount table of an image. */
  static async load(
    source: RandomAccessSource,
    header: Qcow2Header,
  ): Promise<StoredRefcounts> {
    const bytes = header.refcountTableClusters * 2 ** header.clusterBits;
    const table = await readPadded(source, header.refcountTableOffset, bytes);
    return new StoredRefcounts(source, header, table);
  }

  /** Entries of the refcount table. */
  get size(): number {
    return this.table.length;
  }

  /** Host offset of refcount block `index` (reserved bits 0-8 masked). */
  blockOffset(index: number): number {
    const low = this.tableLow[index];
    return this.table[index] - (low & 0x1ff);
  }

  /** Refcounts per refcount block. */
  get perBlock(): number {
    return 2 ** this.#blockBits;
  }

  /** log2 of the refcount width. */
  get order(): number {
    return this.#order;
  }

  /**
   * The refcount block of table entry `index`, or null when there is none
   * (zero-filled where it lies past the end of the file).
   *
   * @throws {RefblockError} When the block offset is unaligned.
   */
  async block(index: number): Promise<Uint8Array | null> {
    if (index >= this.table.length) return null;
    const offset = this.blockOffset(index);
    if (offset === 0) return null;
    const cs = 2 ** this.#clusterBits;
    if ((this.tableLow[index] & (cs - 1) & ~0x1ff) !== 0) {
      throw new RefblockError(
        `Refblock offset ${hex(offset, "c-alt")} unaligned (reftable index: ${
          hex(index, "c-alt")
        })`,
      );
    }
    let block = this.#cache.get(offset);
    if (!block) {
      block = await readPadded(this.#source, offset, cs);
      this.#cache.set(offset, block, cs);
    }
    return block;
  }

  /**
   * The stored refcount of a cluster; 0 where no refcount block covers it.
   *
   * @throws {RefblockError} When the covering refcount block is unaligned.
   */
  async get(cluster: number): Promise<number> {
    const block = await this.block(Math.floor(cluster / this.perBlock));
    return block === null
      ? 0
      : getRefcount(block, cluster % this.perBlock, this.#order);
  }

  /**
   * Counts clusters below `end` with a non-zero stored refcount, stopping
   * once `limit` is reached (QEMU's metadata preallocation heuristic).
   *
   * @throws {RefblockError} When a refcount block is unaligned.
   */
  async countAllocated(end: number, limit: number): Promise<number> {
    const perBlock = this.perBlock;
    let count = 0;
    for (let index = 0; index * perBlock < end && count < limit; index++) {
      if (index >= this.table.length) break;
      const block = await this.block(index);
      if (block === null) continue;
      const n = Math.min(perBlock, end - index * perBlock);
      for (let i = 0; i < n && count < limit; i++) {
        if (getRefcount(block, i, this.#order) !== 0) count++;
      }
    }
    return count;
  }
}
