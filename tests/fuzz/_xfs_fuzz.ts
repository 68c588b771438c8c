// Seeded fuzzing of the XFS module (not a test file): XFS images made by
// mkfs.xfs from a prototype file (v5 with and without rmapbt, v4) and,
// with root and loop devices, one filled through a kernel mount (block map
// btrees, attributes in blocks, deleted files), with
// their metadata mutated: superblocks, AG headers, free lists, every kind
// of btree block and record, inodes and their extent records, directory
// blocks, the log. Checksums are recomputed after most mutations, as an
// attacker would, so that the module meets hostile values that pass them.
//
// The oracle is independent of the module: the free space of the unmutated
// image as `xfs_db freesp -d` lists it. A mutated image may be mapped or
// left as it is, but every byte called free must be free in the original.
// A case is (base, seed): the same pair always gives the same bytes.

import { join } from "node:path";
import { Rand } from "../../lib/_prng.ts";
import { crc32cRaw } from "../../lib/bytes/crc.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { canLoop, MiB, populate, sh } from "../sparsify/_disks.ts";
import {
  inodeOf,
  manyFiles,
  protoImage,
  xfsDbFields,
  xfsDbFree,
  xfsGeometry,
} from "../sparsify/_xfs.ts";
import {
  current,
  type FuzzTarget,
  inMemory,
  type Mutation,
} from "./_sparsify_target.ts";

/** How a structure's checksum is fixed after a mutation. */
type Kind =
  | "sb"
  | "agf"
  | "agi"
  | "agfl"
  | "btree"
  | "bmbt"
  | "inodes"
  | "dirdata"
  | "dirleaf"
  | "log";

/** A structure of a base worth mutating. */
export interface Target {
  kind: Kind;
  name: string;
  /** Disk offset and length. */
  at: number;
  length: number;
}

/** An image to mutate, what is free on it by xfs_db, and where its structures are. */
export interface XfsBase {
  name: string;
  path: string;
  size: number;
  v5: boolean;
  blockSize: number;
  inodeSize: number;
  sectSize: number;
  free: FreeRange[];
  targets: Target[];
  /** Filesystem block numbers worth pointing things at (free, used, metadata). */
  blocks: number[];
}

async function agTargets(
  image: string,
  g: Awaited<ReturnType<typeof xfsGeometry>>,
  v5: boolean,
): Promise<Target[]> {
  const t: Target[] = [];
  const bs = g.blockSize;
  const ss = g.sectSize;
  for (let a = 0; a < g.agcount; a++) {
    const base = a * g.agblocks * bs;
    t.push({ kind: "sb", name: `sb ${a}`, at: base, length: ss });
    t.push({ kind: "agf", name: `AGF ${a}`, at: base + ss, length: ss });
    t.push({ kind: "agi", name: `AGI ${a}`, at: base + 2 * ss, length: ss });
    t.push({ kind: "agfl", name: `AGFL ${a}`, at: base + 3 * ss, length: ss });
    const agf = await xfsDbFields(image, `agf ${a}`, "p");
    const agi = await xfsDbFields(image, `agi ${a}`, "p");
    const roots: Array<[string, string | undefined]> = [
      ["bno", agf.get("bnoroot")],
      ["cnt", agf.get("cntroot")],
      ["rmap", v5 ? agf.get("rmaproot") : undefined],
      ["refcount", v5 ? agf.get("refcntroot") : undefined],
      ["inobt", agi.get("root")],
      ["finobt", v5 ? agi.get("free_root") : undefined],
    ];
    for (const [name, root] of roots) {
      const b = Number(root);
      if (root === undefined || !(b > 0) || b === 0xffffffff) continue;
      t.push({
        kind: "btree",
        name: `${name} root of AG ${a}`,
        at: base + b * bs,
        length: bs,
      });
    }
    // The first inode chunks of the AG.
    const out = await sh("xfs_db", [
      "-r",
      "-c",
      `agi ${a}`,
      "-c",
      "addr root",
      "-c",
      "p",
      image,
    ]);
    const inopb = bs /
      Number(
        (await xfsDbFields(image, "sb 0", "p inodesize")).get("inodesize"),
      );
    for (const m of [...out.matchAll(/^(\d+):\[(\d+),/gm)].slice(0, 3)) {
      const startino = Number(m[2]);
      const b = Math.floor(startino / inopb);
      t.push({
        kind: "inodes",
        name: `inode chunk ${startino} of AG ${a}`,
        at: base + b * bs,
        length: Math.max(bs, 64 * (bs / inopb)),
      });
    }
  }
  // The log: its first blocks and the block of its last record.
  const lagno = Math.floor(g.logstart / 2 ** g.agblklog);
  const lstart = (lagno * g.agblocks + g.logstart % 2 ** g.agblklog) * bs;
  t.push({ kind: "log", name: "log start", at: lstart, length: 4096 });
  return t;
}

/** Directory blocks of `path` (data, leaf, node). */
async function dirTargets(
  image: string,
  path: string,
  g: Awaited<ReturnType<typeof xfsGeometry>>,
): Promise<Target[]> {
  const ino = await inodeOf(image, path);
  const text = await sh("xfs_db", [
    "-r",
    "-c",
    `inode ${ino}`,
    "-c",
    "bmap",
    image,
  ]);
  const sb = await xfsDbFields(image, "sb 0", "p dirblklog");
  const per = 2 ** Number(sb.get("dirblklog"));
  const out: Target[] = [];
  for (
    const m of text.matchAll(
      /data offset (\d+) startblock \d+ \((\d+)\/(\d+)\) count (\d+)/g,
    )
  ) {
    const [off, agno, agbno, count] = [m[1], m[2], m[3], m[4]].map(Number);
    // Whole directory blocks that start in this extent, the first three.
    for (
      let i = (per - off % per) % per, n = 0;
      i + per <= count && n < 3;
      i += per, n++
    ) {
      const leaf = (off + i) * g.blockSize >= 32 * 2 ** 30;
      out.push({
        kind: leaf ? "dirleaf" : "dirdata",
        name: `${path} block ${off + i}`,
        at: (agno * g.agblocks + agbno + i) * g.blockSize,
        length: per * g.blockSize,
      });
    }
  }
  return out;
}

/** Builds the bases in `root`. */
export async function buildXfsBases(root: string): Promise<XfsBase[]> {
  const tree = join(root, "tree");
  await populate(tree, 77, 6 * MiB);
  await manyFiles(join(tree, "many"), 1200);
  await manyFiles(join(tree, "few"), 40);
  const variants: Array<[string, string[], number]> = [
    ["v5", [], 32 * MiB],
    ["v5-rmapbt-1k", ["-m", "rmapbt=1", "-b", "size=1024"], 32 * MiB],
    ["v4", ["-m", "crc=0"], 32 * MiB],
  ];
  const bases: XfsBase[] = [];
  for (const [name, args, size] of variants) {
    const path = join(root, `${name}.img`);
    await protoImage(path, size, args, tree, size % 251);
    const g = await xfsGeometry(path);
    const v5 = !args.includes("crc=0");
    const sb = await xfsDbFields(path, "sb 0", "p inodesize");
    const targets = [
      ...await agTargets(path, g, v5),
      ...await dirTargets(path, "/many", g),
      ...await dirTargets(path, "/", g),
    ];
    const free = (await xfsDbFree(path)).ranges;
    const fsb = (at: number) => {
      const b = Math.floor(at / g.blockSize);
      return Math.floor(b / g.agblocks) * 2 ** g.agblklog + b % g.agblocks;
    };
    const blocks = [
      ...free.flatMap((r) => [fsb(r.offset), fsb(r.offset + r.length - 1)]),
      ...targets.map((t) => fsb(t.at)),
    ];
    bases.push({
      name,
      path,
      size,
      v5,
      blockSize: g.blockSize,
      inodeSize: Number(sb.get("inodesize")),
      sectSize: g.sectSize,
      free,
      targets,
      blocks,
    });
  }
  if (canLoop()) bases.push(await kernelBase(root));
  return bases;
}

/**
 * A v5 image filled through a kernel mount (root and loop devices): a
 * directory and a file in many extents (block map btrees), extended
 * attributes in blocks of their own, files deleted.
 */
async function kernelBase(root: string): Promise<XfsBase> {
  const path = join(root, "kernel.img");
  const size = 64 * MiB;
  await protoImage(path, size, [], join(root, "tree"), 3);
  const dev = (await sh("losetup", ["-f", "--show", path])).trim();
  const mnt = join(root, "mnt");
  await Deno.mkdir(mnt, { recursive: true });
  try {
    await sh("mount", ["-t", "xfs", dev, mnt]);
    try {
      // A sparse file of 300 extents, and a directory whose blocks lie
      // between its files' blocks: both in btree format.
      using f = await Deno.open(join(mnt, "fragmented"), {
        create: true,
        write: true,
      });
      for (let i = 0; i < 300; i++) {
        await f.seek(i * 8192, Deno.SeekMode.Start);
        await f.write(new Uint8Array(4096).fill(i));
      }
      await Deno.mkdir(join(mnt, "spread"));
      for (let i = 0; i < 1500; i++) {
        await Deno.writeFile(
          join(mnt, "spread", `a-rather-long-file-name-number-${i}`),
          new Uint8Array(4096).fill(i),
        );
      }
      await sh("python3", [
        "-c",
        "import os, sys; os.setxattr(sys.argv[1], 'user.big', os.urandom(3000))",
        join(mnt, "fragmented"),
      ]);
      for (let i = 0; i < 1500; i += 2) {
        await Deno.remove(
          join(mnt, "spread", `a-rather-long-file-name-number-${i}`),
        );
      }
    } finally {
      await sh("umount", [mnt]);
    }
  } finally {
    await sh("losetup", ["-d", dev]);
  }
  const g = await xfsGeometry(path);
  const targets = [
    ...await agTargets(path, g, true),
    ...await dirTargets(path, "/spread", g),
  ];
  // The block map btree blocks of the fragmented file and the directory.
  for (const p of ["/fragmented", "/spread"]) {
    const ino = await inodeOf(path, p);
    const out = await sh("xfs_db", [
      "-r",
      "-c",
      `inode ${ino}`,
      "-c",
      "p",
      path,
    ]);
    for (const m of out.matchAll(/^u3\.bmbt\.ptrs\[[^\]]*\] = (.*)$/gm)) {
      for (const x of m[1].matchAll(/\d+:(\d+)/g)) {
        const fsb = Number(x[1]);
        const agno = Math.floor(fsb / 2 ** g.agblklog);
        const agbno = fsb % 2 ** g.agblklog;
        targets.push({
          kind: "bmbt",
          name: `block map of ${p} (fsb ${fsb})`,
          at: (agno * g.agblocks + agbno) * g.blockSize,
          length: g.blockSize,
        });
      }
    }
  }
  const free = (await xfsDbFree(path)).ranges;
  const fsbOf = (at: number) => {
    const b = Math.floor(at / g.blockSize);
    return Math.floor(b / g.agblocks) * 2 ** g.agblklog + b % g.agblocks;
  };
  return {
    name: "v5-kernel",
    path,
    size,
    v5: true,
    blockSize: g.blockSize,
    inodeSize: 512,
    sectSize: g.sectSize,
    free,
    targets,
    blocks: [
      ...free.flatMap((r) => [fsbOf(r.offset), fsbOf(r.offset + r.length - 1)]),
      ...targets.map((t) => fsbOf(t.at)),
    ],
  };
}

/** Bytes of `base` with the patches so far over them. */
function view(
  base: Uint8Array,
  m: Mutation,
  at: number,
  n: number,
): Uint8Array {
  return current(base, m.patches, at, n);
}

function be(value: number, size: number): number[] {
  const out: number[] = [];
  let v = BigInt(Math.max(0, Math.floor(value)));
  for (let i = 0; i < size; i++) {
    out.unshift(Number(v & 0xffn));
    v >>= 8n;
  }
  return out;
}

function readBe(bytes: Uint8Array, at: number, size: number): number {
  let v = 0;
  for (let i = 0; i < size; i++) v = v * 256 + bytes[at + i];
  return v;
}

function xfsCrc(bytes: Uint8Array, crcAt: number): number[] {
  let c = crc32cRaw(0xffffffff, bytes.subarray(0, crcAt));
  c = crc32cRaw(c, new Uint8Array(4));
  c = crc32cRaw(c, bytes.subarray(crcAt + 4));
  const v = ~c >>> 0;
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
}

/** Recomputes the checksum of target `t` (the inode at `slot` for inode blocks). */
function fixCrc(
  b: XfsBase,
  base: Uint8Array,
  m: Mutation,
  t: Target,
  at: number,
): void {
  if (!b.v5) return;
  let start = t.at;
  let length = t.length;
  let crcAt: number;
  switch (t.kind) {
    case "sb":
      crcAt = 224;
      break;
    case "agf":
      crcAt = 216;
      break;
    case "agi":
      crcAt = 312;
      break;
    case "agfl":
      crcAt = 32;
      break;
    case "btree":
      crcAt = 52;
      break;
    case "bmbt":
      crcAt = 64;
      break;
    case "inodes":
      start = t.at + Math.floor((at - t.at) / b.inodeSize) * b.inodeSize;
      length = b.inodeSize;
      crcAt = 100;
      break;
    case "dirdata":
      crcAt = 4;
      break;
    case "dirleaf":
      crcAt = 12;
      break;
    default:
      return;
  }
  const bytes = view(base, m, start, length);
  m.patches.push({ at: start + crcAt, bytes: xfsCrc(bytes, crcAt) });
  m.desc.push(`checksum of ${t.name} recomputed`);
}

/** An interesting value for a field of `size` bytes that held `old`. */
function interesting(r: Rand, b: XfsBase, old: number, size: number): number {
  const max = 2 ** (8 * size) - 1;
  const choices = [
    0,
    1,
    max,
    old + 1,
    Math.max(0, old - 1),
    old * 2,
    Math.floor(old / 2),
    r.int(Math.min(max, 2 ** 31)),
    r.pick(b.blocks),
    2 ** (8 * size - 1),
  ];
  return Math.min(max, r.pick(choices));
}

/** The mutation of case `seed` of a base: one to three changes, checksums mostly fixed. */
export function mutateXfs(
  b: XfsBase,
  base: Uint8Array,
  seed: number,
): Mutation {
  const r = new Rand(seed);
  const m: Mutation = { patches: [], size: b.size, desc: [] };
  const rounds = 1 + r.int(3);
  for (let k = 0; k < rounds; k++) {
    const op = r.int(20);
    if (op === 0) {
      const size = Math.max(4096, b.size - (1 + r.int(b.size / 4096)) * 4096);
      m.size = Math.min(m.size, size);
      m.desc.push(`truncated to ${m.size} bytes`);
      continue;
    }
    const t = r.pick(b.targets);
    let at: number;
    let size: number;
    if (op <= 2) {
      // Random bytes anywhere in the structure.
      at = t.at + r.int(t.length);
      size = 1;
      const bytes = [r.int(256)];
      m.patches.push({ at, bytes });
      m.desc.push(`${t.name} byte ${at - t.at} -> ${bytes[0]}`);
    } else {
      // A field: headers mostly, records and inode cores too.
      size = r.pick([1, 2, 4, 4, 4, 8]);
      const span = t.kind === "inodes"
        ? Math.floor(r.int(t.length) / b.inodeSize) * b.inodeSize +
          r.pick([
            0,
            2,
            4,
            5,
            24,
            56,
            64,
            76,
            80,
            82,
            83,
            90,
            176,
            184,
            192,
            200,
          ])
        : r.int(4) === 0
        ? r.int(t.length)
        : r.int(Math.min(t.length, 128));
      at = t.at + Math.min(span, t.length - size);
      if (t.kind !== "inodes") at -= (at - t.at) % size;
      const old = readBe(view(base, m, at, size), 0, size);
      const value = interesting(r, b, old, size);
      m.patches.push({ at, bytes: be(value, size) });
      m.desc.push(
        `${t.name} field at ${at - t.at} (${size} bytes) ${old} -> ${value}`,
      );
    }
    if (r.int(4) !== 0) fixCrc(b, base, m, t, at);
  }
  return m;
}

/**
 * The XFS target of the case runner: the outcome of the image's one
 * region, whose reason must be one line; every fourth case streamed with
 * FreeSpaceStream's default read-ahead (64 MiB).
 */
export const target: FuzzTarget<XfsBase, Uint8Array> = inMemory({
  mutate: mutateXfs,
  judge: (_b, report) => {
    const [region] = report.regions;
    return {
      outcome: region.status,
      reason: region.reason,
      problem: region.status === "untouched" &&
          /\n/.test(region.reason ?? "\n")
        ? `reason is not one line: ${JSON.stringify(region.reason)}`
        : undefined,
    };
  },
  readAhead: () => 64 << 20,
});
