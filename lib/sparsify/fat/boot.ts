/**
 * The FAT boot sector: the BIOS parameter block (BPB) that fixes where the
 * FATs, the root directory and the clusters are, checked field by field,
 * and the FAT type, decided by the cluster count as the specification
 * decides it (never by the `FAT16   ` label). Linux decides differently
 * (FAT32 when the 16-bit FAT size is 0, else 12 or 16 by the count): a
 * volume on which the two rules disagree is refused, so that every reader
 * sees the layout checked here; except a FAT32 below the minimum cluster
 * count with no root directory entries, which the specification's readers
 * see as an empty FAT12/16 (mtools finds no directory slot in it).
 *
 * ```text
 * boot sector, little-endian (Microsoft FAT specification, "BPB"):
 *  0x00 jump (EB xx 90 or E9 xx xx)   0x03 OEM name (8)
 *  0x0b bytes per sector (u16)        0x0d sectors per cluster (u8)
 *  0x0e reserved sectors (u16)        0x10 number of FATs (u8)
 *  0x11 root entries (u16, FAT12/16)  0x13 total sectors (u16)
 *  0x15 media (u8)                    0x16 sectors per FAT (u16, FAT12/16)
 *  0x20 total sectors (u32, when the u16 is 0)
 * FAT12/16:  0x25 state (bit 0: dirty)     0x2b volume label (11)
 * FAT32:     0x24 sectors per FAT (u32)    0x28 ext flags (u16: bit 7 no
 *            mirroring, bits 0-3 active FAT)  0x2a version (u16, 0)
 *            0x2c root cluster (u32)       0x30 FSInfo sector (u16)
 *            0x41 state (bit 0: dirty)     0x47 volume label (11)
 * FSInfo sector: 0 lead signature 0x41615252, 484 0x61417272,
 *            488 free count (u32, 0xffffffff unknown), 508 0xaa550000
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";

/** FAT entry width in bits. */
export type FatType = 12 | 16 | 32;

/** Boot sector field offsets. */
export const BPB = {
  JUMP: 0x00,
  OEM: 0x03,
  BYTES_PER_SECTOR: 0x0b,
  SECTORS_PER_CLUSTER: 0x0d,
  RESERVED_SECTORS: 0x0e,
  FATS: 0x10,
  ROOT_ENTRIES: 0x11,
  TOTAL_SECTORS_16: 0x13,
  MEDIA: 0x15,
  FAT_SECTORS_16: 0x16,
  TOTAL_SECTORS_32: 0x20,
  /** FAT12/16 `BS_Reserved1`, which Linux and Windows use as a state byte. */
  STATE_16: 0x25,
  LABEL_16: 0x2b,
  FAT_SECTORS_32: 0x24,
  EXT_FLAGS: 0x28,
  VERSION: 0x2a,
  ROOT_CLUSTER: 0x2c,
  FSINFO_SECTOR: 0x30,
  /** FAT32 `BS_Reserved1`, the state byte. */
  STATE_32: 0x41,
  LABEL_32: 0x47,
} as const;

/** Bytes of the boot sector this module reads (the BPB fits in them). */
export const BOOT_SECTOR_BYTES = 512;
/** State byte bit 0: the volume is mounted, or was not cleanly unmounted. */
export const STATE_DIRTY = 0x01;
/** `BPB_ExtFlags` bit 7: only the active FAT is written (no mirroring). */
export const EXT_FLAGS_NO_MIRROR = 0x80;
/** Clusters below this count make a FAT12 volume. */
export const FAT12_CLUSTERS_BELOW = 4085;
/** Clusters below this count (and at least 4085) make a FAT16 volume. */
export const FAT16_CLUSTERS_BELOW = 65525;
/** First data cluster: entries 0 and 1 of the FAT are reserved. */
export const FIRST_CLUSTER = 2;
/** Bytes of one directory entry. */
export const DIR_ENTRY_BYTES = 32;

/** FSInfo signatures. */
export const FSINFO = {
  LEAD_SIG: 0x41615252,
  STRUC_SIG: 0x61417272,
  TRAIL_SIG: 0xaa550000,
  STRUC_SIG_AT: 484,
  FREE_COUNT_AT: 488,
  TRAIL_SIG_AT: 508,
  /** Free count meaning "not known". */
  UNKNOWN: 0xffffffff,
} as const;

/** A checked FAT volume: the geometry every other part computes from. */
export interface FatVolume {
  type: FatType;
  bytesPerSector: number;
  sectorsPerCluster: number;
  /** Bytes per cluster. */
  clusterSize: number;
  reservedSectors: number;
  /** Number of FAT copies. */
  fats: number;
  /** Sectors of one FAT copy. */
  fatSectors: number;
  /** Root directory entries (FAT12/16; 0 for FAT32). */
  rootEntries: number;
  /** Sectors of the fixed root directory (FAT12/16; 0 for FAT32). */
  rootDirSectors: number;
  totalSectors: number;
  /** Data clusters: clusters 2 .. clusters + 1 exist. */
  clusters: number;
  /** First sector of cluster 2. */
  firstDataSector: number;
  /** First cluster of the root directory (FAT32), else 0. */
  rootCluster: number;
  /** FSInfo sector inside the reserved area (FAT32), else 0. */
  fsInfoSector: number;
  /** `BPB_ExtFlags` (FAT32), else 0. */
  extFlags: number;
  /** Volume label from the boot sector, trimmed. */
  label: string;
  /** FAT32 with fewer clusters than the specification's minimum (65525). */
  smallFat32: boolean;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Whether a media byte is one FAT allows (0xf0, 0xf8-0xff), as Linux checks. */
function validMedia(m: number): boolean {
  return m === 0xf0 || m >= 0xf8;
}

/**
 * Whether a partition starting with `head` looks like a FAT volume: a jump
 * instruction, then a BPB whose sector size, cluster size, reserved
 * sectors, FAT count and media byte are all possible; or a FAT type label.
 * NTFS and exFAT (which zero these fields) are not taken for FAT.
 *
 * @param head The partition's first bytes.
 * @returns Whether the FAT module should analyze it.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { looksLikeFat } from "./boot.ts";
 * const head = new Uint8Array(512);
 * head.set([0xeb, 0x3c, 0x90], 0);
 * const v = new DataView(head.buffer);
 * v.setUint16(0x0b, 512, true); head[0x0d] = 4; v.setUint16(0x0e, 1, true); head[0x10] = 2; head[0x15] = 0xf8;
 * assert.strictEqual(looksLikeFat(head), true);
 * head[0x10] = 0; // no FAT
 * assert.strictEqual(looksLikeFat(head), false);
 * ```
 */
export function looksLikeFat(head: Uint8Array): boolean {
  if (head.length < BOOT_SECTOR_BYTES) return false;
  const v = new DataView(head.buffer, head.byteOffset, BOOT_SECTOR_BYTES);
  const jump = (head[0] === 0xeb && head[2] === 0x90) || head[0] === 0xe9;
  const bps = v.getUint16(BPB.BYTES_PER_SECTOR, true);
  const plausible = jump && isPowerOfTwo(bps) && bps >= 512 && bps <= 4096 &&
    isPowerOfTwo(head[BPB.SECTORS_PER_CLUSTER]) &&
    v.getUint16(BPB.RESERVED_SECTORS, true) >= 1 && head[BPB.FATS] >= 1 &&
    validMedia(head[BPB.MEDIA]);
  const text = (at: number) =>
    String.fromCharCode(...head.subarray(at, at + 8));
  const labelled = text(0x36).startsWith("FAT1") ||
    text(0x52) === "FAT32   ";
  const other = text(BPB.OEM) === "NTFS    " || text(BPB.OEM) === "EXFAT   ";
  return !other && (plausible || labelled);
}

/** Bytes of FAT that describe clusters 0 .. clusters + 1. */
export function fatBytesUsed(vol: FatVolume): number {
  return Math.ceil((vol.clusters + FIRST_CLUSTER) * vol.type / 8);
}

/** Byte offset of FAT copy `k`. */
export function fatOffset(vol: FatVolume, k: number): number {
  return (vol.reservedSectors + k * vol.fatSectors) * vol.bytesPerSector;
}

/** Byte offset of the fixed root directory (FAT12/16). */
export function rootDirOffset(vol: FatVolume): number {
  return fatOffset(vol, vol.fats);
}

/** Byte offset of data cluster `n` (2 .. clusters + 1). */
export function clusterOffset(vol: FatVolume, n: number): number {
  return (vol.firstDataSector + (n - FIRST_CLUSTER) * vol.sectorsPerCluster) *
    vol.bytesPerSector;
}

/**
 * The FAT type the specification gives a cluster count.
 *
 * @param clusters Data clusters.
 * @returns 12, 16 or 32.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { fatTypeOf } from "./boot.ts";
 * assert.deepStrictEqual([4084, 4085, 65524, 65525].map(fatTypeOf), [12, 16, 16, 32]);
 * ```
 */
export function fatTypeOf(clusters: number): FatType {
  if (clusters < FAT12_CLUSTERS_BELOW) return 12;
  if (clusters < FAT16_CLUSTERS_BELOW) return 16;
  return 32;
}

function labelOf(bytes: Uint8Array): string {
  const text = String.fromCharCode(...bytes).replace(/[^\x20-\x7e]/g, "?")
    .trimEnd();
  return text === "NO NAME" ? "" : text;
}

/**
 * Parses and checks a boot sector: every field that places a structure,
 * the FAT type by cluster count, and the volume against its partition.
 *
 * @param sector The first 512 bytes of the volume.
 * @param regionLength Length of the partition, when known.
 * @returns The volume's geometry.
 * @throws {Refusal} For an impossible or inconsistent field, a dirty
 * volume, or a volume larger than its partition.
 *
 * @example A volume that claims more sectors than its partition has
 * ```ts
 * import assert from "node:assert";
 * import { parseFatBootSector } from "./boot.ts";
 * const s = new Uint8Array(512);
 * const v = new DataView(s.buffer);
 * s.set([0xeb, 0x3c, 0x90]);
 * v.setUint16(0x0b, 512, true); s[0x0d] = 4; v.setUint16(0x0e, 1, true); s[0x10] = 2;
 * v.setUint16(0x11, 512, true); v.setUint16(0x13, 32768, true); s[0x15] = 0xf8; v.setUint16(0x16, 32, true);
 * assert.strictEqual(parseFatBootSector(s, 16 << 20).type, 16);
 * assert.throws(() => parseFatBootSector(s, 8 << 20), /32768 sectors of 512 bytes .* larger than its partition/);
 * ```
 */
export function parseFatBootSector(
  sector: Uint8Array,
  regionLength: number | undefined,
): FatVolume {
  const v = new DataView(sector.buffer, sector.byteOffset, BOOT_SECTOR_BYTES);
  const u8 = (at: number) => sector[at];
  const u16 = (at: number) => v.getUint16(at, true);
  const u32 = (at: number) => v.getUint32(at, true);
  const bps = u16(BPB.BYTES_PER_SECTOR);
  if (!isPowerOfTwo(bps) || bps < 512 || bps > 4096) {
    throw new Refusal(
      `bytes per sector ${bps} is not a power of two in [512, 4096]`,
    );
  }
  const spc = u8(BPB.SECTORS_PER_CLUSTER);
  if (!isPowerOfTwo(spc)) {
    throw new Refusal(`sectors per cluster ${spc} is not a power of two`);
  }
  const reserved = u16(BPB.RESERVED_SECTORS);
  if (reserved < 1) throw new Refusal("reserved sector count is 0");
  const fats = u8(BPB.FATS);
  if (fats < 1) throw new Refusal("number of FATs is 0");
  const media = u8(BPB.MEDIA);
  if (!validMedia(media)) {
    throw new Refusal(`media byte ${hex(media)} is not 0xf0 or 0xf8-0xff`);
  }
  const fat16Sectors = u16(BPB.FAT_SECTORS_16);
  const linuxFat32 = fat16Sectors === 0;
  const fatSectors = linuxFat32 ? u32(BPB.FAT_SECTORS_32) : fat16Sectors;
  if (fatSectors === 0) throw new Refusal("FAT size is 0 sectors");
  const tot16 = u16(BPB.TOTAL_SECTORS_16);
  const tot32 = u32(BPB.TOTAL_SECTORS_32);
  if (tot16 !== 0 && tot32 !== 0 && tot16 !== tot32) {
    throw new Refusal(
      `the 16-bit total sectors ${tot16} and the 32-bit ${tot32} disagree`,
    );
  }
  const totalSectors = tot16 !== 0 ? tot16 : tot32;
  if (totalSectors === 0) throw new Refusal("total sector count is 0");
  const rootEntries = u16(BPB.ROOT_ENTRIES);
  if ((rootEntries * DIR_ENTRY_BYTES) % bps !== 0) {
    throw new Refusal(
      `${rootEntries} root directory entries do not fill whole ${bps}-byte sectors`,
    );
  }
  const rootDirSectors = rootEntries * DIR_ENTRY_BYTES / bps;
  const firstDataSector = reserved + fats * fatSectors + rootDirSectors;
  if (firstDataSector >= totalSectors) {
    throw new Refusal(
      `reserved sectors, FATs and root directory (${firstDataSector} sectors) leave no data area in ${totalSectors} sectors`,
    );
  }
  const clusters = Math.floor((totalSectors - firstDataSector) / spc);
  if (clusters < 1) {
    throw new Refusal(
      `${
        totalSectors - firstDataSector
      } data sectors hold no ${spc}-sector cluster`,
    );
  }
  const byCount = fatTypeOf(clusters);
  // FAT32 below 65525 clusters (mkfs.fat makes them, with a warning): the
  // specification's reader takes it for FAT12/16 with a root directory of
  // RootEntCnt = 0 entries, which holds nothing, so the FAT32 tree is all
  // any reader can reach. Any other disagreement is refused below.
  const smallFat32 = linuxFat32 && rootEntries === 0 && byCount !== 32;
  const type = smallFat32 ? 32 : byCount;
  const found = { found: `fat${type}` };
  const bytes = totalSectors * bps;
  if (regionLength !== undefined && bytes > regionLength) {
    throw new Refusal(
      `volume of ${totalSectors} sectors of ${bps} bytes (${bytes} bytes) is larger than its partition of ${regionLength} bytes: truncated`,
      found,
    );
  }
  if ((type === 32) !== linuxFat32) {
    throw new Refusal(
      `${clusters} clusters make FAT${byCount}, but the 16-bit FAT size ${fat16Sectors} says FAT${
        linuxFat32 ? 32 : "12/16"
      }`,
    );
  }
  const entries = Math.floor(fatSectors * bps * 8 / type);
  if (entries < clusters + FIRST_CLUSTER) {
    throw new Refusal(
      `FAT of ${fatSectors} sectors holds ${entries} entries, fewer than the ${
        clusters + FIRST_CLUSTER
      } of ${clusters} clusters`,
      found,
    );
  }
  let rootCluster = 0;
  let fsInfoSector = 0;
  let extFlags = 0;
  let state: number;
  let label: Uint8Array;
  if (type === 32) {
    if (rootEntries !== 0 || tot16 !== 0) {
      throw new Refusal(
        `FAT32 with ${rootEntries} root entries and 16-bit total sectors ${tot16} (both must be 0)`,
        found,
      );
    }
    const version = u16(BPB.VERSION);
    if (version !== 0) {
      throw new Refusal(`FAT32 version ${hex(version)} is not 0`, found);
    }
    extFlags = u16(BPB.EXT_FLAGS);
    if ((extFlags & EXT_FLAGS_NO_MIRROR) && (extFlags & 0x0f) >= fats) {
      throw new Refusal(
        `active FAT ${extFlags & 0x0f} (ext flags ${
          hex(extFlags)
        }) does not exist among ${fats}`,
        found,
      );
    }
    rootCluster = u32(BPB.ROOT_CLUSTER);
    if (rootCluster < FIRST_CLUSTER || rootCluster > clusters + 1) {
      throw new Refusal(
        `root directory cluster ${rootCluster} is outside clusters 2-${
          clusters + 1
        }`,
        found,
      );
    }
    const info = u16(BPB.FSINFO_SECTOR);
    fsInfoSector = info >= 1 && info < reserved ? info : 0;
    state = u8(BPB.STATE_32);
    label = sector.subarray(BPB.LABEL_32, BPB.LABEL_32 + 11);
  } else {
    if (rootEntries === 0) {
      throw new Refusal(`FAT${type} with no root directory entries`, found);
    }
    state = u8(BPB.STATE_16);
    label = sector.subarray(BPB.LABEL_16, BPB.LABEL_16 + 11);
  }
  if (state & STATE_DIRTY) {
    throw new Refusal(
      `not cleanly unmounted (boot sector state ${hex(state)}, dirty bit set)`,
      found,
    );
  }
  return {
    type,
    bytesPerSector: bps,
    sectorsPerCluster: spc,
    clusterSize: bps * spc,
    reservedSectors: reserved,
    fats,
    fatSectors,
    rootEntries,
    rootDirSectors,
    totalSectors,
    clusters,
    firstDataSector,
    rootCluster,
    fsInfoSector,
    extFlags,
    label: labelOf(label),
    smallFat32,
  };
}

/**
 * The free cluster count an FSInfo sector records, when its three
 * signatures are right and the count is known. Advisory only: Linux and
 * Windows keep it as a hint, and it is never used to decide what is free.
 *
 * @param sector The FSInfo sector (at least 512 bytes).
 * @returns The count, or undefined.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { fsInfoFreeCount } from "./boot.ts";
 * const s = new Uint8Array(512);
 * const v = new DataView(s.buffer);
 * v.setUint32(0, 0x41615252, true); v.setUint32(484, 0x61417272, true); v.setUint32(508, 0xaa550000, true);
 * v.setUint32(488, 1234, true);
 * assert.strictEqual(fsInfoFreeCount(s), 1234);
 * v.setUint32(484, 0, true);
 * assert.strictEqual(fsInfoFreeCount(s), undefined);
 * ```
 */
export function fsInfoFreeCount(sector: Uint8Array): number | undefined {
  const v = new DataView(sector.buffer, sector.byteOffset, 512);
  if (
    v.getUint32(0, true) !== FSINFO.LEAD_SIG ||
    v.getUint32(FSINFO.STRUC_SIG_AT, true) !== FSINFO.STRUC_SIG ||
    v.getUint32(FSINFO.TRAIL_SIG_AT, true) !== FSINFO.TRAIL_SIG
  ) return undefined;
  const free = v.getUint32(FSINFO.FREE_COUNT_AT, true);
  return free === FSINFO.UNKNOWN ? undefined : free;
}
