/**
 * The btrfs module (single device): free space from the chunk, device and
 * extent trees, cross-checked against everything the filesystem's trees
 * reference. The order of reading:
 *
 * 1. the superblock (checksum, geometry, features, one device, no log to
 *    replay) and its system chunk array, which maps the chunk tree;
 * 2. the chunk tree: the one DEV_ITEM (this device, as the superblock
 *    describes it) and every chunk (SINGLE or DUP; the system chunk array's
 *    chunks among them, identical);
 * 3. the root tree, for the roots of the extent, device and (when present)
 *    block group trees;
 * 4. the device tree: dev extents matching the chunks' copies one to one;
 * 5. the extent tree (and block group tree): free ranges inside each block
 *    group, with every count checked (see space.ts);
 * 6. every tree from the root tree, against the free ranges (see refs.ts).
 *
 * Every tree block is checked as tree.ts says (checksum, place, fsid,
 * level, generation, layout, key order, DUP copies identical).
 *
 * @module
 */

import { Refusal, type RegionReader } from "../_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "../filesystem.ts";
import {
  type Chunk,
  ChunkMap,
  chunkTypeText,
  DEV_EXTENT_SIZE,
  DevExtentCollector,
  type DevExtents,
  MAX_CHUNKS,
  parseChunk,
  parseSysChunkArray,
} from "./chunks.ts";
import {
  DEV_ITEMS_OBJECTID,
  FIRST_CHUNK_TREE_OBJECTID,
  KEY,
  KEY_SIZE,
  sameBytes,
  SUPER_OFFSET,
  SUPER_SIZE,
  TREE,
  u64,
  u64Bits,
} from "./format.ts";
import { checkReferences, type ReferenceCount, rootOf } from "./refs.ts";
import {
  ExtentScanner,
  type ExtentSpace,
  freeRanges,
  MetadataBitmap,
} from "./space.ts";
import {
  type BtrfsSuperblock,
  COMPAT_RO,
  DEV_ITEM,
  isBtrfs,
  parseBtrfsSuperblock,
} from "./superblock.ts";
import {
  BlockReader,
  findItem,
  itemAt,
  itemData,
  type TreeBlock,
  type TreeRoot,
  walkTree,
} from "./tree.ts";

/** `replace_state` values of a device replace that has not ended. */
const REPLACE_RUNNING = [1n, 2n];
/** Offset of `replace_state` in a DEV_REPLACE item. */
const REPLACE_STATE = 32;

/** A checked filesystem: what the free ranges are listed from. */
interface BtrfsFs {
  sb: BtrfsSuperblock;
  map: ChunkMap;
  dev: DevExtents;
  space: ExtentSpace;
  refs: ReferenceCount;
}

/** Checks the chunk tree's one DEV_ITEM against the superblock's copy. */
function checkDevItem(leaf: TreeBlock, i: number, sb: BtrfsSuperblock): void {
  const k = itemAt(i);
  const { at, size } = itemData(leaf, i);
  const devid = u64Bits(leaf.view, k + 9);
  if (devid !== BigInt(sb.devid)) {
    throw new Refusal(
      `the chunk tree names device ${devid} besides device ${sb.devid}: only single-device btrfs is handled`,
    );
  }
  if (size !== DEV_ITEM.SIZE) {
    throw new Refusal(`device item of ${size} bytes, not ${DEV_ITEM.SIZE}`);
  }
  const total = u64(
    leaf.view,
    at + DEV_ITEM.TOTAL_BYTES,
    "device item total_bytes",
  );
  const used = u64(
    leaf.view,
    at + DEV_ITEM.BYTES_USED,
    "device item bytes_used",
  );
  if (
    u64Bits(leaf.view, at + DEV_ITEM.DEVID) !== devid ||
    total !== sb.devTotalBytes || used !== sb.devBytesUsed ||
    !sameBytes(leaf.bytes, at + DEV_ITEM.UUID, sb.devUuid, 0, 16) ||
    !sameBytes(leaf.bytes, at + DEV_ITEM.FSID, sb.metadataFsid, 0, 16)
  ) {
    throw new Refusal(
      `device item in the chunk tree (total_bytes ${total}, bytes_used ${used}) disagrees with the superblock's (${sb.devTotalBytes}, ${sb.devBytesUsed})`,
    );
  }
}

/** Reads the chunk tree through the system chunk array: every chunk. */
async function readChunkTree(
  reader: BlockReader,
  sb: BtrfsSuperblock,
  sys: Chunk[],
  blocks: number[],
): Promise<ChunkMap> {
  const chunks: Chunk[] = [];
  let devItems = 0;
  await walkTree(reader, {
    name: "chunk tree",
    bytenr: sb.chunkRoot,
    level: sb.chunkRootLevel,
    generation: sb.chunkRootGeneration,
    system: true,
    owner: BigInt(TREE.CHUNK),
  }, {
    onBlock: (b) => blocks.push(b.bytenr),
    onLeaf: (leaf) => {
      for (let i = 0; i < leaf.nritems; i++) {
        const k = itemAt(i);
        const objectid = u64Bits(leaf.view, k);
        const type = leaf.bytes[k + 8];
        if (type === KEY.DEV_ITEM && objectid === BigInt(DEV_ITEMS_OBJECTID)) {
          checkDevItem(leaf, i, sb);
          devItems++;
        } else if (
          type === KEY.CHUNK_ITEM &&
          objectid === BigInt(FIRST_CHUNK_TREE_OBJECTID)
        ) {
          if (chunks.length === MAX_CHUNKS) {
            throw new Refusal(`more than ${MAX_CHUNKS} chunks`);
          }
          const { at, size } = itemData(leaf, i);
          const logical = u64(leaf.view, k + 9, "chunk address");
          const { chunk, size: used } = parseChunk(
            leaf.bytes,
            at,
            size,
            logical,
            sb,
          );
          if (used !== size) {
            throw new Refusal(
              `chunk at logical ${logical}: item of ${size} bytes holds ${used}`,
            );
          }
          chunks.push(chunk);
        } else {
          throw new Refusal(
            `chunk tree leaf ${leaf.bytenr} holds an item of unexpected type ${type} (objectid ${objectid})`,
          );
        }
      }
    },
  });
  if (devItems !== 1) {
    throw new Refusal(`the chunk tree holds ${devItems} device items, not 1`);
  }
  const map = new ChunkMap(chunks);
  for (const s of sys) {
    const i = map.find(s.logical, s.length);
    const c = i >= 0 ? map.chunk(i) : undefined;
    if (
      !c || c.logical !== s.logical || c.length !== s.length ||
      c.type !== s.type || c.stripes.join() !== s.stripes.join()
    ) {
      throw new Refusal(
        `system chunk at logical ${s.logical} in the superblock is not the chunk tree's`,
      );
    }
  }
  return map;
}

/** Finds the root of tree `id` in the root tree. */
async function treeRoot(
  reader: BlockReader,
  rootTree: TreeRoot,
  id: number,
): Promise<TreeRoot | undefined> {
  const key = new Uint8Array(KEY_SIZE);
  const v = new DataView(key.buffer);
  v.setBigUint64(0, BigInt(id), true);
  key[8] = KEY.ROOT_ITEM;
  const found = await findItem(reader, rootTree, key);
  return found ? rootOf(found.leaf, found.index) : undefined;
}

/** Reads the device tree: the dev extents, checked against the chunks. */
async function readDevTree(
  reader: BlockReader,
  tree: TreeRoot,
  sb: BtrfsSuperblock,
  map: ChunkMap,
  seen: MetadataBitmap,
): Promise<DevExtents> {
  const dev = new DevExtentCollector(map, sb);
  await walkTree(reader, tree, {
    seen,
    onLeaf: (leaf) => {
      for (let i = 0; i < leaf.nritems; i++) {
        const k = itemAt(i);
        const type = leaf.bytes[k + 8];
        const { at, size } = itemData(leaf, i);
        if (type === KEY.DEV_EXTENT) {
          const where = `dev extent at device byte ${
            u64Bits(leaf.view, k + 9)
          }`;
          if (u64Bits(leaf.view, k) !== BigInt(sb.devid)) {
            throw new Refusal(
              `${where} is on device ${u64Bits(leaf.view, k)}, not ${sb.devid}`,
            );
          }
          if (size !== DEV_EXTENT_SIZE) {
            throw new Refusal(`${where}: item of ${size} bytes`);
          }
          // Its chunk_tree_uuid is not compared: btrfs-convert leaves some
          // zero, and the kernel does not read it.
          if (
            u64Bits(leaf.view, at) !== BigInt(TREE.CHUNK) ||
            u64Bits(leaf.view, at + 8) !== BigInt(FIRST_CHUNK_TREE_OBJECTID)
          ) {
            throw new Refusal(`${where} names another chunk tree`);
          }
          dev.add(
            u64(leaf.view, k + 9, "dev extent offset"),
            u64(leaf.view, at + 24, `${where}: length`),
            u64(leaf.view, at + 16, `${where}: chunk_offset`),
          );
        } else if (type === KEY.DEV_REPLACE) {
          if (size < REPLACE_STATE + 8) {
            throw new Refusal(`device replace item of ${size} bytes`);
          }
          const state = u64Bits(leaf.view, at + REPLACE_STATE);
          if (REPLACE_RUNNING.includes(state)) {
            throw new Refusal("a device replace is in progress");
          }
        } else if (type !== KEY.PERSISTENT_ITEM) {
          throw new Refusal(
            `device tree leaf ${leaf.bytenr} holds an item of unexpected type ${type}`,
          );
        }
      }
    },
  });
  return dev.finish();
}

async function loadFs(region: RegionReader): Promise<BtrfsFs> {
  const raw = await region.read(SUPER_OFFSET, SUPER_SIZE, "superblock");
  const sb = parseBtrfsSuperblock(raw, region.length);
  const sys = parseSysChunkArray(sb);
  const reader = new BlockReader(region, sb, new ChunkMap(sys));
  const chunkBlocks: number[] = [];
  const map = await readChunkTree(reader, sb, sys, chunkBlocks);
  reader.setMap(map);
  const seen = new MetadataBitmap(map, sb.sectorsize);
  for (const b of chunkBlocks) seen.add(b);

  const rootTree: TreeRoot = {
    name: "root tree",
    bytenr: sb.root,
    level: sb.rootLevel,
    generation: sb.generation,
    system: false,
    owner: BigInt(TREE.ROOT),
  };
  const need = async (id: number, name: string) => {
    const t = await treeRoot(reader, rootTree, id);
    if (!t) throw new Refusal(`the root tree has no ${name}`);
    return t;
  };
  const extentTree = await need(TREE.EXTENT, "extent tree");
  const devTree = await need(TREE.DEV, "device tree");
  const bgInTree = (sb.compatRo & COMPAT_RO.BLOCK_GROUP_TREE) !== 0n;
  const bgTree = bgInTree
    ? await need(TREE.BLOCK_GROUP, "block group tree")
    : undefined;

  const dev = await readDevTree(reader, devTree, sb, map, seen);
  const scanner = new ExtentScanner(map, sb);
  await walkTree(reader, extentTree, {
    seen,
    onLeaf: (leaf) => scanner.extentLeaf(leaf, !bgInTree),
  });
  if (bgTree) {
    await walkTree(reader, bgTree, {
      seen,
      onLeaf: (leaf) => scanner.blockGroupLeaf(leaf),
    });
  }
  const space = scanner.finish();
  const refs = await checkReferences({
    reader,
    sb,
    map,
    space,
    seen,
    rootTree,
  });
  return { sb, map, dev, space, refs };
}

function describe(fs: BtrfsFs): string {
  const { sb, map, space, refs } = fs;
  const kinds = new Map<string, number>();
  for (let i = 0; i < map.count; i++) {
    const t = chunkTypeText(map.type[i]);
    kinds.set(t, (kinds.get(t) ?? 0) + 1);
  }
  const size = (n: number) => n >= 1024 ? `${n / 1024} KiB` : `${n} B`;
  const features = [
    [sb.compatRo & COMPAT_RO.FREE_SPACE_TREE, "free-space-tree"],
    [sb.compatRo & COMPAT_RO.BLOCK_GROUP_TREE, "block-group-tree"],
  ].filter(([on]) => on).map(([, name]) => name as string);
  return [
    `${size(sb.nodesize)} nodes`,
    `${map.count} chunk${map.count === 1 ? "" : "s"} (${
      [...kinds].map(([k, n]) => n === 1 ? k : `${n} ${k}`).join(", ")
    })`,
    `${refs.subvolumes} subvolume${refs.subvolumes === 1 ? "" : "s"}`,
    ...features,
    ...(space.gaps.forgotten > 0
      ? [`${space.gaps.forgotten} small free ranges kept`]
      : []),
  ].join(", ");
}

async function analyzeBtrfs(region: RegionReader): Promise<FilesystemAnalysis> {
  try {
    const fs = await loadFs(region);
    let free = 0;
    for (const r of freeRanges(fs.sb, fs.map, fs.dev, fs.space.gaps)) {
      free += r.length;
    }
    return {
      found: "btrfs",
      detail: describe(fs),
      freeBytes: free,
      ranges: async function* () {
        yield* freeRanges(fs.sb, fs.map, fs.dev, fs.space.gaps);
      },
    };
  } catch (err) {
    if (err instanceof Refusal) err.found ??= "btrfs";
    throw err;
  }
}

/** btrfs on one device: free space by the extent tree, every reference checked. */
export const btrfsModule: FilesystemModule = {
  name: "btrfs",
  headBytes: SUPER_OFFSET + SUPER_SIZE,
  detect: isBtrfs,
  analyze: analyzeBtrfs,
};
