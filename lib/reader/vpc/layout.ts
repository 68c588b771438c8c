/**
 * The on-disk structures of a VHD image (QEMU's `vpc`), as pure functions
 * over their bytes: the 512-byte hard disk footer, the 1024-byte dynamic
 * disk header with its parent locators, and the virtual size QEMU 7.2's
 * `vpc_open()` derives from the footer. All fields are big-endian.
 *
 * ```text
 * Footer (512 bytes: at the end of every image, copied to offset 0 of a
 * dynamic or differencing one)
 *   0 cookie "conectix"      40 original_size u64
 *   8 features u32           48 current_size u64
 *  12 version u32            56 cylinders u16, 58 heads u8, 59 sectors u8
 *  16 data_offset u64        60 disk_type u32 (2 fixed, 3 dynamic, 4 differencing)
 *  24 timestamp u32          64 checksum u32
 *  28 creator_app [4]        68 uuid [16]
 *  32 creator_version u32    84 saved_state u8
 *  36 creator_os [4]
 *
 * Dynamic disk header (1024 bytes at the footer's data_offset)
 *   0 cookie "cxsparse"      36 checksum u32
 *   8 data_offset u64        40 parent_uuid [16]
 *  16 table_offset u64       56 parent_timestamp u32
 *  24 version u32            64 parent_unicode_name [512] (UTF-16BE)
 *  28 max_table_entries u32 576 parent locators: 8 x 24 bytes
 *  32 block_size u32              (platform_code u32, data_space u32,
 *                                  data_length u32, reserved u32,
 *                                  data_offset u64)
 * ```
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";

/** Bytes of the hard disk footer. */
export const VHD_FOOTER_SIZE = 512;
/** Bytes of the dynamic disk header. */
export const VHD_DYNAMIC_HEADER_SIZE = 1024;
/** The footer's cookie. */
export const VHD_FOOTER_COOKIE = "conectix";
/** The dynamic disk header's cookie. */
export const VHD_DYNAMIC_COOKIE = "cxsparse";
/** A BAT entry for a block that is not allocated. */
export const VHD_BAT_UNUSED = 0xffffffff;
/** Sector size: BAT entries and CHS geometry count 512-byte sectors. */
export const VHD_SECTOR = 512;

/** Footer `disk_type` values. */
export const VHD_TYPE = {
  FIXED: 2,
  DYNAMIC: 3,
  DIFFERENCING: 4,
} as const;

/** What `disk_type` says the image is. */
export type VhdSubformat = "fixed" | "dynamic" | "differencing";

/** The largest CHS geometry, 65535 x 16 x 255: QEMU then takes current_size. */
export const VHD_MAX_GEOMETRY = 65535 * 16 * 255;
/** QEMU's limit on the virtual size, in sectors (2040 GiB). */
export const VHD_MAX_SECTORS = 0xff000000;

/**
 * Creator applications whose images QEMU sizes by `current_size` rather
 * than by the CHS geometry: Hyper-V, QEMU with force_size, Disk2vhd,
 * XenConverter, XenServer.
 */
export const CURRENT_SIZE_CREATORS: readonly string[] = [
  "win ",
  "qem2",
  "d2v ",
  "CTXS",
  "tap\0",
];

/** The hard disk footer's fields. */
export interface VhdFooter {
  /**
   * Offset of the dynamic disk header (dynamic and differencing); a fixed
   * disk's is all ones, kept as read.
   */
  dataOffset: bigint;
  /** Modification time: seconds since 2000-01-01 UTC. */
  timestamp: number;
  /** Creator application, 4 characters (`qemu`, `win `, `vpc `...). */
  creatorApp: string;
  /** `current_size`: the size in bytes as Hyper-V sees it. */
  currentSize: number;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  /** `disk_type`. */
  diskType: number;
  /** The disk's UUID (hex, 32 digits): what a child names as its parent. */
  uuid: string;
}

const latin1 = new TextDecoder("latin1");

function ascii(bytes: Uint8Array, at: number, length: number): string {
  return latin1.decode(bytes.subarray(at, at + length));
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * QEMU's checksum of a footer or dynamic header: the one's complement of
 * the sum of its bytes, the checksum field counted as zeros.
 *
 * @param bytes The structure.
 * @param at Offset of its checksum field.
 * @returns The checksum.
 */
export function vhdChecksum(bytes: Uint8Array, at: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i < at || i >= at + 4) sum += bytes[i];
  }
  return (~sum) >>> 0;
}

/**
 * Parses a footer and verifies its checksum.
 *
 * @param bytes 512 bytes.
 * @param base Their offset in the file, for messages.
 * @returns The footer.
 * @throws {Qcow2Error} BAD_MAGIC without the cookie, CORRUPT when the
 * checksum is wrong.
 */
export function parseFooter(bytes: Uint8Array, base: number): VhdFooter {
  const where = `VHD footer at ${base}`;
  if (ascii(bytes, 0, 8) !== VHD_FOOTER_COOKIE) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot parse ${where}: cookie is not "conectix"`,
      { offset: base, field: "cookie" },
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const stored = view.getUint32(64);
  const computed = vhdChecksum(bytes, 64);
  if (stored !== computed) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot parse ${where}: checksum 0x${
        stored.toString(16).padStart(8, "0")
      } is not the footer's (0x${computed.toString(16).padStart(8, "0")})`,
      { offset: base + 64, field: "checksum" },
    );
  }
  return {
    dataOffset: view.getBigUint64(16),
    timestamp: view.getUint32(24),
    creatorApp: ascii(bytes, 28, 4),
    // Past 2^53 it is past QEMU's limit too: vhdVirtualSize refuses it.
    currentSize: Number(view.getBigUint64(48)),
    cylinders: view.getUint16(56),
    heads: bytes[58],
    sectorsPerTrack: bytes[59],
    diskType: view.getUint32(60),
    uuid: hex(bytes.subarray(68, 84)),
  };
}

/**
 * The virtual size QEMU 7.2 gives a VHD, in bytes: cylinders x heads x
 * sectors, unless the creator application sizes disks by `current_size`
 * ({@linkcode CURRENT_SIZE_CREATORS}) or the geometry is the largest one,
 * in which case `current_size` rounded down to a sector.
 *
 * @param footer The footer.
 * @returns The size in bytes.
 * @throws {Qcow2Error} OUT_OF_RANGE past 2040 GiB, as QEMU.
 */
export function vhdVirtualSize(footer: VhdFooter): number {
  const chs = footer.cylinders * footer.heads * footer.sectorsPerTrack;
  const useChs = !CURRENT_SIZE_CREATORS.includes(footer.creatorApp);
  const sectors = !useChs || chs === VHD_MAX_GEOMETRY
    ? Math.floor(footer.currentSize / VHD_SECTOR)
    : chs;
  if (sectors > VHD_MAX_SECTORS) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image: virtual size ${
        sectors * VHD_SECTOR
      } is larger than 2040 GiB (${VHD_MAX_SECTORS * VHD_SECTOR})`,
      { offset: 48, field: "current_size" },
    );
  }
  return sectors * VHD_SECTOR;
}

/** One parent locator entry. */
export interface ParentLocator {
  /** Platform code, 4 characters: `W2ru`, `W2ku`, `MacX`, `Wi2r`... */
  platform: string;
  /** Bytes of locator data. */
  dataLength: number;
  /** File offset of the locator data. */
  dataOffset: number;
}

/** The dynamic disk header's fields. */
export interface VhdDynamicHeader {
  /** File offset of the BAT. */
  tableOffset: number;
  /** Entries in the BAT. */
  maxTableEntries: number;
  /** Bytes per block: a power of two. */
  blockSize: number;
  /** The parent's UUID (hex), for a differencing image. */
  parentUuid: string;
  /** The parent's name as stored (UTF-16BE, up to the first NUL). */
  parentName: string;
  /** The parent locators whose platform code is not zero. */
  locators: ParentLocator[];
}

/**
 * Parses a dynamic disk header and verifies its cookie and checksum.
 *
 * @param bytes 1024 bytes.
 * @param base Their offset in the file, for messages.
 * @returns The header.
 * @throws {Qcow2Error} BAD_MAGIC, CORRUPT (checksum).
 */
export function parseDynamicHeader(
  bytes: Uint8Array,
  base: number,
): VhdDynamicHeader {
  const where = `dynamic disk header at ${base}`;
  if (ascii(bytes, 0, 8) !== VHD_DYNAMIC_COOKIE) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot parse ${where}: cookie is not "cxsparse"`,
      { offset: base, field: "cookie" },
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const stored = view.getUint32(36);
  const computed = vhdChecksum(bytes, 36);
  if (stored !== computed) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot parse ${where}: checksum 0x${
        stored.toString(16).padStart(8, "0")
      } is not the header's (0x${computed.toString(16).padStart(8, "0")})`,
      { offset: base + 36, field: "checksum" },
    );
  }
  const locators: ParentLocator[] = [];
  for (let i = 0; i < 8; i++) {
    const at = 576 + 24 * i;
    if (view.getUint32(at) === 0) continue;
    locators.push({
      platform: ascii(bytes, at, 4),
      dataLength: view.getUint32(at + 8),
      // Past 2^53 it is past the end of the file, where it is refused.
      dataOffset: Number(view.getBigUint64(at + 16)),
    });
  }
  return {
    tableOffset: Number(view.getBigUint64(16)),
    maxTableEntries: view.getUint32(28),
    blockSize: view.getUint32(32),
    parentUuid: hex(bytes.subarray(40, 56)),
    parentName: untilNul(
      new TextDecoder("utf-16be").decode(bytes.subarray(64, 576)),
    ),
    locators,
  };
}

/** A string up to its first NUL. */
export function untilNul(text: string): string {
  const nul = text.indexOf("\0");
  return nul < 0 ? text : text.slice(0, nul);
}

/**
 * Bytes of a block's sector bitmap, as QEMU computes it: one bit per
 * sector, rounded up to whole sectors.
 *
 * @param blockSize Bytes per block (at least 4096).
 * @returns The bitmap's bytes.
 */
export function bitmapBytes(blockSize: number): number {
  return Math.ceil(blockSize / (8 * VHD_SECTOR) / VHD_SECTOR) * VHD_SECTOR;
}

/** Whether the bitmap marks sector `i` as held by this image (MSB first). */
export function sectorBit(bitmap: Uint8Array, i: number): boolean {
  return (bitmap[i >> 3] & (0x80 >> (i & 7))) !== 0;
}
