/**
 * The NTFS boot sector: the geometry every other structure is found by.
 * Little-endian, at byte 0 of the volume; a copy sits in the sector after
 * the last one the volume counts, which is outside every cluster.
 *
 * ```text
 *  0x03 OEM id "NTFS    "         0x0b bytes per sector (u16)
 *  0x0d sectors per cluster (u8; 0xf4-0xff: 2^(256 - value) sectors)
 *  0x0e reserved sectors, 0x10 FATs, 0x11 root entries, 0x13 sectors,
 *  0x16 sectors per FAT, 0x20 large sectors: all zero on NTFS
 *  0x28 total sectors (u64)       0x30 $MFT LCN (u64)   0x38 $MFTMirr LCN (u64)
 *  0x40 clusters per MFT record (s8; negative: 2^-value bytes)
 *  0x44 clusters per index record (s8, the same encoding)
 * ```
 *
 * @module
 */

import { Refusal } from "../_region.ts";

/** OEM id at byte 3 of an NTFS boot sector. */
export const NTFS_OEM_ID = "NTFS    ";
/** Offset of the OEM id. */
export const NTFS_OEM_OFFSET = 3;
/** Bytes of the boot sector read. */
export const NTFS_BOOT_SIZE = 512;
/** Largest cluster handled (Windows formats up to 2 MiB). */
export const NTFS_MAX_CLUSTER = 2 * 1024 * 1024;
/** Smallest and largest MFT record handled. */
export const NTFS_MIN_RECORD = 512;
export const NTFS_MAX_RECORD = 64 * 1024;

/** Boot sector field offsets. */
export const BOOT = {
  BYTES_PER_SECTOR: 0x0b,
  SECTORS_PER_CLUSTER: 0x0d,
  RESERVED_SECTORS: 0x0e,
  FATS: 0x10,
  ROOT_ENTRIES: 0x11,
  SECTORS: 0x13,
  SECTORS_PER_FAT: 0x16,
  LARGE_SECTORS: 0x20,
  TOTAL_SECTORS: 0x28,
  MFT_LCN: 0x30,
  MFTMIRR_LCN: 0x38,
  CLUSTERS_PER_RECORD: 0x40,
  CLUSTERS_PER_INDEX: 0x44,
} as const;

/** The geometry of an NTFS volume, checked. */
export interface NtfsBoot {
  /** Bytes per sector. */
  sectorSize: number;
  /** Bytes per cluster. */
  clusterSize: number;
  /** Sectors the volume counts (the backup boot sector follows them). */
  totalSectors: number;
  /** Clusters: whole clusters in `totalSectors`. */
  clusters: number;
  /** First cluster of `$MFT`. */
  mftLcn: number;
  /** First cluster of `$MFTMirr`. */
  mftMirrLcn: number;
  /** Bytes per MFT record. */
  recordSize: number;
  /** Bytes per index record. */
  indexRecordSize: number;
}

/**
 * Whether the bytes start with an NTFS boot sector's OEM id.
 *
 * @param head The first bytes of a partition.
 * @returns Whether the OEM id is `NTFS    `.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isNtfs } from "./boot.ts";
 * const head = new Uint8Array(512);
 * head.set(new TextEncoder().encode("NTFS    "), 3);
 * assert.ok(isNtfs(head));
 * assert.ok(!isNtfs(new Uint8Array(512)));
 * ```
 */
export function isNtfs(head: Uint8Array): boolean {
  if (head.length < NTFS_OEM_OFFSET + NTFS_OEM_ID.length) return false;
  for (let i = 0; i < NTFS_OEM_ID.length; i++) {
    if (head[NTFS_OEM_OFFSET + i] !== NTFS_OEM_ID.charCodeAt(i)) return false;
  }
  return true;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Reads a u64 that must be a safe integer, or refuses naming the field. */
function u64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Refusal(`boot sector ${what} ${v} is out of range`);
  }
  return Number(v);
}

/** Bytes of a record whose size is given in the signed cluster encoding. */
function sizeOf(
  raw: number,
  clusterSize: number,
  what: string,
): number {
  const v = raw > 0x7f ? raw - 0x100 : raw;
  if (v === 0 || v < -31) {
    throw new Refusal(`boot sector ${what} ${raw} is not a valid size`);
  }
  return v > 0 ? v * clusterSize : 2 ** -v;
}

/**
 * Parses and checks an NTFS boot sector against the partition length.
 *
 * @param bytes The first 512 bytes of the volume.
 * @param partitionLength The partition's length in bytes, when known.
 * @returns The geometry.
 * @throws {Refusal} When a field is out of range or the volume does not fit
 * the partition.
 *
 * @example A volume larger than its partition
 * ```ts
 * import assert from "node:assert";
 * import { parseNtfsBoot } from "./boot.ts";
 * const b = new Uint8Array(512);
 * const v = new DataView(b.buffer);
 * b.set(new TextEncoder().encode("NTFS    "), 3);
 * v.setUint16(0x0b, 512, true);
 * b[0x0d] = 8; // 4 KiB clusters
 * v.setBigUint64(0x28, 131071n, true); // 64 MiB less one sector
 * v.setBigUint64(0x30, 4n, true);
 * v.setBigUint64(0x38, 8191n, true);
 * b[0x40] = 0xf6; // 2^10-byte records
 * b[0x44] = 1;
 * assert.strictEqual(parseNtfsBoot(b, 64 << 20).clusters, 16383);
 * assert.throws(() => parseNtfsBoot(b, 32 << 20), /does not fit its partition/);
 * ```
 */
export function parseNtfsBoot(
  bytes: Uint8Array,
  partitionLength: number | undefined,
): NtfsBoot {
  if (!isNtfs(bytes) || bytes.length < NTFS_BOOT_SIZE) {
    throw new Refusal("no NTFS boot sector");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, NTFS_BOOT_SIZE);
  const sectorSize = view.getUint16(BOOT.BYTES_PER_SECTOR, true);
  if (!isPowerOfTwo(sectorSize) || sectorSize < 256 || sectorSize > 4096) {
    throw new Refusal(
      `boot sector bytes per sector ${sectorSize} is not a power of two in [256, 4096]`,
    );
  }
  const spcRaw = bytes[BOOT.SECTORS_PER_CLUSTER];
  // Values above 0x80 are negative shifts: 0xf4 is 2^12 sectors.
  const spc = spcRaw > 0x80 ? 2 ** (0x100 - spcRaw) : spcRaw;
  if (!isPowerOfTwo(spc) || spc * sectorSize > NTFS_MAX_CLUSTER) {
    throw new Refusal(
      `boot sector sectors per cluster ${spcRaw} gives no cluster size up to ${NTFS_MAX_CLUSTER} bytes`,
    );
  }
  const clusterSize = spc * sectorSize;
  for (
    const [what, at, size] of [
      ["reserved sectors", BOOT.RESERVED_SECTORS, 2],
      ["FAT count", BOOT.FATS, 1],
      ["root entries", BOOT.ROOT_ENTRIES, 2],
      ["sectors", BOOT.SECTORS, 2],
      ["sectors per FAT", BOOT.SECTORS_PER_FAT, 2],
      ["large sectors", BOOT.LARGE_SECTORS, 4],
    ] as const
  ) {
    const v = size === 1
      ? bytes[at]
      : size === 2
      ? view.getUint16(at, true)
      : view.getUint32(at, true);
    if (v !== 0) {
      throw new Refusal(`boot sector ${what} is ${v}, not 0 as on NTFS`);
    }
  }
  const totalSectors = u64(view, BOOT.TOTAL_SECTORS, "total sectors");
  const clusters = Math.floor(totalSectors / spc);
  if (clusters < 1) {
    throw new Refusal(
      `boot sector total sectors ${totalSectors} holds no cluster`,
    );
  }
  const volumeBytes = totalSectors * sectorSize;
  if (partitionLength !== undefined && volumeBytes > partitionLength) {
    throw new Refusal(
      `volume of ${totalSectors} sectors (${volumeBytes} bytes) does not fit its partition of ${partitionLength} bytes`,
    );
  }
  const mftLcn = u64(view, BOOT.MFT_LCN, "$MFT LCN");
  const mftMirrLcn = u64(view, BOOT.MFTMIRR_LCN, "$MFTMirr LCN");
  for (const [what, lcn] of [["$MFT", mftLcn], ["$MFTMirr", mftMirrLcn]]) {
    if ((lcn as number) < 1 || (lcn as number) >= clusters) {
      throw new Refusal(
        `boot sector ${what} LCN ${lcn} lies outside clusters 1-${
          clusters - 1
        }`,
      );
    }
  }
  const recordSize = sizeOf(
    bytes[BOOT.CLUSTERS_PER_RECORD],
    clusterSize,
    "clusters per MFT record",
  );
  if (
    !isPowerOfTwo(recordSize) || recordSize < NTFS_MIN_RECORD ||
    recordSize > NTFS_MAX_RECORD
  ) {
    throw new Refusal(
      `MFT record size ${recordSize} is not a power of two in [${NTFS_MIN_RECORD}, ${NTFS_MAX_RECORD}]`,
    );
  }
  const indexRecordSize = sizeOf(
    bytes[BOOT.CLUSTERS_PER_INDEX],
    clusterSize,
    "clusters per index record",
  );
  if (
    !isPowerOfTwo(indexRecordSize) || indexRecordSize < 512 ||
    indexRecordSize > NTFS_MAX_RECORD
  ) {
    throw new Refusal(
      `index record size ${indexRecordSize} is not a power of two in [512, ${NTFS_MAX_RECORD}]`,
    );
  }
  return {
    sectorSize,
    clusterSize,
    totalSectors,
    clusters,
    mftLcn,
    mftMirrLcn,
    recordSize,
    indexRecordSize,
  };
}
