/**
 * Directory entries, read only for the inode numbers they name: every one
 * must lie in a chunk the inode btrees list, or a file could live in
 * blocks the free-space btrees call free while no inode pass sees it. The
 * kernel finds an entry two ways, by walking a data block from its start
 * (readdir) and by a leaf's address (lookup by name), so both are
 * followed: every data block is walked entry by entry, and every leaf
 * address must point at the start of an entry found that way.
 *
 * ```text
 * short form (in the inode): count u8, i8count u8, parent (4 or 8 bytes), then
 *   entries: namelen u8, offset u16, name, [ftype u8], inode (4 or 8 bytes)
 * data block: header (v4 16 bytes: magic "XD2B"/"XD2D" and best-free table;
 *   v5 64: magic "XDB3"/"XDD3", crc, blkno, lsn, uuid, owner, best-free)
 *   entries: inode u64, namelen u8, name, [ftype u8], padding, tag u16 (its own
 *   offset), 8-byte aligned; unused space: 0xffff, length u16, ..., tag u16
 * single-block directory: leaf entries (hash u32, address u32) and a tail
 *   (count u32, stale u32) at the block's end
 * leaf blocks (from byte 32 GiB of the directory): v4 header 16 bytes, v5 64,
 *   magic u16 at byte 8 (0xd2f1/0x3df1 leaf, 0xd2ff/0x3dff leafn,
 *   0xfebe/0x3ebe node); count u16 and stale u16 after the block info;
 *   entries: hash u32, address u32 (8-byte units from the start, 0 unused)
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import type { InodeMap } from "./inodes.ts";
import type { XfsReader } from "./reader.ts";
import { checkCrc, Fields } from "./superblock.ts";

/** One extent of a directory's data fork. */
export interface DirExtent {
  startoff: number;
  startblock: number;
  count: number;
}

/** Byte offset in a directory where leaf blocks start, and free-index blocks. */
const LEAF_OFFSET = 32 * 2 ** 30;
const FREE_OFFSET = 2 * LEAF_OFFSET;
const DATA_MAGIC = {
  block: [0x58443242, 0x58444233], // XD2B, XDB3
  data: [0x58443244, 0x58444433], // XD2D, XDD3
};
const LEAF1_MAGIC = [0xd2f1, 0x3df1];
const LEAFN_MAGIC = [0xd2ff, 0x3dff];
const NODE_MAGIC = [0xfebe, 0x3ebe];
/** Most entries of one directory tracked for the leaf check. */
export const MAX_DIR_ENTRIES = 1 << 22;

function checkTarget(
  map: InodeMap,
  dir: number,
  target: number,
  where: string,
): void {
  if (!map.has(target)) {
    throw new Refusal(
      `directory inode ${dir} names inode ${target} (${where}), which no inode btree lists`,
    );
  }
}

/**
 * Reads a short-form directory (held in the inode) and checks the inodes
 * it names.
 *
 * @throws {Refusal} For an entry past the fork or an unlisted inode.
 */
export function readShortformDir(
  xr: XfsReader,
  fork: Uint8Array,
  size: number,
  ino: number,
  map: InodeMap,
): void {
  const what = `directory inode ${ino}`;
  if (size < 6 || size > fork.length) {
    throw new Refusal(`${what}: short-form size ${size} does not fit its fork`);
  }
  const f = new Fields(fork.subarray(0, size), what);
  const count = f.u8(0);
  const i8 = f.u8(1) > 0;
  const isz = i8 ? 8 : 4;
  const inum = (at: number) => i8 ? f.u64(at) : f.u32(at);
  if (2 + isz > size) {
    throw new Refusal(`${what}: short-form header is truncated`);
  }
  checkTarget(map, ino, inum(2), "parent");
  let at = 2 + isz;
  const ft = xr.sb.ftype ? 1 : 0;
  for (let i = 0; i < count; i++) {
    if (at + 3 > size) throw new Refusal(`${what}: entry ${i} is truncated`);
    const namelen = f.u8(at);
    const end = at + 3 + namelen + ft + isz;
    if (namelen === 0 || end > size) {
      throw new Refusal(`${what}: entry ${i} is truncated`);
    }
    checkTarget(map, ino, inum(end - isz), `entry ${i}`);
    at = end;
  }
}

/** Entry starts of a directory, as byte offsets in its data space, ascending. */
class EntryStarts {
  a = new Float64Array(256);
  n = 0;
  push(v: number, dir: number): void {
    if (this.n === this.a.length) {
      if (this.n >= MAX_DIR_ENTRIES) {
        throw new Refusal(
          `directory inode ${dir} holds more than ${MAX_DIR_ENTRIES} entries: more than the memory budget`,
        );
      }
      const b = new Float64Array(this.n * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  has(v: number): boolean {
    let lo = 0;
    let hi = this.n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.a[mid] < v) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.n && this.a[lo] === v;
  }
}

/**
 * Reads the data and leaf blocks of a directory in extents or btree
 * format and checks the inodes it names.
 *
 * @param xr The reader.
 * @param extents Its data fork's extents, ascending by file block.
 * @param ino The directory.
 * @param map The allocated inodes.
 * @throws {Refusal} For a damaged block, an unlisted inode, or a leaf
 * address that is not an entry.
 */
export async function readDirectory(
  xr: XfsReader,
  extents: DirExtent[],
  ino: number,
  map: InodeMap,
): Promise<void> {
  const { sb } = xr;
  const dbs = sb.dirBlockSize;
  const fsbPer = dbs / sb.blockSize;
  const v5 = sb.version === 5 ? 1 : 0;
  const starts = new EntryStarts();
  const addresses: number[] = [];
  const what = `directory inode ${ino}`;
  // Directory blocks in order, each made of fsbPer file blocks, generated
  // as they are read (an extent may claim millions of blocks).
  let single = false;
  let seen = 0;
  let last = -1;
  outer:
  for (const e of extents) {
    for (
      let db = Math.floor(e.startoff / fsbPer);
      db * fsbPer < e.startoff + e.count;
      db++
    ) {
      if (db === last) continue;
      last = db;
      seen++;
      if (!(await readOne(db))) break outer;
    }
  }
  if (single && seen > 1) {
    throw new Refusal(`${what}: a single-block directory has other blocks`);
  }
  for (const a of addresses) {
    if (a === 0) continue; // a stale entry
    if (!starts.has(a * 8)) {
      throw new Refusal(
        `${what}: a leaf entry points at byte ${
          a * 8
        }, which is not the start of an entry`,
      );
    }
  }

  /** Reads directory block `db`; false past the leaf blocks. */
  async function readOne(db: number): Promise<boolean> {
    const byteOff = db * dbs;
    if (byteOff >= FREE_OFFSET) return false; // free-index blocks name no inode
    const bytes = await readDirBlock(xr, extents, db, fsbPer, what);
    const f = new Fields(bytes, what);
    const where = `${what} block ${db}`;
    if (byteOff < LEAF_OFFSET) {
      const magic = f.u32(0);
      const isBlock = magic === DATA_MAGIC.block[v5];
      if (!isBlock && magic !== DATA_MAGIC.data[v5]) {
        throw new Refusal(`${where} has magic ${hex(magic)}, not a data block`);
      }
      if (v5) {
        checkDirV5(xr, bytes, f, extents, db, fsbPer, ino, 4, 8, 40, where);
      }
      let end = dbs;
      if (isBlock) {
        if (db !== 0) {
          throw new Refusal(
            `${where}: a single-block directory block is not block 0`,
          );
        }
        single = true;
        const count = f.u32(dbs - 8);
        end = dbs - 8 - 8 * count;
        if (count > dbs / 8 || end < (v5 ? 64 : 16)) {
          throw new Refusal(`${where}: ${count} leaf entries do not fit`);
        }
        for (let i = 0; i < count; i++) addresses.push(f.u32(end + 8 * i + 4));
      }
      walkData(xr, f, v5 ? 64 : 16, end, byteOff, ino, map, starts, where);
    } else {
      const magic = f.u16(8);
      const leaf = magic === LEAF1_MAGIC[v5] || magic === LEAFN_MAGIC[v5];
      if (!leaf && magic !== NODE_MAGIC[v5]) {
        throw new Refusal(
          `${where} has magic ${hex(magic)}, not a leaf or node block`,
        );
      }
      if (v5) {
        checkDirV5(xr, bytes, f, extents, db, fsbPer, ino, 12, 16, 48, where);
      }
      if (leaf) {
        const hdr = v5 ? 64 : 16;
        const count = f.u16(v5 ? 56 : 12);
        if (hdr + 8 * count > dbs) {
          throw new Refusal(`${where}: ${count} leaf entries do not fit`);
        }
        for (let i = 0; i < count; i++) addresses.push(f.u32(hdr + 8 * i + 4));
      }
    }
    if (addresses.length > MAX_DIR_ENTRIES) {
      throw new Refusal(
        `${what} has more than ${MAX_DIR_ENTRIES} leaf entries: more than the memory budget`,
      );
    }
    return true;
  }
}

function walkData(
  xr: XfsReader,
  f: Fields,
  from: number,
  end: number,
  byteOff: number,
  ino: number,
  map: InodeMap,
  starts: EntryStarts,
  where: string,
): void {
  const ft = xr.sb.ftype ? 1 : 0;
  let at = from;
  while (at < end) {
    if (at + 8 > end) {
      throw new Refusal(`${where}: entry at byte ${at} is truncated`);
    }
    if (f.u16(at) === 0xffff) {
      const len = f.u16(at + 2);
      if (len < 8 || len % 8 !== 0 || at + len > end) {
        throw new Refusal(
          `${where}: unused space at byte ${at} of ${len} bytes does not fit`,
        );
      }
      at += len;
      continue;
    }
    const namelen = f.u8(at + 8);
    const size = Math.ceil((8 + 1 + namelen + ft + 2) / 8) * 8;
    if (namelen === 0 || at + size > end) {
      throw new Refusal(`${where}: entry at byte ${at} is truncated`);
    }
    if (f.u16(at + size - 2) !== at) {
      throw new Refusal(
        `${where}: entry at byte ${at} has tag ${f.u16(at + size - 2)}`,
      );
    }
    checkTarget(map, ino, f.u64(at), `block entry at byte ${byteOff + at}`);
    starts.push(byteOff + at, ino);
    at += size;
  }
}

function checkDirV5(
  xr: XfsReader,
  bytes: Uint8Array,
  f: Fields,
  extents: DirExtent[],
  db: number,
  fsbPer: number,
  ino: number,
  crcAt: number,
  blknoAt: number,
  ownerAt: number,
  where: string,
): void {
  checkCrc(bytes, crcAt, where);
  const fsb = mapBlock(extents, db * fsbPer);
  const [agno, agbno] = xr.splitFsb(fsb, where);
  if (f.u64(blknoAt) !== xr.daddrOf(agno, agbno)) {
    throw new Refusal(`${where} says it is at disk address ${f.u64(blknoAt)}`);
  }
  if (f.u64(ownerAt) !== ino) {
    throw new Refusal(`${where} belongs to inode ${f.u64(ownerAt)}`);
  }
}

/** The filesystem block holding file block `fileBlock`, or -1 (a hole). */
function mapBlock(extents: DirExtent[], fileBlock: number): number {
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (extents[mid].startoff <= fileBlock) lo = mid + 1;
    else hi = mid;
  }
  const e = extents[lo - 1];
  if (!e || fileBlock >= e.startoff + e.count) return -1;
  return e.startblock + (fileBlock - e.startoff);
}

async function readDirBlock(
  xr: XfsReader,
  extents: DirExtent[],
  db: number,
  fsbPer: number,
  what: string,
): Promise<Uint8Array> {
  const out = new Uint8Array(fsbPer * xr.sb.blockSize);
  for (let i = 0; i < fsbPer;) {
    const fsb = mapBlock(extents, db * fsbPer + i);
    if (fsb < 0) {
      throw new Refusal(`${what}: directory block ${db} is partly a hole`);
    }
    const [agno, agbno] = xr.splitFsb(fsb, what);
    let n = 1;
    while (
      i + n < fsbPer && mapBlock(extents, db * fsbPer + i + n) === fsb + n &&
      agbno + n < xr.agLength(agno)
    ) n++;
    out.set(
      await xr.readBlocks(agno, agbno, n, `${what} block ${db}`),
      i * xr.sb.blockSize,
    );
    i += n;
  }
  return out;
}
