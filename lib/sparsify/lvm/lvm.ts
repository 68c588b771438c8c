/**
 * The LVM2 module. A physical volume is a region whose extents are either
 * free or part of a logical volume; each linear LV is read as a region of
 * its own (its segments laid end to end, wherever they are on the PV) by
 * the filesystem modules, exactly as a partition is. Free are:
 *
 * - the extents no LV uses;
 * - inside each LV that a module maps, the ranges that module lists,
 *   translated back through the LV's segments.
 *
 * Everything else is copied: the label, the metadata areas (with the old
 * metadata in their buffers), the gap before the first extent, whatever
 * follows the last, and every LV that is not mapped (its reason in the
 * report). What is read and checked is described in label.ts, mda.ts,
 * config.ts, metadata.ts and layout.ts; any doubt there leaves the whole
 * PV as it is.
 *
 * @module
 */

import { InternalError, IoError } from "../../format/errors.ts";
import { type Piece, PiecewiseDisk } from "../_piecewise.ts";
import { Refusal, RegionReader } from "../_region.ts";
import type {
  ContentsResult,
  FilesystemAnalysis,
  FilesystemModule,
} from "../filesystem.ts";
import type { FreeRange, VolumeReport } from "../report.ts";
import { LABEL_SCAN_SECTORS, labelSectors, LVM_SECTOR } from "./label.ts";
import type { PvLayout, VolumePlan } from "./layout.ts";
import { type PhysicalVolume, readPhysicalVolume } from "./physical.ts";

/** What the module calls what it finds. */
export const LVM_FOUND = "LVM2 PV";

/** Analyzes what a region holds: the filesystem modules, as for a partition. */
export type VolumeAnalyzer = (region: RegionReader) => Promise<ContentsResult>;

/** A mapped LV: its plan and its filesystem's analysis. */
interface MappedVolume {
  plan: VolumePlan;
  /** Its pieces by PV offset. */
  pieces: Map<number, Piece>;
  analysis: FilesystemAnalysis;
}

function lvRegion(pv: RegionReader, plan: VolumePlan): {
  disk: PiecewiseDisk;
  region: RegionReader;
} {
  const disk = new PiecewiseDisk(pv, plan.pieces!, `LV ${plan.name}`);
  return { disk, region: new RegionReader(disk, 0, disk.size) };
}

/** What one LV holds, or why it is kept. */
async function analyzeVolume(
  pv: RegionReader,
  plan: VolumePlan,
  inner: VolumeAnalyzer,
): Promise<{ report: VolumeReport; mapped?: MappedVolume }> {
  const base = {
    name: plan.name,
    length: plan.length,
    segments: plan.lv.segments.length,
    freeBytes: 0,
  };
  if (plan.kept !== undefined) {
    return {
      report: {
        ...base,
        found: "not read",
        status: "untouched",
        reason: plan.kept,
      },
    };
  }
  const { region } = lvRegion(pv, plan);
  // A PV inside an LV (a guest's disk) is not read: no recursion.
  let head: Uint8Array;
  try {
    head = await region.head(LABEL_SCAN_SECTORS * LVM_SECTOR);
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    return {
      report: {
        ...base,
        found: "unknown",
        status: "untouched",
        reason: err.message,
      },
    };
  }
  if (labelSectors(head).length > 0) {
    return {
      report: {
        ...base,
        found: LVM_FOUND,
        status: "untouched",
        reason: "an LVM2 PV inside an LV is not read",
      },
    };
  }
  const { report, analysis } = await inner(region);
  return {
    report: { ...base, ...report },
    ...(analysis
      ? {
        mapped: {
          plan,
          pieces: new Map(plan.pieces!.map((p) => [p.to, p])),
          analysis,
        },
      }
      : {}),
  };
}

function describe(pv: PhysicalVolume, lvs: number): string {
  const { vg, layout } = pv;
  const mib = layout.extentBytes / (1024 * 1024);
  const size = Number.isInteger(mib)
    ? `${mib} MiB`
    : `${layout.extentBytes / 1024} KiB`;
  return `VG ${vg.name} (seqno ${vg.seqno}), ${size} extents, ${layout.pv.peCount} extents, ${layout.freeExtents} free, ${lvs} LV${
    lvs === 1 ? "" : "s"
  }`;
}

/**
 * One LV's free ranges, asked for piece by piece in PV order: the LV's
 * ranges are listed once while the pieces asked for go forward in the LV,
 * and listed again from the start when a piece lies before the last one.
 */
class VolumeCursor {
  readonly #analysis: FilesystemAnalysis;
  readonly #region: RegionReader;
  readonly #passes: number;
  #iter: AsyncGenerator<FreeRange> | undefined;
  #pending: FreeRange | undefined;
  #pos = Infinity;
  #end = 0;
  #started = 0;

  constructor(
    analysis: FilesystemAnalysis,
    region: RegionReader,
    passes: number,
  ) {
    this.#analysis = analysis;
    this.#region = region;
    this.#passes = passes;
  }

  async #next(): Promise<FreeRange | undefined> {
    if (this.#pending) {
      const r = this.#pending;
      this.#pending = undefined;
      return r;
    }
    const { value, done } = await this.#iter!.next();
    if (done) return undefined;
    const size = this.#region.length!;
    if (
      !(value.length > 0 && value.offset >= this.#end &&
        value.offset + value.length <= size)
    ) {
      throw new InternalError(
        `Cannot map free space: a filesystem module listed range ${
          JSON.stringify(value)
        } out of order or outside its ${size}-byte volume`,
      );
    }
    this.#end = value.offset + value.length;
    return value;
  }

  /** The LV's free ranges inside `[from, to)`, clipped to it. */
  async *within(from: number, to: number): AsyncGenerator<FreeRange> {
    if (from < this.#pos) {
      if (++this.#started > this.#passes) {
        throw new InternalError(
          `Cannot map free space: more than ${this.#passes} passes over a volume's free ranges`,
        );
      }
      await this.#iter?.return(undefined);
      this.#iter = this.#analysis.ranges(this.#region);
      this.#pending = undefined;
      this.#end = 0;
    }
    this.#pos = to;
    for (;;) {
      const r = await this.#next();
      if (!r) return;
      if (r.offset + r.length <= from) continue;
      if (r.offset >= to) {
        this.#pending = r;
        return;
      }
      const a = Math.max(r.offset, from);
      const b = Math.min(r.offset + r.length, to);
      yield { offset: a, length: b - a };
      if (r.offset + r.length > to) {
        this.#pending = r;
        return;
      }
    }
  }

  async close(): Promise<void> {
    await this.#iter?.return(undefined);
  }
}

/** Lists the PV's free ranges in PV order, merging adjacent ones. */
async function* pvRanges(
  region: RegionReader,
  layout: PvLayout,
  mapped: Map<number, MappedVolume>,
): AsyncGenerator<FreeRange> {
  const cursors = new Map<
    number,
    { cursor: VolumeCursor; disk: PiecewiseDisk }
  >();
  let held: FreeRange | undefined;
  function* emit(r: FreeRange): Generator<FreeRange> {
    if (held && held.offset + held.length === r.offset) {
      held.length += r.length;
      return;
    }
    if (held) yield held;
    held = { ...r };
  }
  try {
    const { peStart, extentBytes } = layout;
    for (const run of layout.runs) {
      const at = peStart + run.pe * extentBytes;
      const length = run.count * extentBytes;
      if (run.volume === undefined) {
        yield* emit({ offset: at, length });
        continue;
      }
      const m = mapped.get(run.volume);
      if (!m) continue;
      let c = cursors.get(run.volume);
      if (!c) {
        const { disk, region: lv } = lvRegion(region, m.plan);
        c = { cursor: new VolumeCursor(m.analysis, lv, m.plan.passes), disk };
        cursors.set(run.volume, c);
      }
      // The LV bytes this run holds: the piece that starts here.
      const piece = m.pieces.get(at)!;
      for await (const r of c.cursor.within(piece.at, piece.at + length)) {
        for (const span of c.disk.locate(r.offset, r.length)) {
          yield* emit({ offset: span.to, length: span.length });
        }
      }
    }
    if (held) yield held;
  } finally {
    for (const { cursor } of cursors.values()) await cursor.close();
  }
}

/**
 * The LVM2 module, reading each LV's contents with `inner` (the
 * filesystem modules, as for a partition).
 *
 * @param inner What analyzes an LV's contents.
 * @returns The module.
 *
 * @example The module is registered with the filesystems
 * ```ts
 * import assert from "node:assert";
 * import { FILESYSTEMS } from "../filesystem.ts";
 * const lvm = FILESYSTEMS.find((m) => m.name === "LVM2 PV")!;
 * const head = new Uint8Array(2048);
 * head.set(new TextEncoder().encode("LABELONE"), 512);
 * head.set(new TextEncoder().encode("LVM2 001"), 512 + 24);
 * assert.ok(lvm.detect(head));
 * assert.ok(!lvm.detect(new Uint8Array(2048)));
 * ```
 */
export function createLvmModule(inner: VolumeAnalyzer): FilesystemModule {
  return {
    name: LVM_FOUND,
    headBytes: LABEL_SCAN_SECTORS * LVM_SECTOR,
    detect: (head) => labelSectors(head).length > 0,
    analyze: async (region) => {
      let pv: PhysicalVolume;
      try {
        pv = await readPhysicalVolume(region);
      } catch (err) {
        if (err instanceof Refusal) err.found = LVM_FOUND;
        throw err;
      }
      const { layout } = pv;
      const volumes: VolumeReport[] = [];
      const mapped = new Map<number, MappedVolume>();
      for (const [i, plan] of layout.volumes.entries()) {
        const { report, mapped: m } = await analyzeVolume(region, plan, inner);
        volumes.push(report);
        if (m) mapped.set(i, m);
      }
      const freeExtentBytes = layout.freeExtents * layout.extentBytes;
      const freeBytes = freeExtentBytes +
        volumes.reduce((n, v) => n + v.freeBytes, 0);
      return {
        found: LVM_FOUND,
        detail: describe(pv, volumes.length),
        freeBytes,
        volumes,
        async *ranges(again: RegionReader) {
          const now = await readPhysicalVolume(again).catch((err) => {
            if (!(err instanceof Refusal)) throw err;
            throw lvmChanged();
          });
          if (now.digest !== pv.digest) throw lvmChanged();
          yield* pvRanges(again, now.layout, mapped);
        },
      };
    },
  };
}

function lvmChanged(): IoError {
  return new IoError(
    "CHANGED",
    "Cannot map free space: the LVM2 label or metadata changed since it was read",
  );
}
