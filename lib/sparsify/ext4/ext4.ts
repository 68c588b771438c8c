/**
 * The ext2/3/4 module. Nothing is called free until every piece of
 * metadata that could contradict it has been read and agrees:
 *
 * - the superblock (checksum, state, features, geometry against the
 *   partition);
 * - every group descriptor (checksum, locations), read in bounded windows
 *   and kept only as the few numbers a group needs;
 * - every block bitmap (checksum, metadata marked in use, free blocks
 *   equal to its descriptor's count), and the superblock's free count
 *   equal to the groups' sum;
 * - every inode table: each block a possibly-live inode references (data,
 *   extent tree, indirect and attribute blocks) must be marked in use.
 *
 * Any disagreement leaves the filesystem as it is, and the refusal says
 * where. Then the blocks the bitmaps mark free are listed.
 *
 * @module
 */

import { IoError } from "../../format/errors.ts";
import { Refusal, type RegionReader } from "../_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "../filesystem.ts";
import type { FreeRange } from "../report.ts";
import {
  type Ext4Fs,
  GroupBitmaps,
  MAX_BATCH_BYTES,
  readBlocks,
} from "./bitmaps.ts";
import {
  descriptorBlock,
  descriptorBlockCount,
  emptyGroupTable,
  groupBlocks,
  groupFirstBlock,
  metadataExtents,
  parseGroupDescriptors,
} from "./groups.ts";
import { walkInodes } from "./inodes.ts";
import { ReferenceCheck } from "./references.ts";
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

/**
 * The superblock, then the group descriptors window by window: each
 * window is checked before the next is read, so that a superblock claiming
 * a million groups costs the reads up to the first bad descriptor.
 */
async function loadFs(
  region: RegionReader,
  raw: Uint8Array,
): Promise<Ext4Fs> {
  const sb = parseExt4Superblock(raw, region.length);
  const n = descriptorBlockCount(sb);
  const table = emptyGroupTable();
  const batch = Math.max(1, MAX_BATCH_BYTES / sb.blockSize);
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
    const bytes = await readBlocks(
      region,
      sb,
      first,
      count,
      "group descriptors",
      true,
    );
    parseGroupDescriptors(sb, bytes, table);
    i += count;
  }
  return { sb, table, meta: metadataExtents(sb, table), digests: [] };
}

/**
 * Every bitmap, checked, with the superblock's free count against their
 * sum; returns the free blocks.
 */
async function countFreeBlocks(
  region: RegionReader,
  fs: Ext4Fs,
): Promise<number> {
  const bitmaps = new GroupBitmaps(region, fs);
  let free = 0;
  for (let g = 0; g < fs.sb.groupCount; g++) {
    free += (await bitmaps.get(g)).free;
  }
  if (free !== fs.sb.freeBlocksCount) {
    throw new Refusal(
      `the superblock counts ${fs.sb.freeBlocksCount} free blocks, its groups ${free}`,
    );
  }
  return free;
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
  const bitmaps = new GroupBitmaps(region, fs);
  let runStart = -1; // first block of the pending free run
  let runEnd = -1;
  try {
    for (let group = 0; group < sb.groupCount; group++) {
      const { bits } = await bitmaps.get(group);
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
    throw new IoError(
      "CHANGED",
      `Cannot sparsify: the ext4 metadata changed since it was checked (${err.message})`,
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
      true,
    );
    flavor = ext4Flavor(raw);
    const fs = await loadFs(region, raw);
    const free = await countFreeBlocks(region, fs);
    const refs = new ReferenceCheck(fs.sb, new GroupBitmaps(region, fs, true));
    await walkInodes(region, fs.sb, fs.table, refs);
    await refs.flush();
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

/**
 * ext2, ext3 and ext4: free blocks by the block bitmaps, cross-checked
 * against the descriptors, the superblock and every possibly-live inode.
 */
export const ext4Module: FilesystemModule = {
  name: "ext4",
  headBytes: EXT4_SUPERBLOCK_OFFSET + EXT4_SUPERBLOCK_SIZE,
  detect: isExt4,
  analyze: analyzeExt4,
};
