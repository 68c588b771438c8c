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
import type { WritableImageFile } from "../writer/write_into.ts";

/**
 * An image file a repair reads and writes in place: a source whose `size`
 * grows when a write ends past it, and whose reads see earlier writes.
 * {@linkcode BytesImageFile} is one in memory; the CLI uses a local file.
 *
 * @example Grow a file by writing past its end
 * ```ts
 * import assert from "node:assert";
 * import { BytesImageFile, type ImageFile } from "@qcow2pipe/qcow2pipe/tools";
 * const file: ImageFile = new BytesImageFile(new Uint8Array(4));
 * await file.writeAt(6, new Uint8Array([1]));
 * assert.strictEqual(file.size, 7);
 * ```
 */
export type ImageFile = WritableImageFile;

/**
 * An {@linkcode ImageFile} in memory: an image repaired where there is no
 * file (a browser, a test), its bytes read back with
 * {@linkcode BytesImageFile.bytes}.
 *
 * @example Repair an image held in memory
 * ```ts
 * import assert from "node:assert";
 * import { BytesImageFile, repairImage } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const file = new BytesImageFile(await convertToBytes(new Uint8Array(65536).fill(1)));
 * const { final } = await repairImage(file, { mode: "all" });
 * assert.strictEqual(final.exitCode, 0);
 * assert.strictEqual(file.bytes().length, file.size);
 * ```
 */
export class BytesImageFile implements ImageFile {
  #bytes: Uint8Array;
  #size: number;

  /**
   * Wraps the bytes of an image.
   *
   * @param bytes The image; written in place while it has room, copied
   * when a write ends past it.
   */
  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#size = bytes.length;
  }

  /** Size in bytes, grown by writes past the end. */
  get size(): number {
    return this.#size;
  }

  /**
   * Reads bytes at an offset.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns A copy of the bytes (shorter at the end).
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(this.#size, offset + length);
    return Promise.resolve(this.#bytes.slice(offset, Math.max(offset, end)));
  }

  /**
   * Writes bytes at an offset, growing the image when they end past it.
   *
   * @param offset Start offset.
   * @param data The bytes.
   */
  writeAt(offset: number, data: Uint8Array): Promise<void> {
    const end = offset + data.length;
    if (end > this.#bytes.length) {
      const grown = new Uint8Array(Math.max(end, this.#bytes.length * 2));
      grown.set(this.#bytes.subarray(0, this.#size));
      this.#bytes = grown;
    }
    this.#bytes.set(data, offset);
    this.#size = Math.max(this.#size, end);
    return Promise.resolve();
  }

  /** Nothing to make durable in memory. */
  sync(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * The image as it is now.
   *
   * @returns Its bytes (a view, valid until the next write).
   */
  bytes(): Uint8Array {
    return this.#bytes.subarray(0, this.#size);
  }
}

/**
 * Options of {@linkcode repairImage}.
 *
 * @example Free leaked clusters only
 * ```ts
 * import assert from "node:assert";
 * import { BytesImageFile, repairImage } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const file = new BytesImageFile(await convertToBytes(new Uint8Array(65536)));
 * const { final } = await repairImage(file, { mode: "leaks", format: "qcow2" });
 * assert.strictEqual(final.leaksFixed, 0);
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
 * import {
 *   BytesImageFile, formatCheckResult, formatRepairHeader, repairImage, type RepairResult,
 * } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const file = new BytesImageFile(await convertToBytes(new Uint8Array(65536).fill(3)));
 * const r: RepairResult = await repairImage(file, { mode: "all" });
 * const stderr = [...r.repair.messages, ...(r.recheck?.messages ?? [])];
 * const stdout = formatRepairHeader(r.repair) + formatCheckResult(r.final);
 * assert.deepStrictEqual(stderr, []);
 * assert.match(stdout, /^No errors were found on the image\./);
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
 * @example Repair a local file in place
 * ```ts ignore
 * import { repairImage } from "@qcow2pipe/qcow2pipe/tools";
 * import { FileSource } from "@qcow2pipe/qcow2pipe";
 * await using file = await FileSource.open("vm.qcow2", "vm.qcow2", { write: true });
 * const { final } = await repairImage(file, { mode: "leaks" });
 * console.log(final.exitCode, final.leaksFixed);
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
