/**
 * The independent check of btrfs free space: everything the filesystem
 * reads must lie outside it. From the root tree, every tree a ROOT_ITEM
 * names is walked (subvolumes and snapshots, the checksum, UUID, quota and
 * free space trees, the data relocation tree...); a block that several
 * trees share (snapshots) is walked once. Then:
 *
 * - every tree block read, in these trees and in the chunk, device, extent
 *   and block group trees read before, must be where the extent tree has a
 *   tree block extent (an EXTENT_ITEM or METADATA_ITEM starting at it);
 * - every file extent (EXTENT_DATA, regular or preallocated) must lie
 *   inside one data chunk and touch no free range;
 * - every data checksum item (EXTENT_CSUM) must cover no free range.
 *
 * Any disagreement refuses the filesystem.
 *
 * ```text
 * ROOT_ITEM (160-byte inode item first): 160 generation u64,
 *   176 bytenr u64, 216 refs u32, 220 drop_progress key, 237 drop_level u8,
 *   238 level u8
 * EXTENT_DATA: 0 generation u64, 8 ram_bytes u64, 16 compression u8,
 *   17 encryption u8, 18 other_encoding u16, 20 type u8 (0 inline, 1
 *   regular, 2 preallocated), then for 1 and 2: 21 disk_bytenr u64,
 *   29 disk_num_bytes u64, 37 offset u64, 45 num_bytes u64
 * EXTENT_CSUM key (-10, 128, logical): one checksum per sector from there
 * ```
 *
 * @module
 */

import { Refusal } from "../_region.ts";
import { type ChunkMap, chunkTypeText } from "./chunks.ts";
import {
  BG,
  FILE_EXTENT,
  KEY,
  KEY_SIZE,
  TREE,
  u64,
  u64Bits,
} from "./format.ts";
import type { ExtentSpace, MetadataBitmap } from "./space.ts";
import type { BtrfsSuperblock } from "./superblock.ts";
import {
  type BlockReader,
  itemAt,
  itemData,
  type TreeBlock,
  type TreeRoot,
  walkTree,
} from "./tree.ts";

/** Offsets in a ROOT_ITEM. */
export const ROOT_ITEM = {
  GENERATION: 160,
  BYTENR: 176,
  DROP_PROGRESS: 220,
  DROP_LEVEL: 237,
  LEVEL: 238,
  /** The size of the oldest root items, which hold every field read here. */
  MIN_SIZE: 239,
} as const;
/** Bytes of a regular or preallocated file extent item. */
const FILE_EXTENT_SIZE = 53;
/** Offset of the type, and of disk_bytenr and disk_num_bytes, in it. */
const FILE_EXTENT_TYPE = 20;
const FILE_EXTENT_DISK_BYTENR = 21;
const FILE_EXTENT_DISK_BYTES = 29;
/** Bytes of a crc32c in a checksum item. */
const CRC32C_SIZE = 4;
/** `EXTENT_CSUM_OBJECTID` (-10 as a u64). */
const EXTENT_CSUM_OBJECTID = (1n << 64n) - 10n;
/** Objectids of the relocation trees (-8, -9), which hold file extents like a subvolume. */
const TREE_RELOC = (1n << 64n) - 8n;
const DATA_RELOC_TREE = (1n << 64n) - 9n;
/** Subvolume ids: 256 up to -256. */
const FIRST_FREE_OBJECTID = 256n;
const LAST_FREE_OBJECTID = (1n << 64n) - 256n;

/** Names of the trees with fixed ids. */
const TREE_NAMES: Record<string, string> = {
  "1": "root tree",
  "2": "extent tree",
  "3": "chunk tree",
  "4": "device tree",
  "5": "top subvolume (5)",
  "7": "checksum tree",
  "8": "quota tree",
  "9": "UUID tree",
  "10": "free space tree",
  "11": "block group tree",
  [String(TREE_RELOC)]: "relocation tree",
  [String(DATA_RELOC_TREE)]: "data relocation tree",
};

/** Whether tree `id` is a subvolume (or snapshot) of the filesystem. */
function isSubvolume(id: bigint): boolean {
  return id === BigInt(TREE.FS) ||
    (id >= FIRST_FREE_OBJECTID && id <= LAST_FREE_OBJECTID);
}

/** Whether tree `id` holds files and may share blocks with other trees. */
function isShared(id: bigint): boolean {
  return isSubvolume(id) || id === TREE_RELOC || id === DATA_RELOC_TREE;
}

/**
 * The tree a ROOT_ITEM names, checked: its root block's address, level
 * and generation, and that it is not half deleted.
 *
 * @param leaf The leaf holding the item.
 * @param i The item.
 * @returns The tree.
 * @throws {Refusal} When the item is malformed or its tree is being dropped.
 */
export function rootOf(leaf: TreeBlock, i: number): TreeRoot {
  const k = itemAt(i);
  const id = u64Bits(leaf.view, k);
  const name = TREE_NAMES[String(id)] ??
    (isSubvolume(id) ? `subvolume ${id}` : `tree ${id}`);
  const { at, size } = itemData(leaf, i);
  if (size < ROOT_ITEM.MIN_SIZE) {
    throw new Refusal(`root item of the ${name}: ${size} bytes is too short`);
  }
  const b = leaf.bytes;
  for (let j = 0; j < KEY_SIZE; j++) {
    if (b[at + ROOT_ITEM.DROP_PROGRESS + j] !== 0) {
      throw new Refusal(
        `the ${name} is being deleted (its root item has a drop_progress key)`,
      );
    }
  }
  return {
    id,
    name,
    bytenr: u64(
      leaf.view,
      at + ROOT_ITEM.BYTENR,
      `root item of the ${name}: bytenr`,
    ),
    level: b[at + ROOT_ITEM.LEVEL],
    generation: u64(
      leaf.view,
      at + ROOT_ITEM.GENERATION,
      `root item of the ${name}: generation`,
    ),
    system: false,
    owner: isShared(id) ? undefined : id,
  };
}

/** What the walk found, for the report. */
export interface ReferenceCount {
  /** Subvolumes and snapshots walked (the top subvolume included). */
  subvolumes: number;
}

/** What the reference walk needs. */
export interface ReferenceInput {
  reader: BlockReader;
  sb: BtrfsSuperblock;
  map: ChunkMap;
  space: ExtentSpace;
  /** Tree blocks read so far (chunk, device, extent, block group trees). */
  seen: MetadataBitmap;
  /** The root tree. */
  rootTree: TreeRoot;
}

/**
 * Walks every tree from the root tree and checks what they reference
 * against the free ranges, as described above.
 *
 * @param input The filesystem read so far.
 * @returns What was walked.
 * @throws {Refusal} When anything referenced lies in free space.
 */
export async function checkReferences(
  input: ReferenceInput,
): Promise<ReferenceCount> {
  const { reader, map, space, seen, sb } = input;
  const count: ReferenceCount = { subvolumes: 0 };
  const allocated = (b: TreeBlock, tree: TreeRoot) => {
    if (!space.treeBlocks.has(b.bytenr)) {
      throw new Refusal(
        `tree block ${b.bytenr} of the ${tree.name} is not an allocated tree block extent in the extent tree`,
      );
    }
  };

  const fileExtent = (leaf: TreeBlock, i: number, tree: TreeRoot) => {
    const k = itemAt(i);
    const { at, size } = itemData(leaf, i);
    const where = () =>
      `file extent of inode ${u64Bits(leaf.view, k)} at file offset ${
        u64Bits(leaf.view, k + 9)
      } in the ${tree.name}`;
    if (size <= FILE_EXTENT_TYPE) {
      throw new Refusal(`${where()}: item of ${size} bytes is too short`);
    }
    const type = leaf.bytes[at + FILE_EXTENT_TYPE];
    if (type === FILE_EXTENT.INLINE) return;
    if (type !== FILE_EXTENT.REG && type !== FILE_EXTENT.PREALLOC) {
      throw new Refusal(`${where()} has unknown type ${type}`);
    }
    if (size !== FILE_EXTENT_SIZE) {
      throw new Refusal(
        `${where()}: item of ${size} bytes, not ${FILE_EXTENT_SIZE}`,
      );
    }
    const disk = u64(
      leaf.view,
      at + FILE_EXTENT_DISK_BYTENR,
      `${where()}: disk_bytenr`,
    );
    if (disk === 0) return; // a hole
    const bytes = u64(
      leaf.view,
      at + FILE_EXTENT_DISK_BYTES,
      `${where()}: disk_num_bytes`,
    );
    const c = map.find(disk, bytes);
    if (bytes === 0 || c < 0 || !(map.type[c] & BG.DATA)) {
      throw new Refusal(
        `${where()} points at logical ${disk} (${bytes} bytes), which is not inside one data chunk${
          c >= 0 ? ` (a ${chunkTypeText(map.type[c])} one)` : ""
        }`,
      );
    }
    if (space.gaps.intersects(disk, bytes)) {
      throw new Refusal(
        `${where()} points at logical ${disk} (${bytes} bytes), where the extent tree leaves free space`,
      );
    }
  };

  const checksums = (leaf: TreeBlock, i: number, tree: TreeRoot) => {
    const k = itemAt(i);
    if (u64Bits(leaf.view, k) !== EXTENT_CSUM_OBJECTID) {
      throw new Refusal(
        `checksum item in the ${tree.name} has objectid ${
          u64Bits(leaf.view, k)
        }`,
      );
    }
    const start = u64(leaf.view, k + 9, "checksum item address");
    const { size } = itemData(leaf, i);
    if (size === 0 || size % CRC32C_SIZE !== 0) {
      throw new Refusal(
        `checksum item at logical ${start}: ${size} bytes is not a whole number of checksums`,
      );
    }
    const bytes = (size / CRC32C_SIZE) * sb.sectorsize;
    if (space.gaps.intersects(start, bytes)) {
      throw new Refusal(
        `checksums for logical ${start} (${bytes} bytes) in the ${tree.name} cover free space`,
      );
    }
  };

  async function walk(tree: TreeRoot, inRootTree: boolean): Promise<void> {
    await walkTree(reader, tree, {
      seen,
      skipSeen: true,
      onBlock: (b) => allocated(b, tree),
      onLeaf: async (leaf) => {
        for (let i = 0; i < leaf.nritems; i++) {
          const type = leaf.bytes[itemAt(i) + 8];
          if (type === KEY.EXTENT_DATA) fileExtent(leaf, i, tree);
          else if (type === KEY.EXTENT_CSUM) checksums(leaf, i, tree);
          else if (type === KEY.ROOT_ITEM) {
            if (!inRootTree) {
              throw new Refusal(`the ${tree.name} holds a root item`);
            }
            const sub = rootOf(leaf, i);
            if (isSubvolume(sub.id!)) count.subvolumes++;
            await walk(sub, false);
          }
        }
      },
    });
  }
  await walk(input.rootTree, true);

  const stray = seen.firstNotIn(space.treeBlocks);
  if (stray >= 0) {
    throw new Refusal(
      `tree block ${stray} is in use but not an allocated tree block extent in the extent tree`,
    );
  }
  return count;
}
