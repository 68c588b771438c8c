/**
 * What a filesystem module provides, and the modules there are. A module
 * recognizes its filesystem from the first bytes of a partition, reads the
 * metadata it needs through a {@linkcode RegionReader}, checks it, and
 * lists the free ranges; anything it does not trust ends in a `Refusal`
 * and the partition is copied as it is. Adding XFS or FAT means
 * adding a module here.
 *
 * @module
 */

import type { RegionReader } from "./_region.ts";
import type { FreeRange } from "./report.ts";
import { ext4Module } from "./ext4/ext4.ts";
import { swapModule } from "./swap.ts";
import { ntfsModule } from "./ntfs/ntfs.ts";

/** The result of a module's analysis of one partition. */
export interface FilesystemAnalysis {
  /** What was found: `ext4`, `swap`. */
  found: string;
  /** Details for the report (block size, groups, features). */
  detail: string;
  /** Bytes that {@linkcode FilesystemAnalysis.ranges} will list. */
  freeBytes: number;
  /**
   * The free ranges, relative to the partition, in order and not
   * overlapping. Metadata is read again through `region` (the same reads
   * as the analysis made) and checked again.
   *
   * @throws {Error} When the metadata changed since the analysis.
   */
  ranges(region: RegionReader): AsyncGenerator<FreeRange>;
}

/** A filesystem kind that can be mapped. */
export interface FilesystemModule {
  /** Name in reports. */
  readonly name: string;
  /** Bytes from the start of a partition that `detect` looks at. */
  readonly headBytes: number;
  /** Whether a partition starting with `head` holds this filesystem. */
  detect(head: Uint8Array): boolean;
  /**
   * Reads and checks the metadata.
   *
   * @throws {Refusal} To leave the partition as it is, saying why.
   */
  analyze(region: RegionReader): Promise<FilesystemAnalysis>;
}

/** The filesystems that are mapped, tried in this order. */
export const FILESYSTEMS: readonly FilesystemModule[] = [
  ext4Module,
  swapModule,
  ntfsModule,
];

/**
 * Signatures of filesystems and containers that are recognized but not
 * mapped, so that the report can name them: `[name, offset, bytes]`.
 */
export const KNOWN_SIGNATURES: ReadonlyArray<[string, number, string]> = [
  ["xfs", 0, "XFSB"],
  ["btrfs", 0x10040, "_BHRfS_M"],
  ["vfat", 0x52, "FAT32   "],
  ["vfat", 0x36, "FAT16   "],
  ["vfat", 0x36, "FAT12   "],
  ["exfat", 3, "EXFAT   "],
  ["LUKS", 0, "LUKS\xba\xbe"],
  ["LVM2 PV", 0x218, "LVM2 001"],
  ["iso9660", 0x8001, "CD001"],
];

/** Bytes of a partition's start needed to recognize anything listed here. */
export const HEAD_BYTES: number = Math.max(
  ...FILESYSTEMS.map((m) => m.headBytes),
  ...KNOWN_SIGNATURES.map(([, at, sig]) => at + sig.length),
);

/**
 * Names what a partition holds when no module maps it.
 *
 * @param head The partition's first bytes.
 * @returns The name of a recognized signature, or `unknown`.
 */
export function recognize(head: Uint8Array): string {
  for (const [name, at, sig] of KNOWN_SIGNATURES) {
    if (head.length < at + sig.length) continue;
    let ok = true;
    for (let i = 0; i < sig.length && ok; i++) {
      ok = head[at + i] === sig.charCodeAt(i);
    }
    if (ok) return name;
  }
  return "unknown";
}
