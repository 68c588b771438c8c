/**
 * The FAT12/16/32 module (EFI system partitions, USB sticks): the boot
 * sector is checked, every copy of the FAT is read and compared, and the
 * directory tree is walked to check that no live file or directory uses a
 * cluster the FAT calls free; then the clusters whose entry is 0 are
 * listed. The reserved area, the FATs and the FAT12/16 root directory are
 * never free. The FSInfo free count (FAT32) is only compared and reported.
 *
 * @module
 */

import { IoError } from "../../format/errors.ts";
import { Refusal, type RegionReader } from "../_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "../filesystem.ts";
import type { FreeRange } from "../report.ts";
import {
  BOOT_SECTOR_BYTES,
  clusterOffset,
  type FatVolume,
  FIRST_CLUSTER,
  fsInfoFreeCount,
  looksLikeFat,
  parseFatBootSector,
} from "./boot.ts";
import {
  FAT_WINDOW_BYTES,
  fatEntry,
  fatWindowCount,
  readFatTable,
  readFatWindow,
} from "./table.ts";
import { type TreeCount, walkTree } from "./walk.ts";

function describe(
  vol: FatVolume,
  tree: TreeCount,
  free: number,
  fsInfoFree: number | undefined,
): string {
  const size = vol.clusterSize >= 1024
    ? `${vol.clusterSize / 1024} KiB`
    : `${vol.clusterSize} B`;
  const { directories: d, files: f } = tree;
  return [
    `${size} clusters`,
    ...(vol.smallFat32
      ? [`FAT32 with ${vol.clusters} clusters (fewer than 65525)`]
      : []),
    `${vol.fats} FAT${vol.fats === 1 ? "" : "s"}`,
    `${d} director${d === 1 ? "y" : "ies"}`,
    `${f} file${f === 1 ? "" : "s"}`,
    ...(vol.label ? [`label "${vol.label}"`] : []),
    ...(fsInfoFree !== undefined && fsInfoFree !== free
      ? [`FSInfo free count ${fsInfoFree} ignored (the FAT has ${free})`]
      : []),
  ].join(", ");
}

/**
 * The free clusters as byte ranges: the first FAT is read again window by
 * window, and every entry must still say free exactly where it did when
 * the tree was checked.
 */
async function* freeRanges(
  region: RegionReader,
  vol: FatVolume,
  freeBits: Uint8Array,
): AsyncGenerator<FreeRange> {
  const end = vol.clusters + FIRST_CLUSTER;
  const perWindow = FAT_WINDOW_BYTES * 8 / vol.type;
  let runStart = -1;
  let runEnd = -1;
  const windows = fatWindowCount(vol);
  for (let w = 0; w < windows; w++) {
    let part: Uint8Array;
    try {
      part = await readFatWindow(region, vol, 0, w);
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      throw changed(err.message);
    }
    const first = w * perWindow;
    const stop = Math.min(end, first + perWindow);
    for (let n = Math.max(FIRST_CLUSTER, first); n < stop; n++) {
      const free = fatEntry(vol.type, part, n, first) === 0;
      if (free !== ((freeBits[n >> 3] & (1 << (n & 7))) !== 0)) {
        throw changed(
          `the entry of cluster ${n} is now ${free ? "" : "not "}free`,
        );
      }
      if (!free) continue;
      if (n === runEnd) {
        runEnd++;
        continue;
      }
      if (runStart >= 0) yield run(vol, runStart, runEnd);
      runStart = n;
      runEnd = n + 1;
    }
  }
  if (runStart >= 0) yield run(vol, runStart, runEnd);
}

function changed(what: string): IoError {
  return new IoError(
    "CHANGED",
    `Cannot sparsify: the FAT changed since it was checked (${what})`,
  );
}

function run(vol: FatVolume, from: number, to: number): FreeRange {
  return {
    offset: clusterOffset(vol, from),
    length: (to - from) * vol.clusterSize,
  };
}

async function analyzeFat(region: RegionReader): Promise<FilesystemAnalysis> {
  let found = "vfat";
  try {
    const boot = await region.read(0, BOOT_SECTOR_BYTES, "boot sector");
    const vol = parseFatBootSector(boot, region.length);
    found = `fat${vol.type}`;
    let fsInfoFree: number | undefined;
    if (vol.fsInfoSector !== 0) {
      fsInfoFree = fsInfoFreeCount(
        await region.read(
          vol.fsInfoSector * vol.bytesPerSector,
          BOOT_SECTOR_BYTES,
          "FSInfo sector",
        ),
      );
    }
    const table = await readFatTable(region, vol);
    const tree = await walkTree(region, vol, table);
    // Only the free set outlives the analysis, not the FAT it came from.
    const { free, freeBits } = table;
    return {
      found,
      detail: describe(vol, tree, free, fsInfoFree),
      freeBytes: free * vol.clusterSize,
      ranges: (r) => freeRanges(r, vol, freeBits),
    };
  } catch (err) {
    if (err instanceof Refusal) err.found ??= found;
    throw err;
  }
}

/** FAT12, FAT16 and FAT32: free clusters by the FAT, checked by the tree. */
export const fatModule: FilesystemModule = {
  name: "vfat",
  headBytes: BOOT_SECTOR_BYTES,
  detect: looksLikeFat,
  analyze: analyzeFat,
};
