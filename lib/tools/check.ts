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
import { type ImageInput, openForTool } from "./_open.ts";
import { Qcow2Image } from "../reader/qcow2/image.ts";
import { checkQcow2, fail } from "./_qcow2_check.ts";
import type { GuestImage } from "../reader/image.ts";

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
  /** Corruptions a repair fixed (`qemu-img check -r`), else 0. */
  corruptionsFixed: number;
  /** Leaked clusters a repair freed (`qemu-img check -r`), else 0. */
  leaksFixed: number;
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

/**
 * A result with nothing found yet, for an image of `format` called
 * `filename` (what the checks of check and repair start from).
 *
 * @param filename The name the image was opened by.
 * @param format Its format.
 * @returns Zero counters, no messages, exit status 0.
 */
export function emptyResult(filename: string, format: FormatName): CheckResult {
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
    corruptionsFixed: 0,
    leaksFixed: 0,
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

/**
 * checkImage() on an image already opened (the repair's check of formats
 * it does not repair).
 *
 * @param image The opened image.
 * @param options Memory limit.
 * @returns What the check found.
 */
export async function checkOpened(
  image: Awaited<ReturnType<typeof openForTool>>,
  options: CheckImageOptions,
): Promise<CheckResult> {
  if (!(image instanceof Qcow2Image)) return await checkOther(image);
  const result = emptyResult(image.name, "qcow2");
  await checkQcow2(image.source, image.header, result, options);
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
