/**
 * `checkImage()`: a read-only consistency check of a qcow2 image, as
 * `qemu-img check` (QEMU 7.2) does it: refcounts rebuilt from every
 * reference and compared with the stored ones, plus the L1/L2 entry and
 * OFLAG_COPIED checks, with QEMU's messages, counts and exit status.
 *
 * @module
 */

import type { ImageFormat } from "../reader/open.ts";
import { geometryOf, qcow2VirtualSize } from "../format/geometry.ts";
import { getRefcount, refcountMax } from "../format/refcount.ts";
import { INCOMPAT } from "../format/constants.ts";
import {
  type ImageInput,
  RefblockError,
  sourceOf,
  StoredRefcounts,
} from "./_layers.ts";
import { bitmapDirectoryOf } from "./_tables.ts";
import { detectFormat, readPadded } from "../reader/_read.ts";
import { readHeader } from "../reader/open.ts";
import { readSnapshotTable } from "../reader/_snapshots.ts";
import { CheckFailure, hex64, ReferenceWalk } from "./_check_refs.ts";

/**
 * What {@linkcode checkImage} found: QEMU's counters, its messages, and the
 * exit status `qemu-img check` would end with.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { CheckResult } from "./check.ts";
 * const r: CheckResult = {
 *   filename: "a.qcow2", format: "qcow2", corruptions: 0, leaks: 3, checkErrors: 0,
 *   imageEndOffset: 262144, totalClusters: 16, allocatedClusters: 0,
 *   fragmentedClusters: 0, compressedClusters: 0, messages: [], exitCode: 3,
 * };
 * assert.strictEqual(r.exitCode, 3);
 * ```
 */
export interface CheckResult {
  /** The name the image was opened by. */
  filename: string;
  /** `qcow2` (or `raw`, which cannot be checked). */
  format: "qcow2" | "raw";
  /** References the stored refcounts do not cover, and other corruptions. */
  corruptions: number;
  /** Clusters with a stored refcount but fewer references. */
  leaks: number;
  /** Problems that stopped parts of the check (unreadable refcount blocks). */
  checkErrors: number;
  /** End of the last cluster in use (by refcount or reference). */
  imageEndOffset: number;
  /** Guest clusters of the virtual disk. */
  totalClusters: number;
  /** Guest clusters allocated in the active L1 table. */
  allocatedClusters: number;
  /** Allocated clusters not following the previous one on the host. */
  fragmentedClusters: number;
  /** Compressed guest clusters. */
  compressedClusters: number;
  /** QEMU's lines for each problem, in order (`ERROR cluster 5 refcount=0 reference=1`). */
  messages: string[];
  /**
   * `qemu-img check`'s exit status: 0 clean, 2 corruptions, 3 leaks only,
   * 1 the check failed (check errors, or a structure that stops QEMU's
   * check), 63 the format does not support checks (raw).
   */
  exitCode: 0 | 1 | 2 | 3 | 63;
  /** Why the check stopped, when it did (exit status 1 or 63). */
  failure?: string;
}

/**
 * Options of {@linkcode checkImage}.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { CheckImageOptions } from "./check.ts";
 * const o: CheckImageOptions = { maxClusters: 1 << 24 };
 * assert.ok(o.maxClusters);
 * ```
 */
export interface CheckImageOptions {
  /**
   * Largest number of host clusters to check; the in-memory refcount
   * table takes one byte per cluster (QEMU's own limit is 2^31 - 1).
   * @default {2147483647}
   */
  maxClusters?: number;
  /**
   * Format of the image; probed when absent or `auto`. With `raw`, the
   * image is raw whatever its bytes (exit status 63, no checks).
   * @default {"auto"}
   */
  format?: ImageFormat;
}

const INT_MAX = 2 ** 31 - 1;

function emptyResult(filename: string, format: "qcow2" | "raw"): CheckResult {
  return {
    filename,
    format,
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
    exitCode: 0,
  };
}

/**
 * Checks a qcow2 image without writing to it. References are counted from
 * the header, the active and snapshot L1 tables, their L2 tables, data and
 * compressed clusters (over the 512-byte sectors they touch, as QEMU
 * counts them), the snapshot table, the refcount table and blocks, the
 * crypto header and the bitmap directory, tables and data; the counts are
 * compared with the stored refcounts. Memory: one byte per host cluster
 * (the file size is checked first), one L2 table and a few refcount blocks
 * at a time.
 *
 * @param input A path, a source or the image bytes.
 * @param options Memory limit.
 * @returns Counters, QEMU's messages and the exit status; a raw image gives
 * exit status 63 as in QEMU.
 * @throws {Qcow2Error} When the image cannot be opened at all (invalid
 * header, unknown incompatible features), where QEMU also refuses it.
 *
 * @example Check an image written by the forward pipeline
 * ```ts
 * import assert from "node:assert";
 * import { checkImage, convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const result = await checkImage(await convertToBytes(new Uint8Array(200_000).fill(1)));
 * assert.strictEqual(result.exitCode, 0);
 * assert.strictEqual(result.allocatedClusters, 4);
 * ```
 */
export async function checkImage(
  input: ImageInput,
  options: CheckImageOptions = {},
): Promise<CheckResult> {
  const source = await sourceOf(input);
  const filename = typeof input === "string" ? input : source.name ?? "<image>";
  try {
    const format = options.format ?? "auto";
    if (
      format === "raw" ||
      (format === "auto" && (await detectFormat(source)) === "raw")
    ) {
      const r = emptyResult(filename, "raw");
      r.exitCode = 63;
      r.failure = "This image format does not support checks";
      return r;
    }
    const header = await readHeader(source, { inspection: true });
    const result = emptyResult(filename, "qcow2");
    const geometry = geometryOf(header);
    const cs = geometry.clusterSize;
    result.totalClusters = Math.ceil(qcow2VirtualSize(header.size) / cs);

    let snapshots;
    try {
      snapshots = await readSnapshotTable(source, header, true);
    } catch (err) {
      result.checkErrors++;
      return fail(
        result,
        `ERROR failed to read the snapshot table: ${(err as Error).message}`,
      );
    }

    const clusters = Math.ceil(source.size / cs);
    const limit = Math.min(options.maxClusters ?? INT_MAX, INT_MAX);
    if (clusters > limit) {
      result.checkErrors++;
      return fail(
        result,
        `Cannot check image: the file has ${clusters} clusters, more than the limit of ${limit}`,
      );
    }
    const stored = await StoredRefcounts.load(source, header);
    const walk = new ReferenceWalk(
      {
        source,
        header,
        geometry,
        snapshots: snapshots.entries,
        snapshotsSize: snapshots.size,
        stored,
        bitmaps: bitmapDirectoryOf(header),
      },
      clusters,
      refcountMax(header.refcountOrder),
      result.messages,
    );
    try {
      await walk.calculate();
    } catch (err) {
      if (!(err instanceof CheckFailure)) throw err;
      Object.assign(result, walk.counters);
      return fail(result, err.message);
    }
    Object.assign(result, walk.counters);

    // compare_refcounts()
    let signaled = false;
    const signal = (err: RefblockError) => {
      if (!signaled) {
        result.messages.push(
          `qcow2: Image is corrupt: ${err.message}; further non-fatal corruption events will be suppressed`,
        );
      }
      signaled = true;
    };
    let highest = 0;
    const n = walk.refs.size;
    const perBlock = stored.perBlock;
    for (let i = 0; i < n;) {
      const index = Math.floor(i / perBlock);
      const blockEnd = Math.min(n, (index + 1) * perBlock);
      let block: Uint8Array | null;
      try {
        block = await stored.block(index);
      } catch (err) {
        if (!(err instanceof RefblockError)) throw err;
        signal(err);
        for (; i < blockEnd; i++) {
          result.messages.push(
            `Can't get refcount for cluster ${i}: Input/output error`,
          );
          result.checkErrors++;
        }
        continue;
      }
      for (; i < blockEnd; i++) {
        const have = block === null
          ? 0
          : getRefcount(block, i % perBlock, stored.order);
        const want = walk.refs.get(i);
        if (have > 0 || want > 0) highest = i;
        if (have !== want) {
          result.messages.push(
            `${
              have < want ? "ERROR" : "Leaked"
            } cluster ${i} refcount=${have} reference=${want}`,
          );
          if (have < want) result.corruptions++;
          else result.leaks++;
        }
      }
    }

    // check_oflag_copied()
    const dataFile = (header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n;
    const l1 = await readPadded(
      source,
      header.l1TableOffset,
      header.l1Size * 8,
    );
    const l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    const { l2Entries, extendedL2 } = geometry;
    const entrySize = extendedL2 ? 16 : 8;
    const refcountOf = async (offset: number): Promise<number | undefined> => {
      try {
        return await stored.get(Math.floor(offset / cs));
      } catch (err) {
        if (!(err instanceof RefblockError)) throw err;
        signal(err);
        return undefined;
      }
    };
    for (let i = 0; i < header.l1Size; i++) {
      const hi = l1View.getUint32(i * 8);
      const lo = l1View.getUint32(i * 8 + 4);
      const l2Offset = (hi & 0x00ffffff) * 0x1_0000_0000 +
        ((lo & 0xfffffe00) >>> 0);
      if (l2Offset === 0) continue;
      const refcount = await refcountOf(l2Offset);
      if (refcount === undefined) continue;
      if ((refcount === 1) !== ((hi & 0x80000000) !== 0)) {
        result.corruptions++;
        result.messages.push(
          `ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${
            hex64(hi, lo)
          } refcount=${refcount}`,
        );
      }
      const table = await readPadded(source, l2Offset, l2Entries * entrySize);
      const view = new DataView(
        table.buffer,
        table.byteOffset,
        table.byteLength,
      );
      for (let j = 0; j < l2Entries; j++) {
        const ehi = view.getUint32(j * entrySize);
        const elo = view.getUint32(j * entrySize + 4);
        if ((ehi & 0x40000000) !== 0) continue; // compressed
        const offset = (ehi & 0x00ffffff) * 0x1_0000_0000 +
          ((elo & 0xfffffe00) >>> 0);
        const copied = (ehi & 0x80000000) !== 0;
        const zero = (elo & 1) !== 0 && !extendedL2;
        const allocated = offset !== 0 || (!zero && dataFile && copied);
        if (!allocated) continue; // unallocated or zero-plain
        const count = dataFile ? 1 : await refcountOf(offset);
        if (count === undefined) continue;
        if ((count === 1) !== copied) {
          result.corruptions++;
          result.messages.push(
            `ERROR OFLAG_COPIED data cluster: l2_entry=${
              hex64(ehi, elo)
            } refcount=${count}`,
          );
        }
      }
    }

    result.imageEndOffset = (highest + 1) * cs;
    result.exitCode = result.checkErrors > 0
      ? 1
      : result.corruptions > 0
      ? 2
      : result.leaks > 0
      ? 3
      : 0;
    return result;
  } finally {
    if (typeof input === "string" || input instanceof Uint8Array) {
      await source.close?.();
    }
  }
}

function fail(result: CheckResult, message: string): CheckResult {
  result.failure = message;
  result.exitCode = 1;
  return result;
}
