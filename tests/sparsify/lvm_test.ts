// The LVM2 module against LVM2's own tools: real PVs made by pvcreate on
// loop devices over a GPT partition (Linux LVM type), an MBR partition (type
// 0x8e) and a bare disk, with linear LVs written by vgcfgrestore: an ext4
// LV in two segments that lie backwards on the PV, a swap LV, a second
// ext4 LV, and unallocated extents full of old bytes. What is free is
// judged by LVM2 (pvs --segments), dumpe2fs and the swap layout, not by the
// module: the map must list exactly that. Then `convert --sparsify` and
// back through qemu-img: the disk must read as the input with exactly those
// ranges zeroed, every LV's ext4 clean by e2fsck and with every file
// identical through read-only loop mounts, and the output much smaller.

import assert from "node:assert";
import { qemuCheckClean, qemuImg, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  blank,
  debugfsRm,
  dumpe2fsFree,
  fillNoise,
  merge,
  MiB,
  mkfs,
  noise,
  populate,
  sfdiskParts,
  sh,
  within,
  writeInto,
  zeroed,
} from "./_disks.ts";
import { firstDifference } from "./_ntfs.ts";
import {
  copyRange,
  inDir,
  LvmSession,
  lvmTest,
  lvToDisk,
  piecesOf,
  type PvInfo,
  readLv,
  type VgSpec,
  writeLv,
} from "./_lvm.ts";

const EXTENT = 4 * MiB;
const GPT_LVM = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/** What a built disk holds and what is free on it, by the tools. */
interface LvmDisk {
  path: string;
  vg: VgSpec;
  pv: PvInfo;
  /** Disk ranges that should read as zeros. */
  free: FreeRange[];
  /** Files kept and deleted in each ext4 LV. */
  files: Record<string, { kept: string[]; deleted: string[] }>;
  /** Partition 1's ext4 (beside the PV), when there is a table. */
  p1?: { offset: number; length: number };
}

/**
 * Builds a disk with a PV (in partition 2 of a GPT or MBR table beside an
 * ext4, or as the whole disk): root (ext4, 64 MiB in two segments, the
 * second before the first on the PV), swap (16 MiB), data (ext4, 32 MiB,
 * 1 KiB blocks), and free extents holding old bytes.
 */
async function buildLvmDisk(
  dir: string,
  layout: "gpt" | "dos" | "bare",
): Promise<LvmDisk> {
  const d = inDir(dir);
  const path = d(`${layout}.img`);
  const size = layout === "bare" ? 200 * MiB : 256 * MiB;
  await blank(path, size);
  let pvPart = { offset: 0, length: size };
  let p1: { offset: number; length: number } | undefined;
  const free: FreeRange[] = [];
  if (layout !== "bare") {
    const script = layout === "gpt"
      ? `label: gpt\n,32M,L\n,,${GPT_LVM}\n`
      : "label: dos\n,32M,83\n,,8e\n";
    await sh("sfdisk", ["-q", path], { stdin: script });
    const parts = await sfdiskParts(path);
    p1 = parts[0];
    pvPart = parts[1];
    const files = await populate(d("t1"), 11, 12 * MiB);
    await mkfs(d("p1.img"), p1.length, ["-t", "ext4"], d("t1"));
    await debugfsRm(d("p1.img"), files.filter((_, i) => i % 2 === 0));
    await writeInto(path, p1.offset, d("p1.img"));
    free.push(...await dumpe2fsFree(d("p1.img"), p1.offset));
    await Deno.remove(d("p1.img"));
    await Deno.remove(d("t1"), { recursive: true });
  }
  await fillNoise(path, pvPart.offset, pvPart.length, 77);

  let vg: VgSpec;
  let pv: PvInfo;
  {
    await using lvm = new LvmSession();
    const dev = await lvm.attach(path, pvPart.offset, pvPart.length);
    pv = await lvm.pv(dev, pvPart.offset, "pv0", EXTENT);
    vg = {
      name: `vg${layout}${Date.now() % 100000}`,
      id: "vgvgvg-aaaa-bbbb-cccc-dddd-eeee-ffffff",
      seqno: 1,
      extentBytes: EXTENT,
      pvs: [pv],
      lvs: [
        {
          name: "root",
          segments: [{ pv: "pv0", pe: 12, count: 10 }, {
            pv: "pv0",
            pe: 2,
            count: 6,
          }],
        },
        { name: "swap", segments: [{ pv: "pv0", pe: 24, count: 4 }] },
        { name: "data", segments: [{ pv: "pv0", pe: 30, count: 8 }] },
      ],
    };
    assert.ok(pv.peCount > 38, `PV of ${pv.peCount} extents`);
    await lvm.restore(vg);
    // LVM2 reads the LVs where the test put them, and the free extents.
    assert.deepStrictEqual(await lvm.lvSegments(vg.name), {
      root: [`linear ${dev}:12-21`, `linear ${dev}:2-7`],
      swap: [`linear ${dev}:24-27`],
      data: [`linear ${dev}:30-37`],
    });
    const freePe = await lvm.freeExtents(pv, EXTENT);
    assert.strictEqual(
      freePe.reduce((n, r) => n + r.length, 0),
      (pv.peCount - 28) * EXTENT,
    );
    free.push(...freePe);
  }

  const files: LvmDisk["files"] = {};
  for (
    const [name, args, seed, bytes] of [
      ["root", ["-b", "4096"], 31, 40 * MiB],
      ["data", ["-b", "1024"], 32, 20 * MiB],
    ] as const
  ) {
    const lv = vg.lvs.find((l) => l.name === name)!;
    const length = piecesOf(vg, lv).reduce((n, p) => n + p.length, 0);
    const tree = d(`tree-${name}`);
    const all = await populate(tree, seed, bytes);
    const img = d(`${name}.img`);
    await mkfs(img, length, ["-t", "ext4", ...args], tree);
    const deleted = all.filter((_, i) => i % 3 !== 0);
    await debugfsRm(img, deleted);
    files[name] = { kept: all.filter((_, i) => i % 3 === 0), deleted };
    await writeLv(path, vg, lv, img);
    free.push(...lvToDisk(vg, lv, await dumpe2fsFree(img)));
    await Deno.remove(img);
    await Deno.remove(tree, { recursive: true });
  }
  const swapLv = vg.lvs.find((l) => l.name === "swap")!;
  const swapLength = 4 * EXTENT;
  await Deno.writeFile(d("swap.img"), noise(swapLength, 5));
  await sh("mkswap", ["-q", d("swap.img")]);
  await writeLv(path, vg, swapLv, d("swap.img"));
  await Deno.remove(d("swap.img"));
  free.push(
    ...lvToDisk(vg, swapLv, [{ offset: 4096, length: swapLength - 4096 }]),
  );
  return { path, vg, pv, free: merge(free), files, p1 };
}

/** Mounts an ext4 image read-only; unmounts on dispose. */
async function mountRo(image: string, dir: string): Promise<AsyncDisposable> {
  await Deno.mkdir(dir, { recursive: true });
  await sh("mount", ["-o", "ro,loop,noload", "-t", "ext4", image, dir]);
  return {
    async [Symbol.asyncDispose]() {
      await sh("umount", [dir]);
    },
  };
}

const TOOLS = [
  "sfdisk",
  "mke2fs",
  "debugfs",
  "dumpe2fs",
  "e2fsck",
  "mkswap",
  "qemu-img",
  "diff",
];

for (const layout of ["gpt", "dos", "bare"] as const) {
  lvmTest(
    `convert --sparsify reads the linear LVs of a real LVM2 PV (${
      layout === "bare" ? "bare disk" : layout === "gpt" ? "GPT" : "MBR"
    }) and drops exactly the free extents and the free space inside them`,
    TOOLS,
    async () => {
      await using dir = await tempDir();
      const d = inDir(dir.path);
      const disk = await buildLvmDisk(dir.path, layout);

      // The map, by itself: exactly the free ranges of the tools.
      {
        await using src = await FileSource.open(disk.path);
        const map = await mapFreeSpace(src);
        const pvRegion = map.report.regions.find((r) => r.found === "LVM2 PV")!;
        assert.strictEqual(pvRegion.status, "mapped", pvRegion.reason);
        assert.match(
          pvRegion.detail!,
          new RegExp(
            `^VG ${disk.vg.name} \\(seqno \\d+\\), 4 MiB extents, ${disk.pv.peCount} extents, ${
              disk.pv.peCount - 28
            } free, 3 LVs$`,
          ),
        );
        assert.deepStrictEqual(
          pvRegion.volumes!.map((v) => [v.name, v.found, v.status]),
          [
            [`${disk.vg.name}/root`, "ext4", "mapped"],
            [`${disk.vg.name}/swap`, "swap", "mapped"],
            [`${disk.vg.name}/data`, "ext4", "mapped"],
          ],
        );
        assert.deepStrictEqual(await Array.fromAsync(map.ranges()), disk.free);
        assert.strictEqual(
          map.report.freeBytes,
          disk.free.reduce((n, r) => n + r.length, 0),
        );
      }

      const out = d("out.qcow2");
      const t0 = performance.now();
      const r = await runCli([
        "convert",
        "--sparsify",
        "--compress",
        "zstd",
        disk.path,
        out,
      ]);
      const seconds = (performance.now() - t0) / 1000;
      assert.strictEqual(r.code, 0, r.stderr);
      const vgName = disk.vg.name;
      assert.match(
        r.stderr,
        new RegExp(
          `: LVM2 PV \\(VG ${vgName} .*\\): [\\d.]+ MiB free, dropped\\n.*   LV ${vgName}/root \\(64\\.0 MiB, 2 segments\\): ext4 \\(.*\\): [\\d.]+ MiB free, dropped\\n.*   LV ${vgName}/swap \\(16\\.0 MiB\\): swap \\(.*\\): 16\\.0 MiB free, dropped\\n.*   LV ${vgName}/data \\(32\\.0 MiB\\): ext4 \\(.*\\): [\\d.]+ MiB free, dropped\\n`,
        ),
      );
      await qemuCheckClean(out);
      const back = d("back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);

      // Exactly the free ranges read as zeros; every other byte is the
      // input's (table, label, metadata areas, LVs, the other partition).
      await zeroed(disk.path, d("ideal.img"), disk.free);
      assert.strictEqual(await firstDifference(back, d("ideal.img")), -1);
      assert.ok(
        await firstDifference(back, disk.path) >= 0,
        "old bytes were dropped",
      );

      // Every LV's ext4 clean, every file identical, deleted files gone.
      for (const name of ["root", "data"]) {
        const lv = disk.vg.lvs.find((l) => l.name === name)!;
        await readLv(disk.path, disk.vg, lv, d(`${name}-in.img`));
        await readLv(back, disk.vg, lv, d(`${name}-out.img`));
        await sh("e2fsck", ["-fn", d(`${name}-out.img`)]);
        await using _a = await mountRo(d(`${name}-in.img`), d(`m-${name}-a`));
        await using _b = await mountRo(d(`${name}-out.img`), d(`m-${name}-b`));
        await sh("diff", [
          "-r",
          "--no-dereference",
          d(`m-${name}-a`),
          d(`m-${name}-b`),
        ]);
        for (const f of disk.files[name].kept) {
          assert.ok((await Deno.stat(`${d(`m-${name}-b`)}/${f}`)).size > 0);
        }
        for (const f of disk.files[name].deleted) {
          await assert.rejects(
            Deno.stat(`${d(`m-${name}-b`)}/${f}`),
            Deno.errors.NotFound,
          );
        }
      }
      if (disk.p1) {
        const img = d("p1-out.img");
        await Deno.writeFile(img, new Uint8Array(0));
        await copyRange(back, disk.p1.offset, img, 0, disk.p1.length);
        await sh("e2fsck", ["-fn", img]);
      }

      // Much smaller than without --sparsify.
      const plainOut = d("plain.qcow2");
      const r2 = await runCli([
        "convert",
        "--compress",
        "zstd",
        disk.path,
        plainOut,
      ]);
      assert.strictEqual(r2.code, 0, r2.stderr);
      const ours = (await Deno.stat(out)).size;
      const plain = (await Deno.stat(plainOut)).size;
      console.log(
        `LVM2 (${layout}): --sparsify ${ours} bytes in ${
          seconds.toFixed(1)
        } s, without ${plain} bytes`,
      );
      assert.ok(plain > 2 * ours, `plain ${plain} against sparsified ${ours}`);
    },
  );
}

lvmTest(
  "FreeSpaceStream maps a bare PV's LVs from a stream, and keeps an LV past the read-ahead",
  TOOLS,
  async () => {
    await using dir = await tempDir();
    const disk = await buildLvmDisk(dir.path, "bare");
    const bytes = await Deno.readFile(disk.path);
    const pieces = [];
    for (let at = 0; at < bytes.length; at += MiB) {
      pieces.push(bytes.subarray(at, at + MiB));
    }
    // With 256 MiB of read-ahead, everything is mapped as at random.
    for (const [readAhead, mapped] of [[256 * MiB, true], [112 * MiB, false]]) {
      const stage = new FreeSpaceStream({ readAhead: readAhead as number });
      const zeros: FreeRange[] = [];
      let at = 0;
      for await (const c of ReadableStream.from(pieces).pipeThrough(stage)) {
        if (c instanceof Uint8Array) {
          assert.deepStrictEqual(c, bytes.subarray(at, at + c.length));
          at += c.length;
        } else {
          zeros.push({ offset: at, length: c.zeros });
          at += c.zeros;
        }
      }
      assert.strictEqual(at, bytes.length);
      const report = await stage.report;
      const [region] = report.regions;
      assert.strictEqual(region.status, "mapped", region.reason);
      const volumes = region.volumes!.map((
        v,
      ) => [v.name.split("/")[1], v.status]);
      if (mapped) {
        assert.deepStrictEqual(merge(zeros), disk.free);
        assert.deepStrictEqual(volumes, [
          ["root", "mapped"],
          ["swap", "mapped"],
          ["data", "mapped"],
        ]);
      } else {
        // data starts at extent 30 (about 121 MiB): past 112 MiB of read-ahead.
        assert.deepStrictEqual(volumes, [
          ["root", "mapped"],
          ["swap", "mapped"],
          ["data", "untouched"],
        ]);
        assert.match(
          region.volumes![2].reason!,
          /the read-ahead limit/,
        );
        assert.ok(within(zeros, disk.free));
      }
      assert.strictEqual(
        report.freeBytes,
        zeros.reduce((n, r) => n + r.length, 0),
      );
    }
  },
);
