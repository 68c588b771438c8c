/**
 * The ext2/3/4 module: the superblock, every group descriptor and every
 * block bitmap are read and checked before anything is called free; then
 * the blocks the bitmaps mark free are listed. A group with BLOCK_UNINIT
 * (and descriptor checksums) has no bitmap on disk: its used blocks are
 * computed, as the kernel does, from the metadata that lies in it.
 *
 * Checks besides the checksums: every group's bitmap marks all metadata in
 * the group (superblock and GDT copies, reserved GDT, bitmaps, inode
 * tables) used, and counts exactly the free blocks its descriptor records.
 *
 * @module
 */

import { hex, Refusal, type RegionReader } from "../_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "../filesystem.ts";
import type { FreeRange } from "../report.ts";
import {
  BG_BLOCK_UNINIT,
  bitmapChecksum,
  descriptorBlock,
  descriptorBlockCount,
  groupBlocks,
  groupFirstBlock,
  type GroupTable,
  hasGroupChecksums,
  metadataExtents,
  parseGroupDescriptors,
} from "./groups.ts";
import {
  COMPAT,
  EXT4_SUPERBLOCK_OFFSET,
  EXT4_SUPERBLOCK_SIZE,
  ext4Flavor,
  type Ext4Superblock,
  has,
  INCOMPAT,
  isExt4,
  parseExt4Superblock,
  RO_COMPAT,
} from "./superblock.ts";

/** Largest single read of descriptor or bitmap blocks, in bytes. */
const MAX_BATCH_BYTES = 1 << 20;

/** Zero bits in each byte value. */
const ZERO_BITS = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let i = 0; i < 8; i++) if (!(b & (1 << i))) n++;
  return n;
});

/** A checked filesystem: what the bitmap pass needs. */
interface Ext4Fs {
  sb: Ext4Superblock;
  table: GroupTable;
  /** Metadata extents, `[first, end)` pairs sorted by first block. */
  meta: Float64Array;
}

/** One group's effective bitmap, checked. */
interface GroupBitmap {
  group: number;
  /** Bit `i` set: block `groupFirstBlock + i` is in use. */
  bits: Uint8Array;
  free: number;
}

/** Reads blocks `[first, first + count)` of the filesystem. */
function readBlocks(
  region: RegionReader,
  sb: Ext4Superblock,
  first: number,
  count: number,
  what: string,
): Promise<Uint8Array> {
  return region.read(first * sb.blockSize, count * sb.blockSize, what);
}

async function loadFs(
  region: RegionReader,
  raw: Uint8Array,
): Promise<Ext4Fs> {
  const sb = parseExt4Superblock(raw, region.length);
  const n = descriptorBlockCount(sb);
  const bs = sb.blockSize;
  const bytes = new Uint8Array(n * bs);
  const batch = Math.max(1, MAX_BATCH_BYTES / bs);
  for (let i = 0; i < n;) {
    const first = descriptorBlock(sb, i);
    let count = 1;
    while (
      i + count < n && count < batch &&
      descriptorBlock(sb, i + count) === first + count
    ) count++;
    if (first + count > sb.blocksCount) {
      throw new Refusal(
        `group descriptor block ${first} lies outside the filesystem`,
      );
    }
    bytes.set(
      await readBlocks(region, sb, first, count, "group descriptors"),
      i * bs,
    );
    i += count;
  }
  const table = parseGroupDescriptors(sb, bytes);
  return { sb, table, meta: metadataExtents(sb, table) };
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

function uninit(fs: Ext4Fs, g: number): boolean {
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
  for (
    let k = firstEndingAfter(meta, start);
    k < meta.length / 2 && meta[2 * k] < end;
    k++
  ) {
    const from = Math.max(meta[2 * k], start) - start;
    const to = Math.min(meta[2 * k + 1], end) - start;
    for (let i = from; i < to; i++) {
      if (bits[i >> 3] & (1 << (i & 7))) continue;
      if (uninit(fs, g)) {
        bits[i >> 3] |= 1 << (i & 7);
      } else {
        throw new Refusal(
          `block bitmap of group ${g} marks metadata block ${start + i} free`,
        );
      }
    }
  }
}

/** The free blocks in group `g`'s bitmap, as its descriptor counts them. */
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
 * Every group's bitmap in group order, read (several blocks at a time when
 * they are adjacent, as flex_bg lays them out) or computed, and checked.
 */
async function* groupBitmaps(
  region: RegionReader,
  fs: Ext4Fs,
): AsyncGenerator<GroupBitmap> {
  const { sb, table } = fs;
  const bs = sb.blockSize;
  const csum = has(sb.roCompat, RO_COMPAT.METADATA_CSUM);
  const maxBatch = Math.max(1, MAX_BATCH_BYTES / bs);
  let batchFirst = -1;
  let batch: Uint8Array = new Uint8Array(0);
  for (let g = 0; g < sb.groupCount; g++) {
    let bits: Uint8Array;
    if (uninit(fs, g)) {
      bits = new Uint8Array(bs);
    } else {
      const b = table.blockBitmap[g];
      const inBatch = batchFirst >= 0 && b >= batchFirst &&
        b < batchFirst + batch.length / bs;
      if (!inBatch) {
        let count = 1;
        while (
          count < maxBatch && g + count < sb.groupCount &&
          !uninit(fs, g + count) && table.blockBitmap[g + count] === b + count
        ) count++;
        batch = await readBlocks(
          region,
          sb,
          b,
          count,
          `block bitmap of group ${g}`,
        );
        batchFirst = b;
      }
      const at = (b - batchFirst) * bs;
      bits = batch.slice(at, at + bs);
      if (csum) {
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
    yield { group: g, bits, free };
  }
}

function describe(sb: Ext4Superblock): string {
  const features = [
    [has(sb.compat, COMPAT.HAS_JOURNAL), "journal"],
    [has(sb.incompat, INCOMPAT.BIT64), "64bit"],
    [has(sb.incompat, INCOMPAT.FLEX_BG), "flex_bg"],
    [has(sb.incompat, INCOMPAT.META_BG), "meta_bg"],
    [has(sb.compat, COMPAT.SPARSE_SUPER2), "sparse_super2"],
    [has(sb.roCompat, RO_COMPAT.METADATA_CSUM), "metadata_csum"],
    [
      !has(sb.roCompat, RO_COMPAT.METADATA_CSUM) &&
      has(sb.roCompat, RO_COMPAT.GDT_CSUM),
      "uninit_bg",
    ],
  ].filter(([on]) => on).map(([, name]) => name);
  const blocks = sb.blockSize >= 1024 && sb.blockSize % 1024 === 0
    ? `${sb.blockSize / 1024} KiB`
    : `${sb.blockSize} B`;
  return [
    `${blocks} blocks`,
    `${sb.groupCount} group${sb.groupCount === 1 ? "" : "s"}`,
    ...features,
  ].join(", ");
}

/** Lists free blocks as byte ranges, merging runs across group boundaries. */
async function* freeRanges(
  region: RegionReader,
  fs: Ext4Fs,
): AsyncGenerator<FreeRange> {
  const { sb } = fs;
  const bs = sb.blockSize;
  let runStart = -1; // first block of the pending free run
  let runEnd = -1;
  try {
    for await (const { group, bits } of groupBitmaps(region, fs)) {
      const start = groupFirstBlock(sb, group);
      const blocks = groupBlocks(sb, group);
      let i = 0;
      while (i < blocks) {
        const byte = bits[i >> 3];
        if ((i & 7) === 0 && i + 8 <= blocks && (byte === 0xff || byte === 0)) {
          if (byte === 0) {
            if (runEnd === start + i) runEnd += 8;
            else {
              if (runStart >= 0) {
                yield {
                  offset: runStart * bs,
                  length: (runEnd - runStart) * bs,
                };
              }
              runStart = start + i;
              runEnd = runStart + 8;
            }
          }
          i += 8;
          continue;
        }
        if (!(byte & (1 << (i & 7)))) {
          if (runEnd === start + i) runEnd++;
          else {
            if (runStart >= 0) {
              yield { offset: runStart * bs, length: (runEnd - runStart) * bs };
            }
            runStart = start + i;
            runEnd = runStart + 1;
          }
        }
        i++;
      }
    }
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    throw new Error(
      `Cannot sparsify: the ext4 metadata changed since it was checked (${err.message})`,
      { cause: err },
    );
  }
  if (runStart >= 0) {
    yield { offset: runStart * bs, length: (runEnd - runStart) * bs };
  }
}

async function analyzeExt4(region: RegionReader): Promise<FilesystemAnalysis> {
  let flavor = "ext4";
  try {
    const raw = await region.read(
      EXT4_SUPERBLOCK_OFFSET,
      EXT4_SUPERBLOCK_SIZE,
      "superblock",
    );
    flavor = ext4Flavor(raw);
    const fs = await loadFs(region, raw);
    let free = 0;
    for await (const g of groupBitmaps(region, fs)) free += g.free;
    return {
      found: flavor,
      detail: describe(fs.sb),
      freeBytes: free * fs.sb.blockSize,
      ranges: (r) => freeRanges(r, fs),
    };
  } catch (err) {
    if (err instanceof Refusal) err.found ??= flavor;
    throw err;
  }
}

/** ext2, ext3 and ext4: free blocks by the block bitmaps. */
export const ext4Module: FilesystemModule = {
  name: "ext4",
  headBytes: EXT4_SUPERBLOCK_OFFSET + EXT4_SUPERBLOCK_SIZE,
  detect: isExt4,
  analyze: analyzeExt4,
};
