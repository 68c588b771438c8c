/**
 * Hosted sparse extents (VMDK4, magic `KDMV`): the header (or, when the
 * header says the grain directory is at the end, the footer's copy of it),
 * the grain directory and grain tables, and the one lookup of a guest
 * sector that reads, block status and extents are built on. The redundant
 * grain directory is not read.
 *
 * Header, little-endian, from offset 0 (QEMU's `VMDK4Header` after the
 * magic):
 *
 * ```text
 *  0 magic "KDMV"        4 version u32       8 flags u32
 * 12 capacity u64 (sectors)                 20 granularity u64 (sectors per grain)
 * 28 desc_offset u64     36 desc_size u64   44 num_gtes_per_gt u32
 * 48 rgd_offset u64      56 gd_offset u64   64 grain_offset u64 (sectors)
 * 72 filler u8           73 check_bytes[4]  77 compress_algorithm u16
 * ```
 *
 * A grain table entry is a u32 sector of the grain in the file: 0 is not
 * allocated, 1 is a zeroed grain when the flags enable them. A compressed
 * grain starts with a marker `{ lba u64, size u32 }` when the flags say
 * markers, then `size` bytes of zlib data.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { LruCache } from "../../io/lru.ts";
import { readExact } from "../_bounds.ts";
import { readPadded } from "../read.ts";

/** `KDMV`, the first four bytes of a hosted sparse extent. */
export const VMDK4_MAGIC = 0x4b444d56;
/** `COWD`, the first four bytes of an ESX 2 (VMDK3) sparse extent. */
export const VMDK3_MAGIC = 0x434f5744;
/** flags bit 1: a redundant grain directory is kept. */
export const FLAG_RGD = 1 << 1;
/** flags bit 2: grain table entry 1 means a zeroed grain. */
export const FLAG_ZERO_GRAIN = 1 << 2;
/** flags bit 17: compressed grains and metadata carry markers. */
export const FLAG_MARKER = 1 << 17;
/** compress_algorithm: deflate (zlib). */
export const COMPRESSION_DEFLATE = 1;
/** gd_offset: the grain directory is found through the footer. */
export const GD_AT_END = 0xffffffffffffffffn;
/** A grain table entry for a zeroed grain (with {@linkcode FLAG_ZERO_GRAIN}). */
export const GTE_ZEROED = 1;
/**
 * Metadata marker types. A metadata marker is a sector `{ sectors u64,
 * size u32 = 0, type u32 }` followed by `sectors` sectors of metadata (a
 * grain table, the grain directory, the footer: a copy of the header); a
 * grain marker has a `size` that is not 0. End-of-stream is a zero sector.
 */
export const MARKER_END_OF_STREAM = 0;
/** Metadata marker type: a grain table follows. */
export const MARKER_GRAIN_TABLE = 1;
/** Metadata marker type: the grain directory follows. */
export const MARKER_GRAIN_DIRECTORY = 2;
/** Metadata marker type: the footer (a copy of the header) follows. */
export const MARKER_FOOTER = 3;
/** Bytes of a grain marker before its data: lba u64, size u32. */
export const GRAIN_MARKER_BYTES = 12;
/** QEMU's largest grain: 0x200000 sectors (1 GiB). */
const MAX_GRAIN_SECTORS = 0x200000;
/** QEMU's largest grain table: 512 entries. */
const MAX_GTES = 512;
/** QEMU's largest grain directory: 32 Mi entries. */
export const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** The last VMDK4 version QEMU reads. */
const MAX_VERSION = 3;

/** A parsed sparse extent header. */
export interface SparseHeader {
  version: number;
  flags: number;
  /** Sectors of guest data the extent holds. */
  capacity: number;
  /** Sectors per grain. */
  granularity: number;
  /** Embedded descriptor: start and size in sectors. */
  descOffset: number;
  descSize: number;
  /** Grain table entries per grain table. */
  gtes: number;
  /** Grain directory offset in sectors (from the footer when at the end). */
  gdOffset: number;
  /** Whether the grain directory was found through the footer. */
  gdAtEnd: boolean;
  /** Where grains may start, in sectors. */
  grainOffset: number;
  /** Grains are deflate-compressed. */
  compressed: boolean;
}

function u64(view: DataView, at: number, field: string, base: number): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot parse VMDK header: ${field} ${v} is out of range [0, 2^53)`,
      { offset: base + at, field },
    );
  }
  return Number(v);
}

/** Parses the header fields of one 512-byte header copy at `base`. */
function parseFields(bytes: Uint8Array, base: number): SparseHeader & {
  gdRaw: bigint;
} {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const gdRaw = view.getBigUint64(56, true);
  return {
    version: view.getUint32(4, true),
    flags: view.getUint32(8, true),
    capacity: u64(view, 12, "capacity", base),
    granularity: u64(view, 20, "granularity", base),
    descOffset: u64(view, 28, "desc_offset", base),
    descSize: u64(view, 36, "desc_size", base),
    gtes: view.getUint32(44, true),
    gdRaw,
    gdOffset: gdRaw === GD_AT_END ? 0 : u64(view, 56, "gd_offset", base),
    gdAtEnd: false,
    grainOffset: u64(view, 64, "grain_offset", base),
    compressed: view.getUint16(77, true) === COMPRESSION_DEFLATE,
  };
}

/**
 * Reads and checks a sparse extent's header, following the footer when
 * the grain directory is at the end, with QEMU's limits.
 *
 * @param source The extent file.
 * @param name What to call it.
 * @returns The header.
 * @throws {Qcow2Error} For a bad magic, a version past 3, a footer that is
 * not one, or fields out of QEMU's ranges.
 */
export async function readSparseHeader(
  source: RandomAccessSource,
  name: string,
): Promise<SparseHeader> {
  const first = await readExact(source, 0, 512, `VMDK header of ${name}`);
  checkMagic(first, name);
  let h = parseFields(first, 0);
  if (h.gdRaw === GD_AT_END) {
    const end = Math.floor(source.size / 512) * 512 - 1536;
    if (end < 0) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open extent ${name}: the header says the grain directory is at the end, but the file (${source.size} bytes) is too small for a footer`,
        { offset: 56, field: "gd_offset" },
      );
    }
    const footer = await readExact(source, end, 1536, `VMDK footer of ${name}`);
    const v = new DataView(footer.buffer, footer.byteOffset);
    if (
      v.getUint32(512) !== VMDK4_MAGIC || v.getUint32(8, true) !== 0 ||
      v.getUint32(12, true) !== MARKER_FOOTER ||
      v.getBigUint64(1024, true) !== 0n || v.getUint32(1032, true) !== 0 ||
      v.getUint32(1036, true) !== MARKER_END_OF_STREAM
    ) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open extent ${name}: invalid footer at ${
          hex(end)
        } (a footer marker, a KDMV header and an end-of-stream marker)`,
        { offset: end },
      );
    }
    h = parseFields(footer.subarray(512, 1024), end + 512);
    if (h.gdRaw === GD_AT_END) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open extent ${name}: the footer's gd_offset also says the grain directory is at the end`,
        { offset: end + 512 + 56, field: "gd_offset" },
      );
    }
    h.gdAtEnd = true;
  }
  checkFields(h, name);
  if (Math.ceil(source.size / 512) < h.grainOffset) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open extent ${name}: file truncated, expecting at least ${
        h.grainOffset * 512
      } bytes (grain_offset), found ${source.size}`,
      { offset: 64, field: "grain_offset" },
    );
  }
  return h;
}

/**
 * Parses and checks one header sector as it stands, with QEMU's limits:
 * the first sector of a stream, or a footer's copy. A header that says
 * the grain directory is at the end has `gdAtEnd` set and `gdOffset` 0.
 *
 * @param bytes The 512 bytes of the header.
 * @param name What to call the extent.
 * @param base Where the header is in the extent, for messages.
 * @returns The header.
 * @throws {Qcow2Error} For a bad magic, a version past 3, or fields out of
 * QEMU's ranges.
 */
export function parseSparseHeader(
  bytes: Uint8Array,
  name: string,
  base = 0,
): SparseHeader {
  checkMagic(bytes, name);
  const h = parseFields(bytes, base);
  h.gdAtEnd = h.gdRaw === GD_AT_END;
  checkFields(h, name);
  return h;
}

/** The magic of a sparse extent: KDMV, or a refusal naming what it is. */
function checkMagic(first: Uint8Array, name: string): void {
  const magic = new DataView(first.buffer, first.byteOffset).getUint32(0);
  if (magic !== VMDK4_MAGIC) {
    throw new Qcow2Error(
      magic === VMDK3_MAGIC ? "UNSUPPORTED_FEATURE" : "BAD_MAGIC",
      magic === VMDK3_MAGIC
        ? `Cannot open extent ${name}: ESX 2 (COWD) sparse extents are not supported`
        : `Cannot open extent ${name}: magic ${
          hex(magic)
        } is not KDMV (0x4b444d56)`,
      { offset: 0, field: "magic" },
    );
  }
}

/** QEMU's limits on a header's fields. */
function checkFields(h: SparseHeader, name: string): void {
  const fail = (field: string, at: number, reason: string) =>
    new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open extent ${name}: ${reason}`,
      { offset: at, field },
    );
  if (h.version > MAX_VERSION) {
    throw new Qcow2Error(
      "UNSUPPORTED_VERSION",
      `Cannot open extent ${name}: VMDK version ${h.version} is not supported (1 to ${MAX_VERSION})`,
      { offset: 4, field: "version" },
    );
  }
  if (h.gtes === 0 || h.gtes > MAX_GTES) {
    throw fail(
      "num_gtes_per_gt",
      44,
      `num_gtes_per_gt ${h.gtes} is out of range [1, ${MAX_GTES}]`,
    );
  }
  if (h.granularity === 0 || h.granularity > MAX_GRAIN_SECTORS) {
    throw fail(
      "granularity",
      20,
      `granularity ${h.granularity} sectors is out of range [1, ${MAX_GRAIN_SECTORS}]`,
    );
  }
  if (h.capacity * 512 > Number.MAX_SAFE_INTEGER) {
    throw fail(
      "capacity",
      12,
      `capacity ${h.capacity} sectors is past 2^53 bytes`,
    );
  }
  const entries = gdEntries(h);
  if (entries > MAX_GD_ENTRIES) {
    throw fail(
      "capacity",
      12,
      `capacity ${h.capacity} sectors needs ${entries} grain directory entries, more than ${MAX_GD_ENTRIES}`,
    );
  }
}

/**
 * Entries of a header's grain directory: one per grain table's worth of
 * capacity.
 *
 * @param h The header.
 * @returns How many.
 */
export function gdEntries(h: SparseHeader): number {
  return Math.ceil(h.capacity / (h.gtes * h.granularity));
}

/**
 * A grain directory or grain table: little-endian u32 entries.
 *
 * @param bytes At least `4 * n` bytes.
 * @param n Entries.
 * @returns The entries.
 */
export function u32Entries(bytes: Uint8Array, n: number): Uint32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = view.getUint32(i * 4, true);
  return out;
}

/**
 * Checks a compressed grain's size (from its marker) and the zlib stream
 * header its data starts with, as read before inflating it.
 *
 * @param size Bytes of compressed data.
 * @param head At least the first 2 bytes of the data.
 * @param grainSize Bytes per grain.
 * @param where The start of the message: `Cannot read ...: compressed grain at ...`.
 * @param at Where the data starts in the extent.
 * @throws {Qcow2Error} `CORRUPT` for a size out of `[1, 2 * grainSize]`,
 * `DECOMPRESS` for a missing zlib header.
 */
export function checkGrainData(
  size: number,
  head: Uint8Array,
  grainSize: number,
  where: string,
  at: number,
): void {
  if (size === 0 || size > 2 * grainSize) {
    throw new Qcow2Error(
      "CORRUPT",
      `${where}: its marker says ${size} bytes, out of range [1, ${
        2 * grainSize
      }]`,
      { offset: at - GRAIN_MARKER_BYTES + 8, field: "size" },
    );
  }
  const cmf = head[0];
  const flg = head[1];
  if (
    size < 3 || (cmf & 0x0f) !== 8 || cmf >> 4 > 7 ||
    ((cmf << 8) | flg) % 31 !== 0 || (flg & 0x20) !== 0
  ) {
    throw new Qcow2Error(
      "DECOMPRESS",
      `${where}: no zlib stream header (bytes ${hex(cmf)} ${hex(flg)})`,
      { offset: at },
    );
  }
}

/**
 * How a guest sector of a sparse extent reads. `unallocated` may say how
 * many bytes of the extent from the asked offset are unallocated with it
 * (`span`: the rest of a grain table that is not allocated).
 */
export type GrainState =
  | { kind: "unallocated"; span?: number }
  | { kind: "zero" }
  | { kind: "data"; hostOffset: number }
  | { kind: "compressed"; hostOffset: number };

/**
 * A sparse extent opened for reading: its header and grain directory, and
 * a bounded cache of grain tables.
 */
export class SparseExtent {
  readonly header: SparseHeader;
  readonly source: RandomAccessSource;
  readonly name: string;
  /** Bytes per grain. */
  readonly grainSize: number;
  readonly #gd: Uint32Array;
  readonly #tables: LruCache<number, Promise<Uint32Array>>;
  /** Sectors of grain tables found to hold no grain. */
  readonly #empty = new Set<number>();

  private constructor(
    header: SparseHeader,
    source: RandomAccessSource,
    name: string,
    gd: Uint32Array,
    cacheBytes: number,
  ) {
    this.header = header;
    this.source = source;
    this.name = name;
    this.grainSize = header.granularity * 512;
    this.#gd = gd;
    this.#tables = new LruCache(Math.max(cacheBytes, header.gtes * 4));
  }

  /**
   * Opens a sparse extent: reads its header and grain directory, checked
   * against the file.
   *
   * @param source The extent file.
   * @param name What to call it.
   * @param cacheBytes Grain table cache budget.
   * @returns The extent.
   */
  static async open(
    source: RandomAccessSource,
    name: string,
    cacheBytes: number,
  ): Promise<SparseExtent> {
    const h = await readSparseHeader(source, name);
    const entries = gdEntries(h);
    const at = h.gdOffset * 512;
    if (entries > 0 && at + entries * 4 > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open extent ${name}: grain directory at ${
          hex(at)
        } with ${entries} entries ends past the end of the file (${source.size} bytes)`,
        { offset: at, field: "gd_offset" },
      );
    }
    const bytes = entries > 0
      ? await readExact(source, at, entries * 4, `grain directory of ${name}`)
      : new Uint8Array(0);
    return new SparseExtent(
      h,
      source,
      name,
      u32Entries(bytes, entries),
      cacheBytes,
    );
  }

  /**
   * A grain table by its index in the grain directory.
   *
   * @param index The grain directory entry.
   * @param padded Read it as QEMU does, zero-filled past the end of the
   * file, rather than refuse it there.
   * @returns Its entries, or undefined when the entry is 0 (no table).
   */
  async table(
    index: number,
    padded = false,
  ): Promise<Uint32Array | undefined> {
    const sector = this.#gd[index];
    if (sector === 0) return undefined;
    // A table read zero-filled is cached apart from one read strictly.
    const key = padded ? -sector : sector;
    let table = this.#tables.get(key);
    if (!table) {
      table = this.#loadTable(index, sector, padded);
      this.#tables.set(key, table, this.header.gtes * 4);
      table.catch(() => {});
    }
    return await table;
  }

  async #loadTable(
    index: number,
    sector: number,
    padded: boolean,
  ): Promise<Uint32Array> {
    const n = this.header.gtes;
    const at = sector * 512;
    if (padded) return u32Entries(await readPadded(this.source, at, n * 4), n);
    if (at + n * 4 > this.source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read grain table ${index} of ${this.name}: ${n * 4} bytes at ${
          hex(at)
        } run past the end of the file (${this.source.size} bytes)`,
        { offset: at },
      );
    }
    const bytes = await readExact(
      this.source,
      at,
      n * 4,
      `grain table ${index} of ${this.name}`,
    );
    return u32Entries(bytes, n);
  }

  /**
   * The first grain holding data at or after a byte of the extent (not a
   * zeroed grain): where it starts and where its data is. Tables that
   * hold none are remembered, so that a directory whose entries all name
   * one empty table is passed over at the pace of its entries.
   *
   * @param offset Byte offset inside the extent.
   * @returns The grain, or undefined when none follows.
   */
  async nextAllocated(
    offset: number,
  ): Promise<{ offset: number; hostOffset: number } | undefined> {
    const n = this.header.gtes;
    const gs = this.grainSize;
    const grains = Math.ceil(this.header.capacity * 512 / gs);
    const zeroed = (this.header.flags & FLAG_ZERO_GRAIN) !== 0;
    for (let grain = Math.ceil(offset / gs); grain < grains;) {
      const t = Math.floor(grain / n);
      const sector = this.#gd[t];
      const from = grain % n;
      grain = (t + 1) * n;
      if (sector === 0 || this.#empty.has(sector)) continue;
      const table = (await this.table(t))!;
      for (let j = from; j < n && t * n + j < grains; j++) {
        const e = table[j];
        if (e !== 0 && !(zeroed && e === GTE_ZEROED)) {
          return { offset: (t * n + j) * gs, hostOffset: e * 512 };
        }
      }
      if (from === 0) this.#empty.add(sector);
    }
    return undefined;
  }

  /**
   * How the grain holding a byte of the extent reads.
   *
   * @param offset Byte offset inside the extent (below its capacity).
   * @returns The grain's state.
   */
  async lookup(offset: number): Promise<GrainState> {
    const grain = Math.floor(offset / this.grainSize);
    const table = await this.table(Math.floor(grain / this.header.gtes));
    if (!table) {
      const coverage = this.grainSize * this.header.gtes;
      return { kind: "unallocated", span: coverage - (offset % coverage) };
    }
    const entry = table[grain % this.header.gtes];
    if (entry === 0) return { kind: "unallocated" };
    if (
      entry === GTE_ZEROED && (this.header.flags & FLAG_ZERO_GRAIN) !== 0
    ) return { kind: "zero" };
    return {
      kind: this.header.compressed ? "compressed" : "data",
      hostOffset: entry * 512,
    };
  }
}
