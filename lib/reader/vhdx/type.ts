/**
 * The VHDX image type (Hyper-V): fixed and dynamic images. A differencing
 * image is refused, as QEMU refuses it, and so is an image whose log needs
 * replaying.
 *
 * @module
 */

import type { ImageType } from "../image_type.ts";
import { VhdxImage } from "./image.ts";
import { readVhdx } from "./open.ts";

/**
 * Opens a VHDX image: its headers, log, region table, metadata and BAT are
 * read and checked at open.
 *
 * @example A VHDX file is probed by its signature
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../../../mod.ts";
 * const dir = await Deno.makeTempDir();
 * const run = (...args: string[]) => new Deno.Command("qemu-img", { args }).output();
 * await run("create", "-q", "-f", "vhdx", "-o", "subformat=fixed", `${dir}/d.vhdx`, "1M");
 * await using image = await openImage(`${dir}/d.vhdx`);
 * assert.deepStrictEqual([image.format, image.virtualSize], ["vhdx", 1 << 20]);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export const vhdxType: ImageType = {
  name: "vhdx",
  async open(source, context) {
    if (context.snapshot !== undefined) {
      throw new RangeError(
        `Cannot open image: ${context.name} is VHDX and has no snapshots`,
      );
    }
    const layout = await readVhdx(source, context.name);
    return new VhdxImage(source, layout, context.ownsSource, context.name);
  },
};
