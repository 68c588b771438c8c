/**
 * `createImage()`: the file `qemu-img create` (QEMU 7.2) makes, for a
 * qcow2 or raw image: a qcow2 image byte for byte as qemu-img lays it out
 * (see `blankQcow2`), a raw image as a sparse file of the size. A backing
 * file is opened, as qemu-img opens it, to check that it is there and, when
 * no size is given, to take its size.
 *
 * @module
 */

import { SECTOR_SIZE } from "../format/geometry.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { directoryOf, resolveName } from "../reader/references.ts";
import { blankQcow2, checkBlankQcow2 } from "../writer/blank_image.ts";
import type { OpenSource } from "./_open.ts";
import { imageInfo } from "./info.ts";

/**
 * What the new image is (`qemu-img create -f FMT [-b B -F F] [-o ...]`).
 *
 * @example A qcow2 image over a backing file that is not opened (`-u`)
 * ```ts
 * import assert from "node:assert";
 * import { createImage, type CreateImageOptions } from "@qcow2pipe/qcow2pipe/tools";
 * const options: CreateImageOptions = {
 *   format: "qcow2",
 *   size: 1 << 20,
 *   backingFile: { name: "base.raw", format: "raw" },
 *   unsafe: true,
 * };
 * const image = await createImage("vm/top.qcow2", options);
 * assert.match(new TextDecoder().decode(image.head.subarray(0, 1024)), /base\.raw/);
 * ```
 */
export interface CreateImageOptions {
  /** Format of the new image. */
  format: "qcow2" | "raw";
  /**
   * Virtual size in bytes (rounded up to whole 512-byte sectors); with a
   * backing file, its size when absent.
   */
  size?: number;
  /**
   * qcow2 cluster size in bytes.
   * @default {65536}
   */
  clusterSize?: number;
  /**
   * qcow2 refcount width in bits.
   * @default {16}
   */
  refcountBits?: number;
  /**
   * qcow2 compression type recorded in the header.
   * @default {"zlib"}
   */
  compression?: "zlib" | "zstd";
  /**
   * The backing file (qcow2 only): its name as stored (relative names are
   * read relative to the new image's directory) and its format.
   */
  backingFile?: { name: string; format: "raw" | "qcow2" };
  /**
   * Do not open the backing file (qemu-img's `-u`); a size is then needed.
   * @default {false}
   */
  unsafe?: boolean;
  /** Opens the backing file by name; default: local files and http(s) URLs. */
  openSource?: OpenSource;
  /** How the default opener fetches URLs. */
  http?: HttpTransport;
  /**
   * Called with the size once it is known (given, or the backing file's)
   * and the path the backing file was opened by, before the image is laid
   * out: where qemu-img prints its "Formatting" line.
   */
  onSize?: (size: number, backingPath: string | undefined) => void;
}

/**
 * A new image's file: `head`, then zeros (holes) up to `length`.
 *
 * @example Write it out
 * ```ts
 * import assert from "node:assert";
 * import { createImage, type CreatedImage } from "@qcow2pipe/qcow2pipe/tools";
 * const image: CreatedImage = await createImage("disk.raw", { format: "raw", size: 1000 });
 * assert.deepStrictEqual([image.head.length, image.length, image.virtualSize], [0, 1024, 1024]);
 * ```
 */
export interface CreatedImage {
  /** The bytes at the start of the file. */
  head: Uint8Array;
  /** The length of the file. */
  length: number;
  /** The virtual size of the image. */
  virtualSize: number;
  /** The path the backing file was opened by (unless `unsafe`). */
  backingPath?: string;
}

/**
 * The file of a new image, as `qemu-img create` makes it.
 *
 * @param name The new image's name (to resolve a relative backing file
 * name against its directory); undefined resolves against the working
 * directory.
 * @param options Format, size and creation options.
 * @returns Its bytes and length.
 * @throws {RangeError} With qemu-img's words: no size and no backing file,
 * a backing file for a raw image, a size or option out of range.
 * @throws {Qcow2Error} When the backing file cannot be opened.
 *
 * @example A 1 GiB qcow2 image is 3 clusters and its L1 table
 * ```ts
 * import assert from "node:assert";
 * import { createImage } from "@qcow2pipe/qcow2pipe/tools";
 * const image = await createImage("disk.qcow2", { format: "qcow2", size: 2 ** 30 });
 * assert.strictEqual(image.length, 196624);
 * ```
 */
export async function createImage(
  name: string | undefined,
  options: CreateImageOptions,
): Promise<CreatedImage> {
  let size = options.size;
  if (size !== undefined && (!Number.isSafeInteger(size) || size < 0)) {
    throw new RangeError(
      `Cannot create image: Invalid image size specified. Must be between 0 and 9223372036854775807 (it is ${size})`,
    );
  }
  const backing = options.backingFile;
  if (backing && options.format !== "qcow2") {
    throw new RangeError(
      `Cannot create image: Backing file not supported for file format '${options.format}'`,
    );
  }
  const qcow2 = {
    size: size ?? 0,
    clusterSize: options.clusterSize,
    refcountBits: options.refcountBits,
    compression: options.compression,
    backingFile: backing,
  };
  if (options.format === "qcow2") checkBlankQcow2(qcow2);
  let backingPath: string | undefined;
  if (backing && !options.unsafe) {
    backingPath = resolveName(directoryOf(name) ?? "", backing.name) ??
      backing.name;
    const info = await imageInfo(backingPath, {
      format: backing.format,
      openSource: options.openSource,
      http: options.http,
      allocatedSize: () => Promise.resolve(undefined),
    });
    size ??= info.virtualSize;
  }
  if (size === undefined) {
    throw new RangeError(
      "Cannot create image: Image creation needs a size parameter",
    );
  }
  options.onSize?.(size, backingPath);
  const virtualSize = Math.ceil(size / SECTOR_SIZE) * SECTOR_SIZE;
  if (options.format === "raw") {
    return { head: new Uint8Array(0), length: virtualSize, virtualSize };
  }
  const head = blankQcow2({ ...qcow2, size });
  return { head, length: head.length, virtualSize, backingPath };
}
