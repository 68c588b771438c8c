/**
 * The on-disk structures of VHDX (Microsoft's "VHDX Format Specification"
 * v1.0, as QEMU's block/vhdx.h lays them out), as pure functions over
 * bytes: the file identifier, the two headers, the region table, the
 * metadata table and its items, log entry headers and BAT entries. All
 * fields are little-endian; checksums are CRC-32C over the structure with
 * the checksum field zeroed.
 *
 * ```text
 * 0      file identifier  "vhdxfile", creator (UTF-16)          64 KiB
 * 64K    header 1         "head", crc, seq, guids, log          4 KiB used
 * 128K   header 2         the same; the valid one with the higher seq wins
 * 192K   region table 1   "regi", crc, count, entries           64 KiB
 * 256K   region table 2   a copy (QEMU reads table 1 only)
 * 1M...  log, BAT region, metadata region, payload blocks (1 MiB aligned)
 * ```
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import { crc32c } from "../../bytes/crc.ts";
import { viewOf } from "../../bytes/binary.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** `vhdxfile` at offset 0: the file type identifier. */
export const FILE_SIGNATURE = "vhdxfile";
/** Offset of header 1; header 2 follows 64 KiB later. */
export const HEADER1_OFFSET = 64 * KiB;
/** Offset of header 2. */
export const HEADER2_OFFSET = 128 * KiB;
/** Bytes a header's checksum covers. */
export const HEADER_SIZE = 4 * KiB;
/** Offset of region table 1 (the one QEMU reads). */
export const REGION_TABLE_OFFSET = 192 * KiB;
/** Bytes a region table (and the metadata table) occupies and its checksum covers. */
export const TABLE_SIZE = 64 * KiB;
/** The header section: file identifier, headers, region tables. */
export const HEADER_SECTION_SIZE = 1 * MiB;
/** Most entries a region or metadata table may hold. */
export const MAX_TABLE_ENTRIES = 2047;
/** Smallest payload block. */
export const BLOCK_SIZE_MIN = 1 * MiB;
/** Largest payload block. */
export const BLOCK_SIZE_MAX = 256 * MiB;
/** Sectors one sector bitmap block covers (2^23): sets the chunk ratio. */
export const MAX_SECTORS_PER_BLOCK = 2 ** 23;
/** Largest virtual disk the format allows (64 TiB). */
export const MAX_VIRTUAL_SIZE = 64 * 1024 * 1024 * MiB;
/** Log offset and length are multiples of 1 MiB (`VHDX_LOG_MIN_SIZE`). */
export const LOG_ALIGN = 1 * MiB;
/** Log entries start on 4 KiB boundaries and are multiples of it. */
export const LOG_SECTOR_SIZE = 4 * KiB;
/** Bytes of a log entry header. */
export const LOG_ENTRY_HEADER_SIZE = 64;

/** Region GUIDs. */
export const BAT_GUID = "2dc27766-f623-4200-9d64-115e9bfd4a08";
/** The metadata region. */
export const METADATA_GUID = "8b7ca206-4790-4b9a-b8fe-575f050f886e";

/** Metadata item GUIDs. */
export const ITEM = {
  FILE_PARAMETERS: "caa16737-fa36-4d43-b3b6-33f0aa44e76b",
  VIRTUAL_DISK_SIZE: "2fa54224-cd1b-4876-b211-5dbed83bf4b8",
  PAGE83_DATA: "beca12ab-b2e6-4523-93ef-c309e000c746",
  LOGICAL_SECTOR_SIZE: "8141bf1d-a96f-4709-ba47-f233a8faab5f",
  PHYSICAL_SECTOR_SIZE: "cda348c7-445d-4471-9cc9-e9885251c556",
  PARENT_LOCATOR: "a8d35f2d-b30b-454d-abf7-d3d84834ab0c",
} as const;

/** `locator_type` of the parent locator of a VHDX parent. */
export const VHDX_PARENT_LOCATOR_TYPE = "b04aefb7-d19e-4a81-b789-25b8e9445913";
/** The sector bitmap block of a chunk is present (BAT entry state 6). */
export const SB_BLOCK_PRESENT = 6;

/** Region table entry `data_bits` bit 0: the region must be understood. */
export const REGION_REQUIRED = 1;
/** Metadata entry `data_bits` bit 2: the item must be understood. */
export const METADATA_REQUIRED = 4;
/** File parameters `data_bits` bit 0: blocks stay allocated (fixed). */
export const PARAMS_LEAVE_BLOCKS_ALLOCATED = 1;
/** File parameters `data_bits` bit 1: a differencing image. */
export const PARAMS_HAS_PARENT = 2;

/**
 * Payload block states: BAT entry bits 0-2. Bits 20-63 hold the block's
 * file offset in MiB (`FileOffsetMB`).
 */
export const BLOCK_STATE = {
  NOT_PRESENT: 0,
  UNDEFINED: 1,
  ZERO: 2,
  UNMAPPED: 3,
  /** The value of UNMAPPED in the v0.95 draft, which QEMU also reads as zeros. */
  UNMAPPED_V095: 5,
  FULLY_PRESENT: 6,
  PARTIALLY_PRESENT: 7,
} as const;

const ascii = new TextDecoder("latin1");

/** Reads a 64-bit little-endian field as a number (exact below 2^53). */
export function u64(view: DataView, at: number): number {
  return view.getUint32(at + 4, true) * 2 ** 32 + view.getUint32(at, true);
}

/** Formats a GUID as text: three little-endian fields, then eight bytes. */
export function guidAt(bytes: Uint8Array, at: number): string {
  const v = viewOf(bytes);
  const h = (n: number, width: number) => n.toString(16).padStart(width, "0");
  const tail = [...bytes.subarray(at + 8, at + 16)].map((b) => h(b, 2));
  return `${h(v.getUint32(at, true), 8)}-${h(v.getUint16(at + 4, true), 4)}-${
    h(v.getUint16(at + 6, true), 4)
  }-${tail.slice(0, 2).join("")}-${tail.slice(2).join("")}`;
}

/** The all-zero GUID. */
export const ZERO_GUID = "00000000-0000-0000-0000-000000000000";

/**
 * Whether the CRC-32C stored at `at` matches `bytes` with it zeroed.
 *
 * @returns The stored and computed values, for messages.
 */
export function checksum(
  bytes: Uint8Array,
  at: number,
): { stored: number; computed: number } {
  const stored = viewOf(bytes).getUint32(at, true);
  const copy = bytes.slice();
  copy.fill(0, at, at + 4);
  return { stored, computed: crc32c(copy) };
}

/** A header (one of the two). */
export interface VhdxHeader {
  /** Which one: 1 or 2. */
  index: 1 | 2;
  /** Its file offset. */
  offset: number;
  /** `sequence_number`: the valid header with the higher one is current. */
  sequence: bigint;
  /** `data_write_guid`: what a child's `parent_linkage` names. */
  dataWriteGuid: string;
  /** `log_guid`: zero when no log needs replaying. */
  logGuid: string;
  /** `log_version` (must be 0). */
  logVersion: number;
  /** `log_length` in bytes. */
  logLength: number;
  /** `log_offset` in bytes. */
  logOffset: number;
}

/**
 * Parses one header as QEMU judges it: valid when its checksum matches, its
 * signature is `head` and its version 1.
 *
 * @param bytes The 4 KiB at its offset.
 * @param index Which header.
 * @returns The header, or why it is not valid.
 */
export function parseHeader(
  bytes: Uint8Array,
  index: 1 | 2,
): VhdxHeader | string {
  const offset = index === 1 ? HEADER1_OFFSET : HEADER2_OFFSET;
  const v = viewOf(bytes);
  const { stored, computed } = checksum(bytes, 4);
  if (stored !== computed) {
    return `header ${index} at ${hex(offset)}: checksum ${hex(stored)} is not ${
      hex(computed)
    }`;
  }
  const signature = ascii.decode(bytes.subarray(0, 4));
  if (signature !== "head") {
    return `header ${index} at ${
      hex(offset)
    }: signature "${signature}" is not "head"`;
  }
  const version = v.getUint16(66, true);
  if (version !== 1) {
    return `header ${index} at ${hex(offset)}: version ${version} is not 1`;
  }
  return {
    index,
    offset,
    sequence: v.getBigUint64(8, true),
    dataWriteGuid: guidAt(bytes, 32),
    logGuid: guidAt(bytes, 48),
    logVersion: v.getUint16(64, true),
    logLength: v.getUint32(68, true),
    logOffset: u64(v, 72),
  };
}

/**
 * Chooses the current header as QEMU does: the only valid one, or of two
 * valid ones the one with the higher sequence number (equal numbers only
 * when the two headers are the same bytes).
 *
 * @param h1 Header 1's 4 KiB.
 * @param h2 Header 2's 4 KiB.
 * @param name The image, for messages.
 * @returns The current header.
 * @throws {Qcow2Error} `CORRUPT` when neither is valid, or both are with
 * the same sequence number and different contents.
 */
export function chooseHeader(
  h1: Uint8Array,
  h2: Uint8Array,
  name: string,
): VhdxHeader {
  const a = parseHeader(h1, 1);
  const b = parseHeader(h2, 2);
  if (typeof a === "string" && typeof b === "string") {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot open image ${name}: no valid VHDX header (${a}; ${b})`,
      { offset: HEADER1_OFFSET, field: "header" },
    );
  }
  if (typeof a === "string") return b as VhdxHeader;
  if (typeof b === "string") return a;
  if (a.sequence > b.sequence) return a;
  if (b.sequence > a.sequence) return b;
  // Disk2VHD writes two identical headers with one sequence number.
  const same = h1.subarray(0, 80).every((x, i) => x === h2[i]);
  if (same) return a;
  throw new Qcow2Error(
    "CORRUPT",
    `Cannot open image ${name}: both VHDX headers have sequence number ${a.sequence} but differ`,
    { offset: HEADER2_OFFSET, field: "sequence_number" },
  );
}

/** A region table entry. */
export interface Region {
  /** The region's GUID. */
  guid: string;
  /** `file_offset`. */
  offset: number;
  /** `length` in bytes. */
  length: number;
  /** `data_bits` bit 0: required. */
  required: boolean;
}

/**
 * Parses region table 1: its checksum, signature and entry count.
 *
 * @param bytes The 64 KiB of the table.
 * @param name The image, for messages.
 * @returns The entries.
 * @throws {Qcow2Error} `CORRUPT` for a bad checksum or signature,
 * `OUT_OF_RANGE` for too many entries.
 */
export function parseRegionTable(bytes: Uint8Array, name: string): Region[] {
  const at = { offset: REGION_TABLE_OFFSET, field: "region_table" };
  const { stored, computed } = checksum(bytes, 4);
  if (stored !== computed) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot open image ${name}: region table checksum ${hex(stored)} at ${
        hex(REGION_TABLE_OFFSET)
      } is not ${hex(computed)}`,
      at,
    );
  }
  const signature = ascii.decode(bytes.subarray(0, 4));
  if (signature !== "regi") {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot open image ${name}: region table signature "${signature}" at ${
        hex(REGION_TABLE_OFFSET)
      } is not "regi"`,
      at,
    );
  }
  const v = viewOf(bytes);
  const count = v.getUint32(8, true);
  if (count > MAX_TABLE_ENTRIES) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image ${name}: region table entry_count ${count} is out of range [0, ${MAX_TABLE_ENTRIES}]`,
      { offset: REGION_TABLE_OFFSET + 8, field: "entry_count" },
    );
  }
  const regions: Region[] = [];
  for (let i = 0; i < count; i++) {
    const e = 16 + i * 32;
    regions.push({
      guid: guidAt(bytes, e),
      offset: u64(v, e + 16),
      length: v.getUint32(e + 24, true),
      required: (v.getUint32(e + 28, true) & REGION_REQUIRED) !== 0,
    });
  }
  return regions;
}

/** A metadata table entry. */
export interface MetadataEntry {
  /** The item's GUID. */
  guid: string;
  /** Offset of the item from the start of the metadata region. */
  offset: number;
  /** Length of the item. */
  length: number;
  /** `is_required`. */
  required: boolean;
}

/**
 * Parses the metadata table at the start of the metadata region.
 *
 * @param bytes Its 64 KiB.
 * @param where Its file offset, for messages.
 * @param name The image, for messages.
 * @returns The entries.
 * @throws {Qcow2Error} `BAD_MAGIC` for a bad signature, `OUT_OF_RANGE`
 * for too many entries.
 */
export function parseMetadataTable(
  bytes: Uint8Array,
  where: number,
  name: string,
): MetadataEntry[] {
  const signature = ascii.decode(bytes.subarray(0, 8));
  if (signature !== "metadata") {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot open image ${name}: metadata table signature "${signature}" at ${
        hex(where)
      } is not "metadata"`,
      { offset: where, field: "metadata_table" },
    );
  }
  const v = viewOf(bytes);
  const count = v.getUint16(10, true);
  if (count > MAX_TABLE_ENTRIES) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image ${name}: metadata table entry_count ${count} at ${
        hex(where + 10)
      } is out of range [0, ${MAX_TABLE_ENTRIES}]`,
      { offset: where + 10, field: "entry_count" },
    );
  }
  const entries: MetadataEntry[] = [];
  for (let i = 0; i < count; i++) {
    const e = 32 + i * 32;
    entries.push({
      guid: guidAt(bytes, e),
      offset: v.getUint32(e + 16, true),
      length: v.getUint32(e + 20, true),
      required: (v.getUint32(e + 24, true) & METADATA_REQUIRED) !== 0,
    });
  }
  return entries;
}

/** A log entry header, as far as telling a live entry from a stale one needs. */
export interface LogEntryHeader {
  /** `entry_length`: bytes of the entry, header included. */
  entryLength: number;
  /** `log_guid`: the log the entry belongs to. */
  logGuid: string;
}

/**
 * Parses a log entry header: undefined unless it starts with `loge`.
 *
 * @param bytes At least 64 bytes.
 * @returns The header, or undefined.
 */
export function parseLogEntryHeader(
  bytes: Uint8Array,
): LogEntryHeader | undefined {
  if (ascii.decode(bytes.subarray(0, 4)) !== "loge") return undefined;
  return {
    entryLength: viewOf(bytes).getUint32(8, true),
    logGuid: guidAt(bytes, 32),
  };
}

/** A BAT entry: its state (bits 0-2) and file offset (bits 20-63, in MiB). */
export interface BatEntry {
  /** One of {@linkcode BLOCK_STATE}. */
  state: number;
  /** The block's file offset in bytes (may exceed 2^53 in a hostile file). */
  offset: number;
}

/**
 * Decodes BAT entry `index` of a BAT.
 *
 * @param bat The BAT's bytes.
 * @param index The entry.
 * @returns The entry.
 */
export function batEntry(bat: DataView, index: number): BatEntry {
  const lo = bat.getUint32(index * 8, true);
  const hi = bat.getUint32(index * 8 + 4, true);
  return { state: lo & 7, offset: hi * 2 ** 32 + (lo >>> 20) * MiB };
}

/**
 * Parses a parent locator item: its type must be the VHDX one; its
 * key/value entries are UTF-16LE strings at offsets from the item's start.
 *
 * @param bytes The item.
 * @param where Its file offset, for messages.
 * @param name The image, for messages.
 * @returns The keys and values.
 * @throws {Qcow2Error} For another locator type, or entries outside the item.
 */
export function parseParentLocator(
  bytes: Uint8Array,
  where: number,
  name: string,
): Map<string, string> {
  const type = guidAt(bytes, 0);
  if (type !== VHDX_PARENT_LOCATOR_TYPE) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot open image ${name}: parent locator type ${type} at ${
        hex(where)
      } is not the VHDX one (${VHDX_PARENT_LOCATOR_TYPE})`,
      { offset: where, field: "locator_type" },
    );
  }
  const v = viewOf(bytes);
  const count = v.getUint16(18, true);
  const utf16 = new TextDecoder("utf-16le");
  const out = new Map<string, string>();
  const text = (offset: number, length: number, what: string) => {
    if (offset + length > bytes.length || length % 2 !== 0) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open image ${name}: parent locator ${what} [${offset}, ${
          offset + length
        }) lies outside the item (${bytes.length} bytes) at ${hex(where)}`,
        { offset: where, field: "parent_locator" },
      );
    }
    return utf16.decode(bytes.subarray(offset, offset + length));
  };
  if (20 + count * 12 > bytes.length) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot open image ${name}: parent locator key_value_count ${count} does not fit its item (${bytes.length} bytes) at ${
        hex(where)
      }`,
      { offset: where + 18, field: "key_value_count" },
    );
  }
  for (let i = 0; i < count; i++) {
    const e = 20 + i * 12;
    const key = text(
      v.getUint32(e, true),
      v.getUint16(e + 8, true),
      `key ${i}`,
    );
    out.set(
      key,
      text(v.getUint32(e + 4, true), v.getUint16(e + 10, true), `value ${i}`),
    );
  }
  return out;
}
