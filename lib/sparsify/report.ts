/**
 * What `--sparsify` found on a disk and how much free space it dropped.
 *
 * @module
 */

/**
 * A byte range of the disk that no filesystem uses: it reads as zeros in
 * the converted image.
 *
 * @example The free ranges of a bare swap area
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { mapFreeSpace } from "./map.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a); // a bare swap area, old bytes in its pages
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const map = await mapFreeSpace(new BytesSource(disk));
 * const ranges = await Array.fromAsync(map.ranges());
 * assert.deepStrictEqual(ranges, [{ offset: 4096, length: (1 << 20) - 4096 }]);
 * ```
 */
export interface FreeRange {
  /** Disk offset in bytes. */
  offset: number;
  /** Length in bytes. */
  length: number;
}

/**
 * What was found in a region (a partition, a bare disk, a logical volume)
 * and what became of it.
 *
 * - `mapped`: its free space reads as zeros in the output
 * - `untouched`: it is copied exactly as it is; `reason` says why
 *
 * @example Say why a partition was left as it is
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { mapFreeSpace } from "./map.ts";
 * import type { ContentsReport } from "./report.ts";
 * const disk = new Uint8Array(1 << 20); // no table, no filesystem
 * const { report } = await mapFreeSpace(new BytesSource(disk));
 * const region: ContentsReport = report.regions[0];
 * assert.strictEqual(region.status, "untouched");
 * assert.match(region.reason!, /no filesystem/);
 * ```
 */
export interface ContentsReport {
  /** What is on it: `ext2`, `ext3`, `ext4`, `btrfs`, `xfs`, `ntfs`, `fat12`, `fat16`, `fat32`, `swap`, `LVM2 PV`, a recognized but unhandled kind (`exfat`), or `unknown`. */
  found: string;
  /** Details of what was found (block size, groups, features). */
  detail?: string;
  /** Whether its free space was dropped. */
  status: "mapped" | "untouched";
  /** Why it was left untouched. */
  reason?: string;
  /** Bytes dropped as free. */
  freeBytes: number;
}

/**
 * A logical volume of an LVM2 physical volume: what was found in it, or
 * why its extents were copied as they are.
 *
 * @example List the LVs of a PV
 * ```ts
 * import type { RegionReport } from "./report.ts";
 * function lines(region: RegionReport): string[] {
 *   return (region.volumes ?? []).map((v) =>
 *     v.status === "mapped"
 *       ? `${v.name}: ${v.found}, ${v.freeBytes} bytes free`
 *       : `${v.name}: kept, ${v.reason}`
 *   );
 * }
 * ```
 */
export interface VolumeReport extends ContentsReport {
  /** `vg/lv`. */
  name: string;
  /** Bytes of the LV (all its segments). */
  length: number;
  /** Segments of the LV. */
  segments: number;
}

/**
 * One partition (or the whole disk when there is no partition table): what
 * was found on it and what became of it.
 *
 * @example Say why a partition was left as it is
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { mapFreeSpace } from "./map.ts";
 * const disk = new Uint8Array(1 << 20); // no table, no filesystem
 * const { report } = await mapFreeSpace(new BytesSource(disk));
 * const [region] = report.regions;
 * assert.strictEqual(region.status, "untouched");
 * assert.match(region.reason!, /no filesystem/);
 * ```
 */
export interface RegionReport extends ContentsReport {
  /** Partition number as Linux numbers it (1-4 primary, 5+ logical), or 0 for a bare disk. */
  partition: number;
  /** Disk offset of the partition in bytes. */
  offset: number;
  /** Length of the partition in bytes (the known part of a bare stream). */
  length: number;
  /** Partition type as the table names it (`Linux swap`, `0x83`), when there is a table. */
  type?: string;
  /** The logical volumes of an LVM2 PV that was mapped, in metadata order. */
  volumes?: VolumeReport[];
}

/**
 * Where the space went: the partition table and every partition.
 *
 * @example What a bare swap area reports
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { mapFreeSpace } from "./map.ts";
 * const disk = new Uint8Array(1 << 20);
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const { report } = await mapFreeSpace(new BytesSource(disk));
 * assert.strictEqual(report.table, "none");
 * assert.deepStrictEqual(report.regions.map((r) => [r.found, r.status]), [["swap", "mapped"]]);
 * assert.strictEqual(report.freeBytes, (1 << 20) - 4096);
 * ```
 */
export interface SparsifyReport {
  /** Partition table: `gpt`, `mbr`, or `none` (a bare filesystem, or no table recognized). */
  table: "gpt" | "mbr" | "none";
  /**
   * Why a partition table that was found is not used: the whole disk is
   * then left as it is.
   */
  tableProblem?: string;
  /**
   * Why some partitions of the table were not listed: an MBR's chain of
   * logical partitions reaching past what a stream holds. Their bytes are
   * copied as they are.
   */
  tableIncomplete?: string;
  /** The partitions in disk order (one region for a bare disk). */
  regions: RegionReport[];
  /** Bytes dropped as free, all partitions together. */
  freeBytes: number;
}
