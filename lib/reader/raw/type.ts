/**
 * The raw image type: a file whose bytes are the guest's.
 *
 * @module
 */

import type { ImageType } from "../image_type.ts";
import { RawImage } from "./image.ts";

/**
 * Opens a raw image. A raw file names no other file and has no snapshots.
 *
 * @example Open bytes as a raw disk whatever they hold
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../open.ts";
 * await using image = await openImage(new Uint8Array(1000), { format: "raw" });
 * assert.strictEqual(image.virtualSize, 1024);
 * ```
 */
export const rawType: ImageType = {
  name: "raw",
  open(source, context) {
    if (context.snapshot !== undefined) {
      return Promise.reject(
        new RangeError(
          `Cannot open image: ${context.name} is raw and has no snapshots`,
        ),
      );
    }
    return Promise.resolve(
      new RawImage(source, context.ownsSource, context.name),
    );
  },
};
