/**
 * The VHDX image type (Hyper-V): fixed, dynamic and differencing images.
 * A differencing image's parent is followed through the chain walk (the
 * one reference gate) by the parent locator's `relative_path`, and must
 * carry the `data_write_guid` its `parent_linkage` names. An image whose
 * log needs replaying is refused.
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";
import type { GuestImage } from "../image.ts";
import type { ImageType } from "../image_type.ts";
import { VhdxImage } from "./image.ts";
import { type ParentLocator, parentPath, readVhdx } from "./open.ts";

/**
 * Opens a VHDX image: its headers, log, region table, metadata and BAT are
 * read and checked at open; a differencing image's parent is opened.
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
    const layout = await readVhdx(source, context.name, context.check);
    let parent: GuestImage | undefined;
    if (layout.parent !== undefined) {
      const stored = parentName(layout.parent, context.name);
      parent = await context.backing(stored, "vhdx");
      try {
        if (parent !== undefined) checkLinkage(layout.parent, parent, stored);
      } catch (err) {
        await parent?.close();
        throw err;
      }
    }
    return new VhdxImage(
      source,
      layout,
      context.ownsSource,
      context.name,
      parent,
    );
  },
};

/** The name the parent is followed by ({@linkcode parentPath}), or why there is none. */
function parentName(locator: ParentLocator, name: string): string {
  const path = parentPath(locator);
  if (path === undefined) {
    throw new Qcow2Error(
      "BACKING",
      `Cannot open image ${name}: its parent locator has no relative_path${
        locator.absoluteWin32Path === undefined
          ? ""
          : ` (absolute_win32_path "${locator.absoluteWin32Path}" names a Windows path)`
      }`,
      { field: "relative_path" },
    );
  }
  return path;
}

/** The parent must be the image the child was made from (`parent_linkage`). */
function checkLinkage(
  locator: ParentLocator,
  parent: GuestImage,
  stored: string,
): void {
  const want = (locator.linkage ?? "").replace(/^\{|\}$/g, "").toLowerCase();
  const have = parent instanceof VhdxImage
    ? parent.layout.header.dataWriteGuid
    : undefined;
  if (have !== want) {
    throw new Qcow2Error(
      "BACKING",
      `Cannot open backing file "${stored}": its data_write_guid ${have} is not the parent_linkage ${
        locator.linkage ?? "(none)"
      } the image names`,
      { field: "parent_linkage" },
    );
  }
}
