// `--sparsify` trusts nothing it cannot cross-check. Each case builds an
// attack for real: mke2fs on a file (placed in a GPT or MBR partition with
// sfdisk, or bare), files written with debugfs, then the metadata edited
// as an attacker would, every count and checksum made to agree. The block
// bitmap then calls live blocks free (dumpe2fs lists them free, and they
// hold data), but the inodes still use them: the filesystem must be left
// as it is, with the reason on one line, and every block of every inode in
// use (found by debugfs, not by our code) must read back byte for byte.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  tempDir,
} from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import {
  blank,
  blocksOf,
  debugfsSet,
  diskTest,
  dumpe2fsFree,
  fixExtChecksums,
  fixFreeCounts,
  freeAsAttacker,
  liveInodes,
  MiB,
  mkfs,
  noise,
  sfdiskParts,
  sh,
  writeInto,
} from "./_disks.ts";

const TOOLS = ["mke2fs", "debugfs", "dumpe2fs", "sfdisk", "qemu-img"];

/** Writes files of noise into an ext image with debugfs: `[name, bytes]`. */
async function writeFiles(
  dir: string,
  image: string,
  files: Array<[string, number]>,
): Promise<void> {
  const commands: string[] = [];
  for (const [i, [name, bytes]] of files.entries()) {
    const local = join(dir, `file-${i}`);
    await Deno.writeFile(local, noise(bytes, 1000 + i));
    commands.push(`write ${local} ${name}`);
  }
  await debugfsSet(image, ...commands);
}

/** The blocks of `path` of the given kinds (`data`, `IND`, `DIND`, `ETB0`, `ACL`). */
async function blocksOfKind(
  image: string,
  path: string,
  kinds: RegExp,
): Promise<Array<[number, number]>> {
  const found = (await blocksOf(image, path)).filter((b) => kinds.test(b.kind));
  assert.ok(found.length > 0, `${path} has ${kinds} blocks`);
  return found.map((b) => [b.first, b.last]);
}

/** A disk around a filesystem image: bare, or in partition 1 of a GPT or MBR. */
async function diskOf(
  dir: string,
  fs: string,
  label: "gpt" | "dos" | "bare",
): Promise<{ path: string; offset: number }> {
  if (label === "bare") return { path: fs, offset: 0 };
  const size = (await Deno.stat(fs)).size;
  const path = join(dir, "disk.img");
  await blank(path, size + 4 * MiB);
  const type = label === "gpt" ? "L" : "83";
  await sh("sfdisk", ["-q", path], {
    stdin: `label: ${label}\nstart=2048, size=${size / 512}, type=${type}\n`,
  });
  const [part] = await sfdiskParts(path);
  await writeInto(path, part.offset, fs);
  return { path, offset: part.offset };
}

/** `convert --sparsify` (from the file, or from a pipe), expanded back to raw by qemu-img. */
async function sparsify(
  dir: string,
  src: string,
  pipe = false,
): Promise<{ stderr: string; out: string; raw: string }> {
  const out = join(dir, pipe ? "piped.qcow2" : "out.qcow2");
  const r = pipe
    ? await runCli(["convert", "--sparsify", "-O", "qcow2", "-", out], {
      stdinFile: src,
    })
    : await runCli(["convert", "--sparsify", src, out]);
  assert.strictEqual(r.code, 0, r.stderr);
  await qemuCheckClean(out);
  const raw = join(dir, pipe ? "piped.raw" : "out.raw");
  await qemuImg("convert", "-f", "qcow2", "-O", "raw", out, raw);
  return { stderr: r.stderr, out, raw };
}

/**
 * Compares every block of every live inode between the input and the
 * output; returns how many blocks were compared.
 */
async function assertLiveBlocksKept(
  input: string,
  output: string,
  offset: number,
  live: Awaited<ReturnType<typeof liveInodes>>,
): Promise<number> {
  const a = await Deno.readFile(input);
  const b = await Deno.readFile(output);
  const bs = live.blockSize;
  let compared = 0;
  for (const { ino, blocks } of live.inodes) {
    for (const [first, last] of blocks) {
      const from = offset + first * bs;
      const to = offset + (last + 1) * bs;
      assert.ok(
        a.subarray(from, to).every((x, i) => x === b[from + i]),
        `inode ${ino}: blocks ${first}-${last} changed`,
      );
      compared += last - first + 1;
    }
  }
  return compared;
}

/** The attacked blocks are free by dumpe2fs, hold data, and are among the live ones. */
async function assertRealAttack(
  fs: string,
  attacked: Array<[number, number]>,
  live: Awaited<ReturnType<typeof liveInodes>>,
): Promise<void> {
  const bs = live.blockSize;
  const free = await dumpe2fsFree(fs);
  const bytes = await Deno.readFile(fs);
  for (const [first, last] of attacked) {
    const r = { offset: first * bs, length: (last - first + 1) * bs };
    assert.ok(
      free.some((f) =>
        f.offset <= r.offset && r.offset + r.length <= f.offset + f.length
      ),
      `blocks ${first}-${last} are free by dumpe2fs after the attack`,
    );
    assert.ok(
      bytes.subarray(r.offset, r.offset + r.length).some((x) => x !== 0),
      `blocks ${first}-${last} hold data`,
    );
    assert.ok(
      live.inodes.some((i) =>
        i.blocks.some(([a, b]) => a <= first && last <= b)
      ),
      `blocks ${first}-${last} belong to a live inode`,
    );
  }
}

interface Attack {
  name: string;
  label: "gpt" | "dos" | "bare";
  mkfs: string[];
  size: number;
  /** Builds the filesystem's contents (before `live` is taken). */
  fill: (dir: string, fs: string) => Promise<void>;
  /** Edits the metadata; returns the live blocks it made free. */
  attack: (fs: string) => Promise<Array<[number, number]>>;
  reason: RegExp;
  /** Also through a pipe. */
  pipe?: boolean;
}

const KiB = 1024;

const ATTACKS: Attack[] = [
  {
    name: "ext4 (metadata_csum) whose bitmap frees a file's data",
    label: "bare",
    mkfs: ["-t", "ext4", "-b", "4096", "-N", "256"],
    size: 64 * MiB,
    fill: (dir, fs) =>
      writeFiles(dir, fs, [["keep", 200 * KiB], ["big", 3 * MiB]]),
    attack: async (fs) => {
      const data = await blocksOfKind(fs, "big", /^data$/);
      await freeAsAttacker(fs, data);
      return data;
    },
    reason:
      /ext4 left as it is: inode 13 uses block \d+ as data, which the block bitmap of group 0 marks free/,
    pipe: true,
  },
  {
    name:
      "ext4 without metadata_csum in a GPT partition whose bitmap frees a file's data",
    label: "gpt",
    mkfs: ["-t", "ext4", "-O", "^metadata_csum", "-b", "1024", "-N", "256"],
    size: 32 * MiB,
    fill: (dir, fs) => writeFiles(dir, fs, [["big", 2 * MiB]]),
    attack: async (fs) => {
      const data = await blocksOfKind(fs, "big", /^data$/);
      await freeAsAttacker(fs, data.slice(-1));
      return data.slice(-1);
    },
    reason: /ext4 left as it is: inode 12 uses block \d+ as data, which/,
  },
  {
    name: "ext3 in an MBR partition whose bitmap frees an indirect block",
    label: "dos",
    mkfs: ["-t", "ext3", "-b", "1024", "-N", "128"],
    size: 24 * MiB,
    fill: (dir, fs) => writeFiles(dir, fs, [["big", 600 * KiB]]),
    attack: async (fs) => {
      const ind = (await blocksOfKind(fs, "big", /^IND$/)).slice(0, 1);
      await freeAsAttacker(fs, ind);
      return ind;
    },
    reason:
      /ext3 left as it is: inode 12 uses block \d+ as an indirect block, which/,
  },
  {
    name: "ext2 whose bitmap frees a double indirect block",
    label: "bare",
    mkfs: ["-t", "ext2", "-b", "1024", "-N", "128"],
    size: 16 * MiB,
    fill: (dir, fs) => writeFiles(dir, fs, [["big", 400 * KiB]]),
    attack: async (fs) => {
      const dind = await blocksOfKind(fs, "big", /^DIND$/);
      await freeAsAttacker(fs, dind);
      return dind;
    },
    reason:
      /ext2 left as it is: inode 12 uses block \d+ as an indirect block, which/,
    pipe: true,
  },
  {
    name: "ext4 in a GPT partition whose bitmap frees an extent tree block",
    label: "gpt",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "256"],
    size: 32 * MiB,
    fill: async (dir, fs) => {
      // Small files with every other one deleted leave holes: the big file
      // written last gets more extents than the inode holds (depth 1).
      const small = Array.from(
        { length: 60 },
        (_, i) => [`s${i}`, 20 * KiB] as [string, number],
      );
      await writeFiles(dir, fs, small);
      await debugfsSet(
        fs,
        ...small.filter((_, i) => i % 2 === 0).map(([n]) => `rm ${n}`),
      );
      await writeFiles(dir, fs, [["big", 400 * KiB]]);
    },
    attack: async (fs) => {
      const etb = await blocksOfKind(fs, "big", /^ETB0$/);
      await freeAsAttacker(fs, etb);
      return etb;
    },
    reason:
      /ext4 left as it is: inode \d+ uses block \d+ as an extent tree block, which/,
  },
  {
    name: "ext4 whose bitmap frees an extended-attribute block",
    label: "bare",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "128"],
    size: 16 * MiB,
    fill: async (dir, fs) => {
      await writeFiles(dir, fs, [["f", 10 * KiB]]);
      const value = join(dir, "value");
      await Deno.writeFile(value, noise(700, 77));
      await debugfsSet(fs, `ea_set -f ${value} f user.big`);
    },
    attack: async (fs) => {
      const acl = await blocksOfKind(fs, "f", /^ACL$/);
      await freeAsAttacker(fs, acl);
      return acl;
    },
    reason:
      /ext4 left as it is: inode 12 uses block \d+ as its extended-attribute block, which/,
  },
  {
    name:
      "ext4 in an MBR partition whose bitmap frees a file on the orphan list",
    label: "dos",
    mkfs: ["-t", "ext4", "-b", "1024", "-N", "128"],
    size: 16 * MiB,
    fill: async (dir, fs) => {
      await writeFiles(dir, fs, [["open", 300 * KiB], ["open2", 10 * KiB]]);
      // Unlinked while open: no names, links 0, on the orphan list (12,
      // whose i_dtime holds the next one, 13), their blocks live until the
      // orphans are recovered.
      await debugfsSet(
        fs,
        "unlink open",
        "unlink open2",
        "sif <12> links_count 0",
        "sif <13> links_count 0",
        "sif <12> dtime 13",
        "ssv last_orphan 12",
      );
    },
    attack: async (fs) => {
      const data = await blocksOfKind(fs, "<12>", /^data$/);
      await freeAsAttacker(fs, data);
      return data;
    },
    reason: /ext4 left as it is: inode 12 uses block \d+ as data, which/,
  },
  {
    name: "ext4 whose s_blocks_per_group is doubled",
    label: "bare",
    mkfs: ["-t", "ext4", "-b", "4096", "-g", "8192", "-N", "512"],
    size: 128 * MiB,
    fill: async (dir, fs) => {
      // Fill groups 0-2, then free group 1: group 1's bitmap is mostly
      // free, group 2 holds "c". Doubled, group 1's bitmap judges group 2.
      await writeFiles(dir, fs, [
        ["a", 20 * MiB],
        ["b", 32 * MiB],
        ["c", 24 * MiB],
      ]);
      await debugfsSet(fs, "rm b");
    },
    attack: async (fs) => {
      const c = await blocksOfKind(fs, "c", /^data$/);
      const text = await sh("dumpe2fs", ["-h", fs]);
      const inodes = Number(/^Inode count:\s+(\d+)$/m.exec(text)![1]);
      await debugfsSet(
        fs,
        "ssv blocks_per_group 16384",
        "ssv clusters_per_group 16384",
        `ssv inodes_count ${inodes / 2}`,
      );
      // The bitmaps' checksums cover twice the bytes now: recomputed, with
      // the descriptors' and the superblock's. The two descriptors left
      // keep their counts (the bitmaps' padding bits read as used); the
      // superblock's count becomes their sum.
      await fixExtChecksums(fs);
      await fixFreeCounts(fs);
      // Blocks in old group 2 (16384-24575): group 1's old bitmap now says
      // what they are, free where "b" was. The journal (mostly zeros) is
      // there too; the blocks of "c" hold data.
      const free = await dumpe2fsFree(fs);
      const freed: Array<[number, number]> = [];
      for (const [a, b] of c) {
        for (const f of free) {
          const lo = Math.max(a, f.offset / 4096, 16384);
          const hi = Math.min(b + 1, (f.offset + f.length) / 4096, 24576);
          if (lo < hi) freed.push([lo, hi - 1]);
        }
      }
      return freed;
    },
    reason:
      /ext4 left as it is: inode (8|14) uses block \d+ as data, which the block bitmap of group 1 marks free/,
  },
];

for (const a of ATTACKS) {
  diskTest(
    `convert --sparsify keeps every live block: ${a.name}`,
    { tools: TOOLS },
    async () => {
      await using dir = await tempDir();
      const fs = join(dir.path, "fs.img");
      await mkfs(fs, a.size, a.mkfs);
      await a.fill(dir.path, fs);
      const live = await liveInodes(fs);
      const attacked = await a.attack(fs);
      assert.ok(attacked.length > 0, "the attack touched live blocks");
      await assertRealAttack(fs, attacked, live);
      const disk = await diskOf(dir.path, fs, a.label);
      for (const pipe of a.pipe ? [false, true] : [false]) {
        const { stderr, out, raw } = await sparsify(dir.path, disk.path, pipe);
        const left = stderr.split("\n").filter((l) =>
          l.includes("left as it is")
        );
        assert.strictEqual(left.length, 1, stderr);
        assert.match(left[0], a.reason);
        assert.match(stderr, /: 0 B dropped as free space\n/);
        const compared = await assertLiveBlocksKept(
          disk.path,
          raw,
          disk.offset,
          live,
        );
        assert.ok(compared > 0);
        await qemuCompareIdentical(disk.path, out);
      }
    },
  );
}
