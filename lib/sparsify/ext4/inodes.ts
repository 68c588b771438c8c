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
 * found by e2fsck. (A table left uninitialized on a reused disk may hold
 * old bytes that look live and malformed: the filesystem is then left as
 * it is, never the other way round.) Inode and extent block checksums are
 * not needed: an inode the kernel would refuse for its checksum is
 * followed all the same, which can only keep more.
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

/** Tree blocks read together (merged by a source that can, such as HTTP). */
const TREE_READS = 64;
/** Most tree blocks waiting on the work stack per read batch, times the batch. */
const TREE_STACK_BUDGET = 1 << 16;
/** Work stack codes: extent node of depth `d` is `d`; indirect block of level `l` is `INDIRECT + l`. */
const INDIRECT = 8;

/** What the walk did. */
export interface WalkStats {
  /** Inodes read. */
  inodes: number;
  /** Inodes followed (possibly live). */
  followed: number;
  /** Tree blocks read (extent tree and indirect blocks). */
  treeBlocks: number;
}

/**
 * Tree blocks waiting to be read: block, inode and what the block is (see
 * {@linkcode INDIRECT}). Taken from the top, so that the walk goes depth
 * first and the stack stays within a few levels' worth of children.
 */
class TreeStack {
  readonly blocks: number[] = [];
  readonly inodes: number[] = [];
  readonly codes: number[] = [];

  get length(): number {
    return this.blocks.length;
  }

  push(block: number, ino: number, code: number): void {
    this.blocks.push(block);
    this.inodes.push(ino);
    this.codes.push(code);
  }
}

/** The filesystem as the walk reads it. */
interface Walk {
  region: RegionReader;
  sb: Ext4Superblock;
  refs: ReferenceCheck;
  stack: TreeStack;
  stats: WalkStats;
}

/**
 * Reads every inode table and follows every possibly-live inode's block
 * references into `refs`. Inode tables are read in windows of at most
 * {@linkcode MAX_BATCH_BYTES}; the tree blocks the inodes of a window point
 * to, after it, depth first, up to {@linkcode TREE_READS} at a time, each
 * once per reference (their number is bounded by `refs`).
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
  const stats: WalkStats = { inodes: 0, followed: 0, treeBlocks: 0 };
  const w: Walk = { region, sb, refs, stack: new TreeStack(), stats };
  const isz = sb.inodeSize;
  const perWindow = Math.max(
    1,
    Math.min(sb.inodesPerGroup, Math.floor(MAX_BATCH_BYTES / isz)),
  );
  // Windows in table order (`perGroup` to a group); the next one is read
  // while one is walked. Two buffers, reused: a window's references are all
  // taken (its tree blocks on the stack, by number) before it is read over.
  const perGroup = Math.ceil(sb.inodesPerGroup / perWindow);
  const windows = sb.groupCount * perGroup;
  const where = (k: number) => {
    const g = Math.floor(k / perGroup);
    const i = (k % perGroup) * perWindow;
    return { g, i, n: Math.min(perWindow, sb.inodesPerGroup - i) };
  };
  const buffers = [
    new Uint8Array(perWindow * isz),
    new Uint8Array(perWindow * isz),
  ];
  const read = (k: number) => {
    const { g, i, n } = where(k);
    return region.readInto(
      table.inodeTable[g] * sb.blockSize + i * isz,
      buffers[k % 2].subarray(0, n * isz),
      `inode table of group ${g}`,
    );
  };
  let next = windows > 0 ? read(0) : undefined;
  try {
    for (let k = 0; k < windows; k++) {
      const bytes = await next!;
      next = k + 1 < windows ? read(k + 1) : undefined;
      next?.catch(() => {}); // reported when awaited
      const { g, i, n } = where(k);
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      for (let j = 0; j < n; j++) {
        const at = j * isz;
        const ino = g * sb.inodesPerGroup + i + j + 1;
        if (!possiblyLive(sb, view, at, ino)) continue;
        stats.followed++;
        if (refs.full) await refs.flush();
        followInode(w, view, at, ino);
      }
      stats.inodes += n;
      await drainTrees(w);
    }
  } finally {
    // No read outlives the walk (a stream must not be pulled from behind).
    await next?.catch(() => {});
  }
  return stats;
}

/**
 * Reads the tree blocks on the stack, a batch at a time from its top, and
 * follows each (which may push its children), until it is empty. A batch
 * is small enough that the children it can push stay within
 * {@linkcode TREE_STACK_BUDGET} per level.
 */
async function drainTrees(w: Walk): Promise<void> {
  const { sb, stack, refs } = w;
  const fanout = sb.blockSize / 4;
  const batch = Math.max(
    1,
    Math.min(TREE_READS, Math.floor(TREE_STACK_BUDGET / fanout)),
  );
  const capacity = Math.floor((sb.blockSize - 12) / 12);
  while (stack.length > 0) {
    const n = Math.min(batch, stack.length);
    const from = stack.length - n;
    const blocks = stack.blocks.splice(from, n);
    const inodes = stack.inodes.splice(from, n);
    const codes = stack.codes.splice(from, n);
    // Settled, all of them, before any failure is reported: no read
    // outlives the walk.
    const settled = await Promise.allSettled(
      blocks.map((b, k) =>
        readBlocks(
          w.region,
          sb,
          b,
          1,
          codes[k] > INDIRECT
            ? `indirect block ${b} of inode ${inodes[k]}`
            : `extent tree block ${b} of inode ${inodes[k]}`,
          true,
        )
      ),
    );
    const read = settled.map((r) => {
      if (r.status === "rejected") throw r.reason;
      return r.value;
    });
    w.stats.treeBlocks += n;
    for (let k = 0; k < n; k++) {
      if (refs.full) await refs.flush();
      const view = new DataView(
        read[k].buffer,
        read[k].byteOffset,
        read[k].length,
      );
      if (codes[k] > INDIRECT) {
        indirectBlock(w, inodes[k], view, codes[k] - INDIRECT);
      } else {
        extentNode(
          w,
          inodes[k],
          view,
          0,
          capacity,
          codes[k],
          `extent tree block ${blocks[k]}`,
        );
      }
    }
  }
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
 * Follows one inode's references: those in the inode are added at once,
 * the tree blocks it points to go on the stack.
 */
function followInode(
  w: Walk,
  view: DataView,
  at: number,
  ino: number,
): void {
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
    return; // the data is in the inode
  }
  if (ino >= sb.firstIno) {
    const type = mode & 0xf000;
    switch (type) {
      case S_IF.REG:
      case S_IF.DIR:
        break;
      case S_IF.LNK:
        if (fastSymlink(sb, view, at, flags, acl)) return;
        break;
      case S_IF.CHR:
      case S_IF.BLK:
      case S_IF.FIFO:
      case S_IF.SOCK:
        checkSpecial(view, at, ino, flags);
        return;
      default:
        if (emptyBlockField(view, at)) return;
        throw new Refusal(
          `inode ${ino} (links ${
            view.getUint16(at + INODE.LINKS_COUNT, true)
          }) has file type ${hex(type)}, which is none of the known ones`,
        );
    }
  } else if (emptyBlockField(view, at)) {
    return; // a reserved inode not in use
  }
  const root = at + INODE.BLOCK;
  if (flags & INODE_FLAG.EXTENTS) {
    extentNode(w, ino, view, root, ROOT_EXTENTS, -1, "its extent root");
  } else {
    blockMap(w, ino, view, root);
  }
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
 * One extent tree node (the root in `i_block`, or a tree block) at byte
 * `at` of `node`: its leaf extents are added, its children pushed to be
 * read and followed one level down.
 *
 * @param capacity Most entries the node can hold.
 * @param depth The depth the node must have, or -1 for the root (which
 * sets it).
 */
function extentNode(
  w: Walk,
  ino: number,
  node: DataView,
  at: number,
  capacity: number,
  depth: number,
  what: string,
): void {
  const magic = node.getUint16(at, true);
  if (magic !== EXT4_EXT_MAGIC) {
    throw new Refusal(
      `inode ${ino}: ${what} has extent header magic ${hex(magic)}, not 0xf30a`,
    );
  }
  const entries = node.getUint16(at + 2, true);
  const max = node.getUint16(at + 4, true);
  const nodeDepth = node.getUint16(at + 6, true);
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
      const x = at + 12 + 12 * e;
      const len = node.getUint16(x + 4, true);
      const count = len > EXT_INIT_MAX_LEN ? len - EXT_INIT_MAX_LEN : len;
      if (count === 0) {
        throw new Refusal(`inode ${ino}: ${what} has an empty extent`);
      }
      const start = node.getUint16(x + 6, true) * 0x1_0000_0000 +
        node.getUint32(x + 8, true);
      w.refs.add(start, count, ino, REF.DATA);
    }
    return;
  }
  for (let e = 0; e < entries; e++) {
    const x = at + 12 + 12 * e;
    const child = node.getUint16(x + 8, true) * 0x1_0000_0000 +
      node.getUint32(x + 4, true);
    w.refs.add(child, 1, ino, REF.EXTENT_TREE);
    w.stack.push(child, ino, nodeDepth - 1);
  }
}

/**
 * An indirect block map (ext2/3, and ext4 files without extents): twelve
 * direct blocks, then a single, a double and a triple indirect block.
 */
function blockMap(
  w: Walk,
  ino: number,
  view: DataView,
  root: number,
): void {
  for (let i = 0; i < DIRECT_BLOCKS; i++) {
    const b = view.getUint32(root + 4 * i, true);
    if (b !== 0) w.refs.add(b, 1, ino, REF.DATA);
  }
  for (let level = 1; level <= 3; level++) {
    const b = view.getUint32(root + 4 * (DIRECT_BLOCKS + level - 1), true);
    if (b !== 0) {
      w.refs.add(b, 1, ino, REF.INDIRECT);
      w.stack.push(b, ino, INDIRECT + level);
    }
  }
}

/**
 * An indirect block of `level`: level 1 lists data blocks, level `n`
 * blocks of level `n - 1` (pushed to be read).
 */
function indirectBlock(
  w: Walk,
  ino: number,
  view: DataView,
  level: number,
): void {
  for (let at = 0; at < view.byteLength; at += 4) {
    const b = view.getUint32(at, true);
    if (b === 0) continue;
    if (level === 1) w.refs.add(b, 1, ino, REF.DATA);
    else {
      w.refs.add(b, 1, ino, REF.INDIRECT);
      w.stack.push(b, ino, INDIRECT + level - 1);
    }
  }
}
