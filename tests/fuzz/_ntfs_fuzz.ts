// Seeded fuzzing of the NTFS module (not a test file): real volumes
// (mkntfs, filled and with files deleted through ntfs-3g, one on a GPT
// disk) with their metadata mutated as an attacker who has read the module
// would: boot sector fields, $Bitmap bits, MFT record headers, attribute
// headers and data runs (written through the update sequence array so that
// the fixups still check, and copied to $MFTMirr for the mirrored records
// when the attacker bothers), torn strides, the journal, raw bytes,
// truncation.
//
// The oracle is independent of the module: the free clusters of the
// unmutated volume as ntfs-3g reads $Bitmap (ntfscat -i 6). A mutated disk
// may be mapped or left as it is, but every byte called free must be free
// in the original. On these volumes every cluster $Bitmap marks in use is
// referenced by an in-use record, so a bit flipped to "free" must be caught
// by the MFT walk. A case flips bitmap bits or edits records, never both:
// together they can make another consistent volume (a file deleted, its
// clusters freed) that no reader of the metadata can tell from damage.

import { join } from "node:path";
import { Rand } from "../../lib/_prng.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { blank, MiB, sfdiskParts, sh, writeInto } from "../sparsify/_disks.ts";
import {
  makeNtfs,
  ntfsFree,
  ntfsGeometry,
  ntfsInfo,
  readRecord,
  runsIn,
} from "../sparsify/_ntfs.ts";
import {
  current,
  type FuzzTarget,
  inMemory,
  type Mutation,
} from "./_sparsify_target.ts";

/** An attribute of an in-use record: where it is in the record. */
interface AttrInfo {
  at: number;
  nonResident: boolean;
  /** Offset of the mapping pairs in the record, and their length. */
  pairs?: number;
  pairsLength?: number;
}

/** An in-use MFT record: disk offset and attributes. */
interface RecordInfo {
  n: number;
  at: number;
  usaOfs: number;
  attrs: AttrInfo[];
}

/** A base disk with one NTFS volume, where its structures are. */
export interface NtfsFuzzBase {
  name: string;
  path: string;
  size: number;
  /** Free ranges of the original (ntfs-3g's $Bitmap), disk offsets. */
  free: FreeRange[];
  /** Disk offset of the volume. */
  offset: number;
  clusterSize: number;
  recordSize: number;
  clusters: number;
  /** Disk offsets of $Bitmap's data (one run), $MFTMirr's and $LogFile's. */
  bitmap: number;
  bitmapBytes: number;
  mirror: number;
  log: number;
  records: RecordInfo[];
  /** First LCNs of in-use records' runs: clusters worth freeing. */
  used: number[];
}

async function describeVolume(
  image: string,
  offset: number,
): Promise<Omit<NtfsFuzzBase, "name" | "path" | "size" | "free">> {
  const g = await ntfsGeometry(image);
  const [bm] = runsIn(await ntfsInfo(image, 6), "$DATA");
  const [mirror] = runsIn(await ntfsInfo(image, 1), "$DATA");
  const [log] = runsIn(await ntfsInfo(image, 2), "$DATA");
  const mftRuns = runsIn(await ntfsInfo(image, 0), "$DATA");
  const mftRecords = Math.min(
    200,
    mftRuns.reduce((n, r) => n + r.length, 0) * g.clusterSize / g.recordSize,
  );
  const records: RecordInfo[] = [];
  const used: number[] = [];
  for (let n = 0; n < mftRecords; n++) {
    const vcnByte = n * g.recordSize;
    const run = mftRuns.find((r) =>
      vcnByte >= r.vcn * g.clusterSize &&
      vcnByte < (r.vcn + r.length) * g.clusterSize
    )!;
    const at = run.lcn * g.clusterSize + vcnByte - run.vcn * g.clusterSize;
    const rec = await readRecord(image, at, g.recordSize);
    const view = new DataView(rec.buffer);
    if (view.getUint32(0, true) !== 0x454c4946 || !(rec[0x16] & 1)) continue;
    const attrs: AttrInfo[] = [];
    for (
      let a = view.getUint16(0x14, true);
      view.getUint32(a, true) !== 0xffffffff;
    ) {
      const length = view.getUint32(a + 4, true);
      const nonResident = rec[a + 8] === 1;
      const info: AttrInfo = { at: a, nonResident };
      if (nonResident) {
        info.pairs = a + view.getUint16(a + 0x20, true);
        info.pairsLength = a + length - info.pairs;
        used.push(...firstLcns(rec, info.pairs));
      }
      attrs.push(info);
      a += length;
    }
    records.push({
      n,
      at: offset + at,
      usaOfs: view.getUint16(4, true),
      attrs,
    });
  }
  return {
    offset,
    clusterSize: g.clusterSize,
    recordSize: g.recordSize,
    clusters: g.clusters,
    bitmap: offset + bm.lcn * g.clusterSize,
    bitmapBytes: Math.ceil(g.clusters / 8),
    mirror: offset + mirror.lcn * g.clusterSize,
    log: offset + log.lcn * g.clusterSize,
    records,
    used,
  };
}

/** The LCN each data run of a mapping pairs array starts at. */
function firstLcns(rec: Uint8Array, at: number): number[] {
  const out: number[] = [];
  let lcn = 0;
  while (rec[at] !== 0) {
    const len = rec[at] & 0x0f;
    const off = rec[at] >> 4;
    if (off > 0) {
      let delta = 0;
      for (let i = off - 1; i >= 0; i--) {
        delta = delta * 256 + rec[at + 1 + len + i];
      }
      if (rec[at + len + off] & 0x80) delta -= 256 ** off;
      lcn += delta;
      out.push(lcn);
    }
    at += 1 + len + off;
  }
  return out;
}

async function bareBase(
  root: string,
  name: string,
  size: number,
  args: string[],
): Promise<NtfsFuzzBase> {
  const path = join(root, `${name}.img`);
  await makeNtfs(path, size, { args, seed: size % 31, bytes: size / 3 });
  return {
    name,
    path,
    size,
    free: await ntfsFree(path),
    ...await describeVolume(path, 0),
  };
}

async function gptBase(root: string): Promise<NtfsFuzzBase> {
  const path = join(root, "gpt.img");
  const size = 40 * MiB;
  await blank(path, size);
  await sh("sfdisk", ["-q", path], {
    stdin: "label: gpt\n,24M,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
  });
  const [p] = await sfdiskParts(path);
  const vol = join(root, "gpt-p1.img");
  await makeNtfs(vol, p.length, { seed: 6, bytes: 8 * MiB });
  await writeInto(path, p.offset, vol);
  const base = {
    name: "ntfs-gpt",
    path,
    size,
    free: await ntfsFree(vol, p.offset),
    ...await describeVolume(vol, p.offset),
  };
  await Deno.remove(vol);
  return base;
}

/** Builds every base under `root` (mkntfs and an ntfs-3g FUSE mount). */
export async function buildNtfsFuzzBases(
  root: string,
): Promise<NtfsFuzzBase[]> {
  await Deno.mkdir(root, { recursive: true });
  return [
    await bareBase(root, "ntfs-4k", 24 * MiB, []),
    await bareBase(root, "ntfs-512", 12 * MiB, ["-c", "512"]),
    await gptBase(root),
  ];
}

// ---------------------------------------------------------------------------
// Mutations

function le(value: number, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < size; i++) out.push(Math.floor(value / 256 ** i) % 256);
  return out;
}

function read(bytes: Uint8Array): number {
  return [...bytes].reduceRight((v, x) => v * 256 + x, 0);
}

function interesting(
  r: Rand,
  old: number,
  size: number,
  extra: number[],
): number {
  const max = 256 ** Math.min(size, 6) - 1;
  const pool = [
    0,
    1,
    2,
    7,
    8,
    0x10,
    0x18,
    0x40,
    0x80,
    0xff,
    0x100,
    0x1ff,
    0x3ff,
    0x7fff,
    0xffff,
    0x7fffffff,
    0xffffffff,
    old + 1,
    old - 1,
    old + 8,
    old - 8,
    old * 2,
    Math.floor(old / 2),
    old ^ (1 << r.int(Math.min(size, 4) * 8)),
    r.u32(),
    ...extra,
  ];
  return Math.max(0, Math.min(max, Math.floor(r.pick(pool))));
}

/** A mutation with what kind of edits it made. */
interface NtfsMutation extends Mutation {
  records?: boolean;
}

/**
 * Writes `bytes` at `offset` of the record at disk offset `rec`: through
 * the update sequence array where they fall on a stride's end (as a
 * writer keeps the fixups), unless `raw`.
 */
function patchRecord(
  b: NtfsFuzzBase,
  m: NtfsMutation,
  rec: RecordInfo,
  offset: number,
  bytes: number[],
  raw: boolean,
): void {
  const copies = [rec.at];
  if (rec.n < 4 && !raw) copies.push(b.mirror + rec.n * b.recordSize);
  for (const base of copies) {
    bytes.forEach((v, i) => {
      const at = offset + i;
      if (at >= b.recordSize) return;
      const inStride = at & 511;
      const dst = !raw && inStride >= 510
        ? base + rec.usaOfs + 2 * ((at >> 9) + 1) + (inStride - 510)
        : base + at;
      m.patches.push({ at: dst, bytes: [v] });
    });
  }
}

type Operator = (
  r: Rand,
  base: Uint8Array,
  b: NtfsFuzzBase,
  m: NtfsMutation,
) => void;

const BOOT_FIELDS: Array<[string, number, number]> = [
  ["bytes per sector", 0x0b, 2],
  ["sectors per cluster", 0x0d, 1],
  ["reserved sectors", 0x0e, 2],
  ["total sectors", 0x28, 6],
  ["$MFT LCN", 0x30, 6],
  ["$MFTMirr LCN", 0x38, 6],
  ["clusters per MFT record", 0x40, 1],
  ["clusters per index record", 0x44, 1],
];

const HEADER_FIELDS: Array<[string, number, number]> = [
  ["usa offset", 0x04, 2],
  ["usa count", 0x06, 2],
  ["sequence", 0x10, 2],
  ["attrs offset", 0x14, 2],
  ["flags", 0x16, 2],
  ["bytes in use", 0x18, 4],
  ["bytes allocated", 0x1c, 4],
  ["base record", 0x20, 6],
  ["record number", 0x2c, 4],
];

const ATTR_FIELDS: Array<[string, number, number]> = [
  ["type", 0x00, 4],
  ["length", 0x04, 4],
  ["non-resident", 0x08, 1],
  ["name length", 0x09, 1],
  ["name offset", 0x0a, 2],
  ["flags", 0x0c, 2],
  ["value length / lowest VCN", 0x10, 4],
  ["value offset", 0x14, 2],
  ["highest VCN", 0x18, 6],
  ["mapping pairs offset", 0x20, 2],
  ["allocated size", 0x28, 6],
  ["data size", 0x30, 6],
  ["initialized size", 0x38, 6],
];

const OPERATORS: Array<[number, Operator]> = [
  // A boot sector field.
  [3, (r, base, b, m) => {
    const [name, off, size] = r.pick(BOOT_FIELDS);
    const at = b.offset + off;
    const old = read(current(base, m.patches, at, size));
    const lcns = [b.bitmap, b.mirror, b.log, ...b.records.map((x) => x.at)]
      .map((x) => Math.floor((x - b.offset) / b.clusterSize));
    const value = interesting(r, old, size, [
      ...lcns,
      b.clusters,
      b.size / 512,
      0xf4,
      0xf6,
    ]);
    m.patches.push({ at, bytes: le(value, size) });
    m.desc.push(`boot ${name} ${old} -> ${value}`);
  }],
  // $Bitmap bits (never with record edits, see above), half of them on
  // clusters in use.
  [4, (r, base, b, m) => {
    if (m.records) return;
    m.flipped = true;
    const flips = 1 + r.int(6);
    for (let i = 0; i < flips; i++) {
      const c = r.chance(0.5) && b.used.length > 0
        ? r.pick(b.used)
        : r.int(b.clusters);
      const at = b.bitmap + (c >> 3);
      const [old] = current(base, m.patches, at, 1);
      m.patches.push({ at, bytes: [old ^ (1 << (c & 7))] });
      m.desc.push(`flipped $Bitmap bit of cluster ${c}`);
    }
  }],
  // An MFT record header field.
  [4, (r, base, b, m) => {
    if (m.flipped) return;
    m.records = true;
    const rec = r.pick(b.records);
    const [name, off, size] = r.pick(HEADER_FIELDS);
    const old = read(current(base, m.patches, rec.at + off, size));
    const value = interesting(r, old, size, [
      ...b.records.map((x) => x.n),
      b.recordSize,
    ]);
    const raw = r.chance(0.3);
    patchRecord(b, m, rec, off, le(value, size), raw);
    m.desc.push(
      `record ${rec.n} ${name} ${old} -> ${value}${raw ? " (raw)" : ""}`,
    );
  }],
  // An attribute header field.
  [5, (r, base, b, m) => {
    if (m.flipped) return;
    m.records = true;
    const rec = r.pick(b.records);
    const attr = r.pick(rec.attrs);
    const [name, off, size] = r.pick(ATTR_FIELDS);
    const at = rec.at + attr.at + off;
    const old = read(current(base, m.patches, at, size));
    const value = interesting(r, old, size, [
      b.clusters,
      b.clusters - 1,
      ...b.used,
    ]);
    patchRecord(b, m, rec, attr.at + off, le(value, size), false);
    m.desc.push(
      `record ${rec.n} attribute at ${attr.at} ${name} ${old} -> ${value}`,
    );
  }],
  // A byte of a data run (header, length or LCN delta).
  [6, (r, base, b, m) => {
    if (m.flipped) return;
    const rec = r.pick(b.records);
    const attr = r.pick(rec.attrs.filter((a) => a.nonResident).concat([]));
    if (!attr?.pairs) return;
    m.records = true;
    const off = attr.pairs +
      r.int(Math.max(1, Math.min(attr.pairsLength!, 12)));
    const [old] = current(base, m.patches, rec.at + off, 1);
    const value = r.pick([
      0,
      1,
      0x11,
      0x21,
      0x31,
      0x41,
      0x80,
      0x7f,
      0xff,
      old ^ (1 << r.int(8)),
      r.int(256),
    ]);
    patchRecord(b, m, rec, off, [value], false);
    m.desc.push(`record ${rec.n} data run byte ${off} ${old} -> ${value}`);
  }],
  // A torn stride: the last two bytes of a record's stride or its USN.
  [1, (r, base, b, m) => {
    if (m.flipped) return;
    m.records = true;
    const rec = r.pick(b.records);
    const at = rec.at +
      (r.chance(0.5) ? rec.usaOfs : 510 + 512 * r.int(b.recordSize / 512));
    const [old] = current(base, m.patches, at, 1);
    m.patches.push({ at, bytes: [old ^ 0x01] });
    m.desc.push(`record ${rec.n} tore byte ${at - rec.at}`);
  }],
  // The journal's first page, or $Volume's flags and version.
  [1, (r, _base, b, m) => {
    if (m.flipped) return;
    m.records = true;
    const at = b.log + r.int(4096);
    const bytes = Array.from({ length: 1 + r.int(16) }, () => r.int(256));
    m.patches.push({ at, bytes });
    m.desc.push(`${bytes.length} random bytes in $LogFile at ${at - b.log}`);
  }],
  // Raw bytes in a record or the mirror.
  [2, (r, _base, b, m) => {
    if (m.flipped) return;
    m.records = true;
    const at = r.chance(0.8)
      ? r.pick(b.records).at + r.int(b.recordSize)
      : b.mirror + r.int(4 * b.recordSize);
    const bytes = Array.from({ length: 1 + r.int(8) }, () => r.int(256));
    m.patches.push({ at, bytes });
    m.desc.push(`${bytes.length} raw bytes at disk byte ${at}`);
  }],
  // Truncation.
  [1, (r, _base, b, m) => {
    const cut = r.chance(0.5) ? r.int(b.size) : r.int(b.size / 512) * 512;
    m.size = Math.min(m.size, cut);
    m.desc.push(`truncated to ${cut}`);
  }],
];

/** The mutation of case `seed` of a base: one to three operators. */
export function mutateNtfs(
  b: NtfsFuzzBase,
  base: Uint8Array,
  seed: number,
): NtfsMutation {
  const r = new Rand(seed);
  const m: NtfsMutation = { patches: [], size: b.size, desc: [] };
  const total = OPERATORS.reduce((n, [w]) => n + w, 0);
  const rounds = 1 + r.int(3);
  for (let tries = 0; m.desc.length < rounds && tries < 20; tries++) {
    let roll = r.int(total);
    const op = OPERATORS.find(([w]) => (roll -= w) < 0)![1];
    op(r, base, b, m);
  }
  return m;
}

/**
 * The NTFS target of the case runner: the outcome and reason of the NTFS
 * region; every fourth case streamed with a read-ahead that holds these
 * small volumes.
 */
export const target: FuzzTarget<NtfsFuzzBase, Uint8Array> = inMemory({
  mutate: mutateNtfs,
  judge: (_b, report) => {
    const region = report.regions.find((r) => r.found === "ntfs");
    return {
      outcome: report.tableProblem
        ? "table refused"
        : region?.status === "mapped"
        ? "mapped"
        : "untouched",
      reason: region?.reason ?? report.tableProblem,
    };
  },
  readAhead: () => 64 << 20,
});
