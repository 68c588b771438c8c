// The FAT module against dosfstools and mtools: FAT12, FAT16 and FAT32
// volumes made by mkfs.vfat on GPT (EFI system partition, beside ext4),
// MBR (types 0x0e, 0x01, 0x0c) and bare disks, filled and with files
// deleted by mtools so that free clusters hold old bytes. After
// `convert --sparsify` and `qemu-img convert -O raw` back: fsck.fat finds
// nothing, mcopy gives every remaining file back unchanged, and the disk is
// byte for byte the input with exactly the free clusters zeroed (free by
// mshowfat's list of every live path, not by our code). Then the attacks:
// each damaged volume is left exactly as it is, with its reason.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  tempDir,
} from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { BytesSource } from "../../lib/io/source.ts";
import { parseFatBootSector } from "../../lib/sparsify/fat/boot.ts";
import {
  blank,
  debugfsRm,
  diskTest,
  dumpe2fsFree,
  expectUntouched,
  MiB,
  mkfs,
  patch,
  populate,
  readAt,
  sfdiskParts,
  sh,
  writeInto,
  zeroed,
} from "./_disks.ts";
import {
  FAT_TOOLS,
  fatClusters,
  type FatFile,
  fatFree,
  type FatPart,
  fatPaths,
  fillFat,
  fsckFat,
  makeFat,
  mtools,
} from "./_fat.ts";

const TOOLS = [...FAT_TOOLS, "sfdisk", "qemu-img"];

/** One FAT volume of a test disk. */
interface Volume {
  bits: 12 | 16 | 32;
  /** Index in sfdisk's list of the disk's partitions. */
  part: number;
  /** Bytes of noise files to write (half of them are deleted). */
  fill: number;
  /** Cluster size as the report gives it. */
  clusters: string;
}

interface Layout {
  size: number;
  /** sfdisk script; none for a bare volume. */
  script?: string;
  volumes: Volume[];
  /** Index of an ext4 partition beside the FAT volumes. */
  ext4?: number;
}

const LAYOUTS: Array<[string, Layout]> = [
  ["GPT disk: a FAT32 EFI system partition beside ext4", {
    size: 176 * MiB,
    script: "label: gpt\n,100M,U\n,64M,L\n",
    volumes: [{
      bits: 32,
      part: 0,
      fill: 40 * MiB,
      clusters: "512 B",
    }],
    ext4: 1,
  }],
  ["MBR disk: FAT16 (0x0e), FAT12 (0x01) and FAT32 (0x0c)", {
    size: 128 * MiB,
    script: "label: dos\n,40M,e\n,16M,1\n,64M,c\n",
    volumes: [
      {
        bits: 16,
        part: 0,
        fill: 20 * MiB,
        clusters: "2 KiB",
      },
      {
        bits: 12,
        part: 1,
        fill: 4 * MiB,
        clusters: "8 KiB",
      },
      {
        bits: 32,
        part: 2,
        fill: 24 * MiB,
        clusters: "512 B",
      },
    ],
  }],
  ["bare FAT16 volume", {
    size: 48 * MiB,
    volumes: [{
      bits: 16,
      part: 0,
      fill: 16 * MiB,
      clusters: "2 KiB",
    }],
  }],
];

/** Size of a file in bytes. */
async function sizeOf(path: string): Promise<number> {
  return (await Deno.stat(path)).size;
}

/** Bytes of `file` in `ranges` that are not zero. */
async function nonZeroIn(file: string, ranges: FreeRange[]): Promise<number> {
  let n = 0;
  for (const r of ranges) {
    for (const b of await readAt(file, r.offset, r.length)) if (b) n++;
  }
  return n;
}

for (const [name, layout] of LAYOUTS) {
  diskTest(
    `convert --sparsify drops the free clusters of a ${name} and nothing else`,
    {
      tools: layout.ext4 === undefined
        ? TOOLS
        : [...TOOLS, "mke2fs", "debugfs", "dumpe2fs"],
    },
    async () => {
      await using dir = await tempDir();
      const disk = join(dir.path, "disk.img");
      await blank(disk, layout.size);
      let parts = [{ offset: 0, length: layout.size, type: "" }];
      if (layout.script) {
        await sh("sfdisk", ["-q", disk], { stdin: layout.script });
        parts = await sfdiskParts(disk);
      }
      const volumes: Array<
        Volume & FatPart & { files: FatFile[]; label: string }
      > = [];
      for (const [i, v] of layout.volumes.entries()) {
        const p = { disk, ...parts[v.part] };
        await makeFat(p, v.bits, ["-n", `VOL${i}`]);
        const files = await fillFat(p, dir.path, 10 + i, v.fill);
        volumes.push({ ...v, ...p, files, label: `VOL${i}` });
      }
      const free: FreeRange[] = [];
      for (const v of volumes) {
        const fsck = await fsckFat(v, dir.path);
        assert.strictEqual(fsck.code, 0, fsck.text);
        free.push(...await fatFree(v, dir.path));
      }
      if (layout.ext4 !== undefined) {
        const p = parts[layout.ext4];
        const tree = join(dir.path, "ext4-tree");
        const files = await populate(tree, 4, 24 * MiB);
        const fs = join(dir.path, "ext4.img");
        await mkfs(fs, p.length, ["-t", "ext4", "-b", "4096"], tree);
        await debugfsRm(fs, files.filter((_, i) => i % 2 === 0));
        await writeInto(disk, p.offset, fs);
        free.push(...await dumpe2fsFree(fs, p.offset));
        await Deno.remove(fs);
      }
      // The deleted files' bytes are still there: dropping them shows.
      assert.ok(
        await nonZeroIn(disk, free) > 4 * MiB,
        "deleted data in the free clusters",
      );

      const out = join(dir.path, "out.qcow2");
      const r = await runCli([
        "convert",
        "--sparsify",
        "-O",
        "qcow2",
        disk,
        out,
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      const details = [
        ...r.stderr.matchAll(
          /: (fat\d\d) \((.*)\): [\d.]+ [KM]iB free, dropped$/gm,
        ),
      ];
      assert.deepStrictEqual(
        details.map((m) => m[1]),
        volumes.toSorted((a, b) => a.offset - b.offset).map((v) =>
          `fat${v.bits}`
        ),
        r.stderr,
      );
      for (
        const [k, v] of volumes.toSorted((a, b) => a.offset - b.offset)
          .entries()
      ) {
        assert.strictEqual(
          details[k][2],
          `${v.clusters} clusters, 2 FATs, 20 directories, ${v.files.length} files, label "${v.label}"`,
        );
      }
      await qemuCheckClean(out);
      const back = join(dir.path, "back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);

      // Exactly the free clusters (and the ext4's free blocks) read as zeros.
      const ideal = join(dir.path, "ideal.img");
      await zeroed(disk, ideal, free);
      await sh("cmp", [ideal, back]);
      // The same from a pipe, mapped as the disk streams past.
      const piped = join(dir.path, "piped.qcow2");
      const rp = await runCli(
        ["convert", "-q", "--sparsify", "-O", "qcow2", "-", piped],
        { stdinFile: disk },
      );
      assert.strictEqual(rp.code, 0, rp.stderr);
      await qemuCompareIdentical(ideal, piped);

      for (const v of volumes) {
        const b = { ...v, disk: back };
        const fsck = await fsckFat(b, dir.path);
        assert.strictEqual(fsck.code, 0, fsck.text);
        assert.doesNotMatch(
          fsck.text,
          /differ|dirty|reclaim|wrong|lost|truncat|cross/i,
        );
        // Every remaining file, through mtools, as it was written.
        const to = join(dir.path, `files-${v.offset}`);
        await Deno.mkdir(to);
        await mtools("mcopy", b, "-s", "-n", "::/", to + "/");
        for (const f of v.files) {
          assert.deepStrictEqual(
            await Deno.readFile(join(to, f.path)),
            f.data,
            f.path,
          );
        }
        const listed = (await fatPaths(b)).filter((x) => !x.endsWith("/"));
        assert.deepStrictEqual(
          listed.map((x) => x.slice(3)).sort(),
          v.files.map((f) => f.path).sort(),
        );
      }

      // Much smaller than without --sparsify, as small as the zeroed disk.
      const plain = join(dir.path, "plain.qcow2");
      const best = join(dir.path, "best.qcow2");
      for (const [src, dst] of [[disk, plain], [ideal, best]]) {
        const r2 = await runCli(["convert", "-O", "qcow2", src, dst]);
        assert.strictEqual(r2.code, 0, r2.stderr);
      }
      const [ours, plainSize, bestSize] = await Promise.all(
        [out, plain, best].map(sizeOf),
      );
      assert.ok(
        ours <= bestSize && ours < plainSize * 0.8,
        `sparsified ${ours}, zeroed ${bestSize}, plain ${plainSize}`,
      );
    },
  );
}

// ---------------------------------------------------------------------------
// Attacks and damage: each volume is left exactly as it is.

/** A filled FAT volume as the only partition of a GPT disk, and its geometry. */
async function attackBase(dir: string, bits: 16 | 32) {
  const disk = join(dir, "disk.img");
  await blank(disk, 80 * MiB);
  await sh("sfdisk", ["-q", disk], { stdin: "label: gpt\n,64M,U\n" });
  const p: FatPart = { disk, ...(await sfdiskParts(disk))[0] };
  await makeFat(p, bits);
  await fillFat(p, dir, 3, 12 * MiB);
  const { geometry } = await fsckFat(p, dir);
  return { p, g: geometry };
}

type Base = Awaited<ReturnType<typeof attackBase>>;

/** Little-endian bytes of `value`. */
function le(value: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = Math.floor(value / 256 ** i) % 256;
  return out;
}

/** Sets FAT entry `cluster` (FAT16/32) in the given copies (0-based). */
async function setEntry(
  { p, g }: Base,
  cluster: number,
  value: number,
  copies = [0, 1],
): Promise<void> {
  for (const k of copies) {
    const at = p.offset + g.fatStart + k * g.fatBytes + cluster * g.bits / 8;
    await patch(p.disk, at, le(value, g.bits / 8));
  }
}

/** The clusters of a path, by mshowfat. */
async function clustersOf({ p }: Base, path: string): Promise<number[]> {
  const list = (await fatClusters(p, [path])).get(path);
  assert.ok(list && list.length > 0, path);
  return list;
}

/** Disk offset of the entry named `short` (11 bytes, as stored) in directory `dir`. */
async function entryOf(b: Base, dir: string, short: string): Promise<number> {
  const { p, g } = b;
  for (const c of await clustersOf(b, dir)) {
    const at = p.offset + g.dataStart + (c - 2) * g.clusterSize;
    const bytes = await readAt(p.disk, at, g.clusterSize);
    for (let i = 0; i < bytes.length; i += 32) {
      if (String.fromCharCode(...bytes.subarray(i, i + 11)) === short) {
        return at + i;
      }
    }
  }
  throw new Error(`no entry ${short} in ${dir}`);
}

/** Points a directory entry at another first cluster (FAT32: both halves). */
async function pointEntry(b: Base, entry: number, cluster: number) {
  await patch(b.p.disk, entry + 20, le(cluster >>> 16, 2));
  await patch(b.p.disk, entry + 26, le(cluster & 0xffff, 2));
}

const ATTACKS: Array<{
  name: string;
  bits: 16 | 32;
  reason: RegExp;
  damage: (b: Base) => Promise<void>;
}> = [
  {
    name: "a live file's clusters marked free in both FATs, FSInfo adjusted",
    bits: 32,
    reason:
      /partition 1 \(EFI System, 64\.0 MiB at 1\.00 MiB\): fat32 left as it is: file \/EFI\/debian\/grubx64\.efi starts at cluster \d+, which the FAT marks free$/,
    damage: async (b) => {
      const list = await clustersOf(b, "::/EFI/debian/grubx64.efi");
      for (const c of list) await setEntry(b, c, 0);
      const info = b.p.offset + 512 + 488;
      const [old] = new Uint32Array((await readAt(b.p.disk, info, 4)).buffer);
      await patch(b.p.disk, info, le(old + list.length, 4));
    },
  },
  {
    name: "the tail of a live file's chain marked free in both FATs",
    bits: 16,
    reason:
      /fat16 left as it is: file \/EFI\/debian\/shimx64\.efi has cluster \d+, which the FAT marks free$/,
    damage: async (b) => {
      const list = await clustersOf(b, "::/EFI/debian/shimx64.efi");
      for (const c of list.slice(100)) await setEntry(b, c, 0);
    },
  },
  {
    name: "the two FATs disagreeing",
    bits: 16,
    reason:
      /fat16 left as it is: FAT 2 differs from FAT 1 at byte \d+ \(0xff against 0x0/,
    damage: async (b) => {
      await setEntry(b, b.g.clusters, 0xffff, [1]); // the last cluster, free
    },
  },
  {
    name: "the dirty bit set in the boot sector",
    bits: 32,
    reason:
      /fat32 left as it is: not cleanly unmounted \(boot sector state 0x1, dirty bit set\)$/,
    damage: (b) => patch(b.p.disk, b.p.offset + 0x41, Uint8Array.of(1)),
  },
  {
    name: "FAT entry 1 without its clean-shutdown bit",
    bits: 16,
    reason:
      /fat16 left as it is: not cleanly unmounted \(FAT entry 1 is 0x7fff, clean bit clear\)$/,
    damage: (b) => setEntry(b, 1, 0x7fff),
  },
  {
    name: "a BPB with more sectors than the partition",
    bits: 32,
    reason:
      /fat32 left as it is: volume of 131080 sectors of 512 bytes \(67112960 bytes\) is larger than its partition of 67108864 bytes: truncated$/,
    damage: (b) => patch(b.p.disk, b.p.offset + 0x20, le(131080, 4)),
  },
  {
    name: "a directory loop",
    bits: 32,
    reason:
      /fat32 left as it is: directory \/deep\/a\/b starts at cluster \d+, which is in another chain too \(cross-linked, or a directory loop\)$/,
    damage: async (b) => {
      const [deep] = await clustersOf(b, "::/deep");
      await pointEntry(b, await entryOf(b, "::/deep/a", "B          "), deep);
    },
  },
  {
    name: "a cross-linked chain",
    bits: 32,
    reason:
      /fat32 left as it is: file \/.* (starts at|has) cluster \d+, which is in another chain too \(cross-linked, or a directory loop\)$/,
    damage: async (b) => {
      const boot = await clustersOf(b, "::/EFI/BOOT/BOOTX64.EFI");
      await pointEntry(b, await entryOf(b, "::/", "ONE     CLS"), boot[1]);
    },
  },
  {
    name: "a file larger than its chain",
    bits: 16,
    reason:
      /fat16 left as it is: file \/EFI\/debian\/grub\.cfg of 10485760 bytes needs 5120 clusters, its chain has 1$/,
    damage: async (b) => {
      const at = await entryOf(b, "::/EFI/debian", "GRUB    CFG");
      await patch(b.p.disk, at + 28, le(10 * MiB, 4));
    },
  },
  {
    // The report is a line of stderr: the name's escape sequence and line
    // break are shown by printable(), and the reason after them is kept.
    name: "a file larger than its chain, named with control characters",
    bits: 16,
    reason:
      /fat16 left as it is: file \/EFI\/debian\/\\x1b\[2j\\ngrb\.cfg of 10485760 bytes needs 5120 clusters, its chain has 1$/,
    damage: async (b) => {
      const at = await entryOf(b, "::/EFI/debian", "GRUB    CFG");
      await patch(b.p.disk, at, new TextEncoder().encode("\x1b[2J\nGRB"));
      await patch(b.p.disk, at + 28, le(10 * MiB, 4));
    },
  },
  {
    name: "a live entry after the end-of-directory mark",
    bits: 16,
    reason:
      /fat16 left as it is: entry 4 of directory \/EFI\/BOOT \("HIDDEN\.EFI"\) follows the end-of-directory mark/,
    damage: async (b) => {
      const entry = await entryOf(b, "::/EFI/BOOT", "BOOTX64 EFI");
      const copy = await readAt(b.p.disk, entry, 32);
      copy.set(new TextEncoder().encode("HIDDEN  EFI"));
      // Entries 0 and 1 are "." and "..", 2 is BOOTX64.EFI, 3 the end mark.
      assert.strictEqual((await readAt(b.p.disk, entry + 32, 1))[0], 0);
      await patch(b.p.disk, entry + 64, copy);
    },
  },
];

for (const a of ATTACKS) {
  diskTest(
    `convert --sparsify leaves a FAT${a.bits} volume with ${a.name} as it is`,
    { tools: TOOLS },
    async () => {
      await using dir = await tempDir();
      const b = await attackBase(dir.path, a.bits);
      await a.damage(b);
      await expectUntouched(dir.path, b.p.disk, a.reason);
    },
  );
}

diskTest(
  "convert --sparsify maps a FAT32 volume whose FSInfo free count is wrong, and says so",
  { tools: TOOLS },
  async () => {
    await using dir = await tempDir();
    const b = await attackBase(dir.path, 32);
    await patch(b.p.disk, b.p.offset + 512 + 488, le(5, 4));
    const out = join(dir.path, "out.qcow2");
    const r = await runCli([
      "convert",
      "--sparsify",
      "-O",
      "qcow2",
      b.p.disk,
      out,
    ]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /: fat32 \(512 B clusters, 2 FATs, 20 directories, \d+ files, FSInfo free count 5 ignored \(the FAT has \d+\)\): [\d.]+ MiB free, dropped\n/,
    );
    const free = await fatFree(b.p, dir.path);
    const ideal = join(dir.path, "ideal.img");
    await zeroed(b.p.disk, ideal, free);
    await qemuCompareIdentical(ideal, out);
  },
);

diskTest(
  "mapFreeSpace() refuses to list free clusters when the FAT changed after the analysis",
  { tools: FAT_TOOLS },
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "fat.img");
    await blank(disk, 16 * MiB);
    const p: FatPart = { disk, offset: 0, length: 16 * MiB };
    await makeFat(p, 16);
    await fillFat(p, dir.path, 5, 256 * 1024);
    const { geometry: g } = await fsckFat(p, dir.path);
    const bytes = await Deno.readFile(disk);
    const map = await mapFreeSpace(new BytesSource(bytes));
    assert.strictEqual(map.report.regions[0].status, "mapped");
    // The last cluster is free; now the FAT says it is the end of a chain.
    const last = g.clusters + 1;
    bytes.set([0xff, 0xff], g.fatStart + 2 * last);
    await assert.rejects(
      Array.fromAsync(map.ranges()),
      new RegExp(
        `^IoError: Cannot sparsify: the FAT changed since it was checked \\(the entry of cluster ${last} is now not free\\)$`,
      ),
    );
  },
);

diskTest(
  "convert --sparsify maps a FAT32 volume below 65525 clusters as Linux reads it",
  { tools: TOOLS },
  async () => {
    await using dir = await tempDir();
    // Filled while it has 76643 clusters, then cut to 65000: Linux still
    // reads it as FAT32 (a 16-bit FAT size of 0), mtools as FAT16 with no
    // root directory entries.
    const disk = join(dir.path, "small32.img");
    const p: FatPart = { disk, offset: 0, length: 300 * MiB };
    await blank(disk, p.length);
    await makeFat(p, 32, ["-s", "8"]);
    const files = await fillFat(p, dir.path, 8, 6 * MiB);
    const { geometry: g } = await fsckFat(p, dir.path);
    assert.strictEqual(g.clusters, 76643);
    const total = g.dataStart / 512 + 65000 * 8;
    const free = (await fatFree(p, dir.path)).flatMap((r) =>
      r.offset >= total * 512
        ? []
        : [{ ...r, length: Math.min(r.length, total * 512 - r.offset) }]
    );
    await patch(disk, 0x20, le(total, 4));
    await patch(disk, 512 + 488, le(0xffffffff, 4)); // FSInfo: count unknown
    {
      using f = await Deno.open(disk, { write: true });
      await f.truncate(total * 512);
    }
    const small = { ...p, length: total * 512 };
    const fsck = await fsckFat(small, dir.path);
    assert.strictEqual(fsck.code, 0, fsck.text);
    assert.strictEqual(fsck.geometry.clusters, 65000);
    assert.match(fsck.text, new RegExp(`${files.length + 20} files`)); // 20 directories
    await assert.rejects(mtools("mdir", small, "::/EFI"), /not found/);

    const out = join(dir.path, "out.qcow2");
    const r = await runCli(["convert", "--sparsify", "-O", "qcow2", disk, out]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `: fat32 \\(4 KiB clusters, FAT32 with 65000 clusters \\(fewer than 65525\\), 2 FATs, 20 directories, ${files.length} files\\): [\\d.]+ MiB free, dropped\\n`,
      ),
    );
    const back = join(dir.path, "back.raw");
    await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);
    const ideal = join(dir.path, "ideal.img");
    await zeroed(disk, ideal, free);
    await sh("cmp", [ideal, back]);
  },
);

/** BPB fields of the crafted boot sectors, by their offsets. */
const FIELD = {
  sectorsPerCluster: [0x0d, 1],
  rootEntries: [0x11, 2],
  total16: [0x13, 2],
  fat16: [0x16, 2],
  total32: [0x20, 4],
  fat32: [0x24, 4],
  rootCluster: [0x2c, 4],
} as const;

/**
 * A boot sector: 512-byte sectors, 8 per cluster, 1 reserved, 2 FATs,
 * media 0xf8, and the given fields.
 */
function bootSector(
  fields: Partial<Record<keyof typeof FIELD, number>>,
): Uint8Array {
  const s = new Uint8Array(512);
  s.set([0xeb, 0x3c, 0x90]);
  s.set(le(512, 2), 0x0b);
  s.set([8, 1, 0, 2], 0x0d);
  s[0x15] = 0xf8;
  s.set([0x55, 0xaa], 510);
  for (const [name, value] of Object.entries(fields)) {
    const [at, size] = FIELD[name as keyof typeof FIELD];
    s.set(le(value, size), at);
  }
  return s;
}

Deno.test("parseFatBootSector() decides the FAT type by cluster count and refuses what Linux would read otherwise", () => {
  const sectors = (mib: number) => mib * 2048;
  // FAT16 by count and by the 16-bit FAT size; a "FAT32" label changes nothing.
  const fat16 = bootSector({
    rootEntries: 512,
    total32: sectors(64),
    fat16: 64,
  });
  fat16.set(new TextEncoder().encode("FAT32   "), 0x52);
  const v16 = parseFatBootSector(fat16, 64 * MiB);
  assert.deepStrictEqual([v16.type, v16.clusters], [16, 16363]);
  // FAT12 by count though the label says FAT16.
  const fat12 = bootSector({ rootEntries: 512, total16: sectors(8), fat16: 6 });
  fat12.set(new TextEncoder().encode("FAT16   "), 0x36);
  assert.strictEqual(parseFatBootSector(fat12, 8 * MiB).type, 12);
  // 65525 clusters or more with a 16-bit FAT size: FAT32 by count, FAT16 for Linux.
  const big16 = bootSector({
    sectorsPerCluster: 1,
    rootEntries: 512,
    total32: sectors(40),
    fat16: 320,
  });
  assert.throws(
    () => parseFatBootSector(big16, 40 * MiB),
    /^Refusal: 81247 clusters make FAT32, but the 16-bit FAT size 320 says FAT12\/16$/,
  );
  // A 16-bit FAT size of 0 (FAT32 for Linux) with few clusters and root
  // directory entries: FAT16 for the specification, with a root to read.
  const rooted = bootSector({
    rootEntries: 512,
    total32: sectors(64),
    fat32: 64,
    rootCluster: 2,
  });
  assert.throws(
    () => parseFatBootSector(rooted, 64 * MiB),
    /^Refusal: 16363 clusters make FAT16, but the 16-bit FAT size 0 says FAT32$/,
  );
  // The same without root directory entries: FAT32, flagged.
  const small = bootSector({
    total32: sectors(64),
    fat32: 128,
    rootCluster: 2,
  });
  const v = parseFatBootSector(small, 64 * MiB);
  assert.deepStrictEqual([v.type, v.clusters, v.smallFat32], [32, 16351, true]);
});
