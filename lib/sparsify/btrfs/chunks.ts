/**
 * btrfs chunks: the map from logical addresses (where every tree block and
 * extent is named) to device offsets. Each chunk item gives a logical
 * range, a type (data, metadata, system) and a profile; with one device
 * only SINGLE (one stripe) and DUP (two full copies on the device) occur,
 * and any RAID profile is refused. Chunks come from the superblock's
 * system chunk array (enough to read the chunk tree) and from the chunk
 * tree itself; the device tree's dev extents must match their stripes one
 * to one.
 *
 * ```text
 * chunk item (48 bytes + 32 per stripe):
 *  0 length u64  8 owner u64  16 stripe_len u64  24 type u64
 *  32 io_align u32  36 io_width u32  40 sector_size u32
 *  44 num_stripes u16  46 sub_stripes u16
 *  48 stripes: devid u64, offset u64, dev_uuid[16]
 * dev extent item (48 bytes), key (devid, DEV_EXTENT, physical offset):
 *  0 chunk_tree u64  8 chunk_objectid u64  16 chunk_offset u64
 *  24 length u64  32 chunk_tree_uuid[16]
 * ```
 *
 * @module
 */

import { Refusal } from "../_region.ts";
import {
  BG,
  BG_TYPE_MASK,
  FIRST_CHUNK_TREE_OBJECTID,
  KEY,
  KEY_SIZE,
  RAID_PROFILES,
  sameBytes,
  u64,
  u64Bits,
} from "./format.ts";
import type { BtrfsSuperblock } from "./superblock.ts";

/** Most chunks handled (256 TiB in chunks of 1 GiB). */
export const MAX_CHUNKS = 1 << 18;
/** Bytes of a chunk item without its stripes, and of one stripe. */
const CHUNK_HEAD = 48;
const STRIPE_SIZE = 32;
/** Bytes of a dev extent item. */
export const DEV_EXTENT_SIZE = 48;

/** One chunk, checked. */
export interface Chunk {
  /** First logical address. */
  logical: number;
  /** Bytes (each stripe holds all of them with SINGLE and DUP). */
  length: number;
  /** Type and profile bits (`BG`). */
  type: number;
  /** Device offset of each copy: one with SINGLE, two with DUP. */
  stripes: number[];
}

/** A chunk's type as text: `data`, `metadata DUP`, `data+metadata`. */
export function chunkTypeText(type: number): string {
  const kinds = [
    [BG.DATA, "data"],
    [BG.METADATA, "metadata"],
    [BG.SYSTEM, "system"],
  ].filter(([bit]) => type & (bit as number)).map(([, n]) => n).join("+");
  return type & BG.DUP ? `${kinds} DUP` : kinds;
}

/**
 * Parses one chunk item and checks it against the superblock: its size,
 * type and profile (SINGLE or DUP only), its alignment, and stripes that
 * lie on this device and inside it, two DUP copies apart.
 *
 * @param bytes Bytes holding the item.
 * @param at Where the item starts.
 * @param room Bytes available for it (the item size, or what is left of
 * the system chunk array).
 * @param logical The chunk's logical address (the key's offset).
 * @param sb The superblock.
 * @returns The chunk and the item's size in bytes.
 * @throws {Refusal} When the item is malformed or not handled.
 *
 * @example A SINGLE data chunk of 8 MiB at device offset 13 MiB
 * ```ts
 * import assert from "node:assert";
 * import { parseChunk } from "./chunks.ts";
 * import type { BtrfsSuperblock } from "./superblock.ts";
 * const item = new Uint8Array(80);
 * const v = new DataView(item.buffer);
 * v.setUint32(0, 8 << 20, true); // length
 * v.setUint32(24, 1, true); // type DATA
 * v.setUint16(44, 1, true); // num_stripes
 * v.setUint32(48, 1, true); // devid
 * v.setUint32(56, 13 << 20, true); // offset
 * const sb = { sectorsize: 4096, devid: 1, devTotalBytes: 1 << 30, devUuid: new Uint8Array(16) } as BtrfsSuperblock;
 * const { chunk } = parseChunk(item, 0, 80, 13 << 20, sb);
 * assert.deepStrictEqual(chunk, { logical: 13 << 20, length: 8 << 20, type: 1, stripes: [13 << 20] });
 * ```
 */
export function parseChunk(
  bytes: Uint8Array,
  at: number,
  room: number,
  logical: number,
  sb: BtrfsSuperblock,
): { chunk: Chunk; size: number } {
  const where = `chunk at logical ${logical}`;
  if (room < CHUNK_HEAD + STRIPE_SIZE) {
    throw new Refusal(`${where}: item of ${room} bytes is too short`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, room);
  const numStripes = view.getUint16(44, true);
  const size = CHUNK_HEAD + numStripes * STRIPE_SIZE;
  if (numStripes === 0 || size > room) {
    throw new Refusal(
      `${where}: ${numStripes} stripes do not fit its ${room} bytes`,
    );
  }
  const length = u64(view, 0, `${where}: length`);
  const typeBits = u64Bits(view, 24);
  for (const [bit, name] of RAID_PROFILES) {
    if (typeBits & BigInt(bit)) {
      throw new Refusal(
        `${where} has profile ${name}: only single and DUP on one device are handled`,
      );
    }
  }
  const unknown = typeBits & ~BigInt(BG_TYPE_MASK | BG.DUP);
  if (unknown) {
    throw new Refusal(
      `${where} has unknown type bits 0x${unknown.toString(16)}`,
    );
  }
  const type = Number(typeBits);
  const kind = type & BG_TYPE_MASK;
  if (kind === 0 || (kind & BG.SYSTEM && kind !== BG.SYSTEM)) {
    throw new Refusal(
      `${where} has type 0x${type.toString(16)}: not a chunk type`,
    );
  }
  const want = type & BG.DUP ? 2 : 1;
  if (numStripes !== want) {
    throw new Refusal(
      `${where} (${
        chunkTypeText(type)
      }) has ${numStripes} stripes, not ${want}`,
    );
  }
  const ss = sb.sectorsize;
  if (length === 0 || length % ss !== 0 || logical % ss !== 0) {
    throw new Refusal(
      `${where}: length ${length} or address is not a non-zero multiple of sectorsize ${ss}`,
    );
  }
  if (!Number.isSafeInteger(logical + length)) {
    throw new Refusal(`${where}: length ${length} runs past 2^53`);
  }
  const stripes: number[] = [];
  for (let i = 0; i < numStripes; i++) {
    const s = CHUNK_HEAD + i * STRIPE_SIZE;
    const devid = u64Bits(view, s);
    if (devid !== BigInt(sb.devid)) {
      throw new Refusal(
        `${where}: stripe ${i} is on device ${devid}, not on device ${sb.devid} (the only one)`,
      );
    }
    if (!sameBytes(bytes, at + s + 16, sb.devUuid, 0, 16)) {
      throw new Refusal(`${where}: stripe ${i} names another device's UUID`);
    }
    const offset = u64(view, s + 8, `${where}: stripe ${i} offset`);
    if (offset % ss !== 0 || offset + length > sb.devTotalBytes) {
      throw new Refusal(
        `${where}: stripe ${i} at device byte ${offset} (${length} bytes) is unaligned or past the device's ${sb.devTotalBytes} bytes`,
      );
    }
    stripes.push(offset);
  }
  if (
    stripes.length === 2 &&
    stripes[0] < stripes[1] + length && stripes[1] < stripes[0] + length
  ) {
    throw new Refusal(
      `${where}: its two DUP copies at device bytes ${stripes[0]} and ${
        stripes[1]
      } overlap`,
    );
  }
  return { chunk: { logical, length, type, stripes }, size };
}

/**
 * Parses the superblock's system chunk array: pairs of a key
 * (`FIRST_CHUNK_TREE_OBJECTID`, CHUNK_ITEM, logical) and a chunk item,
 * which must be system chunks in increasing, non-overlapping order.
 *
 * @param sb The superblock.
 * @returns The system chunks.
 * @throws {Refusal} When the array is malformed.
 */
export function parseSysChunkArray(sb: BtrfsSuperblock): Chunk[] {
  const a = sb.sysChunkArray;
  const view = new DataView(a.buffer, a.byteOffset, a.length);
  const out: Chunk[] = [];
  let at = 0;
  while (at < a.length) {
    if (at + KEY_SIZE > a.length) {
      throw new Refusal(`system chunk array: a key is cut off at byte ${at}`);
    }
    const objectid = u64Bits(view, at);
    const type = a[at + 8];
    if (
      objectid !== BigInt(FIRST_CHUNK_TREE_OBJECTID) || type !== KEY.CHUNK_ITEM
    ) {
      throw new Refusal(
        `system chunk array: entry at byte ${at} is not a chunk item (key ${objectid} ${type})`,
      );
    }
    const logical = u64(view, at + 9, "system chunk array: chunk address");
    const { chunk, size } = parseChunk(
      a,
      at + KEY_SIZE,
      a.length - at - KEY_SIZE,
      logical,
      sb,
    );
    if (chunk.type & ~(BG.SYSTEM | BG.DUP)) {
      throw new Refusal(
        `system chunk array: chunk at logical ${logical} is ${
          chunkTypeText(chunk.type)
        }, not system`,
      );
    }
    const prev = out.at(-1);
    if (prev && logical < prev.logical + prev.length) {
      throw new Refusal(
        `system chunk array: chunk at logical ${logical} overlaps or precedes the one at ${prev.logical}`,
      );
    }
    out.push(chunk);
    at += KEY_SIZE + size;
  }
  return out;
}

/**
 * Chunks by logical address, sorted and not overlapping, in flat arrays so
 * that a large filesystem costs little memory.
 *
 * @example Find the chunk of an address
 * ```ts
 * import assert from "node:assert";
 * import { ChunkMap } from "./chunks.ts";
 * const map = new ChunkMap([
 *   { logical: 1 << 20, length: 1 << 20, type: 2, stripes: [1 << 20] },
 *   { logical: 4 << 20, length: 2 << 20, type: 0x24, stripes: [8 << 20, 10 << 20] },
 * ]);
 * assert.strictEqual(map.find(5 << 20, 4096), 1);
 * assert.strictEqual(map.find(3 << 20, 4096), -1);
 * assert.strictEqual(map.physical(1, 5 << 20, 1), (11 << 20));
 * ```
 */
export class ChunkMap {
  /** Number of chunks. */
  readonly count: number;
  readonly logical: Float64Array;
  readonly length: Float64Array;
  readonly type: Uint32Array;
  /** Device offset of the first copy, and of the second (NaN without DUP). */
  readonly stripe0: Float64Array;
  readonly stripe1: Float64Array;

  /**
   * Builds the map.
   *
   * @param chunks Chunks sorted by logical address, not overlapping.
   * @throws {Refusal} When there are more than MAX_CHUNKS or they are out of order.
   */
  constructor(chunks: Chunk[]) {
    const n = chunks.length;
    if (n > MAX_CHUNKS) {
      throw new Refusal(`${n} chunks are more than the ${MAX_CHUNKS} handled`);
    }
    this.count = n;
    this.logical = new Float64Array(n);
    this.length = new Float64Array(n);
    this.type = new Uint32Array(n);
    this.stripe0 = new Float64Array(n);
    this.stripe1 = new Float64Array(n);
    chunks.forEach((c, i) => {
      if (i > 0 && c.logical < this.logical[i - 1] + this.length[i - 1]) {
        throw new Refusal(
          `chunk at logical ${c.logical} overlaps or precedes the one at ${
            this.logical[i - 1]
          }`,
        );
      }
      this.logical[i] = c.logical;
      this.length[i] = c.length;
      this.type[i] = c.type;
      this.stripe0[i] = c.stripes[0];
      this.stripe1[i] = c.stripes[1] ?? NaN;
    });
  }

  /**
   * The chunk holding all of `[logical, logical + bytes)`.
   *
   * @param logical A logical address.
   * @param bytes Bytes from it.
   * @returns The chunk's index, or -1 when no one chunk holds them.
   */
  find(logical: number, bytes: number): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.logical[mid] <= logical) lo = mid + 1;
      else hi = mid;
    }
    const i = lo - 1;
    if (i < 0) return -1;
    return logical + bytes <= this.logical[i] + this.length[i] ? i : -1;
  }

  /** Number of copies of chunk `i` (2 with DUP). */
  copies(i: number): number {
    return Number.isNaN(this.stripe1[i]) ? 1 : 2;
  }

  /**
   * The device offset of `logical` in copy `copy` of chunk `i`.
   *
   * @param i The chunk.
   * @param logical An address inside it.
   * @param copy 0, or 1 for the second DUP copy.
   * @returns The device offset.
   */
  physical(i: number, logical: number, copy: number): number {
    const base = copy === 0 ? this.stripe0[i] : this.stripe1[i];
    return base + (logical - this.logical[i]);
  }

  /** Chunk `i` as a record. */
  chunk(i: number): Chunk {
    return {
      logical: this.logical[i],
      length: this.length[i],
      type: this.type[i],
      stripes: this.copies(i) === 2
        ? [this.stripe0[i], this.stripe1[i]]
        : [this.stripe0[i]],
    };
  }
}

/** Dev extents sorted by device offset, each naming its chunk and copy. */
export interface DevExtents {
  /** Device offset and length of each. */
  physical: Float64Array;
  length: Float64Array;
  /** The chunk index and the copy (0 or 1) each holds. */
  chunk: Uint32Array;
  copy: Uint8Array;
  count: number;
}

/**
 * Collects dev extents (in key order, so by device offset) and checks them
 * against the chunks: each belongs to this device, lies inside it without
 * overlapping the previous one, and is exactly one copy of one chunk; at
 * the end every copy of every chunk has its dev extent and their sum is
 * the device's `bytes_used`.
 *
 * @example Match a chunk's two DUP copies
 * ```ts
 * import assert from "node:assert";
 * import { ChunkMap, DevExtentCollector } from "./chunks.ts";
 * import type { BtrfsSuperblock } from "./superblock.ts";
 * const map = new ChunkMap([{ logical: 1 << 22, length: 1 << 20, type: 0x24, stripes: [2 << 20, 3 << 20] }]);
 * const sb = { devid: 1, devTotalBytes: 1 << 30, devBytesUsed: 2 << 20 } as BtrfsSuperblock;
 * const c = new DevExtentCollector(map, sb);
 * c.add(2 << 20, 1 << 20, 1 << 22);
 * c.add(3 << 20, 1 << 20, 1 << 22);
 * assert.strictEqual(c.finish().count, 2);
 * ```
 */
export class DevExtentCollector {
  readonly #map: ChunkMap;
  readonly #sb: BtrfsSuperblock;
  readonly #physical: number[] = [];
  readonly #length: number[] = [];
  readonly #chunk: number[] = [];
  readonly #copy: number[] = [];
  readonly #matched: Uint8Array;
  #end = 0;
  #sum = 0;

  /**
   * Starts collecting.
   *
   * @param map The chunks.
   * @param sb The superblock.
   */
  constructor(map: ChunkMap, sb: BtrfsSuperblock) {
    this.#map = map;
    this.#sb = sb;
    this.#matched = new Uint8Array(map.count);
  }

  /**
   * Adds the dev extent at device offset `physical`.
   *
   * @param physical Its device offset (the key's offset).
   * @param length Its length.
   * @param chunkOffset The logical address of its chunk.
   * @throws {Refusal} When it does not match a chunk copy exactly.
   */
  add(physical: number, length: number, chunkOffset: number): void {
    const where = `dev extent at device byte ${physical}`;
    if (physical < this.#end) {
      throw new Refusal(
        `${where} overlaps the previous one, which ends at ${this.#end}`,
      );
    }
    if (physical + length > this.#sb.devTotalBytes) {
      throw new Refusal(
        `${where} (${length} bytes) runs past the device's ${this.#sb.devTotalBytes} bytes`,
      );
    }
    const i = this.#map.find(chunkOffset, 1);
    if (i < 0 || this.#map.logical[i] !== chunkOffset) {
      throw new Refusal(`${where} names no chunk at logical ${chunkOffset}`);
    }
    if (this.#map.length[i] !== length) {
      throw new Refusal(
        `${where} is ${length} bytes, its chunk at logical ${chunkOffset} ${
          this.#map.length[i]
        }`,
      );
    }
    let copy = -1;
    for (let k = 0; k < this.#map.copies(i); k++) {
      if (this.#map.physical(i, chunkOffset, k) === physical) copy = k;
    }
    if (copy < 0) {
      throw new Refusal(
        `${where} is not where its chunk at logical ${chunkOffset} puts a copy`,
      );
    }
    if (this.#matched[i] & (1 << copy)) {
      throw new Refusal(
        `${where} repeats copy ${copy} of chunk ${chunkOffset}`,
      );
    }
    this.#matched[i] |= 1 << copy;
    this.#physical.push(physical);
    this.#length.push(length);
    this.#chunk.push(i);
    this.#copy.push(copy);
    this.#end = physical + length;
    this.#sum += length;
    if (this.#physical.length > 2 * MAX_CHUNKS) {
      throw new Refusal(`more than ${2 * MAX_CHUNKS} dev extents`);
    }
  }

  /**
   * Checks that every chunk copy was matched and returns the dev extents.
   *
   * @returns The dev extents.
   * @throws {Refusal} When a copy has no dev extent or the sum is not the
   * device's bytes_used.
   */
  finish(): DevExtents {
    for (let i = 0; i < this.#map.count; i++) {
      const want = this.#map.copies(i) === 2 ? 3 : 1;
      if (this.#matched[i] !== want) {
        throw new Refusal(
          `chunk at logical ${
            this.#map.logical[i]
          } has a copy with no dev extent in the device tree`,
        );
      }
    }
    if (this.#sum !== this.#sb.devBytesUsed) {
      throw new Refusal(
        `dev extents hold ${this.#sum} bytes, the device's bytes_used says ${this.#sb.devBytesUsed}`,
      );
    }
    return {
      physical: Float64Array.from(this.#physical),
      length: Float64Array.from(this.#length),
      chunk: Uint32Array.from(this.#chunk),
      copy: Uint8Array.from(this.#copy),
      count: this.#physical.length,
    };
  }
}
