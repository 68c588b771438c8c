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
import { FLAG_ZERO_GRAIN, GTE_ZEROED, type SparseExtent } from "./sparse.ts";

/**
 * Checks a VMDK image's extents as QEMU does: stepping through the disk one
 * grain (one whole flat extent) at a time, the host offset of each grain
 * mapped (grain tables read zero-filled past the end of the file, as QEMU
 * reads them) is compared with the extent file's size rounded up to 512
 * bytes. The first offset at or past it is the one message, one
 * corruption, and the check fails with `EINVAL` as QEMU's does. Time: one
 * step per grain table (each table's entries are judged once), not one
 * per grain.
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
  const last = extents.at(-1);
  const total = last ? (last.start + last.length) / 512 : 0;
  const judged = new Map<SparseExtent, Map<number, number[]>>();
  let sector = 0;
  let at = 0;
  while (sector < total) {
    while (sector * 512 >= extents[at].start + extents[at].length) at++;
    const e = extents[at];
    const extentEnd = (e.start + e.length) / 512;
    if (e.kind === "flat") {
      if (e.fileOffset >= fileEnd(e.source.size)) return pastEof(sector);
      sector += e.length / 512;
      continue;
    }
    // The grains from here to the end of this grain table (or extent):
    // consecutive grain numbers, one step of `granularity` sectors each.
    const sparse = e.sparse;
    const grainSectors = sparse.header.granularity;
    const gtes = sparse.header.gtes;
    const grain = Math.floor((sector - e.start / 512) / grainSectors);
    const index = grain % gtes;
    const steps = Math.min(
      gtes - index,
      Math.ceil((extentEnd - sector) / grainSectors),
    );
    const bad = await badEntries(sparse, Math.floor(grain / gtes), judged);
    const hit = bad.find((b) => b >= index && b < index + steps);
    if (hit !== undefined) {
      return pastEof(sector + (hit - index) * grainSectors);
    }
    sector += steps * grainSectors;
  }
  return { corruptions: 0, messages: [] };
}

/** `bdrv_getlength()` of a file: its size rounded up to whole sectors. */
function fileEnd(size: number): number {
  return Math.ceil(size / 512) * 512;
}

/** QEMU's verdict on the first grain past the end of its file. */
function pastEof(sector: number): FormatCheck {
  return {
    corruptions: 1,
    messages: [`ERROR: cluster offset for sector ${sector} points after EOF`],
    failure: "Invalid argument",
  };
}

/**
 * The entries of grain table `table` that map a grain at or past the end
 * of the file, in order; judged once per table.
 */
async function badEntries(
  sparse: SparseExtent,
  table: number,
  judged: Map<SparseExtent, Map<number, number[]>>,
): Promise<number[]> {
  let tables = judged.get(sparse);
  if (!tables) judged.set(sparse, tables = new Map());
  const known = tables.get(table);
  if (known) return known;
  const entries = await sparse.table(table, true);
  const bad: number[] = [];
  const end = fileEnd(sparse.source.size);
  const zeroGrains = (sparse.header.flags & FLAG_ZERO_GRAIN) !== 0;
  for (const [i, entry] of (entries ?? []).entries()) {
    if (entry === 0 || (zeroGrains && entry === GTE_ZEROED)) continue;
    if (entry * 512 >= end) bad.push(i);
  }
  tables.set(table, bad);
  return bad;
}
