/**
 * A volume group as its text metadata describes it: the physical volumes,
 * and each logical volume's segments. Only what the free-space map needs
 * is kept; every field read is type-checked and every count bounded.
 *
 * ```text
 * vg0 {
 *   id = "..."  seqno = 3  status = ["RESIZEABLE", "READ", "WRITE"]  flags = []
 *   extent_size = 8192                      # sectors of 512 bytes
 *   physical_volumes {
 *     pv0 { id = "..."  status = ["ALLOCATABLE"]  flags = []
 *           dev_size = 131072  pe_start = 2048  pe_count = 15 }   # sectors, extents
 *   }
 *   logical_volumes {
 *     root { id = "..."  status = ["READ", "WRITE", "VISIBLE"]  flags = []
 *            segment_count = 1
 *            segment1 { start_extent = 0  extent_count = 5  type = "striped"
 *                       stripe_count = 1  stripes = ["pv0", 2] } }   # PV, first extent
 *   }
 * }
 * contents = "Text Format Volume Group"  version = 1  description = "..."
 * ```
 *
 * @module
 */

import { Refusal } from "../_region.ts";
import type { ConfigSection } from "./config.ts";

/** Most physical volumes in a VG. */
export const MAX_PVS = 1024;
/** Most logical volumes in a VG. */
export const MAX_LVS = 4096;
/** Most segments of one LV. */
export const MAX_SEGMENTS = 4096;
/** Most segments of all LVs together. */
export const MAX_ALL_SEGMENTS = 65536;

/** VG status words (lib/format_text/flags.c); PVMOVE is refused apart. */
const VG_STATUS = new Set([
  "RESIZEABLE",
  "READ",
  "WRITE",
  "EXPORTED",
  "CLUSTERED",
  "SHARED",
]);
/** PV status words and flags. */
const PV_STATUS = new Set(["ALLOCATABLE", "EXPORTED"]);
const PV_FLAGS = new Set(["MISSING"]);
/** LV status words that leave a linear LV as it is; PVMOVE, LOCKED refused apart. */
const LV_STATUS = new Set(["READ", "WRITE", "VISIBLE", "FIXED_MINOR"]);
/**
 * VG and LV flags (LVM2's "compatible" words) that leave a linear LV as
 * it is: whether it is activated by default, and a lock against older
 * LVM2 versions writing it. Any other (CACHE_VOL, ERROR_WHEN_FULL, ...)
 * belongs to a kind of LV that is not read.
 */
const VG_FLAGS = new Set(["NOAUTOACTIVATE", "WRITE_LOCKED"]);
const LV_FLAGS = new Set(["ACTIVATION_SKIP", "NOAUTOACTIVATE", "WRITE_LOCKED"]);
/** Keys of a segment of type striped. */
const STRIPED_KEYS = new Set([
  "start_extent",
  "extent_count",
  "type",
  "stripe_count",
  "stripe_size",
  "stripes",
  "tags",
]);

/** A physical volume of the VG. */
export interface PvEntry {
  /** Its key in `physical_volumes` (`pv0`), which segments name. */
  key: string;
  /** Its UUID, dashed. */
  id: string;
  /** Marked missing (its device was not found when the metadata was written). */
  missing: boolean;
  /** Device size, in sectors. */
  devSize: number;
  /** Where its first extent starts, in sectors. */
  peStart: number;
  /** Extents. */
  peCount: number;
}

/** A segment of an LV: LV extents and where they are. */
export interface SegmentEntry {
  /** Its number (`segment3` is 3). */
  number: number;
  /** First LV extent. */
  startExtent: number;
  /** Extents. */
  extentCount: number;
  /** Segment type (`striped`, `snapshot`, `thin-pool`, ...). */
  type: string;
  /** For `striped`: the stripes, each a PV key and its first extent. */
  stripes?: Array<{ pv: string; pe: number }>;
}

/** A logical volume of the VG. */
export interface LvEntry {
  name: string;
  /** Status words (`READ`, `WRITE`, `VISIBLE`, ...). */
  status: string[];
  /** Visible to users (hidden LVs are parts of others). */
  visible: boolean;
  /** Segments by start extent: contiguous from 0. */
  segments: SegmentEntry[];
  /** Extents, all segments together. */
  extents: number;
}

/** A volume group, as its metadata describes it. */
export interface VolumeGroup {
  name: string;
  id: string;
  seqno: number;
  /** Extent size, in sectors. */
  extentSize: number;
  pvs: PvEntry[];
  lvs: LvEntry[];
}

function checkWords(
  words: string[],
  known: Set<string>,
  what: string,
): void {
  for (const w of words) {
    if (!known.has(w)) throw new Refusal(`${what} has unknown word "${w}"`);
  }
}

/** Reads a PV entry. */
function readPv(key: string, s: ConfigSection): PvEntry {
  const what = `PV ${key}`;
  checkWords(s.strings("status"), PV_STATUS, `${what} status`);
  const flags = s.has("flags") ? s.strings("flags") : [];
  checkWords(flags, PV_FLAGS, `${what} flags`);
  return {
    key,
    id: s.string("id"),
    missing: flags.includes("MISSING"),
    devSize: s.integer("dev_size"),
    peStart: s.integer("pe_start"),
    peCount: s.integer("pe_count"),
  };
}

/** Reads an LV's segments, checking that they tile its extents from 0. */
function readSegments(
  vg: string,
  name: string,
  s: ConfigSection,
  pvKeys: Set<string>,
): SegmentEntry[] {
  const what = `LV ${vg}/${name}`;
  const count = s.integer("segment_count", 1);
  if (count > MAX_SEGMENTS) {
    throw new Refusal(
      `${what} has ${count} segments (at most ${MAX_SEGMENTS})`,
    );
  }
  const segments: SegmentEntry[] = [];
  for (let n = 1; n <= count; n++) {
    const seg = s.section(`segment${n}`);
    const type = seg.string("type");
    const entry: SegmentEntry = {
      number: n,
      startExtent: seg.integer("start_extent"),
      extentCount: seg.integer("extent_count", 1),
      type,
    };
    if (type === "striped") {
      for (const k of seg.keys()) {
        if (!STRIPED_KEYS.has(k)) {
          throw new Refusal(
            `${what} segment ${n} has unknown key "${k}" for type striped`,
          );
        }
      }
      const stripeCount = seg.integer("stripe_count", 1);
      const list = seg.list("stripes");
      if (list.length !== 2 * stripeCount) {
        throw new Refusal(
          `${what} segment ${n} lists ${list.length} stripe values for stripe_count ${stripeCount}`,
        );
      }
      if (entry.extentCount % stripeCount !== 0) {
        throw new Refusal(
          `${what} segment ${n}: ${entry.extentCount} extents do not divide into ${stripeCount} stripes`,
        );
      }
      entry.stripes = [];
      for (let i = 0; i < list.length; i += 2) {
        const [pv, pe] = [list[i], list[i + 1]];
        if (typeof pv !== "string" || typeof pe !== "number" || pe < 0) {
          throw new Refusal(
            `${what} segment ${n} stripe ${
              i / 2
            } is not a PV name and an extent`,
          );
        }
        if (!pvKeys.has(pv)) {
          throw new Refusal(
            `${what} segment ${n} names "${pv}", which is not a PV of the VG`,
          );
        }
        entry.stripes.push({ pv, pe });
      }
    }
    segments.push(entry);
  }
  const inner = s.keys().filter((k) => {
    const v = s.get(k);
    return typeof v === "object" && !Array.isArray(v);
  });
  if (inner.length !== count) {
    throw new Refusal(
      `${what} has ${inner.length} sections, its segment_count is ${count}`,
    );
  }
  segments.sort((a, b) => a.startExtent - b.startExtent);
  let next = 0;
  for (const seg of segments) {
    if (seg.startExtent !== next) {
      throw new Refusal(
        `${what} segment ${seg.number} starts at extent ${seg.startExtent}, not ${next}: segments ${
          seg.startExtent < next ? "overlap" : "leave a gap"
        }`,
      );
    }
    next += seg.extentCount;
    if (!Number.isSafeInteger(next)) {
      throw new Refusal(`${what} has more extents than can be counted`);
    }
  }
  return segments;
}

/**
 * Reads the volume group from parsed metadata text and checks it: the
 * header keys, every status word against LVM2's lists, every PV and LV
 * entry's fields, the segments of each LV (contiguous from extent 0, their
 * stripes naming PVs of the VG).
 *
 * @param root The parsed text.
 * @returns The volume group.
 * @throws {Refusal} When anything is missing, of the wrong kind, unknown or
 * inconsistent, or a pvmove is under way.
 *
 * @example Read a VG with one linear LV
 * ```ts
 * import assert from "node:assert";
 * import { parseLvmConfig } from "./config.ts";
 * import { readVolumeGroup } from "./metadata.ts";
 * const vg = readVolumeGroup(parseLvmConfig(`vg0 {
 *   id = "x" seqno = 3 status = ["READ", "WRITE"] flags = [] extent_size = 8192
 *   physical_volumes { pv0 { id = "y" status = ["ALLOCATABLE"] flags = []
 *     dev_size = 131072 pe_start = 2048 pe_count = 15 } }
 *   logical_volumes { root { id = "z" status = ["READ", "WRITE", "VISIBLE"] flags = []
 *     segment_count = 1 segment1 { start_extent = 0 extent_count = 5
 *       type = "striped" stripe_count = 1 stripes = ["pv0", 2] } } }
 * }
 * contents = "Text Format Volume Group"
 * version = 1`));
 * assert.strictEqual(vg.lvs[0].extents, 5);
 * assert.deepStrictEqual(vg.lvs[0].segments[0].stripes, [{ pv: "pv0", pe: 2 }]);
 * ```
 */
export function readVolumeGroup(root: ConfigSection): VolumeGroup {
  if (
    root.has("contents") && root.get("contents") !== "Text Format Volume Group"
  ) {
    throw new Refusal(`metadata contents is not "Text Format Volume Group"`);
  }
  if (root.integer("version") !== 1) {
    throw new Refusal(`metadata version ${root.get("version")} is not 1`);
  }
  const sections = root.keys().filter((k) => {
    const v = root.get(k);
    return typeof v === "object" && !Array.isArray(v);
  });
  if (sections.length !== 1) {
    throw new Refusal(
      `metadata text holds ${sections.length} sections, not one volume group`,
    );
  }
  const name = sections[0];
  const s = root.section(name);
  const status = s.strings("status");
  if (status.includes("PVMOVE")) {
    throw new Refusal(`VG ${name}: a pvmove is under way`);
  }
  checkWords(status, VG_STATUS, `VG ${name} status`);
  if (s.has("flags")) {
    checkWords(s.strings("flags"), VG_FLAGS, `VG ${name} flags`);
  }
  if (s.has("format") && s.get("format") !== "lvm2") {
    throw new Refusal(`VG ${name} format is not "lvm2"`);
  }
  for (const k of s.keys()) {
    const v = s.get(k);
    if (
      typeof v === "object" && !Array.isArray(v) &&
      !["physical_volumes", "logical_volumes", "historical_logical_volumes"]
        .includes(k)
    ) {
      throw new Refusal(`VG ${name} has unknown section ${k}`);
    }
  }
  const pvSections = s.section("physical_volumes").sections();
  if (pvSections.length === 0 || pvSections.length > MAX_PVS) {
    throw new Refusal(
      `VG ${name} has ${pvSections.length} PVs (1-${MAX_PVS} are read)`,
    );
  }
  const pvs = pvSections.map(([k, v]) => readPv(k, v));
  const ids = new Set<string>();
  for (const pv of pvs) {
    if (ids.has(pv.id)) {
      throw new Refusal(`VG ${name} lists PV ${pv.id} twice`);
    }
    ids.add(pv.id);
  }
  const pvKeys = new Set(pvs.map((p) => p.key));
  const lvSections = s.has("logical_volumes")
    ? s.section("logical_volumes").sections()
    : [];
  if (lvSections.length > MAX_LVS) {
    throw new Refusal(
      `VG ${name} has ${lvSections.length} LVs (at most ${MAX_LVS})`,
    );
  }
  let all = 0;
  const lvs = lvSections.map(([lv, ls]): LvEntry => {
    const what = `LV ${name}/${lv}`;
    const lvStatus = ls.strings("status");
    for (const w of ["PVMOVE", "LOCKED"]) {
      if (lvStatus.includes(w)) {
        throw new Refusal(`${what} is being moved (status ${w})`);
      }
    }
    checkWords(lvStatus, LV_STATUS, `${what} status`);
    if (ls.has("flags")) {
      checkWords(ls.strings("flags"), LV_FLAGS, `${what} flags`);
    }
    const segments = readSegments(name, lv, ls, pvKeys);
    all += segments.length;
    if (all > MAX_ALL_SEGMENTS) {
      throw new Refusal(
        `VG ${name} has more than ${MAX_ALL_SEGMENTS} segments`,
      );
    }
    const last = segments[segments.length - 1];
    return {
      name: lv,
      status: lvStatus,
      visible: lvStatus.includes("VISIBLE"),
      segments,
      extents: last.startExtent + last.extentCount,
    };
  });
  return {
    name,
    id: s.string("id"),
    seqno: s.integer("seqno", 1),
    extentSize: s.integer("extent_size", 1),
    pvs,
    lvs,
  };
}
