/**
 * The VDI (VirtualBox) image type: dynamic and static images, version 1.1,
 * as QEMU reads them.
 *
 * @module
 */

import type { ImageType } from "../image_type.ts";
import { VdiImage } from "./image.ts";

/**
 * Opens a VDI image. A VDI file names no other file here (differencing
 * images, which name a parent by UUID, are refused) and has no internal
 * snapshots.
 *
 * @example A 2 MiB dynamic image whose second block holds data
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../open.ts";
 * const MiB = 1 << 20;
 * const file = new Uint8Array(1024 + MiB);
 * const v = new DataView(file.buffer);
 * v.setUint32(0x40, 0xbeda107f, true); // signature
 * v.setUint32(0x44, 0x00010001, true); // version 1.1
 * v.setUint32(0x4c, 1, true); // dynamic
 * v.setUint32(0x154, 512, true); // block map
 * v.setUint32(0x158, 1024, true); // data
 * v.setUint32(0x168, 512, true); // sector size
 * v.setBigUint64(0x170, BigInt(2 * MiB), true); // disk size
 * v.setUint32(0x178, MiB, true); // block size
 * v.setUint32(0x180, 2, true); // blocks in image
 * v.setUint32(512, 0xffffffff, true); // block 0: unallocated
 * v.setUint32(516, 0, true); // block 1: data block 0
 * file.fill(7, 1024);
 * await using image = await openImage(file);
 * assert.strictEqual(image.format, "vdi");
 * assert.deepStrictEqual(await image.readAt(MiB - 1, 2), new Uint8Array([0, 7]));
 * ```
 */
export const vdiType: ImageType = {
  name: "vdi",
  open(source, context) {
    if (context.snapshot !== undefined) {
      return Promise.reject(
        new RangeError(
          `Cannot open image: ${context.name} is a VDI image and has no snapshots`,
        ),
      );
    }
    return VdiImage.open(source, context.name, context.ownsSource);
  },
};
