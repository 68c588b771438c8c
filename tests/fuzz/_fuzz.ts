// The seeded fuzz harness (not a test file): base images in many layouts,
// their structure, seeded mutations of their metadata, the rules a result
// must follow, and a pool of runner subprocesses that enforce a wall-clock
// timeout and a memory bound per case.
//
// A case is (base image, case seed): the same pair always yields the same
// bytes, so a failing case is reproduced from its seed alone, by the test
// process (to save it as a fixture) or by a runner (to run it).

import { join } from "node:path";
import { Rand } from "../../lib/_prng.ts";
import { fileURLToPath } from "node:url";
import { qemuImg, qemuIo } from "../_qemu.ts";
import { mixedBytes } from "../reader/_helpers.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { StreamableQcow2Writer } from "../../lib/writer/streamable.ts";
import { parseHeader, type Qcow2Header } from "../../lib/format/header.ts";
import { geometryOf } from "../../lib/format/geometry.ts";
import { decodeL1Entry } from "../../lib/format/l1.ts";
import { decodeL2Entry } from "../../lib/format/l2.ts";
import { compressedRange } from "../../lib/format/compressed.ts";
import { EXTENSION } from "../../lib/format/constants.ts";

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Wall-clock limit of one case (all its operations), in milliseconds. */
export const CASE_TIMEOUT_MS = 10_000;
/** Memory bound of one case: peak RSS and live ArrayBuffer bytes. */
export const CASE_MEMORY_BYTES = 512 * MiB;

/** Path of the runner script. */
export const RUNNER = fileURLToPath(new URL("./_runner.ts", import.meta.url));
/** The project's deno.json (import map for the runner). */
const CONFIG = fileURLToPath(new URL("../../deno.json", import.meta.url));
/** Directory of the regression fixtures. */
export const FIXTURES = fileURLToPath(
  new URL("../fixtures/fuzz/", import.meta.url),
);

// ---------------------------------------------------------------------------
// Seeds

/** The seed of case `index` of a run seeded with `seed`. */
export function caseSeed(seed: number, index: number): number {
  let h = Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^
    Math.imul(index, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  h = Math.imul(h, 0x846ca68b);
  h ^= h >>> 16;
  return h >>> 0;
}

// ---------------------------------------------------------------------------
// Base images

/** A valid image the cases start from. */
export interface BaseImage {
  /** Short name (layout). */
  name: string;
  /** Directory holding the image and the files it refers to. */
  dir: string;
  /** File name of the image inside `dir`. */
  file: string;
  /** Other files of `dir` the image needs (backing files), by name. */
  related: string[];
  /** Relative weight when picking a base for a case. */
  weight: number;
}

async function qemuBase(
  root: string,
  name: string,
  opts: string,
  size: number,
  commands: string[],
  setup?: (dir: string, img: string) => Promise<void>,
): Promise<BaseImage> {
  const dir = join(root, name);
  await Deno.mkdir(dir, { recursive: true });
  const img = join(dir, "image.qcow2");
  await Deno.writeFile(join(dir, "pattern.bin"), mixedBytes(2 * MiB, 11));
  await qemuImg("create", "-q", "-f", "qcow2", "-o", opts, img, String(size));
  await setup?.(dir, img);
  if (commands.length > 0) {
    await qemuIo(
      img,
      commands.map((c) => c.replaceAll("PAT", join(dir, "pattern.bin"))),
    );
  }
  await Deno.remove(join(dir, "pattern.bin"));
  return { name, dir, file: "image.qcow2", related: [], weight: 1 };
}

/** The usual writes: data, compressed data, zeros. */
const WRITES = [
  "write -q -s PAT 0 128k",
  "write -q -c -s PAT 192k 64k",
  "write -q -c -P 0x33 320k 64k",
  "write -q -c -s PAT 448k 128k",
  "write -q -z 640k 64k",
  "write -q -P 0x5a 1M 64k",
];

/**
 * Builds every base image under `root`: QEMU layouts (zlib and zstd
 * compressed, extended L2, snapshots, bitmaps, backing file, 512-byte and
 * 2 MiB clusters, version 2, lazy refcounts) and images from our writer.
 */
export async function buildBases(root: string): Promise<BaseImage[]> {
  const bases: BaseImage[] = [];
  bases.push(
    await qemuBase(root, "zlib", "cluster_size=65536", 2 * MiB, WRITES),
  );
  bases.push(
    await qemuBase(
      root,
      "zstd",
      "cluster_size=65536,compression_type=zstd",
      2 * MiB,
      WRITES,
    ),
  );
  bases.push(
    await qemuBase(
      root,
      "extl2",
      "cluster_size=65536,extended_l2=on",
      2 * MiB,
      [
        "write -q -s PAT 0 8k",
        "write -q -P 0x11 12k 4k",
        "write -q -z 20k 4k",
        "write -q -s PAT 64k 64k",
        "write -q -c -s PAT 192k 64k",
        "write -q -P 0x22 300k 2k",
        "write -q -z 640k 64k",
      ],
    ),
  );
  bases.push(
    await qemuBase(
      root,
      "snapshots",
      "cluster_size=65536",
      2 * MiB,
      ["write -q -s PAT 0 128k", "write -q -c -s PAT 256k 64k"],
      async (_dir, img) => {
        // snapshots need writes between them: done below
        void img;
        await Promise.resolve();
      },
    ),
  );
  {
    const img = join(bases[bases.length - 1].dir, "image.qcow2");
    await qemuImg("snapshot", "-c", "first", img);
    await qemuIo(img, ["write -q -P 0x44 64k 64k", "write -q -P 0x45 1M 4k"]);
    await qemuImg("snapshot", "-c", "second", img);
    await qemuIo(img, ["write -q -z 0 64k"]);
  }
  bases.push(
    await qemuBase(
      root,
      "bitmaps",
      "cluster_size=65536",
      2 * MiB,
      [],
      async (_dir, img) => {
        await qemuImg("bitmap", "--add", img, "b1");
        await qemuImg("bitmap", "--add", "-g", "4096", img, "b2");
        await qemuImg("bitmap", "--add", "--disable", img, "b3");
        await qemuIo(img, [
          "write -q -P 0x66 0 128k",
          "write -q -P 0x67 1M 8k",
        ]);
      },
    ),
  );
  {
    const dir = join(root, "backing");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(join(dir, "pattern.bin"), mixedBytes(512 * KiB, 12));
    const base = join(dir, "base.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", base, String(2 * MiB));
    await qemuIo(base, [
      `write -q -s ${join(dir, "pattern.bin")} 0 256k`,
      `write -q -c -s ${join(dir, "pattern.bin")} 512k 128k`,
    ]);
    const top = join(dir, "image.qcow2");
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      top,
      String(2 * MiB),
    );
    await qemuIo(top, [
      "write -q -P 0x77 64k 64k",
      "write -q -z 128k 64k",
      "write -q -c -P 0x78 1M 64k",
    ]);
    await Deno.remove(join(dir, "pattern.bin"));
    bases.push({
      name: "backing",
      dir,
      file: "image.qcow2",
      related: ["base.qcow2"],
      weight: 1,
    });
  }
  bases.push(
    await qemuBase(root, "c512", "cluster_size=512", 256 * KiB, [
      "write -q -s PAT 0 16k",
      "write -q -c -s PAT 32k 4k",
      "write -q -z 64k 2k",
      "write -q -P 0x12 200k 1k",
    ]),
  );
  {
    const b = await qemuBase(
      root,
      "c2m",
      "cluster_size=2M",
      6 * MiB,
      ["write -q -s PAT 0 64k", "write -q -c -s PAT 2M 2M"],
    );
    b.weight = 0.3; // big files: fewer cases
    bases.push(b);
  }
  bases.push(
    await qemuBase(
      root,
      "v2",
      "compat=0.10,cluster_size=4096",
      MiB,
      ["write -q -s PAT 0 64k", "write -q -c -s PAT 128k 16k"],
    ),
  );
  {
    const img = join(bases[bases.length - 1].dir, "image.qcow2");
    await qemuImg("snapshot", "-c", "v2snap", img);
  }
  bases.push(
    await qemuBase(
      root,
      "lazy",
      "cluster_size=16384,lazy_refcounts=on,refcount_bits=1",
      MiB,
      ["write -q -s PAT 0 64k", "write -q -P 0x9 512k 16k"],
    ),
  );

  // Our writer.
  const raw = new Uint8Array(MiB + 3000);
  raw.set(mixedBytes(256 * KiB, 21), 0);
  raw.set(mixedBytes(64 * KiB, 22), 512 * KiB);
  raw.fill(0x42, 700 * KiB, 760 * KiB);
  raw.set(mixedBytes(3000, 23), MiB);
  const ours: Array<[string, () => Promise<Uint8Array>]> = [
    [
      "ours-zstd",
      () => convertToBytes(raw, { compression: "zstd", workers: 0 }),
    ],
    [
      "ours-zlib-4k-rc1",
      () =>
        convertToBytes(raw, {
          compression: "zlib",
          clusterSize: 4096,
          refcountBits: 1,
          workers: 0,
        }),
    ],
    [
      "ours-plain-512-rc64",
      () =>
        convertToBytes(raw.subarray(0, 300 * KiB), {
          clusterSize: 512,
          refcountBits: 64,
        }),
    ],
    ["ours-streamable", async () => {
      await using writer = new StreamableQcow2Writer({
        compression: "zstd",
        workers: 0,
      });
      const out = ReadableStream.from([raw]).pipeThrough(writer);
      return new Uint8Array(await new Response(out).arrayBuffer());
    }],
  ];
  for (const [name, make] of ours) {
    const dir = join(root, name);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(join(dir, "image.qcow2"), await make());
    bases.push({ name, dir, file: "image.qcow2", related: [], weight: 1 });
  }
  return bases;
}

// ---------------------------------------------------------------------------
// Layout of a valid image: where every structure is.

/** One L2 entry of interest. */
interface EntryAt {
  /** File offset of the entry. */
  at: number;
  type: string;
  hostOffset: number;
  /** Compressed payload range. */
  payload?: { offset: number; length: number };
}

/** Where the structures of an image are. */
export interface Layout {
  header: Qcow2Header;
  cs: number;
  entrySize: number;
  fileSize: number;
  /** Active and snapshot L1 tables: offset and entry count. */
  l1s: Array<{ offset: number; size: number }>;
  /** File offsets of non-zero L1 entries. */
  l1Entries: number[];
  /** L2 table offsets. */
  l2s: number[];
  /** Allocated L2 entries. */
  entries: EntryAt[];
  refcountTable: number;
  /** File offsets of non-zero refcount table entries, and their blocks. */
  reftableEntries: number[];
  refblocks: number[];
  /** File offsets of snapshot table entries. */
  snapshots: number[];
  /** Header extensions: file offset of the extension header, type, length. */
  extensions: Array<{ at: number; type: number; length: number }>;
  /** Bitmap directory and its entries (file offsets). */
  bitmapDirectory?: number;
  bitmapEntries: number[];
  bitmapTables: number[];
  /** Offsets worth pointing things at. */
  targets: number[];
}

function u64(view: DataView, at: number): number {
  return view.getUint32(at) * 0x1_0000_0000 + view.getUint32(at + 4);
}

/** Finds the structures of a valid image (a base). */
export function layoutOf(bytes: Uint8Array): Layout {
  const header = parseHeader(bytes.subarray(0, 2 ** 21));
  const g = geometryOf(header);
  const cs = g.clusterSize;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const layoutL2 = {
    clusterBits: g.clusterBits,
    extendedL2: g.extendedL2,
    dataFile: g.dataFile,
  };
  const l1s = [{ offset: header.l1TableOffset, size: header.l1Size }];
  const snapshots: number[] = [];
  let at = header.snapshotsOffset;
  for (let i = 0; i < header.nbSnapshots; i++) {
    snapshots.push(at);
    l1s.push({ offset: u64(view, at), size: view.getUint32(at + 8) });
    const len = 40 + view.getUint32(at + 36) + view.getUint16(at + 12) +
      view.getUint16(at + 14);
    at += Math.ceil(len / 8) * 8;
  }
  const l1Entries: number[] = [];
  const l2s = new Set<number>();
  for (const l1 of l1s) {
    for (let i = 0; i < l1.size; i++) {
      const off = l1.offset + i * 8;
      if (off + 8 > bytes.length) break;
      const e = decodeL1Entry(
        bytes.subarray(l1.offset, l1.offset + l1.size * 8),
        i,
      );
      if (e.l2Offset !== 0) {
        l1Entries.push(off);
        l2s.add(e.l2Offset);
      }
    }
  }
  const entries: EntryAt[] = [];
  for (const l2 of l2s) {
    const table = bytes.subarray(l2, l2 + cs);
    for (let i = 0; i < g.l2Entries; i++) {
      const e = decodeL2Entry(table, i, layoutL2);
      if (e.type === "unallocated" && e.allocMask === 0 && e.zeroMask === 0) {
        continue;
      }
      entries.push({
        at: l2 + i * g.l2EntrySize,
        type: e.type,
        hostOffset: e.hostOffset,
        payload: e.compressed ? compressedRange(e.compressed) : undefined,
      });
    }
  }
  const reftableEntries: number[] = [];
  const refblocks: number[] = [];
  for (let i = 0; i < header.refcountTableClusters * cs / 8; i++) {
    const off = header.refcountTableOffset + i * 8;
    if (off + 8 > bytes.length) break;
    const v = u64(view, off);
    if (v !== 0) {
      reftableEntries.push(off);
      refblocks.push(v - (v % 512));
    }
  }
  const extensions: Layout["extensions"] = [];
  let e = header.version === 3 ? header.headerLength : 72;
  while (e + 8 <= Math.min(cs, bytes.length)) {
    const type = view.getUint32(e);
    const length = view.getUint32(e + 4);
    extensions.push({ at: e, type, length });
    if (type === 0) break;
    e += 8 + Math.ceil(length / 8) * 8;
  }
  const bitmapEntries: number[] = [];
  const bitmapTables: number[] = [];
  let bitmapDirectory: number | undefined;
  const bm = extensions.find((x) => x.type === EXTENSION.BITMAPS);
  if (bm) {
    const n = view.getUint32(bm.at + 8);
    bitmapDirectory = u64(view, bm.at + 8 + 16);
    let p = bitmapDirectory;
    for (let i = 0; i < n && p + 24 <= bytes.length; i++) {
      bitmapEntries.push(p);
      const table = u64(view, p);
      if (table !== 0) bitmapTables.push(table);
      const len = 24 + view.getUint32(p + 20) + view.getUint16(p + 18);
      p += Math.ceil(len / 8) * 8;
    }
  }
  const fileSize = bytes.length;
  const eof = Math.ceil(fileSize / cs) * cs;
  const targets = [
    0,
    cs,
    ...l1s.map((l) => l.offset),
    header.refcountTableOffset,
    ...refblocks,
    ...l2s,
    ...entries.filter((x) => x.hostOffset !== 0).map((x) => x.hostOffset),
    header.snapshotsOffset,
    ...(bitmapDirectory !== undefined ? [bitmapDirectory] : []),
    ...bitmapTables,
    eof,
    eof + cs,
    2 ** 40,
    2 ** 55,
    2 ** 56 - cs,
  ].filter((x) => x !== undefined);
  return {
    header,
    cs,
    entrySize: g.l2EntrySize,
    fileSize,
    l1s,
    l1Entries,
    l2s: [...l2s],
    entries,
    refcountTable: header.refcountTableOffset,
    reftableEntries,
    refblocks,
    snapshots,
    extensions,
    bitmapDirectory,
    bitmapEntries,
    bitmapTables,
    targets,
  };
}

// ---------------------------------------------------------------------------
// Mutations

interface Ctx {
  bytes: Uint8Array<ArrayBuffer>;
  layout: Layout;
  r: Rand;
}

type Mutator = (
  c: Ctx,
) => { bytes?: Uint8Array<ArrayBuffer>; desc: string } | undefined;

const U32_VALUES = [
  0,
  1,
  2,
  7,
  8,
  9,
  16,
  21,
  22,
  31,
  32,
  63,
  64,
  255,
  256,
  1023,
  1024,
  1025,
  0xffff,
  0x10000,
  0x100000,
  0x400000,
  0x400001,
  0x7fffffff,
  0x80000000,
  0xfffffffe,
  0xffffffff,
];
const U64_VALUES = [
  0n,
  1n,
  511n,
  512n,
  (1n << 31n) - 1n,
  1n << 32n,
  1n << 40n,
  (1n << 53n) - 1n,
  1n << 53n,
  1n << 55n,
  (1n << 56n) - 512n,
  1n << 56n,
  1n << 62n,
  (1n << 63n) - 512n,
  (1n << 63n) - 1n,
  1n << 63n,
  (1n << 64n) - 1n,
];

function put32(b: Uint8Array, at: number, v: number): boolean {
  if (at < 0 || at + 4 > b.length) return false;
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(at, v >>> 0);
  return true;
}

function put64(b: Uint8Array, at: number, v: bigint): boolean {
  if (at < 0 || at + 8 > b.length) return false;
  new DataView(b.buffer, b.byteOffset, b.byteLength).setBigUint64(
    at,
    BigInt.asUintN(64, v),
  );
  return true;
}

function get64(b: Uint8Array, at: number): bigint {
  if (at < 0 || at + 8 > b.length) return 0n; // cut off by a truncation
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(at);
}

const hx = (n: number | bigint) => "0x" + n.toString(16);

/** An offset worth pointing at: a structure, past the end, or unaligned. */
function target(c: Ctx): bigint {
  const t = c.r.pick(c.layout.targets);
  const roll = c.r.next();
  if (roll < 0.1) return BigInt(t + 512);
  if (roll < 0.15) return BigInt(t + 1);
  if (roll < 0.25) return c.r.pick(U64_VALUES);
  return BigInt(t);
}

function u32Value(c: Ctx, extra: number[] = []): number {
  return c.r.chance(0.2)
    ? c.r.int(0x1_0000_0000)
    : c.r.pick([...U32_VALUES, ...extra]);
}

const HEADER_FIELDS: Array<
  [string, number, 4 | 8, (c: Ctx) => number | bigint]
> = [
  ["version", 4, 4, (c) => c.r.pick([0, 1, 2, 3, 4, 0xffffffff])],
  [
    "backing_file_offset",
    8,
    8,
    (c) =>
      c.r.pick([
        0n,
        72n,
        104n,
        112n,
        4096n,
        BigInt(c.layout.cs - 1),
        BigInt(c.layout.cs),
        ...U64_VALUES,
      ]),
  ],
  ["backing_file_size", 16, 4, (c) => u32Value(c)],
  [
    "cluster_bits",
    20,
    4,
    (c) =>
      c.r.pick([0, 8, 9, 12, 14, 16, 20, 21, 22, 31, 32, 63, 255, 0xffffffff]),
  ],
  [
    "size",
    24,
    8,
    (c) =>
      c.r.chance(0.3)
        ? BigInt(c.layout.header.size) * BigInt(1 + c.r.int(4)) +
          BigInt(c.r.int(1024))
        : c.r.pick(U64_VALUES),
  ],
  ["crypt_method", 32, 4, (c) => c.r.pick([0, 1, 2, 3, 0xffffffff])],
  [
    "l1_size",
    36,
    4,
    (c) =>
      u32Value(c, [c.layout.header.l1Size + 1, c.layout.header.l1Size - 1]),
  ],
  ["l1_table_offset", 40, 8, target],
  ["refcount_table_offset", 48, 8, target],
  ["refcount_table_clusters", 56, 4, (c) => u32Value(c)],
  [
    "nb_snapshots",
    60,
    4,
    (c) => u32Value(c, [c.layout.header.nbSnapshots + 1, 65536, 65537]),
  ],
  ["snapshots_offset", 64, 8, target],
  [
    "incompatible_features",
    72,
    8,
    (c) => c.r.chance(0.5) ? 1n << BigInt(c.r.int(64)) : BigInt(c.r.int(32)),
  ],
  ["compatible_features", 80, 8, (c) => 1n << BigInt(c.r.int(64))],
  [
    "autoclear_features",
    88,
    8,
    (c) => c.r.chance(0.5) ? BigInt(c.r.int(4)) : 1n << BigInt(c.r.int(64)),
  ],
  [
    "refcount_order",
    96,
    4,
    (c) => c.r.pick([0, 3, 4, 5, 6, 7, 8, 64, 0xffffffff]),
  ],
  [
    "header_length",
    100,
    4,
    (c) =>
      c.r.pick([
        0,
        71,
        72,
        100,
        103,
        104,
        105,
        108,
        112,
        113,
        120,
        4096,
        c.layout.cs,
        c.layout.cs + 8,
        0xffffffff,
      ]),
  ],
];

const mutators: Array<[string, number, Mutator]> = [
  ["header field", 6, (c) => {
    const [name, at, width, value] = c.r.pick(HEADER_FIELDS);
    const v = value(c);
    if (width === 4) put32(c.bytes, at, Number(v));
    else put64(c.bytes, at, BigInt(v));
    return { desc: `header ${name} = ${v}` };
  }],
  ["compression_type", 1, (c) => {
    const v = c.r.pick([0, 1, 2, 255]);
    c.bytes[104] = v;
    if (c.r.chance(0.5)) {
      // with or without the compression type feature bit
      const f = get64(c.bytes, 72) ^ 8n;
      put64(c.bytes, 72, f);
      return { desc: `compression_type = ${v}, incompatible bit 3 toggled` };
    }
    return { desc: `compression_type = ${v}` };
  }],
  ["L1 entry", 4, (c) => {
    if (c.layout.l1Entries.length === 0) return undefined;
    const at = c.r.chance(0.8)
      ? c.r.pick(c.layout.l1Entries)
      : c.layout.l1s[0].offset + 8 * c.r.int(Math.max(1, c.layout.l1s[0].size));
    let v = target(c);
    if (c.r.chance(0.5)) v |= 1n << 63n;
    if (c.r.chance(0.15)) v |= BigInt(1 + c.r.int(511));
    if (c.r.chance(0.1)) v |= 1n << BigInt(56 + c.r.int(7));
    if (c.r.chance(0.2)) v = get64(c.bytes, c.r.pick(c.layout.l1Entries)); // share an L2 table
    return put64(c.bytes, at, v)
      ? { desc: `L1 entry at ${hx(at)} = ${hx(v)}` }
      : undefined;
  }],
  ["L2 entry", 8, (c) => {
    if (c.layout.entries.length === 0) return undefined;
    const e = c.r.pick(c.layout.entries);
    const old = get64(c.bytes, e.at);
    const cb = BigInt(c.layout.header.clusterBits);
    const kind = c.r.int(9);
    let v: bigint;
    let what: string;
    switch (kind) {
      case 0:
        v = (old & (1n << 63n)) | (target(c) & ((1n << 56n) - 1n));
        what = "points elsewhere";
        break;
      case 1:
        v = old | (1n << BigInt(56 + c.r.int(6))) | BigInt(2 << c.r.int(7));
        what = "reserved bits";
        break;
      case 2:
        v = old | (1n << 62n);
        what = "compressed bit set";
        break;
      case 3:
        v = old ^ 1n;
        what = "zero bit toggled";
        break;
      case 4: {
        // compressed with a huge sector count (and maybe an odd offset)
        const shift = 62n - (cb - 8n);
        const off = c.r.chance(0.5)
          ? BigInt(e.payload?.offset ?? e.hostOffset)
          : target(c);
        v = (1n << 62n) | (((1n << (cb - 8n)) - 1n) << shift) |
          (off & ((1n << shift) - 1n));
        what = "compressed, max sectors";
        break;
      }
      case 5:
        v = get64(c.bytes, c.r.pick(c.layout.entries).at);
        what = "copy of another entry";
        break;
      case 6:
        v = BigInt.asUintN(64, old ^ (1n << BigInt(c.r.int(64))));
        what = "bit flip";
        break;
      case 7:
        v = c.r.pick(U64_VALUES) | (c.r.chance(0.5) ? 1n << 62n : 0n);
        what = "absurd value";
        break;
      default: {
        // extended L2 bitmaps (or the next entry in standard L2)
        const w = c.r.pick([
          0,
          1,
          0xffffffff,
          0xffff0000,
          0x0000ffff,
          c.r.int(0x1_0000_0000),
        ]);
        const at = e.at + 8 + (c.r.chance(0.5) ? 4 : 0);
        put32(c.bytes, at, w);
        return { desc: `L2 bitmap word at ${hx(at)} = ${hx(w)}` };
      }
    }
    put64(c.bytes, e.at, v);
    return { desc: `L2 entry at ${hx(e.at)} (${e.type}) = ${hx(v)}: ${what}` };
  }],
  ["refcount table entry", 2, (c) => {
    const at = c.layout.reftableEntries.length > 0 && c.r.chance(0.8)
      ? c.r.pick(c.layout.reftableEntries)
      : c.layout.refcountTable + 8 * c.r.int(4);
    let v = target(c);
    if (c.r.chance(0.2)) v |= BigInt(1 + c.r.int(511));
    return put64(c.bytes, at, v)
      ? { desc: `refcount table entry at ${hx(at)} = ${hx(v)}` }
      : undefined;
  }],
  ["refcount block", 2, (c) => {
    if (c.layout.refblocks.length === 0) return undefined;
    const block = c.r.pick(c.layout.refblocks);
    const from = block + c.r.int(c.layout.cs);
    const n = 1 + c.r.int(64);
    const fill = c.r.pick(["zero", "ff", "random"]);
    for (let i = from; i < Math.min(from + n, c.bytes.length); i++) {
      c.bytes[i] = fill === "zero" ? 0 : fill === "ff" ? 0xff : c.r.int(256);
    }
    return {
      desc: `refcount block ${hx(block)}: ${n} bytes at ${hx(from)} ${fill}`,
    };
  }],
  ["compressed payload", 3, (c) => {
    const comp = c.layout.entries.filter((e) => e.payload);
    if (comp.length === 0) return undefined;
    const p = c.r.pick(comp).payload!;
    const mode = c.r.pick(["flip", "zero", "random", "truncate"]);
    if (mode === "truncate") {
      const cut = Math.min(c.bytes.length, p.offset + c.r.int(p.length));
      return {
        bytes: c.bytes.slice(0, cut),
        desc: `truncated at ${hx(cut)} inside a compressed payload`,
      };
    }
    const from = p.offset + c.r.int(p.length);
    const n = 1 + c.r.int(32);
    for (let i = from; i < Math.min(from + n, c.bytes.length); i++) {
      c.bytes[i] = mode === "flip"
        ? c.bytes[i] ^ (1 << c.r.int(8))
        : mode === "zero"
        ? 0
        : c.r.int(256);
    }
    return {
      desc: `compressed payload at ${hx(p.offset)}: ${n} bytes at ${
        hx(from)
      } ${mode}`,
    };
  }],
  ["extension", 3, (c) => {
    const exts = c.layout.extensions;
    if (exts.length === 0) return undefined;
    const x = c.r.pick(exts);
    const kind = c.r.int(4);
    if (kind === 0) {
      const v = c.r.pick([
        0,
        1,
        4,
        7,
        8,
        24,
        48,
        0xffff,
        0xfffffff8,
        0xffffffff,
        c.layout.cs,
      ]);
      put32(c.bytes, x.at + 4, v);
      return { desc: `extension ${hx(x.type)} at ${hx(x.at)}: length = ${v}` };
    }
    if (kind === 1) {
      const t = c.r.pick([
        0,
        EXTENSION.BACKING_FORMAT,
        EXTENSION.FEATURE_TABLE,
        EXTENSION.BITMAPS,
        EXTENSION.CRYPTO_HEADER,
        EXTENSION.DATA_FILE,
        0x12345678,
      ]);
      put32(c.bytes, x.at, t);
      return {
        desc: `extension at ${hx(x.at)}: type ${hx(x.type)} -> ${hx(t)}`,
      };
    }
    if (kind === 2 && x.type === EXTENSION.BITMAPS) {
      const field = c.r.pick(
        [
          ["nb_bitmaps", 8, 4],
          ["reserved", 12, 4],
          ["bitmap_directory_size", 16, 8],
          ["bitmap_directory_offset", 24, 8],
        ] as const,
      );
      const at = x.at + field[1];
      if (field[2] === 4) {
        const v = u32Value(c);
        put32(c.bytes, at, v);
        return { desc: `bitmaps extension ${field[0]} = ${v}` };
      }
      const v = field[0] === "bitmap_directory_offset" ? target(c) : c.r.pick([
        0n,
        1n,
        24n,
        1024n,
        65535n * 1024n,
        1n << 32n,
        ...U64_VALUES,
      ]);
      put64(c.bytes, at, v);
      return { desc: `bitmaps extension ${field[0]} = ${v}` };
    }
    // garbage inside the extension data
    const from = x.at + 8 + c.r.int(Math.max(1, Math.min(x.length, 64)));
    const n = 1 + c.r.int(16);
    for (let i = from; i < Math.min(from + n, c.bytes.length); i++) {
      c.bytes[i] = c.r.int(256);
    }
    return {
      desc: `extension ${hx(x.type)} data: ${n} random bytes at ${hx(from)}`,
    };
  }],
  ["snapshot entry", 3, (c) => {
    if (c.layout.snapshots.length === 0) return undefined;
    const s = c.r.pick(c.layout.snapshots);
    const field = c.r.pick(
      [
        ["l1_table_offset", 0, 8],
        ["l1_size", 8, 4],
        ["id_str_size", 12, 2],
        ["name_size", 14, 2],
        ["vm_state_size", 32, 4],
        ["extra_data_size", 36, 4],
        ["vm_state_size_large", 40, 8],
        ["disk_size", 48, 8],
        ["icount", 56, 8],
      ] as const,
    );
    const at = s + field[1];
    let v: bigint;
    if (field[0] === "l1_table_offset") v = target(c);
    else if (field[2] === 8) v = c.r.pick(U64_VALUES);
    else if (field[2] === 2) {
      v = BigInt(c.r.pick([0, 1, 8, 255, 0xfff0, 0xffff]));
    } else v = BigInt(u32Value(c, [c.layout.header.l1Size + 1]));
    if (field[2] === 8) put64(c.bytes, at, v);
    else if (field[2] === 4) put32(c.bytes, at, Number(v));
    else if (at + 2 <= c.bytes.length) {
      c.bytes[at] = Number(v >> 8n) & 0xff;
      c.bytes[at + 1] = Number(v) & 0xff;
    }
    return { desc: `snapshot entry at ${hx(s)}: ${field[0]} = ${v}` };
  }],
  ["bitmap directory entry", 3, (c) => {
    if (c.layout.bitmapEntries.length === 0) return undefined;
    const b = c.r.pick(c.layout.bitmapEntries);
    const field = c.r.pick(
      [
        ["bitmap_table_offset", 0, 8],
        ["bitmap_table_size", 8, 4],
        ["flags", 12, 4],
        ["type", 16, 1],
        ["granularity_bits", 17, 1],
        ["name_size", 18, 2],
        ["extra_data_size", 20, 4],
      ] as const,
    );
    const at = b + field[1];
    let v: number | bigint;
    if (field[2] === 8) {
      v = target(c);
      put64(c.bytes, at, v);
    } else if (field[2] === 4) {
      v = u32Value(c);
      put32(c.bytes, at, v);
    } else if (field[2] === 2) {
      v = c.r.pick([0, 1, 1023, 1024, 0xffff]);
      c.bytes[at] = v >> 8;
      c.bytes[at + 1] = v & 0xff;
    } else {
      v = c.r.pick([0, 1, 2, 8, 9, 31, 32, 63, 64, 255]);
      c.bytes[at] = v;
    }
    return { desc: `bitmap directory entry at ${hx(b)}: ${field[0]} = ${v}` };
  }],
  ["bitmap table", 1, (c) => {
    if (c.layout.bitmapTables.length === 0) return undefined;
    const t = c.r.pick(c.layout.bitmapTables);
    const v = c.r.chance(0.5)
      ? target(c)
      : c.r.pick([1n, 2n, (1n << 64n) - 1n]);
    put64(c.bytes, t, v);
    return { desc: `bitmap table at ${hx(t)}: entry 0 = ${hx(v)}` };
  }],
  ["truncate", 3, (c) => {
    const points = [
      ...c.layout.targets.filter((t) => t > 0 && t < c.bytes.length),
      c.bytes.length,
    ];
    const base = c.r.chance(0.5) ? c.r.pick(points) : c.r.int(c.bytes.length);
    const cut = Math.max(
      0,
      Math.min(c.bytes.length - 1, base + c.r.pick([-1, 0, 1, 8, 100, -512])),
    );
    return { bytes: c.bytes.slice(0, cut), desc: `truncated at ${hx(cut)}` };
  }],
  ["bit flips", 4, (c) => {
    const n = 1 + c.r.int(16);
    // mostly in the metadata (the first clusters and the tables)
    const regions = [
      [0, Math.min(c.bytes.length, 512)],
      ...c.layout.l1s.map((l) => [l.offset, l.offset + l.size * 8]),
      ...c.layout.l2s.map((l) => [l, l + c.layout.cs]),
      [c.layout.refcountTable, c.layout.refcountTable + 64],
      [0, c.bytes.length],
    ];
    const flipped: string[] = [];
    for (let i = 0; i < n; i++) {
      const [lo, hi] = c.r.pick(regions);
      const at = lo + c.r.int(Math.max(1, Math.min(hi, c.bytes.length) - lo));
      if (at >= c.bytes.length) continue;
      const bit = c.r.int(8);
      c.bytes[at] ^= 1 << bit;
      flipped.push(`${hx(at)}.${bit}`);
    }
    return { desc: `bit flips ${flipped.join(" ")}` };
  }],
  ["random bytes", 2, (c) => {
    const regions = [
      0,
      ...c.layout.l2s,
      c.layout.refcountTable,
      ...c.layout.snapshots,
      ...c.layout.bitmapEntries,
      ...c.layout.extensions.map((x) => x.at),
    ];
    const from = c.r.pick(regions) + c.r.int(64);
    const n = 1 + c.r.int(48);
    for (let i = from; i < Math.min(from + n, c.bytes.length); i++) {
      c.bytes[i] = c.r.int(256);
    }
    return { desc: `${n} random bytes at ${hx(from)}` };
  }],
];

const TOTAL_WEIGHT = mutators.reduce((n, m) => n + m[1], 0);

function pickMutator(r: Rand): [string, number, Mutator] {
  let x = r.next() * TOTAL_WEIGHT;
  for (const m of mutators) {
    x -= m[1];
    if (x < 0) return m;
  }
  return mutators[mutators.length - 1];
}

/** A generated case. */
export interface FuzzCase {
  base: BaseImage;
  seed: number;
  bytes: Uint8Array;
  mutations: string[];
}

const layouts = new WeakMap<Uint8Array, Layout>();

/** Picks a base by weight. */
export function pickBase(bases: BaseImage[], seed: number): BaseImage {
  const r = new Rand(seed ^ 0x5bd1e995);
  const total = bases.reduce((n, b) => n + b.weight, 0);
  let x = r.next() * total;
  for (const b of bases) {
    x -= b.weight;
    if (x < 0) return b;
  }
  return bases[bases.length - 1];
}

/** Applies 1-3 seeded mutations to a copy of `original` (a valid image). */
export function mutate(
  original: Uint8Array,
  seed: number,
): { bytes: Uint8Array; mutations: string[] } {
  let layout = layouts.get(original);
  if (!layout) {
    layout = layoutOf(original);
    layouts.set(original, layout);
  }
  const r = new Rand(seed);
  const count = 1 + (r.chance(0.35) ? 1 : 0) + (r.chance(0.15) ? 1 : 0);
  let bytes = original.slice();
  const mutations: string[] = [];
  for (let tries = 0; mutations.length < count && tries < 20; tries++) {
    const [, , fn] = pickMutator(r);
    const out = fn({ bytes, layout, r });
    if (!out) continue;
    if (out.bytes) bytes = out.bytes;
    mutations.push(out.desc);
  }
  return { bytes, mutations };
}

// ---------------------------------------------------------------------------
// What a result must look like

/** An error as a runner reports it. */
export interface ReportedError {
  name: string;
  code?: string;
  message: string;
  /** First lines of the stack, for unexpected errors. */
  stack?: string;
}

/**
 * Why a thrown error breaks the rules, or undefined when it is acceptable:
 * a Qcow2Error or one of our RangeErrors, with a one-line `Cannot ...`
 * message free of `undefined`, `NaN` and `[object`.
 */
export function errorProblem(err: ReportedError): string | undefined {
  if (err.name !== "Qcow2Error" && err.name !== "RangeError") {
    return `unexpected ${err.name}`;
  }
  const m = err.message;
  if (!m.startsWith("Cannot ")) {
    return `${err.name} not raised by qcow2pipe (message does not start with "Cannot ")`;
  }
  if (m.includes("\n")) return "message spans several lines";
  if (/\bundefined\b|\bNaN\b|\[object /.test(m)) {
    return "message shows undefined/NaN/[object";
  }
  if (/\bat \S+:\d+:\d+/.test(m)) return "message holds a stack trace";
  return undefined;
}

// ---------------------------------------------------------------------------
// Runner protocol

/** One job for a runner. */
export interface RunnerJob {
  /** Identifies the case in reports. */
  id: string;
  /** A generated case: base directory and file, and the case seed. */
  base?: { dir: string; file: string };
  seed?: number;
  /** Or an image file to run as is (fixtures). */
  path?: string;
  /** Also convert it to qcow2 (for qemu-img check) into this directory. */
  convertDir?: string;
  /** Whether to decode it from a stream too (images without backing files). */
  stream?: boolean;
  /** Convert this internal snapshot to raw instead of the active state. */
  snapshot?: string;
}

/** One operation's outcome. */
export interface OpOutcome {
  op: string;
  ok: boolean;
  /** Time it took. */
  ms: number;
  /** What it found when it completed (check: exit code and failure). */
  detail?: string;
  error?: ReportedError;
  /** Why the outcome breaks the rules. */
  problem?: string;
}

/** What a runner reports for a case. */
export interface CaseReport {
  id: string;
  ops: OpOutcome[];
  /** Peak memory seen during the case (bytes): max of RSS and ArrayBuffers. */
  memory: number;
  ms: number;
  /** qcow2 written by convert (when asked and it completed). */
  converted?: string;
  /** Raw expansion beside it, to compare the converted image with. */
  expanded?: string;
}

/** A case that broke a rule. */
export interface Failure {
  job: RunnerJob;
  reason: string;
  report?: CaseReport;
}

interface Slot {
  jobs: RunnerJob[];
  reports: CaseReport[];
  failures: Failure[];
}

/**
 * Runs jobs in `parallel` runner subprocesses. A case that takes longer than
 * CASE_TIMEOUT_MS gets its runner killed (and the rest of its jobs go to a
 * new runner); one over CASE_MEMORY_BYTES, one that kills its runner, or one
 * with an operation that breaks the rules is a failure.
 */
export async function runJobs(
  jobs: RunnerJob[],
  parallel = 2,
): Promise<{ reports: CaseReport[]; failures: Failure[] }> {
  const slots: Slot[] = Array.from(
    { length: Math.max(1, Math.min(parallel, jobs.length)) },
    () => ({ jobs: [], reports: [], failures: [] }),
  );
  jobs.forEach((j, i) => slots[i % slots.length].jobs.push(j));
  await Promise.all(slots.map(runSlot));
  return {
    reports: slots.flatMap((s) => s.reports),
    failures: slots.flatMap((s) => s.failures),
  };
}

async function runSlot(slot: Slot): Promise<void> {
  let pending = slot.jobs;
  while (pending.length > 0) {
    const done = await runBatch(pending, slot);
    pending = pending.slice(done);
  }
}

/** Runs jobs until they end or one hangs; returns how many were settled. */
async function runBatch(jobs: RunnerJob[], slot: Slot): Promise<number> {
  const batchFile = await Deno.makeTempFile({
    prefix: "qcow2pipe-fuzz-",
    suffix: ".json",
  });
  await Deno.writeTextFile(batchFile, JSON.stringify(jobs));
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      "--v8-flags=--expose-gc",
      "--config",
      CONFIG,
      RUNNER,
      batchFile,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderrText = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(
    lineSplitter(),
  ).getReader();
  let settled = 0;
  let current: RunnerJob | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let timedOut = false;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timedOut = true;
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    }, CASE_TIMEOUT_MS);
  };
  arm(); // startup counts against the first case
  try {
    for (;;) {
      const { value, done } = await lines.read();
      if (done) break;
      let msg: { begin?: string; report?: CaseReport };
      try {
        msg = JSON.parse(value);
      } catch {
        continue; // not ours
      }
      if (msg.begin !== undefined) {
        current = jobs[settled];
        arm();
      } else if (msg.report) {
        const report = msg.report;
        const job = jobs[settled];
        slot.reports.push(report);
        const problems = report.ops.filter((o) => o.problem).map((o) =>
          `${o.op}: ${o.problem}${
            o.error ? ` (${o.error.name}: ${o.error.message})` : ""
          }`
        );
        if (report.memory > CASE_MEMORY_BYTES) {
          problems.push(
            `memory ${(report.memory / MiB).toFixed(0)} MiB over the bound of ${
              CASE_MEMORY_BYTES / MiB
            } MiB`,
          );
        }
        if (problems.length > 0) {
          slot.failures.push({ job, reason: problems.join("; "), report });
        }
        settled++;
        current = undefined;
      }
    }
  } finally {
    clearTimeout(timer);
  }
  const status = await child.status;
  const stderr = (await stderrText).trim();
  await Deno.remove(batchFile).catch(() => {});
  if (status.success && !timedOut) {
    if (settled > 0) return settled; // the runner may stop early, see there
    throw new Error(`fuzz runner ended without running a case: ${stderr}`);
  }
  // The runner died or was killed in the middle of a case.
  const job = current ?? jobs[settled];
  if (job === undefined) {
    throw new Error(`fuzz runner failed after its last case: ${stderr}`);
  }
  slot.failures.push({
    job,
    reason: timedOut
      ? `no result within ${CASE_TIMEOUT_MS / 1000} s (hang): runner killed`
      : `runner died (${status.signal ?? `exit ${status.code}`}): ${
        stderr.split("\n").slice(-3).join(" | ")
      }`,
  });
  return settled + 1;
}

function lineSplitter(): TransformStream<string, string> {
  let buf = "";
  return new TransformStream({
    transform(chunk, controller) {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        controller.enqueue(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    },
    flush(controller) {
      if (buf) controller.enqueue(buf);
    },
  });
}

// ---------------------------------------------------------------------------
// Fixtures

/** What a fixture's .json records. */
export interface FixtureInfo {
  /** Base layout the case started from. */
  base: string;
  /** Run seed and case index (FUZZ_SEED, case number), when generated. */
  runSeed?: number;
  index?: number;
  /** The case seed: `mutate(base, seed)` rebuilds the bytes. */
  seed: number;
  mutations: string[];
  /** What went wrong before the fix. */
  error: string;
  /** Other files the image needs: name it refers to → fixture file. */
  related?: Record<string, string>;
}

/** Saves a failing case as tests/fixtures/fuzz/NAME.qcow2 + NAME.json. */
export async function saveFixture(
  c: FuzzCase,
  info: Omit<FixtureInfo, "base" | "seed" | "mutations" | "related">,
): Promise<string> {
  await Deno.mkdir(FIXTURES, { recursive: true });
  const name = `${c.base.name}-${c.seed.toString(16).padStart(8, "0")}`;
  await Deno.writeFile(join(FIXTURES, `${name}.qcow2`), c.bytes);
  const related: Record<string, string> = {};
  for (const r of c.base.related) {
    const file = `${name}.${r}`;
    await Deno.copyFile(join(c.base.dir, r), join(FIXTURES, file));
    related[r] = file;
  }
  const json: FixtureInfo = {
    base: c.base.name,
    ...info,
    seed: c.seed,
    mutations: c.mutations,
    ...(c.base.related.length > 0 ? { related } : {}),
  };
  await Deno.writeTextFile(
    join(FIXTURES, `${name}.json`),
    JSON.stringify(json, null, 2) + "\n",
  );
  return name;
}

/** Reads a base image's bytes, once. */
const baseBytes = new Map<string, Uint8Array>();
export async function bytesOf(
  base: { dir: string; file: string },
): Promise<Uint8Array> {
  const key = join(base.dir, base.file);
  let b = baseBytes.get(key);
  if (!b) {
    b = await Deno.readFile(key);
    baseBytes.set(key, b);
  }
  return b;
}
