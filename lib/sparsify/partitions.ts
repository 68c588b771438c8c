/**
 * How a disk is divided: a GPT (behind its protective MBR), an MBR, or
 * nothing (a bare filesystem). A table that fails a check leaves the whole
 * disk as it is.
 *
 * @module
 */

import {
  type DiskReader,
  type Partition,
  Refusal,
  type TableLayout,
} from "./_region.ts";
import {
  MBR_SECTOR_SIZE,
  MBR_TYPE_GPT_PROTECTIVE,
  parseMbrSector,
  readMbrPartitions,
} from "./mbr.ts";
import { readGptPartitions } from "./gpt.ts";

/** The partitions of a disk, as far as they can be trusted. */
export interface DiskLayout {
  /** The table found. */
  table: "gpt" | "mbr" | "none";
  /** Why the table is not used; `partitions` is then empty. */
  problem?: string;
  /** Why some partitions of a usable table are not listed. */
  incomplete?: string;
  /**
   * The partitions by disk offset; for `none`, the whole disk as partition
   * 0 (its length `Infinity` when the size is unknown).
   */
  partitions: Partition[];
}

/**
 * Reads the partition table: a protective MBR means GPT, an MBR sector
 * with used entries means MBR, anything else is a bare disk. Partitions
 * that overlap each other or the table's own sectors make the table
 * unusable.
 *
 * @param disk The disk.
 * @returns The layout.
 *
 * @example A bare disk
 * ```ts
 * import assert from "node:assert";
 * import { readDiskLayout } from "./partitions.ts";
 * const disk = new Uint8Array(4096);
 * const reader = { size: disk.length, read: (o: number, n: number) => Promise.resolve(disk.subarray(o, o + n)) };
 * assert.deepStrictEqual(await readDiskLayout(reader), {
 *   table: "none", partitions: [{ number: 0, offset: 0, length: 4096, type: "" }],
 * });
 * ```
 */
export async function readDiskLayout(disk: DiskReader): Promise<DiskLayout> {
  const bare: DiskLayout = {
    table: "none",
    partitions: [{
      number: 0,
      offset: 0,
      length: disk.size ?? Infinity,
      type: "",
    }],
  };
  const sector0 = await disk.read(0, MBR_SECTOR_SIZE);
  const entries = parseMbrSector(sector0);
  const used = entries?.filter((e) => e.type !== 0 && e.sectors !== 0) ?? [];
  if (used.length === 0) return bare;
  const kind = used.some((e) => e.type === MBR_TYPE_GPT_PROTECTIVE)
    ? "gpt"
    : "mbr";
  let layout: TableLayout;
  try {
    layout = kind === "gpt"
      ? await readGptPartitions(disk)
      : await readMbrPartitions(disk, entries!);
    checkLayout(layout);
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    return { table: kind, problem: err.message, partitions: [] };
  }
  return {
    table: kind,
    ...(layout.incomplete ? { incomplete: layout.incomplete } : {}),
    partitions: layout.partitions.toSorted((a, b) => a.offset - b.offset),
  };
}

function span(p: { offset: number; length: number }): string {
  return `bytes ${p.offset}-${p.offset + p.length - 1}`;
}

/** Partitions must not overlap each other or the table. */
function checkLayout(layout: TableLayout): void {
  const parts = layout.partitions.toSorted((a, b) => a.offset - b.offset);
  for (let i = 1; i < parts.length; i++) {
    const a = parts[i - 1];
    const b = parts[i];
    if (b.offset < a.offset + a.length) {
      throw new Refusal(
        `partitions ${a.number} (${span(a)}) and ${b.number} (${
          span(b)
        }) overlap`,
      );
    }
  }
  for (const p of parts) {
    for (const t of layout.table) {
      if (t.offset < p.offset + p.length && p.offset < t.offset + t.length) {
        throw new Refusal(
          `partition ${p.number} (${span(p)}) covers the partition table (${
            span(t)
          })`,
        );
      }
    }
  }
}
