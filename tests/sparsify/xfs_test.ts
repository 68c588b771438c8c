// The XFS module against xfsprogs: images made by mkfs.xfs (v5 in its
// layouts, and v4, which this kernel no longer mounts) from a prototype
// file over noise, whose free ranges must lie in what `xfs_db freesp`
// lists (which also counts the AG free lists, kept here); attacks made
// with xfs_db in expert mode, which recomputes every checksum, each left
// untouched with its reason; and a real GPT and MBR disk filled through a
// kernel mount beside an ext4, converted with --sparsify, expanded by
// qemu-img, judged by xfs_repair -n and by diff through a mount.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuImg, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { freeSpaceChunks } from "../../lib/sparsify/chunks.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { RegionReader } from "../../lib/sparsify/_region.ts";
import { BNO_TREE } from "../../lib/sparsify/xfs/ag.ts";
import { walkTree } from "../../lib/sparsify/xfs/btree.ts";
import { XfsReader } from "../../lib/sparsify/xfs/reader.ts";
import type { XfsSuperblock } from "../../lib/sparsify/xfs/superblock.ts";
import {
  blank,
  diskTest,
  loop,
  merge,
  MiB,
  mount,
  populate,
  readAt,
  sfdiskParts,
  sh,
  within,
} from "./_disks.ts";
import {
  fileExtents,
  inodeOf,
  manyFiles,
  protoImage,
  SMALL_FS_ENV,
  XFS_TOOLS,
  xfsDbFields,
  xfsDbFree,
  xfsDbWrite,
  xfsGeometry,
} from "./_xfs.ts";

const total = (rs: FreeRange[]) => rs.reduce((n, r) => n + r.length, 0);

/** A tree to build images from: files, nested directories, a large directory. */
async function tree(dir: string, seed: number): Promise<string[]> {
  const files = await populate(dir, seed, 12 * MiB);
  await manyFiles(join(dir, "many"), 1500);
  return files;
}

interface Variant {
  name: string;
  args: string[];
  detail: RegExp;
}

const VARIANTS: Variant[] = [
  {
    name: "v5 (mkfs defaults)",
    args: [],
    detail:
      /^v5, 4 KiB blocks, 4 AGs, \d+ inodes in use, finobt, reflink, sparse inodes$/,
  },
  {
    name: "v5 with rmapbt",
    args: ["-m", "rmapbt=1"],
    detail: /^v5, .*, finobt, rmapbt, reflink, sparse inodes$/,
  },
  {
    name: "v5 1 KiB blocks, 8 KiB directory blocks",
    args: ["-b", "size=1024", "-n", "size=8192"],
    detail: /^v5, 1 KiB blocks, /,
  },
  {
    name: "v5 4 KiB sectors",
    args: ["-s", "size=4096"],
    detail: /^v5, 4 KiB blocks, /,
  },
  {
    name: "v5 without finobt and sparse inodes",
    args: ["-m", "finobt=0,reflink=0", "-i", "sparse=0"],
    detail: /^v5, 4 KiB blocks, 4 AGs, \d+ inodes in use$/,
  },
  {
    name: "v5 large extent counters, 2 AGs",
    args: ["-i", "nrext64=1", "-d", "agcount=2"],
    detail: /^v5, 4 KiB blocks, 2 AGs, /,
  },
  {
    name: "v5 striped, log stripe unit 32 KiB",
    args: ["-d", "su=64k,sw=2", "-l", "su=32k"],
    detail: /^v5, 4 KiB blocks, /,
  },
  {
    name: "v4",
    args: ["-m", "crc=0"],
    detail: /^v4, 4 KiB blocks, 4 AGs, \d+ inodes in use$/,
  },
  {
    name: "v4 2 KiB blocks, 256-byte inodes, counters not lazy",
    args: [
      "-m",
      "crc=0",
      "-b",
      "size=2048",
      "-i",
      "size=256",
      "-l",
      "lazy-count=0",
    ],
    detail: /^v4, 2 KiB blocks, /,
  },
];

for (const [i, v] of VARIANTS.entries()) {
  diskTest(
    `mapFreeSpace() drops XFS free space as xfs_db lists it, less the free lists: ${v.name}`,
    { tools: [...XFS_TOOLS, "qemu-img"] },
    async () => {
      await using dir = await tempDir();
      const src = join(dir.path, "tree");
      await tree(src, 20 + i);
      const image = join(dir.path, "fs.img");
      await protoImage(image, 64 * MiB, v.args, src, i);
      await sh("xfs_repair", ["-n", "-f", image]);
      await using disk = await FileSource.open(image);
      const map = await mapFreeSpace(disk);
      const [region] = map.report.regions;
      assert.strictEqual(region.status, "mapped", region.reason);
      assert.strictEqual(region.found, "xfs");
      assert.match(region.detail!, v.detail);
      const ours = await Array.fromAsync(map.ranges());
      const theirs = await xfsDbFree(image);
      assert.ok(within(ours, theirs.ranges), "every dropped range is free");
      assert.strictEqual(
        total(theirs.ranges) - total(ours),
        theirs.freeListBytes,
        "all of xfs_db's free space is dropped but the AG free lists",
      );
      assert.strictEqual(region.freeBytes, total(ours));
      // What is dropped held old bytes (mkfs wrote over noise).
      const first = ours.at(-1)!;
      assert.ok((await readAt(image, first.offset, 4096)).some((b) => b !== 0));

      // The chunks read every other byte as it is, and free ranges as zeros.
      const { readable } = await freeSpaceChunks(disk, { map });
      const bytes = await Deno.readFile(image);
      let at = 0;
      let k = 0;
      for await (const c of readable) {
        if (c instanceof Uint8Array) {
          while (k < ours.length && ours[k].offset + ours[k].length <= at) k++;
          assert.ok(k === ours.length || ours[k].offset >= at + c.length);
          assert.deepStrictEqual(c, bytes.subarray(at, at + c.length));
          at += c.length;
        } else {
          at += c.zeros;
        }
      }
      assert.strictEqual(at, bytes.length);

      // Through the CLI and back: xfs_repair finds nothing to fix.
      const out = join(dir.path, "fs.qcow2");
      const r = await runCli(["convert", "--sparsify", "-c", image, out]);
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(r.stderr, /: xfs \(v\d, .*\): [\d.]+ MiB free, dropped\n/);
      const back = join(dir.path, "back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);
      await sh("xfs_repair", ["-n", "-f", back]);
    },
  );
}

diskTest(
  "FreeSpaceStream drops the same XFS free space from a stream as mapFreeSpace",
  { tools: XFS_TOOLS },
  async () => {
    await using dir = await tempDir();
    const src = join(dir.path, "tree");
    await tree(src, 3);
    const image = join(dir.path, "fs.img");
    await protoImage(image, 48 * MiB, [], src);
    await using disk = await FileSource.open(image);
    const map = await mapFreeSpace(disk);
    const ours = await Array.fromAsync(map.ranges());
    const bytes = await Deno.readFile(image);
    const stage = new FreeSpaceStream({ size: bytes.length });
    const zeros: FreeRange[] = [];
    let at = 0;
    const pieces = Array.from(
      { length: bytes.length / MiB },
      (_, n) => bytes.subarray(n * MiB, (n + 1) * MiB),
    );
    for await (const c of ReadableStream.from(pieces).pipeThrough(stage)) {
      if (c instanceof Uint8Array) at += c.length;
      else {
        zeros.push({ offset: at, length: c.zeros });
        at += c.zeros;
      }
    }
    assert.strictEqual((await stage.report).regions[0].status, "mapped");
    assert.deepStrictEqual(merge(zeros), ours);
  },
);

let victimImage: Promise<string> | undefined;
globalThis.addEventListener("unload", () => {
  victimImage?.then((p) => Deno.removeSync(p, { recursive: true }), () => {});
});

/** A copy of one v5 image to attack (built once), in `dir`. */
async function victim(dir: string): Promise<string> {
  victimImage ??= (async () => {
    const root = await Deno.makeTempDir();
    await tree(join(root, "tree"), 9);
    await protoImage(join(root, "fs.img"), 64 * MiB, [], join(root, "tree"));
    return root;
  })();
  const image = join(dir, "fs.img");
  await Deno.copyFile(join(await victimImage, "fs.img"), image);
  return image;
}

/** The records of AG `agno`'s free-space tree `root` (bnoroot or cntroot), which must be one leaf. */
async function leafRecords(
  image: string,
  agno: number,
  root: "bnoroot" | "cntroot",
): Promise<Array<[number, number]>> {
  const out = await sh("xfs_db", [
    "-r",
    "-c",
    `agf ${agno}`,
    "-c",
    `addr ${root}`,
    "-c",
    "p",
    image,
  ]);
  assert.match(out, /^level = 0$/m, "a one-level tree");
  return [...out.matchAll(/^\d+:\[(\d+),(\d+)\]/gm)].map((m) => [
    Number(m[1]),
    Number(m[2]),
  ]);
}

/** Rewrites a one-leaf free-space tree with `recs`. */
async function writeLeaf(
  image: string,
  agno: number,
  root: "bnoroot" | "cntroot",
  recs: Array<[number, number]>,
): Promise<void> {
  await xfsDbWrite(
    image,
    `agf ${agno}`,
    `addr ${root}`,
    `write numrecs ${recs.length}`,
    ...recs.flatMap(([s, n], i) => [
      `write recs[${i + 1}].startblock ${s}`,
      `write recs[${i + 1}].blockcount ${n}`,
    ]),
  );
}

interface Attack {
  name: string;
  reason: RegExp | ((image: string) => Promise<RegExp>);
  apply(image: string): Promise<void>;
}

/** Where the log is in an image, and its last record header (by scanning for its magic). */
async function logHead(
  image: string,
): Promise<{ start: number; last: number }> {
  const g = await xfsGeometry(image);
  const agno = Math.floor(g.logstart / 2 ** g.agblklog);
  const agbno = g.logstart % 2 ** g.agblklog;
  const start = (agno * g.agblocks + agbno) * g.blockSize;
  const log = await readAt(image, start, g.logblocks * g.blockSize);
  const view = new DataView(log.buffer, log.byteOffset, log.length);
  const c0 = view.getUint32(0) === 0xfeedbabe
    ? view.getUint32(4)
    : view.getUint32(0);
  let last = -1;
  for (let b = 0; b < log.length / 512; b++) {
    if (
      view.getUint32(b * 512) === 0xfeedbabe &&
      view.getUint32(b * 512 + 4) === c0
    ) {
      last = b;
    }
  }
  return { start, last };
}

async function patchFile(image: string, at: number, bytes: Uint8Array) {
  using f = await Deno.open(image, { write: true });
  await f.seek(at, Deno.SeekMode.Start);
  await f.write(bytes);
}

const ATTACKS: Attack[] = [
  {
    name:
      "free-space btrees and AGF counts rewritten to call a live file's blocks free",
    reason: async (image) =>
      new RegExp(
        `^inode ${await inodeOf(
          image,
          "/d1/e1/f1.bin",
        )} uses blocks \\d+-\\d+ of AG \\d+, which the free-space btree calls free`,
      ),
    async apply(image) {
      const [[agno, agbno, count]] = await fileExtents(image, "/d1/e1/f1.bin");
      const bno = await leafRecords(image, agno, "bnoroot");
      const recs = [...bno, [agbno, count] as [number, number]].sort((a, b) =>
        a[0] - b[0]
      );
      await writeLeaf(image, agno, "bnoroot", recs);
      const byCount = recs.toSorted((a, b) => a[1] - b[1] || a[0] - b[0]);
      await writeLeaf(image, agno, "cntroot", byCount);
      const agf = await xfsDbFields(image, `agf ${agno}`, "p freeblks longest");
      await xfsDbWrite(
        image,
        `agf ${agno}`,
        `write freeblks ${Number(agf.get("freeblks")) + count}`,
        `write longest ${Math.max(Number(agf.get("longest")), count)}`,
      );
    },
  },
  {
    name: "by-count free-space btree disagreeing with the by-block one",
    reason:
      /^free-space btrees of AG 1 disagree: extent \d+\+\d+ is in the by-count tree/,
    async apply(image) {
      const cnt = await leafRecords(image, 1, "cntroot");
      await xfsDbWrite(
        image,
        "agf 1",
        "addr cntroot",
        `write recs[1].blockcount ${cnt[0][1] + 1}`,
      );
    },
  },
  {
    name: "AGF free block count edited",
    reason:
      /^AGF of AG 2 counts \d+ free blocks, its free-space btree holds \d+$/,
    async apply(image) {
      const agf = await xfsDbFields(image, "agf 2", "p freeblks");
      await xfsDbWrite(
        image,
        "agf 2",
        `write freeblks ${Number(agf.get("freeblks")) + 1}`,
      );
    },
  },
  {
    name: "AGF longest free extent edited",
    reason: /^AGF of AG 0 says the longest free extent has/,
    async apply(image) {
      const agf = await xfsDbFields(image, "agf 0", "p longest");
      await xfsDbWrite(
        image,
        "agf 0",
        `write longest ${Number(agf.get("longest")) - 1}`,
      );
    },
  },
  {
    name: "inode btree record removed (a chunk hidden, its files still named)",
    reason:
      /^directory inode \d+ names inode \d+ \(.*\), which no inode btree lists$/,
    async apply(image) {
      // The last full chunk of the AG holding the large directory.
      const ino = await inodeOf(image, "/many/entry-1000-with-a-longer-name");
      const g = await xfsGeometry(image);
      const agno = Math.floor(
        ino / 2 ** (g.agblklog + Math.log2(g.blockSize / 512)),
      );
      const out = await sh("xfs_db", [
        "-r",
        "-c",
        `agi ${agno}`,
        "-c",
        "addr root",
        "-c",
        "p",
        image,
      ]);
      assert.match(out, /^level = 0$/m);
      const recs = [
        ...out.matchAll(/^\d+:\[(\d+),(\d+),(\d+),(\d+),(0x[0-9a-f]+|0)\]/gm),
      ];
      const k = recs.findLastIndex((m) => m[4] === "0");
      assert.ok(k > 0, "a full chunk");
      const rest = recs.filter((_, i) => i !== k);
      await xfsDbWrite(
        image,
        `agi ${agno}`,
        "addr root",
        `write numrecs ${rest.length}`,
        ...rest.flatMap((m, i) => [
          `write recs[${i + 1}].startino ${m[1]}`,
          `write recs[${i + 1}].holemask ${m[2]}`,
          `write recs[${i + 1}].count ${m[3]}`,
          `write recs[${i + 1}].freecount ${m[4]}`,
          // xfs_db reads numbers with strtoll (which stops at 2^63 - 1), bytes after "#".
          `write recs[${i + 1}].free #${
            BigInt(m[5]).toString(16).padStart(16, "0")
          }`,
        ]),
      );
      const agi = await xfsDbFields(image, `agi ${agno}`, "p count");
      await xfsDbWrite(
        image,
        `agi ${agno}`,
        `write count ${Number(agi.get("count")) - 64}`,
      );
    },
  },
  {
    name: "log whose last record is not an unmount record",
    reason:
      /^log is dirty: its last record \(block \d+, 2 operations\) is not an unmount record/,
    async apply(image) {
      const { start, last } = await logHead(image);
      await patchFile(
        image,
        start + last * 512 + 40,
        Uint8Array.of(0, 0, 0, 2),
      );
    },
  },
  {
    name: "log zeroed",
    reason: /^log is zeroed \(no unmount record\)/,
    async apply(image) {
      const { start } = await logHead(image);
      const g = await xfsGeometry(image);
      await patchFile(image, start, new Uint8Array(g.logblocks * g.blockSize));
    },
  },
  {
    name: "unknown incompat feature",
    reason: /^unknown incompat feature bits 0x80000000$/,
    async apply(image) {
      const sb = await xfsDbFields(image, "sb 0", "p features_incompat");
      await xfsDbWrite(
        image,
        "sb 0",
        `write -d features_incompat ${
          (Number(sb.get("features_incompat")) | 0x80000000) >>> 0
        }`,
      );
    },
  },
  {
    name: "needs-repair flag",
    reason: /^the filesystem needs repair/,
    async apply(image) {
      const sb = await xfsDbFields(image, "sb 0", "p features_incompat");
      await xfsDbWrite(
        image,
        "sb 0",
        `write -d features_incompat ${
          Number(sb.get("features_incompat")) | 0x10
        }`,
      );
    },
  },
  {
    name: "secondary superblock with another AG count",
    reason: /^superblock copy in AG 3 differs from the primary in agcount$/,
    async apply(image) {
      await xfsDbWrite(image, "sb 3", "write -d agcount 5");
    },
  },
  {
    name: "partition shorter than the filesystem",
    reason:
      /^filesystem of 67108864 bytes \(16384 blocks\) is larger than its partition of 66060288 bytes: truncated$/,
    async apply(image) {
      using f = await Deno.open(image, { write: true });
      await f.truncate(63 * MiB);
    },
  },
  {
    name: "AGF checksum broken",
    reason: /^AGF of AG 1 checksum 0x[0-9a-f]+ does not match its contents/,
    async apply(image) {
      const g = await xfsGeometry(image);
      const at = g.agblocks * g.blockSize + g.sectSize + 100; // agf_spare64
      await patchFile(image, at, Uint8Array.of(1));
    },
  },
];

for (const attack of ATTACKS) {
  diskTest(
    `mapFreeSpace() leaves an attacked XFS untouched: ${attack.name}`,
    { tools: XFS_TOOLS },
    async () => {
      await using dir = await tempDir();
      const image = await victim(dir.path);
      {
        await using disk = await FileSource.open(image);
        const before = await mapFreeSpace(disk);
        assert.strictEqual(before.report.regions[0].status, "mapped");
      }
      const reason = typeof attack.reason === "function"
        ? await attack.reason(image)
        : attack.reason;
      await attack.apply(image);
      await using disk = await FileSource.open(image);
      const map = await mapFreeSpace(disk);
      const [region] = map.report.regions;
      assert.strictEqual(region.status, "untouched");
      assert.strictEqual(region.found, "xfs");
      assert.match(region.reason!, reason);
      assert.deepStrictEqual(await Array.fromAsync(map.ranges()), []);
    },
  );
}

/** Fills a mounted XFS through the kernel, then deletes two thirds of the generated files. */
async function fill(dir: string): Promise<void> {
  const files = await populate(join(dir, "data"), 31, 64 * MiB);
  await manyFiles(join(dir, "many"), 3000);
  // A file in many extents (a block map btree) and files with extended attributes.
  {
    using f = await Deno.open(join(dir, "fragmented"), {
      create: true,
      write: true,
    });
    for (let i = 0; i < 1500; i++) {
      await f.write(new TextEncoder().encode(`${i} `.repeat(700)));
      await Deno.writeFile(
        join(dir, "many", `spacer-${i}`),
        new Uint8Array(4096).fill(i),
      );
      await f.sync();
    }
  }
  for (const [i, f] of files.entries()) {
    if (i % 4 === 1) {
      await sh("python3", [
        "-c",
        "import os, sys; os.setxattr(sys.argv[1], 'user.note', os.urandom(3000))",
        join(dir, "data", f),
      ]);
    }
  }
  for (const [i, f] of files.entries()) {
    if (i % 3 !== 0) await Deno.remove(join(dir, "data", f));
  }
  for (let i = 0; i < 1500; i += 2) {
    await Deno.remove(join(dir, "many", `spacer-${i}`));
  }
}

const LAYOUTS: Array<[string, string, number, number]> = [
  ["GPT", "label: gpt\n,192M,L\n,48M,L\n", 0, 1],
  ["MBR", "label: dos\n,48M,83\n,,E\n,192M,83\n", 1, 0],
];

for (const [name, script, xfsAt, extAt] of LAYOUTS) {
  diskTest(
    `convert --sparsify keeps a real ${name} disk with XFS and ext4 correct and smaller`,
    {
      tools: [...XFS_TOOLS, "sfdisk", "mkfs.ext4", "qemu-img", "python3"],
      loop: true,
    },
    async () => {
      await using dir = await tempDir();
      const disk = join(dir.path, "disk.img");
      const size = 256 * MiB;
      await blank(disk, size);
      await sh("sfdisk", ["-q", disk], { stdin: script });
      const parts = (await sfdiskParts(disk)).filter((p) => p.type !== "5");
      const xfs = parts[xfsAt];
      const ext = parts[extAt];
      {
        await using dev = await loop(disk, xfs.offset, xfs.length);
        await sh("mkfs.xfs", ["-q", "-f", dev.dev], { env: SMALL_FS_ENV });
        await using _m = await mount(
          dev.dev,
          join(dir.path, "fill"),
          "rw",
          "xfs",
        );
        await fill(join(dir.path, "fill"));
      }
      {
        await using dev = await loop(disk, ext.offset, ext.length);
        await sh("mkfs.ext4", ["-q", "-F", dev.dev]);
      }
      const disk0 = await Deno.readFile(disk);
      let xfsFree: FreeRange[];
      {
        await using dev = await loop(disk, xfs.offset, xfs.length, true);
        xfsFree = (await xfsDbFree(dev.dev, xfs.offset)).ranges;
      }

      const out = join(dir.path, "out.qcow2");
      const r = await runCli(["convert", "--sparsify", "-c", disk, out]);
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        /: xfs \(v5, 4 KiB blocks, 4 AGs, \d+ inodes in use, finobt, reflink, sparse inodes\): [\d.]+ MiB free, dropped\n/,
      );
      assert.match(r.stderr, /: ext4 \(.*\): [\d.]+ MiB free, dropped\n/);
      await qemuCheckClean(out);
      const back = join(dir.path, "back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);

      // xfs_repair finds nothing to fix in the result.
      {
        await using dev = await loop(back, xfs.offset, xfs.length, true);
        await sh("xfs_repair", ["-n", dev.dev]);
      }
      // The same tree through the kernel.
      {
        await using a = await loop(disk, xfs.offset, xfs.length, true);
        await using b = await loop(back, xfs.offset, xfs.length, true);
        const ma = join(dir.path, "a");
        const mb = join(dir.path, "b");
        await using _a = await mount(a.dev, ma, "ro,norecovery", "xfs");
        await using _b = await mount(b.dev, mb, "ro,norecovery,nouuid", "xfs");
        await sh("diff", ["-r", "--no-dereference", ma, mb]);
        const attrs =
          "import os,sys\nfor b,d,f in sorted(os.walk(sys.argv[1])):\n for n in sorted(f): p=os.path.join(b,n); print(os.path.relpath(p,sys.argv[1]),[(a,os.getxattr(p,a,follow_symlinks=False).hex()) for a in sorted(os.listxattr(p,follow_symlinks=False))])";
        const la = await sh("python3", ["-c", attrs, ma]);
        assert.match(la, /user\.note/);
        assert.strictEqual(await sh("python3", ["-c", attrs, mb]), la);
      }
      // Only free space changed: zeros where dropped, every other byte as it was.
      await using src = await FileSource.open(disk);
      const ours = await Array.fromAsync((await mapFreeSpace(src)).ranges());
      const inXfs = ours.filter((f) =>
        f.offset >= xfs.offset && f.offset < xfs.offset + xfs.length
      );
      assert.ok(within(inXfs, xfsFree), "XFS ranges are free by xfs_db");
      assert.ok(
        total(inXfs) > 64 * MiB,
        `${total(inXfs)} bytes dropped from XFS`,
      );
      const backBytes = await Deno.readFile(back);
      let at = 0;
      for (const f of [...ours, { offset: size, length: 0 }]) {
        assert.ok(
          backBytes.subarray(at, f.offset).every((v, i) => v === disk0[at + i]),
          `bytes ${at}-${f.offset - 1} unchanged`,
        );
        assert.ok(
          backBytes.subarray(f.offset, f.offset + f.length).every((v) =>
            v === 0
          ),
        );
        at = f.offset + f.length;
      }
      // Smaller than without --sparsify.
      const plain = join(dir.path, "plain.qcow2");
      assert.strictEqual(
        (await runCli(["convert", "-c", disk, plain])).code,
        0,
      );
      const a = (await Deno.stat(out)).size;
      const b = (await Deno.stat(plain)).size;
      assert.ok(b > 1.5 * a, `sparsified ${a} bytes, plain ${b}`);
    },
  );
}

diskTest(
  "mapFreeSpace() leaves an XFS shut down with its log dirty untouched",
  { tools: [...XFS_TOOLS, "xfs_io"], loop: true },
  async () => {
    await using dir = await tempDir();
    const image = join(dir.path, "fs.img");
    await blank(image, 64 * MiB);
    await sh("mkfs.xfs", ["-q", "-f", image], { env: SMALL_FS_ENV });
    {
      await using dev = await loop(image, 0, 64 * MiB);
      const mnt = join(dir.path, "m");
      await using _m = await mount(dev.dev, mnt, "rw", "xfs");
      await Deno.writeFile(join(mnt, "a"), new Uint8Array(1 << 20).fill(1));
      await sh("sync", []);
      await Deno.writeFile(join(mnt, "b"), new Uint8Array(1 << 20).fill(2));
      await sh("xfs_io", ["-x", "-c", "shutdown", mnt]);
    }
    await using disk = await FileSource.open(image);
    const map = await mapFreeSpace(disk);
    const [region] = map.report.regions;
    assert.strictEqual(region.status, "untouched");
    assert.match(region.reason!, /^log is dirty: /);
  },
);

diskTest(
  "mapFreeSpace() maps an XFS whose log has wrapped, as xfs_logprint finds it clean",
  { tools: [...XFS_TOOLS, "xfs_logprint"], loop: true },
  async () => {
    await using dir = await tempDir();
    const image = join(dir.path, "fs.img");
    await blank(image, 96 * MiB);
    // The smallest log mkfs makes for this size: churn wraps it.
    await sh("mkfs.xfs", ["-q", "-f", "-l", "size=1368b", image], {
      env: SMALL_FS_ENV,
    });
    {
      await using dev = await loop(image, 0, 96 * MiB);
      const mnt = join(dir.path, "m");
      await using _m = await mount(dev.dev, mnt, "rw", "xfs");
      for (let round = 0; round < 3; round++) {
        await manyFiles(join(mnt, "churn"), 6000);
        await sh("sync", []);
        await Deno.remove(join(mnt, "churn"), { recursive: true });
        await sh("sync", []);
      }
      await manyFiles(join(mnt, "kept"), 500);
    }
    const print = await sh("xfs_logprint", ["-t", image]);
    const m = /log tail: (\d+) head: (\d+) state: <CLEAN>/.exec(print);
    assert.ok(m, print);
    const { start } = await logHead(image);
    const log = await readAt(image, start, 512);
    const w = new DataView(log.buffer);
    const cycle = w.getUint32(0) === 0xfeedbabe
      ? w.getUint32(4)
      : w.getUint32(0);
    assert.ok(cycle > 1, `the log wrapped (cycle ${cycle} at its start)`);
    await using disk = await FileSource.open(image);
    const map = await mapFreeSpace(disk);
    const [region] = map.report.regions;
    assert.strictEqual(region.status, "mapped", region.reason);
    const theirs = await xfsDbFree(image);
    assert.ok(within(await Array.fromAsync(map.ranges()), theirs.ranges));
  },
);

/** A one-AG v4 filesystem of `blocks` 4 KiB blocks in memory, for the tree walker. */
function memoryFs(blocks: number) {
  const bytes = new Uint8Array(blocks * 4096);
  const sb = {
    version: 4,
    blockSize: 4096,
    agblocks: blocks,
    agblklog: Math.ceil(Math.log2(blocks)),
    agcount: 1,
    dblocks: blocks,
  } as XfsSuperblock;
  const region = new RegionReader(
    {
      size: bytes.length,
      read: (o, n) => Promise.resolve(bytes.slice(o, o + n)),
    },
    0,
    bytes.length,
  );
  return { bytes, xr: new XfsReader(region, sb) };
}

/** Writes a v4 free-space btree block (ABTB) at `block`. */
function abtb(
  bytes: Uint8Array,
  block: number,
  level: number,
  entries: Array<[number, number]>,
  ptrs: number[] = [],
): void {
  const v = new DataView(bytes.buffer, block * 4096, 4096);
  v.setUint32(0, 0x41425442);
  v.setUint16(4, level);
  v.setUint16(6, entries.length);
  entries.forEach(([s, n], i) => {
    v.setUint32(16 + 8 * i, s);
    v.setUint32(20 + 8 * i, n);
  });
  const maxKeys = Math.floor((4096 - 16) / 12);
  ptrs.forEach((p, i) => v.setUint32(16 + 8 * maxKeys + 4 * i, p));
}

Deno.test("walkTree() refuses a tree that reaches one block twice", async () => {
  const { bytes, xr } = memoryFs(64);
  abtb(bytes, 2, 0, [[10, 1], [20, 2]]);
  // Two root entries (as an inode's block map root has) naming one block.
  await assert.rejects(
    walkTree(
      xr,
      BNO_TREE,
      { agno: 0, owner: 0, levels: 1, where: "AG 0" },
      [{ ptr: 2, key: 10 }, { ptr: 2, key: 30 }],
      0,
      () => {},
      () => {},
    ),
    /free-space btree by block of AG 0 \(block 2 of AG 0\) is reached twice/,
  );
  // A node naming one block twice fails its key order first.
  abtb(bytes, 1, 1, [[10, 1], [10, 1]], [2, 2]);
  await assert.rejects(
    walkTree(
      xr,
      BNO_TREE,
      { agno: 0, owner: 0, levels: 2, where: "AG 0" },
      [{
        ptr: 1,
        key: undefined,
      }],
      1,
      () => {},
      () => {},
    ),
    /\(block 1 of AG 0\): key 1 \(10\) does not ascend/,
  );
  // One pointer each: the records are handed over in order.
  abtb(bytes, 1, 1, [[10, 1], [30, 1]], [2, 3]);
  abtb(bytes, 3, 0, [[30, 1]]);
  const seen: number[] = [];
  await walkTree(
    xr,
    BNO_TREE,
    { agno: 0, owner: 0, levels: 2, where: "AG 0" },
    [{ ptr: 1, key: undefined }],
    1,
    () => {},
    ({ f, at, count }) => {
      for (let i = 0; i < count; i++) seen.push(f.u32(at + 8 * i));
    },
  );
  assert.deepStrictEqual(seen, [10, 20, 30]);
});

Deno.test("XfsReader refuses to read more metadata than the filesystem holds", async () => {
  const { xr } = memoryFs(64);
  for (let i = 0; i < 64; i++) await xr.readBlocks(0, i, 1, "block");
  // The budget: the filesystem's size plus a constant.
  const left = Math.floor((xr.budget - xr.spent) / 4096);
  for (let i = 0; i < left; i++) await xr.readBlocks(0, i % 64, 1, "block");
  await assert.rejects(
    xr.readBlocks(0, 5, 1, "block 5"),
    /reading block 5 would take the metadata read past \d+ bytes, more than the filesystem holds/,
  );
});
