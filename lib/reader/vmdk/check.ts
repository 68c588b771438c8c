/**
 * The consistency check QEMU 7.2 makes of a VMDK image (`qemu-img check`,
 * its `vmdk_co_check`): grain by grain through the extents, every grain a
 * grain table maps (and every flat extent's start) must lie before the end
 * of its extent file. The first that does not stops the check.
 *
 * @module
 */

import type { FormatCheck } from "../image.ts";
import type { VmdkExtent } from "./image.ts";

/**
 * Checks a VMDK image's extents as QEMU does: stepping through the disk one
 * grain (one whole flat extent) at a time, the host offset of each grain
 * mapped (grain tables read zero-filled past the end of the file, as QEMU
 * reads them) is compared with the extent file's size rounded up to 512
 * bytes. The first offset at or past it is the one message, one
 * corruption, and the check fails with `EINVAL` as QEMU's does. Grain
 * tables that are not allocated are stepped over whole.
 *
 * @param extents The image's extents, end to end from 0.
 * @returns QEMU's message and the corruption, or nothing found.
 *
 * @example A flat extent whose file is empty
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../../io/source.ts";
 * import { SourceHoles } from "../_file_status.ts";
 * import { checkVmdk } from "./check.ts";
 * const source = new BytesSource(new Uint8Array(0));
 * const result = await checkVmdk([{
 *   start: 0, length: 1 << 20, type: "FLAT", name: "d-flat.vmdk",
 *   kind: "flat", source, fileOffset: 0, holes: new SourceHoles(source),
 * }]);
 * assert.deepStrictEqual(result.messages, ["ERROR: cluster offset for sector 0 points after EOF"]);
 * assert.strictEqual(result.failure, "Invalid argument");
 * ```
 */
export async function checkVmdk(extents: VmdkExtent[]): Promise<FormatCheck> {
  const end = extents.at(-1);
  const total = end ? (end.start + end.length) / 512 : 0;
  let sector = 0;
  let at = 0;
  while (sector < total) {
    while (sector * 512 >= extents[at].start + extents[at].length) at++;
    const e = extents[at];
    const extentEnd = (e.start + e.length) / 512;
    let host: number | undefined;
    let step: number;
    let file: number;
    if (e.kind === "flat") {
      host = e.fileOffset;
      step = e.length / 512;
      file = e.source.size;
    } else {
      const grain = e.sparse.header.granularity;
      const g = await e.sparse.lookup(sector * 512 - e.start, true);
      step = grain;
      if (g.kind === "unallocated" && g.span !== undefined) {
        // The whole table maps nothing: its grains are stepped over.
        const steps = Math.ceil(g.span / 512 / grain);
        step = Math.min(steps, Math.ceil((extentEnd - sector) / grain)) *
          grain;
      }
      if (g.kind === "data" || g.kind === "compressed") host = g.hostOffset;
      file = e.sparse.source.size;
    }
    if (host !== undefined && host >= Math.ceil(file / 512) * 512) {
      return {
        corruptions: 1,
        messages: [
          `ERROR: cluster offset for sector ${sector} points after EOF`,
        ],
        failure: "Invalid argument",
      };
    }
    sector += step;
  }
  return { corruptions: 0, messages: [] };
}
