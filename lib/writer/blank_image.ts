/**
 * `blankQcow2()`: the bytes of a new, empty qcow2 image, laid out as
 * `qemu-img create` (QEMU 7.2) lays it out, so that the two files are
 * equal byte for byte.
 *
 * QEMU writes the header in cluster 0, a one-cluster refcount table in
 * cluster 1 and the first refcount block in cluster 2, then grows the
 * image to its size: the L1 table is allocated by its cluster allocator,
 * which places any refcount block the L1 table needs beyond the first one
 * where it finds room, restarting its search each time it adds one, and
 * moves the refcount table to a larger one past everything when the table
 * is full (the old table's cluster is freed, its bytes left). That
 * allocator is followed here step by step.
 *
 * @module
 */

import { l1SizeFor } from "../format/geometry.ts";
import { encodeRefcountTableEntry, setRefcount } from "../format/refcount.ts";
import { QemuAllocator } from "./_qemu_allocator.ts";
import { headerCluster } from "./_metadata.ts";
import {
  checkBackingFile,
  checkClusterSize,
  refcountOrderOf,
} from "./_options.ts";
import type { BackingFileName } from "./pack_stream.ts";
import { MAX_L1_BYTES } from "../format/constants.ts";
import { SECTOR_SIZE } from "../format/geometry.ts";

/**
 * What the new image is.
 *
 * @example A 1 GiB image with 4 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { blankQcow2, type BlankQcow2Options } from "./blank_image.ts";
 * const options: BlankQcow2Options = { size: 2 ** 30, clusterSize: 4096 };
 * assert.strictEqual(blankQcow2(options).length, 4 * 4096); // header, refcounts, L1
 * ```
 */
export interface BlankQcow2Options {
  /** Virtual size in bytes; rounded up to whole 512-byte sectors. */
  size: number;
  /**
   * Cluster size in bytes, a power of two in [512, 2 MiB].
   * @default {65536}
   */
  clusterSize?: number;
  /**
   * Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64.
   * @default {16}
   */
  refcountBits?: number;
  /**
   * Compression type recorded in the header.
   * @default {"zlib"}
   */
  compression?: "zlib" | "zstd";
  /** The backing file's name as stored, and its format. */
  backingFile?: BackingFileName;
}

/**
 * The smallest cluster size at which `qemu-img create` (7.2) writes the
 * feature name table: below it the header has none (seen with 512 to
 * 4096-byte clusters, where the table would fit).
 */
const FEATURE_TABLE_MIN_CLUSTER = 8192;

/**
 * Checks the options of {@linkcode blankQcow2} other than the size, as
 * QEMU checks them before it creates anything.
 *
 * @param options The options.
 * @returns The cluster size and refcount order.
 * @throws {RangeError} For a cluster size or refcount width out of range,
 * or a backing file name or format QEMU would not take.
 *
 * @example A refcount width that is not a power of two
 * ```ts
 * import assert from "node:assert";
 * import { checkBlankQcow2 } from "./blank_image.ts";
 * assert.throws(() => checkBlankQcow2({ size: 0, refcountBits: 3 }), RangeError);
 * assert.deepStrictEqual(checkBlankQcow2({ size: 0 }), { cs: 65536, order: 4 });
 * ```
 */
export function checkBlankQcow2(
  options: BlankQcow2Options,
): { cs: number; order: number } {
  const cs = checkClusterSize(options.clusterSize ?? 65536);
  const order = refcountOrderOf(options.refcountBits ?? 16);
  if (options.backingFile) checkBackingFile(options.backingFile);
  return { cs, order };
}

/**
 * The bytes of a new, empty qcow2 image: what `qemu-img create -f qcow2`
 * writes for the same size and options.
 *
 * @param options Size, cluster size, refcount width, compression type,
 * backing file.
 * @returns The whole file.
 * @throws {RangeError} For a cluster size or refcount width out of range,
 * a size that needs an L1 table larger than QEMU's limit (32 MiB), or a
 * backing file name that does not fit the first cluster.
 *
 * @example An empty 1 MiB image, as qemu-img makes it
 * ```ts
 * import assert from "node:assert";
 * import { parseHeader } from "../format/header.ts";
 * import { blankQcow2 } from "./blank_image.ts";
 * const image = blankQcow2({ size: 1 << 20 });
 * assert.strictEqual(image.length, 3 * 65536 + 8);
 * assert.strictEqual(parseHeader(image).l1TableOffset, 3 * 65536);
 * ```
 */
export function blankQcow2(options: BlankQcow2Options): Uint8Array {
  const { cs, order } = checkBlankQcow2(options);
  if (!Number.isSafeInteger(options.size) || options.size < 0) {
    throw new RangeError(
      `Cannot create image: size ${options.size} is out of range [0, 2^53)`,
    );
  }
  const size = Math.ceil(options.size / SECTOR_SIZE) * SECTOR_SIZE;
  const l1Size = l1SizeFor(size, Math.log2(cs), false);
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw new RangeError(
      `Cannot create image: The image size is too large for file format 'qcow2' (try using a larger cluster size): ${size} bytes need an L1 table of ${
        l1Size * 8
      } bytes, more than ${MAX_L1_BYTES}`,
    );
  }
  const alloc = new QemuAllocator(Math.log2(cs), order);
  const perBlock = alloc.perBlock;
  alloc.table[0] = 2;
  alloc.refcounts.push(1, 1, 1);
  const l1Bytes = l1Size * 8;
  const l1Cluster = l1Size > 0 ? alloc.allocate(Math.ceil(l1Bytes / cs)) : 0;
  let end = 3 * cs;
  if (l1Size > 0) end = Math.max(end, l1Cluster * cs + l1Bytes);
  alloc.table.forEach((b) => end = Math.max(end, (b + 1) * cs));
  end = Math.max(end, (alloc.tableCluster + alloc.tableClusters) * cs);
  const file = new Uint8Array(end);
  file.set(
    headerCluster({
      virtualSize: size,
      clusterSize: cs,
      refcountOrder: order,
      compression: options.compression ?? "zlib",
      l1Size,
      l1TableOffset: l1Cluster * cs,
      refcountTableOffset: alloc.tableCluster * cs,
      refcountTableClusters: alloc.tableClusters,
      backingFile: options.backingFile,
      featureTable: cs >= FEATURE_TABLE_MIN_CLUSTER,
    }),
  );
  const tables = [
    ...alloc.stale,
    { cluster: alloc.tableCluster, entries: alloc.table },
  ];
  for (const { cluster, entries } of tables) {
    const at = file.subarray(cluster * cs, cluster * cs + entries.length * 8);
    entries.forEach((b, t) => {
      if (b !== 0) encodeRefcountTableEntry(at, t, b * cs);
    });
  }
  alloc.refcounts.forEach((count, cluster) => {
    if (!count) return;
    const b = alloc.table[Math.floor(cluster / perBlock)];
    const block = file.subarray(b * cs, (b + 1) * cs);
    setRefcount(block, cluster % perBlock, order, count);
  });
  return file;
}
