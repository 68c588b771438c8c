/**
 * The blocks the files of an ext2/3/4 filesystem use, found from the inodes
 * alone: every inode table is read (in bounded windows), and every inode
 * that may be live has its block references followed — extent trees (the
 * leaf extents and the index and leaf blocks at every depth), indirect maps
 * (the single, double and triple indirect blocks and what they list), the
 * extended-attribute block. Each reference goes to a
 * {@linkcode ReferenceCheck}, which holds it against the block bitmaps.
 *
 * Which inodes may be live, decided without the inode bitmap (which could
 * lie as the block bitmap can): any inode with a links count above zero;
 * every reserved inode (below `s_first_ino`: the bad-blocks list, the
 * resize inode, the journal), whatever its fields; and an inode with links
 * zero but a file type whose `i_dtime` is zero or an inode number — an
 * open file unlinked before the unmount sits on the orphan list with links
 * zero and the next orphan's number in `i_dtime`, and its blocks are live
 * until recovery frees them. A deleted inode carries its deletion time
 * there instead (a number above any inode number). Groups flagged
 * INODE_UNINIT, and the tail `bg_itable_unused` calls unused, are read
 * like the rest: the flags are claims, and an inode hidden there would be
 * found by e2fsck.
 *
 * ```text
 * inode (s_inode_size bytes, little-endian), the fields read here:
 *  0x00 i_mode u16      0x04 i_size_lo u32   0x14 i_dtime u32
 *  0x1a i_links_count u16                    0x1c i_blocks_lo u32
 *  0x20 i_flags u32     0x28 i_block[15] (60 bytes: extent root,
 *                            block map, inline data or symlink text)
 *  0x68 i_file_acl_lo u32   0x6c i_size_high u32
 *  0x74 l_i_blocks_high u16 0x76 l_i_file_acl_high u16 (64bit)
 * extent header (12 bytes): magic 0xf30a u16, entries u16, max u16,
 *   depth u16, generation u32; then 12-byte entries:
 *   leaf:  ee_block u32, ee_len u16 (> 32768: unwritten), ee_start_hi u16, ee_start_lo u32
 *   index: ei_block u32, ei_leaf_lo u32, ei_leaf_hi u16, unused u16
 * ```
 *
 * @module
 */

import { hex, Refusal, type RegionReader } from "../_region.ts";
import { MAX_BATCH_BYTES, readBlocks } from "./bitmaps.ts";
import type { GroupTable } from "./groups.ts";
import { REF, type ReferenceCheck } from "./references.ts";
import { type Ext4Superblock, has, INCOMPAT, RO_COMPAT } from "./superblock.ts";

/** Offsets of the inode fields read here. */
export const INODE = {
  MODE: 0x00,
  SIZE_LO: 0x04,
  DTIME: 0x14,
  LINKS_COUNT: 0x1a,
  BLOCKS_LO: 0x1c,
  FLAGS: 0x20,
  BLOCK: 0x28,
  FILE_ACL_LO: 0x68,
  SIZE_HIGH: 0x6c,
  BLOCKS_HIGH: 0x74,
  FILE_ACL_HIGH: 0x76,
} as const;

/** `i_flags` bits read here. */
export const INODE_FLAG = {
  /** Directory indexed as a hashed tree (never on a device inode). */
  INDEX: 0x1000,
  /** `i_blocks` counts filesystem blocks, not 512-byte sectors. */
  HUGE_FILE: 0x40000,
  /** `i_block` holds an extent tree root. */
  EXTENTS: 0x80000,
  /** `i_block` holds the data itself (inline_data). */
  INLINE_DATA: 0x10000000,
} as const;

/** File types, `i_mode & 0xf000`. */
export const S_IF = {
  FIFO: 0x1000,
  CHR: 0x2000,
  DIR: 0x4000,
  BLK: 0x6000,
  REG: 0x8000,
  LNK: 0xa000,
  SOCK: 0xc000,
} as const;

/** `eh_magic` of an extent header. */
export const EXT4_EXT_MAGIC = 0xf30a;
/** Deepest extent tree the kernel builds. */
export const EXT4_MAX_EXTENT_DEPTH = 5;
/** `ee_len` above this marks an unwritten extent of `ee_len - 32768` blocks. */
const EXT_INIT_MAX_LEN = 32768;
/** Bytes of `i_block`. */
const I_BLOCK_BYTES = 60;
/** Entries of an extent root in `i_block`. */
const ROOT_EXTENTS = 4;
/** `i_block` slots: 12 direct blocks, then single, double, triple indirect. */
const DIRECT_BLOCKS = 12;
/** A fast symlink's text is shorter than `i_block`. */
const FAST_SYMLINK_MAX = I_BLOCK_BYTES;

/** What the walk did. */
export interface WalkStats {
  /** Inodes read. */
  inodes: number;
  /** Inodes followed (possibly live). */
  followed: number;
}

/** The filesystem as the walk reads it. */
interface Walk {
  region: RegionReader;
  sb: Ext4Superblock;
  refs: ReferenceCheck;
}

/**
 * Reads every inode table and follows every possibly-live inode's block
 * references into `refs`. Inode tables are read in windows of at most
 * {@linkcode MAX_BATCH_BYTES}; tree blocks one at a time, each once per
 * reference (their number is bounded by `refs`).
 *
 * @param region The filesystem's region.
 * @param sb The checked superblock.
 * @param table The checked group descriptors.
 * @param refs Where references go; flushed whenever full (not at the end).
 * @returns How many inodes were read and followed.
 * @throws {Refusal} For a malformed inode or tree, a reference outside the
 * filesystem, or one the bitmaps mark free.
 */
export async function walkInodes(
  region: RegionReader,
  sb: Ext4Superblock,
  table: GroupTable,
  refs: ReferenceCheck,
): Promise<WalkStats> {
  const w: Walk = { region, sb, refs };
  const isz = sb.inodeSize;
  const perWindow = Math.max(1, Math.floor(MAX_BATCH_BYTES / isz));
  const stats: WalkStats = { inodes: 0, followed: 0 };
  for (let g = 0; g < sb.groupCount; g++) {
    const tableAt = table.inodeTable[g] * sb.blockSize;
    for (let i = 0; i < sb.inodesPerGroup; i += perWindow) {
      const n = Math.min(perWindow, sb.inodesPerGroup - i);
      const bytes = await region.read(
        tableAt + i * isz,
        n * isz,
        `inode table of group ${g}`,
        true,
      );
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      for (let k = 0; k < n; k++) {
        const at = k * isz;
        const ino = g * sb.inodesPerGroup + i + k + 1;
        if (!possiblyLive(sb, view, at, ino)) continue;
        stats.followed++;
        if (refs.full) await refs.flush();
        const pending = followInode(w, view, at, ino);
        if (pending) await pending;
      }
      stats.inodes += n;
    }
  }
  return stats;
}

/** Whether an inode may be live (see the module notes). */
function possiblyLive(
  sb: Ext4Superblock,
  view: DataView,
  at: number,
  ino: number,
): boolean {
  if (view.getUint16(at + INODE.LINKS_COUNT, true) > 0) return true;
  if (ino < sb.firstIno) return true;
  if (view.getUint16(at + INODE.MODE, true) === 0) return false;
  return view.getUint32(at + INODE.DTIME, true) <= sb.inodesCount;
}

/** Whether `i_block` is all zero. */
function emptyBlockField(view: DataView, at: number): boolean {
  for (let i = 0; i < I_BLOCK_BYTES; i += 4) {
    if (view.getUint32(at + INODE.BLOCK + i, true) !== 0) return false;
  }
  return true;
}

/**
 * Follows one inode's references. Returns a promise only when blocks must
 * be read (a tree deeper than the inode); the rest is done at once.
 */
function followInode(
  w: Walk,
  view: DataView,
  at: number,
  ino: number,
): Promise<void> | undefined {
  const { sb } = w;
  const mode = view.getUint16(at + INODE.MODE, true);
  const flags = view.getUint32(at + INODE.FLAGS, true);
  const acl = view.getUint32(at + INODE.FILE_ACL_LO, true) +
    (has(sb.incompat, INCOMPAT.BIT64)
      ? view.getUint16(at + INODE.FILE_ACL_HIGH, true) * 0x1_0000_0000
      : 0);
  if (acl !== 0) w.refs.add(acl, 1, ino, REF.XATTR);
  if (flags & INODE_FLAG.INLINE_DATA) {
    if (!has(sb.incompat, INCOMPAT.INLINE_DATA)) {
      throw new Refusal(
        `inode ${ino} has the inline-data flag, but the filesystem lacks the inline_data feature`,
      );
    }
    return undefined; // the data is in the inode
  }
  if (ino >= sb.firstIno) {
    const type = mode & 0xf000;
    switch (type) {
      case S_IF.REG:
      case S_IF.DIR:
        break;
      case S_IF.LNK:
        if (fastSymlink(sb, view, at, flags, acl)) return undefined;
        break;
      case S_IF.CHR:
      case S_IF.BLK:
      case S_IF.FIFO:
      case S_IF.SOCK:
        checkSpecial(view, at, ino, flags);
        return undefined;
      default:
        if (emptyBlockField(view, at)) return undefined;
        throw new Refusal(
          `inode ${ino} (links ${
            view.getUint16(at + INODE.LINKS_COUNT, true)
          }) has file type ${hex(type)}, which is none of the known ones`,
        );
    }
  } else if (emptyBlockField(view, at)) {
    return undefined; // a reserved inode not in use
  }
  const root = new DataView(
    view.buffer,
    view.byteOffset + at + INODE.BLOCK,
    I_BLOCK_BYTES,
  );
  return flags & INODE_FLAG.EXTENTS
    ? extentNode(w, ino, root, ROOT_EXTENTS, -1, "its extent root")
    : blockMap(w, ino, root);
}

/**
 * Whether a symlink keeps its target in `i_block`. The kernel decides by
 * `i_blocks` (no block besides the attribute block), e2fsprogs by the size
 * (under 60 bytes): only when both agree is `i_block` taken as text, and
 * otherwise it is followed as a block map, whatever it holds.
 */
function fastSymlink(
  sb: Ext4Superblock,
  view: DataView,
  at: number,
  flags: number,
  acl: number,
): boolean {
  const size = view.getUint32(at + INODE.SIZE_LO, true) +
    view.getUint32(at + INODE.SIZE_HIGH, true) * 0x1_0000_0000;
  let sectors = view.getUint32(at + INODE.BLOCKS_LO, true) +
    (has(sb.roCompat, RO_COMPAT.HUGE_FILE)
      ? view.getUint16(at + INODE.BLOCKS_HIGH, true) * 0x1_0000_0000
      : 0);
  if (flags & INODE_FLAG.HUGE_FILE) sectors *= sb.blockSize / 512;
  const attrSectors = acl !== 0 ? sb.blockSize / 512 : 0;
  return size > 0 && size < FAST_SYMLINK_MAX && sectors === attrSectors;
}

/**
 * Devices, FIFOs and sockets hold a device number in `i_block`, not
 * blocks; as e2fsck requires, the rest of it must be zero and the inode
 * must not say it has a tree.
 */
function checkSpecial(
  view: DataView,
  at: number,
  ino: number,
  flags: number,
): void {
  let stray = (flags & (INODE_FLAG.EXTENTS | INODE_FLAG.INDEX)) !== 0;
  for (let i = 4; i < 15 && !stray; i++) {
    stray = view.getUint32(at + INODE.BLOCK + 4 * i, true) !== 0;
  }
  if (stray) {
    throw new Refusal(
      `inode ${ino} is a device, FIFO or socket, but carries an extent tree or block pointers`,
    );
  }
}

/**
 * One extent tree node (the root in `i_block`, or a tree block): its leaf
 * extents, or its children, each read and followed one level down.
 *
 * @param capacity Most entries the node can hold.
 * @param depth The depth the node must have, or -1 for the root (which
 * sets it).
 */
function extentNode(
  w: Walk,
  ino: number,
  node: DataView,
  capacity: number,
  depth: number,
  what: string,
): Promise<void> | undefined {
  const magic = node.getUint16(0, true);
  if (magic !== EXT4_EXT_MAGIC) {
    throw new Refusal(
      `inode ${ino}: ${what} has extent header magic ${hex(magic)}, not 0xf30a`,
    );
  }
  const entries = node.getUint16(2, true);
  const max = node.getUint16(4, true);
  const nodeDepth = node.getUint16(6, true);
  if (max > capacity || entries > max) {
    throw new Refusal(
      `inode ${ino}: ${what} has ${entries} of ${max} extents, where ${capacity} fit`,
    );
  }
  if (
    depth >= 0 ? nodeDepth !== depth : nodeDepth > EXT4_MAX_EXTENT_DEPTH
  ) {
    throw new Refusal(
      `inode ${ino}: ${what} has depth ${nodeDepth}, not ${
        depth >= 0 ? depth : `at most ${EXT4_MAX_EXTENT_DEPTH}`
      }`,
    );
  }
  if (nodeDepth === 0) {
    for (let e = 0; e < entries; e++) {
      const at = 12 + 12 * e;
      const len = node.getUint16(at + 4, true);
      const count = len > EXT_INIT_MAX_LEN ? len - EXT_INIT_MAX_LEN : len;
      if (count === 0) {
        throw new Refusal(`inode ${ino}: ${what} has an empty extent`);
      }
      const start = node.getUint16(at + 6, true) * 0x1_0000_0000 +
        node.getUint32(at + 8, true);
      w.refs.add(start, count, ino, REF.DATA);
    }
    return undefined;
  }
  const children: number[] = [];
  for (let e = 0; e < entries; e++) {
    const at = 12 + 12 * e;
    const child = node.getUint16(at + 8, true) * 0x1_0000_0000 +
      node.getUint32(at + 4, true);
    w.refs.add(child, 1, ino, REF.EXTENT_TREE);
    children.push(child);
  }
  return extentChildren(w, ino, children, nodeDepth - 1);
}

async function extentChildren(
  w: Walk,
  ino: number,
  children: number[],
  depth: number,
): Promise<void> {
  const { sb } = w;
  const capacity = Math.floor((sb.blockSize - 12) / 12);
  for (const child of children) {
    if (w.refs.full) await w.refs.flush();
    const what = `extent tree block ${child}`;
    const block = await readBlocks(w.region, sb, child, 1, what, true);
    const node = new DataView(block.buffer, block.byteOffset, block.length);
    const pending = extentNode(w, ino, node, capacity, depth, what);
    if (pending) await pending;
  }
}

/**
 * An indirect block map (ext2/3, and ext4 files without extents): twelve
 * direct blocks, then a single, a double and a triple indirect block.
 */
function blockMap(
  w: Walk,
  ino: number,
  root: DataView,
): Promise<void> | undefined {
  for (let i = 0; i < DIRECT_BLOCKS; i++) {
    const b = root.getUint32(4 * i, true);
    if (b !== 0) w.refs.add(b, 1, ino, REF.DATA);
  }
  const indirect: Array<[number, number]> = [];
  for (let level = 1; level <= 3; level++) {
    const b = root.getUint32(4 * (DIRECT_BLOCKS + level - 1), true);
    if (b !== 0) {
      w.refs.add(b, 1, ino, REF.INDIRECT);
      indirect.push([b, level]);
    }
  }
  return indirect.length > 0 ? indirectBlocks(w, ino, indirect) : undefined;
}

/** Indirect blocks `[block, level]`: level 1 lists data blocks, level n blocks of level n - 1. */
async function indirectBlocks(
  w: Walk,
  ino: number,
  blocks: Array<[number, number]>,
): Promise<void> {
  const { sb } = w;
  for (const [block, level] of blocks) {
    if (w.refs.full) await w.refs.flush();
    const bytes = await readBlocks(
      w.region,
      sb,
      block,
      1,
      `indirect block ${block}`,
      true,
    );
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const below: Array<[number, number]> = [];
    for (let at = 0; at < sb.blockSize; at += 4) {
      const b = view.getUint32(at, true);
      if (b === 0) continue;
      if (level === 1) w.refs.add(b, 1, ino, REF.DATA);
      else {
        w.refs.add(b, 1, ino, REF.INDIRECT);
        below.push([b, level - 1]);
      }
    }
    if (below.length > 0) await indirectBlocks(w, ino, below);
  }
}
