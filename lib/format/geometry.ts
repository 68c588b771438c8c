/**
 * Sizes derived from a header: cluster size, entries per table, the L1
 * size a virtual size needs, and the virtual size itself.
 *
 * Virtual size, the one definition every reader and tool uses: QEMU counts
 * a disk in whole 512-byte sectors. A raw image's disk is its file size
 * rounded *up* to a sector (the bytes past the end of the file read as
 * zeros); a qcow2 image's disk is its header `size` (or a snapshot's
 * `disk_size`) rounded *down* to a sector, the bytes past it being
 * unreachable.
 *
 * @module
 */

import { INCOMPAT, SUBCLUSTERS_PER_CLUSTER } from "./constants.ts";
import type { Qcow2Header } from "./header.ts";
import { l2Entries, l2EntrySize } from "./l2.ts";
import { refcountBlockEntries } from "./refcount.ts";

/**
 * Table geometry of an image.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader } from "./header.ts";
 * import { geometryOf } from "./geometry.ts";
 * const g = geometryOf(defaultHeader({ size: 1 << 30 }));
 * assert(g.clusterSize === 65536 && g.l2Entries === 8192);
 * ```
 */
export interface Geometry {
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Whether L2 entries are extended (128-bit). */
  extendedL2: boolean;
  /** Bytes per L2 entry. */
  l2EntrySize: number;
  /** Entries per L2 table. */
  l2Entries: number;
  /** Subcluster size in bytes (the cluster size without extended L2). */
  subclusterSize: number;
  /** log2 of the refcount width. */
  refcountOrder: number;
  /** Entries per refcount block. */
  refcountBlockEntries: number;
  /** Whether guest data lives in an external data file. */
  dataFile: boolean;
}

/**
 * Derives the table geometry from a header.
 *
 * @param header A parsed (and validated) header.
 * @returns Its geometry.
 *
 * @example 2 MiB clusters with extended L2
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader } from "./header.ts";
 * import { geometryOf } from "./geometry.ts";
 * const h = defaultHeader({ size: 0, clusterBits: 21 });
 * h.incompatibleFeatures |= 16n;
 * assert(geometryOf(h).subclusterSize === 65536);
 * ```
 */
export function geometryOf(header: Qcow2Header): Geometry {
  const extendedL2 =
    (header.incompatibleFeatures & INCOMPAT.EXTENDED_L2) !== 0n;
  const clusterSize = 2 ** header.clusterBits;
  return {
    clusterBits: header.clusterBits,
    clusterSize,
    extendedL2,
    l2EntrySize: l2EntrySize(extendedL2),
    l2Entries: l2Entries(header.clusterBits, extendedL2),
    subclusterSize: extendedL2
      ? clusterSize / SUBCLUSTERS_PER_CLUSTER
      : clusterSize,
    refcountOrder: header.refcountOrder,
    refcountBlockEntries: refcountBlockEntries(
      header.clusterBits,
      header.refcountOrder,
    ),
    dataFile: (header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n,
  };
}

/**
 * Number of L1 entries needed to map a virtual size.
 *
 * @param size Virtual size in bytes.
 * @param clusterBits log2 of the cluster size.
 * @param extendedL2 Whether L2 entries are extended.
 * @returns `ceil(size / (cluster_size * l2_entries))`.
 *
 * @example 1 GiB with 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { l1SizeFor } from "./geometry.ts";
 * assert(l1SizeFor(2 ** 30, 16, false) === 2);
 * ```
 */
export function l1SizeFor(
  size: number,
  clusterBits: number,
  extendedL2: boolean,
): number {
  const span = 2 ** clusterBits * l2Entries(clusterBits, extendedL2);
  return Math.ceil(size / span);
}

/** QEMU's sector: virtual sizes are whole multiples of it. *
 * @example The virtual size QEMU gives a raw file of 1000 bytes
 * ```ts
 * import assert from "node:assert";
 * import { rawVirtualSize, SECTOR_SIZE } from "./geometry.ts";
 * assert.strictEqual(rawVirtualSize(1000), 2 * SECTOR_SIZE);
 * ```
 */
export const SECTOR_SIZE = 512;

/**
 * Virtual size of a raw image: its file size rounded up to a whole sector,
 * as QEMU opens it (the tail of the last sector reads as zeros).
 *
 * @param fileSize Bytes in the file.
 * @returns The guest disk size.
 *
 * @example A 1000-byte file is a 1024-byte disk
 * ```ts
 * import assert from "node:assert";
 * import { rawVirtualSize } from "./geometry.ts";
 * assert.strictEqual(rawVirtualSize(1000), 1024);
 * ```
 */
export function rawVirtualSize(fileSize: number): number {
  return Math.ceil(fileSize / SECTOR_SIZE) * SECTOR_SIZE;
}

/**
 * Virtual size of a qcow2 image from its header `size` (or a snapshot's
 * disk size): rounded down to a whole sector, as QEMU opens it.
 *
 * @param size The size field.
 * @returns The guest disk size.
 *
 * @example A header size of 1000 bytes is a 512-byte disk
 * ```ts
 * import assert from "node:assert";
 * import { qcow2VirtualSize } from "./geometry.ts";
 * assert.strictEqual(qcow2VirtualSize(1000), 512);
 * ```
 */
export function qcow2VirtualSize(size: number): number {
  return Math.floor(size / SECTOR_SIZE) * SECTOR_SIZE;
}
