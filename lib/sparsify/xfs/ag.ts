/**
 * One allocation group's headers and trees: the AGF (free space), the AGI
 * (inodes) and the AGFL (blocks kept for btree growth), each in its own
 * sector after the superblock copy; the free-space btrees by block and by
 * count, which must list exactly the same extents and add up to the AGF's
 * counts; the inode btrees, whose chunks are kept for the inode pass; and
 * the reverse-map and reference-count trees where present, whose records
 * must not touch free space either.
 *
 * ```text
 * AGF:  0 magic "XAGF"  4 version (1)  8 seqno  12 length  16 roots[bno, cnt, rmap]
 *      28 levels[bno, cnt, rmap]  40 flfirst  44 fllast  48 flcount  52 freeblks
 *      56 longest  60 btreeblks  64 uuid[16]  80 rmap_blocks  84 refcount_blocks
 *      88 refcount_root  92 refcount_level  216 crc (le32, over the sector)
 * AGI:  0 magic "XAGI"  4 version  8 seqno  12 length  16 count  20 root  24 level
 *      28 freecount  40 unlinked[64]  296 uuid[16]  312 crc  328 free_root
 *      332 free_level  336 iblocks  340 fblocks
 * AGFL: v5 0 magic "XAFL"  4 seqno  8 uuid[16]  32 crc, block numbers from 36;
 *       v4 block numbers from 0
 * free-space record: startblock u32, blockcount u32
 * inode record: startino u32, then holemask u16 count u8 freecount u8 (sparse
 *       inodes) or freecount u32, then free u64 (bit i: inode startino+i free)
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import { type Leaf, type TreeKind, walkTree } from "./btree.ts";
import { MAX_FREE_EXTENTS, type XfsReader } from "./reader.ts";
import { checkCrc, Fields } from "./superblock.ts";

const XAGF = 0x58414746;
const XAGI = 0x58414749;
const XAFL = 0x5841464c;
/** `NULLAGINO`: an empty unlinked-list bucket. */
const NULLAGINO = 0xffffffff;
/** Inodes per inode btree record. */
export const INODES_PER_CHUNK = 64;
/** Inodes per bit of a sparse record's hole mask. */
const INODES_PER_HOLEMASK_BIT = 4;
/** Most inode chunks kept, all AGs together (6 bytes each). */
export const MAX_CHUNKS = 1 << 22;

const u32Key = (f: Fields, at: number) => f.u32(at);

/** Free space by block number. */
export const BNO_TREE: TreeKind = {
  name: "free-space btree by block",
  magic: [0x41425442, 0x41423342], // ABTB, AB3B
  recSize: 8,
  keySize: 8,
  ptrSize: 4,
  long: false,
  recKey: u32Key,
  nodeKey: u32Key,
};

const cntKey = (f: Fields, at: number) =>
  f.u32(at + 4) * 0x1_0000_0000 + f.u32(at);
/** Free space by length (then block number). */
export const CNT_TREE: TreeKind = {
  name: "free-space btree by count",
  magic: [0x41425443, 0x41423343], // ABTC, AB3C
  recSize: 8,
  keySize: 8,
  ptrSize: 4,
  long: false,
  recKey: cntKey,
  nodeKey: cntKey,
};

/** Inode chunks. */
export const INO_TREE: TreeKind = {
  name: "inode btree",
  magic: [0x49414254, 0x49414233], // IABT, IAB3
  recSize: 16,
  keySize: 4,
  ptrSize: 4,
  long: false,
  recKey: u32Key,
  nodeKey: u32Key,
};

/** Inode chunks with free inodes. */
export const FINO_TREE: TreeKind = {
  ...INO_TREE,
  name: "free inode btree",
  magic: [0x46494254, 0x46494233], // FIBT, FIB3
};

/** Reverse map (v5 only); nodes hold a low and a high key of 20 bytes each. */
export const RMAP_TREE: TreeKind = {
  name: "reverse-map btree",
  magic: [0, 0x524d4233], // RMB3
  recSize: 24,
  keySize: 40,
  ptrSize: 4,
  long: false,
  recKey: u32Key,
  nodeKey: u32Key,
  equalKeys: true,
};

/** Reference counts of shared extents (v5 only). */
export const REFCOUNT_TREE: TreeKind = {
  name: "refcount btree",
  magic: [0, 0x52334643], // R3FC
  recSize: 12,
  keySize: 4,
  ptrSize: 4,
  long: false,
  recKey: u32Key,
  nodeKey: u32Key,
};

/** The inode chunks of one AG, ascending. */
export interface AgChunks {
  /** First AG inode number of each chunk. */
  startino: Uint32Array;
  /** Hole mask (bit i: inodes 4i..4i+3 not allocated); 0 without sparse inodes. */
  holemask: Uint16Array;
  /** Free inodes of each chunk as the record counts them. */
  freecount: Uint8Array;
}

/** What an AG's pass leaves for the inode pass and the totals. */
export interface AgSummary {
  chunks: AgChunks;
  freeblks: number;
  flcount: number;
  btreeblks: number;
  inodes: number;
  freeInodes: number;
}

function popcount32(n: number): number {
  n = n - ((n >>> 1) & 0x55555555);
  n = (n & 0x33333333) + ((n >>> 2) & 0x33333333);
  return (((n + (n >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** Inodes `[4i, 4i + 4)` of a chunk exist when bit `i` of the hole mask is clear. */
export function holeFree(holemask: number, i: number): boolean {
  return (holemask & (1 << Math.floor(i / INODES_PER_HOLEMASK_BIT))) === 0;
}

class Growable {
  a: Uint32Array = new Uint32Array(64);
  n = 0;
  push(v: number): void {
    if (this.n === this.a.length) {
      const b = new Uint32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  done(): Uint32Array {
    return this.a.slice(0, this.n);
  }
}

function checkHeader(
  xr: XfsReader,
  f: Fields,
  bytes: Uint8Array,
  agno: number,
  what: string,
  magic: number,
  crcAt: number,
  uuidAt: number,
): void {
  if (f.u32(0) !== magic) {
    throw new Refusal(`${what} has magic ${hex(f.u32(0))}, not ${hex(magic)}`);
  }
  if (f.u32(4) !== 1) throw new Refusal(`${what} version ${f.u32(4)} is not 1`);
  if (f.u32(8) !== agno) {
    throw new Refusal(`${what} says it is AG ${f.u32(8)}`);
  }
  if (f.u32(12) !== xr.agLength(agno)) {
    throw new Refusal(
      `${what} says the AG has ${f.u32(12)} blocks, not ${xr.agLength(agno)}`,
    );
  }
  if (xr.sb.version === 5) {
    checkCrc(bytes, crcAt, what);
    for (let i = 0; i < 16; i++) {
      if (bytes[uuidAt + i] !== xr.sb.metaUuid[i]) {
        throw new Refusal(`${what} carries another filesystem's UUID`);
      }
    }
  }
}

function rootOf(
  xr: XfsReader,
  agno: number,
  root: number,
  levels: number,
  what: string,
): void {
  if (root === 0 || root >= xr.agLength(agno) || levels < 1 || levels > 9) {
    throw new Refusal(
      `${what} of AG ${agno}: root block ${root} or ${levels} levels out of range`,
    );
  }
}

/** Reads one short-form tree whole, handing its leaves to `visit`. */
function walkAgTree(
  xr: XfsReader,
  kind: TreeKind,
  agno: number,
  root: number,
  levels: number,
  onBlock: (agno: number, agbno: number, what: string) => void,
  visit: (leaf: Leaf) => void,
): Promise<number> {
  rootOf(xr, agno, root, levels, kind.name);
  return walkTree(
    xr,
    kind,
    { agno, owner: agno, levels, where: `AG ${agno}` },
    [{ ptr: root, key: undefined }],
    levels - 1,
    onBlock,
    visit,
  );
}

/**
 * Reads and checks AG `agno`: its headers, free-space trees (recorded in
 * `xr.free`), free list, reverse-map and refcount trees, and inode trees.
 *
 * @param xr The reader.
 * @param agno The AG.
 * @param chunkBudget Inode chunks that may still be kept.
 * @returns What the inode pass and the totals need.
 * @throws {Refusal} For any inconsistency, naming the structure.
 */
export async function readAg(
  xr: XfsReader,
  agno: number,
  chunkBudget: number,
): Promise<AgSummary> {
  const { sb } = xr;
  const ss = sb.sectSize;
  const hdr = await xr.read(xr.byteOf(agno, 0), 4 * ss, `AG ${agno} headers`);
  const agfBytes = hdr.subarray(ss, 2 * ss);
  const agiBytes = hdr.subarray(2 * ss, 3 * ss);
  const aflBytes = hdr.subarray(3 * ss, 4 * ss);
  const agf = new Fields(agfBytes, `AGF of AG ${agno}`);
  const agi = new Fields(agiBytes, `AGI of AG ${agno}`);
  checkHeader(xr, agf, agfBytes, agno, `AGF of AG ${agno}`, XAGF, 216, 64);
  checkHeader(xr, agi, agiBytes, agno, `AGI of AG ${agno}`, XAGI, 312, 296);
  const agLen = xr.agLength(agno);

  // Free space by block: the extents, ascending and apart.
  const starts = new Growable();
  const lens = new Growable();
  const bnoBlocks: number[] = [];
  const room = xr.freeRoom;
  let prevEnd = 0;
  let total = 0;
  let longest = 0;
  const nBno = await walkAgTree(
    xr,
    BNO_TREE,
    agno,
    agf.u32(16),
    agf.u32(28),
    (_a, b) => bnoBlocks.push(b),
    ({ f, at, count }) => {
      for (let i = 0; i < count; i++) {
        const s = f.u32(at + 8 * i);
        const n = f.u32(at + 8 * i + 4);
        if (n === 0 || s < prevEnd || s + n > agLen) {
          throw new Refusal(
            `free-space btree by block of AG ${agno}: extent ${s}+${n} overlaps the previous one or leaves the AG (${agLen} blocks)`,
          );
        }
        if (starts.n >= room) {
          throw new Refusal(
            `free space is in more than ${MAX_FREE_EXTENTS} extents: more than the memory budget`,
          );
        }
        prevEnd = s + n;
        total += n;
        longest = Math.max(longest, n);
        starts.push(s);
        lens.push(n);
      }
    },
  );
  const free = { starts: starts.done(), lens: lens.done() };
  xr.setFree(agno, free.starts, free.lens);
  const hdrBlocks = Math.ceil(4 * ss / sb.blockSize);
  xr.used(agno, 0, hdrBlocks, `AG ${agno} headers`);
  for (const b of bnoBlocks) {
    xr.used(agno, b, 1, `free-space btree by block of AG ${agno}`);
  }

  // Free space by count: exactly the same extents.
  let cntRecords = 0;
  const nCnt = await walkAgTree(
    xr,
    CNT_TREE,
    agno,
    agf.u32(20),
    agf.u32(32),
    (a, b, what) => xr.used(a, b, 1, what),
    ({ f, at, count }) => {
      for (let i = 0; i < count; i++) {
        const s = f.u32(at + 8 * i);
        const n = f.u32(at + 8 * i + 4);
        const k = findStart(free.starts, s);
        if (k < 0 || free.lens[k] !== n) {
          throw new Refusal(
            `free-space btrees of AG ${agno} disagree: extent ${s}+${n} is in the by-count tree, not in the by-block tree`,
          );
        }
        cntRecords++;
      }
    },
  );
  if (cntRecords !== free.starts.length) {
    throw new Refusal(
      `free-space btrees of AG ${agno} disagree: ${free.starts.length} extents by block, ${cntRecords} by count`,
    );
  }
  if (agf.u32(52) !== total) {
    throw new Refusal(
      `AGF of AG ${agno} counts ${
        agf.u32(52)
      } free blocks, its free-space btree holds ${total}`,
    );
  }
  if (agf.u32(56) !== longest) {
    throw new Refusal(
      `AGF of AG ${agno} says the longest free extent has ${
        agf.u32(56)
      } blocks, its free-space btree's has ${longest}`,
    );
  }

  // The free list: blocks kept for btree growth, in use.
  const flcount = readFreeList(xr, agno, agf, aflBytes);

  let btreeblks = nBno - 1 + nCnt - 1;
  if (sb.rmapbt) {
    const nRmap = await walkAgTree(
      xr,
      RMAP_TREE,
      agno,
      agf.u32(24),
      agf.u32(36),
      (a, b, what) => xr.used(a, b, 1, what),
      ({ f, at, count }) => {
        for (let i = 0; i < count; i++) {
          const s = f.u32(at + 24 * i);
          const n = f.u32(at + 24 * i + 4);
          xr.used(agno, s, n, `reverse-map record ${s}+${n} of AG ${agno}`);
        }
      },
    );
    if (agf.u32(80) !== nRmap) {
      throw new Refusal(
        `AGF of AG ${agno} counts ${
          agf.u32(80)
        } reverse-map btree blocks, the tree has ${nRmap}`,
      );
    }
    btreeblks += nRmap - 1;
  }
  if (sb.reflink) {
    const nRefc = await walkAgTree(
      xr,
      REFCOUNT_TREE,
      agno,
      agf.u32(88),
      agf.u32(92),
      (a, b, what) => xr.used(a, b, 1, what),
      ({ f, at, count }) => {
        for (let i = 0; i < count; i++) {
          const s = f.u32(at + 12 * i) & 0x7fffffff; // bit 31: CoW staging
          const n = f.u32(at + 12 * i + 4);
          xr.used(agno, s, n, `refcount record ${s}+${n} of AG ${agno}`);
        }
      },
    );
    if (agf.u32(84) !== nRefc) {
      throw new Refusal(
        `AGF of AG ${agno} counts ${
          agf.u32(84)
        } refcount btree blocks, the tree has ${nRefc}`,
      );
    }
  }
  if (sb.lazyCount && agf.u32(60) !== btreeblks) {
    throw new Refusal(
      `AGF of AG ${agno} counts ${
        agf.u32(60)
      } free-space btree blocks past the roots, the trees have ${btreeblks}`,
    );
  }

  const inodes = await readInodeTrees(xr, agno, agi, chunkBudget);
  return {
    chunks: inodes.chunks,
    freeblks: total,
    flcount,
    btreeblks: agf.u32(60),
    inodes: inodes.count,
    freeInodes: inodes.free,
  };
}

function findStart(starts: Uint32Array, s: number): number {
  let lo = 0;
  let hi = starts.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (starts[mid] < s) lo = mid + 1;
    else hi = mid;
  }
  return lo < starts.length && starts[lo] === s ? lo : -1;
}

function readFreeList(
  xr: XfsReader,
  agno: number,
  agf: Fields,
  afl: Uint8Array,
): number {
  const { sb } = xr;
  const what = `AGFL of AG ${agno}`;
  const f = new Fields(afl, what);
  let at = 0;
  if (sb.version === 5) {
    if (f.u32(0) !== XAFL) {
      throw new Refusal(`${what} has magic ${hex(f.u32(0))}, not XAFL`);
    }
    if (f.u32(4) !== agno) {
      throw new Refusal(`${what} says it is AG ${f.u32(4)}`);
    }
    checkCrc(afl, 32, what);
    at = 36;
  }
  const slots = (sb.sectSize - at) / 4;
  const first = agf.u32(40);
  const last = agf.u32(44);
  const count = agf.u32(48);
  if (count > slots || (count > 0 && (first >= slots || last >= slots))) {
    throw new Refusal(
      `AGF of AG ${agno}: free list of ${count} blocks from slot ${first} to ${last} does not fit ${slots} slots`,
    );
  }
  if (count > 0 && (last - first + slots) % slots + 1 !== count) {
    throw new Refusal(
      `AGF of AG ${agno}: free list slots ${first} to ${last} do not hold ${count} blocks`,
    );
  }
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) {
    const b = f.u32(at + 4 * ((first + i) % slots));
    if (seen.has(b)) {
      throw new Refusal(`${what} lists block ${b} twice`);
    }
    seen.add(b);
    xr.used(agno, b, 1, `${what} block`);
  }
  return count;
}

async function readInodeTrees(
  xr: XfsReader,
  agno: number,
  agi: Fields,
  chunkBudget: number,
): Promise<{ chunks: AgChunks; count: number; free: number }> {
  const { sb } = xr;
  const agLen = xr.agLength(agno);
  const startino = new Growable();
  const holes = new Growable();
  const frees = new Growable();
  let count = 0;
  let free = 0;
  let nextStart = 0;
  const nIno = await walkAgTree(
    xr,
    INO_TREE,
    agno,
    agi.u32(20),
    agi.u32(24),
    (a, b, what) => xr.used(a, b, 1, what),
    ({ f, at, count: n }) => {
      for (let i = 0; i < n; i++) {
        const r = at + 16 * i;
        const s = f.u32(r);
        const what = `inode btree record ${s} of AG ${agno}`;
        let holemask = 0;
        let icount = INODES_PER_CHUNK;
        let freecount: number;
        if (sb.sparseInodes) {
          holemask = f.u16(r + 4);
          icount = f.u8(r + 6);
          freecount = f.u8(r + 7);
          if (icount !== INODES_PER_CHUNK - 4 * popcount32(holemask)) {
            throw new Refusal(
              `${what} counts ${icount} inodes, its hole mask ${
                hex(holemask)
              } leaves ${INODES_PER_CHUNK - 4 * popcount32(holemask)}`,
            );
          }
        } else {
          freecount = f.u32(r + 4);
        }
        const freeHi = f.u32(r + 8);
        const freeLo = f.u32(r + 12);
        // Inodes in holes are marked free; the rest must match the count.
        let inHoles = 0;
        let realFree = 0;
        for (let j = 0; j < INODES_PER_CHUNK; j++) {
          const bit = j < 32 ? (freeLo >>> j) & 1 : (freeHi >>> (j - 32)) & 1;
          if (!holeFree(holemask, j)) {
            if (!bit) inHoles++;
          } else if (bit) realFree++;
        }
        if (inHoles > 0 || realFree !== freecount) {
          throw new Refusal(
            `${what} counts ${freecount} free inodes, its free mask says ${realFree}${
              inHoles ? ` and ${inHoles} inodes in holes are in use` : ""
            }`,
          );
        }
        if (s < nextStart) {
          throw new Refusal(`${what} overlaps the previous chunk`);
        }
        nextStart = s + INODES_PER_CHUNK;
        // The chunk's blocks, granule by granule.
        for (let g = 0; g < INODES_PER_CHUNK; g += INODES_PER_HOLEMASK_BIT) {
          if (!holeFree(holemask, g)) continue;
          const b0 = Math.floor((s + g) / sb.inopblock);
          const b1 = Math.floor(
            (s + g + INODES_PER_HOLEMASK_BIT - 1) /
              sb.inopblock,
          );
          if (b1 >= agLen) {
            throw new Refusal(`${what}: its inodes lie past the end of the AG`);
          }
          xr.used(agno, b0, b1 - b0 + 1, `inode chunk ${s} of AG ${agno}`);
        }
        if (startino.n >= chunkBudget) {
          throw new Refusal(
            `more than ${MAX_CHUNKS} inode chunks: more than the memory budget`,
          );
        }
        startino.push(s);
        holes.push(holemask);
        frees.push(freecount);
        count += icount;
        free += freecount;
      }
    },
  );
  const chunks: AgChunks = {
    startino: startino.done(),
    holemask: Uint16Array.from(holes.done()),
    freecount: Uint8Array.from(frees.done()),
  };
  if (agi.u32(16) !== count || agi.u32(28) !== free) {
    throw new Refusal(
      `AGI of AG ${agno} counts ${agi.u32(16)} inodes (${
        agi.u32(28)
      } free), its inode btree holds ${count} (${free} free)`,
    );
  }
  for (let i = 0; i < 64; i++) {
    const head = agi.u32(40 + 4 * i);
    if (head !== NULLAGINO) {
      throw new Refusal(
        `AGI of AG ${agno} lists unlinked inodes (bucket ${i} starts at inode ${head}): not cleanly unmounted`,
      );
    }
  }
  if (sb.inobtCounts && agi.u32(336) !== nIno) {
    throw new Refusal(
      `AGI of AG ${agno} counts ${
        agi.u32(336)
      } inode btree blocks, the tree has ${nIno}`,
    );
  }
  if (sb.finobt) {
    let withFree = 0;
    for (const c of chunks.freecount) if (c > 0) withFree++;
    let listed = 0;
    const nFino = await walkAgTree(
      xr,
      FINO_TREE,
      agno,
      agi.u32(328),
      agi.u32(332),
      (a, b, what) => xr.used(a, b, 1, what),
      ({ f, at, count: n }) => {
        for (let i = 0; i < n; i++) {
          const r = at + 16 * i;
          const s = f.u32(r);
          const k = findStart(chunks.startino, s);
          const fc = sb.sparseInodes ? f.u8(r + 7) : f.u32(r + 4);
          const hm = sb.sparseInodes ? f.u16(r + 4) : 0;
          if (
            k < 0 || chunks.freecount[k] !== fc || chunks.holemask[k] !== hm ||
            fc === 0
          ) {
            throw new Refusal(
              `free inode btree record ${s} of AG ${agno} does not match the inode btree`,
            );
          }
          listed++;
        }
      },
    );
    if (listed !== withFree) {
      throw new Refusal(
        `free inode btree of AG ${agno} lists ${listed} chunks, the inode btree has ${withFree} with free inodes`,
      );
    }
    if (sb.inobtCounts && agi.u32(340) !== nFino) {
      throw new Refusal(
        `AGI of AG ${agno} counts ${
          agi.u32(340)
        } free inode btree blocks, the tree has ${nFino}`,
      );
    }
  }
  return { chunks, count, free };
}
