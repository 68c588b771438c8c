/**
 * The XFS superblock (`struct xfs_dsb`, big-endian, in the first sector of
 * every allocation group; the primary is AG 0's): geometry, version and
 * feature bits, the log's place, and the v5 CRC32C. Anything unknown,
 * inconsistent or needing repair is refused.
 *
 * ```text
 *   0 magicnum "XFSB"   4 blocksize u32      8 dblocks u64      16 rblocks u64
 *  24 rextents u64     32 uuid[16]          48 logstart u64    56 rootino u64
 *  64 rbmino u64       72 rsumino u64       80 rextsize u32    84 agblocks u32
 *  88 agcount u32      92 rbmblocks u32     96 logblocks u32  100 versionnum u16
 * 102 sectsize u16    104 inodesize u16    106 inopblock u16  120 blocklog u8
 * 121 sectlog u8      122 inodelog u8      123 inopblog u8    124 agblklog u8
 * 126 inprogress u8   128 icount u64       136 ifree u64      144 fdblocks u64
 * 160 uquotino u64    168 gquotino u64     180 inoalignmt u32 192 dirblklog u8
 * 200 features2 u32   204 bad_features2 u32
 * v5: 208 features_compat  212 features_ro_compat  216 features_incompat
 *     220 features_log_incompat  224 crc (le32, over the sector)
 *     228 spino_align u32  232 pquotino u64  248 meta_uuid[16]
 * ```
 *
 * @module
 */

import { crc32cRaw } from "../../bytes/crc.ts";
import { hex, Refusal } from "../_region.ts";

/** `sb_magicnum`: "XFSB". */
export const XFS_SB_MAGIC = 0x58465342;
/** Basic block: the unit of disk addresses (`daddr`) and of the log. */
export const BBSIZE = 512;
/** Smallest allocation group the kernel accepts, in blocks. */
const XFS_MIN_AG_BLOCKS = 64;
/** Largest allocation group, in bytes (1 TiB). */
const XFS_MAX_AG_BYTES = 2 ** 40;
/** Most allocation groups handled. */
export const XFS_MAX_AGCOUNT = 1 << 20;

/** Superblock field offsets. */
export const SB = {
  MAGIC: 0,
  BLOCKSIZE: 4,
  DBLOCKS: 8,
  RBLOCKS: 16,
  REXTENTS: 24,
  UUID: 32,
  LOGSTART: 48,
  ROOTINO: 56,
  RBMINO: 64,
  RSUMINO: 72,
  AGBLOCKS: 84,
  AGCOUNT: 88,
  RBMBLOCKS: 92,
  LOGBLOCKS: 96,
  VERSIONNUM: 100,
  SECTSIZE: 102,
  INODESIZE: 104,
  INOPBLOCK: 106,
  BLOCKLOG: 120,
  SECTLOG: 121,
  INODELOG: 122,
  INOPBLOG: 123,
  AGBLKLOG: 124,
  INPROGRESS: 126,
  ICOUNT: 128,
  IFREE: 136,
  FDBLOCKS: 144,
  UQUOTINO: 160,
  GQUOTINO: 168,
  INOALIGNMT: 180,
  DIRBLKLOG: 192,
  FEATURES2: 200,
  BAD_FEATURES2: 204,
  FEATURES_COMPAT: 208,
  FEATURES_RO_COMPAT: 212,
  FEATURES_INCOMPAT: 216,
  FEATURES_LOG_INCOMPAT: 220,
  CRC: 224,
  SPINO_ALIGN: 228,
  PQUOTINO: 232,
  META_UUID: 248,
  /** End of the v5 fields read here. */
  V5_END: 264,
} as const;

/** `sb_versionnum` bits (the low four are the version). */
export const VERSION = {
  NUMBITS: 0x000f,
  ATTR: 0x0010,
  NLINK: 0x0020,
  QUOTA: 0x0040,
  ALIGN: 0x0080,
  DALIGN: 0x0100,
  SHARED: 0x0200,
  LOGV2: 0x0400,
  SECTOR: 0x0800,
  EXTFLG: 0x1000,
  DIRV2: 0x2000,
  BORG: 0x4000,
  MOREBITS: 0x8000,
} as const;

/** `sb_features2` bits. */
export const FEATURES2 = {
  LAZYSBCOUNT: 0x0002,
  ATTR2: 0x0008,
  PARENT: 0x0010,
  PROJID32: 0x0080,
  CRC: 0x0100,
  FTYPE: 0x0200,
} as const;

/** v5 read-only-compatible feature bits. */
export const RO_COMPAT = {
  FINOBT: 1 << 0,
  RMAPBT: 1 << 1,
  REFLINK: 1 << 2,
  INOBTCNT: 1 << 3,
} as const;

/** v5 incompatible feature bits. */
export const INCOMPAT = {
  FTYPE: 1 << 0,
  SPINODES: 1 << 1,
  META_UUID: 1 << 2,
  BIGTIME: 1 << 3,
  NEEDSREPAIR: 1 << 4,
  NREXT64: 1 << 5,
  EXCHRANGE: 1 << 6,
  PARENT: 1 << 7,
  METADIR: 1 << 8,
  ZONED: 1 << 9,
} as const;

/** v5 log-incompatible feature bits: set while mounted, cleared at a clean unmount. */
export const LOG_INCOMPAT = {
  XATTRS: 1 << 0,
} as const;

/** versionnum bits a v4 filesystem may carry here (SHARED is refused apart). */
const V4_OK = VERSION.NUMBITS | VERSION.ATTR | VERSION.NLINK |
  VERSION.QUOTA | VERSION.ALIGN | VERSION.DALIGN | VERSION.LOGV2 |
  VERSION.SECTOR | VERSION.EXTFLG | VERSION.DIRV2 | VERSION.BORG |
  VERSION.MOREBITS;
/** features2 bits handled (CRC only with v5). */
const FEATURES2_OK = FEATURES2.LAZYSBCOUNT | FEATURES2.ATTR2 |
  FEATURES2.PROJID32 | FEATURES2.FTYPE;
/** Read-only-compatible features that leave the free-space btrees as read here. */
const RO_COMPAT_OK = RO_COMPAT.FINOBT | RO_COMPAT.RMAPBT | RO_COMPAT.REFLINK |
  RO_COMPAT.INOBTCNT;
/**
 * Incompatible features handled. NEEDSREPAIR is known and refused;
 * METADIR and ZONED (metadata directory, realtime groups) are known and
 * not handled.
 */
const INCOMPAT_OK = INCOMPAT.FTYPE | INCOMPAT.SPINODES | INCOMPAT.META_UUID |
  INCOMPAT.BIGTIME | INCOMPAT.NREXT64 | INCOMPAT.EXCHRANGE | INCOMPAT.PARENT;
/** Log-incompatible features known (a clean unmount clears them anyway). */
const LOG_INCOMPAT_OK = LOG_INCOMPAT.XATTRS;

/** The superblock fields the free-space map and its cross-checks use. */
export interface XfsSuperblock {
  /** 4 or 5. */
  version: 4 | 5;
  blockSize: number;
  blockLog: number;
  sectSize: number;
  inodeSize: number;
  inodeLog: number;
  /** Inodes per block, and its log2. */
  inopblock: number;
  inopblog: number;
  /** Blocks per AG (the last may be shorter), and the bits an AG block number takes. */
  agblocks: number;
  agblklog: number;
  agcount: number;
  /** Blocks in the data device. */
  dblocks: number;
  /** First block of the internal log (an fsblock number) and its length in blocks. */
  logstart: number;
  logblocks: number;
  rootino: number;
  /** Inodes named by the superblock itself: root, realtime bitmap and summary, quotas. */
  namedInodes: Array<[string, number]>;
  icount: number;
  ifree: number;
  fdblocks: number;
  versionnum: number;
  features2: number;
  roCompat: number;
  incompat: number;
  logIncompat: number;
  /** UUID that metadata blocks carry (`sb_meta_uuid` with META_UUID, else `sb_uuid`). */
  metaUuid: Uint8Array;
  /** The user-visible UUID. */
  uuid: Uint8Array;
  /** Directory block size in bytes. */
  dirBlockSize: number;
  /** Superblock counters kept only in the AG headers (lazy-count). */
  lazyCount: boolean;
  /** Directory entries carry a file type byte. */
  ftype: boolean;
  finobt: boolean;
  rmapbt: boolean;
  reflink: boolean;
  /** AGIs count their inode btree blocks (inobtcount). */
  inobtCounts: boolean;
  sparseInodes: boolean;
  /** Alignment of sparse inode chunks, in blocks. */
  spinoAlign: number;
  /** Inodes may carry 64-bit extent counters. */
  nrext64: boolean;
}

/** Big-endian reads of a byte array, with 64-bit values as safe integers. */
export class Fields {
  readonly #view: DataView;
  readonly #what: string;

  /**
   * Reads `bytes`.
   *
   * @param bytes The structure.
   * @param what Its name, for refusals of 64-bit values out of range.
   */
  constructor(bytes: Uint8Array, what: string) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    this.#what = what;
  }

  /** u8 at `at`. */
  u8(at: number): number {
    return this.#view.getUint8(at);
  }

  /** Big-endian u16 at `at`. */
  u16(at: number): number {
    return this.#view.getUint16(at);
  }

  /** Big-endian u32 at `at`. */
  u32(at: number): number {
    return this.#view.getUint32(at);
  }

  /** Little-endian u32 at `at` (the checksums). */
  le32(at: number): number {
    return this.#view.getUint32(at, true);
  }

  /**
   * Big-endian u64 at `at`, as a number.
   *
   * @throws {Refusal} Above 2^53.
   */
  u64(at: number): number {
    const hi = this.#view.getUint32(at);
    const lo = this.#view.getUint32(at + 4);
    if (hi >= 0x200000) {
      throw new Refusal(
        `${this.#what}: 64-bit field at byte ${at} (${
          hex(hi)
        }...) is out of range`,
      );
    }
    return hi * 0x1_0000_0000 + lo;
  }

  /** Big-endian u64 at `at`, or -1 for all ones (NULLFSINO and the like). */
  u64OrNull(at: number): number {
    if (this.#view.getUint32(at) === 0xffffffff) {
      return this.#view.getUint32(at + 4) === 0xffffffff ? -1 : this.u64(at);
    }
    return this.u64(at);
  }
}

/**
 * The CRC32C that XFS stores in a metadata structure: over `bytes` with
 * the four bytes at `crcAt` taken as zero, inverted at the end.
 *
 * @param bytes The structure (a sector, block or inode).
 * @param crcAt Offset of its checksum field.
 * @returns The checksum, as read little-endian from the field.
 *
 * @example A structure whose stored checksum is right
 * ```ts
 * import assert from "node:assert";
 * import { xfsChecksum } from "./superblock.ts";
 * const block = new Uint8Array(512).fill(7);
 * const crc = xfsChecksum(block, 224);
 * new DataView(block.buffer).setUint32(224, crc, true);
 * assert.strictEqual(xfsChecksum(block, 224), crc);
 * ```
 */
export function xfsChecksum(bytes: Uint8Array, crcAt: number): number {
  let c = crc32cRaw(0xffffffff, bytes.subarray(0, crcAt));
  c = crc32cRaw(c, ZERO4);
  c = crc32cRaw(c, bytes.subarray(crcAt + 4));
  return ~c >>> 0;
}

const ZERO4 = new Uint8Array(4);

/**
 * Refuses `bytes` unless the checksum at `crcAt` matches.
 *
 * @throws {Refusal} Naming `what` and both values.
 */
export function checkCrc(bytes: Uint8Array, crcAt: number, what: string): void {
  const stored = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
    .getUint32(crcAt, true);
  const actual = xfsChecksum(bytes, crcAt);
  if (stored !== actual) {
    throw new Refusal(
      `${what} checksum ${hex(stored)} does not match its contents (${
        hex(actual)
      })`,
    );
  }
}

/**
 * Whether a region starts with an XFS superblock (the magic only).
 *
 * @param head The first bytes of a region.
 * @returns Whether `sb_magicnum` is "XFSB".
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isXfs } from "./superblock.ts";
 * assert.ok(isXfs(new TextEncoder().encode("XFSB")));
 * assert.ok(!isXfs(new Uint8Array(4)));
 * ```
 */
export function isXfs(head: Uint8Array): boolean {
  return head.length >= 4 &&
    new DataView(head.buffer, head.byteOffset, 4).getUint32(0) ===
      XFS_SB_MAGIC;
}

function log2Exact(n: number): number {
  const l = Math.log2(n);
  return Number.isInteger(l) ? l : -1;
}

function refuseUnknown(word: number, ok: number, what: string): void {
  const unknown = (word & ~ok) >>> 0;
  if (unknown !== 0) {
    throw new Refusal(`unknown ${what} feature bits ${hex(unknown)}`);
  }
}

/**
 * Parses and checks the primary superblock: magic, version, feature bits
 * (unknown ones refused), the v5 checksum, and the geometry, which must be
 * self-consistent and fit in `regionLength` bytes.
 *
 * @param raw The first sector of the filesystem (at least 512 bytes; the
 * whole sector for the v5 checksum).
 * @param regionLength The partition's length, when known.
 * @returns The superblock.
 * @throws {Refusal} For anything unknown, inconsistent or too large.
 *
 * @example A superblock with only the magic is refused for its version
 * ```ts
 * import assert from "node:assert";
 * import { parseXfsSuperblock } from "./superblock.ts";
 * const raw = new Uint8Array(512);
 * raw.set(new TextEncoder().encode("XFSB"));
 * assert.throws(() => parseXfsSuperblock(raw, 1 << 20), /version 0 is not 4 or 5/);
 * ```
 */
export function parseXfsSuperblock(
  raw: Uint8Array,
  regionLength: number | undefined,
): XfsSuperblock {
  const f = new Fields(raw, "superblock");
  if (f.u32(SB.MAGIC) !== XFS_SB_MAGIC) {
    throw new Refusal(`superblock magic ${hex(f.u32(SB.MAGIC))} is not XFSB`);
  }
  const versionnum = f.u16(SB.VERSIONNUM);
  const v = versionnum & VERSION.NUMBITS;
  if (v !== 4 && v !== 5) {
    throw new Refusal(`superblock version ${v} is not 4 or 5`);
  }
  const sectSize = f.u16(SB.SECTSIZE);
  if (log2Exact(sectSize) < 9 || sectSize > 32768) {
    throw new Refusal(`sector size ${sectSize} is out of range [512, 32768]`);
  }
  if (f.u8(SB.SECTLOG) !== log2Exact(sectSize)) {
    throw new Refusal(
      `sectlog ${f.u8(SB.SECTLOG)} does not match sector size ${sectSize}`,
    );
  }
  if (raw.length < sectSize) {
    throw new Refusal(`superblock sector is truncated`);
  }
  if (v === 5) checkCrc(raw.subarray(0, sectSize), SB.CRC, "superblock");
  if (f.u8(SB.INPROGRESS) !== 0) {
    throw new Refusal("mkfs did not finish (sb_inprogress is set)");
  }
  if (versionnum & VERSION.SHARED) {
    throw new Refusal("shared filesystem (versionnum SHARED) is not handled");
  }
  refuseUnknown(versionnum, V4_OK, "versionnum");
  if (v === 4 && !(versionnum & VERSION.DIRV2 && versionnum & VERSION.EXTFLG)) {
    throw new Refusal(
      `v4 superblock without v2 directories or extent flags (versionnum ${
        hex(versionnum)
      }) is not handled`,
    );
  }
  const moreBits = v === 5 || (versionnum & VERSION.MOREBITS) !== 0;
  const features2 = moreBits
    ? (f.u32(SB.FEATURES2) | f.u32(SB.BAD_FEATURES2)) >>> 0
    : 0;
  refuseUnknown(
    features2,
    FEATURES2_OK | (v === 5 ? FEATURES2.CRC : 0),
    "features2",
  );
  let roCompat = 0;
  let incompat = 0;
  let logIncompat = 0;
  if (v === 5) {
    const compat = f.u32(SB.FEATURES_COMPAT);
    refuseUnknown(compat, 0, "compat");
    roCompat = f.u32(SB.FEATURES_RO_COMPAT);
    incompat = f.u32(SB.FEATURES_INCOMPAT);
    logIncompat = f.u32(SB.FEATURES_LOG_INCOMPAT);
    if (incompat & INCOMPAT.NEEDSREPAIR) {
      throw new Refusal("the filesystem needs repair (incompat NEEDSREPAIR)");
    }
    if (incompat & INCOMPAT.METADIR) {
      throw new Refusal("feature metadir is not handled");
    }
    if (incompat & INCOMPAT.ZONED) {
      throw new Refusal("feature zoned (realtime groups) is not handled");
    }
    refuseUnknown(incompat, INCOMPAT_OK, "incompat");
    refuseUnknown(roCompat, RO_COMPAT_OK, "ro_compat");
    refuseUnknown(logIncompat, LOG_INCOMPAT_OK, "log_incompat");
  }

  const blockSize = f.u32(SB.BLOCKSIZE);
  const blockLog = log2Exact(blockSize);
  if (blockLog < 9 || blockLog > 16 || f.u8(SB.BLOCKLOG) !== blockLog) {
    throw new Refusal(
      `block size ${blockSize} (blocklog ${
        f.u8(SB.BLOCKLOG)
      }) is out of range [512, 65536]`,
    );
  }
  if (sectSize > blockSize) {
    throw new Refusal(
      `sector size ${sectSize} is larger than the block size ${blockSize}`,
    );
  }
  const inodeSize = f.u16(SB.INODESIZE);
  const inodeLog = log2Exact(inodeSize);
  if (
    inodeLog < (v === 5 ? 9 : 8) || inodeLog > 11 ||
    f.u8(SB.INODELOG) !== inodeLog || inodeSize > blockSize
  ) {
    throw new Refusal(
      `inode size ${inodeSize} is out of range [${
        v === 5 ? 512 : 256
      }, 2048] or larger than a block`,
    );
  }
  const inopblock = blockSize / inodeSize;
  const inopblog = blockLog - inodeLog;
  if (f.u16(SB.INOPBLOCK) !== inopblock || f.u8(SB.INOPBLOG) !== inopblog) {
    throw new Refusal(
      `inopblock ${
        f.u16(SB.INOPBLOCK)
      } does not match ${inopblock} inodes per block`,
    );
  }
  const agblocks = f.u32(SB.AGBLOCKS);
  const agcount = f.u32(SB.AGCOUNT);
  const agblklog = f.u8(SB.AGBLKLOG);
  if (
    agblocks < XFS_MIN_AG_BLOCKS || agblocks * blockSize > XFS_MAX_AG_BYTES
  ) {
    throw new Refusal(
      `AG size of ${agblocks} blocks is out of range [${XFS_MIN_AG_BLOCKS}, ${
        XFS_MAX_AG_BYTES / blockSize
      }]`,
    );
  }
  if (agblklog !== Math.ceil(Math.log2(agblocks))) {
    throw new Refusal(
      `agblklog ${agblklog} does not match ${agblocks} blocks per AG`,
    );
  }
  if (agblklog + inopblog > 32) {
    throw new Refusal(
      `agblklog ${agblklog} and inopblog ${inopblog} leave no room in a 32-bit AG inode number`,
    );
  }
  if (agcount < 1 || agcount > XFS_MAX_AGCOUNT) {
    throw new Refusal(
      `AG count ${agcount} is out of range [1, ${XFS_MAX_AGCOUNT}]`,
    );
  }
  const dblocks = f.u64(SB.DBLOCKS);
  const lastAg = dblocks - (agcount - 1) * agblocks;
  if (lastAg < XFS_MIN_AG_BLOCKS || lastAg > agblocks) {
    throw new Refusal(
      `${dblocks} blocks do not make ${agcount} AGs of ${agblocks} blocks (the last would have ${lastAg})`,
    );
  }
  if (regionLength !== undefined && dblocks * blockSize > regionLength) {
    throw new Refusal(
      `filesystem of ${
        dblocks * blockSize
      } bytes (${dblocks} blocks) is larger than its partition of ${regionLength} bytes: truncated`,
    );
  }
  if (f.u64(SB.RBLOCKS) !== 0 || f.u64(SB.REXTENTS) !== 0) {
    throw new Refusal(
      `a realtime device is configured (${
        f.u64(SB.RBLOCKS)
      } blocks): not handled`,
    );
  }
  const logstart = f.u64(SB.LOGSTART);
  const logblocks = f.u32(SB.LOGBLOCKS);
  if (logstart === 0) {
    throw new Refusal("the log is on an external device: not handled");
  }
  const logAg = Math.floor(logstart / 2 ** agblklog);
  const logAgbno = logstart % 2 ** agblklog;
  const logAgLen = logAg === agcount - 1 ? lastAg : agblocks;
  if (
    logAg >= agcount || logblocks < 1 || logAgbno + logblocks > logAgLen
  ) {
    throw new Refusal(
      `log of ${logblocks} blocks at fsblock ${logstart} does not lie inside one AG`,
    );
  }
  const dirblklog = f.u8(SB.DIRBLKLOG);
  if (blockLog + dirblklog > 16) {
    throw new Refusal(
      `directory block size ${blockSize} << ${dirblklog} is larger than 64 KiB`,
    );
  }
  const uuid = raw.slice(SB.UUID, SB.UUID + 16);
  const metaUuid = v === 5 && incompat & INCOMPAT.META_UUID
    ? raw.slice(SB.META_UUID, SB.META_UUID + 16)
    : uuid;
  const sparseInodes = v === 5 && (incompat & INCOMPAT.SPINODES) !== 0;
  const spinoAlign = sparseInodes ? f.u32(SB.SPINO_ALIGN) : 0;
  const named: Array<[string, number]> = [
    ["root", f.u64OrNull(SB.ROOTINO)],
    ["realtime bitmap", f.u64OrNull(SB.RBMINO)],
    ["realtime summary", f.u64OrNull(SB.RSUMINO)],
    ["user quota", f.u64OrNull(SB.UQUOTINO)],
    ["group quota", f.u64OrNull(SB.GQUOTINO)],
  ];
  if (v === 5) named.push(["project quota", f.u64OrNull(SB.PQUOTINO)]);
  const namedInodes = named.filter(([, ino]) => ino > 0);
  return {
    version: v,
    blockSize,
    blockLog,
    sectSize,
    inodeSize,
    inodeLog,
    inopblock,
    inopblog,
    agblocks,
    agblklog,
    agcount,
    dblocks,
    logstart,
    logblocks,
    rootino: f.u64(SB.ROOTINO),
    namedInodes,
    icount: f.u64(SB.ICOUNT),
    ifree: f.u64(SB.IFREE),
    fdblocks: f.u64(SB.FDBLOCKS),
    versionnum,
    features2,
    roCompat,
    incompat,
    logIncompat,
    metaUuid,
    uuid,
    dirBlockSize: blockSize << dirblklog,
    lazyCount: v === 5 || (features2 & FEATURES2.LAZYSBCOUNT) !== 0,
    ftype: (v === 5 && (incompat & INCOMPAT.FTYPE) !== 0) ||
      (features2 & FEATURES2.FTYPE) !== 0,
    finobt: (roCompat & RO_COMPAT.FINOBT) !== 0,
    rmapbt: (roCompat & RO_COMPAT.RMAPBT) !== 0,
    reflink: (roCompat & RO_COMPAT.REFLINK) !== 0,
    inobtCounts: (roCompat & RO_COMPAT.INOBTCNT) !== 0,
    sparseInodes,
    spinoAlign,
    nrext64: (incompat & INCOMPAT.NREXT64) !== 0,
  };
}

/** Fields of a secondary superblock that must equal the primary's. */
const GEOMETRY: Array<[string, number, 2 | 4 | 8 | 16]> = [
  ["blocksize", SB.BLOCKSIZE, 4],
  ["dblocks", SB.DBLOCKS, 8],
  ["uuid", SB.UUID, 16],
  ["logstart", SB.LOGSTART, 8],
  ["agblocks", SB.AGBLOCKS, 4],
  ["agcount", SB.AGCOUNT, 4],
  ["logblocks", SB.LOGBLOCKS, 4],
  ["sectsize", SB.SECTSIZE, 2],
  ["inodesize", SB.INODESIZE, 2],
];

/**
 * Compares the secondary superblock of AG `agno` with the primary on the
 * geometry fields (and checks its magic and v5 checksum).
 *
 * @param sb The primary, parsed.
 * @param primary The primary's sector.
 * @param secondary The secondary's sector.
 * @param agno Its AG.
 * @throws {Refusal} When they differ.
 */
export function checkSecondary(
  sb: XfsSuperblock,
  primary: Uint8Array,
  secondary: Uint8Array,
  agno: number,
): void {
  const what = `superblock copy in AG ${agno}`;
  const f = new Fields(secondary, what);
  if (f.u32(SB.MAGIC) !== XFS_SB_MAGIC) {
    throw new Refusal(`${what} has magic ${hex(f.u32(SB.MAGIC))}, not XFSB`);
  }
  if (sb.version === 5) checkCrc(secondary, SB.CRC, what);
  for (const [name, at, n] of GEOMETRY) {
    for (let i = 0; i < n; i++) {
      if (primary[at + i] !== secondary[at + i]) {
        throw new Refusal(`${what} differs from the primary in ${name}`);
      }
    }
  }
}
