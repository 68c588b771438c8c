/**
 * What a physical volume's extents hold, decided from the VG metadata and
 * checked against the label and the region: which extents are free, which
 * belong to which LV, and which LVs can be read as a filesystem.
 *
 * The whole PV is refused when any LV of the VG is anything but linear
 * (a snapshot, thin pool or volume, RAID, mirror, cache, VDO, striped over
 * several stripes, an unknown type): such LVs reach extents through other
 * LVs, and their data is not a filesystem at a plain offset. An LV with
 * extents on other PVs is kept as it is (its extents here are copied, not
 * read), and so is a hidden LV; the rest of the PV is still mapped.
 *
 * @module
 */

import { Refusal } from "../_region.ts";
import type { Piece } from "../_piecewise.ts";
import { LABEL_SCAN_SECTORS, LVM_SECTOR, type PvLabel } from "./label.ts";
import type { LvEntry, PvEntry, VolumeGroup } from "./metadata.ts";

/**
 * Most passes over one LV's free ranges: they are listed in PV order,
 * and each time the LV's segments go backwards on the PV the LV's ranges
 * are listed again from its start. An LV needing more is kept as it is.
 */
export const MAX_PASSES = 8;

/** A run of this PV's extents: free, or part of one LV segment. */
export interface ExtentRun {
  /** First physical extent. */
  pe: number;
  /** Extents. */
  count: number;
  /** Index in {@linkcode PvLayout.volumes}, when an LV uses the run. */
  volume?: number;
}

/** An LV with extents on this PV, and whether it is read. */
export interface VolumePlan {
  /** `vg/lv`. */
  name: string;
  /** The LV. */
  lv: LvEntry;
  /** Its bytes. */
  length: number;
  /** Its pieces on the PV, by LV offset (PV offsets), when it is read. */
  pieces?: Piece[];
  /** Why it is copied as it is, when it is not read. */
  kept?: string;
  /** Passes over its free ranges that PV order takes. */
  passes: number;
}

/** This PV's extents, checked. */
export interface PvLayout {
  /** This PV's entry in the metadata. */
  pv: PvEntry;
  /** Bytes per extent. */
  extentBytes: number;
  /** PV offset of the first extent. */
  peStart: number;
  /** Every extent of the PV once, in order. */
  runs: ExtentRun[];
  /** LVs with extents here, in metadata order. */
  volumes: VolumePlan[];
  /** Extents no LV uses. */
  freeExtents: number;
}

/** Names of the segment types that are not linear, for refusals. */
const KINDS: Array<[RegExp, string]> = [
  [/^snapshot$/, "a snapshot"],
  [/^thin-pool$/, "a thin pool"],
  [/^thin$/, "a thin volume"],
  [/^raid/, "a RAID volume"],
  [/^mirror$/, "a mirror"],
  [/^(cache|cache-pool|writecache)$/, "a cache volume"],
  [/^vdo(-pool)?$/, "a VDO volume"],
  [/^integrity$/, "an integrity volume"],
  [/^(error|zero|free)$/, "a virtual volume"],
];

function kindOf(type: string): string {
  return KINDS.find(([re]) => re.test(type))?.[1] ??
    "a volume of an unknown kind";
}

function range(a: number, b: number): string {
  return a === b ? `extent ${a}` : `extents ${a}-${b}`;
}

/** Bytes from sectors or extents, refusing what cannot be counted exactly. */
function bytes(n: number, unit: number, what: string): number {
  const v = n * unit;
  if (!Number.isSafeInteger(v)) {
    throw new Refusal(`${what} ${n} is out of range`);
  }
  return v;
}

/**
 * Lays out a PV's extents from the VG metadata, checked against the label
 * (device size, data area, metadata and bootloader areas) and the region.
 *
 * @param label The PV label.
 * @param vg The volume group, from the PV's metadata.
 * @param regionLength The region's length, when known.
 * @returns The layout.
 * @throws {Refusal} When this PV is not in the VG or marked missing, the
 * extents do not fit the device, the data area or the region, overlap a
 * metadata area, an LV is not linear, a segment lies past its PV's last
 * extent, or two segments share an extent.
 *
 * @example Free extents around an LV
 * ```ts
 * import assert from "node:assert";
 * import { parseLvmConfig } from "./config.ts";
 * import { readVolumeGroup } from "./metadata.ts";
 * import { planPv } from "./layout.ts";
 * const vg = readVolumeGroup(parseLvmConfig(`vg0 {
 *   id = "x" seqno = 1 status = ["READ"] extent_size = 2048
 *   physical_volumes { pv0 { id = "a" status = [] dev_size = 32768 pe_start = 2048 pe_count = 15 } }
 *   logical_volumes { root { id = "z" status = ["READ", "VISIBLE"] segment_count = 1
 *     segment1 { start_extent = 0 extent_count = 5 type = "striped" stripe_count = 1 stripes = ["pv0", 2] } } }
 * }
 * version = 1`));
 * const label = {
 *   sector: 1, uuid: "a", deviceSize: 16 << 20, dataArea: { offset: 1 << 20, size: 0 },
 *   metadataAreas: [{ offset: 4096, size: 1044480 }], bootloaderAreas: [],
 * };
 * const layout = planPv(label, vg, 16 << 20);
 * assert.deepStrictEqual(layout.runs, [{ pe: 0, count: 2 }, { pe: 2, count: 5, volume: 0 }, { pe: 7, count: 8 }]);
 * assert.deepStrictEqual(layout.volumes[0].pieces, [{ at: 0, length: 5 << 20, to: 3 << 20 }]);
 * ```
 */
export function planPv(
  label: PvLabel,
  vg: VolumeGroup,
  regionLength: number | undefined,
): PvLayout {
  const pv = vg.pvs.find((p) => p.id === label.uuid);
  if (!pv) {
    throw new Refusal(
      `this PV (UUID ${label.uuid}) is not among VG ${vg.name}'s PVs`,
    );
  }
  if (pv.missing) {
    throw new Refusal(`VG ${vg.name} marks this PV (${pv.key}) missing`);
  }
  const extentBytes = bytes(vg.extentSize, LVM_SECTOR, "extent_size");
  const peStart = bytes(pv.peStart, LVM_SECTOR, "pe_start");
  const peEnd = peStart + bytes(pv.peCount, extentBytes, "pe_count");
  const devBytes = bytes(pv.devSize, LVM_SECTOR, "dev_size");
  if (!Number.isSafeInteger(peEnd)) {
    throw new Refusal(`pe_start + pe_count is out of range`);
  }
  const real = regionLength ?? label.deviceSize;
  if (label.deviceSize > real) {
    throw new Refusal(
      `the PV header says the device holds ${label.deviceSize} bytes, the region ${real}: truncated`,
    );
  }
  if (devBytes > real) {
    throw new Refusal(
      `the metadata says PV ${pv.key} holds ${devBytes} bytes (dev_size ${pv.devSize}), the region ${real}: truncated`,
    );
  }
  if (peEnd > Math.min(devBytes, label.deviceSize)) {
    throw new Refusal(
      `PV ${pv.key}'s ${pv.peCount} extents from byte ${peStart} end at byte ${peEnd}, past the device's ${
        Math.min(devBytes, label.deviceSize)
      } bytes`,
    );
  }
  const da = label.dataArea;
  const daEnd = da.size === 0 ? label.deviceSize : da.offset + da.size;
  if (pv.peCount > 0 && (peStart < da.offset || peEnd > daEnd)) {
    throw new Refusal(
      `PV ${pv.key}'s extents (bytes ${peStart}-${
        peEnd - 1
      }) lie outside the data area the PV header names (bytes ${da.offset}-${
        daEnd - 1
      })`,
    );
  }
  if (pv.peCount > 0 && peStart < LABEL_SCAN_SECTORS * LVM_SECTOR) {
    throw new Refusal(`pe_start ${pv.peStart} lies on the label sectors`);
  }
  for (
    const [what, areas] of [
      ["metadata area", label.metadataAreas],
      ["bootloader area", label.bootloaderAreas],
    ] as const
  ) {
    for (const a of areas) {
      if (pv.peCount > 0 && a.offset < peEnd && peStart < a.offset + a.size) {
        throw new Refusal(
          `PV ${pv.key}'s extents (bytes ${peStart}-${
            peEnd - 1
          }) overlap a ${what} (bytes ${a.offset}-${a.offset + a.size - 1})`,
        );
      }
    }
  }

  // Every LV linear; every segment inside its PV; no extent used twice.
  const byPv = new Map<
    string,
    Array<
      { pe: number; count: number; lv: number; seg: number; lvExtent: number }
    >
  >();
  const pvByKey = new Map(vg.pvs.map((p) => [p.key, p]));
  vg.lvs.forEach((lv, i) => {
    for (const seg of lv.segments) {
      if (seg.type !== "striped") {
        throw new Refusal(
          `LV ${vg.name}/${lv.name} is ${
            kindOf(seg.type)
          } (segment ${seg.number} type "${seg.type}")`,
        );
      }
      const stripes = seg.stripes!;
      if (stripes.length !== 1) {
        throw new Refusal(
          `LV ${vg.name}/${lv.name} is striped over ${stripes.length} stripes (segment ${seg.number})`,
        );
      }
      const { pv: key, pe } = stripes[0];
      const owner = pvByKey.get(key)!;
      const end = pe + seg.extentCount;
      if (!Number.isSafeInteger(end) || end > owner.peCount) {
        throw new Refusal(
          `LV ${vg.name}/${lv.name} segment ${seg.number} uses ${
            range(pe, end - 1)
          } of PV ${key}, which has ${owner.peCount} extents`,
        );
      }
      let list = byPv.get(key);
      if (!list) byPv.set(key, list = []);
      list.push({
        pe,
        count: seg.extentCount,
        lv: i,
        seg: seg.number,
        lvExtent: seg.startExtent,
      });
    }
  });
  for (const [key, list] of byPv) {
    list.sort((a, b) => a.pe - b.pe);
    for (let k = 1; k < list.length; k++) {
      const a = list[k - 1];
      const b = list[k];
      if (b.pe < a.pe + a.count) {
        throw new Refusal(
          `LV ${vg.name}/${
            vg.lvs[a.lv].name
          } segment ${a.seg} and LV ${vg.name}/${
            vg.lvs[b.lv].name
          } segment ${b.seg} both use ${
            range(b.pe, Math.min(a.pe + a.count, b.pe + b.count) - 1)
          } of PV ${key}`,
        );
      }
    }
  }

  // This PV's runs, and the LVs that have extents here (each LV's uses in
  // PV order).
  const here = byPv.get(pv.key) ?? [];
  const usesOf = new Map<number, Use[]>();
  for (const u of here) {
    let list = usesOf.get(u.lv);
    if (!list) usesOf.set(u.lv, list = []);
    list.push(u);
  }
  const volumeOf = new Map<number, number>();
  const volumes: VolumePlan[] = [];
  for (const [i, lv] of vg.lvs.entries()) {
    const uses = usesOf.get(i);
    if (!uses) continue;
    volumeOf.set(i, volumes.length);
    volumes.push(planVolume(vg, lv, pv, peStart, extentBytes, uses));
  }
  const runs: ExtentRun[] = [];
  let next = 0;
  for (const u of here) {
    if (u.pe > next) runs.push({ pe: next, count: u.pe - next });
    runs.push({ pe: u.pe, count: u.count, volume: volumeOf.get(u.lv)! });
    next = u.pe + u.count;
  }
  if (next < pv.peCount) runs.push({ pe: next, count: pv.peCount - next });
  const used = here.reduce((n, u) => n + u.count, 0);
  return {
    pv,
    extentBytes,
    peStart,
    runs,
    volumes,
    freeExtents: pv.peCount - used,
  };
}

/** An LV segment's use of a PV's extents. */
interface Use {
  pe: number;
  count: number;
  /** Index of the LV in the VG. */
  lv: number;
  /** Segment number. */
  seg: number;
  /** The segment's first LV extent. */
  lvExtent: number;
}

/** Decides whether an LV with extents on this PV (`mine`, in PV order) is read. */
function planVolume(
  vg: VolumeGroup,
  lv: LvEntry,
  pv: PvEntry,
  peStart: number,
  extentBytes: number,
  mine: Use[],
): VolumePlan {
  const name = `${vg.name}/${lv.name}`;
  const length = bytes(lv.extents, extentBytes, `LV ${name} extent count`);
  const elsewhere = lv.segments.filter((s) => s.stripes![0].pv !== pv.key);
  // In PV order, how often the LV's extents go backwards.
  let passes = 1;
  for (let k = 1; k < mine.length; k++) {
    if (mine[k].lvExtent < mine[k - 1].lvExtent) passes++;
  }
  const plan = { name, lv, length, passes };
  if (elsewhere.length > 0) {
    const n = elsewhere.reduce((a, s) => a + s.extentCount, 0);
    const pvs = [...new Set(elsewhere.map((s) => s.stripes![0].pv))];
    return {
      ...plan,
      kept: `${n} of its ${lv.extents} extents lie on other PVs (${
        pvs.join(", ")
      }): its extents here are copied as they are`,
    };
  }
  if (!lv.visible) {
    return { ...plan, kept: "a hidden LV (part of another), not read" };
  }
  if (passes > MAX_PASSES) {
    return {
      ...plan,
      kept:
        `its segments go back and forth on the PV (${passes} passes over its free space, at most ${MAX_PASSES})`,
    };
  }
  return {
    ...plan,
    pieces: lv.segments.map((s) => ({
      at: s.startExtent * extentBytes,
      length: s.extentCount * extentBytes,
      to: peStart + s.stripes![0].pe * extentBytes,
    })),
  };
}
