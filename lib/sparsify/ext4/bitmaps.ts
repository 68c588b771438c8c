/**
 * The block bitmaps of a checked ext2/3/4 filesystem, group by group. A
 * bitmap is read (several adjacent ones at a time, as flex_bg lays them
 * out) and checked before it is used: its checksum (metadata_csum), the
 * metadata of its group marked in use, and its free blocks counted exactly
 * as its descriptor counts them. A group with BLOCK_UNINIT (and descriptor
 * checksums) has no bitmap on disk: its used blocks are computed, as the
 * kernel does, from the metadata that lies in it.
 *
 * The first pass over the groups records a digest of each bitmap; every
 * later read of it (the free ranges, the inode cross-check) must find the
 * same bytes, or the filesystem changed under the analysis.
 *
 * @module
 */

import { crc32cRaw } from "../../bytes/crc.ts";
import { hex, Refusal, type RegionReader } from "../_region.ts";
import {
  BG_BLOCK_UNINIT,
  bitmapChecksum,
  groupBlocks,
  groupFirstBlock,
  type GroupTable,
  hasGroupChecksums,
} from "./groups.ts";
import { type Ext4Superblock, has, RO_COMPAT } from "./superblock.ts";

/** Largest single read of descriptor, bitmap or inode table blocks, in bytes. */
export const MAX_BATCH_BYTES = 1 << 20;

/** Zero bits in each byte value. */
const ZERO_BITS = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let i = 0; i < 8; i++) if (!(b & (1 << i))) n++;
  return n;
});

/** A filesystem whose superblock and descriptors are checked. */
export interface Ext4Fs {
  sb: Ext4Superblock;
  table: GroupTable;
  /** Metadata extents, `[first, end)` pairs sorted by first block. */
  meta: Float64Array;
  /** Digest of each group's effective bitmap, recorded by the first pass. */
  digests: number[];
}

/** One group's effective bitmap, checked. */
export interface GroupBitmap {
  /** Bit `i` set: block `groupFirstBlock + i` is in use. */
  bits: Uint8Array;
  /** Free blocks in the group (its descriptor's count). */
  free: number;
}

/** Reads blocks `[first, first + count)` of the filesystem. */
export function readBlocks(
  region: RegionReader,
  sb: Ext4Superblock,
  first: number,
  count: number,
  what: string,
  once = false,
): Promise<Uint8Array> {
  return region.read(
    first * sb.blockSize,
    count * sb.blockSize,
    what,
    once,
  );
}

/** Index of the first extent of `meta` ending after `block`. */
function firstEndingAfter(meta: Float64Array, block: number): number {
  let lo = 0;
  let hi = meta.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (meta[2 * mid + 1] <= block) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Whether group `g` has no bitmap on disk (BLOCK_UNINIT, with descriptor checksums). */
export function blockUninit(fs: Ext4Fs, g: number): boolean {
  return hasGroupChecksums(fs.sb) &&
    (fs.table.flags[g] & BG_BLOCK_UNINIT) !== 0;
}

/**
 * Checks the metadata blocks inside group `g` against its bitmap: marked in
 * a computed bitmap, required in a read one.
 */
function markMetadata(fs: Ext4Fs, g: number, bits: Uint8Array): void {
  const { sb, meta } = fs;
  const start = groupFirstBlock(sb, g);
  const end = start + groupBlocks(sb, g);
  const computed = blockUninit(fs, g);
  for (
    let k = firstEndingAfter(meta, start);
    k < meta.length / 2 && meta[2 * k] < end;
    k++
  ) {
    const from = Math.max(meta[2 * k], start) - start;
    const to = Math.min(meta[2 * k + 1], end) - start;
    for (let i = from; i < to; i++) {
      if (bits[i >> 3] & (1 << (i & 7))) continue;
      if (computed) {
        bits[i >> 3] |= 1 << (i & 7);
      } else {
        throw new Refusal(
          `block bitmap of group ${g} marks metadata block ${start + i} free`,
        );
      }
    }
  }
}

/** The free blocks in group `g`'s bitmap, which must be its descriptor's count. */
function countFree(fs: Ext4Fs, g: number, bits: Uint8Array): number {
  const blocks = groupBlocks(fs.sb, g);
  let free = 0;
  const whole = blocks >> 3;
  for (let i = 0; i < whole; i++) free += ZERO_BITS[bits[i]];
  for (let i = whole << 3; i < blocks; i++) {
    if (!(bits[i >> 3] & (1 << (i & 7)))) free++;
  }
  if (free !== fs.table.freeBlocks[g]) {
    throw new Refusal(
      `block bitmap of group ${g} has ${free} free blocks, its descriptor counts ${
        fs.table.freeBlocks[g]
      }`,
    );
  }
  return free;
}

/**
 * The checked bitmaps of one filesystem, read through one region. Memory:
 * one batch of at most {@linkcode MAX_BATCH_BYTES}.
 */
export class GroupBitmaps {
  readonly #region: RegionReader;
  readonly #fs: Ext4Fs;
  readonly #once: boolean;
  #batchFirst = -1;
  #batch: Uint8Array = new Uint8Array(0);

  /**
   * @param region The filesystem's region.
   * @param fs The checked filesystem.
   * @param once Whether the reads are needed only during the analysis (a
   * stream need not keep them).
   */
  constructor(region: RegionReader, fs: Ext4Fs, once = false) {
    this.#region = region;
    this.#fs = fs;
    this.#once = once;
  }

  /**
   * Group `g`'s bitmap, checked, and compared with the digest of the first
   * pass (or recorded as it, on the first pass).
   *
   * @throws {Refusal} When a check fails or the bitmap changed.
   */
  async get(g: number): Promise<GroupBitmap> {
    const fs = this.#fs;
    const { sb, table } = fs;
    const bs = sb.blockSize;
    let bits: Uint8Array;
    if (blockUninit(fs, g)) {
      bits = new Uint8Array(bs);
    } else {
      const b = table.blockBitmap[g];
      const inBatch = this.#batchFirst >= 0 && b >= this.#batchFirst &&
        b < this.#batchFirst + this.#batch.length / bs;
      if (!inBatch) {
        const maxBatch = Math.max(1, MAX_BATCH_BYTES / bs);
        let count = 1;
        while (
          count < maxBatch && g + count < sb.groupCount &&
          !blockUninit(fs, g + count) &&
          table.blockBitmap[g + count] === b + count
        ) count++;
        this.#batch = await readBlocks(
          this.#region,
          sb,
          b,
          count,
          `block bitmap of group ${g}`,
          this.#once,
        );
        this.#batchFirst = b;
      }
      const at = (b - this.#batchFirst) * bs;
      bits = this.#batch.slice(at, at + bs);
      if (has(sb.roCompat, RO_COMPAT.METADATA_CSUM)) {
        const actual = bitmapChecksum(sb, bits);
        if (actual !== table.bitmapCsum[g]) {
          throw new Refusal(
            `block bitmap of group ${g} (block ${b}) checksum ${
              hex(table.bitmapCsum[g])
            } does not match its contents (${hex(actual)})`,
          );
        }
      }
    }
    markMetadata(fs, g, bits);
    const free = countFree(fs, g, bits);
    const digest = crc32cRaw(0xffffffff, bits);
    if (fs.digests[g] === undefined) fs.digests[g] = digest;
    else if (fs.digests[g] !== digest) {
      throw new Refusal(
        `block bitmap of group ${g} changed since it was checked`,
      );
    }
    return { bits, free };
  }
}
