/**
 * The NTFS module. A cluster is called free only when `$Bitmap` says so
 * and no in-use MFT record has data there. What is read and checked:
 *
 * - the boot sector: geometry, against the partition length;
 * - `$MFT` from record 0 (its attribute list followed when the MFT is
 *   fragmented), its first LCN against the boot sector;
 * - `$MFTMirr` (record 1): its first LCN against the boot sector, and its
 *   copies of the first records against the MFT's;
 * - `$LogFile` (record 2): empty, or its latest restart area clean;
 * - `$Volume` (record 3): version 3.0 or 3.1, not dirty, no chkdsk under
 *   way, no unknown flag;
 * - `$Bitmap` (record 6): its size against the cluster count, the bits
 *   past the last cluster set;
 * - every MFT record, with update sequence fixups checked: records 0-11
 *   (the system files) in use; every in-use record's attributes walked and
 *   every data run decoded and bounded; no run of an in-use record may
 *   touch a cluster `$Bitmap` calls free; every record an attribute list
 *   names must be in use (and so checked); `hiberfil.sys` in the root must
 *   not hold a hibernated Windows.
 *
 * The boot sector's backup, in the sector after the volume, lies past the
 * last cluster and so is never listed.
 *
 * @module
 */

import { IoError } from "../../format/errors.ts";
import { Refusal, type RegionReader } from "../_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "../filesystem.ts";
import type { FreeRange } from "../report.ts";
import { ClusterBitmap } from "./bitmap.ts";
import {
  isNtfs,
  NTFS_BOOT_SIZE,
  type NtfsBoot,
  parseNtfsBoot,
} from "./boot.ts";
import { checkLogFile, LOGFILE_HEAD_BYTES } from "./logfile.ts";
import {
  ATTR,
  find,
  forEachRun,
  type MftRecord,
  parseRecord,
  RECORD_IN_USE,
  runsOf,
} from "./record.ts";
import {
  attributeListOf,
  checkNoOverlap,
  loadRecord,
  MAX_READ,
  type Mft,
  openMft,
  readRecords,
  readThroughRuns,
  systemData,
} from "./volume.ts";

/** Largest cluster bitmap held, in bytes (4 TiB of 4 KiB clusters). */
export const MAX_BITMAP_BYTES = 128 * 1024 * 1024;
/** Most attribute list references checked. */
export const MAX_LIST_REFERENCES = 1 << 20;
/** Most attribute list bytes read, all lists together. */
export const MAX_LIST_BYTES = 64 * 1024 * 1024;
/** System file records that must be in use: `$MFT` to `$Extend`. */
const SYSTEM_RECORDS = 12;
/** The root directory's record. */
const ROOT_RECORD = 5;

/** `$VOLUME_INFORMATION` flags. */
export const VOLUME = {
  IS_DIRTY: 0x0001,
  RESIZE_LOG_FILE: 0x0002,
  UPGRADE_ON_MOUNT: 0x0004,
  MOUNTED_ON_NT4: 0x0008,
  DELETE_USN_UNDERWAY: 0x0010,
  REPAIR_OBJECT_ID: 0x0020,
  /** Seen on volumes Windows keeps in use; its meaning is not documented. */
  UNDOCUMENTED_0080: 0x0080,
  CHKDSK_UNDERWAY: 0x4000,
  MODIFIED_BY_CHKDSK: 0x8000,
} as const;
const VOLUME_KNOWN = Object.values(VOLUME).reduce((a, b) => a | b, 0);

/** A piece of `$Bitmap` as read: where, and its SHA-256. */
interface BitmapWindow {
  at: number;
  length: number;
  digest: Uint8Array;
}

async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(
    await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>),
  );
}

/** `$Volume`'s version and flags, checked. */
function checkVolume(rec: MftRecord): string {
  const vi = find(rec, ATTR.VOLUME_INFORMATION)[0];
  if (!vi?.resident || vi.resident.length < 12) {
    throw new Refusal(
      "$Volume (MFT record 3) has no resident $VOLUME_INFORMATION",
    );
  }
  const v = rec.bytes.subarray(vi.resident.offset, vi.resident.offset + 12);
  const major = v[8];
  const minor = v[9];
  const flags = v[10] | (v[11] << 8);
  if (major !== 3 || minor > 1) {
    throw new Refusal(
      `NTFS version ${major}.${minor} is not handled (3.0, 3.1)`,
    );
  }
  const hexFlags = `0x${flags.toString(16).padStart(4, "0")}`;
  if (flags & VOLUME.IS_DIRTY) {
    throw new Refusal(`volume is marked dirty ($Volume flags ${hexFlags})`);
  }
  if (flags & VOLUME.CHKDSK_UNDERWAY) {
    throw new Refusal(
      `chkdsk is under way on the volume ($Volume flags ${hexFlags})`,
    );
  }
  if (flags & ~VOLUME_KNOWN) {
    throw new Refusal(`$Volume has unknown flags ${hexFlags}`);
  }
  return `NTFS ${major}.${minor}`;
}

/** Compares the MFT's first records with `$MFTMirr`'s copies. */
async function checkMirror(
  region: RegionReader,
  boot: NtfsBoot,
  mft: Mft,
  mirror: MftRecord,
  load: (n: number) => Promise<MftRecord>,
): Promise<void> {
  const rs = boot.recordSize;
  const data = await systemData(region, boot, mirror, load, "$MFTMirr");
  if (data.runs[0].lcn !== boot.mftMirrLcn) {
    throw new Refusal(
      `$MFTMirr data starts at LCN ${
        data.runs[0].lcn
      }, the boot sector says ${boot.mftMirrLcn}`,
    );
  }
  const count = boot.clusterSize <= 4 * rs ? 4 : boot.clusterSize / rs;
  if (data.initializedSize < count * rs) {
    throw new Refusal(
      `$MFTMirr holds ${data.initializedSize} bytes, not the ${count} records it mirrors`,
    );
  }
  const copies = await readThroughRuns(
    region,
    boot,
    data.runs,
    0,
    count * rs,
    "$MFTMirr",
  );
  const originals = await readRecords(region, boot, mft, 0, count);
  for (let i = 0; i < count; i++) {
    const a = parseRecord(originals.subarray(i * rs, (i + 1) * rs), i);
    let b: MftRecord | undefined;
    try {
      b = parseRecord(copies.subarray(i * rs, (i + 1) * rs), i);
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      throw new Refusal(`$MFTMirr's copy of ${err.message}`);
    }
    const n = a?.header.bytesInUse ?? 0;
    const same = a !== undefined && b !== undefined &&
      a.bytes.subarray(0, n).every((x, k) => x === b.bytes[k]);
    if (!same) {
      throw new Refusal(
        `$MFTMirr's copy of MFT record ${i} differs from $MFT's`,
      );
    }
  }
}

/** Reads the journal's first bytes and checks that it is clean. */
async function checkLog(
  region: RegionReader,
  boot: NtfsBoot,
  log: MftRecord,
  load: (n: number) => Promise<MftRecord>,
): Promise<void> {
  const data = await systemData(region, boot, log, load, "$LogFile");
  const n =
    Math.floor(Math.min(data.initializedSize, LOGFILE_HEAD_BYTES) / 512) *
    512;
  if (n < 2 * 4096) {
    throw new Refusal(
      `$LogFile holds ${data.initializedSize} bytes, too few for a journal`,
    );
  }
  checkLogFile(
    await readThroughRuns(region, boot, data.runs, 0, n, "$LogFile"),
  );
}

/** The cluster bitmap, read in windows through `$Bitmap`'s runs and checked. */
async function loadBitmap(
  region: RegionReader,
  boot: NtfsBoot,
  rec: MftRecord,
  load: (n: number) => Promise<MftRecord>,
): Promise<{ bitmap: ClusterBitmap; windows: BitmapWindow[] }> {
  const data = await systemData(region, boot, rec, load, "$Bitmap");
  const need = Math.ceil(boot.clusters / 8);
  const size = data.dataSize;
  if (size < need || size > need + MAX_READ || data.initializedSize !== size) {
    throw new Refusal(
      `$Bitmap holds ${size} bytes (${data.initializedSize} initialized); ${boot.clusters} clusters need ${need}`,
    );
  }
  if (size > MAX_BITMAP_BYTES) {
    throw new Refusal(
      `$Bitmap of ${size} bytes is larger than the ${MAX_BITMAP_BYTES} bytes held to check it`,
    );
  }
  checkNoOverlap(data.runs, "$Bitmap");
  const bits = new Uint8Array(size);
  const windows: BitmapWindow[] = [];
  const cs = boot.clusterSize;
  let pos = 0;
  for (const run of data.runs) {
    const runEnd = Math.min(size, (run.vcn + run.length) * cs);
    while (pos < runEnd) {
      const length = Math.min(MAX_READ, runEnd - pos);
      const at = run.lcn * cs + (pos - run.vcn * cs);
      const bytes = await region.read(at, length, "$Bitmap");
      bits.set(bytes, pos);
      windows.push({ at, length, digest: await sha256(bytes) });
      pos += length;
    }
    if (pos >= size) break;
  }
  // The bits past the last cluster are set: a boot sector counting fewer
  // clusters than the bitmap was written for leaves zeros there.
  for (let c = boot.clusters; c < size * 8; c++) {
    if (!(bits[c >> 3] & (1 << (c & 7)))) {
      throw new Refusal(
        `$Bitmap calls cluster ${c} free, past the volume's ${boot.clusters} clusters`,
      );
    }
  }
  return { bitmap: new ClusterBitmap(bits, boot.clusters), windows };
}

const HIBERFIL = "hiberfil.sys";

/** Whether a record is `hiberfil.sys` in the root directory, by its names. */
function isHiberfil(rec: MftRecord): boolean {
  const view = new DataView(rec.bytes.buffer, rec.bytes.byteOffset);
  return find(rec, ATTR.FILE_NAME).some((a) => {
    if (!a.resident || a.resident.length < 0x42) return false;
    const at = a.resident.offset;
    const parent = Number(view.getBigUint64(at, true) & 0xffff_ffff_ffffn);
    const length = rec.bytes[at + 0x40];
    if (parent !== ROOT_RECORD || length !== HIBERFIL.length) return false;
    if (0x42 + 2 * length > a.resident.length) return false;
    let name = "";
    for (let i = 0; i < length; i++) {
      name += String.fromCharCode(view.getUint16(at + 0x42 + 2 * i, true));
    }
    return name.toLowerCase() === HIBERFIL;
  });
}

/** Refuses when `hiberfil.sys` holds a hibernated Windows ("hibr", "HIBR"). */
async function checkHiberfil(
  region: RegionReader,
  boot: NtfsBoot,
  rec: MftRecord,
): Promise<void> {
  const data = find(rec, ATTR.DATA)[0];
  let head: Uint8Array = new Uint8Array(4);
  if (!data) {
    if (find(rec, ATTR.ATTRIBUTE_LIST).length === 0) return;
    throw new Refusal(
      `hiberfil.sys (MFT record ${rec.number}) keeps its data in another record: cannot tell whether Windows is hibernated`,
    );
  } else if (data.resident) {
    const { offset, length } = data.resident;
    head.set(rec.bytes.subarray(offset, offset + Math.min(4, length)));
  } else if (
    data.nonResident!.lowestVcn === 0 && data.nonResident!.initializedSize >= 4
  ) {
    const runs = runsOf(rec, data, boot, `MFT record ${rec.number} $DATA`);
    if (runs.length > 0 && runs[0].lcn >= 0) {
      head = await region.read(
        runs[0].lcn * boot.clusterSize,
        4,
        "hiberfil.sys",
      );
    }
  }
  const magic = String.fromCharCode(...head);
  if (magic.toLowerCase() === "hibr") {
    throw new Refusal(
      `Windows is hibernated on this volume (hiberfil.sys, MFT record ${rec.number}, begins with "${magic}")`,
    );
  }
}

const TYPE_NAMES: Record<number, string> = {
  0x20: "$ATTRIBUTE_LIST",
  0x80: "$DATA",
  0xa0: "$INDEX_ALLOCATION",
  0xb0: "$BITMAP",
  0xc0: "$REPARSE_POINT",
  0xe0: "$EA",
  0x100: "$LOGGED_UTILITY_STREAM",
};

/**
 * Walks every MFT record: every in-use record's data runs must lie on
 * clusters the bitmap marks in use, and every record an attribute list
 * names must be in use.
 */
async function walkMft(
  region: RegionReader,
  boot: NtfsBoot,
  mft: Mft,
  bitmap: ClusterBitmap,
): Promise<void> {
  const rs = boot.recordSize;
  const perRead = Math.max(1, Math.floor(MAX_READ / rs));
  const inUse = new Uint8Array(Math.ceil(mft.records / 8));
  // Attribute list references, (from, to) pairs, checked once all records
  // are known.
  const refs: number[] = [];
  let listBytes = 0;
  for (let first = 0; first < mft.records; first += perRead) {
    const count = Math.min(perRead, mft.records - first);
    const bytes = await readRecords(region, boot, mft, first, count);
    for (let i = 0; i < count; i++) {
      const n = first + i;
      const rec = parseRecord(bytes.subarray(i * rs, (i + 1) * rs), n);
      if (!rec || !(rec.header.flags & RECORD_IN_USE)) {
        if (n < SYSTEM_RECORDS) {
          throw new Refusal(`MFT record ${n}, a system file, is not in use`);
        }
        continue;
      }
      inUse[n >> 3] |= 1 << (n & 7);
      for (const attr of rec.attrs) {
        const what = `MFT record ${n} ${
          TYPE_NAMES[attr.type] ?? `attribute type 0x${attr.type.toString(16)}`
        }${attr.name ? ` "${attr.name}"` : ""}`;
        if (attr.nonResident) {
          forEachRun(
            rec.bytes,
            attr.nonResident,
            boot.clusters,
            boot.clusterSize,
            what,
            (_vcn, lcn, length) => {
              if (lcn < 0) return;
              const c = bitmap.firstFree(lcn, lcn + length);
              if (c >= 0) {
                throw new Refusal(
                  `${what} (in use) has data on cluster ${c}, which $Bitmap calls free`,
                );
              }
            },
          );
        }
        if (attr.type === ATTR.ATTRIBUTE_LIST) {
          listBytes += attr.resident?.length ?? attr.nonResident!.dataSize;
          if (listBytes > MAX_LIST_BYTES) {
            throw new Refusal(
              `attribute lists hold more than ${MAX_LIST_BYTES} bytes (at MFT record ${n})`,
            );
          }
          for (const e of await attributeListOf(region, boot, rec, attr)) {
            if (e.record === n) continue;
            if (e.record >= mft.records) {
              throw new Refusal(
                `${what} names MFT record ${e.record}, past the MFT's ${mft.records} records`,
              );
            }
            if (refs.length >= 2 * MAX_LIST_REFERENCES) {
              throw new Refusal(
                `attribute lists name more than ${MAX_LIST_REFERENCES} records`,
              );
            }
            refs.push(n, e.record);
          }
        }
      }
      if (rec.header.base === 0 && isHiberfil(rec)) {
        await checkHiberfil(region, boot, rec);
      }
    }
  }
  for (let k = 0; k < refs.length; k += 2) {
    const to = refs[k + 1];
    if (!(inUse[to >> 3] & (1 << (to & 7)))) {
      throw new Refusal(
        `MFT record ${
          refs[k]
        }'s attribute list names record ${to}, which is not in use`,
      );
    }
  }
}

/** Lists the free clusters as byte ranges, reading `$Bitmap` again. */
async function* freeRanges(
  region: RegionReader,
  boot: NtfsBoot,
  windows: BitmapWindow[],
): AsyncGenerator<FreeRange> {
  const cs = boot.clusterSize;
  const clusters = boot.clusters;
  let runStart = -1;
  let runEnd = -1;
  let base = 0; // first cluster the current window describes
  for (const w of windows) {
    let bytes: Uint8Array;
    try {
      bytes = await region.read(w.at, w.length, "$Bitmap");
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      throw new IoError(
        "CHANGED",
        `Cannot sparsify: the NTFS $Bitmap cannot be read again (${err.message})`,
      );
    }
    const digest = await sha256(bytes);
    if (!digest.every((x, i) => x === w.digest[i])) {
      throw new IoError(
        "CHANGED",
        `Cannot sparsify: the NTFS $Bitmap at byte ${w.at} changed since it was checked`,
      );
    }
    const end = Math.min(clusters, base + w.length * 8);
    let c = base;
    while (c < end) {
      const byte = bytes[(c - base) >> 3];
      if ((c & 7) === 0 && c + 8 <= end && (byte === 0xff || byte === 0)) {
        if (byte === 0) {
          if (runEnd === c) runEnd += 8;
          else {
            if (runStart >= 0) {
              yield { offset: runStart * cs, length: (runEnd - runStart) * cs };
            }
            runStart = c;
            runEnd = c + 8;
          }
        }
        c += 8;
        continue;
      }
      if (!(byte & (1 << (c & 7)))) {
        if (runEnd === c) runEnd++;
        else {
          if (runStart >= 0) {
            yield { offset: runStart * cs, length: (runEnd - runStart) * cs };
          }
          runStart = c;
          runEnd = c + 1;
        }
      }
      c++;
    }
    base += w.length * 8;
  }
  if (runStart >= 0) {
    yield { offset: runStart * cs, length: (runEnd - runStart) * cs };
  }
}

function describe(boot: NtfsBoot, version: string, records: number): string {
  const cs = boot.clusterSize;
  const size = cs >= 1 << 20
    ? `${cs / (1 << 20)} MiB`
    : cs >= 1024
    ? `${cs / 1024} KiB`
    : `${cs} B`;
  return `${size} clusters, ${boot.clusters} clusters, ${version}, ${records} MFT records`;
}

async function analyzeNtfs(region: RegionReader): Promise<FilesystemAnalysis> {
  try {
    const boot = parseNtfsBoot(
      await region.read(0, NTFS_BOOT_SIZE, "boot sector"),
      region.length,
    );
    const { mft } = await openMft(region, boot);
    const load = (n: number) => loadRecord(region, boot, mft, n);
    await checkMirror(region, boot, mft, await load(1), load);
    await checkLog(region, boot, await load(2), load);
    const version = checkVolume(await load(3));
    const { bitmap, windows } = await loadBitmap(
      region,
      boot,
      await load(6),
      load,
    );
    if (bitmap.firstFree(0, 1) === 0) {
      throw new Refusal("$Bitmap calls cluster 0, the boot sector, free");
    }
    await walkMft(region, boot, mft, bitmap);
    return {
      found: "ntfs",
      detail: describe(boot, version, mft.records),
      freeBytes: bitmap.free * boot.clusterSize,
      ranges: (r) => freeRanges(r, boot, windows),
    };
  } catch (err) {
    if (err instanceof Refusal) err.found ??= "ntfs";
    throw err;
  }
}

/** NTFS: free clusters by `$Bitmap`, checked against every MFT record. */
export const ntfsModule: FilesystemModule = {
  name: "ntfs",
  headBytes: NTFS_BOOT_SIZE,
  detect: isNtfs,
  analyze: analyzeNtfs,
};
