// Hostile metadata that `--sparsify` must leave as it is, saying why:
// a swap signature in a partition whose type is not swap, superblocks
// claiming a million groups (refused quickly, in little memory: the CLI's
// peak RSS is read from /proc/PID/status), and inodes whose trees are
// malformed or point into each other. A file on the orphan list is live.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCompareIdentical, qemuImg, tempDir } from "../_qemu.ts";
import { CLI, runCli } from "../writer/_cli.ts";
import {
  blank,
  blocksOf,
  debugfsSet,
  diskTest,
  liveInodes,
  MiB,
  mkfs,
  noise,
  readAt,
  sfdiskParts,
  sh,
  writeInto,
} from "./_disks.ts";

const KiB = 1024;

/** Runs `convert --sparsify`, expecting success and exactly one refusal matching `reason`. */
async function expectKept(
  dir: string,
  src: string,
  reason: RegExp,
): Promise<string> {
  const out = join(dir, "out.qcow2");
  const r = await runCli(["convert", "--sparsify", src, out]);
  assert.strictEqual(r.code, 0, r.stderr);
  const left = r.stderr.split("\n").filter((l) => l.includes("left as it is"));
  assert.strictEqual(left.length, 1, r.stderr);
  assert.match(left[0], reason);
  await qemuCompareIdentical(src, out);
  return r.stderr;
}

// ---------------------------------------------------------------------------
// Swap signatures and partition types

/** A partition of old bytes made swap by mkswap, written into `disk`. */
async function swapInto(
  dir: string,
  disk: string,
  part: { offset: number; length: number },
  seed: number,
): Promise<void> {
  const file = join(dir, `swap-${seed}.img`);
  await Deno.writeFile(file, noise(part.length, seed));
  await sh("mkswap", ["-q", file]);
  await writeInto(disk, part.offset, file);
}

for (
  const [label, script, verdicts] of [
    [
      "MBR",
      "label: dos\n,8M,7\n,8M,82\n,8M,83\n",
      ["NTFS/exFAT", "swap", "Linux"],
    ],
    [
      "GPT",
      "label: gpt\n,8M,EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n,8M,L\n,8M,S\n",
      ["Microsoft basic data", "Linux filesystem", "swap"],
    ],
  ] as const
) {
  diskTest(
    `convert --sparsify trusts a swap signature only in a swap partition (${label})`,
    { tools: ["sfdisk", "mkswap", "qemu-img"] },
    async () => {
      await using dir = await tempDir();
      const disk = join(dir.path, "disk.img");
      await blank(disk, 32 * MiB);
      await sh("sfdisk", ["-q", disk], { stdin: script });
      const parts = await sfdiskParts(disk);
      for (const [i, p] of parts.entries()) {
        await swapInto(dir.path, disk, p, 10 + i);
      }
      const out = join(dir.path, "out.qcow2");
      const r = await runCli(["convert", "--sparsify", disk, out]);
      assert.strictEqual(r.code, 0, r.stderr);
      const back = join(dir.path, "back.raw");
      await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);
      for (const [i, p] of parts.entries()) {
        const line = r.stderr.split("\n").find((l) =>
          l.includes(`partition ${i + 1} (`)
        )!;
        const before = await readAt(disk, p.offset, p.length);
        const after = await readAt(back, p.offset, p.length);
        if (verdicts[i] === "swap") {
          assert.match(
            line,
            /: swap \(4 KiB pages, .*\): [\d.]+ MiB free, dropped$/,
          );
          assert.deepStrictEqual(
            after.subarray(0, 4096),
            before.subarray(0, 4096),
          );
          assert.ok(after.subarray(4096).every((b) => b === 0));
        } else {
          assert.strictEqual(
            line.replace(/^.*?: swap left as it is: /, ""),
            `a swap signature in a partition whose type (${
              verdicts[i]
            }) does not say swap: not trusted`,
            line,
          );
          assert.ok(
            after.every((b, k) => b === before[k]),
            `partition ${i + 1} kept whole`,
          );
        }
      }
    },
  );
}

// ---------------------------------------------------------------------------
// A superblock claiming a million groups

/**
 * A superblock (no metadata_csum: nothing to forge) of `groups` groups of
 * `bpg` blocks of `1024 << logBlock` bytes, 64bit with 1024-byte group
 * descriptors, 16 inodes per group.
 */
function craftedSuperblock(
  logBlock: number,
  bpg: number,
  groups: number,
  metaBg: boolean,
): Uint8Array {
  const raw = new Uint8Array(1024);
  const v = new DataView(raw.buffer);
  const first = logBlock === 0 ? 1 : 0;
  const blocks = first + groups * bpg;
  v.setUint32(0x00, groups * 16, true); // s_inodes_count
  v.setUint32(0x04, blocks % 2 ** 32, true);
  v.setUint32(0x150, Math.floor(blocks / 2 ** 32), true);
  v.setUint32(0x14, first, true);
  v.setUint32(0x18, logBlock, true);
  v.setUint32(0x1c, logBlock, true);
  v.setUint32(0x20, bpg, true);
  v.setUint32(0x24, bpg, true);
  v.setUint32(0x28, 16, true); // s_inodes_per_group
  v.setUint16(0x38, 0xef53, true);
  v.setUint16(0x3a, 1, true); // clean
  v.setUint32(0x4c, 1, true); // dynamic revision
  v.setUint32(0x54, 11, true); // s_first_ino
  v.setUint16(0x58, 256, true); // s_inode_size
  v.setUint32(0x60, 0x80 | 0x2 | (metaBg ? 0x10 : 0), true); // 64bit, filetype, meta_bg
  v.setUint16(0xfe, 1024, true); // s_desc_size
  return raw;
}

/**
 * Runs the CLI and samples its peak RSS (VmHWM in /proc/PID/status, which
 * only grows) until it exits.
 */
async function measuredCli(
  args: string[],
  stdin?: Uint8Array,
): Promise<{ code: number; stderr: string; peak: number; seconds: number }> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    stdin: stdin ? "piped" : "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let peak = 0;
  const sample = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(
        Deno.readTextFileSync(`/proc/${child.pid}/status`),
      );
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // exited
    }
  };
  const timer = setInterval(sample, 5);
  if (stdin) {
    const w = child.stdin.getWriter();
    await w.write(stdin).catch(() => {});
    await w.close().catch(() => {});
  }
  const stderr = await new Response(child.stderr).text();
  sample();
  const status = await child.status;
  clearInterval(timer);
  return {
    code: status.code,
    stderr,
    peak,
    seconds: (performance.now() - t0) / 1000,
  };
}

const LIMITS = { peak: 300 * MiB, seconds: 20 };

function assertBounded(r: { peak: number; seconds: number }): void {
  assert.ok(r.peak > 0, "peak RSS sampled");
  assert.ok(r.peak < LIMITS.peak, `peak RSS ${r.peak} bytes`);
  assert.ok(r.seconds < LIMITS.seconds, `${r.seconds} s`);
}

diskTest(
  "convert --sparsify refuses a 320 KiB disk claiming 2^20 groups quickly and in little memory",
  { tools: ["qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const disk = new Uint8Array(320 * KiB);
    disk.set(craftedSuperblock(0, 8192, 1 << 20, false), 1024);
    const src = join(dir.path, "crafted.raw");
    await Deno.writeFile(src, disk);
    const out = join(dir.path, "out.qcow2");
    const r = await measuredCli(["convert", "--sparsify", src, out]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /ext4 left as it is: filesystem of 8796093023232 bytes is larger than its partition of 327680 bytes: truncated\n/,
    );
    assertBounded(r);
    await qemuCompareIdentical(src, out);

    // From a pipe the disk size is unknown: the descriptor table claimed
    // (1 GiB) is refused from the superblock alone.
    const piped = await measuredCli(
      ["convert", "--sparsify", "-O", "qcow2", "-", join(dir.path, "p.qcow2")],
      disk,
    );
    assert.strictEqual(piped.code, 0, piped.stderr);
    assert.match(
      piped.stderr,
      /ext4 left as it is: the superblock and 1048576 group descriptor blocks \(1048576 groups of 1024-byte descriptors, 0 reserved\) do not fit in group 0 \(8192 blocks\)\n/,
    );
    assertBounded(piped);
  },
);

for (const metaBg of [false, true]) {
  diskTest(
    `convert --sparsify refuses a qcow2 of a 32 GiB disk claiming 2^20 groups${
      metaBg ? " with meta_bg" : ""
    } quickly and in little memory`,
    { tools: ["qemu-img"] },
    async () => {
      await using dir = await tempDir();
      // 4 KiB blocks, 8 per group: 32 GiB, which the disk has; 1 GiB of
      // descriptors, which it does not (they read as zeros).
      const raw = join(dir.path, "crafted.raw");
      await blank(raw, 32 * 1024 * MiB);
      {
        using f = await Deno.open(raw, { write: true });
        await f.seek(1024, Deno.SeekMode.Start);
        await f.write(craftedSuperblock(2, 8, 1 << 20, metaBg));
      }
      const src = join(dir.path, "crafted.qcow2");
      await qemuImg("convert", "-f", "raw", "-O", "qcow2", raw, src);
      await Deno.remove(raw);
      assert.ok((await Deno.stat(src)).size < 1 * MiB);
      const r = await measuredCli([
        "convert",
        "--sparsify",
        src,
        join(dir.path, "out.qcow2"),
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(
        r.stderr,
        metaBg
          ? /ext4 left as it is: block bitmap of group 1 at block 0 lies outside its group \(blocks 8-15\)\n/
          : /ext4 left as it is: the superblock and 262144 group descriptor blocks .* do not fit in group 0 \(8 blocks\)\n/,
      );
      assertBounded(r);
    },
  );
}

// ---------------------------------------------------------------------------
// Inodes whose references do not hold together

/** Byte offset of inode `ino` in an ext image (group 0's inode table). */
async function inodeAt(image: string, ino: number): Promise<number> {
  const text = await sh("dumpe2fs", [image]);
  const bs = Number(/^Block size:\s+(\d+)$/m.exec(text)![1]);
  const isz = Number(/^Inode size:\s+(\d+)$/m.exec(text)![1]);
  const table = Number(/^Group 0:[^]*?Inode table at (\d+)/m.exec(text)![1]);
  return table * bs + (ino - 1) * isz;
}

const MALFORMED: Array<{
  name: string;
  mkfs: string[];
  damage: (fs: string, dir: string) => Promise<void>;
  reason: RegExp;
}> = [
  {
    name: "an extent root whose header is not one",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "64"],
    damage: (fs) => debugfsSet(fs, "sif <12> block[0] 0x12345678"),
    reason:
      /ext4 left as it is: inode 12: its extent root has extent header magic 0x5678, not 0xf30a/,
  },
  {
    name: "an indirect block pointer outside the filesystem",
    mkfs: ["-t", "ext2", "-b", "1024", "-N", "64"],
    damage: (fs) => debugfsSet(fs, "sif <12> block[IND] 99999999"),
    reason:
      /ext2 left as it is: inode 12 uses block 99999999 as an indirect block, outside the filesystem \(blocks 1-16383\)/,
  },
  {
    name: "a device inode carrying block pointers",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "64"],
    damage: (fs) => debugfsSet(fs, "mknod dev c 1 3", "sif dev block[6] 1234"),
    reason:
      /inode 13 is a device, FIFO or socket, but carries an extent tree or block pointers/,
  },
  {
    name: "a live inode of no known file type",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "64"],
    damage: (fs) => debugfsSet(fs, "sif <12> mode 030644"),
    reason:
      /inode 12 \(links 1\) has file type 0x3000, which is none of the known ones/,
  },
  {
    name: "inodes that all point at one file's blocks",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "64"],
    damage: async (fs, dir) => {
      // Six more files, then their inodes overwritten with the big one's:
      // 7 x 3 MiB of references in a 16 MiB filesystem.
      const small = join(dir, "small");
      await Deno.writeFile(small, noise(1024, 3));
      await debugfsSet(
        fs,
        ...Array.from({ length: 6 }, (_, i) => `write ${small} copy${i}`),
      );
      const at = await inodeAt(fs, 12);
      const [inode] = [await readAt(fs, at, 256)];
      using f = await Deno.open(fs, { write: true });
      for (let ino = 13; ino <= 18; ino++) {
        await f.seek(at + (ino - 12) * 256, Deno.SeekMode.Start);
        await f.write(inode);
      }
    },
    reason:
      /inodes reference more than 16448 blocks \(the 16384 blocks and one attribute block per inode\)/,
  },
];

for (const c of MALFORMED) {
  diskTest(
    `convert --sparsify leaves ${c.name} as it is`,
    { tools: ["mke2fs", "debugfs", "dumpe2fs", "qemu-img"] },
    async () => {
      await using dir = await tempDir();
      const fs = join(dir.path, "fs.img");
      await mkfs(fs, 16 * MiB, c.mkfs);
      const big = join(dir.path, "big");
      await Deno.writeFile(big, noise(3 * MiB, 5));
      await debugfsSet(fs, `write ${big} big`);
      await c.damage(fs, dir.path);
      await expectKept(dir.path, fs, c.reason);
    },
  );
}

diskTest(
  "convert --sparsify keeps a file on the orphan list and maps the rest",
  { tools: ["mke2fs", "debugfs", "dumpe2fs", "qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const fs = join(dir.path, "fs.img");
    await mkfs(fs, 16 * MiB, ["-t", "ext4", "-b", "1024", "-N", "64"]);
    const files = ["open", "gone"];
    for (const [i, name] of files.entries()) {
      await Deno.writeFile(join(dir.path, name), noise(2 * MiB, 20 + i));
    }
    await debugfsSet(
      fs,
      ...files.map((n) => `write ${join(dir.path, n)} ${n}`),
      // Unlinked while open: links 0, on the orphan list, blocks in use.
      "unlink open",
      "sif <12> links_count 0",
      "ssv last_orphan 12",
      // Deleted: its blocks free, holding old bytes.
      "rm gone",
    );
    const orphan = await blocksOf(fs, "<12>");
    const live = await liveInodes(fs);
    assert.ok(live.inodes.some((i) => i.ino === 12), "debugfs: 12 in use");
    const out = join(dir.path, "out.qcow2");
    const r = await runCli(["convert", "--sparsify", fs, out]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /: ext4 \(1 KiB blocks, .*\): [\d.]+ MiB free, dropped\n/,
    );
    const back = join(dir.path, "back.raw");
    await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, back);
    for (const b of orphan) {
      const from = b.first * 1024;
      const length = (b.last - b.first + 1) * 1024;
      assert.deepStrictEqual(
        await readAt(back, from, length),
        await readAt(fs, from, length),
        `orphan blocks ${b.first}-${b.last}`,
      );
    }
    // The deleted file's 2 MiB were dropped.
    const dropped = Number(/([\d.]+) MiB free, dropped/.exec(r.stderr)![1]);
    assert.ok(dropped > 2, r.stderr);
  },
);

// ---------------------------------------------------------------------------
// Two signatures in one partition

diskTest(
  "--sparsify leaves a filesystem that also carries another filesystem's signature as it is (ambiguous, as blkid says)",
  { tools: ["mke2fs", "qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const cases: Array<[string, number, string, RegExp]> = [
      // btrfs's superblock magic at 64 KiB + 0x40, inside ext4's data.
      ["btrfs", 0x10040, "_BHRfS_M", /ext4 and btrfs were both found/],
      // A swap signature at the end of the first 4 KiB page, which ext4's
      // first block leaves unused.
      ["swap", 4096 - 10, "SWAPSPACE2", /ext4 and swap were both found/],
      // An XFS magic at byte 0 (ext4 leaves its boot block unused).
      ["xfs", 0, "XFSB", /ext4 and xfs were both found/],
    ];
    for (const [what, at, sig, reason] of cases) {
      const fs = join(dir.path, `ext4-${what}.img`);
      await mkfs(fs, 16 * MiB, ["-t", "ext4", "-b", "4096"]);
      const f = await Deno.open(fs, { write: true });
      await f.seek(at, Deno.SeekMode.Start);
      await f.write(new TextEncoder().encode(sig));
      f.close();
      await expectKept(dir.path, fs, reason);
    }
  },
);
