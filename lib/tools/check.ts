/**
 * `checkImage()`: a read-only consistency check of an image, as `qemu-img
 * check` (QEMU 7.2) does it, with QEMU's messages, counts and exit status.
 * qcow2: refcounts rebuilt from every reference and compared with the
 * stored ones, plus the L1/L2 entry and OFLAG_COPIED checks. VDI, VMDK and
 * VHDX: their drivers' checks of the block map, grain tables and BAT.
 *
 * @module
 */

import type { ImageFormat } from "../reader/open.ts";
import type { FormatName } from "../reader/formats.ts";
import { geometryOf, qcow2VirtualSize } from "../format/geometry.ts";
import {
  getRefcount,
  refcountDecimal,
  refcountMax,
} from "../format/refcount.ts";
import { type ImageInput, openForTool } from "./_open.ts";
import { RefblockError, StoredRefcounts } from "../reader/qcow2/refcounts.ts";
import { bitmapDirectoryOf } from "../reader/qcow2/bitmaps.ts";
import { Qcow2Image } from "../reader/qcow2/image.ts";
import { l2EntryAt } from "../reader/qcow2/mapping.ts";
import { readPadded } from "../reader/read.ts";
import { readSnapshotTable } from "../reader/qcow2/snapshots.ts";
import { CheckFailure, entryHex, ReferenceWalk } from "./_check_refs.ts";
import { decodeL1Entry } from "../format/l1.ts";
import type { L2Entry, L2Layout } from "../format/l2.ts";
import type { Qcow2Header } from "../format/header.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "../reader/image.ts";
import { zeroUnits } from "../bytes/zeros.ts";

/**
 * What {@linkcode checkImage} found: QEMU's counters, its messages, and the
 * exit status `qemu-img check` would end with.
 *
 * @example Check an image and read its verdict
 * ```ts
 * import assert from "node:assert";
 * import { checkImage, type CheckResult } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const qcow2 = await convertToBytes(new Uint8Array(65536).fill(1));
 * const clean: CheckResult = await checkImage(qcow2);
 * assert.strictEqual(clean.exitCode, 0);
 * assert.deepStrictEqual(clean.messages, []);
 * ```
 */
export interface CheckResult {
  /** The name the image was opened by. */
  filename: string;
  /** The image's format (`raw`, `qcow` and `vpc` cannot be checked). */
  format: FormatName;
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
   * check), 63 the format does not support checks (raw, qcow, vpc: QEMU
   * checks qcow2, VDI, VMDK and VHDX).
   */
  exitCode: 0 | 1 | 2 | 3 | 63;
  /** Why the check stopped, when it did (exit status 1 or 63). */
  failure?: string;
}

/**
 * Options of {@linkcode checkImage}.
 *
 * @example Bound the memory a check may take
 * ```ts
 * import assert from "node:assert";
 * import { checkImage, type CheckImageOptions } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const qcow2 = await convertToBytes(new Uint8Array(1 << 20).fill(1));
 * const options: CheckImageOptions = { maxClusters: 4 };
 * assert.strictEqual((await checkImage(qcow2, options)).exitCode, 1);
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

function emptyResult(filename: string, format: FormatName): CheckResult {
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
 * at a time. A VDI, VMDK or VHDX image gets its QEMU driver's check (VDI:
 * the block map; VMDK: every grain's offset inside its extent file; VHDX:
 * every present block inside the file and clear of the log and regions).
 *
 * @param input A path, a source or the image bytes.
 * @param options Memory limit.
 * @returns Counters, QEMU's messages and the exit status; a raw, qcow or
 * vpc image gives exit status 63 as in QEMU.
 * @throws {Qcow2Error} When the image cannot be opened at all (invalid
 * header, unknown incompatible features), where QEMU also refuses it.
 *
 * @example Check an image written by the forward pipeline
 * ```ts
 * import assert from "node:assert";
 * import { checkImage } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const result = await checkImage(await convertToBytes(new Uint8Array(200_000).fill(1)));
 * assert.strictEqual(result.exitCode, 0);
 * assert.strictEqual(result.allocatedClusters, 4);
 * ```
 */
export async function checkImage(
  input: ImageInput,
  options: CheckImageOptions = {},
): Promise<CheckResult> {
  // The image's own metadata is checked: no backing or data file is
  // followed (so no chain can loop, and no name can lead anywhere).
  const image = await openForTool(input, {
    purpose: "describe",
    backing: false,
    format: options.format,
    check: true,
  });
  // try/finally, not `await using`: the bundle runs in Node 20, which has
  // no explicit resource management.
  try {
    return await checkOpened(image, options);
  } finally {
    await image[Symbol.asyncDispose]();
  }
}

/** checkImage() on an opened image. */
async function checkOpened(
  image: Awaited<ReturnType<typeof openForTool>>,
  options: CheckImageOptions,
): Promise<CheckResult> {
  if (!(image instanceof Qcow2Image)) return await checkOther(image);
  const { source, header } = image;
  const result = emptyResult(image.name, "qcow2");
  const geometry = geometryOf(header);
  result.totalClusters = Math.ceil(
    qcow2VirtualSize(header.size) / geometry.clusterSize,
  );
  const counted = await countReferences(source, header, result, options);
  if (!counted) return result;
  const { walk, stored } = counted;
  const signal = corruptionSignal(result);
  const highest = await compareRefcounts(walk, stored, result, signal);
  await checkOflagCopied(source, header, stored, result, signal);
  result.imageEndOffset = (highest + 1) * geometry.clusterSize;
  result.exitCode = result.checkErrors > 0
    ? 1
    : result.corruptions > 0
    ? 2
    : result.leaks > 0
    ? 3
    : 0;
  return result;
}

/**
 * A format other than qcow2: its own check where QEMU has one (VDI, VMDK,
 * VHDX), exit status 63 where it has none (raw, qcow, vpc).
 */
async function checkOther(image: GuestImage): Promise<CheckResult> {
  const result = emptyResult(image.name, image.format as FormatName);
  if (image.check === undefined) {
    result.exitCode = 63;
    result.failure = "This image format does not support checks";
    return result;
  }
  const found = await image.check();
  result.corruptions = found.corruptions;
  result.messages = found.messages;
  // QEMU prints no summary when the driver's check fails.
  if (found.failure !== undefined) {
    return fail(result, `Check failed: ${found.failure}`);
  }
  result.exitCode = result.corruptions > 0 ? 2 : 0;
  return result;
}

/**
 * calculate_refcounts(): every reference counted into a walk, or undefined
 * when the check stopped (the result then says why).
 */
async function countReferences(
  source: RandomAccessSource,
  header: Qcow2Header,
  result: CheckResult,
  options: CheckImageOptions,
): Promise<{ walk: ReferenceWalk; stored: StoredRefcounts } | undefined> {
  const geometry = geometryOf(header);
  let snapshots;
  try {
    snapshots = await readSnapshotTable(source, header, true);
  } catch (err) {
    result.checkErrors++;
    fail(
      result,
      `ERROR failed to read the snapshot table: ${(err as Error).message}`,
    );
    return undefined;
  }
  const clusters = Math.ceil(source.size / geometry.clusterSize);
  const limit = Math.min(options.maxClusters ?? INT_MAX, INT_MAX);
  if (clusters > limit) {
    result.checkErrors++;
    fail(
      result,
      `Cannot check image: the file has ${clusters} clusters, more than the limit of ${limit}`,
    );
    return undefined;
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
    fail(result, err.message);
    return undefined;
  }
  Object.assign(result, walk.counters);
  return { walk, stored };
}

/** QEMU's corruption event: reported once, later ones suppressed. */
function corruptionSignal(result: CheckResult): (err: RefblockError) => void {
  let signaled = false;
  return (err) => {
    if (!signaled) {
      result.messages.push(
        `qcow2: Image is corrupt: ${err.message}; further non-fatal corruption events will be suppressed`,
      );
    }
    signaled = true;
  };
}

/**
 * compare_refcounts(): stored against counted, cluster by cluster.
 *
 * @returns The highest cluster in use by either.
 */
async function compareRefcounts(
  walk: ReferenceWalk,
  stored: StoredRefcounts,
  result: CheckResult,
  signal: (err: RefblockError) => void,
): Promise<number> {
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
          `${have < want ? "ERROR" : "Leaked"} cluster ${i} refcount=${
            block === null
              ? 0
              : refcountDecimal(block, i % perBlock, stored.order)
          } reference=${want}`,
        );
        if (have < want) result.corruptions++;
        else result.leaks++;
      }
    }
  }
  return highest;
}

/** check_oflag_copied(): COPIED set exactly where the refcount is 1. */
async function checkOflagCopied(
  source: RandomAccessSource,
  header: Qcow2Header,
  stored: StoredRefcounts,
  result: CheckResult,
  signal: (err: RefblockError) => void,
): Promise<void> {
  const geometry = geometryOf(header);
  const { clusterSize: cs, l2Entries, l2EntrySize, dataFile } = geometry;
  const layout: L2Layout = geometry;
  const l1 = await readPadded(source, header.l1TableOffset, header.l1Size * 8);
  // One buffer for every L2 table: nothing keeps a table past its loop.
  const size = l2Entries * l2EntrySize;
  const buffer = new Uint8Array(size);
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
    const { l2Offset, copied } = decodeL1Entry(l1, i);
    if (l2Offset === 0) continue;
    const refcount = await refcountOf(l2Offset);
    if (refcount === undefined) continue;
    if ((refcount === 1) !== copied) {
      result.corruptions++;
      result.messages.push(
        `ERROR OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${
          entryHex(l1, i * 8)
        } refcount=${await stored.decimal(Math.floor(l2Offset / cs))}`,
      );
    }
    const table = await readPadded(source, l2Offset, size, buffer);
    for (let j = 0; j < l2Entries; j++) {
      const empty = zeroUnits(table, l2EntrySize, j, l2Entries - j);
      if (empty > 0) {
        j += empty - 1; // entries of zeros: unallocated, nothing to check
        continue;
      }
      const type = l2TypeOf(table, j, layout);
      if (type === undefined) continue; // compressed, unallocated, zero-plain
      const { hostOffset, copied } = type;
      const count = dataFile ? 1 : await refcountOf(hostOffset);
      if (count === undefined) continue;
      if ((count === 1) !== copied) {
        result.corruptions++;
        result.messages.push(
          `ERROR OFLAG_COPIED data cluster: l2_entry=${
            entryHex(table, j * l2EntrySize)
          } refcount=${
            dataFile ? count : await stored.decimal(Math.floor(hostOffset / cs))
          }`,
        );
      }
    }
  }
}

/**
 * An entry with a host cluster whose COPIED flag QEMU checks (normal and
 * preallocated zero clusters), or undefined.
 */
function l2TypeOf(
  table: Uint8Array,
  index: number,
  layout: L2Layout,
): L2Entry | undefined {
  const entry = l2EntryAt(table, index, layout);
  return entry.type === "normal" || entry.type === "zero-alloc"
    ? entry
    : undefined;
}

function fail(result: CheckResult, message: string): CheckResult {
  result.failure = message;
  result.exitCode = 1;
  return result;
}
