// Damaged and unusual filesystems are left exactly as they are: each case
// is a real filesystem (mke2fs, filled, files deleted so that free blocks
// hold old bytes) with one thing wrong. `convert --sparsify` must succeed,
// say why on one stderr line, and write an image that qemu-img finds
// identical to the input: nothing was dropped.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import {
  blank,
  debugfsRm,
  debugfsSet,
  diskTest,
  expectUntouched,
  MiB,
  mkfs,
  patch,
  populate,
  readAt,
  sh,
  writeInto,
} from "./_disks.ts";

const TOOLS = ["mke2fs", "debugfs", "dumpe2fs", "qemu-img"];

/** A filled 64 MiB ext4 (4 KiB blocks, 4 groups of 16 MiB) with deleted files. */
async function baseFs(
  dir: string,
  args: string[] = ["-t", "ext4"],
): Promise<string> {
  const tree = join(dir, "tree");
  const files = await populate(tree, 7, 20 * MiB);
  const image = join(dir, "fs.img");
  await mkfs(
    image,
    64 * MiB,
    ["-b", "4096", "-g", "4096", ...args],
    tree,
  );
  await debugfsRm(image, files.filter((_, i) => i % 2 === 0));
  return image;
}

/** A field of the dumpe2fs header ("Block bitmap at 65" of group 0, and so on). */
async function dumpField(image: string, re: RegExp): Promise<number> {
  const m = re.exec(await sh("dumpe2fs", [image]));
  assert.ok(m, `dumpe2fs shows ${re}`);
  return Number(m[1]);
}

const CASES: Array<{
  name: string;
  reason: RegExp;
  args?: string[];
  damage: (image: string, dir: string) => Promise<string | void>;
}> = [
  {
    name: "a superblock checksum that does not match",
    reason:
      /ext4 left as it is: superblock checksum 0x[0-9a-f]+ does not match/,
    damage: (image) => patch(image, 1024 + 0x78, new TextEncoder().encode("x")), // s_volume_name
  },
  {
    name: "a group descriptor checksum that does not match",
    reason: /group descriptor 2 checksum 0x[0-9a-f]+ does not match/,
    // bg_used_dirs_count of group 2: descriptors at block 1, 64 bytes each.
    damage: async (image) => {
      const at = 4096 + 2 * 64 + 0x10;
      const [b] = await readAt(image, at, 1);
      await patch(image, at, Uint8Array.of(b ^ 0x40));
    },
  },
  {
    name: "a block bitmap checksum that does not match",
    reason:
      /block bitmap of group 0 \(block \d+\) checksum 0x[0-9a-f]+ does not match/,
    damage: async (image) => {
      const block = await dumpField(
        image,
        /^Group 0:[^]*?Block bitmap at (\d+)/m,
      );
      // Mark the last block of group 0 used: its bitmap no longer matches.
      const at = block * 4096 + 4095 / 8;
      const [b] = await readAt(image, Math.floor(at), 1);
      await patch(image, Math.floor(at), Uint8Array.of(b ^ 0x80));
    },
  },
  {
    name: "a filesystem not cleanly unmounted",
    reason: /not cleanly unmounted \(s_state 0x0\)/,
    damage: (image) => debugfsSet(image, "ssv state 0"),
  },
  {
    name: "a journal that needs recovery",
    reason: /not cleanly unmounted: the journal needs recovery/,
    damage: (image) => debugfsSet(image, "feature needs_recovery"),
  },
  {
    name: "errors recorded",
    reason: /errors recorded \(s_state 0x3\)/,
    damage: (image) => debugfsSet(image, "ssv state 3"),
  },
  {
    name: "an unknown incompat feature",
    reason: /unknown incompat feature bits 0x10000000$/,
    damage: async (image) => {
      const raw = await readAt(image, 1024 + 0x60, 4);
      const incompat = new DataView(raw.buffer).getUint32(0, true);
      await debugfsSet(
        image,
        `ssv feature_incompat 0x${(incompat | 0x10000000).toString(16)}`,
      );
    },
  },
  {
    name: "an unsupported feature (bigalloc)",
    reason: /feature bigalloc is not handled/,
    args: ["-t", "ext4", "-O", "bigalloc", "-C", "16384"],
    damage: () => Promise.resolve(),
  },
  {
    name: "a block bitmap pointing outside the filesystem",
    reason:
      /block bitmap of group 1 at block 99999999 lies outside the filesystem \(blocks 0-16383\)/,
    damage: (image) =>
      debugfsSet(
        image,
        "set_bg 1 block_bitmap 99999999",
        "set_bg 1 checksum calc",
      ),
  },
  {
    name: "a block bitmap pointing at an inode table",
    reason: /metadata at block \d+ overlaps other metadata/,
    damage: async (image) => {
      const table = await dumpField(
        image,
        /^Group 0:[^]*?Inode table at (\d+)/m,
      );
      await debugfsSet(
        image,
        `set_bg 1 block_bitmap ${table}`,
        "set_bg 1 checksum calc",
      );
    },
  },
  {
    name: "a free block count that disagrees with the bitmap",
    reason:
      /block bitmap of group 3 has \d+ free blocks, its descriptor counts 7/,
    damage: async (image) => {
      await debugfsSet(
        image,
        "set_bg 3 free_blocks_count 7",
        "set_bg 3 checksum calc",
      );
    },
  },
  {
    name: "a bitmap marking an inode table block free (ext2, no checksums)",
    reason: /block bitmap of group 0 marks metadata block \d+ free/,
    args: ["-t", "ext2"],
    damage: async (image) => {
      const bitmap = await dumpField(
        image,
        /^Group 0:[^]*?Block bitmap at (\d+)/m,
      );
      const table = await dumpField(
        image,
        /^Group 0:[^]*?Inode table at (\d+)/m,
      );
      const at = bitmap * 4096 + (table >> 3);
      const [b] = await readAt(image, at, 1);
      await patch(image, at, Uint8Array.of(b & ~(1 << (table & 7))));
    },
  },
  {
    name: "a truncated image",
    reason:
      /filesystem of 67108864 bytes is larger than its partition of 50331648 bytes: truncated/,
    damage: async (image) => {
      using f = await Deno.open(image, { write: true });
      await f.truncate(48 * MiB);
    },
  },
  {
    name: "a GPT partition shorter than its filesystem",
    reason:
      /partition 1 \(Linux filesystem, 40\.0 MiB at 1\.00 MiB\): ext4 left as it is: filesystem of 67108864 bytes is larger than its partition of 41943040 bytes: truncated/,
    damage: async (image, dir) => {
      const disk = join(dir, "disk.img");
      await blank(disk, 128 * MiB);
      await sh("sfdisk", ["-q", disk], { stdin: "label: gpt\n,40M,L\n" });
      await writeInto(disk, 1 * MiB, image); // the 64 MiB filesystem runs on past it
      return disk;
    },
  },
];

for (const c of CASES) {
  diskTest(
    `convert --sparsify leaves ${c.name} as it is`,
    { tools: c.name.includes("GPT") ? [...TOOLS, "sfdisk"] : TOOLS },
    async () => {
      await using dir = await tempDir();
      const image = await baseFs(dir.path, c.args);
      const src = (await c.damage(image, dir.path)) ?? image;
      await expectUntouched(dir.path, src, c.reason);
    },
  );
}

diskTest(
  "convert --sparsify leaves a swap area holding a hibernation image as it is",
  { tools: ["mkswap", "qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const swap = join(dir.path, "swap.img");
    await Deno.writeFile(swap, new Uint8Array(16 * MiB).fill(0x6b));
    await sh("mkswap", ["-q", swap]);
    await patch(swap, 4096 - 10, new TextEncoder().encode("S1SUSPEND\0"));
    await expectUntouched(
      dir.path,
      swap,
      /disk \(16\.0 MiB at 0 B\): swap left as it is: holds a hibernation image \(signature S1SUSPEND\)/,
    );
  },
);
