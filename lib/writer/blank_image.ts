/**
 * `blankQcow2()`: the bytes of a new, empty qcow2 image, laid out as
 * `qemu-img create` (QEMU 7.2) lays it out, so that the two files are
 * equal byte for byte.
 *
 * QEMU writes the header in cluster 0, a one-cluster refcount table in
 * cluster 1 and the first refcount block in cluster 2, then grows the
 * image to its size: the L1 table is allocated by its cluster allocator,
 * which places any refcount block the L1 table needs beyond the first one
 * where it finds room, restarting its search each time it adds one. That
 * allocator is followed here step by step. When the L1 table needs more
 * refcount blocks than one table cluster holds (QEMU then moves the
 * refcount table), the image is laid out the simple way instead: header,
 * refcount table, refcount blocks, L1 table. That image is as valid and
 * as large a disk, but not QEMU's bytes.
 *
 * @module
 */

import { l1SizeFor } from "../format/geometry.ts";
import {
  encodeRefcountTableEntry,
  refcountBlockEntries,
  setRefcount,
} from "../format/refcount.ts";
import { headerCluster, refcountSizing } from "./_metadata.ts";
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

/** The refcount table and blocks as QEMU's allocator leaves them. */
class QemuAllocator {
  readonly refcounts = new Map<number, number>();
  /** Refcount block cluster by table index (0: none). */
  readonly table: number[];
  #perBlock: number;
  #free = 0;

  constructor(clusterSize: number, perBlock: number) {
    this.#perBlock = perBlock;
    this.table = new Array(clusterSize / 8).fill(0);
  }

  refcount(cluster: number): number {
    const t = Math.floor(cluster / this.#perBlock);
    if (t >= this.table.length || this.table[t] === 0) return 0;
    return this.refcounts.get(cluster) ?? 0;
  }

  /** The first run of `n` free clusters from the search position on. */
  #findFree(n: number): number {
    for (let found = 0; found < n;) {
      found = this.refcount(this.#free++) === 0 ? found + 1 : 0;
    }
    return this.#free - n;
  }

  /**
   * Adds one to the refcounts of `n` clusters from `start`: "again" when
   * a refcount block had to be added first (the caller searches again),
   * "full" when the table has no room for it.
   */
  #reference(start: number, n: number): "ok" | "again" | "full" {
    let block = -1;
    for (let c = start; c < start + n; c++) {
      const t = Math.floor(c / this.#perBlock);
      if (t !== block) {
        const got = this.#blockFor(c);
        if (got !== "ok") {
          this.#free = Math.min(this.#free, start);
          for (let d = start; d < c; d++) {
            this.refcounts.set(d, this.refcounts.get(d)! - 1);
          }
          return got;
        }
        block = t;
      }
      this.refcounts.set(c, (this.refcounts.get(c) ?? 0) + 1);
    }
    return "ok";
  }

  /** Makes sure the refcount block of `cluster` exists. */
  #blockFor(cluster: number): "ok" | "again" | "full" {
    const t = Math.floor(cluster / this.#perBlock);
    if (t < this.table.length && this.table[t] !== 0) return "ok";
    const block = this.#findFree(1);
    if (Math.floor(block / this.#perBlock) === t) {
      // It describes itself.
      this.refcounts.set(block, 1);
    } else {
      const got = this.#reference(block, 1);
      if (got !== "ok") return got;
    }
    if (t >= this.table.length) return "full";
    this.table[t] = block;
    return "again";
  }

  /** Allocates `n` clusters, or undefined when the table would have to grow. */
  allocate(n: number): number | undefined {
    for (;;) {
      const start = this.#findFree(n);
      const got = this.#reference(start, n);
      if (got === "ok") return start;
      if (got === "full") return undefined;
    }
  }
}

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
  const perBlock = refcountBlockEntries(Math.log2(cs), order);
  const alloc = new QemuAllocator(cs, perBlock);
  alloc.table[0] = 2;
  for (const c of [0, 1, 2]) alloc.refcounts.set(c, 1);
  const l1Bytes = l1Size * 8;
  let l1Cluster = 0;
  if (l1Size > 0) {
    const at = alloc.allocate(Math.ceil(l1Bytes / cs));
    if (at === undefined) return simpleLayout(options, size, l1Size, cs, order);
    l1Cluster = at;
  }
  let end = 3 * cs;
  if (l1Size > 0) end = Math.max(end, l1Cluster * cs + l1Bytes);
  alloc.table.forEach((b) => end = Math.max(end, (b + 1) * cs));
  const file = new Uint8Array(end);
  file.set(
    headerCluster({
      virtualSize: size,
      clusterSize: cs,
      refcountOrder: order,
      compression: options.compression ?? "zlib",
      l1Size,
      l1TableOffset: l1Cluster * cs,
      refcountTableOffset: cs,
      refcountTableClusters: 1,
      backingFile: options.backingFile,
      featureTable: cs >= FEATURE_TABLE_MIN_CLUSTER,
    }),
  );
  const reftable = file.subarray(cs, 2 * cs);
  alloc.table.forEach((b, t) => {
    if (b !== 0) encodeRefcountTableEntry(reftable, t, b * cs);
  });
  for (const [cluster, count] of alloc.refcounts) {
    if (count === 0) continue;
    const b = alloc.table[Math.floor(cluster / perBlock)];
    const block = file.subarray(b * cs, (b + 1) * cs);
    setRefcount(block, cluster % perBlock, order, count);
  }
  return file;
}

/**
 * Header, refcount table, refcount blocks, L1 table, back to back: for
 * the sizes at which QEMU moves its refcount table.
 */
function simpleLayout(
  options: BlankQcow2Options,
  size: number,
  l1Size: number,
  cs: number,
  order: number,
): Uint8Array {
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const perBlock = refcountBlockEntries(Math.log2(cs), order);
  const { blocks, tableClusters } = refcountSizing(
    1 + l1Clusters,
    perBlock,
    cs,
  );
  const clusters = 1 + tableClusters + blocks + l1Clusters;
  const l1Offset = (1 + tableClusters + blocks) * cs;
  const file = new Uint8Array(l1Offset + l1Size * 8);
  file.set(
    headerCluster({
      virtualSize: size,
      clusterSize: cs,
      refcountOrder: order,
      compression: options.compression ?? "zlib",
      l1Size,
      l1TableOffset: l1Offset,
      refcountTableOffset: cs,
      refcountTableClusters: tableClusters,
      backingFile: options.backingFile,
      featureTable: cs >= FEATURE_TABLE_MIN_CLUSTER,
    }),
  );
  const reftable = file.subarray(cs, (1 + tableClusters) * cs);
  for (let b = 0; b < blocks; b++) {
    const at = (1 + tableClusters + b) * cs;
    encodeRefcountTableEntry(reftable, b, at);
    const block = file.subarray(at, at + cs);
    const first = b * perBlock;
    for (let c = first; c < Math.min(clusters, first + perBlock); c++) {
      setRefcount(block, c - first, order, 1);
    }
  }
  return file;
}
