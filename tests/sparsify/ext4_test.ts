// The ext2/3/4 module against e2fsprogs: filesystems made by mke2fs in
// every layout the issue names (64bit, flex_bg, meta_bg, sparse_super,
// sparse_super2, BLOCK_UNINIT groups, uninit_bg and metadata_csum
// checksums, 1, 2 and 4 KiB blocks), filled and with files deleted; the
// free ranges must be exactly the free blocks dumpe2fs lists.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { freeSpaceChunks } from "../../lib/sparsify/chunks.ts";
import {
  debugfsRm,
  diskTest,
  dumpe2fsFree,
  MiB,
  mkfs,
  populate,
  sh,
} from "./_disks.ts";

const TOOLS = ["mke2fs", "debugfs", "dumpe2fs"];

/**
 * mke2fs variants: options, size, what the report must say, and whether
 * some groups are left BLOCK_UNINIT (no bitmap on disk).
 */
interface Variant {
  name: string;
  mkfs: string;
  size: number;
  detail: RegExp;
  uninit: boolean;
}

const VARIANTS: Variant[] = [
  {
    name: "ext4 4k",
    mkfs: "-t ext4 -b 4096",
    size: 160 * MiB,
    detail: /^4 KiB blocks, 2 groups, journal, 64bit, flex_bg, metadata_csum$/,
    uninit: false,
  },
  {
    name: "ext4 1k",
    mkfs: "-t ext4 -b 1024",
    size: 96 * MiB,
    detail: /^1 KiB blocks, 12 groups, journal, 64bit, flex_bg, metadata_csum$/,
    uninit: true,
  },
  {
    name: "ext4 2k, small groups",
    mkfs: "-t ext4 -b 2048 -g 2048",
    size: 64 * MiB,
    detail: /^2 KiB blocks, 16 groups, /,
    uninit: true,
  },
  {
    name: "ext4 4k, 32-byte descriptors",
    mkfs: "-t ext4 -b 4096 -O ^64bit",
    size: 160 * MiB,
    detail: /^4 KiB blocks, 2 groups, journal, flex_bg, metadata_csum$/,
    uninit: false,
  },
  {
    name: "ext4 uninit_bg (crc16 descriptors)",
    mkfs: "-t ext4 -b 1024 -O ^metadata_csum,uninit_bg",
    size: 96 * MiB,
    detail: /, flex_bg, uninit_bg$/,
    uninit: true,
  },
  {
    name: "ext4 without flex_bg",
    mkfs: "-t ext4 -b 1024 -O ^flex_bg",
    size: 96 * MiB,
    detail: /^1 KiB blocks, 12 groups, journal, 64bit, metadata_csum$/,
    uninit: true,
  },
  {
    name: "ext4 meta_bg",
    mkfs: "-t ext4 -b 1024 -O meta_bg,^resize_inode",
    size: 96 * MiB,
    detail: /, flex_bg, meta_bg, metadata_csum$/,
    uninit: true,
  },
  {
    name: "ext4 meta_bg without flex_bg",
    mkfs: "-t ext4 -b 1024 -O meta_bg,^resize_inode,^flex_bg",
    size: 96 * MiB,
    detail: /, 64bit, meta_bg, metadata_csum$/,
    uninit: true,
  },
  {
    name: "ext4 sparse_super2",
    mkfs: "-t ext4 -b 1024 -O sparse_super2",
    size: 96 * MiB,
    detail: /, sparse_super2, metadata_csum$/,
    uninit: true,
  },
  {
    name: "ext4 without sparse_super",
    mkfs: "-t ext4 -b 1024 -O ^sparse_super,^resize_inode",
    size: 64 * MiB,
    detail: /^1 KiB blocks, 8 groups, /,
    uninit: true,
  },
  {
    name: "ext4 metadata_csum_seed, inline_data",
    mkfs: "-t ext4 -O metadata_csum_seed,inline_data",
    size: 64 * MiB,
    detail: /metadata_csum$/,
    uninit: false,
  },
  {
    name: "ext4 4k, many groups, uninit_bg",
    mkfs: "-t ext4 -b 4096 -g 1024 -O ^flex_bg,^metadata_csum,uninit_bg",
    size: 160 * MiB,
    detail: /^4 KiB blocks, 40 groups, journal, 64bit, uninit_bg$/,
    uninit: true,
  },
  {
    name: "ext3",
    mkfs: "-t ext3 -b 1024",
    size: 64 * MiB,
    detail: /^1 KiB blocks, 8 groups, journal$/,
    uninit: false,
  },
  {
    name: "ext2",
    mkfs: "-t ext2 -b 4096",
    size: 64 * MiB,
    detail: /^4 KiB blocks, 1 group$/,
    uninit: false,
  },
];

for (const { name, mkfs: options, size, detail, uninit } of VARIANTS) {
  diskTest(`mapFreeSpace() lists the free blocks dumpe2fs lists: ${name}`, {
    tools: TOOLS,
  }, async () => {
    await using dir = await tempDir();
    const tree = join(dir.path, "tree");
    const files = await populate(tree, size % 97, Math.floor(size / 5));
    const image = join(dir.path, "fs.img");
    await mkfs(image, size, options.split(" "), tree);
    // Deleted files leave their old bytes in now-free blocks.
    await debugfsRm(image, files.filter((_, i) => i % 2 === 1));
    await using src = await FileSource.open(image);
    const map = await mapFreeSpace(src);
    const [region] = map.report.regions;
    assert.strictEqual(region.status, "mapped", region.reason);
    assert.match(region.detail!, detail);
    assert.strictEqual(region.found, name.split(" ")[0]);
    const ours = await Array.fromAsync(map.ranges());
    const theirs = await dumpe2fsFree(image);
    if (uninit) {
      assert.match(await sh("dumpe2fs", [image]), /BLOCK_UNINIT/);
    }
    assert.deepStrictEqual(ours, theirs);
    assert.strictEqual(
      region.freeBytes,
      theirs.reduce((n, r) => n + r.length, 0),
    );

    // The stream reads every other byte as it is, and free ranges as zeros.
    const { readable } = await freeSpaceChunks(src, { map });
    const disk = await Deno.readFile(image);
    let at = 0;
    let k = 0;
    for await (const c of readable) {
      if (c instanceof Uint8Array) {
        while (k < theirs.length && theirs[k].offset + theirs[k].length <= at) {
          k++;
        }
        assert.ok(
          k === theirs.length || theirs[k].offset >= at + c.length,
          `data chunk at ${at} overlaps a free range`,
        );
        assert.deepStrictEqual(c, disk.subarray(at, at + c.length));
        at += c.length;
      } else {
        at += c.zeros;
      }
    }
    assert.strictEqual(at, size);
  });
}
