/**
 * `repairImage()`: `qemu-img check -r leaks|all` (QEMU 7.2), a repair of a
 * qcow2 image in place: leaked clusters freed, refcounts set to the
 * references (or the refcount structures rebuilt), COPIED flags fixed,
 * the dirty and corrupt bits cleared; then the image is checked again, as
 * qemu-img does. Crash-safe: whatever write is the last to reach the
 * disk, `qemu-img check -r all` can still repair the image and no cluster
 * in use ever has refcount 0.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { FormatName } from "../reader/formats.ts";
import { Qcow2Error } from "../format/errors.ts";
import { AUTOCLEAR, INCOMPAT } from "../format/constants.ts";
import { serializeHeader } from "../format/header.ts";
import { Qcow2Image } from "../reader/qcow2/image.ts";
import { openForTool } from "./_open.ts";
import {
  checkImage,
  type CheckImageOptions,
  checkOpened,
  type CheckResult,
  emptyResult,
} from "./check.ts";
import {
  checkQcow2,
  FIX_ERRORS,
  FIX_LEAKS,
  writeHeader,
} from "./_qcow2_check.ts";

/**
 * An image file a repair reads and writes in place: a source whose `size`
 * grows when a write ends past it, and whose reads see earlier writes.
 *
 * @example A growable file in memory
 * ```ts
 * import assert from "node:assert";
 * import type { ImageFile } from "@qcow2pipe/qcow2pipe/tools";
 * let bytes = new Uint8Array(0);
 * const file: ImageFile = {
 *   get size() { return bytes.length; },
 *   read: (offset, length) => Promise.resolve(bytes.slice(offset, offset + length)),
 *   writeAt(offset, data) {
 *     if (offset + data.length > bytes.length) {
 *       const grown = new Uint8Array(offset + data.length);
 *       grown.set(bytes);
 *       bytes = grown;
 *     }
 *     bytes.set(data, offset);
 *     return Promise.resolve();
 *   },
 *   sync: () => Promise.resolve(),
 * };
 * await file.writeAt(4, new Uint8Array([1]));
 * assert.strictEqual(file.size, 5);
 * ```
 */
export interface ImageFile extends RandomAccessSource {
  /**
   * Writes bytes at an offset (the file grows when the write ends past
   * its size).
   */
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  /** Makes what was written durable before anything that depends on it. */
  sync(): Promise<void>;
}

/**
 * Options of {@linkcode repairImage}.
 *
 * @example Free leaked clusters only
 * ```ts
 * import assert from "node:assert";
 * import type { RepairImageOptions } from "@qcow2pipe/qcow2pipe/tools";
 * const options: RepairImageOptions = { mode: "leaks", format: "qcow2" };
 * assert.strictEqual(options.mode, "leaks");
 * ```
 */
export interface RepairImageOptions extends CheckImageOptions {
  /**
   * `leaks` (`-r leaks`): only refcounts above the references are lowered.
   * `all` (`-r all`): refcounts below them are raised too, the refcount
   * structures rebuilt when a cluster in use has refcount 0 or a refcount
   * block is unusable, and COPIED flags fixed.
   */
  mode: "leaks" | "all";
}

/**
 * What {@linkcode repairImage} did: the repairing pass, then (when it
 * repaired anything) the check run again, as `qemu-img check -r` reports.
 *
 * @example Print what qemu-img would
 * ```ts
 * import assert from "node:assert";
 * import type { RepairResult } from "@qcow2pipe/qcow2pipe/tools";
 * function report(r: RepairResult): string[] {
 *   return [...r.repair.messages, ...(r.recheck?.messages ?? [])];
 * }
 * assert.deepStrictEqual(report({ repair: { messages: ["a"] }, final: {} } as unknown as RepairResult), ["a"]);
 * ```
 */
export interface RepairResult {
  /** The repairing pass: its lines (`Repairing cluster 5 ...`) and counts. */
  repair: CheckResult;
  /**
   * The check after a repair, with the repair's `leaksFixed` and
   * `corruptionsFixed`; absent when nothing was repaired.
   */
  recheck?: CheckResult;
  /** What to report and exit with: `recheck`, else `repair`. */
  final: CheckResult;
}

/**
 * Repairs an image in place as `qemu-img check -r leaks|all` does, with
 * QEMU's lines, counts and exit status; then, when anything was repaired,
 * checks it again. qcow2 only: a VHDX image gets its check (QEMU repairs
 * one only by replaying its log, and an image with a log to replay is
 * refused), other formats give exit status 63 as in QEMU.
 * Only the image itself is written, never a backing file.
 *
 * @param file The image, opened for reading and writing.
 * @param options The mode, format and memory limit.
 * @returns The repairing pass, the check after it, and which to report.
 * @throws {Qcow2Error} `UNSUPPORTED_FEATURE` when the image is one this
 * repair does not write (an external data file), or from opening
 * (an invalid header, unknown incompatible features).
 * @throws {IoError} When the file cannot be read or written.
 *
 * @example Repair an image that needs nothing
 * ```ts
 * import assert from "node:assert";
 * import { repairImage, type ImageFile } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * let bytes = await convertToBytes(new Uint8Array(65536).fill(1));
 * const file: ImageFile = {
 *   get size() { return bytes.length; },
 *   read: (o, n) => Promise.resolve(bytes.slice(o, o + n)),
 *   writeAt(o, d) {
 *     if (o + d.length > bytes.length) {
 *       const b = new Uint8Array(o + d.length);
 *       b.set(bytes);
 *       bytes = b;
 *     }
 *     bytes.set(d, o);
 *     return Promise.resolve();
 *   },
 *   sync: () => Promise.resolve(),
 * };
 * const result = await repairImage(file, { mode: "all" });
 * assert.strictEqual(result.final.exitCode, 0);
 * assert.strictEqual(result.recheck, undefined); // nothing was repaired
 * ```
 */
export async function repairImage(
  file: ImageFile,
  options: RepairImageOptions,
): Promise<RepairResult> {
  if (options.mode !== "leaks" && options.mode !== "all") {
    throw new RangeError(
      `Cannot repair image: mode ${
        JSON.stringify(options.mode)
      } is not "leaks" or "all"`,
    );
  }
  const fix = options.mode === "all" ? FIX_LEAKS | FIX_ERRORS : FIX_LEAKS;
  const image = await openForTool(file, {
    purpose: "describe",
    backing: false,
    format: options.format,
    check: true,
  });
  let repair: CheckResult;
  try {
    repair = await repairOpened(image, file, options, fix);
  } finally {
    await image[Symbol.asyncDispose]();
  }
  if (
    repair.failure !== undefined ||
    (repair.leaksFixed === 0 && repair.corruptionsFixed === 0)
  ) return { repair, final: repair };
  const recheck = await checkImage(file, {
    format: repair.format === "qcow2" ? "qcow2" : options.format,
    maxClusters: options.maxClusters,
  });
  recheck.leaksFixed = repair.leaksFixed;
  recheck.corruptionsFixed = repair.corruptionsFixed;
  return { repair, recheck, final: recheck };
}

/** The repairing pass on an opened image. */
async function repairOpened(
  image: Awaited<ReturnType<typeof openForTool>>,
  file: ImageFile,
  options: RepairImageOptions,
  fix: number,
): Promise<CheckResult> {
  const name = image.name;
  if (!(image instanceof Qcow2Image)) {
    // QEMU's VHDX check repairs only by replaying the log, which opening
    // here refuses; so an image that opens gets the check. VDI's and
    // VMDK's checks refuse to repair (ENOTSUP), as do the formats
    // without checks: exit status 63.
    if (image.format === "vhdx") return await checkOpened(image, options);
    const result = emptyResult(name, image.format as FormatName);
    result.exitCode = 63;
    result.failure = "This image format does not support checks";
    return result;
  }
  const { header } = image;
  if ((header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot repair ${name}: its guest data is in an external data file, which is not repaired`,
    );
  }
  try {
    serializeHeader(header); // the header must be rewritable as it is
  } catch (err) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot repair ${name}: its header cannot be written back (${
        (err as Error).message
      })`,
      { cause: err },
    );
  }
  // Opening an image for writing drops the auto-clear bits QEMU does not
  // know (their meaning no longer holds once a program that ignores them
  // has written the image).
  const known = AUTOCLEAR.BITMAPS | AUTOCLEAR.DATA_FILE_RAW;
  let opened = header;
  if ((header.autoclearFeatures & ~known) !== 0n) {
    opened = { ...header, autoclearFeatures: header.autoclearFeatures & known };
    await writeHeader(file, header, opened);
    await file.sync();
  }
  const result = emptyResult(name, "qcow2");
  await checkQcow2(file, opened, result, options, fix, file);
  return result;
}
