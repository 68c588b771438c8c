// Seeded fuzzing of the btrfs module (not a test file): real btrfs images
// (mkfs.btrfs, filled, files deleted and snapshots taken through the
// kernel; bare and in a GPT partition) with their metadata mutated as an
// attacker who has read the code would: superblock and system chunk array
// fields, tree block headers, item headers, item fields (extent items,
// block groups, chunks, dev extents, root items, file extents), node
// pointers, items removed with the counts that would betray it adjusted,
// random bytes, truncation; checksums recomputed and every DUP copy written
// most of the time.
//
// The oracle is independent of the module: the free space of the
// unmutated image as btrfs-progs' dump-tree describes it. A mutated disk
// may be mapped or left as it is, but every byte called free must be free
// in the original. A case is (base, seed): the same pair always gives the
// same bytes.

import { join } from "node:path";
import { Rand } from "../../lib/_prng.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  blank,
  MiB,
  noise,
  populate,
  sfdiskParts,
  sh,
  writeInto,
} from "../sparsify/_disks.ts";
import {
  btrfsCsum,
  btrfsFree,
  type BtrfsLayout,
  btrfsLayout,
  mkbtrfs,
  mountBtrfs,
  physicalOf,
  removeItem,
} from "../sparsify/_btrfs.ts";
import {
  applyPatches,
  type FuzzTarget,
  type Mutation,
  type Patch,
  PatchedSource,
} from "./_sparsify_target.ts";

/** One tree block of a base: where its copies are on the disk. */
export interface FuzzBlock {
  bytenr: number;
  level: number;
  owner: string;
  /** Disk offsets of its copies. */
  copies: number[];
}

/** A disk to mutate, and what is free on it by btrfs-progs. */
export interface BtrfsFuzzBase {
  name: string;
  path: string;
  size: number;
  /** Disk offset of the btrfs. */
  offset: number;
  nodesize: number;
  sectorsize: number;
  free: FreeRange[];
  blocks: FuzzBlock[];
  /** Logical addresses worth pointing things at. */
  targets: number[];
  /** Small enough to stream whole through FreeSpaceStream. */
  stream: boolean;
}

// ---------------------------------------------------------------------------
// Bases

/** Fills a mounted btrfs, deletes half, snapshots, deletes more, syncs. */
async function use(mnt: string, seed: number, bytes: number): Promise<void> {
  const files = await populate(join(mnt, "data"), seed, bytes);
  for (const [i, f] of files.entries()) {
    if (i % 2 === 1) await Deno.remove(join(mnt, "data", f));
  }
  await sh("btrfs", ["subvolume", "snapshot", mnt, join(mnt, "snap")]);
  for (const [i, f] of files.entries()) {
    if (i % 4 === 0) await Deno.remove(join(mnt, "data", f));
  }
  await sh("btrfs", ["subvolume", "create", join(mnt, "vol")]);
  await Deno.writeFile(join(mnt, "vol", "x.bin"), noise(300_000, seed));
  await sh("sync", []);
}

function describe(
  name: string,
  path: string,
  size: number,
  offset: number,
  layout: BtrfsLayout,
  stream: boolean,
): BtrfsFuzzBase {
  const blocks = layout.treeBlocks.map((b) => ({
    bytenr: b.bytenr,
    level: b.level,
    owner: b.owner,
    copies: physicalOf(layout, b.bytenr, layout.nodesize).map((p) =>
      offset + p
    ),
  }));
  const free = btrfsFree(layout, offset);
  const targets = [
    ...blocks.map((b) => b.bytenr),
    ...layout.chunks.flatMap((c) => [c.logical, c.logical + c.length]),
    ...layout.extents.map((e) => e.start),
    ...layout.chunks.flatMap((c) => c.stripes),
  ];
  return {
    name,
    path,
    size,
    offset,
    nodesize: layout.nodesize,
    sectorsize: layout.sectorsize,
    free,
    blocks,
    targets: [...new Set(targets)],
    stream,
  };
}

async function bareBase(
  root: string,
  name: string,
  size: number,
  args: string[],
  bytes: number,
): Promise<BtrfsFuzzBase> {
  const dir = join(root, name);
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "disk.img");
  await mkbtrfs(path, size, args);
  {
    await using _m = await mountBtrfs(path, join(dir, "mnt"));
    await use(join(dir, "mnt"), size % 101, bytes);
  }
  await sh("btrfs", ["check", "--readonly", path]);
  return describe(
    name,
    path,
    size,
    0,
    await btrfsLayout(path),
    size <= 64 * MiB,
  );
}

async function gptBase(root: string): Promise<BtrfsFuzzBase> {
  const dir = join(root, "gpt");
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "disk.img");
  const size = 160 * MiB;
  await blank(path, size);
  await sh("sfdisk", ["-q", path], { stdin: "label: gpt\n,4M,L\n,140M,L\n" });
  const [p1, p2] = await sfdiskParts(path);
  const fs = join(dir, "fs.img");
  await mkbtrfs(fs, p2.length, []);
  {
    await using _m = await mountBtrfs(fs, join(dir, "mnt"));
    await use(join(dir, "mnt"), 7, 30 * MiB);
  }
  const layout = await btrfsLayout(fs);
  await writeInto(path, p2.offset, fs);
  await Deno.remove(fs);
  const other = join(dir, "p1.img");
  await Deno.writeFile(other, noise(p1.length, 3));
  await writeInto(path, p1.offset, other);
  await Deno.remove(other);
  return describe("gpt", path, size, p2.offset, layout, false);
}

/** Builds every base under `root` (needs btrfs-progs, sfdisk, root for loop mounts). */
export async function buildBtrfsFuzzBases(
  root: string,
): Promise<BtrfsFuzzBase[]> {
  return [
    await bareBase(root, "dup-16k", 128 * MiB, [], 30 * MiB),
    await bareBase(root, "single-4k", 128 * MiB, [
      "-m",
      "single",
      "-n",
      "4096",
    ], 30 * MiB),
    await bareBase(root, "mixed", 48 * MiB, ["--mixed"], 12 * MiB),
    await bareBase(root, "noskinny-dupdata", 256 * MiB, [
      "-O",
      "^skinny-metadata",
      "-d",
      "dup",
    ], 20 * MiB),
    await gptBase(root),
  ];
}

// ---------------------------------------------------------------------------
// Reading a base with patches

/** Bytes of a base file, read as needed (the base is never held in memory). */
export class BaseFile {
  readonly #file: Deno.FsFile;
  readonly size: number;

  constructor(path: string) {
    this.#file = Deno.openSync(path, { read: true });
    this.size = this.#file.statSync().size;
  }

  /** Reads `[at, at + n)` (fewer bytes past the end) with `patches` applied. */
  read(at: number, n: number, patches: Patch[]): Uint8Array {
    const len = Math.max(0, Math.min(n, this.size - at));
    const out = new Uint8Array(len);
    this.#file.seekSync(at, Deno.SeekMode.Start);
    let got = 0;
    while (got < len) {
      const k = this.#file.readSync(out.subarray(got));
      if (k === null || k === 0) break;
      got += k;
    }
    return applyPatches(out, at, patches);
  }

  close(): void {
    this.#file.close();
  }
}

// ---------------------------------------------------------------------------
// Mutations

function leBytes(value: bigint, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < size; i++) {
    out.push(Number((value >> BigInt(8 * i)) & 0xffn));
  }
  return out;
}

function readLe(b: Uint8Array, at: number, size: number): bigint {
  let v = 0n;
  for (let i = size - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[at + i]);
  return v;
}

function interesting(
  r: Rand,
  old: bigint,
  size: number,
  b: BtrfsFuzzBase,
): bigint {
  const max = (1n << BigInt(8 * size)) - 1n;
  const ns = BigInt(b.nodesize);
  const pool: bigint[] = [
    0n,
    1n,
    2n,
    7n,
    0xffn,
    0xffffn,
    0xffffffffn,
    1n << 32n,
    (1n << 53n) - 1n,
    1n << 53n,
    max,
    old + 1n,
    old - 1n,
    old + 4096n,
    old - 4096n,
    old + ns,
    old - ns,
    old * 2n,
    old / 2n,
    old ^ (1n << BigInt(r.int(size * 8))),
    BigInt(r.u32()),
    BigInt(r.pick(b.targets)),
    BigInt(r.pick(b.targets)) + ns,
    BigInt(r.pick(b.free).offset - b.offset),
  ];
  const v = r.pick(pool);
  return v < 0n ? 0n : v > max ? max : v;
}

/** Header fields of a tree block: name, offset, size. */
const HEADER_FIELDS: Array<[string, number, number]> = [
  ["fsid", 0x20, 4],
  ["bytenr", 0x30, 8],
  ["flags", 0x38, 8],
  ["chunk_tree_uuid", 0x40, 4],
  ["generation", 0x50, 8],
  ["owner", 0x58, 8],
  ["nritems", 0x60, 4],
  ["level", 0x64, 1],
];

/** Superblock fields: name, offset, size. */
const SUPER_FIELDS: Array<[string, number, number]> = [
  ["bytenr", 0x30, 8],
  ["flags", 0x38, 8],
  ["generation", 0x48, 8],
  ["root", 0x50, 8],
  ["chunk_root", 0x58, 8],
  ["log_root", 0x60, 8],
  ["total_bytes", 0x70, 8],
  ["bytes_used", 0x78, 8],
  ["num_devices", 0x88, 8],
  ["sectorsize", 0x90, 4],
  ["nodesize", 0x94, 4],
  ["sys_chunk_array_size", 0xa0, 4],
  ["chunk_root_generation", 0xa4, 8],
  ["compat_ro_flags", 0xb4, 8],
  ["incompat_flags", 0xbc, 8],
  ["csum_type", 0xc4, 2],
  ["root_level", 0xc6, 1],
  ["chunk_root_level", 0xc7, 1],
  ["dev_item.devid", 0xc9, 8],
  ["dev_item.total_bytes", 0xd1, 8],
  ["dev_item.bytes_used", 0xd9, 8],
  ["sys chunk 0 key offset", 0x32b + 9, 8],
  ["sys chunk 0 length", 0x32b + 17, 8],
  ["sys chunk 0 type", 0x32b + 17 + 24, 8],
  ["sys chunk 0 num_stripes", 0x32b + 17 + 44, 2],
  ["sys chunk 0 stripe 0 devid", 0x32b + 17 + 48, 8],
  ["sys chunk 0 stripe 0 offset", 0x32b + 17 + 56, 8],
];

/** Fields worth changing in items of each key type: name, offset, size. */
const ITEM_FIELDS: Record<number, Array<[string, number, number]>> = {
  168: [["refs", 0, 8], ["flags", 16, 8], ["tree block level", 41, 1]],
  169: [["refs", 0, 8], ["flags", 16, 8]],
  192: [["used", 0, 8], ["chunk_objectid", 8, 8], ["flags", 16, 8]],
  228: [
    ["length", 0, 8],
    ["type", 24, 8],
    ["num_stripes", 44, 2],
    ["stripe 0 devid", 48, 8],
    ["stripe 0 offset", 56, 8],
    ["stripe 1 offset", 88, 8],
  ],
  216: [["devid", 0, 8], ["total_bytes", 8, 8], ["bytes_used", 16, 8]],
  204: [["chunk_tree", 0, 8], ["chunk_offset", 16, 8], ["length", 24, 8]],
  132: [
    ["generation", 160, 8],
    ["bytenr", 176, 8],
    ["refs", 216, 4],
    ["drop_progress", 220, 8],
    ["level", 238, 1],
  ],
  108: [["type", 20, 1], ["disk_bytenr", 21, 8], ["disk_num_bytes", 29, 8]],
  128: [["first checksum", 0, 4]],
};

/** The state of a mutation being built: reads see earlier patches. */
class Builder {
  readonly m: Mutation;
  readonly #file: BaseFile;
  readonly b: BtrfsFuzzBase;

  constructor(file: BaseFile, b: BtrfsFuzzBase) {
    this.#file = file;
    this.b = b;
    this.m = { patches: [], size: b.size, desc: [] };
  }

  read(at: number, n: number): Uint8Array {
    return this.#file.read(at, n, this.m.patches);
  }

  /** Applies `edit` to a tree block's first copy, then writes it (csum fixed or not) to `copies`. */
  editBlock(
    blk: FuzzBlock,
    edit: (bytes: Uint8Array) => void,
    fix: boolean,
    copies: number[],
  ): void {
    const bytes = this.read(blk.copies[0], this.b.nodesize);
    edit(bytes);
    if (fix) new DataView(bytes.buffer).setUint32(0, btrfsCsum(bytes), true);
    for (const c of copies) {
      this.m.patches.push({ at: blk.copies[c], bytes: [...bytes] });
    }
  }

  editSuper(edit: (bytes: Uint8Array) => void, fix: boolean): void {
    const at = this.b.offset + 0x10000;
    const bytes = this.read(at, 4096);
    edit(bytes);
    if (fix) new DataView(bytes.buffer).setUint32(0, btrfsCsum(bytes), true);
    this.m.patches.push({ at, bytes: [...bytes] });
  }
}

interface LeafItem {
  index: number;
  type: number;
  objectid: bigint;
  key: number;
  at: number;
  size: number;
}

function leafItems(bytes: Uint8Array): LeafItem[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const n = Math.min(
    v.getUint32(0x60, true),
    Math.floor((bytes.length - 0x65) / 25),
  );
  return Array.from({ length: n }, (_, index) => {
    const h = 0x65 + index * 25;
    return {
      index,
      type: bytes[h + 8],
      objectid: v.getBigUint64(h, true),
      key: h,
      at: 0x65 + v.getUint32(h + 17, true),
      size: v.getUint32(h + 21, true),
    };
  }).filter((i) => i.at + i.size <= bytes.length);
}

/** Which copies to write: all (most of the time) or one. */
function copiesOf(r: Rand, blk: FuzzBlock): number[] {
  if (blk.copies.length === 1 || r.chance(0.85)) {
    return blk.copies.map((_, i) => i);
  }
  return [r.int(blk.copies.length)];
}

type Operator = (r: Rand, s: Builder) => void;

const OPERATORS: Array<[number, Operator]> = [
  // A superblock field, the checksum recomputed most of the time.
  [3, (r, s) => {
    const [name, off, size] = r.pick(SUPER_FIELDS);
    const fix = r.chance(0.8);
    s.editSuper((b) => {
      const old = readLe(b, off, size);
      const value = interesting(r, old, size, s.b);
      b.set(leBytes(value, size), off);
      s.m.desc.push(
        `superblock ${name} ${old} -> ${value}${
          fix ? "" : " (checksum not fixed)"
        }`,
      );
    }, fix);
  }],
  // A tree block header field.
  [3, (r, s) => {
    const blk = r.pick(s.b.blocks);
    const [name, off, size] = r.pick(HEADER_FIELDS);
    const fix = r.chance(0.8);
    s.editBlock(
      blk,
      (b) => {
        const old = readLe(b, off, size);
        const value = interesting(r, old, size, s.b);
        b.set(leBytes(value, size), off);
        s.m.desc.push(
          `${blk.owner} block ${blk.bytenr} ${name} ${old} -> ${value}`,
        );
      },
      fix,
      copiesOf(r, blk),
    );
  }],
  // A leaf item header: a key part, the data offset or size.
  [4, (r, s) => {
    const leaves = s.b.blocks.filter((b) => b.level === 0);
    const blk = r.pick(leaves);
    s.editBlock(
      blk,
      (b) => {
        const items = leafItems(b);
        if (items.length === 0) return;
        const it = r.pick(items);
        const [name, off, size] = r.pick([
          ["objectid", 0, 8],
          ["type", 8, 1],
          ["offset", 9, 8],
          ["data offset", 17, 4],
          ["data size", 21, 4],
        ] as Array<[string, number, number]>);
        const old = readLe(b, it.key + off, size);
        const value = interesting(r, old, size, s.b);
        b.set(leBytes(value, size), it.key + off);
        s.m.desc.push(
          `${blk.owner} leaf ${blk.bytenr} item ${it.index} (type ${it.type}) ${name} ${old} -> ${value}`,
        );
      },
      r.chance(0.85),
      copiesOf(r, blk),
    );
  }],
  // A field of an item's data.
  [8, (r, s) => {
    const leaves = s.b.blocks.filter((b) => b.level === 0);
    const blk = r.pick(leaves);
    s.editBlock(
      blk,
      (b) => {
        const items = leafItems(b).filter((i) => i.size > 0);
        if (items.length === 0) return;
        const it = r.pick(items);
        const known = (ITEM_FIELDS[it.type] ?? []).filter(([, off, size]) =>
          off + size <= it.size
        );
        let name: string, off: number, size: number;
        if (known.length > 0 && r.chance(0.8)) {
          [name, off, size] = r.pick(known);
        } else {
          size = r.pick([1, 4, 8].filter((n) => n <= it.size));
          off = r.int(it.size - size + 1);
          name = `bytes at ${off}`;
        }
        const old = readLe(b, it.at + off, size);
        const value = interesting(r, old, size, s.b);
        b.set(leBytes(value, size), it.at + off);
        s.m.desc.push(
          `${blk.owner} leaf ${blk.bytenr} item ${it.index} (type ${it.type}) ${name} ${old} -> ${value}`,
        );
      },
      r.chance(0.9),
      copiesOf(r, blk),
    );
  }],
  // A node pointer: its key, block address or generation.
  [3, (r, s) => {
    const nodes = s.b.blocks.filter((b) => b.level > 0);
    if (nodes.length === 0) return;
    const blk = r.pick(nodes);
    s.editBlock(
      blk,
      (b) => {
        const n = new DataView(b.buffer).getUint32(0x60, true);
        if (n === 0 || n > 400) return;
        const i = r.int(n);
        const [name, off, size] = r.pick([
          ["key objectid", 0, 8],
          ["key offset", 9, 8],
          ["blockptr", 17, 8],
          ["generation", 25, 8],
        ] as Array<[string, number, number]>);
        const at = 0x65 + i * 33 + off;
        const old = readLe(b, at, size);
        const value = interesting(r, old, size, s.b);
        b.set(leBytes(value, size), at);
        s.m.desc.push(
          `${blk.owner} node ${blk.bytenr} pointer ${i} ${name} ${old} -> ${value}`,
        );
      },
      r.chance(0.9),
      copiesOf(r, blk),
    );
  }],
  // An item removed from a leaf (the packed layout kept), and for an
  // extent item the block group's used count and the superblock's
  // bytes_used lowered to match: what an attacker hiding an extent does.
  [4, (r, s) => {
    const leaves = s.b.blocks.filter((b) => b.level === 0);
    const blk = r.chance(0.6)
      ? r.pick(leaves.filter((b) => b.owner === "EXTENT_TREE"))
      : r.pick(leaves);
    let removed: { start: bigint; length: bigint } | undefined;
    s.editBlock(
      blk,
      (b) => {
        const items = leafItems(b);
        if (items.length < 2) return;
        const it = r.pick(items.slice(1));
        const v = new DataView(b.buffer);
        if (it.type === 168 || it.type === 169) {
          removed = {
            start: it.objectid,
            length: it.type === 169
              ? BigInt(s.b.nodesize)
              : v.getBigUint64(it.key + 9, true),
          };
        }
        removeItem(b, it.index);
        s.m.desc.push(
          `${blk.owner} leaf ${blk.bytenr} item ${it.index} (type ${it.type}) removed`,
        );
      },
      true,
      blk.copies.map((_, i) => i),
    );
    if (!removed || !r.chance(0.8)) return;
    const { start, length } = removed;
    // The block group item holding it, in any extent tree leaf.
    for (
      const leaf of s.b.blocks.filter((b) =>
        b.owner === "EXTENT_TREE" && b.level === 0
      )
    ) {
      const bytes = s.read(leaf.copies[0], s.b.nodesize);
      const v = new DataView(bytes.buffer);
      const bg = leafItems(bytes).find((i) =>
        i.type === 192 && i.objectid <= start &&
        start < i.objectid + v.getBigUint64(i.key + 9, true)
      );
      if (!bg) continue;
      s.editBlock(
        leaf,
        (b) => {
          const w = new DataView(b.buffer);
          w.setBigUint64(bg.at, w.getBigUint64(bg.at, true) - length, true);
        },
        true,
        leaf.copies.map((_, i) => i),
      );
      s.editSuper((b) => {
        const w = new DataView(b.buffer);
        w.setBigUint64(0x78, w.getBigUint64(0x78, true) - length, true);
      }, true);
      s.m.desc.push(`block group and bytes_used lowered by ${length}`);
      break;
    }
  }],
  // Random bytes in a tree block or the superblock, no checksum fixed.
  [2, (r, s) => {
    const at = r.chance(0.8)
      ? r.pick(r.pick(s.b.blocks).copies) + r.int(s.b.nodesize - 8)
      : s.b.offset + 0x10000 + r.int(4088);
    const bytes = Array.from({ length: 1 + r.int(8) }, () => r.int(256));
    s.m.patches.push({ at, bytes });
    s.m.desc.push(`${bytes.length} random bytes at ${at}`);
  }],
  // Truncation.
  [1, (r, s) => {
    const cut = r.chance(0.5) ? r.int(s.b.size) : r.int(s.b.size / 4096) * 4096;
    s.m.size = Math.min(s.m.size, cut);
    s.m.desc.push(`truncated to ${cut}`);
  }],
];

/** The mutation of case `seed` of a base: one to three operators. */
export function mutate(
  file: BaseFile,
  b: BtrfsFuzzBase,
  seed: number,
): Mutation {
  const r = new Rand(seed);
  const s = new Builder(file, b);
  const total = OPERATORS.reduce((n, [w]) => n + w, 0);
  const rounds = 1 + r.int(3);
  for (let tries = 0; s.m.desc.length < rounds && tries < 20; tries++) {
    let roll = r.int(total);
    OPERATORS.find(([w]) => (roll -= w) < 0)![1](r, s);
  }
  return s.m;
}

/**
 * The btrfs target of the case runner: bases read from their files as
 * needed (they are never held in memory); the outcome of the btrfs
 * region, and every region's reason one line with no `undefined` or
 * `NaN` in it; every fourth case of a base small enough streamed with a
 * 64 MiB read-ahead.
 */
export const target: FuzzTarget<BtrfsFuzzBase, BaseFile> = {
  load: (base) => Promise.resolve(new BaseFile(base.path)),
  held: () => 0,
  mutate: (base, file, seed) => mutate(file, base, seed),
  source: (file, m) => new PatchedSource(file, m),
  judge: (_b, report) => {
    const btrfs = report.regions.find((r) => r.found === "btrfs");
    const bad = report.regions.find((r) =>
      r.reason !== undefined && /\n|undefined|NaN/.test(r.reason)
    );
    return {
      outcome: report.tableProblem
        ? "table refused"
        : btrfs === undefined
        ? "no btrfs"
        : btrfs.status === "mapped"
        ? "mapped"
        : "untouched",
      reason: btrfs?.reason,
      problem: bad ? `bad reason: ${JSON.stringify(bad.reason)}` : undefined,
    };
  },
  readAhead: (base) => base.stream ? 64 << 20 : undefined,
};
