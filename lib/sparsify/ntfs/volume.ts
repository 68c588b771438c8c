/**
 * An NTFS volume as the free-space map reads it: the boot sector, the MFT
 * found through its own record 0 (following its attribute list when the
 * MFT is fragmented), records read through the MFT's data runs, and the
 * data of non-resident attributes read through theirs.
 *
 * @module
 */

import { Refusal, type RegionReader } from "../_region.ts";
import type { NtfsBoot } from "./boot.ts";
import {
  ATTR,
  ATTR_COMPRESSED,
  ATTR_ENCRYPTED,
  ATTR_SPARSE,
  type Attribute,
  find,
  type ListEntry,
  type MftRecord,
  parseAttributeList,
  parseRecord,
  RECORD_IN_USE,
  type Run,
  runsOf,
} from "./record.ts";

/** Largest attribute list read, in bytes. */
export const MAX_ATTRIBUTE_LIST = 1 << 20;
/** Largest single read, in bytes. */
export const MAX_READ = 1 << 20;

/** The MFT: where its records are. */
export interface Mft {
  /** `$MFT` data runs in VCN order, covering every record. */
  runs: Run[];
  /** Records the walk reads: the MFT's initialized size in records. */
  records: number;
}

/**
 * Reads `length` bytes at byte `offset` of an attribute's data through its
 * runs (sparse runs read as zeros). The bytes must lie inside the runs.
 *
 * @param region The volume.
 * @param boot Its geometry.
 * @param runs The attribute's runs, in VCN order.
 * @param offset Byte offset in the attribute.
 * @param length Bytes wanted.
 * @param what What is read, for refusals.
 * @returns The bytes.
 * @throws {Refusal} When the bytes are not covered by the runs or cannot be read.
 *
 * @example Bytes that straddle a data run and a sparse run
 * ```ts
 * import assert from "node:assert";
 * import { RegionReader } from "../_region.ts";
 * import type { NtfsBoot } from "./boot.ts";
 * import { readThroughRuns } from "./volume.ts";
 * const disk = new Uint8Array(8 * 512).fill(7);
 * const region = new RegionReader({ size: disk.length, read: (o, n) => Promise.resolve(disk.slice(o, o + n)) }, 0, disk.length);
 * const boot = { clusterSize: 512 } as NtfsBoot;
 * const runs = [{ vcn: 0, lcn: 3, length: 1 }, { vcn: 1, lcn: -1, length: 1 }];
 * const bytes = await readThroughRuns(region, boot, runs, 510, 4, "$DATA");
 * assert.deepStrictEqual([...bytes], [7, 7, 0, 0]);
 * await assert.rejects(readThroughRuns(region, boot, runs, 1000, 100, "$DATA"), /byte 1024 of its data is not covered/);
 * ```
 */
export async function readThroughRuns(
  region: RegionReader,
  boot: NtfsBoot,
  runs: Run[],
  offset: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  const cs = boot.clusterSize;
  const out = new Uint8Array(length);
  let done = 0;
  let k = runIndex(runs, Math.floor(offset / cs));
  while (done < length) {
    const pos = offset + done;
    const run = runs[k];
    if (!run || pos < run.vcn * cs || pos >= (run.vcn + run.length) * cs) {
      throw new Refusal(
        `${what}: byte ${pos} of its data is not covered by its data runs`,
      );
    }
    const n = Math.min(length - done, (run.vcn + run.length) * cs - pos);
    if (run.lcn >= 0) {
      const at = run.lcn * cs + (pos - run.vcn * cs);
      out.set(await region.read(at, n, what), done);
    }
    done += n;
    k++;
  }
  return out;
}

/** Index of the run holding `vcn` (or of the first run after it). */
function runIndex(runs: Run[], vcn: number): number {
  let lo = 0;
  let hi = runs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (runs[mid].vcn + runs[mid].length <= vcn) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * The entries of a record's attribute list, resident or not (read through
 * its runs, which must lie in the volume).
 *
 * @param region The volume.
 * @param boot Its geometry.
 * @param rec The record holding the list.
 * @param attr The `$ATTRIBUTE_LIST` attribute.
 * @returns The entries.
 * @throws {Refusal} When the list is larger than {@linkcode MAX_ATTRIBUTE_LIST},
 * does not start at VCN 0, or an entry overruns it.
 */
export async function attributeListOf(
  region: RegionReader,
  boot: NtfsBoot,
  rec: MftRecord,
  attr: Attribute,
): Promise<ListEntry[]> {
  const what = `attribute list of MFT record ${rec.number}`;
  if (attr.resident) {
    const { offset, length } = attr.resident;
    return parseAttributeList(
      rec.bytes.subarray(offset, offset + length),
      what,
    );
  }
  const nr = attr.nonResident!;
  if (nr.lowestVcn !== 0 || nr.dataSize > MAX_ATTRIBUTE_LIST) {
    throw new Refusal(
      `${what} has ${nr.dataSize} bytes from VCN ${nr.lowestVcn}; lists up to ${MAX_ATTRIBUTE_LIST} bytes from VCN 0 are read`,
    );
  }
  const runs = runsOf(rec, attr, boot, what);
  const bytes = await readThroughRuns(region, boot, runs, 0, nr.dataSize, what);
  return parseAttributeList(bytes, what);
}

/**
 * The unnamed `$DATA` of a system file, whole: its extents in VCN order
 * (from the base record, and from the records its attribute list names),
 * checked to be non-resident, neither compressed, encrypted nor sparse,
 * and to cover its allocated size.
 *
 * @param region The volume.
 * @param boot Its geometry.
 * @param base The base record.
 * @param load Reads another record (by number) through what is known of the MFT.
 * @param name The system file, for refusals (`$Bitmap`).
 * @returns The runs and the sizes.
 * @throws {Refusal} When the data is resident, has holes or flags, or its
 * extents do not add up.
 */
export async function systemData(
  region: RegionReader,
  boot: NtfsBoot,
  base: MftRecord,
  load: (n: number) => Promise<MftRecord>,
  name: string,
): Promise<{ runs: Run[]; dataSize: number; initializedSize: number }> {
  const what = `${name} (MFT record ${base.number}) $DATA`;
  if (!(base.header.flags & RECORD_IN_USE)) {
    throw new Refusal(`${name} (MFT record ${base.number}) is not in use`);
  }
  const [first, ...more] = find(base, ATTR.DATA);
  if (!first) throw new Refusal(`${what} is missing`);
  if (!first.nonResident || first.nonResident.lowestVcn !== 0) {
    throw new Refusal(`${what} is not a non-resident attribute from VCN 0`);
  }
  const nr = first.nonResident;
  const runs: Run[] = [];
  const add = (rec: MftRecord, attr: Attribute) => {
    if (attr.flags & (ATTR_COMPRESSED | ATTR_ENCRYPTED | ATTR_SPARSE)) {
      throw new Refusal(
        `${what} is compressed, encrypted or sparse (flags ${attr.flags})`,
      );
    }
    const part = runsOf(rec, attr, boot, what);
    const next = runs.length === 0 ? 0 : runs.at(-1)!.vcn + runs.at(-1)!.length;
    if (attr.nonResident!.lowestVcn !== next) {
      throw new Refusal(
        `${what}: an extent starts at VCN ${
          attr.nonResident!.lowestVcn
        }, the data so far ends at VCN ${next}`,
      );
    }
    for (const r of part) {
      if (r.lcn < 0) {
        throw new Refusal(`${what} has a sparse run at VCN ${r.vcn}`);
      }
      runs.push(r);
    }
  };
  add(base, first);
  for (const a of more) add(base, a);
  const list = find(base, ATTR.ATTRIBUTE_LIST)[0];
  const wanted = Math.ceil(nr.allocatedSize / boot.clusterSize);
  if (list) {
    const entries = (await attributeListOf(region, boot, base, list))
      .filter((e) =>
        e.type === ATTR.DATA && e.name === "" && e.record !== base.number
      )
      .sort((a, b) => a.lowestVcn - b.lowestVcn);
    for (const e of entries) {
      const rec = await load(e.record);
      if (rec.header.base !== base.number) {
        throw new Refusal(
          `${what}: its attribute list names MFT record ${e.record}, which belongs to record ${rec.header.base}`,
        );
      }
      const ext = find(rec, ATTR.DATA).find((a) =>
        a.nonResident?.lowestVcn === e.lowestVcn
      );
      if (!ext) {
        throw new Refusal(
          `${what}: MFT record ${e.record} holds no extent from VCN ${e.lowestVcn}`,
        );
      }
      add(rec, ext);
    }
  }
  const covered = runs.length === 0
    ? 0
    : runs.at(-1)!.vcn + runs.at(-1)!.length;
  if (covered !== wanted || nr.dataSize > covered * boot.clusterSize) {
    throw new Refusal(
      `${what}: runs cover ${covered} clusters, its allocated size ${nr.allocatedSize} needs ${wanted}`,
    );
  }
  return {
    runs,
    dataSize: nr.dataSize,
    initializedSize: nr.initializedSize,
  };
}

/**
 * Finds the MFT from record 0: its `$DATA` runs (following the attribute
 * list when the MFT is fragmented, reading the extension records through
 * the runs known so far), checked against the boot sector's `$MFT` LCN.
 *
 * @param region The volume.
 * @param boot Its geometry.
 * @returns The MFT and record 0.
 * @throws {Refusal} When record 0 or the runs are not valid.
 */
export async function openMft(
  region: RegionReader,
  boot: NtfsBoot,
): Promise<{ mft: Mft; record0: MftRecord }> {
  const rs = boot.recordSize;
  const bytes = await region.read(
    boot.mftLcn * boot.clusterSize,
    rs,
    "MFT record 0 ($MFT)",
  );
  const record0 = parseRecord(bytes, 0);
  if (!record0) throw new Refusal("MFT record 0 ($MFT) is empty");
  // Extension records are read through the runs found so far.
  let known: Run[] = [];
  const load = async (n: number): Promise<MftRecord> => {
    const b = await readThroughRuns(
      region,
      boot,
      known,
      n * rs,
      rs,
      `MFT record ${n}`,
    );
    const rec = parseRecord(b, n);
    if (!rec || !(rec.header.flags & RECORD_IN_USE)) {
      throw new Refusal(`MFT record ${n}, an extent of $MFT, is not in use`);
    }
    return rec;
  };
  const first = find(record0, ATTR.DATA)[0];
  if (first?.nonResident && first.nonResident.lowestVcn === 0) {
    known = runsOf(record0, first, boot, "$MFT $DATA");
  }
  const data = await systemData(region, boot, record0, load, "$MFT");
  if (data.runs[0]?.lcn !== boot.mftLcn) {
    throw new Refusal(
      `$MFT data starts at LCN ${
        data.runs[0]?.lcn
      }, the boot sector says ${boot.mftLcn}`,
    );
  }
  checkNoOverlap(data.runs, "$MFT");
  const records = Math.floor(data.initializedSize / rs);
  if (records < 16) {
    throw new Refusal(
      `$MFT holds ${records} records, fewer than the 16 system records`,
    );
  }
  return { mft: { runs: data.runs, records }, record0 };
}

/**
 * Refuses when two runs of one attribute share clusters (sparse runs have
 * none).
 *
 * @param runs The runs.
 * @param what The attribute, for the refusal.
 * @throws {Refusal} When two runs overlap.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { checkNoOverlap } from "./volume.ts";
 * const runs = [{ vcn: 0, lcn: 10, length: 4 }, { vcn: 4, lcn: 12, length: 1 }];
 * assert.throws(() => checkNoOverlap(runs, "$MFT"), /\$MFT: its data runs share clusters from LCN 12/);
 * ```
 */
export function checkNoOverlap(runs: Run[], what: string): void {
  const sorted = runs.filter((r) => r.lcn >= 0).sort((a, b) => a.lcn - b.lcn);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].lcn < prev.lcn + prev.length) {
      throw new Refusal(
        `${what}: its data runs share clusters from LCN ${sorted[i].lcn}`,
      );
    }
  }
}

/**
 * Reads records `[first, first + count)` of the MFT, raw (fixups not
 * undone).
 *
 * @param region The volume.
 * @param boot Its geometry.
 * @param mft The MFT.
 * @param first First record.
 * @param count Records.
 * @returns Their bytes, back to back.
 * @throws {Refusal} When they are not covered by the MFT's runs or cannot be read.
 */
export function readRecords(
  region: RegionReader,
  boot: NtfsBoot,
  mft: Mft,
  first: number,
  count: number,
): Promise<Uint8Array> {
  return readThroughRuns(
    region,
    boot,
    mft.runs,
    first * boot.recordSize,
    count * boot.recordSize,
    `MFT records ${first}-${first + count - 1}`,
  );
}

/**
 * Reads and parses one MFT record.
 *
 * @param region The volume.
 * @param boot Its geometry.
 * @param mft The MFT.
 * @param n The record number.
 * @returns The record.
 * @throws {Refusal} When it lies past the MFT, is empty or is not valid.
 */
export async function loadRecord(
  region: RegionReader,
  boot: NtfsBoot,
  mft: Mft,
  n: number,
): Promise<MftRecord> {
  if (n >= mft.records) {
    throw new Refusal(
      `MFT record ${n} lies past the MFT's ${mft.records} records`,
    );
  }
  const rec = parseRecord(await readRecords(region, boot, mft, n, 1), n);
  if (!rec) throw new Refusal(`MFT record ${n} is empty`);
  return rec;
}
