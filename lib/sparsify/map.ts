/**
 * The free-space map of a disk read at random: the partition table, then
 * each partition's filesystem, checked before anything is called free.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "../reader/image.ts";
import { type DiskReader, type Partition, RegionReader } from "./_region.ts";
import {
  analyzeContents,
  type FilesystemAnalysis,
  rangesOf,
} from "./filesystem.ts";
import { readDiskLayout } from "./partitions.ts";
import type { FreeRange, RegionReport, SparsifyReport } from "./report.ts";

/**
 * The free space of a disk: what was found, and the free ranges.
 *
 * @example Count what a map drops
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { mapFreeSpace } from "./map.ts";
 * // A bare swap area: a 4 KiB header page, the rest free.
 * const disk = new Uint8Array(1 << 20);
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const map = await mapFreeSpace(new BytesSource(disk));
 * assert.deepStrictEqual(await Array.fromAsync(map.ranges()), [{ offset: 4096, length: (1 << 20) - 4096 }]);
 * assert.strictEqual(map.report.freeBytes, (1 << 20) - 4096);
 * ```
 */
export interface FreeSpaceMap {
  /** What was found on the disk. */
  readonly report: SparsifyReport;
  /**
   * The free ranges in disk order, not overlapping. The filesystems'
   * bitmaps are read again (and checked again) as the ranges are listed,
   * so memory stays small whatever the disk size.
   *
   * @throws {IoError} `CHANGED` when the metadata changed since the map
   * was made; the source's own errors (an IoError, or a Qcow2Error from an
   * image) as they are.
   */
  ranges(): AsyncGenerator<FreeRange>;
}

/** One partition: its report, and the analysis when it is mapped. */
export interface RegionResult {
  /** The report line. */
  report: RegionReport;
  /** The analysis of a mapped partition. */
  analysis?: FilesystemAnalysis;
}

/** A region reader for a partition (length unknown when `Infinity`). */
export function regionOf(disk: DiskReader, p: Partition): RegionReader {
  return new RegionReader(
    disk,
    p.offset,
    Number.isFinite(p.length) ? p.length : undefined,
  );
}

/**
 * Recognizes and analyzes one partition. Refusals become an `untouched`
 * report saying why; other errors (I/O) are thrown.
 *
 * @param disk The disk.
 * @param p The partition.
 * @returns The report and, when mapped, the analysis.
 */
export async function analyzeRegion(
  disk: DiskReader,
  p: Partition,
): Promise<RegionResult> {
  const base = {
    partition: p.number,
    offset: p.offset,
    length: p.length,
    ...(p.type ? { type: p.type } : {}),
    freeBytes: 0,
  };
  if (disk.size !== undefined && p.offset + p.length > disk.size) {
    return {
      report: {
        ...base,
        found: "unknown",
        status: "untouched",
        reason: `partition ends at byte ${
          p.offset + p.length
        }, past the end of the disk (${disk.size} bytes): truncated`,
      },
    };
  }
  const { report, analysis } = await analyzeContents(regionOf(disk, p), p);
  return {
    report: {
      ...base,
      ...report,
      ...(analysis?.volumes ? { volumes: analysis.volumes } : {}),
    },
    analysis,
  };
}

/** A source or an opened image as the analysis reads it. */
export function diskReaderOf(
  source: RandomAccessSource | GuestImage,
): DiskReader {
  if ("readAt" in source) {
    const size = source.virtualSize;
    return {
      size,
      read: (offset, length) =>
        offset >= size
          ? Promise.resolve(new Uint8Array(0))
          : source.readAt(offset, Math.min(length, size - offset)),
    };
  }
  const into = source.readInto?.bind(source);
  return {
    size: source.size,
    read: (o, n) => source.read(o, n),
    ...(into
      ? {
        readInto: (o: number, buffer: Uint8Array) =>
          o >= source.size ? Promise.resolve(0) : into(
            o,
            buffer.subarray(0, Math.min(buffer.length, source.size - o)),
          ),
      }
      : {}),
  };
}

/**
 * Reads a disk's partition table and filesystems, at random, and returns
 * what was found with the free ranges. Only metadata is read: the table,
 * superblocks, group descriptors, block bitmaps and inode tables, and the
 * extent tree, indirect and attribute blocks of files (for a 1 GiB ext4
 * made with mke2fs's defaults, about 16 MiB, nearly all inode tables). A
 * filesystem that fails any check is reported as `untouched` and has no
 * free ranges.
 *
 * @param source A raw disk (file, HTTP with Range requests, buffer), or an
 * opened image whose guest view is the disk.
 * @returns The map.
 * @throws {IoError} When the source cannot be read (a Qcow2Error when it
 * is an image whose content is bad).
 *
 * @example What is on a disk with no table and no filesystem
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { mapFreeSpace } from "./map.ts";
 * const { report } = await mapFreeSpace(new BytesSource(new Uint8Array(65536)));
 * assert.strictEqual(report.table, "none");
 * assert.strictEqual(report.regions[0].found, "unknown");
 * assert.strictEqual(report.freeBytes, 0);
 * ```
 */
export async function mapFreeSpace(
  source: RandomAccessSource | GuestImage,
): Promise<FreeSpaceMap> {
  const disk = diskReaderOf(source);
  const layout = await readDiskLayout(disk);
  const results: RegionResult[] = [];
  for (const p of layout.partitions) {
    results.push(await analyzeRegion(disk, p));
  }
  const report: SparsifyReport = {
    table: layout.table,
    ...(layout.problem ? { tableProblem: layout.problem } : {}),
    ...(layout.incomplete ? { tableIncomplete: layout.incomplete } : {}),
    regions: results.map((r) => r.report),
    freeBytes: results.reduce((n, r) => n + r.report.freeBytes, 0),
  };
  return {
    report,
    async *ranges() {
      for (const { report: r, analysis } of results) {
        if (!analysis) continue;
        const region = regionOf(disk, {
          number: r.partition,
          offset: r.offset,
          length: r.length,
          type: "",
        });
        for await (const f of rangesOf(analysis, region)) {
          yield { offset: r.offset + f.offset, length: f.length };
        }
      }
    },
  };
}
