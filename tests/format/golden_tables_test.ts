// Golden tests: L1/L2 tables, compressed descriptors, refcounts and bitmaps
// of images QEMU wrote data into, decoded with the format functions and
// checked against `qemu-img map`, `qemu-img check` and each other.
import assert from "node:assert";
import { qemuImg, qemuIo, qemuTest, run, tempDir } from "../_qemu.ts";
import {
  type ClusterType,
  compressedRange,
  decodeBitmapTableEntry,
  decodeL1Entry,
  decodeL2Entry,
  subclusterType,
} from "../../lib/format/mod.ts";
import {
  activeL1,
  bitmapDirectory,
  bytesAt,
  checkRefcounts,
  extentAt,
  type Image,
  l2EntryFor,
  qemuMap,
  readImage,
  refcountOf,
} from "./_golden.ts";

/** What the tables of an image hold, for per-layout assertions. */
interface Stats {
  types: Record<ClusterType, number>;
  /** Compressed descriptors whose sectors span two host clusters. */
  crossing: number;
  /** Host clusters holding more than one compressed cluster. */
  sharedCompressed: number;
  img: Image;
}

/**
 * Decodes the active L1/L2 tables of the image at `path` and checks them
 * against QEMU: `qemu-img check` finds nothing wrong, every refcount equals
 * the references the tables make, COPIED flags match refcount 1, and every
 * (sub)cluster's type and host offset agree with `qemu-img map`.
 */
async function checkTables(path: string): Promise<Stats> {
  const check = JSON.parse(
    await qemuImg("check", "--output=json", path),
  );
  assert.strictEqual(check["check-errors"], 0);
  assert.strictEqual(check.leaks ?? 0, 0);
  assert.strictEqual(check.corruptions ?? 0, 0);

  const img = await readImage(path);
  const { header, geo } = img;
  const cs = geo.clusterSize;
  const refcounts = checkRefcounts(img);
  // Header and refcount table clusters have refcount 1.
  assert.strictEqual(refcountOf(img, 0), 1);
  assert.strictEqual(refcountOf(img, header.refcountTableOffset / cs), 1);

  const stats: Stats = {
    types: {
      unallocated: 0,
      "zero-plain": 0,
      "zero-alloc": 0,
      normal: 0,
      compressed: 0,
    },
    crossing: 0,
    sharedCompressed: 0,
    img,
  };
  const compressedPerCluster = new Map<number, number>();
  const l1 = activeL1(img);
  for (let i = 0; i < header.l1Size; i++) {
    const l1e = decodeL1Entry(l1, i);
    if (l1e.l2Offset === 0) continue;
    assert.strictEqual(l1e.l2Offset % cs, 0);
    assert.strictEqual(
      l1e.copied,
      refcountOf(img, l1e.l2Offset / cs) === 1,
      `L1 entry ${i}: COPIED vs refcount`,
    );
    const l2 = bytesAt(img, l1e.l2Offset, cs);
    for (let j = 0; j < geo.l2Entries; j++) {
      const e = decodeL2Entry(l2, j, geo);
      stats.types[e.type]++;
      const where = `L1 ${i} L2 ${j}`;
      if (e.type === "compressed") {
        assert.strictEqual(e.copied, false, where);
        assert.strictEqual(e.allocMask | e.zeroMask, 0, where);
        const r = compressedRange(e.compressed!);
        const first = Math.floor(r.offset / cs);
        const last = Math.floor((r.offset + r.length - 1) / cs);
        if (first !== last) stats.crossing++;
        compressedPerCluster.set(
          first,
          (compressedPerCluster.get(first) ?? 0) + 1,
        );
        // The last sector may end past the end of the file (QEMU does not
        // pad the file), but the data starts inside it.
        assert.ok(r.offset < img.file.length, where);
        assert.ok(r.offset + r.length < img.file.length + 512, where);
      } else if (e.type === "normal" || e.type === "zero-alloc") {
        assert.strictEqual(e.hostOffset % cs, 0, where);
        if (geo.dataFile) {
          assert.strictEqual(e.copied, true, where);
        } else {
          assert.strictEqual(
            e.copied,
            refcounts.get(e.hostOffset / cs) === 1,
            `${where}: COPIED vs refcount`,
          );
        }
      }
    }
  }
  stats.sharedCompressed =
    [...compressedPerCluster.values()].filter((n) => n > 1).length;

  // Every (sub)cluster against qemu-img map.
  const map = await qemuMap(path);
  const sub = geo.subclusterSize;
  for (let guest = 0; guest < header.size; guest += sub) {
    const e = l2EntryFor(img, l1, guest);
    const within = guest % cs;
    const type = e === undefined
      ? "unallocated-plain"
      : subclusterType(e, Math.floor(within / sub), geo.extendedL2);
    const m = extentAt(map, guest);
    const at = `guest ${guest} (${type}): ${JSON.stringify(m)}`;
    const mapOffset = m.offset === undefined
      ? undefined
      : m.offset + (guest - m.start);
    switch (type) {
      case "normal":
        assert.ok(m.present && m.data && m.depth === 0, at);
        assert.strictEqual(mapOffset, e!.hostOffset + within, at);
        break;
      case "compressed":
        assert.ok(m.present && m.data && !m.zero && m.depth === 0, at);
        assert.strictEqual(m.offset, undefined, at);
        break;
      case "zero-plain":
      case "zero-alloc": {
        assert.ok(m.present && m.zero && !m.data && m.depth === 0, at);
        const allocated = e!.type === "zero-alloc" || e!.type === "normal";
        assert.strictEqual(type === "zero-alloc", allocated, at);
        assert.strictEqual(
          mapOffset,
          allocated ? e!.hostOffset + within : undefined,
          at,
        );
        break;
      }
      case "unallocated-plain":
      case "unallocated-alloc":
        assert.ok(m.depth > 0 || !m.present, at);
        assert.strictEqual(type === "unallocated-alloc", e?.type === "normal");
        if (m.depth === 0 && e?.type === "normal") {
          // An unallocated subcluster of an allocated cluster.
          assert.strictEqual(mapOffset, e.hostOffset + within, at);
        }
        break;
      case "invalid":
        assert.fail(at);
    }
  }
  return stats;
}

/**
 * `qemu-io --discard=unmap -f qcow2 -c CMD... IMAGE`: like qemuIo(), but
 * opened so that `write -z -u` may really unmap clusters.
 */
function qemuIoUnmap(path: string, commands: string[]): Promise<string> {
  return run("qemu-io", [
    "--discard=unmap",
    "-f",
    "qcow2",
    ...commands.flatMap((c) => ["-c", c]),
    path,
  ]);
}

/**
 * The part of a cluster the partial writes use: a subcluster with extended
 * L2, a quarter cluster otherwise (none for 512-byte clusters).
 */
function pieceOf(cs: number, extendedL2: boolean): number {
  if (extendedL2) return cs / 32;
  return cs >= 2048 ? cs / 4 : 0;
}

/**
 * qemu-io commands giving, in a v3 image: clusters 0-1 normal, 2 zero-plain,
 * 4 zero-alloc, 5 zero-plain (unmapped), 8-11 compressed, 16 partly
 * written, 18 partly zeroed, and the last cluster normal.
 */
function standardOps(cs: number, p: number, size: number): string[] {
  const ops = [
    `write -P 0xaa 0 ${2 * cs}`,
    `write -z ${2 * cs} ${cs}`,
    `write -P 0xbb ${4 * cs} ${2 * cs}`,
    `write -z ${4 * cs} ${cs}`,
    `write -z -u ${5 * cs} ${cs}`,
    `write -c -P 0x11 ${8 * cs} ${4 * cs}`,
    `write -P 0xdd ${16 * cs + p} ${p || cs}`,
    `write -z ${18 * cs} ${p || cs}`,
    `write -P 0xcc ${size - cs} ${cs}`,
  ];
  if (p > 0) ops.push(`write -z ${16 * cs + 3 * p} ${p}`);
  return ops;
}

/** The type of the cluster holding guest offset `guest`. */
function typeAt(s: Stats, guest: number): ClusterType {
  return l2EntryFor(s.img, activeL1(s.img), guest)?.type ?? "unallocated";
}

/** Checks the cluster types standardOps() gives in a v3 image. */
function v3Check(s: Stats): void {
  const cs = s.img.geo.clusterSize;
  const want: [number, ClusterType][] = [
    [0, "normal"],
    [1, "normal"],
    [2, "zero-plain"],
    [3, "unallocated"],
    [4, "zero-alloc"],
    [5, "zero-plain"],
    [8, "compressed"],
    [11, "compressed"],
    [12, "unallocated"],
    [16, "normal"],
    [s.img.header.size / cs - 1, "normal"],
  ];
  for (const [c, type] of want) {
    assert.strictEqual(typeAt(s, c * cs), type, `cluster ${c}`);
  }
  assert.strictEqual(s.types.compressed, 4);
  assert.strictEqual(s.types["zero-alloc"], 1);
  // Each data cluster (and the preallocated zero cluster) has refcount 1.
  const l1 = activeL1(s.img);
  for (const c of [0, 1, 4, 16, s.img.header.size / cs - 1]) {
    const e = l2EntryFor(s.img, l1, c * cs)!;
    assert.strictEqual(refcountOf(s.img, e.hostOffset / cs), 1, `cluster ${c}`);
    assert.strictEqual(e.copied, true, `cluster ${c}`);
  }
}

interface Layout {
  name: string;
  clusterBits: number;
  size: number;
  options: string[];
  extendedL2?: boolean;
  ops?: (cs: number, piece: number, size: number) => string[];
  check: (s: Stats, dir: string) => void;
}

const LAYOUTS: Layout[] = [
  {
    name: "a v3 image with 64 KiB clusters",
    clusterBits: 16,
    size: 64 << 20,
    options: [],
    check: v3Check,
  },
  {
    name: "a v2 image (no zero clusters)",
    clusterBits: 16,
    size: 64 << 20,
    options: ["-o", "compat=0.10"],
    check: (s) => {
      // v2 has no zero flag: without a backing file QEMU deallocates
      // clusters that are zeroed whole.
      assert.strictEqual(s.types["zero-plain"], 0);
      assert.strictEqual(s.types["zero-alloc"], 0);
      assert.strictEqual(s.types.compressed, 4);
      const cs = s.img.geo.clusterSize;
      for (const c of [0, 1, 16]) {
        assert.strictEqual(typeAt(s, c * cs), "normal", `cluster ${c}`);
      }
      for (const c of [2, 4, 5]) {
        assert.strictEqual(typeAt(s, c * cs), "unallocated", `cluster ${c}`);
      }
    },
  },
  {
    name: "512-byte clusters",
    clusterBits: 9,
    size: 4 << 20,
    options: ["-o", "cluster_size=512"],
    check: (s) => {
      v3Check(s);
      // 4 MiB / (64 entries * 512 B) = 128 L1 entries.
      assert.strictEqual(s.img.header.l1Size, 128);
      assert.strictEqual(typeAt(s, 18 * 512), "zero-plain");
    },
  },
  {
    name: "2 MiB clusters",
    clusterBits: 21,
    size: 128 << 20,
    options: ["-o", "cluster_size=2M"],
    check: v3Check,
  },
  ...[1, 2, 4, 8, 32, 64].map((bits): Layout => ({
    name: `${bits}-bit refcounts`,
    clusterBits: 16,
    size: 64 << 20,
    options: ["-o", `refcount_bits=${bits}`],
    check: (s) => {
      assert.strictEqual(1 << s.img.header.refcountOrder, bits);
      v3Check(s);
      // 1-bit refcounts cannot count two compressed clusters in one host
      // cluster, so QEMU gives each its own.
      if (bits === 1) assert.strictEqual(s.sharedCompressed, 0);
      else assert.ok(s.sharedCompressed >= 1);
    },
  })),
  {
    name: "extended L2 entries with 64 KiB clusters",
    clusterBits: 16,
    size: 64 << 20,
    options: ["-o", "extended_l2=on"],
    extendedL2: true,
    check: (s) => {
      // With extended L2 the zero flag is never used.
      assert.strictEqual(s.types["zero-plain"], 0);
      assert.strictEqual(s.types["zero-alloc"], 0);
      assert.strictEqual(s.types.compressed, 4);
      const l1 = activeL1(s.img);
      const sub = 2048;
      const cs = 65536;
      // The partial write allocated only subcluster 1 of cluster 16, and
      // subcluster 3 reads as zeros.
      const partial = l2EntryFor(s.img, l1, 16 * cs)!;
      assert.strictEqual(partial.type, "normal");
      assert.strictEqual(partial.allocMask, 0b10);
      assert.strictEqual(partial.zeroMask, 0b1000);
      assert.strictEqual(
        subclusterType(partial, 0, true),
        "unallocated-alloc",
      );
      assert.strictEqual(subclusterType(partial, 1, true), "normal");
      assert.strictEqual(subclusterType(partial, 3, true), "zero-alloc");
      // A zeroed subcluster of an unallocated cluster.
      const z = l2EntryFor(s.img, l1, 18 * cs)!;
      assert.strictEqual(z.type, "unallocated");
      assert.strictEqual(z.zeroMask, 1);
      assert.strictEqual(subclusterType(z, 0, true), "zero-plain");
      assert.strictEqual(subclusterType(z, 1, true), "unallocated-plain");
      // A fully zeroed allocated cluster keeps its host cluster.
      const za = l2EntryFor(s.img, l1, 4 * cs)!;
      assert.strictEqual(za.type, "normal");
      assert.notStrictEqual(za.hostOffset, 0);
      assert.strictEqual(za.allocMask, 0);
      assert.strictEqual(za.zeroMask, 0xffffffff);
      assert.strictEqual(sub * 32, cs);
    },
  },
  {
    name: "extended L2 entries with 16 KiB clusters (512-byte subclusters)",
    clusterBits: 14,
    size: 16 << 20,
    options: ["-o", "extended_l2=on,cluster_size=16k"],
    extendedL2: true,
    check: (s) => {
      assert.strictEqual(s.img.geo.subclusterSize, 512);
      assert.strictEqual(s.types.compressed, 4);
      const partial = l2EntryFor(s.img, activeL1(s.img), 16 * 16384)!;
      assert.strictEqual(partial.allocMask, 0b10);
    },
  },
  {
    name: "zstd compression",
    clusterBits: 16,
    size: 64 << 20,
    options: ["-o", "compression_type=zstd"],
    check: (s) => {
      assert.strictEqual(s.img.header.compressionType, 1);
      v3Check(s);
    },
  },
  {
    name: "lazy refcounts after a clean close",
    clusterBits: 16,
    size: 64 << 20,
    options: ["-o", "lazy_refcounts=on"],
    check: (s) => {
      assert.strictEqual(s.img.header.incompatibleFeatures & 1n, 0n);
      v3Check(s);
    },
  },
  {
    name:
      "a snapshot shared with the active L1 table (refcount 2, COPIED clear)",
    clusterBits: 16,
    size: 64 << 20,
    options: [],
    ops: (cs) => [
      `write -P 0xaa 0 ${4 * cs}`,
      `write -c -P 0x11 ${8 * cs} ${2 * cs}`,
    ],
    check: (s) => {
      assert.strictEqual(s.img.header.nbSnapshots, 1);
      const cs = s.img.geo.clusterSize;
      const l1 = activeL1(s.img);
      // Cluster 0 was rewritten after the snapshot: a new copy, refcount 1.
      const e0 = l2EntryFor(s.img, l1, 0)!;
      assert.strictEqual(e0.copied, true);
      assert.strictEqual(refcountOf(s.img, e0.hostOffset / cs), 1);
      // Cluster 1 is still shared with the snapshot.
      const e1 = l2EntryFor(s.img, l1, cs)!;
      assert.strictEqual(e1.type, "normal");
      assert.strictEqual(e1.copied, false);
      assert.strictEqual(refcountOf(s.img, e1.hostOffset / cs), 2);
    },
  },
  {
    name: "an external data file",
    clusterBits: 16,
    size: 64 << 20,
    options: [],
    ops: (cs, sub, size) =>
      standardOps(cs, sub, size).filter((op) => !op.startsWith("write -c")),
    check: (s) => {
      assert.ok(s.img.geo.dataFile);
      assert.ok(s.types.normal >= 4);
      assert.strictEqual(s.types.compressed, 0);
    },
  },
  {
    name: "a raw external data file (host offset = guest offset, 0 included)",
    clusterBits: 16,
    size: 64 << 20,
    options: [],
    ops: (cs, _sub, size) => [
      `write -P 0xaa 0 ${2 * cs}`,
      `write -P 0xcc ${size - cs} ${cs}`,
    ],
    check: (s) => {
      const l1 = activeL1(s.img);
      const cs = s.img.geo.clusterSize;
      const e0 = l2EntryFor(s.img, l1, 0)!;
      assert.strictEqual(e0.type, "normal");
      assert.strictEqual(e0.hostOffset, 0);
      assert.strictEqual(e0.copied, true);
      const e1 = l2EntryFor(s.img, l1, cs)!;
      assert.strictEqual(e1.hostOffset, cs);
      const last = s.img.header.size - cs;
      assert.strictEqual(l2EntryFor(s.img, l1, last)!.hostOffset, last);
    },
  },
  {
    name: "metadata preallocation",
    clusterBits: 16,
    size: 4 << 20,
    options: ["-o", "preallocation=metadata"],
    ops: () => [],
    check: (s) => {
      assert.strictEqual(s.types.normal, 64);
      assert.strictEqual(s.types.unallocated, 8192 - 64);
    },
  },
];

for (const layout of LAYOUTS) {
  qemuTest(
    `decodeL1Entry(), decodeL2Entry() and getRefcount() agree with qemu-img map and check for ${layout.name}`,
    async () => {
      await using dir = await tempDir();
      const path = `${dir.path}/img.qcow2`;
      const options = [...layout.options];
      if (layout.name.includes("external data file")) {
        const raw = layout.name.includes("raw") ? ",data_file_raw=on" : "";
        options.push("-o", `data_file=${dir.path}/img.raw${raw}`);
      }
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        ...options,
        path,
        String(layout.size),
      );
      const cs = 2 ** layout.clusterBits;
      const ops = (layout.ops ?? standardOps)(
        cs,
        pieceOf(cs, layout.extendedL2 ?? false),
        layout.size,
      );
      if (layout.name.includes("snapshot")) {
        await qemuIoUnmap(path, ops);
        await qemuImg("snapshot", "-c", "snap", path);
        await qemuIo(path, [`write -P 0x77 0 ${cs}`]);
      } else if (ops.length > 0) {
        await qemuIoUnmap(path, ops);
      }
      const stats = await checkTables(path);
      assert.strictEqual(stats.img.geo.clusterBits, layout.clusterBits);
      layout.check(stats, dir.path);
    },
  );
}

qemuTest(
  "compressedRange() covers compressed clusters that QEMU let cross a host cluster boundary",
  async () => {
    await using dir = await tempDir();
    const path = `${dir.path}/cross.qcow2`;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4k",
      path,
      "4M",
    );
    await qemuIo(path, ["write -c -P 0x5a 0 2M"]);
    const stats = await checkTables(path);
    assert.strictEqual(stats.types.compressed, 512);
    assert.ok(stats.crossing >= 1, "no descriptor crosses a host cluster");
    // Sorted by offset, each payload starts inside or after the last sector
    // of the one before: the ranges overlap in at most one shared sector.
    const l1 = activeL1(stats.img);
    const ranges = [];
    for (let g = 0; g < 2 << 20; g += 4096) {
      ranges.push(compressedRange(l2EntryFor(stats.img, l1, g)!.compressed!));
    }
    ranges.sort((a, b) => a.offset - b.offset);
    for (let i = 0; i + 1 < ranges.length; i++) {
      const end = ranges[i].offset + ranges[i].length;
      assert.ok(ranges[i + 1].offset > end - 512, `range ${i}`);
    }
    // A crossing range is counted in both host clusters' refcounts.
    const cs = 4096;
    const crossing = ranges.find((r) =>
      Math.floor(r.offset / cs) !== Math.floor((r.offset + r.length - 1) / cs)
    )!;
    assert.ok(refcountOf(stats.img, Math.floor(crossing.offset / cs)) >= 1);
    assert.ok(
      refcountOf(
        stats.img,
        Math.floor((crossing.offset + crossing.length - 1) / cs),
      ) >= 1,
    );
  },
);

qemuTest(
  "compressed descriptors QEMU wrote for 512-byte and 2 MiB clusters decode to ranges that hold the data",
  async () => {
    await using dir = await tempDir();
    for (const [bits, size] of [[9, "1M"], [21, "16M"]] as const) {
      const cs = 2 ** bits;
      const path = `${dir.path}/c${bits}.qcow2`;
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `cluster_size=${cs}`,
        path,
        size,
      );
      await qemuIo(path, [`write -c -P 0x42 0 ${2 * cs}`]);
      const stats = await checkTables(path);
      assert.strictEqual(stats.types.compressed, 2);
      const l1 = activeL1(stats.img);
      for (const g of [0, cs]) {
        const d = l2EntryFor(stats.img, l1, g)!.compressed!;
        assert.ok(d.sectors >= 1 && d.sectors <= 2 ** (bits - 8));
        const r = compressedRange(d);
        // A zlib stream of a constant cluster is tiny but not empty.
        const data = stats.img.file.subarray(r.offset, r.offset + r.length);
        assert.ok(data.length > 0 && data.some((b) => b !== 0));
      }
    }
  },
);

qemuTest(
  "L2 entries of an overlay are unallocated where qemu-img map reads the backing file",
  async () => {
    await using dir = await tempDir();
    const base = `${dir.path}/base.qcow2`;
    const top = `${dir.path}/top.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", base, "8M");
    await qemuIo(base, ["write -P 1 0 256k"]);
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
      "8M",
    );
    await qemuIo(top, ["write -P 2 64k 64k", "write -z 128k 64k"]);
    const stats = await checkTables(top);
    const l1 = activeL1(stats.img);
    assert.strictEqual(l2EntryFor(stats.img, l1, 0)!.type, "unallocated");
    assert.strictEqual(l2EntryFor(stats.img, l1, 65536)!.type, "normal");
    assert.strictEqual(l2EntryFor(stats.img, l1, 131072)!.type, "zero-plain");
    const map = await qemuMap(top);
    assert.strictEqual(extentAt(map, 0).depth, 1);
    assert.strictEqual(extentAt(map, 196608).depth, 1);
    assert.strictEqual(extentAt(map, 65536).depth, 0);
  },
);

qemuTest(
  "decodeBitmapTableEntry() finds the dirty bits QEMU recorded in a persistent bitmap",
  async () => {
    await using dir = await tempDir();
    const path = `${dir.path}/bm.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", path, "64M");
    await qemuImg("bitmap", "--add", "-g", "65536", path, "dirty");
    await qemuImg("bitmap", "--add", "-g", "4096", path, "empty");
    await qemuImg("bitmap", "--disable", path, "empty");
    const written = [0, 5 * 65536, 32 << 20, (64 << 20) - 65536];
    await qemuIo(path, written.map((o) => `write -P 9 ${o} 4k`));
    const stats = await checkTables(path);
    const img = stats.img;
    const [dirty, empty] = bitmapDirectory(img);
    assert.strictEqual(dirty.name, "dirty");
    assert.strictEqual(empty.name, "empty");
    // 1024 bits of 64 KiB fit one cluster.
    assert.strictEqual(dirty.tableSize, 1);
    const table = bytesAt(img, dirty.tableOffset, 8);
    const entry = decodeBitmapTableEntry(table, 0);
    assert.notStrictEqual(entry.offset, 0);
    assert.strictEqual(entry.allOnes, false);
    assert.strictEqual(refcountOf(img, entry.offset / img.geo.clusterSize), 1);
    const bits = bytesAt(img, entry.offset, img.geo.clusterSize);
    const set: number[] = [];
    for (let i = 0; i < 1024; i++) {
      if ((bits[i >> 3] >> (i & 7)) & 1) set.push(i);
    }
    assert.deepStrictEqual(set, written.map((o) => o / 65536));
    // The disabled bitmap recorded nothing: no data clusters.
    const emptyTable = bytesAt(img, empty.tableOffset, empty.tableSize * 8);
    for (let i = 0; i < empty.tableSize; i++) {
      assert.deepStrictEqual(decodeBitmapTableEntry(emptyTable, i), {
        offset: 0,
        allOnes: false,
        reserved: false,
      });
    }
  },
);
