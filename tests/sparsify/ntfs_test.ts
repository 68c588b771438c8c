// The NTFS module against ntfs-3g and 7-Zip: volumes made by mkntfs in the
// cluster and sector sizes mkntfs offers, filled and with files deleted
// through an ntfs-3g FUSE mount. The free ranges must be exactly the free
// clusters of $Bitmap as ntfs-3g reads it (ntfscat -i 6). Then real GPT and
// MBR disks (NTFS beside ext4) go through `convert --sparsify` and back
// through qemu-img: the result must be the input with exactly those
// clusters zeroed, ntfsfix and e2fsck clean, every file identical through
// an ntfs-3g mount and through 7-Zip, and the output much smaller.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuImg, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { freeSpaceChunks } from "../../lib/sparsify/chunks.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import {
  blank,
  debugfsRm,
  dumpe2fsFree,
  MiB,
  mkfs,
  populate,
  sfdiskParts,
  sh,
  writeInto,
  zeroed,
} from "./_disks.ts";
import {
  extract,
  firstDifference,
  makeFragmentedMft,
  makeNtfs,
  ntfsFree,
  ntfsInfo,
  ntfsMount,
  ntfsTest,
  patchRecord,
  readRecord,
  recordOffset,
} from "./_ntfs.ts";

interface Variant {
  name: string;
  args: string[];
  size: number;
  detail: RegExp;
}

const VARIANTS: Variant[] = [
  {
    name: "4 KiB clusters",
    args: [],
    size: 128 * MiB,
    detail: /^4 KiB clusters, 32767 clusters, NTFS 3\.1, \d+ MFT records$/,
  },
  {
    name: "512-byte clusters",
    args: ["-c", "512"],
    size: 96 * MiB,
    detail: /^512 B clusters, 196607 clusters, /,
  },
  {
    name: "64 KiB clusters",
    args: ["-c", "65536"],
    size: 128 * MiB,
    detail: /^64 KiB clusters, 2047 clusters, /,
  },
  {
    name: "2 MiB clusters (negative sectors-per-cluster encoding)",
    args: ["-c", "2097152"],
    size: 192 * MiB,
    detail: /^2 MiB clusters, 95 clusters, /,
  },
  {
    name: "4096-byte sectors and 4 KiB records",
    args: ["-s", "4096"],
    size: 96 * MiB,
    detail: /^4 KiB clusters, 24575 clusters, /,
  },
];

for (const { name, args, size, detail } of VARIANTS) {
  ntfsTest(
    `mapFreeSpace() lists the free clusters ntfs-3g reads in $Bitmap: ${name}`,
    [],
    async () => {
      await using dir = await tempDir();
      const image = join(dir.path, "ntfs.img");
      await makeNtfs(image, size, { args, seed: size % 89, bytes: size / 3 });
      await using src = await FileSource.open(image);
      const map = await mapFreeSpace(src);
      const [region] = map.report.regions;
      assert.strictEqual(region.status, "mapped", region.reason);
      assert.strictEqual(region.found, "ntfs");
      assert.match(region.detail!, detail);
      const ours = await Array.fromAsync(map.ranges());
      const theirs = await ntfsFree(image);
      assert.deepStrictEqual(ours, theirs);
      const free = theirs.reduce((n, r) => n + r.length, 0);
      assert.strictEqual(region.freeBytes, free);
      assert.ok(free > size / 3, `free ${free} of ${size}`);

      // The chunk stream reads every other byte as it is, and the free
      // clusters as zeros.
      const { readable } = await freeSpaceChunks(src, { map });
      const want = await Deno.readFile(image);
      for (const r of theirs) want.fill(0, r.offset, r.offset + r.length);
      let at = 0;
      let k = 0;
      for await (const c of readable) {
        if (c instanceof Uint8Array) {
          while (
            k < theirs.length && theirs[k].offset + theirs[k].length <= at
          ) k++;
          assert.ok(
            k === theirs.length || theirs[k].offset >= at + c.length,
            `data chunk at ${at} overlaps a free range`,
          );
          assert.deepStrictEqual(c, want.subarray(at, at + c.length));
          at += c.length;
        } else {
          assert.ok(want.subarray(at, at + c.zeros).every((b) => b === 0));
          at += c.zeros;
        }
      }
      assert.strictEqual(at, size);
    },
  );
}

ntfsTest(
  "mapFreeSpace() follows $MFT's attribute list on a fragmented MFT, and refuses when an extent's record is not in use",
  [],
  async () => {
    await using dir = await tempDir();
    const image = join(dir.path, "frag.img");
    await makeFragmentedMft(image);
    // The premise, by ntfs-3g: $MFT has an attribute list, and part of its
    // $DATA lives in another record.
    const dump = await ntfsInfo(image, 0);
    assert.match(
      dump,
      /Dumping attribute \$ATTRIBUTE_LIST \(0x20\) from mft record 0 /,
    );
    const extents = [
      ...dump.matchAll(
        /Dumping attribute \$DATA \(0x80\) from mft record (\d+) /g,
      ),
    ].map((m) => Number(m[1])).filter((n) => n !== 0);
    assert.ok(extents.length > 0, "$MFT's data continues in other records");
    {
      await using src = await FileSource.open(image);
      const map = await mapFreeSpace(src);
      const [region] = map.report.regions;
      assert.strictEqual(region.status, "mapped", region.reason);
      assert.deepStrictEqual(
        await Array.fromAsync(map.ranges()),
        await ntfsFree(image),
      );
    }
    // An extension record of $MFT marked not in use (fixups kept).
    const at = await recordOffset(image, extents[0]);
    const rec = await readRecord(image, at, 1024);
    await patchRecord(image, at, 0x16, Uint8Array.of(rec[0x16] & ~1, 0));
    await using src = await FileSource.open(image);
    const [region] = (await mapFreeSpace(src)).report.regions;
    assert.strictEqual(region.status, "untouched");
    assert.strictEqual(
      region.reason,
      `MFT record ${extents[0]}, an extent of $MFT, is not in use`,
    );
  },
);

ntfsTest(
  "FreeSpaceStream maps an NTFS whose metadata lies within the read-ahead, and says why it leaves a larger one",
  [],
  async () => {
    await using dir = await tempDir();
    for (const [size, mapped] of [[40 * MiB, true], [192 * MiB, false]]) {
      const image = join(dir.path, `s${size}.img`);
      await makeNtfs(image, size as number, { seed: 4, bytes: 12 * MiB });
      const disk = await Deno.readFile(image);
      const stage = new FreeSpaceStream({ readAhead: 64 * MiB });
      const pieces = [];
      for (let at = 0; at < disk.length; at += MiB) {
        pieces.push(disk.subarray(at, at + MiB));
      }
      const ideal = join(dir.path, "ideal.img");
      const free = await ntfsFree(image);
      await zeroed(image, ideal, mapped ? free : []);
      const want = await Deno.readFile(ideal);
      let at = 0;
      for await (const c of ReadableStream.from(pieces).pipeThrough(stage)) {
        if (c instanceof Uint8Array) {
          assert.deepStrictEqual(c, want.subarray(at, at + c.length));
          at += c.length;
        } else {
          assert.ok(want.subarray(at, at + c.zeros).every((b) => b === 0));
          at += c.zeros;
        }
      }
      assert.strictEqual(at, disk.length);
      const report = await stage.report;
      const [region] = report.regions;
      if (mapped) {
        assert.strictEqual(region.status, "mapped", region.reason);
        assert.strictEqual(
          report.freeBytes,
          free.reduce((n, r) => n + r.length, 0),
        );
      } else {
        assert.strictEqual(region.status, "untouched");
        assert.match(region.reason!, /read-ahead limit/);
      }
    }
  },
);

const TABLE_TOOLS = [
  "sfdisk",
  "mke2fs",
  "debugfs",
  "dumpe2fs",
  "e2fsck",
  "7zz",
  "qemu-img",
  "diff",
];

/** GPT's Microsoft basic data type, and MBR's NTFS/exFAT/HPFS type. */
const LAYOUTS: Array<[string, string]> = [
  [
    "GPT",
    "label: gpt\n,160M,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n,48M,L\n",
  ],
  ["MBR", "label: dos\n,160M,7\n,48M,83\n"],
];

for (const [name, script] of LAYOUTS) {
  ntfsTest(
    `convert --sparsify keeps a real ${name} disk with NTFS and ext4 correct, and drops exactly the free clusters`,
    TABLE_TOOLS,
    async () => {
      await using dir = await tempDir();
      const d = (f: string) => join(dir.path, f);
      const size = 256 * MiB;
      const disk = d("disk.img");
      await blank(disk, size);
      await sh("sfdisk", ["-q", disk], { stdin: script });
      const [p1, p2] = await sfdiskParts(disk);
      // NTFS: filled and partly deleted through ntfs-3g, its boot sector
      // told where the partition starts.
      const content = await makeNtfs(d("p1.img"), p1.length, {
        args: ["-p", String(p1.offset / 512), "-H", "255", "-S", "63"],
        seed: 21,
        bytes: 110 * MiB,
      });
      await writeInto(disk, p1.offset, d("p1.img"));
      const free = await ntfsFree(d("p1.img"), p1.offset);
      // ext4 beside it, also with deleted files.
      const files = await populate(d("tree"), 8, 20 * MiB);
      await mkfs(d("p2.img"), p2.length, ["-t", "ext4"], d("tree"));
      await debugfsRm(d("p2.img"), files.filter((_, i) => i % 2 === 0));
      await writeInto(disk, p2.offset, d("p2.img"));
      free.push(...await dumpe2fsFree(d("p2.img"), p2.offset));
      await Deno.remove(d("p2.img"));

      const out = d("out.qcow2");
      const t0 = performance.now();
      const r = await runCli([
        "convert",
        "--sparsify",
        "--compress",
        "zstd",
        disk,
        out,
      ]);
      const seconds = (performance.now() - t0) / 1000;
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        /: ntfs \(4 KiB clusters, \d+ clusters, NTFS 3\.1, \d+ MFT records\): [\d.]+ MiB free, dropped\n/,
      );
      assert.match(r.stderr, /: ext4 \(.*\): [\d.]+ MiB free, dropped\n/);
      await qemuCheckClean(out);
      const back = d("back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);

      // Exactly the free clusters (by ntfs-3g and dumpe2fs) read as zeros;
      // every other byte is the input's: tables, gaps, both filesystems.
      const ideal = d("ideal.img");
      await zeroed(disk, ideal, free);
      assert.strictEqual(await firstDifference(back, ideal), -1);
      assert.ok(
        await firstDifference(back, disk) >= 0,
        "deleted data was dropped",
      );

      // ntfs-3g's checker and e2fsck find the expanded filesystems clean.
      await extract(back, p1.offset, p1.length, d("b1.img"));
      await extract(disk, p1.offset, p1.length, d("a1.img"));
      assert.match(
        await sh("ntfsfix", ["-n", d("b1.img")]),
        /NTFS partition .* was processed successfully/,
      );
      await extract(back, p2.offset, p2.length, d("b2.img"));
      await sh("e2fsck", ["-fn", d("b2.img")]);

      // Every file identical through ntfs-3g mounts ...
      {
        await using _a = await ntfsMount(d("a1.img"), d("ma"), true);
        await using _b = await ntfsMount(d("b1.img"), d("mb"), true);
        await sh("diff", ["-r", "--no-dereference", d("ma"), d("mb")]);
        for (const f of content.kept) {
          assert.ok((await Deno.stat(join(d("mb"), f))).size > 0, f);
        }
        for (const f of content.deleted) {
          await assert.rejects(
            Deno.stat(join(d("mb"), f)),
            Deno.errors.NotFound,
          );
        }
      }
      // ... and through 7-Zip, which reads NTFS on its own.
      await sh("7zz", ["x", "-y", `-o${d("xa")}`, d("a1.img")]);
      await sh("7zz", ["x", "-y", `-o${d("xb")}`, d("b1.img")]);
      await sh("diff", ["-r", "--no-dereference", d("xa"), d("xb")]);
      for (const f of content.kept) {
        assert.deepStrictEqual(
          await Deno.readFile(join(d("xb"), f)),
          await Deno.readFile(join(d("xa"), f)),
        );
      }

      // Much smaller than without --sparsify.
      const plainOut = d("plain.qcow2");
      const r2 = await runCli([
        "convert",
        "--compress",
        "zstd",
        disk,
        plainOut,
      ]);
      assert.strictEqual(r2.code, 0, r2.stderr);
      const ours = (await Deno.stat(out)).size;
      const plain = (await Deno.stat(plainOut)).size;
      console.log(
        `${name}: --sparsify ${ours} bytes in ${
          seconds.toFixed(1)
        } s, without ${plain} bytes`,
      );
      assert.ok(
        plain > 1.5 * ours,
        `plain ${plain} against sparsified ${ours}`,
      );
    },
  );
}
