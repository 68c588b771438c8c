// The btrfs module against btrfs-progs: filesystems made by mkfs.btrfs in
// the layouts that matter (DUP and single metadata, mixed block groups,
// 4 KiB and 64 KiB nodes, no skinny metadata, DUP data, no free space
// tree, a metadata UUID, one converted from ext4), filled through the
// kernel with subvolumes, snapshots, compressed, preallocated and reflinked
// files, and with files deleted so that free space holds old bytes. The
// free ranges must be exactly those btrfs-progs' trees describe, and no
// tree block or file extent btrfs-progs reaches may lie in them. Then real
// GPT and MBR disks go through `convert --sparsify` and back: btrfs check
// clean, every file identical through a read-only mount, every byte outside
// the free ranges unchanged.

import assert from "node:assert";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { qemuCheckClean, qemuImg, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { freeSpaceChunks } from "../../lib/sparsify/chunks.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  blank,
  diskTest,
  dumpe2fsFree,
  listing,
  loop,
  merge,
  MiB,
  mkfs,
  mount,
  noise,
  patch,
  populate,
  sfdiskParts,
  sh,
  writeInto,
  zeroed,
} from "./_disks.ts";
import {
  btrfsFree,
  btrfsLayout,
  btrfsUsed,
  mkbtrfs,
  mountBtrfs,
} from "./_btrfs.ts";

const TOOLS = ["mkfs.btrfs", "btrfs"];

/**
 * Changes a mounted btrfs as a system in use does: a subvolume with a
 * compressed file, a preallocated file and a reflinked copy; two thirds of
 * `files` deleted (their extents keep their bytes), a read-only snapshot of
 * the top subvolume, then a sixth more deleted (the snapshot still holds
 * those), a file rewritten, and sync.
 */
async function use(mnt: string, files: string[], seed: number): Promise<void> {
  await sh("btrfs", ["subvolume", "create", join(mnt, "vol")]);
  await sh("btrfs", [
    "property",
    "set",
    join(mnt, "vol"),
    "compression",
    "zstd",
  ]);
  await Deno.writeTextFile(
    join(mnt, "vol", "text.txt"),
    "compressible line\n".repeat(40000),
  );
  await Deno.writeFile(join(mnt, "vol", "noise.bin"), noise(3 * MiB, seed));
  await sh("fallocate", ["-l", "4M", join(mnt, "vol", "prealloc")]);
  await sh("cp", [
    "--reflink=always",
    join(mnt, "vol", "noise.bin"),
    join(mnt, "vol", "reflink.bin"),
  ]);
  for (const [i, f] of files.entries()) {
    if (i % 3 !== 0) await Deno.remove(join(mnt, f));
  }
  await sh("btrfs", ["subvolume", "snapshot", "-r", mnt, join(mnt, "snap")]);
  for (const [i, f] of files.entries()) {
    if (i % 6 === 3) await Deno.remove(join(mnt, f));
  }
  await Deno.writeFile(join(mnt, "small.txt"), noise(100_000, seed + 1));
  await sh("sync", []);
}

/** Whether two byte arrays hold the same bytes. */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(
    Buffer.from(b.buffer, b.byteOffset, b.length),
  );
}

/** Whether any range of `a` overlaps any range of `b` (both sorted). */
function overlap(a: FreeRange[], b: FreeRange[]): FreeRange | undefined {
  let k = 0;
  for (const r of a) {
    while (k < b.length && b[k].offset + b[k].length <= r.offset) k++;
    if (k < b.length && b[k].offset < r.offset + r.length) return r;
  }
  return undefined;
}

interface Variant {
  name: string;
  size: number;
  /** mkfs.btrfs options. */
  mkfs: string[];
  detail: RegExp;
  /** Made another way: btrfstune on the image, or btrfs-convert of an ext4. */
  tune?: string[];
  convert?: boolean;
  /**
   * Bytes of free space that must still hold data (10 MiB unless said):
   * after btrfs-convert, files share the extents of the old ext4 image,
   * which deleting some of them does not free.
   */
  minStale?: number;
}

const VARIANTS: Variant[] = [
  {
    name: "DUP metadata, free space tree (mkfs.btrfs's defaults)",
    size: 400 * MiB,
    mkfs: [],
    detail:
      /^16 KiB nodes, \d+ chunks \(.*system DUP, metadata DUP.*\), 3 subvolumes, free-space-tree$/,
  },
  {
    name: "single metadata",
    size: 400 * MiB,
    mkfs: ["-m", "single", "-d", "single"],
    detail:
      /^16 KiB nodes, \d+ chunks \(system, metadata, .*data.*\), 3 subvolumes/,
  },
  {
    name: "mixed block groups",
    size: 300 * MiB,
    mkfs: ["--mixed"],
    detail: /^4 KiB nodes, \d+ chunks \(system, .*data\+metadata\)/,
  },
  {
    name: "4 KiB nodes (trees several levels deep)",
    size: 400 * MiB,
    mkfs: ["-n", "4096"],
    detail: /^4 KiB nodes, /,
  },
  {
    name: "64 KiB nodes",
    size: 400 * MiB,
    mkfs: ["-n", "65536"],
    detail: /^64 KiB nodes, /,
  },
  {
    name: "without skinny metadata",
    size: 400 * MiB,
    mkfs: ["-O", "^skinny-metadata"],
    detail: /^16 KiB nodes, /,
  },
  {
    name: "DUP data",
    size: 600 * MiB,
    mkfs: ["-d", "dup"],
    detail: /data DUP/,
  },
  {
    name: "without the free space tree",
    size: 400 * MiB,
    mkfs: ["-R", "^free-space-tree"],
    detail: /, 3 subvolumes$/,
  },
  {
    name: "a metadata UUID (btrfstune -m)",
    size: 400 * MiB,
    mkfs: [],
    tune: ["-f", "-m"],
    detail: /, 3 subvolumes, free-space-tree$/,
  },
  {
    name: "converted from ext4 (btrfs-convert)",
    size: 400 * MiB,
    mkfs: [],
    convert: true,
    detail: /, 3 subvolumes$/,
    minStale: 512 * 1024,
  },
];

for (const v of VARIANTS) {
  const tools = [
    ...TOOLS,
    ...(v.tune ? ["btrfstune"] : []),
    ...(v.convert ? ["btrfs-convert", "mke2fs"] : []),
  ];
  diskTest(
    `mapFreeSpace() lists the free space btrfs-progs describes: ${v.name}`,
    { tools, loop: true },
    async () => {
      await using dir = await tempDir();
      const tree = join(dir.path, "tree");
      const files = await populate(tree, v.size % 89, 60 * MiB);
      const image = join(dir.path, "fs.img");
      if (v.convert) {
        await mkfs(image, v.size, ["-t", "ext4", "-b", "4096"], tree);
        await sh("btrfs-convert", [image]);
      } else {
        await mkbtrfs(image, v.size, v.mkfs, tree);
      }
      {
        const mnt = join(dir.path, "mnt");
        // A commit a second wakes the cleaner soon after a subvolume goes.
        await using _m = await mountBtrfs(image, mnt, "nodiscard,commit=1");
        if (v.convert) {
          // What follows a conversion: the ext4 image goes, and the cleaner
          // frees its extents (the old ext4 metadata among them).
          await sh("btrfs", ["subvolume", "delete", join(mnt, "ext2_saved")]);
          await sh("btrfs", ["subvolume", "sync", mnt]);
        }
        await use(mnt, files, 5);
      }
      if (v.tune) await sh("btrfstune", [...v.tune, image]);
      await sh("btrfs", ["check", "--readonly", image]);

      await using src = await FileSource.open(image);
      const map = await mapFreeSpace(src);
      const [region] = map.report.regions;
      assert.strictEqual(region.status, "mapped", region.reason);
      assert.strictEqual(region.found, "btrfs");
      assert.match(region.detail!, v.detail);
      const ours = await Array.fromAsync(map.ranges());
      const layout = await btrfsLayout(image);
      assert.deepStrictEqual(ours, btrfsFree(layout));
      assert.strictEqual(
        region.freeBytes,
        ours.reduce((n, r) => n + r.length, 0),
      );
      assert.ok(region.freeBytes > v.size / 2, `${region.freeBytes} free`);
      const live = overlap(ours, btrfsUsed(layout));
      assert.strictEqual(
        live,
        undefined,
        "no tree block or file extent is free",
      );
      // Deleted files left their bytes there: dropping them shows.
      const disk = await Deno.readFile(image);
      let stale = 0;
      for (const r of ours) {
        for (let at = r.offset; at < r.offset + r.length; at += 4096) {
          for (let i = at; i < at + 4096; i++) {
            if (disk[i] !== 0) {
              stale += 4096;
              break;
            }
          }
        }
      }
      assert.ok(
        stale > (v.minStale ?? 10 * MiB),
        `${stale} bytes of free space hold data`,
      );

      // The stream reads every other byte as it is, and free ranges as zeros.
      const { readable } = await freeSpaceChunks(src, { map });
      let at = 0;
      let k = 0;
      for await (const c of readable) {
        if (c instanceof Uint8Array) {
          while (k < ours.length && ours[k].offset + ours[k].length <= at) k++;
          assert.ok(
            k === ours.length || ours[k].offset >= at + c.length,
            `data chunk at ${at} overlaps a free range`,
          );
          assert.ok(
            same(c, disk.subarray(at, at + c.length)),
            `bytes at ${at} unchanged`,
          );
          at += c.length;
        } else {
          at += c.zeros;
        }
      }
      assert.strictEqual(at, v.size);
    },
  );
}

diskTest(
  "FreeSpaceStream maps a btrfs whose metadata lies inside the read-ahead, and says why it cannot otherwise",
  { tools: TOOLS },
  async () => {
    await using dir = await tempDir();
    const tree = join(dir.path, "tree");
    await populate(tree, 3, 8 * MiB);
    const image = join(dir.path, "fs.img");
    await mkbtrfs(image, 128 * MiB, [], tree);
    const disk = await Deno.readFile(image);
    const free = btrfsFree(await btrfsLayout(image));
    const pieces = () =>
      ReadableStream.from(
        (function* () {
          for (let i = 0; i < disk.length; i += MiB) {
            yield disk.subarray(i, i + MiB);
          }
        })(),
      );

    // The second copy of the metadata lies past 64 MiB: the default
    // read-ahead does not reach it.
    const short = new FreeSpaceStream();
    let n = 0;
    for await (const c of pieces().pipeThrough(short)) {
      n += c instanceof Uint8Array ? c.length : c.zeros;
    }
    assert.strictEqual(n, disk.length);
    const [r1] = (await short.report).regions;
    assert.strictEqual(r1.status, "untouched");
    assert.match(
      r1.reason!,
      /lies more than 67108864 bytes past byte 0 of the stream/,
    );

    const long = new FreeSpaceStream({ readAhead: 128 * MiB });
    const zeros: FreeRange[] = [];
    let at = 0;
    for await (const c of pieces().pipeThrough(long)) {
      if (c instanceof Uint8Array) {
        assert.ok(same(c, disk.subarray(at, at + c.length)), `bytes at ${at}`);
        at += c.length;
      } else {
        zeros.push({ offset: at, length: c.zeros });
        at += c.zeros;
      }
    }
    const [r2] = (await long.report).regions;
    assert.strictEqual(r2.status, "mapped", r2.reason);
    assert.deepStrictEqual(merge(zeros), free);
  },
);

const DISKS: Array<[string, string, { btrfs: number; ext4: number }]> = [
  ["GPT", "label: gpt\n,300M,L\n,64M,L\n,8M,L\n", { btrfs: 0, ext4: 1 }],
  [
    "MBR with the btrfs in a logical partition",
    "label: dos\n,64M,83\n,,E\n,300M,83\n,8M,83\n",
    { btrfs: 1, ext4: 0 },
  ],
];

for (const [name, script, at] of DISKS) {
  diskTest(
    `convert --sparsify keeps a real ${name} disk with btrfs correct: btrfs check clean, every file identical, every byte outside free space unchanged`,
    {
      tools: [...TOOLS, "sfdisk", "mke2fs", "dumpe2fs", "qemu-img", "cmp"],
      loop: true,
    },
    async () => {
      await using dir = await tempDir();
      const disk = join(dir.path, "disk.img");
      const size = 400 * MiB;
      await blank(disk, size);
      await sh("sfdisk", ["-q", disk], { stdin: script });
      const parts = (await sfdiskParts(disk)).filter((p) => p.type !== "5");
      const bt = parts[at.btrfs];
      const ex = parts[at.ext4];
      // btrfs: made on the partition through a loop device, filled and used.
      {
        await using dev = await loop(disk, bt.offset, bt.length);
        await sh("mkfs.btrfs", ["-q", "-f", "-L", "sparse-test", dev.dev]);
        const mnt = join(dir.path, "fill");
        await using _m = await mount(dev.dev, mnt, "rw,nodiscard");
        const files = (await populate(join(mnt, "data"), 21, 120 * MiB))
          .map((f) => `data/${f}`);
        await use(mnt, files, 9);
      }
      // ext4 beside it, with deleted files too.
      const ext = join(dir.path, "ext.img");
      const tree = join(dir.path, "tree");
      const extFiles = await populate(tree, 4, 20 * MiB);
      await mkfs(ext, ex.length, ["-t", "ext4", "-b", "4096"], tree);
      await sh("debugfs", ["-w", "-f", "-", ext], {
        stdin: extFiles.filter((_, i) => i % 2 === 1).map((f) => `rm /${f}\n`)
          .join(""),
      });
      await writeInto(disk, ex.offset, ext);
      const rest = join(dir.path, "rest.img");
      await Deno.writeFile(rest, noise(parts[2].length, 12));
      await writeInto(disk, parts[2].offset, rest);

      // What must read as zeros: btrfs-progs' free space and dumpe2fs's.
      const part = join(dir.path, "part.img");
      await sh("dd", [
        `if=${disk}`,
        `of=${part}`,
        "bs=1M",
        `skip=${bt.offset / MiB}`,
        `count=${bt.length / MiB}`,
        "status=none",
      ]);
      await sh("btrfs", ["check", "--readonly", part]);
      const free = merge([
        ...btrfsFree(await btrfsLayout(part), bt.offset),
        ...await dumpe2fsFree(ext, ex.offset),
      ].sort((a, b) => a.offset - b.offset));

      const out = join(dir.path, "out.qcow2");
      let t0 = performance.now();
      const r = await runCli([
        "convert",
        "--sparsify",
        "-O",
        "qcow2",
        "-c",
        disk,
        out,
      ]);
      const ms = performance.now() - t0;
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `partition ${
            at.btrfs === 0 ? 1 : 5
          } \\(.*\\): btrfs \\(16 KiB nodes, \\d+ chunks \\(.*\\), 3 subvolumes, free-space-tree\\): [\\d.]+ MiB free, dropped\\n`,
        ),
      );
      assert.match(
        r.stderr,
        /: ext4 \(4 KiB blocks, .*\): [\d.]+ MiB free, dropped\n/,
      );
      await qemuCheckClean(out);
      const back = join(dir.path, "back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);

      // Byte for byte: the input with exactly the free ranges zeroed.
      const expected = join(dir.path, "expected.img");
      await zeroed(disk, expected, free);
      await sh("cmp", [expected, back]);

      // btrfs check finds nothing wrong; the kernel reads every file the same.
      await sh("dd", [
        `if=${back}`,
        `of=${part}`,
        "bs=1M",
        `skip=${bt.offset / MiB}`,
        `count=${bt.length / MiB}`,
        "status=none",
      ]);
      await sh("btrfs", ["check", "--readonly", part]);
      {
        await using a = await loop(disk, bt.offset, bt.length, true);
        await using b = await loop(back, bt.offset, bt.length, true);
        const ma = join(dir.path, "a");
        const mb = join(dir.path, "b");
        await using _a = await mount(a.dev, ma, "ro");
        await using _b = await mount(b.dev, mb, "ro");
        await sh("diff", ["-r", "--no-dereference", ma, mb]);
        const la = await listing(ma);
        assert.match(
          la,
          /^snap\/data\/d0\/e0\/f0\.bin f /m,
          "the snapshot is listed",
        );
        assert.match(la, /^vol\/prealloc f 644 0 0 4194304 $/m);
        assert.strictEqual(await listing(mb), la);
      }

      // Size: against the plain conversion, and the ideal (free space zeroed).
      const plainOut = join(dir.path, "plain.qcow2");
      t0 = performance.now();
      assert.strictEqual(
        (await runCli(["convert", "-O", "qcow2", "-c", disk, plainOut])).code,
        0,
      );
      const plainMs = performance.now() - t0;
      const idealOut = join(dir.path, "ideal.qcow2");
      assert.strictEqual(
        (await runCli(["convert", "-O", "qcow2", "-c", expected, idealOut]))
          .code,
        0,
      );
      const ours = (await Deno.stat(out)).size;
      const plain = (await Deno.stat(plainOut)).size;
      const ideal = (await Deno.stat(idealOut)).size;
      const sizes = `sparsified ${ours} bytes in ${
        ms.toFixed(0)
      } ms, plain ${plain} in ${plainMs.toFixed(0)} ms, ideal ${ideal}`;
      assert.ok(ours <= ideal * 1.01, sizes);
      assert.ok(plain > 1.5 * ours, sizes);
    },
  );
}

diskTest(
  "mapFreeSpace() leaves a btrfs that also carries a swap signature as it is: neither is trusted",
  { tools: TOOLS },
  async () => {
    await using dir = await tempDir();
    const tree = join(dir.path, "tree");
    await populate(tree, 8, 20 * MiB);
    const image = join(dir.path, "fs.img");
    await mkbtrfs(image, 128 * MiB, [], tree);
    // A swap header in the first page, which btrfs leaves unused: as swap,
    // everything past it would be free, live btrfs metadata and files too.
    const header = new Uint8Array(4096);
    const v = new DataView(header.buffer);
    v.setUint32(1024, 1, true); // version
    v.setUint32(1028, 128 * 256 - 1, true); // last_page
    header.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
    await patch(image, 0, header);
    await using src = await FileSource.open(image);
    const map = await mapFreeSpace(src);
    const [region] = map.report.regions;
    assert.strictEqual(region.found, "btrfs");
    assert.strictEqual(region.status, "untouched");
    assert.match(region.reason!, /btrfs and swap were both found/);
    assert.deepStrictEqual(await Array.fromAsync(map.ranges()), []);
  },
);
