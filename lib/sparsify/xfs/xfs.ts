/**
 * The XFS module (v4 and v5): free space is what every allocation group's
 * free-space btree by block lists, once all of this agrees:
 *
 * - the superblock (geometry against the partition, feature bits, v5 CRC)
 *   and every AG's superblock copy;
 * - the internal log, read whole, is clean (an unmount record at the head);
 * - each AG's headers, the by-count tree listing exactly the same extents,
 *   and the AGF's free block count and longest extent;
 * - nothing found in use touches a free extent: AG headers, the free list,
 *   every btree block, reverse-map and refcount records, inode chunks, the
 *   log, and the blocks of both forks of every inode in use (and their
 *   block map btrees), every inode of every chunk being read;
 * - every inode a directory names lies in a chunk the inode btrees list;
 * - with counters that are not lazy, the superblock's free and inode
 *   counts.
 *
 * The free extents are kept (8 bytes each, at most 4 Mi of them), so the
 * ranges listed are exactly those checked.
 *
 * @module
 */

import { Refusal, type RegionReader } from "../_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "../filesystem.ts";
import type { FreeRange } from "../report.ts";
import { type AgChunks, MAX_CHUNKS, readAg } from "./ag.ts";
import { InodeMap, type InodeTotals, readAgInodes } from "./inodes.ts";
import { checkLogClean } from "./log.ts";
import { XfsReader } from "./reader.ts";
import {
  checkSecondary,
  isXfs,
  parseXfsSuperblock,
  type XfsSuperblock,
} from "./superblock.ts";

/** Bytes `detect` looks at. */
const HEAD = 4;
/** Largest sector the superblock may be in. */
const MAX_SECTOR = 32768;

function describe(sb: XfsSuperblock, totals: InodeTotals): string {
  const features = [
    [sb.finobt, "finobt"],
    [sb.rmapbt, "rmapbt"],
    [sb.reflink, "reflink"],
    [sb.sparseInodes, "sparse inodes"],
  ].filter(([on]) => on).map(([, name]) => name);
  const bs = sb.blockSize >= 1024
    ? `${sb.blockSize / 1024} KiB`
    : `${sb.blockSize} B`;
  return [
    `v${sb.version}`,
    `${bs} blocks`,
    `${sb.agcount} AG${sb.agcount === 1 ? "" : "s"}`,
    `${totals.inUse} inodes in use`,
    ...features,
  ].join(", ");
}

async function analyzeXfs(region: RegionReader): Promise<FilesystemAnalysis> {
  try {
    const head = await region.read(0, 512, "superblock");
    const sectSize = new DataView(head.buffer, head.byteOffset).getUint16(102);
    const raw = sectSize > 512 && sectSize <= MAX_SECTOR
      ? await region.read(0, sectSize, "superblock")
      : head;
    const sb = parseXfsSuperblock(raw, region.length);
    const xr = new XfsReader(region, sb);
    for (let agno = 1; agno < sb.agcount; agno++) {
      const copy = await xr.read(
        xr.byteOf(agno, 0),
        sb.sectSize,
        `superblock copy in AG ${agno}`,
      );
      checkSecondary(sb, raw, copy, agno);
    }
    await checkLogClean(xr);

    const chunks: AgChunks[] = [];
    let freeblks = 0;
    let fdblocks = 0;
    let icount = 0;
    let ifree = 0;
    let chunkCount = 0;
    for (let agno = 0; agno < sb.agcount; agno++) {
      const ag = await readAg(xr, agno, MAX_CHUNKS - chunkCount);
      chunks.push(ag.chunks);
      chunkCount += ag.chunks.startino.length;
      freeblks += ag.freeblks;
      fdblocks += ag.freeblks + ag.flcount + ag.btreeblks;
      icount += ag.inodes;
      ifree += ag.freeInodes;
    }
    const [logAg, logBno] = xr.splitFsb(sb.logstart, "log");
    xr.used(logAg, logBno, sb.logblocks, "the log");
    if (!sb.lazyCount) {
      if (
        sb.fdblocks !== fdblocks || sb.icount !== icount || sb.ifree !== ifree
      ) {
        throw new Refusal(
          `superblock counts ${sb.fdblocks} free blocks and ${sb.icount} inodes (${sb.ifree} free), the AGs ${fdblocks} and ${icount} (${ifree} free)`,
        );
      }
    }

    const map = new InodeMap(xr, chunks);
    for (const [name, ino] of sb.namedInodes) {
      if (!map.has(ino)) {
        throw new Refusal(
          `the ${name} inode ${ino} lies in no chunk the inode btrees list`,
        );
      }
    }
    const totals: InodeTotals = { inUse: 0, directories: 0 };
    for (let agno = 0; agno < sb.agcount; agno++) {
      await readAgInodes(xr, agno, chunks[agno], map, totals);
    }
    const free = xr.free;
    return {
      found: "xfs",
      detail: describe(sb, totals),
      freeBytes: freeblks * sb.blockSize,
      ranges: () => freeRanges(xr, free),
    };
  } catch (err) {
    if (err instanceof Refusal) err.found ??= "xfs";
    throw err;
  }
}

/** The checked free extents as byte ranges, merged where they touch. */
async function* freeRanges(
  xr: XfsReader,
  free: XfsReader["free"],
): AsyncGenerator<FreeRange> {
  const bs = xr.sb.blockSize;
  let start = -1;
  let end = -1;
  for (let agno = 0; agno < free.length; agno++) {
    const { starts, lens } = free[agno];
    for (let i = 0; i < starts.length; i++) {
      const s = xr.byteOf(agno, starts[i]);
      const e = s + lens[i] * bs;
      if (s === end) {
        end = e;
        continue;
      }
      if (start >= 0) yield { offset: start, length: end - start };
      start = s;
      end = e;
    }
  }
  if (start >= 0) yield { offset: start, length: end - start };
}

/** XFS v4 and v5: free space by the free-space btrees, cross-checked. */
export const xfsModule: FilesystemModule = {
  name: "xfs",
  headBytes: HEAD,
  detect: isXfs,
  analyze: analyzeXfs,
};
