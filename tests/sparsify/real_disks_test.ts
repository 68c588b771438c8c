// Real disks, as the issue asks: GPT, MBR and bare disks made with sfdisk,
// mkfs.ext4 and mkswap on loop devices, filled through a kernel mount
// (files, symlinks, hard links, modes, owners, xattrs), with files deleted
// so that free blocks and swap pages hold old bytes. Then
// `convert --sparsify --compress zstd`, expanded by qemu-img, must give:
// - `qemu-img check` clean, `e2fsck -fn` clean;
// - the same tree through a mount (`diff -r`, and a listing of modes,
//   owners, sizes, link targets and xattrs);
// - every byte outside the mapped partitions unchanged (partition tables,
//   gaps) and the swap header unchanged;
// - a size within 15% of converting a zerofree'd copy.
// Needs root and loop devices (skipped with a message otherwise, except
// under CI).

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuImg, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import {
  blank,
  diskTest,
  listing,
  loop,
  MiB,
  mount,
  noise,
  populate,
  readAt,
  sfdiskParts,
  sh,
} from "./_disks.ts";

const TOOLS = [
  "sfdisk",
  "mkfs.ext4",
  "mkswap",
  "e2fsck",
  "zerofree",
  "python3",
  "qemu-img",
];

/**
 * Sets an extended attribute (through Python's os.setxattr: Deno has no
 * xattr calls, and the attr package's tools are not needed then).
 */
async function setXattr(path: string, name: string, value: string) {
  await sh("python3", [
    "-c",
    "import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())",
    path,
    name,
    value,
  ]);
}

/** Fills a mounted filesystem, then deletes part of it. */
async function fill(dir: string, seed: number, bytes: number): Promise<void> {
  const files = await populate(join(dir, "data"), seed, bytes);
  for (const [i, f] of files.entries()) {
    if (i % 5 === 1) {
      await setXattr(join(dir, "data", f), "user.note", `file ${i}`);
    }
    if (i % 7 === 2) await Deno.chown(join(dir, "data", f), 1000 + i, 100);
    if (i % 6 === 3) await Deno.chmod(join(dir, "data", f), 0o4755);
  }
  await setXattr(join(dir, "data"), "trusted.tag", "kept");
  // Real files too, with their symlinks and hard links, when there are any.
  const zoneinfo = await Deno.stat("/usr/share/zoneinfo").catch(() =>
    undefined
  );
  if (zoneinfo?.isDirectory) {
    await sh("cp", ["-a", "/usr/share/zoneinfo", join(dir, "zoneinfo")]);
  }
  // Deleted: two thirds of the generated files (their blocks keep the bytes).
  for (const [i, f] of files.entries()) {
    if (i % 3 !== 0) await Deno.remove(join(dir, "data", f));
  }
  await sh("sync", []);
}

interface Layout {
  /** sfdisk script, or undefined for a bare filesystem. */
  script?: string;
  /** Index (in sfdisk's list, extended partitions left out) of the ext4 and swap partitions. */
  ext4: number;
  swap?: number;
}

const LAYOUTS: Array<[string, Layout]> = [
  ["GPT", { script: "label: gpt\n,150M,L\n,48M,S\n", ext4: 0, swap: 1 }],
  [
    "MBR with logical partitions",
    { script: "label: dos\n,48M,82\n,,E\n,150M,83\n", ext4: 1, swap: 0 },
  ],
  ["bare", { ext4: 0 }],
];

for (const [name, layout] of LAYOUTS) {
  diskTest(
    `convert --sparsify keeps a real ${name} disk correct and as small as zerofree makes it`,
    { tools: TOOLS, loop: true },
    async () => {
      await using dir = await tempDir();
      const disk = join(dir.path, "disk.img");
      const size = layout.script ? 256 * MiB : 160 * MiB;
      await blank(disk, size);
      let parts = [{ offset: 0, length: size, type: "" }];
      if (layout.script) {
        await sh("sfdisk", ["-q", disk], { stdin: layout.script });
        parts = (await sfdiskParts(disk)).filter((p) => p.type !== "5");
      }
      const fs = parts[layout.ext4];
      const swap = layout.swap === undefined ? undefined : parts[layout.swap];
      {
        await using dev = await loop(disk, fs.offset, fs.length);
        await sh("mkfs.ext4", ["-q", "-F", dev.dev]);
        await using _m = await mount(dev.dev, join(dir.path, "fill"), "rw");
        await fill(join(dir.path, "fill"), 11, 90 * MiB);
      }
      if (swap) {
        await using dev = await loop(disk, swap.offset, swap.length);
        using f = await Deno.open(dev.dev, { write: true });
        for (let at = 0; at < swap.length; at += 4 * MiB) {
          await f.write(noise(Math.min(4 * MiB, swap.length - at), at + 1));
        }
        await sh("mkswap", ["-q", "-L", "test-swap", dev.dev]);
      }

      const disk0 = await Deno.readFile(disk);
      const out = join(dir.path, "out.qcow2");
      const r = await runCli([
        "convert",
        "--sparsify",
        "--compress",
        "zstd",
        disk,
        out,
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        /: ext4 \(\d KiB blocks, .*\): [\d.]+ MiB free, dropped\n/,
      );
      if (swap) {
        assert.match(
          r.stderr,
          /: swap \(4 KiB pages, .*label "test-swap"\): [\d.]+ MiB free, dropped\n/,
        );
      }
      await qemuCheckClean(out);
      const back = join(dir.path, "back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);

      // e2fsck finds nothing to fix in the result.
      {
        await using dev = await loop(back, fs.offset, fs.length, true);
        const fsck = await new Deno.Command("e2fsck", {
          args: ["-fn", dev.dev],
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert.strictEqual(
          fsck.code,
          0,
          new TextDecoder().decode(fsck.stdout) +
            new TextDecoder().decode(fsck.stderr),
        );
      }
      // The same tree through the kernel.
      {
        await using a = await loop(disk, fs.offset, fs.length, true);
        await using b = await loop(back, fs.offset, fs.length, true);
        const ma = join(dir.path, "a");
        const mb = join(dir.path, "b");
        await using _a = await mount(a.dev, ma, "ro,noload");
        await using _b = await mount(b.dev, mb, "ro,noload");
        await sh("diff", ["-r", "--no-dereference", ma, mb]);
        const la = await listing(ma, { xattrs: true });
        assert.match(
          la,
          /^data\/\S+ user\.note 66696c6520/m,
          "xattrs are listed",
        );
        assert.match(la, /^data trusted\.tag 6b657074$/m);
        assert.strictEqual(await listing(mb, { xattrs: true }), la);
      }
      // Bytes outside the mapped areas are unchanged: tables, EBRs, gaps,
      // the swap header.
      const mapped = [{ offset: fs.offset, length: fs.length }];
      if (swap) {
        mapped.push({ offset: swap.offset + 4096, length: swap.length - 4096 });
      }
      mapped.sort((x, y) => x.offset - y.offset);
      let at = 0;
      for (const m of [...mapped, { offset: size, length: 0 }]) {
        if (m.offset > at) {
          assert.ok(
            (await readAt(back, at, m.offset - at)).every((v, i) =>
              v === disk0[at + i]
            ),
            `bytes ${at}-${m.offset - 1} unchanged`,
          );
        }
        at = m.offset + m.length;
      }
      if (layout.script?.includes("gpt")) {
        assert.deepStrictEqual(
          await readAt(back, size - 33 * 512, 33 * 512),
          await readAt(disk, size - 33 * 512, 33 * 512),
          "backup GPT unchanged",
        );
      }

      // The ideal: a zerofree'd copy (and a swap zeroed past its header).
      const ideal = join(dir.path, "ideal.img");
      await sh("cp", ["--sparse=always", disk, ideal]);
      {
        await using dev = await loop(ideal, fs.offset, fs.length);
        await sh("zerofree", [dev.dev]);
      }
      if (swap) {
        using f = await Deno.open(ideal, { write: true });
        await f.seek(swap.offset + 4096, Deno.SeekMode.Start);
        await f.write(new Uint8Array(swap.length - 4096));
      }
      const idealOut = join(dir.path, "ideal.qcow2");
      const r2 = await runCli([
        "convert",
        "--compress",
        "zstd",
        ideal,
        idealOut,
      ]);
      assert.strictEqual(r2.code, 0, r2.stderr);
      const ours = (await Deno.stat(out)).size;
      const best = (await Deno.stat(idealOut)).size;
      const plainOut = join(dir.path, "plain.qcow2");
      assert.strictEqual(
        (await runCli(["convert", "--compress", "zstd", disk, plainOut])).code,
        0,
      );
      const plain = (await Deno.stat(plainOut)).size;
      assert.ok(
        ours <= best * 1.15 && ours >= best * 0.85,
        `sparsified ${ours} bytes, zerofree'd ${best} (plain ${plain})`,
      );
      assert.ok(
        plain > 1.5 * ours,
        `plain ${plain} against sparsified ${ours}`,
      );
    },
  );
}
