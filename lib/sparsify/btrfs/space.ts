/**
 * btrfs free space, from the extent tree: inside each block group (one per
 * chunk), the ranges no EXTENT_ITEM or METADATA_ITEM covers are free. The
 * extent tree is read once, in key order (so by logical address), and
 * checked as it goes: extent items inside one chunk of the right type,
 * aligned, not overlapping; one BLOCK_GROUP_ITEM per chunk, of its type and
 * size, whose `used` is exactly the sum of the extents inside it; all of
 * them together the superblock's `bytes_used`.
 *
 * Free ranges are kept in logical order in a list of bounded size; when it
 * fills, the smaller half is forgotten (those ranges are then copied as
 * they are), so memory stays bounded whatever the fragmentation. On the
 * device, the free space is the free ranges of each chunk mapped through
 * every copy (two with DUP), plus the bytes no dev extent covers; the first
 * MiB and the superblock copies are never free.
 *
 * ```text
 * EXTENT_ITEM   key (bytenr, 168, bytes): refs u64, generation u64, flags u64
 *               (1 data, 2 tree block), then for a tree block without
 *               skinny metadata a key and a level
 * METADATA_ITEM key (bytenr, 169, level): the same, nodesize bytes
 * BLOCK_GROUP_ITEM key (start, 192, length): used u64, chunk_objectid u64,
 *               flags u64
 * ```
 *
 * @module
 */

import { Refusal } from "../_region.ts";
import type { FreeRange } from "../report.ts";
import { type ChunkMap, chunkTypeText, type DevExtents } from "./chunks.ts";
import {
  BG,
  EXTENT_FLAG_DATA,
  EXTENT_FLAG_TREE_BLOCK,
  FIRST_CHUNK_TREE_OBJECTID,
  KEY,
  MAX_LEVEL,
  RESERVED_HEAD,
  SUPER_MIRRORS,
  SUPER_SIZE,
  u64,
  u64Bits,
} from "./format.ts";
import { type BtrfsSuperblock, INCOMPAT } from "./superblock.ts";
import { itemAt, itemData, type TreeBlock } from "./tree.ts";

/** Most free ranges remembered (16 MiB of memory). */
export const MAX_GAPS = 1 << 20;
/** Most bytes of each metadata bitmap (a bit per sector of metadata chunks). */
export const MAX_BITMAP_BYTES = 16 * 1024 * 1024;
/** Bytes of a BLOCK_GROUP_ITEM. */
const BLOCK_GROUP_ITEM_SIZE = 24;
/** Bytes of an extent item's fixed part, and of a tree_block_info after it. */
const EXTENT_ITEM_SIZE = 24;
const TREE_BLOCK_INFO_SIZE = 18;

/**
 * Free logical ranges in increasing order, at most `capacity` of them:
 * when full, those no longer than the median are dropped, and from then on
 * ranges that short are not kept either.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { GapList } from "./space.ts";
 * const gaps = new GapList(4);
 * for (const [s, n] of [[0, 4096], [8192, 65536], [90000, 4096], [100000, 8192], [200000, 65536]]) gaps.add(s, n);
 * assert.deepStrictEqual([...gaps.start.subarray(0, gaps.count)], [8192, 200000]);
 * assert.strictEqual(gaps.intersects(8192 + 4096, 10), true);
 * assert.strictEqual(gaps.intersects(0, 4096), false); // forgotten: kept as data
 * assert.strictEqual(gaps.forgotten, 3);
 * ```
 */
export class GapList {
  start: Float64Array;
  length: Float64Array;
  count = 0;
  /** Ranges shorter than this are not kept. */
  minLength = 1;
  /** Free ranges forgotten to stay within the capacity. */
  forgotten = 0;
  readonly #capacity: number;

  /**
   * Creates the list (it grows as ranges come, up to its capacity).
   *
   * @param capacity Most ranges kept.
   */
  constructor(capacity = MAX_GAPS) {
    this.#capacity = capacity;
    const first = Math.min(capacity, 1024);
    this.start = new Float64Array(first);
    this.length = new Float64Array(first);
  }

  /** Adds a free range after every one added so far. */
  add(start: number, length: number): void {
    if (length < this.minLength) {
      this.forgotten++;
      return;
    }
    if (this.count === this.start.length) {
      if (this.count < this.#capacity) this.#grow();
      else this.#compact();
    }
    if (length < this.minLength) {
      this.forgotten++;
      return;
    }
    this.start[this.count] = start;
    this.length[this.count] = length;
    this.count++;
  }

  #grow(): void {
    const n = Math.min(this.#capacity, this.start.length * 2);
    const start = new Float64Array(n);
    const length = new Float64Array(n);
    start.set(this.start);
    length.set(this.length);
    this.start = start;
    this.length = length;
  }

  #compact(): void {
    const sorted = this.length.slice(0, this.count).sort();
    const median = sorted[this.count >> 1];
    let k = 0;
    for (let i = 0; i < this.count; i++) {
      if (this.length[i] > median) {
        this.start[k] = this.start[i];
        this.length[k] = this.length[i];
        k++;
      }
    }
    this.forgotten += this.count - k;
    this.count = k;
    this.minLength = median + 1;
  }

  /** Index of the first range ending after `at`. */
  firstEndingAfter(at: number): number {
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.start[mid] + this.length[mid] <= at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Whether any kept range overlaps `[start, start + length)`. */
  intersects(start: number, length: number): boolean {
    const i = this.firstEndingAfter(start);
    return i < this.count && this.start[i] < start + length;
  }
}

/**
 * One bit per sector of the metadata and system chunks, by logical
 * address: which tree blocks were read, and where the extent tree says a
 * tree block is allocated.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { ChunkMap } from "./chunks.ts";
 * import { MetadataBitmap } from "./space.ts";
 * const map = new ChunkMap([{ logical: 1 << 22, length: 1 << 20, type: 4, stripes: [1 << 20] }]);
 * const bits = new MetadataBitmap(map, 4096);
 * bits.add((1 << 22) + 16384);
 * assert.strictEqual(bits.has((1 << 22) + 16384), true);
 * assert.strictEqual(bits.has(1 << 22), false);
 * ```
 */
export class MetadataBitmap {
  readonly #map: ChunkMap;
  readonly #shift: number;
  /** First bit of each chunk (-1 for data chunks). */
  readonly #base: Float64Array;
  /** The metadata and system chunks, in order. */
  readonly #metaChunks: Uint32Array;
  readonly bits: Uint8Array;

  /**
   * Creates an empty bitmap.
   *
   * @param map The chunks.
   * @param sectorsize The sector size.
   * @throws {Refusal} When the metadata chunks need more than MAX_BITMAP_BYTES.
   */
  constructor(map: ChunkMap, sectorsize: number) {
    this.#map = map;
    this.#shift = Math.log2(sectorsize);
    this.#base = new Float64Array(map.count);
    let total = 0;
    const meta: number[] = [];
    for (let i = 0; i < map.count; i++) {
      if (map.type[i] & (BG.METADATA | BG.SYSTEM)) {
        this.#base[i] = total;
        total += map.length[i] / sectorsize;
        meta.push(i);
      } else this.#base[i] = -1;
    }
    this.#metaChunks = Uint32Array.from(meta);
    const bytes = Math.ceil(total / 8);
    if (bytes > MAX_BITMAP_BYTES) {
      throw new Refusal(
        `metadata chunks of ${
          total * sectorsize
        } bytes are more than this reader checks (${
          MAX_BITMAP_BYTES * 8 * sectorsize
        })`,
      );
    }
    this.bits = new Uint8Array(bytes);
  }

  #bit(bytenr: number): number {
    const c = this.#map.find(bytenr, 1);
    if (c < 0 || this.#base[c] < 0) return -1;
    return this.#base[c] +
      Math.floor((bytenr - this.#map.logical[c]) / 2 ** this.#shift);
  }

  /** Whether `bytenr`'s bit is set. */
  has(bytenr: number): boolean {
    const b = this.#bit(bytenr);
    return b >= 0 && (this.bits[b >>> 3] & (1 << (b & 7))) !== 0;
  }

  /** Sets `bytenr`'s bit (ignored outside metadata chunks). */
  add(bytenr: number): void {
    const b = this.#bit(bytenr);
    if (b >= 0) this.bits[b >>> 3] |= 1 << (b & 7);
  }

  /** The logical address of bit `b`. */
  address(b: number): number {
    // The metadata chunk holding bit b: the last one whose first bit is at most b.
    let lo = 0;
    let hi = this.#metaChunks.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#base[this.#metaChunks[mid]] <= b) lo = mid + 1;
      else hi = mid;
    }
    const c = this.#metaChunks[lo - 1];
    return this.#map.logical[c] + (b - this.#base[c]) * 2 ** this.#shift;
  }

  /**
   * The first address set here and not in `other` (built over the same
   * chunks), or -1.
   */
  firstNotIn(other: MetadataBitmap): number {
    for (let i = 0; i < this.bits.length; i++) {
      const d = this.bits[i] & ~other.bits[i];
      if (d) return this.address(i * 8 + (31 - Math.clz32(d & -d)));
    }
    return -1;
  }
}

/** What the extent tree says, checked. */
export interface ExtentSpace {
  /** Free logical ranges inside the block groups. */
  gaps: GapList;
  /** Where tree blocks are allocated. */
  treeBlocks: MetadataBitmap;
  /** Extent items read. */
  extents: number;
}

/**
 * Reads the extent tree's items in key order (and the block group tree's,
 * when block groups live there) and checks them as described above.
 */
export class ExtentScanner {
  readonly #map: ChunkMap;
  readonly #sb: BtrfsSuperblock;
  readonly #skinny: boolean;
  readonly #bgUsed: Float64Array;
  readonly #used: Float64Array;
  readonly #gaps: GapList;
  readonly #treeBlocks: MetadataBitmap;
  #extents = 0;
  /** End of the last extent item. */
  #end = 0;
  /** The chunk whose free ranges are being listed, and how far. */
  #chunk = 0;
  #cursor: number;

  /**
   * Starts a scan.
   *
   * @param map The chunks.
   * @param sb The superblock.
   * @param gapCapacity Most free ranges kept.
   */
  constructor(map: ChunkMap, sb: BtrfsSuperblock, gapCapacity = MAX_GAPS) {
    this.#map = map;
    this.#sb = sb;
    this.#skinny = (sb.incompat & INCOMPAT.SKINNY_METADATA) !== 0n;
    this.#bgUsed = new Float64Array(map.count).fill(-1);
    this.#used = new Float64Array(map.count);
    this.#gaps = new GapList(gapCapacity);
    this.#treeBlocks = new MetadataBitmap(map, sb.sectorsize);
    this.#cursor = map.count > 0 ? map.logical[0] : 0;
  }

  /**
   * Takes one leaf of the extent tree.
   *
   * @param leaf The leaf.
   * @param blockGroups Whether BLOCK_GROUP_ITEMs belong in this tree.
   * @throws {Refusal} For an item that fails a check.
   */
  extentLeaf(leaf: TreeBlock, blockGroups: boolean): void {
    for (let i = 0; i < leaf.nritems; i++) {
      const k = itemAt(i);
      const type = leaf.bytes[k + 8];
      const { at, size } = itemData(leaf, i);
      switch (type) {
        case KEY.EXTENT_ITEM:
        case KEY.METADATA_ITEM:
          this.#extent(leaf, k, type, at, size);
          break;
        case KEY.BLOCK_GROUP_ITEM:
          if (!blockGroups) {
            throw new Refusal(
              `block group item at logical ${
                u64Bits(leaf.view, k)
              } is in the extent tree, but the block group tree holds them`,
            );
          }
          this.#blockGroup(leaf, k, at, size);
          break;
        case KEY.TREE_BLOCK_REF:
        case KEY.EXTENT_DATA_REF:
        case KEY.SHARED_BLOCK_REF:
        case KEY.SHARED_DATA_REF:
          break; // back references of the extent before them
        case KEY.EXTENT_REF_V0:
          throw new Refusal(
            "the extent tree has old (v0) back references: not handled",
          );
        default:
          throw new Refusal(
            `extent tree leaf ${leaf.bytenr} holds an item of unexpected type ${type}`,
          );
      }
    }
  }

  /**
   * Takes one leaf of the block group tree.
   *
   * @param leaf The leaf.
   * @throws {Refusal} For an item that fails a check.
   */
  blockGroupLeaf(leaf: TreeBlock): void {
    for (let i = 0; i < leaf.nritems; i++) {
      const k = itemAt(i);
      if (leaf.bytes[k + 8] !== KEY.BLOCK_GROUP_ITEM) {
        throw new Refusal(
          `block group tree leaf ${leaf.bytenr} holds an item of type ${
            leaf.bytes[k + 8]
          }`,
        );
      }
      const { at, size } = itemData(leaf, i);
      this.#blockGroup(leaf, k, at, size);
    }
  }

  #blockGroup(leaf: TreeBlock, k: number, at: number, size: number): void {
    const start = u64(leaf.view, k, "block group address");
    const length = u64(leaf.view, k + 9, "block group length");
    const where = `block group at logical ${start}`;
    const c = this.#map.find(start, length);
    if (
      c < 0 || this.#map.logical[c] !== start || this.#map.length[c] !== length
    ) {
      throw new Refusal(`${where} (${length} bytes) is not a chunk`);
    }
    if (size !== BLOCK_GROUP_ITEM_SIZE) {
      throw new Refusal(
        `${where}: item of ${size} bytes, not ${BLOCK_GROUP_ITEM_SIZE}`,
      );
    }
    if (this.#bgUsed[c] >= 0) throw new Refusal(`${where} appears twice`);
    const used = u64(leaf.view, at, `${where}: used`);
    const owner = u64Bits(leaf.view, at + 8);
    const flags = u64Bits(leaf.view, at + 16);
    if (flags !== BigInt(this.#map.type[c])) {
      throw new Refusal(
        `${where} has flags 0x${flags.toString(16)}, its chunk type 0x${
          this.#map.type[c].toString(16)
        }`,
      );
    }
    if (owner !== BigInt(FIRST_CHUNK_TREE_OBJECTID)) {
      throw new Refusal(`${where} names chunk objectid ${owner}`);
    }
    if (used > length) {
      throw new Refusal(
        `${where}: used ${used} is more than its ${length} bytes`,
      );
    }
    this.#bgUsed[c] = used;
  }

  #extent(leaf: TreeBlock, k: number, type: number, at: number, size: number) {
    const start = u64(leaf.view, k, "extent address");
    const where = `extent item at logical ${start}`;
    if (size < EXTENT_ITEM_SIZE) {
      throw new Refusal(
        `${where}: item of ${size} bytes (an old v0 extent item, or damaged)`,
      );
    }
    const flags = u64Bits(leaf.view, at + 16);
    const refs = u64Bits(leaf.view, at);
    if (refs === 0n) throw new Refusal(`${where} has no references`);
    const tree = (flags & BigInt(EXTENT_FLAG_TREE_BLOCK)) !== 0n;
    const data = (flags & BigInt(EXTENT_FLAG_DATA)) !== 0n;
    if (tree === data) {
      throw new Refusal(`${where} has flags 0x${flags.toString(16)}`);
    }
    let length: number;
    if (type === KEY.METADATA_ITEM) {
      if (!this.#skinny || !tree) {
        throw new Refusal(
          `${where}: a metadata item ${
            this.#skinny ? "for data" : "without skinny metadata"
          }`,
        );
      }
      if (u64Bits(leaf.view, k + 9) > BigInt(MAX_LEVEL)) {
        throw new Refusal(`${where}: level ${u64Bits(leaf.view, k + 9)}`);
      }
      length = this.#sb.nodesize;
    } else {
      length = u64(leaf.view, k + 9, `${where}: length`);
      if (tree) {
        if (length !== this.#sb.nodesize) {
          throw new Refusal(
            `${where}: a tree block of ${length} bytes, not nodesize ${this.#sb.nodesize}`,
          );
        }
        if (size < EXTENT_ITEM_SIZE + TREE_BLOCK_INFO_SIZE) {
          throw new Refusal(
            `${where}: item of ${size} bytes has no tree block info`,
          );
        }
      }
    }
    const ss = this.#sb.sectorsize;
    if (length === 0 || start % ss !== 0 || length % ss !== 0) {
      throw new Refusal(
        `${where} (${length} bytes) is not aligned to sectorsize ${ss}`,
      );
    }
    if (start < this.#end) {
      throw new Refusal(
        `${where} overlaps the extent before it, which ends at ${this.#end}`,
      );
    }
    const c = this.#map.find(start, length);
    if (c < 0) {
      throw new Refusal(
        `${where} (${length} bytes) does not lie inside one chunk`,
      );
    }
    const want = tree ? BG.METADATA | BG.SYSTEM : BG.DATA;
    if (!(this.#map.type[c] & want)) {
      throw new Refusal(
        `${where}: ${tree ? "a tree block" : "data"} in a ${
          chunkTypeText(this.#map.type[c])
        } chunk`,
      );
    }
    this.#advanceTo(c);
    if (start > this.#cursor) {
      this.#gaps.add(this.#cursor, start - this.#cursor);
    }
    this.#cursor = start + length;
    this.#end = start + length;
    this.#used[c] += length;
    this.#extents++;
    if (tree) this.#treeBlocks.add(start);
  }

  /** Lists the free tail of every chunk before chunk `c`. */
  #advanceTo(c: number): void {
    while (this.#chunk < c) {
      const end = this.#map.logical[this.#chunk] +
        this.#map.length[this.#chunk];
      if (this.#cursor < end) this.#gaps.add(this.#cursor, end - this.#cursor);
      this.#chunk++;
      this.#cursor = this.#map.logical[this.#chunk];
    }
  }

  /**
   * Ends the scan: every chunk has its block group, whose `used` is the sum
   * of its extents, and these sum to the superblock's `bytes_used`.
   *
   * @returns The free ranges and the tree block bitmap.
   * @throws {Refusal} When a count disagrees.
   */
  finish(): ExtentSpace {
    const n = this.#map.count;
    if (n > 0) {
      this.#advanceTo(n - 1);
      const end = this.#map.logical[n - 1] + this.#map.length[n - 1];
      if (this.#cursor < end) this.#gaps.add(this.#cursor, end - this.#cursor);
    }
    let total = 0;
    for (let c = 0; c < n; c++) {
      const where = `block group at logical ${this.#map.logical[c]}`;
      if (this.#bgUsed[c] < 0) {
        throw new Refusal(
          `chunk at logical ${this.#map.logical[c]} has no block group item`,
        );
      }
      if (this.#bgUsed[c] !== this.#used[c]) {
        throw new Refusal(
          `${where} counts ${this.#bgUsed[c]} bytes used, its extent items ${
            this.#used[c]
          }`,
        );
      }
      total += this.#used[c];
    }
    if (total !== this.#sb.bytesUsed) {
      throw new Refusal(
        `extent items hold ${total} bytes, the superblock's bytes_used says ${this.#sb.bytesUsed}`,
      );
    }
    return {
      gaps: this.#gaps,
      treeBlocks: this.#treeBlocks,
      extents: this.#extents,
    };
  }
}

/** Device ranges never free: the first MiB and the superblock copies. */
function reserved(totalBytes: number): Array<[number, number]> {
  const out: Array<[number, number]> = [[0, RESERVED_HEAD]];
  for (const m of SUPER_MIRRORS) {
    if (m >= RESERVED_HEAD && m < totalBytes) out.push([m, m + SUPER_SIZE]);
  }
  return out;
}

/**
 * The device's free ranges, in order and merged: the bytes no dev extent
 * covers, and each chunk's free ranges through each of its copies, less
 * the first MiB and the superblock copies.
 *
 * @param sb The superblock.
 * @param map The chunks.
 * @param dev The dev extents, by device offset.
 * @param gaps The free logical ranges.
 * @returns The ranges, relative to the partition.
 *
 * @example One SINGLE chunk of 8 MiB at device offset 4 MiB, half free
 * ```ts
 * import assert from "node:assert";
 * import { ChunkMap } from "./chunks.ts";
 * import { freeRanges, GapList } from "./space.ts";
 * import type { BtrfsSuperblock } from "./superblock.ts";
 * const map = new ChunkMap([{ logical: 1 << 30, length: 8 << 20, type: 1, stripes: [4 << 20] }]);
 * const dev = { physical: Float64Array.of(4 << 20), length: Float64Array.of(8 << 20),
 *   chunk: Uint32Array.of(0), copy: Uint8Array.of(0), count: 1 };
 * const gaps = new GapList();
 * gaps.add((1 << 30) + (4 << 20), 4 << 20);
 * const sb = { devTotalBytes: 16 << 20 } as BtrfsSuperblock;
 * assert.deepStrictEqual([...freeRanges(sb, map, dev, gaps)], [
 *   { offset: 1 << 20, length: 3 << 20 },
 *   { offset: 8 << 20, length: 8 << 20 },
 * ]);
 * ```
 */
export function* freeRanges(
  sb: BtrfsSuperblock,
  map: ChunkMap,
  dev: DevExtents,
  gaps: GapList,
): Generator<FreeRange> {
  const keep = reserved(sb.devTotalBytes);
  let runStart = -1;
  let runEnd = -1;
  // Pieces of [s, e) outside the reserved ranges, merged with the run.
  function* add(s: number, e: number): Generator<FreeRange> {
    for (const [rs, re] of keep) {
      if (e <= s) return;
      if (re <= s || rs >= e) continue;
      if (rs > s) yield* piece(s, rs);
      s = Math.max(s, re);
    }
    if (s < e) yield* piece(s, e);
  }
  function* piece(s: number, e: number): Generator<FreeRange> {
    if (s === runEnd) {
      runEnd = e;
      return;
    }
    if (runStart >= 0) yield { offset: runStart, length: runEnd - runStart };
    runStart = s;
    runEnd = e;
  }
  let cursor = 0;
  for (let k = 0; k < dev.count; k++) {
    const phys = dev.physical[k];
    yield* add(cursor, phys);
    const c = dev.chunk[k];
    const first = map.logical[c];
    const end = first + map.length[c];
    const base = map.physical(c, first, dev.copy[k]);
    for (let g = gaps.firstEndingAfter(first); g < gaps.count; g++) {
      const gs = gaps.start[g];
      if (gs >= end) break;
      const ge = Math.min(gs + gaps.length[g], end);
      yield* add(base + (gs - first), base + (ge - first));
    }
    cursor = phys + dev.length[k];
  }
  yield* add(cursor, sb.devTotalBytes);
  if (runStart >= 0) yield { offset: runStart, length: runEnd - runStart };
}
