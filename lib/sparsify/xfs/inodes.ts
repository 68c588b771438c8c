/**
 * The inode pass: every inode of every chunk the inode btrees list is read
 * and checked, and every inode in use (mode not zero, whatever the free
 * mask says) has the blocks of both forks checked against free space:
 * the extent list of an extents-format fork, or the block map btree (its
 * blocks and its records) of a btree-format one. Directories have their
 * entries read (see `dirs.ts`): every inode a directory names must lie in
 * a chunk the inode btree lists, so that no file can hide from this pass.
 *
 * ```text
 * inode core (big-endian):
 *   0 magic "IN"  2 mode u16  4 version u8 (1, 2; 3 with v5)  5 format u8
 *  24 big_nextents u64 (NREXT64)  56 size u64  64 nblocks u64
 *  76 nextents u32 (or big_anextents)  80 anextents u16  82 forkoff u8 (x8 bytes)
 *  83 aformat u8  90 flags u16  v3: 100 crc le32  120 flags2 u64  152 ino u64
 *  160 uuid[16]; the forks follow the core (100 bytes, 176 with v3)
 * extent record (128 bits): flag:1 startoff:54 startblock:52 blockcount:21
 * fork formats: 0 device, 1 local (in the inode), 2 extents, 3 btree
 * btree root in the fork: level u16, numrecs u16, keys (u64), then pointers
 * (u64) after room for (fork size - 4) / 16 keys
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import { type AgChunks, holeFree, INODES_PER_CHUNK } from "./ag.ts";
import { type Leaf, type TreeKind, walkTree } from "./btree.ts";
import { type DirExtent, readDirectory, readShortformDir } from "./dirs.ts";
import type { XfsReader } from "./reader.ts";
import { checkCrc, Fields } from "./superblock.ts";

const INODE_MAGIC = 0x494e;
const FMT_DEV = 0;
const FMT_LOCAL = 1;
const FMT_EXTENTS = 2;
const FMT_BTREE = 3;
/** `S_IFMT` and the directory type. */
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
/** `XFS_DIFLAG_REALTIME`. */
const DIFLAG_REALTIME = 0x0001;
/** Most extents of one directory kept to read its blocks. */
export const MAX_DIR_EXTENTS = 1 << 20;
/** `XFS_DIFLAG2_NREXT64`. */
const DIFLAG2_NREXT64 = 2 ** 4;

const startoffOf = (f: Fields, at: number) => {
  const hi = f.u32(at) & 0x7fffffff;
  return hi * 2 ** 23 + (f.u32(at + 4) >>> 9);
};

/** The block map btree of an inode's fork. */
export const BMAP_TREE: TreeKind = {
  name: "block map btree",
  magic: [0x424d4150, 0x424d4133], // BMAP, BMA3
  recSize: 16,
  keySize: 8,
  ptrSize: 8,
  long: true,
  recKey: startoffOf,
  nodeKey: (f, at) => f.u64(at),
};

/** The chunks of every AG, to tell whether an inode number is allocated. */
export class InodeMap {
  readonly #xr: XfsReader;
  readonly #chunks: AgChunks[];

  /**
   * Indexes `chunks`.
   *
   * @param xr The reader.
   * @param chunks Each AG's chunks, by AG.
   */
  constructor(xr: XfsReader, chunks: AgChunks[]) {
    this.#xr = xr;
    this.#chunks = chunks;
  }

  /** Whether `ino` lies in an allocated part of a chunk the inode btrees list. */
  has(ino: number): boolean {
    const { sb } = this.#xr;
    const unit = 2 ** (sb.agblklog + sb.inopblog);
    const agno = Math.floor(ino / unit);
    const agino = ino % unit;
    const c = this.#chunks[agno];
    if (!c || !Number.isSafeInteger(ino)) return false;
    let lo = 0;
    let hi = c.startino.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (c.startino[mid] <= agino) lo = mid + 1;
      else hi = mid;
    }
    const k = lo - 1;
    if (k < 0 || agino >= c.startino[k] + INODES_PER_CHUNK) return false;
    return holeFree(c.holemask[k], agino - c.startino[k]);
  }
}

/** Totals of the pass, for the report and the cross-checks. */
export interface InodeTotals {
  inUse: number;
  directories: number;
}

/** Checks one extent of inode `ino` and returns its block count. */
function checkExtent(
  xr: XfsReader,
  f: Fields,
  at: number,
  ino: number,
  prevEnd: number,
  out: DirExtent[] | undefined,
): { end: number; blocks: number } {
  const w1 = f.u32(at + 4);
  const w2 = f.u32(at + 8);
  const w3 = f.u32(at + 12);
  const startoff = startoffOf(f, at);
  const startblock = (w1 & 0x1ff) * 2 ** 43 + w2 * 2 ** 11 + (w3 >>> 21);
  const count = w3 & 0x1fffff;
  const what = `inode ${ino}: extent at file block ${startoff}`;
  if (!Number.isSafeInteger(startoff + count) || count === 0) {
    throw new Refusal(`${what} has ${count} blocks or an offset out of range`);
  }
  if (startoff < prevEnd) {
    throw new Refusal(`${what} overlaps the previous extent`);
  }
  xr.usedFsb(startblock, count, `inode ${ino}`);
  if (out) {
    if (out.length >= MAX_DIR_EXTENTS) {
      throw new Refusal(
        `directory inode ${ino} has more than ${MAX_DIR_EXTENTS} extents: more than the memory budget`,
      );
    }
    out.push({ startoff, startblock, count });
  }
  return { end: startoff + count, blocks: count };
}

/** The blocks of one fork: extents and block map blocks. */
async function readFork(
  xr: XfsReader,
  f: Fields,
  ino: number,
  format: number,
  at: number,
  size: number,
  nextents: number,
  which: string,
  out: DirExtent[] | undefined,
): Promise<number> {
  if (format === FMT_DEV || format === FMT_LOCAL) {
    if (nextents !== 0) {
      throw new Refusal(
        `inode ${ino}: ${which} fork in format ${format} counts ${nextents} extents`,
      );
    }
    return 0;
  }
  if (format === FMT_EXTENTS) {
    if (nextents * 16 > size) {
      throw new Refusal(
        `inode ${ino}: ${nextents} extents do not fit its ${which} fork of ${size} bytes`,
      );
    }
    let end = 0;
    let blocks = 0;
    for (let i = 0; i < nextents; i++) {
      const r = checkExtent(xr, f, at + 16 * i, ino, end, out);
      end = r.end;
      blocks += r.blocks;
    }
    return blocks;
  }
  if (format !== FMT_BTREE) {
    throw new Refusal(
      `inode ${ino}: ${which} fork format ${format} is unknown`,
    );
  }
  const level = f.u16(at);
  const numrecs = f.u16(at + 2);
  const maxrecs = Math.floor((size - 4) / 16);
  if (level < 1 || numrecs < 1 || numrecs > maxrecs) {
    throw new Refusal(
      `inode ${ino}: ${which} fork btree root has level ${level} and ${numrecs} entries (most ${maxrecs})`,
    );
  }
  const top: Array<{ ptr: number; key: number }> = [];
  for (let i = 0; i < numrecs; i++) {
    const key = f.u64(at + 4 + 8 * i);
    if (i > 0 && key <= top[i - 1].key) {
      throw new Refusal(
        `inode ${ino}: ${which} fork btree root keys do not ascend`,
      );
    }
    top.push({ ptr: f.u64(at + 4 + 8 * maxrecs + 8 * i), key });
  }
  let blocks = 0;
  let records = 0;
  let end = 0;
  const treeBlocks = await walkTree(
    xr,
    BMAP_TREE,
    { agno: 0, owner: ino, levels: level + 1, where: `inode ${ino}` },
    top,
    level - 1,
    (agno, agbno, what) => xr.used(agno, agbno, 1, what),
    (leaf: Leaf) => {
      for (let i = 0; i < leaf.count; i++) {
        const r = checkExtent(xr, leaf.f, leaf.at + 16 * i, ino, end, out);
        end = r.end;
        blocks += r.blocks;
        records++;
      }
    },
  );
  blocks += treeBlocks;
  if (records !== nextents) {
    throw new Refusal(
      `inode ${ino}: ${which} fork counts ${nextents} extents, its btree holds ${records}`,
    );
  }
  return blocks;
}

/**
 * Reads one inode in use and checks its forks (and, for a directory, its
 * entries against `map`).
 */
async function readInode(
  xr: XfsReader,
  raw: Uint8Array,
  ino: number,
  map: InodeMap,
  totals: InodeTotals,
): Promise<void> {
  const { sb } = xr;
  const what = `inode ${ino}`;
  const f = new Fields(raw, what);
  if (f.u16(0) !== INODE_MAGIC) {
    throw new Refusal(`${what} has magic ${hex(f.u16(0))}, not IN`);
  }
  const version = f.u8(4);
  const v3 = sb.version === 5;
  if (v3 ? version !== 3 : version !== 1 && version !== 2) {
    throw new Refusal(`${what} has version ${version}`);
  }
  if (v3) {
    checkCrc(raw, 100, what);
    if (f.u64(152) !== ino) {
      throw new Refusal(`${what} says it is inode ${f.u64(152)}`);
    }
    for (let i = 0; i < 16; i++) {
      if (raw[160 + i] !== sb.metaUuid[i]) {
        throw new Refusal(`${what} carries another filesystem's UUID`);
      }
    }
  }
  const mode = f.u16(2);
  if (mode === 0) return; // free: the kernel finds no file there
  totals.inUse++;
  if (f.u16(90) & DIFLAG_REALTIME) {
    throw new Refusal(
      `${what} is a realtime file on a filesystem without a realtime device`,
    );
  }
  const big = v3 && f.u32(124) & DIFLAG2_NREXT64;
  const nextents = big ? f.u64(24) : f.u32(76);
  const anextents = big ? f.u32(76) : f.u16(80);
  const lit = v3 ? 176 : 100;
  const litSize = sb.inodeSize - lit;
  const forkoff = f.u8(82) * 8;
  if (forkoff >= litSize) {
    throw new Refusal(
      `${what}: attribute fork offset ${forkoff} is past its ${litSize} bytes`,
    );
  }
  const dsize = forkoff ? forkoff : litSize;
  const isDir = (mode & S_IFMT) === S_IFDIR;
  const format = f.u8(5);
  const dirExtents: DirExtent[] | undefined = isDir ? [] : undefined;
  let blocks = await readFork(
    xr,
    f,
    ino,
    format,
    lit,
    dsize,
    nextents,
    "data",
    dirExtents,
  );
  if (forkoff) {
    blocks += await readFork(
      xr,
      f,
      ino,
      f.u8(83),
      lit + forkoff,
      litSize - forkoff,
      anextents,
      "attribute",
      undefined,
    );
  } else if (anextents !== 0) {
    throw new Refusal(
      `${what} counts ${anextents} attribute extents and has no attribute fork`,
    );
  }
  const nblocks = f.u64(64);
  if (nblocks !== blocks) {
    throw new Refusal(
      `${what} counts ${nblocks} blocks, its forks hold ${blocks}`,
    );
  }
  if (isDir) {
    totals.directories++;
    if (format === FMT_LOCAL) {
      readShortformDir(xr, raw.subarray(lit, lit + dsize), f.u64(56), ino, map);
    } else if (format === FMT_EXTENTS || format === FMT_BTREE) {
      await readDirectory(xr, dirExtents!, ino, map);
    } else {
      throw new Refusal(`${what} is a directory in fork format ${format}`);
    }
  }
}

/**
 * Reads every inode of AG `agno`'s chunks.
 *
 * @param xr The reader.
 * @param agno The AG.
 * @param chunks Its chunks.
 * @param map Every AG's chunks.
 * @param totals Counts, added to.
 * @throws {Refusal} For a damaged inode or one that uses free space.
 */
export async function readAgInodes(
  xr: XfsReader,
  agno: number,
  chunks: AgChunks,
  map: InodeMap,
  totals: InodeTotals,
): Promise<void> {
  const { sb } = xr;
  const agShift = 2 ** (sb.agblklog + sb.inopblog);
  for (let c = 0; c < chunks.startino.length; c++) {
    const s = chunks.startino[c];
    const hm = chunks.holemask[c];
    // Runs of allocated inodes, read a run at a time.
    let i = 0;
    while (i < INODES_PER_CHUNK) {
      if (!holeFree(hm, i)) {
        i++;
        continue;
      }
      let j = i;
      while (j < INODES_PER_CHUNK && holeFree(hm, j)) j++;
      const b0 = Math.floor((s + i) / sb.inopblock);
      const b1 = Math.floor((s + j - 1) / sb.inopblock);
      const bytes = await xr.readBlocks(
        agno,
        b0,
        b1 - b0 + 1,
        `inode chunk ${s} of AG ${agno}`,
      );
      for (let k = i; k < j; k++) {
        const at = (s + k - b0 * sb.inopblock) * sb.inodeSize;
        await readInode(
          xr,
          bytes.subarray(at, at + sb.inodeSize),
          agno * agShift + s + k,
          map,
          totals,
        );
      }
      i = j;
    }
  }
}
