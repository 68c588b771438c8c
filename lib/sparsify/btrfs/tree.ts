/**
 * btrfs tree blocks: reading one by its logical address (through the
 * chunk map, both DUP copies, which must be identical), checking it, and
 * walking or searching a tree. A block is trusted only when its checksum
 * matches, it says it is where it was read from, carries this
 * filesystem's fsid and chunk tree UUID, its level and generation are the
 * ones its parent (or root item) expects, its items or pointers fit the
 * block in the kernel's packed layout, and its keys are strictly
 * increasing and inside the range its parent gives it. So a walk visits
 * each block of a tree at most once, whatever the pointers say.
 *
 * @module
 */

import { hex, Refusal, type RegionReader } from "../_region.ts";
import { type ChunkMap, chunkTypeText } from "./chunks.ts";
import {
  BG,
  compareKeys,
  HEADER,
  HEADER_FLAG_RELOC,
  HEADER_FLAG_WRITTEN,
  ITEM_SIZE,
  KEY_SIZE,
  keyText,
  MAX_LEVEL,
  PTR_SIZE,
  sameBytes,
  u64,
  u64Bits,
} from "./format.ts";
import { blockChecksum, type BtrfsSuperblock } from "./superblock.ts";

/** A checked tree block. */
export interface TreeBlock {
  /** Logical address. */
  bytenr: number;
  level: number;
  generation: number;
  /** Items (leaf) or pointers (node). */
  nritems: number;
  bytes: Uint8Array;
  view: DataView;
}

/** Offset of item `i`'s key in a leaf (its header follows the key). */
export function itemAt(i: number): number {
  return HEADER.SIZE + i * ITEM_SIZE;
}

/** Where item `i`'s data is in a leaf, and its size. */
export function itemData(
  b: TreeBlock,
  i: number,
): { at: number; size: number } {
  const h = itemAt(i);
  return {
    at: HEADER.SIZE + b.view.getUint32(h + KEY_SIZE, true),
    size: b.view.getUint32(h + KEY_SIZE + 4, true),
  };
}

/** Offset of pointer `i`'s key in a node (block pointer and generation follow). */
export function ptrAt(i: number): number {
  return HEADER.SIZE + i * PTR_SIZE;
}

/** A tree to read: its name for messages, root block, and kind. */
export interface TreeRoot {
  /** `extent tree`, `subvolume 257`. */
  name: string;
  /** Logical address, level and generation of the root block. */
  bytenr: number;
  level: number;
  generation: number;
  /** The chunk tree lives in system chunks; every other tree in metadata chunks. */
  system: boolean;
  /** The tree's id (the objectid of its root item), when it has one. */
  id?: bigint;
  /**
   * The owner every block must carry (trees that are never shared), or
   * undefined for subvolume trees, whose blocks snapshots share.
   */
  owner?: bigint;
}

/**
 * Reads tree blocks by logical address and checks each. Counts its reads
 * against a budget set by the size of the metadata and system chunks, so
 * that no metadata can make it read without end.
 */
export class BlockReader {
  readonly #region: RegionReader;
  readonly #sb: BtrfsSuperblock;
  #map: ChunkMap;
  #reads = 0;
  #maxReads: number;
  /** The chunk tree UUID every header must carry, once the chunk root is read. */
  chunkTreeUuid: Uint8Array | undefined;

  /**
   * Creates the reader.
   *
   * @param region The partition.
   * @param sb The superblock.
   * @param map The chunks known so far (the system chunk array at first).
   */
  constructor(region: RegionReader, sb: BtrfsSuperblock, map: ChunkMap) {
    this.#region = region;
    this.#sb = sb;
    this.#map = map;
    this.#maxReads = this.#budget();
  }

  /** Switches to the full chunk map (after the chunk tree is read). */
  setMap(map: ChunkMap): void {
    this.#map = map;
    this.#maxReads = this.#budget();
  }

  /**
   * Blocks that may be read in all: every pass reads a block at most a few
   * times, and no more blocks fit the metadata and system chunks than
   * their size in sectors.
   */
  #budget(): number {
    let bytes = 0;
    for (let i = 0; i < this.#map.count; i++) {
      if (this.#map.type[i] & (BG.METADATA | BG.SYSTEM)) {
        bytes += this.#map.length[i];
      }
    }
    return 4 * Math.ceil(bytes / this.#sb.sectorsize) + 256;
  }

  /**
   * Reads and checks the tree block at `bytenr`.
   *
   * @param bytenr Its logical address.
   * @param tree The tree it belongs to.
   * @returns The block.
   * @throws {Refusal} When it is out of place or fails a check.
   */
  async read(bytenr: number, tree: TreeRoot): Promise<TreeBlock> {
    const sb = this.#sb;
    const ns = sb.nodesize;
    const what = `tree block ${bytenr} of the ${tree.name}`;
    if (bytenr % sb.sectorsize !== 0) {
      throw new Refusal(
        `${what} is not aligned to sectorsize ${sb.sectorsize}`,
      );
    }
    const c = this.#map.find(bytenr, ns);
    if (c < 0) throw new Refusal(`${what} does not lie inside one chunk`);
    const want = tree.system ? BG.SYSTEM : BG.METADATA;
    if (!(this.#map.type[c] & want)) {
      throw new Refusal(
        `${what} lies in a ${chunkTypeText(this.#map.type[c])} chunk, not a ${
          tree.system ? "system" : "metadata"
        } one`,
      );
    }
    if (++this.#reads > this.#maxReads) {
      throw new Refusal(
        `more than ${this.#maxReads} tree block reads: the trees are larger than the metadata chunks hold`,
      );
    }
    const bytes = await this.#region.read(
      this.#map.physical(c, bytenr, 0),
      ns,
      what,
    );
    this.#check(bytes, bytenr, what, tree);
    if (this.#map.copies(c) === 2) {
      const copy = await this.#region.read(
        this.#map.physical(c, bytenr, 1),
        ns,
        `second copy of ${what}`,
      );
      if (!sameBytes(bytes, 0, copy, 0, ns)) {
        throw new Refusal(
          `${what}: its two DUP copies differ (device bytes ${
            this.#map.physical(c, bytenr, 0)
          } and ${this.#map.physical(c, bytenr, 1)})`,
        );
      }
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, ns);
    return {
      bytenr,
      level: bytes[HEADER.LEVEL],
      generation: u64(view, HEADER.GENERATION, `${what}: generation`),
      nritems: view.getUint32(HEADER.NRITEMS, true),
      bytes,
      view,
    };
  }

  #check(b: Uint8Array, bytenr: number, what: string, tree: TreeRoot): void {
    const sb = this.#sb;
    const view = new DataView(b.buffer, b.byteOffset, b.length);
    const stored = view.getUint32(0, true);
    const actual = blockChecksum(b);
    if (stored !== actual) {
      throw new Refusal(
        `${what}: checksum ${hex(stored)} does not match its contents (${
          hex(actual)
        })`,
      );
    }
    if (u64Bits(view, HEADER.BYTENR) !== BigInt(bytenr)) {
      throw new Refusal(
        `${what} says it is at ${u64Bits(view, HEADER.BYTENR)}`,
      );
    }
    if (!sameBytes(b, HEADER.FSID, sb.metadataFsid, 0, 16)) {
      throw new Refusal(`${what} belongs to another filesystem (fsid)`);
    }
    if (this.chunkTreeUuid === undefined) {
      this.chunkTreeUuid = b.slice(
        HEADER.CHUNK_TREE_UUID,
        HEADER.CHUNK_TREE_UUID + 16,
      );
    } else if (
      !sameBytes(b, HEADER.CHUNK_TREE_UUID, this.chunkTreeUuid, 0, 16)
    ) {
      throw new Refusal(`${what} names another chunk tree (chunk_tree_uuid)`);
    }
    const flags = u64Bits(view, HEADER.FLAGS);
    const rev = flags >> 56n;
    const rest = flags & ((1n << 56n) - 1n) &
      ~BigInt(HEADER_FLAG_WRITTEN | HEADER_FLAG_RELOC);
    if (!(flags & BigInt(HEADER_FLAG_WRITTEN)) || rest !== 0n || rev > 1n) {
      throw new Refusal(`${what} has flags 0x${flags.toString(16)}`);
    }
    if (
      tree.owner !== undefined && u64Bits(view, HEADER.OWNER) !== tree.owner
    ) {
      throw new Refusal(
        `${what} is owned by tree ${
          u64Bits(view, HEADER.OWNER)
        }, not ${tree.owner}`,
      );
    }
    const gen = u64(view, HEADER.GENERATION, `${what}: generation`);
    if (gen === 0 || gen > sb.generation) {
      throw new Refusal(
        `${what} has generation ${gen}, not in [1, ${sb.generation}] (the superblock's)`,
      );
    }
    const level = b[HEADER.LEVEL];
    if (level > MAX_LEVEL) {
      throw new Refusal(`${what} has level ${level}, above ${MAX_LEVEL}`);
    }
    const n = view.getUint32(HEADER.NRITEMS, true);
    const room = b.length - HEADER.SIZE;
    if (level === 0) {
      if (n * ITEM_SIZE > room) {
        throw new Refusal(`${what}: ${n} items do not fit a leaf`);
      }
      // Items are packed from the end of the block backwards, in order.
      let end = room;
      for (let i = 0; i < n; i++) {
        const h = itemAt(i);
        const off = view.getUint32(h + KEY_SIZE, true);
        const size = view.getUint32(h + KEY_SIZE + 4, true);
        if (off + size !== end || off < n * ITEM_SIZE) {
          throw new Refusal(
            `${what}: item ${i} data (${size} bytes at ${off}) is out of place (it should end at ${end}, after the ${n} item headers)`,
          );
        }
        end = off;
        if (i > 0 && compareKeys(b, itemAt(i - 1), b, h) >= 0) {
          throw new Refusal(
            `${what}: item ${i} key ${keyText(b, h)} does not follow ${
              keyText(b, itemAt(i - 1))
            }`,
          );
        }
      }
    } else {
      if (n === 0 || n * PTR_SIZE > room) {
        throw new Refusal(`${what}: ${n} pointers do not fit a node`);
      }
      for (let i = 0; i < n; i++) {
        const p = ptrAt(i);
        if (i > 0 && compareKeys(b, ptrAt(i - 1), b, p) >= 0) {
          throw new Refusal(
            `${what}: pointer ${i} key ${keyText(b, p)} does not follow ${
              keyText(b, ptrAt(i - 1))
            }`,
          );
        }
      }
    }
  }
}

/** Options of {@linkcode walkTree}. */
export interface WalkOptions {
  /** Called with every leaf, in key order. */
  onLeaf(leaf: TreeBlock): void | Promise<void>;
  /** Called with every block read (nodes and leaves), before its children. */
  onBlock?(block: TreeBlock): void;
  /**
   * Blocks walked already (by an earlier tree that shares them): such a
   * block and all below it are not read again. Blocks read are added.
   */
  seen?: { has(bytenr: number): boolean; add(bytenr: number): void };
  /** Whether to skip blocks in `seen` (else only record them). */
  skipSeen?: boolean;
}

/** What a parent (or a root item) expects of a block. */
interface Expect {
  level: number;
  generation: number;
  /** The key the block's first item must have (its pointer's key). */
  first: Uint8Array | null;
  /** A key every item must be below (the next pointer's key). */
  upper: Uint8Array | null;
}

function checkExpected(b: TreeBlock, e: Expect, what: string): void {
  if (b.level !== e.level) {
    throw new Refusal(
      `${what} has level ${b.level}, its parent expects ${e.level}`,
    );
  }
  if (b.generation !== e.generation) {
    throw new Refusal(
      `${what} has generation ${b.generation}, its parent expects ${e.generation}`,
    );
  }
  const stride = b.level === 0 ? ITEM_SIZE : PTR_SIZE;
  if (b.nritems === 0) {
    if (e.first !== null) {
      throw new Refusal(`${what} is empty but its parent points at a key`);
    }
    return;
  }
  const firstAt = HEADER.SIZE;
  const lastAt = HEADER.SIZE + (b.nritems - 1) * stride;
  if (e.first !== null && compareKeys(b.bytes, firstAt, e.first, 0) !== 0) {
    throw new Refusal(
      `${what} starts with key ${keyText(b.bytes, firstAt)}, its parent says ${
        keyText(e.first, 0)
      }`,
    );
  }
  if (e.upper !== null && compareKeys(b.bytes, lastAt, e.upper, 0) >= 0) {
    throw new Refusal(
      `${what} holds key ${
        keyText(b.bytes, lastAt)
      }, past its parent's next key ${keyText(e.upper, 0)}`,
    );
  }
}

/**
 * Walks a tree depth first, in key order, checking every block against
 * what its parent says of it.
 *
 * @param reader The block reader.
 * @param root The tree.
 * @param options What to do with the leaves.
 * @throws {Refusal} When a block fails a check.
 */
export async function walkTree(
  reader: BlockReader,
  root: TreeRoot,
  options: WalkOptions,
): Promise<void> {
  const { seen, skipSeen } = options;
  async function visit(bytenr: number, e: Expect): Promise<void> {
    const b = await reader.read(bytenr, root);
    checkExpected(b, e, `tree block ${bytenr} of the ${root.name}`);
    seen?.add(bytenr);
    options.onBlock?.(b);
    if (b.level === 0) {
      await options.onLeaf(b);
      return;
    }
    for (let i = 0; i < b.nritems; i++) {
      const p = ptrAt(i);
      const child = u64(
        b.view,
        p + KEY_SIZE,
        `pointer ${i} of tree block ${bytenr}`,
      );
      if (skipSeen && seen?.has(child)) continue;
      await visit(child, {
        level: b.level - 1,
        generation: u64(b.view, p + KEY_SIZE + 8, `pointer ${i} generation`),
        first: b.bytes.slice(p, p + KEY_SIZE),
        upper: i + 1 < b.nritems
          ? b.bytes.slice(ptrAt(i + 1), ptrAt(i + 1) + KEY_SIZE)
          : e.upper,
      });
    }
  }
  if (skipSeen && seen?.has(root.bytenr)) return;
  await visit(root.bytenr, {
    level: root.level,
    generation: root.generation,
    first: null,
    upper: null,
  });
}

/**
 * Looks a key up in a tree, checking the blocks on the way down.
 *
 * @param reader The block reader.
 * @param root The tree.
 * @param key The 17 bytes of the key.
 * @returns The leaf and the item's index, or undefined when it is absent.
 * @throws {Refusal} When a block fails a check.
 */
export async function findItem(
  reader: BlockReader,
  root: TreeRoot,
  key: Uint8Array,
): Promise<{ leaf: TreeBlock; index: number } | undefined> {
  let e: Expect = {
    level: root.level,
    generation: root.generation,
    first: null,
    upper: null,
  };
  let bytenr = root.bytenr;
  for (;;) {
    const b = await reader.read(bytenr, root);
    checkExpected(b, e, `tree block ${bytenr} of the ${root.name}`);
    const stride = b.level === 0 ? ITEM_SIZE : PTR_SIZE;
    // The last entry whose key is at most `key`.
    let lo = 0;
    let hi = b.nritems;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareKeys(b.bytes, HEADER.SIZE + mid * stride, key, 0) <= 0) {
        lo = mid + 1;
      } else hi = mid;
    }
    const i = lo - 1;
    if (i < 0) return undefined;
    const at = HEADER.SIZE + i * stride;
    if (b.level === 0) {
      return compareKeys(b.bytes, at, key, 0) === 0
        ? { leaf: b, index: i }
        : undefined;
    }
    bytenr = u64(
      b.view,
      at + KEY_SIZE,
      `pointer ${i} of tree block ${b.bytenr}`,
    );
    e = {
      level: b.level - 1,
      generation: u64(b.view, at + KEY_SIZE + 8, `pointer ${i} generation`),
      first: b.bytes.slice(at, at + KEY_SIZE),
      upper: i + 1 < b.nritems
        ? b.bytes.slice(at + PTR_SIZE, at + PTR_SIZE + KEY_SIZE)
        : e.upper,
    };
  }
}
