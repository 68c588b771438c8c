// Seeded fuzzing of the FAT module (not a test file): FAT12, FAT16 and
// FAT32 volumes made by mkfs.vfat and filled with mtools (bare, on GPT, on
// MBR), with their metadata mutated: BPB fields, FAT entries (in every copy
// with the FSInfo count kept right, as an attacker would, or in one copy),
// directory entries (first cluster, size, attributes, name), deleted
// entries brought back, entries written past the end mark, raw bytes,
// truncation.
//
// The oracle is mtools (see tests/sparsify/_fat.ts): the clusters no live
// path uses in the unmutated volume. A mutation that makes a free cluster
// reachable (an entry or a chain pointed at it, a deleted entry brought
// back) names it in `live`, and when it is the case's only mutation the
// runner requires that it is not dropped.

import { join } from "node:path";
import { blank, MiB, sfdiskParts, sh } from "../sparsify/_disks.ts";
import {
  fatClusters,
  fatFree,
  type FatPart,
  fatPaths,
  fillFat,
  fsckFat,
  makeFat,
} from "../sparsify/_fat.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { type FuzzBase, interesting, le, Rand } from "./_sparsify_fuzz.ts";
import {
  current,
  diskOutcome,
  type FuzzTarget,
  inMemory,
  type Mutation,
} from "./_sparsify_target.ts";

/** One FAT volume of a base disk; every offset is a disk offset. */
export interface FatInfo {
  offset: number;
  length: number;
  bits: 12 | 16 | 32;
  fatStart: number;
  fatBytes: number;
  fats: number;
  dataStart: number;
  clusterSize: number;
  clusters: number;
  /** The FSInfo sector (FAT32). */
  fsInfo?: number;
  /** Byte ranges holding directory entries: the root and every directory cluster. */
  dirAreas: Array<[number, number]>;
  /** Live short entries (files, directories, ".", ".."). */
  entries: number[];
  /** Deleted short entries. */
  deleted: number[];
  /** The cluster lists of every live path, the FAT32 root included. */
  chains: number[][];
  /** Free clusters. */
  free: number[];
}

/** A base disk with its FAT volumes. */
export interface FatFuzzBase extends FuzzBase {
  fat: FatInfo[];
}

async function fatInfo(
  p: FatPart,
  work: string,
  bits: 12 | 16 | 32,
): Promise<FatInfo> {
  const { geometry: g, text } = await fsckFat(p, work);
  const paths = await fatPaths(p);
  const chains = await fatClusters(p, [...paths, "::/"]);
  const clusterAt = (c: number) =>
    p.offset + g.dataStart + (c - 2) * g.clusterSize;
  const dirAreas: Array<[number, number]> = [];
  if (bits === 32) {
    for (const c of chains.get("::/")!) {
      dirAreas.push([clusterAt(c), g.clusterSize]);
    }
  } else {
    const at = Number(/^Root directory starts at byte (\d+)/m.exec(text)![1]);
    dirAreas.push([p.offset + at, p.offset + g.dataStart - (p.offset + at)]);
  }
  for (const path of paths.filter((x) => x.endsWith("/"))) {
    for (const c of chains.get(path.slice(0, -1))!) {
      dirAreas.push([clusterAt(c), g.clusterSize]);
    }
  }
  const disk = await Deno.open(p.disk);
  const entries: number[] = [];
  const deleted: number[] = [];
  for (const [at, n] of dirAreas) {
    const bytes = new Uint8Array(n);
    await disk.seek(at, Deno.SeekMode.Start);
    for (let got = 0; got < n;) got += (await disk.read(bytes.subarray(got)))!;
    for (let i = 0; i < n; i += 32) {
      if (bytes[i] === 0 || (bytes[i + 11] & 0x3f) === 0x0f) continue;
      (bytes[i] === 0xe5 ? deleted : entries).push(at + i);
    }
  }
  let fsInfo: number | undefined;
  if (bits === 32) {
    const boot = new Uint8Array(512);
    await disk.seek(p.offset, Deno.SeekMode.Start);
    await disk.read(boot);
    fsInfo = p.offset + new DataView(boot.buffer).getUint16(0x30, true) * 512;
  }
  disk.close();
  const used = new Set([...chains.values()].flat());
  const free: number[] = [];
  for (let c = 2; c < g.clusters + 2; c++) if (!used.has(c)) free.push(c);
  return {
    offset: p.offset,
    length: p.length,
    bits,
    fatStart: p.offset + g.fatStart,
    fatBytes: g.fatBytes,
    fats: g.fats,
    dataStart: p.offset + g.dataStart,
    clusterSize: g.clusterSize,
    clusters: g.clusters,
    fsInfo,
    dirAreas,
    entries,
    deleted,
    chains: [...chains.values()],
    free,
  };
}

async function fatBase(
  root: string,
  name: string,
  size: number,
  volumes: Array<{ bits: 12 | 16 | 32; fill: number }>,
  script?: string,
): Promise<FatFuzzBase> {
  const dir = join(root, name);
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "disk.img");
  await blank(path, size);
  let parts = [{ offset: 0, length: size }];
  if (script) {
    await sh("sfdisk", ["-q", path], { stdin: script });
    parts = await sfdiskParts(path);
  }
  const fat: FatInfo[] = [];
  const free: FreeRange[] = [];
  for (const [i, v] of volumes.entries()) {
    const p = { disk: path, ...parts[i] };
    await makeFat(p, v.bits);
    await fillFat(p, dir, name.length + i, v.fill);
    fat.push(await fatInfo(p, dir, v.bits));
    free.push(...await fatFree(p, dir));
  }
  return { name, path, size, free, ext: [], targets: [], fat };
}

/** Builds every base under `root` (mkfs.vfat, mtools, fsck.fat, sfdisk). */
export async function buildFatFuzzBases(root: string): Promise<FatFuzzBase[]> {
  return [
    await fatBase(root, "fat12", 8 * MiB, [{ bits: 12, fill: 1 * MiB }]),
    await fatBase(root, "fat16", 24 * MiB, [{ bits: 16, fill: 4 * MiB }]),
    await fatBase(root, "fat32", 40 * MiB, [{ bits: 32, fill: 6 * MiB }]),
    await fatBase(
      root,
      "gpt-esp",
      40 * MiB,
      [{ bits: 16, fill: 4 * MiB }],
      "label: gpt\n,32M,U\n",
    ),
    await fatBase(
      root,
      "mbr-fat32",
      48 * MiB,
      [{ bits: 32, fill: 6 * MiB }],
      "label: dos\n,40M,c\n",
    ),
  ];
}

// ---------------------------------------------------------------------------
// Mutations

/** Byte range of cluster `c`. */
function clusterRange(v: FatInfo, c: number): FreeRange {
  return {
    offset: v.dataStart + (c - 2) * v.clusterSize,
    length: v.clusterSize,
  };
}

/** Whether `c` is a data cluster of `v`. */
function inRange(v: FatInfo, c: number): boolean {
  return c >= 2 && c < v.clusters + 2;
}

function readLe(bytes: Uint8Array): number {
  return [...bytes].reduceRight((x, b) => x * 256 + b, 0);
}

/** A cluster number worth pointing something at. */
function clusterTarget(r: Rand, v: FatInfo): number {
  const chain = r.pick(v.chains);
  return r.pick([
    0,
    1,
    2,
    v.clusters + 1,
    v.clusters + 2,
    r.pick(v.free),
    r.pick(v.free),
    r.pick(v.free),
    r.pick(chain),
    chain[0],
    2 + r.int(v.clusters),
    0xffff,
  ]);
}

/** Entry `c` of FAT copy `k`, and a function writing it. */
function fatSlot(
  base: Uint8Array,
  m: Mutation,
  v: FatInfo,
  k: number,
  c: number,
): { old: number; write: (value: number) => void } {
  const at = v.fatStart + k * v.fatBytes + Math.floor(c * v.bits / 8);
  const size = v.bits === 32 ? 4 : 2;
  const bytes = current(base, m.patches, at, size);
  const word = readLe(bytes);
  if (v.bits !== 12) {
    return {
      old: v.bits === 32 ? word % 0x10000000 : word,
      write: (value) => m.patches.push({ at, bytes: le(value, size) }),
    };
  }
  const odd = c & 1;
  return {
    old: odd ? word >> 4 : word & 0xfff,
    write: (value) => {
      const w = odd
        ? (word & 0x000f) | (value & 0xfff) << 4
        : (word & 0xf000) | (value & 0xfff);
      m.patches.push({ at, bytes: le(w, 2) });
    },
  };
}

type Operator = (
  r: Rand,
  base: Uint8Array,
  b: FatFuzzBase,
  m: Mutation,
) => void;

const BPB_FIELDS: Array<[string, number, number, (12 | 16 | 32)[]]> = [
  ["bytes per sector", 0x0b, 2, [12, 16, 32]],
  ["sectors per cluster", 0x0d, 1, [12, 16, 32]],
  ["reserved sectors", 0x0e, 2, [12, 16, 32]],
  ["FATs", 0x10, 1, [12, 16, 32]],
  ["root entries", 0x11, 2, [12, 16, 32]],
  ["total sectors 16", 0x13, 2, [12, 16, 32]],
  ["media", 0x15, 1, [12, 16, 32]],
  ["FAT sectors 16", 0x16, 2, [12, 16, 32]],
  ["total sectors 32", 0x20, 4, [12, 16, 32]],
  ["state", 0x25, 1, [12, 16]],
  ["FAT sectors 32", 0x24, 4, [32]],
  ["ext flags", 0x28, 2, [32]],
  ["version", 0x2a, 2, [32]],
  ["root cluster", 0x2c, 4, [32]],
  ["FSInfo sector", 0x30, 2, [32]],
  ["state", 0x41, 1, [32]],
];

const OPERATORS: Array<[number, Operator]> = [
  // A BPB field.
  [3, (r, base, b, m) => {
    const v = r.pick(b.fat);
    const [name, off, size] = r.pick(
      BPB_FIELDS.filter(([, , , types]) => types.includes(v.bits)),
    );
    const at = v.offset + off;
    const old = readLe(current(base, m.patches, at, size));
    const value = interesting(r, old, size, [
      v.clusters,
      v.clusters + 2,
      v.length / 512,
      v.length / 512 + 1,
      v.fatBytes / 512,
    ]);
    m.patches.push({ at, bytes: le(value, size) });
    m.desc.push(`${name} ${old} -> ${value}`);
  }],
  // A FAT entry: in every copy (the FSInfo count kept right) or in one.
  [5, (r, base, b, m) => {
    const v = r.pick(b.fat);
    const chain = r.pick(v.chains);
    const c = r.chance(0.7)
      ? r.pick(chain)
      : r.chance(0.5)
      ? r.int(v.clusters + 2)
      : 1;
    const max = v.bits === 32 ? 0x0fffffff : (1 << v.bits) - 1;
    const value = Math.min(
      max,
      r.pick([
        0,
        0,
        1,
        max,
        max - 7, // end of chain
        max - 8, // bad
        c,
        c + 1,
        clusterTarget(r, v),
        clusterTarget(r, v),
        r.u32() % (max + 1),
      ]),
    );
    const all = r.chance(0.7);
    const copies = all ? [...Array(v.fats).keys()] : [r.int(v.fats)];
    let old = 0;
    for (const k of copies) {
      const slot = fatSlot(base, m, v, k, c);
      old = slot.old;
      slot.write(value);
    }
    m.desc.push(
      `FAT entry ${c} ${old} -> ${value} in ${
        all ? "every copy" : `copy ${copies[0] + 1}`
      }`,
    );
    if (all && v.fsInfo !== undefined && (old === 0) !== (value === 0)) {
      const at = v.fsInfo + 488;
      const count = readLe(current(base, m.patches, at, 4));
      const fixed = (count + (value === 0 ? 1 : -1)) >>> 0;
      m.patches.push({ at, bytes: le(fixed, 4) });
    }
    if (v.chains.some((x) => x.includes(c)) && inRange(v, value)) {
      (m.live ??= []).push(clusterRange(v, value));
    }
  }],
  // A directory entry's first cluster.
  [4, (r, base, b, m) => {
    const v = r.pick(b.fat);
    const at = r.pick(v.entries);
    const y = clusterTarget(r, v);
    const hi = v.bits === 32 || r.chance(0.2);
    m.patches.push({ at: at + 26, bytes: le(y & 0xffff, 2) });
    if (hi) m.patches.push({ at: at + 20, bytes: le(y >>> 16, 2) });
    const name = String.fromCharCode(...current(base, m.patches, at, 11));
    m.desc.push(`entry "${name}" at ${at}: first cluster -> ${y}`);
    const seen = v.bits === 32 ? y : y & 0xffff;
    if (inRange(v, seen)) (m.live ??= []).push(clusterRange(v, seen));
  }],
  // A deleted entry brought back.
  [2, (r, base, b, m) => {
    const v = r.pick(b.fat);
    if (v.deleted.length === 0) return;
    const at = r.pick(v.deleted);
    m.patches.push({ at, bytes: [0x5a] });
    const e = current(base, m.patches, at, 32);
    const view = new DataView(e.buffer);
    const c = (v.bits === 32 ? view.getUint16(20, true) * 0x10000 : 0) +
      view.getUint16(26, true);
    m.desc.push(`deleted entry at ${at} (cluster ${c}) brought back`);
    if (inRange(v, c)) (m.live ??= []).push(clusterRange(v, c));
  }],
  // Another field of a directory entry.
  [2, (r, base, b, m) => {
    const v = r.pick(b.fat);
    const at = r.pick(v.entries);
    const [name, off, size, pool] = r.pick([
      ["size", 28, 4, [0, 1, v.clusterSize, v.clusterSize + 1, 0xffffffff]],
      ["attributes", 11, 1, [0x10, 0x08, 0x0f, 0x20, 0x18, 0x4f, 0x00]],
      ["name byte", 0, 1, [0x00, 0xe5, 0x05, 0x2e, 0x20]],
    ] as Array<[string, number, number, number[]]>);
    const old = readLe(current(base, m.patches, at + off, size));
    const value = r.chance(0.5) ? r.pick(pool) : interesting(r, old, size, []);
    m.patches.push({ at: at + off, bytes: le(value, size) });
    m.desc.push(`entry at ${at}: ${name} ${old} -> ${value}`);
  }],
  // A live entry written past the end mark of a directory.
  [1, (r, base, b, m) => {
    const v = r.pick(b.fat);
    const [area, n] = r.pick(v.dirAreas);
    const bytes = current(base, m.patches, area, n);
    let slot = -1;
    for (let i = 0; i + 64 <= n; i += 32) {
      if (bytes[i] === 0) {
        slot = i + 32;
        break;
      }
    }
    if (slot < 0) return;
    const e = current(base, m.patches, r.pick(v.entries), 32);
    e.set([0x48, 0x49, 0x44, 0x44, 0x45, 0x4e, 0x20, 0x20], 0); // "HIDDEN  "
    const y = r.pick(v.free);
    e.set(le(y & 0xffff, 2), 26);
    e.set(le(y >>> 16, 2), 20);
    m.patches.push({ at: area + slot, bytes: [...e] });
    m.desc.push(`entry past the end mark at ${area + slot} -> cluster ${y}`);
    (m.live ??= []).push(clusterRange(v, y));
  }],
  // Random bytes in a metadata area.
  [2, (r, _base, b, m) => {
    const v = r.pick(b.fat);
    const areas = [
      v.offset,
      v.fatStart,
      v.fatStart + v.fatBytes,
      ...(v.fsInfo !== undefined ? [v.fsInfo] : []),
      ...v.dirAreas.map(([at]) => at),
    ];
    const at = r.pick(areas) + r.int(512);
    const bytes = Array.from({ length: 1 + r.int(8) }, () => r.int(256));
    m.patches.push({ at, bytes });
    m.desc.push(`${bytes.length} random bytes at ${at}`);
  }],
  // Truncation.
  [1, (r, _base, b, m) => {
    const cut = r.chance(0.5) ? r.int(b.size) : r.int(b.size / 512) * 512;
    m.size = Math.min(m.size, cut);
    m.desc.push(`truncated to ${cut}`);
  }],
];

/**
 * The mutation of case `seed` of a base: one to three operators. Ranges
 * made live are kept only when one operator ran: a second one may have
 * made them unreachable again (a directory cut off).
 */
export function mutate(
  b: FuzzBase,
  base: Uint8Array,
  seed: number,
): Mutation {
  const fb = b as FatFuzzBase;
  const r = new Rand(seed);
  const m: Mutation = { patches: [], size: b.size, desc: [] };
  const total = OPERATORS.reduce((n, [w]) => n + w, 0);
  const rounds = 1 + r.int(3);
  let ran = 0;
  while (ran < rounds) {
    let roll = r.int(total);
    const op = OPERATORS.find(([w]) => (roll -= w) < 0)![1];
    const before = m.desc.length;
    op(r, base, fb, m);
    if (m.desc.length > before) ran++;
  }
  if (ran > 1) delete m.live;
  return m;
}

/** The FAT target of the case runner: every fourth case streamed with a 4 MiB read-ahead. */
export const target: FuzzTarget<FuzzBase, Uint8Array> = inMemory({
  mutate,
  judge: (_b, report) => ({ outcome: diskOutcome(report) }),
  readAhead: () => 4 << 20,
});
