/**
 * The qcow (version 1) image type: the header, the backing file (followed
 * through the walk, by the format its first bytes show: qcow names none),
 * and the image.
 *
 * @module
 */

import type { RandomAccessSource } from "../../io/source.ts";
import type { GuestImage } from "../image.ts";
import type { ImageType, OpenContext } from "../image_type.ts";
import { readExact } from "../_bounds.ts";
import { backingName, parseQcowHeader, QCOW_HEADER_SIZE } from "./header.ts";
import { QcowImage } from "./image.ts";

/**
 * Opens a qcow version 1 image; an encrypted one is refused.
 *
 * @example A 1 MiB image with no clusters allocated reads as zeros
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../open.ts";
 * const file = new Uint8Array(48 + 8);
 * const v = new DataView(file.buffer);
 * v.setUint32(0, 0x514649fb); // "QFI\xfb"
 * v.setUint32(4, 1); // version 1
 * v.setBigUint64(24, 1n << 20n); // size
 * file[32] = 12; // 4 KiB clusters
 * file[33] = 9; // 512 entries per L2 table: one L1 entry maps 2 MiB
 * v.setBigUint64(40, 48n); // L1 table
 * await using image = await openImage(file);
 * assert.strictEqual(image.format, "qcow");
 * assert.deepStrictEqual(await image.readAt(4096, 2), new Uint8Array(2));
 * ```
 */
export const qcowType: ImageType = {
  name: "qcow",
  open: openQcow,
};

async function openQcow(
  source: RandomAccessSource,
  context: OpenContext,
): Promise<GuestImage> {
  if (context.snapshot !== undefined) {
    throw new RangeError(
      `Cannot open image: ${context.name} is a qcow image and has no snapshots`,
    );
  }
  const header = parseQcowHeader(
    await readExact(source, 0, QCOW_HEADER_SIZE, "qcow header"),
  );
  const name = header.backingFileOffset === 0 ? "" : backingName(
    await readExact(
      source,
      header.backingFileOffset,
      header.backingFileSize,
      "qcow backing file name",
    ),
  );
  // qcow stores no backing format: the backing file is probed, and so
  // held to its own directory by the gate unless the chain was trusted.
  const backing = name === ""
    ? undefined
    : await context.backing(name, undefined);
  try {
    return await QcowImage.create({
      source,
      header,
      purpose: context.purpose,
      name: context.name,
      ownsSource: context.ownsSource,
      backingFile: name === "" ? undefined : name,
      backing,
      cacheBytes: context.cacheBytes,
    });
  } catch (err) {
    await backing?.close();
    throw err;
  }
}
