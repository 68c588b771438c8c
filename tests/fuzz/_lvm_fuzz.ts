// Seeded fuzzing of the LVM2 module (not a test file): real PVs (pvcreate
// on loop devices, metadata by vgcfgrestore; a bare PV, a PV with two
// metadata areas in a GPT partition, a PV whose metadata wraps around the
// end of its area) mutated as an attacker who has read the module would.
//
// Three kinds of case, each with its own oracle:
//
// - structure: label and metadata area header fields, the committed text
//   edited byte by byte (any character but a digit), truncation; CRCs
//   recomputed most of the time. None of these can give the VG another
//   meaning (a name or a word changes, or the text stops parsing), so
//   every byte called free must be free in the unmutated disk (LVM2's free
//   extents, dumpe2fs's free blocks inside the LVs).
// - meaning: the VG itself edited (an extent moved, a count changed, an LV
//   added, dropped or made another kind, the geometry changed) and written
//   back as text with its CRCs. The test's own reading of the edited VG
//   decides: when it is inconsistent (segments overlapping or past the
//   PV's end, a non-linear LV, extents outside the data area), the PV must
//   be left as it is; when it is consistent, every byte called free must be
//   an extent no LV uses or a block the LV's ext4 calls free, wherever the
//   edited segments now put it.
//
// A case is (base, seed): the same pair always gives the same bytes.

import { join } from "node:path";
import { Rand } from "../../lib/_prng.ts";
import { lvmCrc } from "../../lib/sparsify/lvm/label.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  blank,
  debugfsRm,
  dumpe2fsFree,
  fillNoise,
  merge,
  MiB,
  mkfs,
  populate,
  readAt,
  sfdiskParts,
  sh,
} from "../sparsify/_disks.ts";
import {
  LvmSession,
  type LvSpec,
  lvToDisk,
  pvAreas,
  type VgSpec,
  vgText,
  writeLv,
} from "../sparsify/_lvm.ts";
import {
  current,
  type FuzzTarget,
  inMemory,
  type Mutation,
} from "./_sparsify_target.ts";

/** A base disk with one PV, where its structures are and what is free. */
export interface LvmFuzzBase {
  name: string;
  path: string;
  size: number;
  /** Free ranges of the original (LVM2 and dumpe2fs), disk offsets. */
  free: FreeRange[];
  /** Disk offset and length of the PV's region. */
  pvOffset: number;
  pvLength: number;
  /** Disk offset of the label sector. */
  label: number;
  /** The metadata areas: disk offset, size. */
  mdas: Array<{ offset: number; size: number }>;
  /** The PV's data area offset (bytes from the PV's start). */
  dataArea: number;
  /** The VG as written. */
  vg: VgSpec;
  /** Each LV's free ranges by dumpe2fs, relative to the LV. */
  lvFree: Record<string, FreeRange[]>;
}

/** A mutation and what its case must satisfy. */
export interface LvmMutation extends Mutation {
  /** Bytes that may read as zeros. */
  allowed: FreeRange[];
  /** Why the PV must be left as it is, when it must. */
  mustRefuse?: string;
}

// ---------------------------------------------------------------------------
// Bases

async function fillLvs(
  dir: string,
  disk: string,
  vg: VgSpec,
): Promise<{ free: FreeRange[]; lvFree: Record<string, FreeRange[]> }> {
  const free: FreeRange[] = [];
  const lvFree: Record<string, FreeRange[]> = {};
  for (const [i, lv] of vg.lvs.entries()) {
    const length = lv.segments!.reduce((n, s) => n + s.count, 0) *
      vg.extentBytes;
    const tree = join(dir, `tree${i}`);
    const files = await populate(tree, 40 + i, length / 3);
    const img = join(dir, `lv${i}.img`);
    await mkfs(img, length, ["-t", "ext4"], tree);
    await debugfsRm(img, files.filter((_, k) => k % 2 === 0));
    await writeLv(disk, vg, lv, img);
    lvFree[lv.name] = await dumpe2fsFree(img);
    free.push(...lvToDisk(vg, lv, lvFree[lv.name]));
    await Deno.remove(img);
    await Deno.remove(tree, { recursive: true });
  }
  return { free, lvFree };
}

/** Builds one base: a PV at `part` of a `size`-byte disk. */
async function buildBase(
  root: string,
  name: string,
  size: number,
  table: string | undefined,
  pvArgs: string[],
  wrap: boolean,
): Promise<LvmFuzzBase> {
  const dir = join(root, name);
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "disk.img");
  await blank(path, size);
  let part = { offset: 0, length: size };
  if (table) {
    await sh("sfdisk", ["-q", path], { stdin: table });
    part = (await sfdiskParts(path))[0];
  }
  await fillNoise(path, part.offset, part.length, 17);
  let vg: VgSpec;
  const free: FreeRange[] = [];
  {
    await using lvm = new LvmSession();
    const dev = await lvm.attach(path, part.offset, part.length);
    const pv = await lvm.pv(dev, part.offset, "pv0", MiB, pvArgs);
    vg = {
      name: `fz${name}${Date.now() % 10000}`,
      id: "vgvgvg-aaaa-bbbb-cccc-dddd-eeee-ffffff",
      seqno: 1,
      extentBytes: MiB,
      pvs: [pv],
      lvs: [
        { name: "a", segments: [{ pv: "pv0", pe: 3, count: 6 }] },
        {
          name: "b",
          segments: [{ pv: "pv0", pe: 16, count: 3 }, {
            pv: "pv0",
            pe: 11,
            count: 3,
          }],
        },
      ],
      ...(wrap
        ? {
          extra: `tags = [${
            Array.from({ length: 40 }, (_, i) => `"t${i}${"y".repeat(90)}"`)
              .join(", ")
          }]`,
        }
        : {}),
    };
    if (wrap) {
      const [mda] = (await pvAreas(path, part.offset)).mdas;
      let wrapped = false;
      for (let s = 1; s < 60 && !wrapped; s++) {
        await lvm.restore({ ...vg, seqno: s });
        const h = await readAt(path, mda.offset + 40, 16);
        const v = new DataView(h.buffer);
        wrapped = Number(v.getBigUint64(0, true)) +
            Number(v.getBigUint64(8, true)) > mda.size;
        vg = { ...vg, seqno: s };
      }
      if (!wrapped) throw new Error("LVM2 did not wrap the metadata text");
    } else {
      await lvm.restore(vg);
    }
    free.push(...await lvm.freeExtents(pv, MiB));
  }
  const lvs = await fillLvs(dir, path, vg);
  free.push(...lvs.free);
  const areas = await pvAreas(path, part.offset);
  const labelBytes = await readAt(path, areas.label, 512);
  const lv = new DataView(labelBytes.buffer);
  return {
    name,
    path,
    size,
    free: merge(free),
    pvOffset: part.offset,
    pvLength: part.length,
    label: areas.label,
    mdas: areas.mdas,
    dataArea: Number(lv.getBigUint64(lv.getUint32(20, true) + 40, true)),
    vg,
    lvFree: lvs.lvFree,
  };
}

/** Builds the bases under `root` (needs root, loop devices and LVM2). */
export async function buildLvmFuzzBases(
  root: string,
): Promise<LvmFuzzBase[]> {
  return [
    await buildBase(root, "bare", 40 * MiB, undefined, [], false),
    await buildBase(
      root,
      "gpt2mda",
      48 * MiB,
      "label: gpt\n,,E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
      ["--pvmetadatacopies", "2"],
      false,
    ),
    await buildBase(
      root,
      "wrap",
      32 * MiB,
      undefined,
      ["--metadatasize", "8k", "--dataalignment", "64k"],
      true,
    ),
  ];
}

// ---------------------------------------------------------------------------
// Mutations

function le(v: number | bigint, size: number): number[] {
  let x = BigInt(v);
  const out: number[] = [];
  for (let i = 0; i < size; i++) {
    out.push(Number(x & 0xffn));
    x >>= 8n;
  }
  return out;
}

/** Values worth putting in a field that held `old`. */
function interesting(r: Rand, old: number, size: number): number | bigint {
  const max = (1n << BigInt(8 * size)) - 1n;
  const choices: Array<number | bigint> = [
    0,
    1,
    old + 1,
    Math.max(0, old - 1),
    old * 2,
    Math.floor(old / 2),
    old + 512,
    old + MiB,
    max,
    max / 2n,
    2 ** 53,
    r.int(1 << 30),
  ];
  const v = r.pick(choices);
  return BigInt(v) > max ? max : v;
}

/** Recomputes the CRC of a sector-sized structure: label or metadata area header. */
function fixCrc(
  base: Uint8Array,
  m: Mutation,
  at: number,
  kind: "label" | "mda",
): void {
  const s = current(base, m.patches, at, 512);
  const crc = kind === "label" ? lvmCrc(s.subarray(20)) : lvmCrc(s.subarray(4));
  m.patches.push({ at: at + (kind === "label" ? 16 : 0), bytes: le(crc, 4) });
}

/** The committed text of a metadata area in the unmutated disk, and where it is. */
function textOf(
  base: Uint8Array,
  mda: { offset: number; size: number },
): { offset: number; text: Uint8Array } {
  const h = base.subarray(mda.offset, mda.offset + 512);
  const v = new DataView(h.buffer, h.byteOffset, 512);
  const offset = Number(v.getBigUint64(40, true));
  const size = Number(v.getBigUint64(48, true));
  const first = Math.min(size, mda.size - offset);
  const text = new Uint8Array(size);
  text.set(base.subarray(mda.offset + offset, mda.offset + offset + first));
  text.set(
    base.subarray(mda.offset + 512, mda.offset + 512 + size - first),
    first,
  );
  return { offset, text };
}

/** Writes `text` (NUL included) as an area's committed text at `offset`. */
function putText(
  base: Uint8Array,
  m: Mutation,
  mda: { offset: number; size: number },
  text: Uint8Array,
  offset: number,
  crc: boolean,
): void {
  const first = Math.min(text.length, mda.size - offset);
  m.patches.push({
    at: mda.offset + offset,
    bytes: [...text.subarray(0, first)],
  });
  if (first < text.length) {
    m.patches.push({ at: mda.offset + 512, bytes: [...text.subarray(first)] });
  }
  m.patches.push({
    at: mda.offset + 40,
    bytes: [
      ...le(offset, 8),
      ...le(text.length, 8),
      ...le(crc ? lvmCrc(text) : lvmCrc(text) ^ 1, 4),
      ...le(0, 4),
    ],
  });
  fixCrc(base, m, mda.offset, "mda");
}

const LABEL_FIELDS: Array<[string, number, number]> = [
  ["sector_xl", 8, 8],
  ["offset_xl", 20, 4],
  ["type", 24, 1],
  ["uuid", 32, 1],
  ["device_size", 64, 8],
  ["data area offset", 72, 8],
  ["data area size", 80, 8],
  ["data list end", 88, 8],
  ["metadata area offset", 104, 8],
  ["metadata area size", 112, 8],
  ["extension", 136, 8],
  ["extension version", 152, 4],
  ["extension flags", 156, 4],
];

const MDA_FIELDS: Array<[string, number, number]> = [
  ["magic", 4, 1],
  ["version", 20, 4],
  ["start", 24, 8],
  ["size", 32, 8],
  ["text offset", 40, 8],
  ["text size", 48, 8],
  ["text checksum", 56, 4],
  ["text flags", 60, 4],
  ["slot 1 offset", 64, 8],
  ["slot 1 size", 72, 8],
];

/** Structure mutations: the meaning cannot change, the oracle is the original. */
function structure(
  r: Rand,
  b: LvmFuzzBase,
  base: Uint8Array,
  m: LvmMutation,
): void {
  const op = r.int(10);
  if (op < 3) {
    const [name, off, size] = r.pick(LABEL_FIELDS);
    const at = b.label + off;
    const old = Number(
      current(base, m.patches, at, size).reduceRight((v, x) => v * 256 + x, 0),
    );
    const value = size === 1 ? r.int(256) : interesting(r, old, size);
    m.patches.push({ at, bytes: le(value, size) });
    const fix = r.chance(0.85);
    if (fix) fixCrc(base, m, b.label, "label");
    m.desc.push(`label ${name} ${old} -> ${value}${fix ? " (CRC fixed)" : ""}`);
  } else if (op < 6) {
    const mda = r.pick(b.mdas);
    const [name, off, size] = r.pick(MDA_FIELDS);
    const at = mda.offset + off;
    const old = Number(
      current(base, m.patches, at, size).reduceRight((v, x) => v * 256 + x, 0),
    );
    const value = size === 1 ? r.int(256) : interesting(r, old, size);
    m.patches.push({ at, bytes: le(value, size) });
    const fix = r.chance(0.85);
    if (fix) fixCrc(base, m, mda.offset, "mda");
    m.desc.push(
      `mda at ${mda.offset} ${name} ${old} -> ${value}${
        fix ? " (CRC fixed)" : ""
      }`,
    );
  } else if (op < 9) {
    // The text, edited anywhere but in a digit, in every area or one.
    const { offset, text } = textOf(base, b.mdas[0]);
    const edited = [...text];
    const SYNTAX = [...'{}[]=",#\n \\-.abcxyz_\0'].map((c) => c.charCodeAt(0));
    const digit = (c: number) => c >= 0x30 && c <= 0x39;
    const edits = 1 + r.int(3);
    for (let e = 0; e < edits; e++) {
      let k = r.int(edited.length - 1);
      for (let tries = 0; tries < 20 && digit(edited[k]); tries++) {
        k = r.int(edited.length - 1);
      }
      if (digit(edited[k])) continue;
      const kind = r.int(3);
      const c = r.pick(SYNTAX);
      // Neither the inserted character nor a deletion may join two numbers.
      if (kind === 0) {
        if (!digit(c)) edited[k] = c;
        m.desc.push(
          `text byte ${k} -> ${JSON.stringify(String.fromCharCode(c))}`,
        );
      } else if (kind === 1) {
        edited.splice(k, 0, c);
        m.desc.push(
          `text insert ${JSON.stringify(String.fromCharCode(c))} at ${k}`,
        );
      } else if (!(digit(edited[k - 1]) && digit(edited[k + 1]))) {
        edited.splice(k, 1);
        m.desc.push(`text delete byte ${k}`);
      }
    }
    const bytes = Uint8Array.from(edited);
    const fix = r.chance(0.9);
    const areas = r.chance(0.7) ? b.mdas : [b.mdas[0]];
    for (const mda of areas) {
      putText(
        base,
        m,
        mda,
        bytes,
        mda === b.mdas[0] ? offset : textOf(base, mda).offset,
        fix,
      );
    }
    if (!fix) m.desc.push("(text CRC not fixed)");
    m.desc.push(`(written to ${areas.length} of ${b.mdas.length} areas)`);
  } else {
    const cut = b.pvOffset + r.int(b.pvLength);
    m.size = cut;
    m.allowed = m.allowed.filter((x) => x.offset < cut).map((x) => ({
      offset: x.offset,
      length: Math.min(x.length, cut - x.offset),
    }));
    m.desc.push(`truncated at ${cut}`);
  }
}

/** The test's own reading of an edited VG: why it is inconsistent, or what is free. */
export function meaningOf(
  b: LvmFuzzBase,
  vg: VgSpec,
): { invalid: string } | { allowed: FreeRange[] } {
  const pv = vg.pvs[0];
  const ext = vg.extentBytes;
  const end = pv.peStart + pv.peCount * ext;
  const limits = [pv.devSize, b.pvLength];
  const second = b.mdas[1];
  if (second) limits.push(second.offset - b.pvOffset);
  if (pv.devSize > b.pvLength) return { invalid: "dev_size past the region" };
  if (pv.peCount > 0 && pv.peStart < b.dataArea) {
    return { invalid: "extents before the data area" };
  }
  if (end > Math.min(...limits)) return { invalid: "extents past the device" };
  const used: Array<[number, number]> = [];
  for (const lv of vg.lvs) {
    if (!lv.segments) return { invalid: `LV ${lv.name} is not linear` };
    for (const s of lv.segments) {
      if (s.pe + s.count > pv.peCount) {
        return { invalid: `LV ${lv.name} past the PV's end` };
      }
      used.push([s.pe, s.pe + s.count]);
    }
  }
  used.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < used.length; i++) {
    if (used[i][0] < used[i - 1][1]) return { invalid: "segments overlap" };
  }
  const allowed: FreeRange[] = [];
  let next = 0;
  for (const [a, z] of [...used, [pv.peCount, pv.peCount]]) {
    if (a > next) {
      allowed.push({
        offset: b.pvOffset + pv.peStart + next * ext,
        length: (a - next) * ext,
      });
    }
    next = Math.max(next, z);
  }
  for (const lv of vg.lvs) {
    const free = b.lvFree[lv.name];
    if (!free || (lv.status && !lv.status.includes("VISIBLE"))) continue;
    const length = lv.segments!.reduce((n, s) => n + s.count, 0) * ext;
    allowed.push(
      ...lvToDisk(
        vg,
        lv,
        free.filter((x) => x.offset < length).map((x) => ({
          offset: x.offset,
          length: Math.min(x.length, length - x.offset),
        })),
      ),
    );
  }
  return { allowed: merge(allowed) };
}

/** Meaning mutations: the VG edited, written back with its CRCs. */
function meaning(
  r: Rand,
  b: LvmFuzzBase,
  base: Uint8Array,
  m: LvmMutation,
): void {
  const vg: VgSpec = structuredClone(b.vg);
  vg.seqno++;
  const pv = vg.pvs[0];
  const edits = 1 + r.int(2);
  for (let e = 0; e < edits; e++) {
    const lv = r.pick(vg.lvs);
    const seg = lv.segments ? r.pick(lv.segments) : undefined;
    switch (r.int(11)) {
      case 0:
        if (seg) {
          const old = seg.pe;
          seg.pe = r.int(pv.peCount + 4);
          m.desc.push(`LV ${lv.name} segment pe ${old} -> ${seg.pe}`);
        }
        break;
      case 1:
        if (seg) {
          const old = seg.count;
          seg.count = Math.max(1, seg.count + r.int(7) - 3);
          m.desc.push(`LV ${lv.name} segment count ${old} -> ${seg.count}`);
        }
        break;
      case 2: {
        const old = pv.peCount;
        pv.peCount = Math.max(0, pv.peCount + r.int(9) - 4);
        m.desc.push(`pe_count ${old} -> ${pv.peCount}`);
        break;
      }
      case 3:
        vg.lvs = vg.lvs.filter((l) => l !== lv);
        m.desc.push(`LV ${lv.name} dropped`);
        break;
      case 4: {
        const pe = r.int(pv.peCount);
        const count = 1 + r.int(4);
        vg.lvs.push({ name: `n${pe}`, segments: [{ pv: "pv0", pe, count }] });
        m.desc.push(`LV n${pe} added at extents ${pe}-${pe + count - 1}`);
        break;
      }
      case 5:
        if (lv.segments && lv.segments.length > 1) {
          lv.segments.reverse();
          m.desc.push(`LV ${lv.name} segments reversed`);
        }
        break;
      case 6: {
        const kind = r.pick([
          'type = "snapshot"\nchunk_size = 8\norigin = "a"\ncow_store = "b"',
          'type = "thin-pool"\nmetadata = "a"\npool = "b"\ntransaction_id = 0\nchunk_size = 128',
          'type = "raid1"\ndevice_count = 2\nraids = ["a", "b", "a", "b"]',
          'type = "mirror"\nmirror_count = 2\nmirrors = ["pv0", 30, "pv0", 31]',
          'type = "error"',
          'type = "striped"\nstripe_count = 2\nstripe_size = 128\nstripes = ["pv0", 30, "pv0", 32]',
        ]);
        const raw: LvSpec = {
          name: `k${r.int(100)}`,
          raw:
            `status = ["READ", "WRITE", "VISIBLE"]\nflags = []\nsegment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = 2\n${kind}\n}`,
        };
        vg.lvs.push(raw);
        m.desc.push(`LV ${raw.name} added: ${kind.split("\n")[0]}`);
        break;
      }
      case 7:
        lv.status = ["READ", "WRITE"];
        m.desc.push(`LV ${lv.name} hidden`);
        break;
      case 8: {
        const old = pv.peStart;
        pv.peStart = r.pick([
          old + 512,
          old + MiB,
          Math.max(512, old - 512),
          Math.max(512, old - MiB),
          4096,
        ]);
        m.desc.push(`pe_start ${old} -> ${pv.peStart}`);
        break;
      }
      case 9: {
        const old = vg.extentBytes;
        vg.extentBytes = r.pick([old * 2, old / 2, 512, old * 1024]);
        m.desc.push(`extent_size ${old} -> ${vg.extentBytes}`);
        break;
      }
      default: {
        const old = pv.devSize;
        pv.devSize = r.pick([old - MiB, old + MiB, old * 4, 0]);
        m.desc.push(`dev_size ${old} -> ${pv.devSize}`);
      }
    }
  }
  const text = new TextEncoder().encode(vgText(vg) + "\0");
  for (const mda of b.mdas) {
    const { offset } = textOf(base, mda);
    // In the wrapping base, the text is written where LVM2's was, so it
    // wraps again; elsewhere after the header.
    putText(base, m, mda, text, b.name === "wrap" ? offset : 512, true);
  }
  const meant = meaningOf(b, vg);
  if ("invalid" in meant) {
    m.mustRefuse = meant.invalid;
    m.allowed = [];
  } else {
    // A consistent VG: its free space, and the rest of the disk's (the
    // partitions beside the PV never change).
    m.allowed = merge([
      ...meant.allowed,
      ...b.free.filter((x) =>
        x.offset + x.length <= b.pvOffset ||
        x.offset >= b.pvOffset + b.pvLength
      ),
    ]);
  }
}

/** The mutation of case `seed` of a base. */
export function mutateLvm(
  b: LvmFuzzBase,
  base: Uint8Array,
  seed: number,
): LvmMutation {
  const r = new Rand(seed);
  const m: LvmMutation = {
    patches: [],
    size: b.size,
    desc: [],
    allowed: b.free,
  };
  if (r.chance(0.45)) {
    meaning(r, b, base, m);
  } else {
    const rounds = 1 + r.int(3);
    for (let i = 0; i < rounds; i++) structure(r, b, base, m);
  }
  return m;
}

/**
 * The LVM2 target of the case runner: zeros only where the case allows
 * them, an inconsistent VG never mapped, and the outcome of the PV's
 * region (mapped when every LV is); every fourth case streamed with a
 * 64 MiB read-ahead.
 */
export const target: FuzzTarget<LvmFuzzBase, Uint8Array> = inMemory({
  mutate: mutateLvm,
  judge: (b, report, m) => {
    const region = report.regions.find((r) => r.offset === b.pvOffset);
    const pvMapped = region?.found === "LVM2 PV" && region.status === "mapped";
    const mustRefuse = (m as LvmMutation).mustRefuse;
    return {
      outcome: report.tableProblem
        ? "table refused"
        : pvMapped
        ? (region.volumes ?? []).every((v) => v.status === "mapped")
          ? "mapped"
          : "partly mapped"
        : "untouched",
      reason: region?.reason ?? report.tableProblem ??
        region?.volumes?.map((v) => v.reason).filter(Boolean).join("; "),
      problem: mustRefuse && pvMapped
        ? `mapped a VG that is inconsistent (${mustRefuse})`
        : undefined,
    };
  },
  readAhead: () => 64 << 20,
});
