/**
 * XFS B+trees: the per-AG short-form trees (free space by block and by
 * count, inodes, free inodes, reverse map, reference counts) and the
 * long-form block map of an inode's fork. Every block is checked before
 * its records are used: magic, level, record count, and with v5 its
 * CRC32C, its own disk address, owner and filesystem UUID; node keys must
 * ascend and match the first key of the block they point to, and leaves
 * are visited left to right.
 *
 * ```text
 * short-form header (v4 16 bytes, v5 56):
 *   0 magic u32  4 level u16  6 numrecs u16  8 leftsib u32  12 rightsib u32
 *  16 blkno u64 (daddr)  24 lsn u64  32 uuid[16]  48 owner u32 (AG)  52 crc le32
 * long-form header (v4 24 bytes, v5 72):
 *   0 magic u32  4 level u16  6 numrecs u16  8 leftsib u64  16 rightsib u64
 *  24 blkno u64  32 lsn u64  40 uuid[16]  56 owner u64 (inode)  64 crc le32
 * a node holds keys from the header on, then pointers after room for
 * (block size - header) / (key + pointer) keys
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import type { XfsReader } from "./reader.ts";
import { checkCrc, Fields } from "./superblock.ts";

/** The shape of one kind of tree. */
export interface TreeKind {
  /** Name in messages (`free-space btree by block`). */
  name: string;
  /** Magic with v4 and with v5 (0 where the tree exists only with v5). */
  magic: [number, number];
  /** Record, key and pointer sizes in bytes. */
  recSize: number;
  keySize: number;
  ptrSize: 4 | 8;
  /** Long-form (block map) headers. */
  long: boolean;
  /** The value records and keys are ordered by, from a record or a key. */
  recKey(f: Fields, at: number): number;
  nodeKey(f: Fields, at: number): number;
  /** Whether equal keys may follow each other (reverse map). */
  equalKeys?: boolean;
}

/** Maximal tree height accepted (XFS trees are far lower). */
const MAX_LEVELS = 9;

/** Header size of `kind`'s blocks. */
export function headerSize(kind: TreeKind, v5: boolean): number {
  if (kind.long) return v5 ? 72 : 24;
  return v5 ? 56 : 16;
}

/** Most records in a leaf and most keys in a node of `blockBytes`. */
export function maxRecs(
  kind: TreeKind,
  blockBytes: number,
  hdr: number,
  leaf: boolean,
): number {
  return Math.floor(
    (blockBytes - hdr) / (leaf ? kind.recSize : kind.keySize + kind.ptrSize),
  );
}

/** Where a tree's root is and whom it belongs to. */
export interface TreeRoot {
  /** AG of the tree (short form), or of the block (long form). */
  agno: number;
  /** Owner written in v5 headers: the AG number, or the inode number. */
  owner: number;
  /** Levels of the tree, root included. */
  levels: number;
  /** Where it is said to be, for messages (`AGF 2`, `inode 131`). */
  where: string;
}

/** A leaf's records, handed to the visitor. */
export interface Leaf {
  f: Fields;
  /** Offset of the first record. */
  at: number;
  count: number;
}

/**
 * Checks one block's header; returns its level and record count.
 *
 * @throws {Refusal} For a wrong magic, level, count, address, owner or CRC.
 */
export function checkBlock(
  xr: XfsReader,
  kind: TreeKind,
  block: Uint8Array,
  expect: { level: number; daddr: number; owner: number; what: string },
): number {
  const v5 = xr.sb.version === 5;
  const f = new Fields(block, expect.what);
  const magic = f.u32(0);
  const want = kind.magic[v5 ? 1 : 0];
  if (magic !== want) {
    throw new Refusal(
      `${expect.what} has magic ${hex(magic)}, not ${hex(want)}`,
    );
  }
  if (v5) {
    const crcAt = kind.long ? 64 : 52;
    checkCrc(block, crcAt, expect.what);
    const blkno = f.u64(kind.long ? 24 : 16);
    if (blkno !== expect.daddr) {
      throw new Refusal(
        `${expect.what} says it is at disk address ${blkno}, not ${expect.daddr}`,
      );
    }
    const uuidAt = kind.long ? 40 : 32;
    for (let i = 0; i < 16; i++) {
      if (block[uuidAt + i] !== xr.sb.metaUuid[i]) {
        throw new Refusal(`${expect.what} carries another filesystem's UUID`);
      }
    }
    const owner = kind.long ? f.u64(56) : f.u32(48);
    if (owner !== expect.owner) {
      throw new Refusal(
        `${expect.what} belongs to ${owner}, not ${expect.owner}`,
      );
    }
  }
  const level = f.u16(4);
  if (level !== expect.level) {
    throw new Refusal(
      `${expect.what} is at level ${level}, not ${expect.level}`,
    );
  }
  const numrecs = f.u16(6);
  const max = maxRecs(
    kind,
    block.length,
    headerSize(kind, v5),
    level === 0,
  );
  if (numrecs > max) {
    throw new Refusal(
      `${expect.what} holds ${numrecs} entries, more than its ${max}`,
    );
  }
  return numrecs;
}

/**
 * Walks a tree from a root block (or from the entries of an inode's fork
 * root, for block maps) and hands every leaf, left to right, to `visit`.
 * Every block is passed to `onBlock` (to be checked against free space)
 * before it is read, and every record key ascends across leaves.
 *
 * @param xr The reader.
 * @param kind The tree.
 * @param root Where the tree is.
 * @param top The root's child pointers (AG block numbers, or filesystem
 * block numbers for long form) with their keys; for a short-form tree, the
 * root block itself with `undefined` key.
 * @param onBlock Called with each block's AG and AG block number.
 * @param visit Called with each leaf.
 * @returns Blocks visited.
 * @throws {Refusal} For any inconsistency.
 */
export async function walkTree(
  xr: XfsReader,
  kind: TreeKind,
  root: TreeRoot,
  top: Array<{ ptr: number; key: number | undefined }>,
  topLevel: number,
  onBlock: (agno: number, agbno: number, what: string) => void,
  visit: (leaf: Leaf) => void | Promise<void>,
): Promise<number> {
  if (root.levels < 1 || root.levels > MAX_LEVELS) {
    throw new Refusal(
      `${kind.name} of ${root.where} has ${root.levels} levels, out of range [1, ${MAX_LEVELS}]`,
    );
  }
  const v5 = xr.sb.version === 5;
  const hdr = headerSize(kind, v5);
  const bs = xr.sb.blockSize;
  let blocks = 0;
  /** Blocks visited: a tree is a tree, not a graph that loops or shares. */
  const seen = new Set<number>();
  let lastKey = -Infinity;
  let first = true;
  const walk = async (
    ptr: number,
    level: number,
    key: number | undefined,
  ): Promise<void> => {
    let agno = root.agno;
    let agbno = ptr;
    const what0 = `${kind.name} of ${root.where}`;
    if (kind.long) [agno, agbno] = xr.splitFsb(ptr, what0);
    else if (ptr === 0 || ptr >= xr.agLength(agno)) {
      throw new Refusal(
        `${what0} points at block ${ptr}, outside AG ${agno}`,
      );
    }
    const what = `${what0} (block ${agbno} of AG ${agno})`;
    const key0 = agno * 2 ** 32 + agbno;
    if (seen.has(key0)) throw new Refusal(`${what} is reached twice`);
    seen.add(key0);
    onBlock(agno, agbno, what);
    blocks++;
    const block = await xr.readBlocks(agno, agbno, 1, what);
    const n = checkBlock(xr, kind, block, {
      level,
      daddr: xr.daddrOf(agno, agbno),
      owner: root.owner,
      what,
    });
    const f = new Fields(block, what);
    if (n === 0 && !(level === topLevel && top.length === 1 && !kind.long)) {
      throw new Refusal(`${what} is empty`);
    }
    if (level === 0) {
      if (n > 0 && key !== undefined && kind.recKey(f, hdr) !== key) {
        throw new Refusal(
          `${what} starts at key ${
            kind.recKey(f, hdr)
          }, its parent says ${key}`,
        );
      }
      for (let i = 0; i < n; i++) {
        const k = kind.recKey(f, hdr + i * kind.recSize);
        if (!first && (k < lastKey || (k === lastKey && !kind.equalKeys))) {
          throw new Refusal(
            `${what}: record ${i} (key ${k}) does not follow key ${lastKey}`,
          );
        }
        first = false;
        lastKey = k;
      }
      await visit({ f, at: hdr, count: n });
      return;
    }
    const maxKeys = maxRecs(kind, bs, hdr, false);
    const ptrAt = hdr + maxKeys * kind.keySize;
    const children: Array<{ ptr: number; key: number }> = [];
    for (let i = 0; i < n; i++) {
      const k = kind.nodeKey(f, hdr + i * kind.keySize);
      if (i === 0 && key !== undefined && k !== key) {
        throw new Refusal(
          `${what} starts at key ${k}, its parent says ${key}`,
        );
      }
      if (
        i > 0 &&
        !(k > children[i - 1].key ||
          (kind.equalKeys && k === children[i - 1].key))
      ) {
        throw new Refusal(`${what}: key ${i} (${k}) does not ascend`);
      }
      const p = kind.ptrSize === 4
        ? f.u32(ptrAt + 4 * i)
        : f.u64(ptrAt + 8 * i);
      children.push({ ptr: p, key: k });
    }
    for (const c of children) await walk(c.ptr, level - 1, c.key);
  };
  for (const t of top) await walk(t.ptr, topLevel, t.key);
  return blocks;
}
