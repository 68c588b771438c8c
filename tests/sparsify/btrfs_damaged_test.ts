// Damaged, unusual and hostile btrfs filesystems are left exactly as they
// are. Each case is a real btrfs (mkfs.btrfs, filled, files deleted through
// the kernel so that free space holds old bytes) with one thing wrong,
// edited as an attacker would: checksums recomputed, every DUP copy
// written, counts adjusted to match. `convert --sparsify` must succeed, say
// why on one stderr line, and write an image that qemu-img finds identical
// to the input: nothing was dropped.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import {
  diskTest,
  expectUntouched,
  MiB,
  patch,
  populate,
  readAt,
  sh,
} from "./_disks.ts";
import {
  type BtrfsLayout,
  btrfsLayout,
  editSuper,
  editTreeBlock,
  mkbtrfs,
  mountBtrfs,
  removeItem,
} from "./_btrfs.ts";

const TOOLS = ["mkfs.btrfs", "btrfs", "qemu-img"];
const SIZE = 160 * MiB;

/** A filled 160 MiB btrfs with half its files deleted through the kernel. */
async function baseFs(dir: string, args: string[] = []): Promise<string> {
  const tree = join(dir, "tree");
  const files = await populate(tree, 17, 50 * MiB);
  const image = join(dir, "fs.img");
  await mkbtrfs(image, SIZE, args, tree);
  await using _m = await mountBtrfs(image, join(dir, "mnt"));
  for (const [i, f] of files.entries()) {
    if (i % 2 === 0) await Deno.remove(join(dir, "mnt", f));
  }
  await sh("sync", []);
  return image;
}

/** A leaf item: its key and where its data is in the block. */
interface Item {
  index: number;
  objectid: bigint;
  type: number;
  offset: bigint;
  /** Offset of the data in the block, and its size. */
  at: number;
  size: number;
}

/** The items of a leaf, parsed here (header 0x65 bytes, item headers of 25). */
function items(block: Uint8Array): Item[] {
  const v = new DataView(block.buffer, block.byteOffset, block.length);
  const n = v.getUint32(0x60, true);
  return Array.from({ length: n }, (_, index) => {
    const h = 0x65 + index * 25;
    return {
      index,
      objectid: v.getBigUint64(h, true),
      type: block[h + 8],
      offset: v.getBigUint64(h + 9, true),
      at: 0x65 + v.getUint32(h + 17, true),
      size: v.getUint32(h + 21, true),
    };
  });
}

const EXTENT_ITEM = 168;
const METADATA_ITEM = 169;
const BLOCK_GROUP_ITEM = 192;
const CHUNK_ITEM = 228;
const EXTENT_DATA = 108;
const ROOT_ITEM = 132;

/** The leaves of a tree (by dump-tree's owner name) that hold an item `pick` accepts. */
function leavesOf(layout: BtrfsLayout, owner: string): number[] {
  return layout.treeBlocks.filter((b) => b.owner === owner && b.level === 0)
    .map((b) => b.bytenr);
}

/** Reads the first copy of a tree block. */
async function block(
  image: string,
  layout: BtrfsLayout,
  bytenr: number,
): Promise<Uint8Array> {
  const c = layout.chunks.find((c) =>
    c.logical <= bytenr && bytenr < c.logical + c.length
  )!;
  return await readAt(
    image,
    c.stripes[0] + (bytenr - c.logical),
    layout.nodesize,
  );
}

/** Finds the first item of a tree accepted by `pick`: its leaf and the item. */
async function findItem(
  image: string,
  layout: BtrfsLayout,
  owner: string,
  pick: (item: Item, items: Item[]) => boolean,
): Promise<{ leaf: number; item: Item }> {
  for (const leaf of leavesOf(layout, owner)) {
    const all = items(await block(image, layout, leaf));
    const item = all.find((i) => pick(i, all));
    if (item) return { leaf, item };
  }
  throw new Error(`no such item in the ${owner}`);
}

/** Adds `delta` to a u64 at `at` of a block. */
function addU64(b: Uint8Array, at: number, delta: number): void {
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  v.setBigUint64(at, v.getBigUint64(at, true) + BigInt(delta), true);
}

/** Adds `delta` to the used count of the block group holding logical `at`. */
async function adjustBlockGroup(
  image: string,
  layout: BtrfsLayout,
  at: number,
  delta: number,
): Promise<void> {
  const chunk = layout.chunks.find((c) =>
    c.logical <= at && at < c.logical + c.length
  )!;
  const { leaf, item } = await findItem(
    image,
    layout,
    "EXTENT_TREE",
    (i) => i.type === BLOCK_GROUP_ITEM && i.objectid === BigInt(chunk.logical),
  );
  await editTreeBlock(image, layout, leaf, (b) => {
    const bg = items(b).find((i) =>
      i.type === BLOCK_GROUP_ITEM && i.objectid === item.objectid
    )!;
    addU64(b, bg.at, delta); // used
  });
}

/** Removes the first extent item `pick` accepts (not the first of its leaf) and fixes every count. */
async function removeExtent(
  image: string,
  layout: BtrfsLayout,
  pick: (i: Item) => boolean,
): Promise<void> {
  const { leaf, item } = await findItem(
    image,
    layout,
    "EXTENT_TREE",
    (i) => i.index > 0 && pick(i),
  );
  const length = item.type === METADATA_ITEM
    ? layout.nodesize
    : Number(item.offset);
  await editTreeBlock(image, layout, leaf, (b) => {
    const now = items(b).find((i) =>
      i.objectid === item.objectid && i.type === item.type
    )!;
    removeItem(b, now.index);
  });
  await adjustBlockGroup(image, layout, Number(item.objectid), -length);
  await editSuper(image, (_, v) => {
    v.setBigUint64(0x78, v.getBigUint64(0x78, true) - BigInt(length), true);
  });
}

/** The start of a free range inside a data chunk, by btrfs-progs' extent items. */
function freeDataAddress(layout: BtrfsLayout): number {
  for (const c of layout.chunks.filter((c) => c.type.startsWith("DATA"))) {
    const end = c.logical + c.length;
    let cursor = c.logical;
    for (
      const e of layout.extents.filter((e) =>
        e.start >= c.logical && e.start < end
      )
        .sort((a, b) => a.start - b.start)
    ) {
      if (e.start > cursor) return cursor;
      cursor = Math.max(cursor, e.start + e.length);
    }
    if (cursor < end) return cursor;
  }
  throw new Error("no free space in any data chunk");
}

const CASES: Array<{
  name: string;
  reason: RegExp;
  args?: string[];
  damage: (image: string, layout: BtrfsLayout, dir: string) => Promise<void>;
}> = [
  {
    name:
      "an extent item removed so that a live file's data looks free (counts and checksums fixed)",
    reason:
      /file extent of inode \d+ at file offset \d+ in the top subvolume \(5\) points at logical \d+ \(\d+ bytes\), where the extent tree leaves free space/,
    damage: (image, layout) =>
      removeExtent(image, layout, (i) => i.type === EXTENT_ITEM),
  },
  {
    name: "a file extent pointed into free space (checksum fixed)",
    reason:
      /file extent of inode \d+ at file offset \d+ in the top subvolume \(5\) points at logical \d+ \(\d+ bytes\), where the extent tree leaves free space/,
    damage: async (image, layout) => {
      const target = freeDataAddress(layout);
      const { leaf, item } = await findItem(
        image,
        layout,
        "FS_TREE",
        (i) => i.type === EXTENT_DATA && i.size === 53,
      );
      await editTreeBlock(image, layout, leaf, (b) => {
        const v = new DataView(b.buffer, b.byteOffset, b.length);
        v.setBigUint64(item.at + 21, BigInt(target), true); // disk_bytenr
        v.setBigUint64(item.at + 29, 4096n, true); // disk_num_bytes
      });
    },
  },
  {
    name:
      "the chunk tree block's extent item removed (counts and checksums fixed)",
    reason:
      /tree block \d+ is in use but not an allocated tree block extent in the extent tree/,
    damage: (image, layout) => {
      const chunkRoot = layout.treeBlocks.find((b) =>
        b.owner === "CHUNK_TREE"
      )!;
      return removeExtent(
        image,
        layout,
        (i) =>
          i.type === METADATA_ITEM && i.objectid === BigInt(chunkRoot.bytenr),
      );
    },
  },
  {
    name:
      "a file tree block's extent item removed (counts and checksums fixed)",
    reason:
      /tree block \d+ of the top subvolume \(5\) is not an allocated tree block extent in the extent tree/,
    damage: (image, layout) => {
      const fsRoot = layout.treeBlocks.find((b) => b.owner === "FS_TREE")!;
      return removeExtent(
        image,
        layout,
        (i) => i.type === METADATA_ITEM && i.objectid === BigInt(fsRoot.bytenr),
      );
    },
  },
  {
    name: "a block group's used count edited (checksum fixed)",
    reason:
      /block group at logical \d+ counts \d+ bytes used, its extent items \d+/,
    damage: (image, layout) =>
      adjustBlockGroup(
        image,
        layout,
        layout.chunks.find((c) => c.type.startsWith("DATA"))!.logical,
        4096,
      ),
  },
  {
    name: "a second device claimed (num_devices 2)",
    reason:
      /the filesystem spans 2 devices \(num_devices\): only single-device btrfs is handled/,
    damage: (image) =>
      editSuper(image, (_, v) => v.setBigUint64(0x88, 2n, true)),
  },
  {
    name: "a chunk placed on a second device (checksum fixed)",
    reason: /chunk at logical \d+: stripe 0 is on device 2, not on device 1/,
    damage: async (image, layout) => {
      const { leaf, item } = await findItem(
        image,
        layout,
        "CHUNK_TREE",
        (i, all) => i.type === CHUNK_ITEM && i.index === all.length - 1,
      );
      await editTreeBlock(image, layout, leaf, (b) => {
        new DataView(b.buffer, b.byteOffset).setBigUint64(
          item.at + 48,
          2n,
          true,
        );
      });
    },
  },
  {
    name: "a RAID profile (checksum fixed)",
    reason: /chunk at logical \d+ has profile raid1: only single and DUP/,
    damage: async (image, layout) => {
      const data = layout.chunks.find((c) => c.type.startsWith("DATA"))!;
      const { leaf, item } = await findItem(
        image,
        layout,
        "CHUNK_TREE",
        (i) => i.type === CHUNK_ITEM && i.offset === BigInt(data.logical),
      );
      await editTreeBlock(image, layout, leaf, (b) => {
        b[item.at + 24] |= 0x10; // type |= RAID1
      });
    },
  },
  {
    name: "a tree block whose checksum does not match",
    reason:
      /tree block \d+ of the top subvolume \(5\): checksum 0x[0-9a-f]+ does not match its contents \(0x[0-9a-f]+\)/,
    damage: async (image, layout) => {
      const leaf = leavesOf(layout, "FS_TREE")[0];
      await editTreeBlock(image, layout, leaf, (b) => {
        b[b.length - 1] ^= 0x01; // the last byte of item data
      }, { keepCsum: true });
    },
  },
  {
    name: "DUP copies of a tree block that differ (each with a good checksum)",
    reason:
      /tree block \d+ of the top subvolume \(5\): its two DUP copies differ/,
    damage: async (image, layout) => {
      const { leaf, item } = await findItem(
        image,
        layout,
        "FS_TREE",
        (i) => i.type === EXTENT_DATA && i.size === 53,
      );
      await editTreeBlock(image, layout, leaf, (b) => {
        addU64(b, item.at + 29, 4096); // disk_num_bytes, second copy only
      }, { copies: [1] });
    },
  },
  {
    name:
      "a root item whose generation disagrees with its tree (checksum fixed)",
    reason:
      /tree block \d+ of the top subvolume \(5\) has generation \d+, its parent expects \d+/,
    damage: async (image, layout) => {
      const { leaf, item } = await findItem(
        image,
        layout,
        "ROOT_TREE",
        (i) => i.type === ROOT_ITEM && i.objectid === 5n,
      );
      await editTreeBlock(
        image,
        layout,
        leaf,
        (b) => addU64(b, item.at + 160, -1),
      );
    },
  },
  {
    name: "a subvolume half deleted (drop_progress set, checksum fixed)",
    reason:
      /the top subvolume \(5\) is being deleted \(its root item has a drop_progress key\)/,
    damage: async (image, layout) => {
      const { leaf, item } = await findItem(
        image,
        layout,
        "ROOT_TREE",
        (i) => i.type === ROOT_ITEM && i.objectid === 5n,
      );
      await editTreeBlock(image, layout, leaf, (b) => {
        b[item.at + 220] = 1; // drop_progress.objectid
        b[item.at + 237] = 1; // drop_level
      });
    },
  },
  {
    name: "an unknown incompat feature",
    reason: /unknown incompat feature bits 0x100000$/,
    damage: (image) =>
      editSuper(image, (_, v) => {
        v.setBigUint64(0xbc, v.getBigUint64(0xbc, true) | (1n << 20n), true);
      }),
  },
  {
    name: "a log tree awaiting replay",
    reason: /a log tree awaits replay \(log_root \d+\): not cleanly unmounted/,
    damage: (image) =>
      editSuper(
        image,
        (_, v) => v.setBigUint64(0x60, v.getBigUint64(0x50, true), true),
      ),
  },
  {
    name: "errors recorded in the superblock",
    reason: /errors recorded \(superblock flag ERROR\)/,
    damage: (image) =>
      editSuper(image, (_, v) => v.setBigUint64(0x38, 0x5n, true)),
  },
  {
    name: "a superblock checksum that does not match",
    reason: /superblock checksum 0x[0-9a-f]+ does not match its contents/,
    damage: (image) =>
      patch(image, 0x10000 + 0x12b, new TextEncoder().encode("x")), // the label
  },
  {
    name: "xxhash64 checksums",
    reason: /checksum type xxhash64 is not handled \(only crc32c\)/,
    args: ["--csum", "xxhash"],
    damage: () => Promise.resolve(),
  },
  {
    name: "a truncated image",
    reason:
      /filesystem of 167772160 bytes is larger than its partition of 125829120 bytes: truncated/,
    damage: async (image) => {
      using f = await Deno.open(image, { write: true });
      await f.truncate(120 * MiB);
    },
  },
];

for (const c of CASES) {
  diskTest(
    `convert --sparsify leaves a btrfs with ${c.name} as it is`,
    { tools: TOOLS, loop: true },
    async () => {
      await using dir = await tempDir();
      const image = await baseFs(dir.path, c.args);
      const layout = await btrfsLayout(image);
      await c.damage(image, layout, dir.path);
      await expectUntouched(dir.path, image, c.reason, "btrfs");
    },
  );
}

diskTest(
  "convert --sparsify maps the undamaged btrfs the damaged cases start from",
  { tools: TOOLS, loop: true },
  async () => {
    await using dir = await tempDir();
    const image = await baseFs(dir.path);
    const out = join(dir.path, "out.qcow2");
    const r = await runCli(["convert", "--sparsify", image, out]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /: btrfs \(16 KiB nodes, .*\): [\d.]+ MiB free, dropped\n/,
    );
  },
);
