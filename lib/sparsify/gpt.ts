/**
 * The GUID partition table (UEFI specification, chapter 5): a protective
 * MBR in LBA 0, the primary header in LBA 1, and the entry array it points
 * at. Both CRC32s (header, entry array) are checked; the backup copy at
 * the end of the disk is not read.
 *
 * ```text
 * header (little-endian):
 *   0 signature "EFI PART"   8 revision (1.0 = 0x00010000)
 *  12 header size (>= 92)   16 header CRC32 (over header size bytes, this field 0)
 *  24 my LBA (1)            32 alternate LBA        40 first usable LBA
 *  48 last usable LBA       56 disk GUID            72 entry array LBA
 *  80 number of entries     84 entry size (128 * 2^n)
 *  88 entry array CRC32
 * entry: 0 type GUID  16 unique GUID  32 first LBA  40 last LBA (inclusive)
 *       48 attributes 56 name (UTF-16LE, 36 units)
 * ```
 *
 * @module
 */

import { crc32 } from "../bytes/crc.ts";
import { type DiskReader, hex, Refusal, type TableLayout } from "./_region.ts";

/** The header signature, "EFI PART". */
export const GPT_SIGNATURE = "EFI PART";
/** Smallest header size the specification allows. */
export const GPT_HEADER_MIN_SIZE = 92;
/** Smallest entry size. */
export const GPT_ENTRY_MIN_SIZE = 128;
/** Largest entry array read here, in bytes (the usual one is 16 KiB). */
export const GPT_MAX_ENTRY_ARRAY = 4 * 1024 * 1024;
/** Sector sizes tried, in order: the header is in LBA 1. */
export const GPT_SECTOR_SIZES: readonly number[] = [512, 4096];

/** Type GUID of a Linux swap partition. */
export const GPT_TYPE_LINUX_SWAP = "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F";

const TYPE_NAMES: Record<string, string> = {
  "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "Linux filesystem",
  [GPT_TYPE_LINUX_SWAP]: "Linux swap",
  "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709": "Linux root (x86-64)",
  "B921B045-1DF0-41C3-AF44-4C6F280D3FAE": "Linux root (ARM-64)",
  "933AC7E1-2EB4-4F13-B844-0E14E2AEF915": "Linux home",
  "BC13C2FF-59E6-4262-A352-B275FD6F7172": "Linux extended boot",
  "E6D6D379-F507-44C2-A23C-238F2A3DF928": "Linux LVM",
  "A19D880F-05FC-4D3B-A006-743F0F84911E": "Linux RAID",
  "C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "EFI System",
  "21686148-6449-6E6F-744E-656564454649": "BIOS boot",
  "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7": "Microsoft basic data",
  "E3C9E316-0B5C-4DB8-817D-F92DF00215AE": "Microsoft reserved",
};

/** A parsed GPT header. LBAs are in sectors of the disk's sector size. */
export interface GptHeader {
  /** Sector size the header was found with. */
  sectorSize: number;
  /** Header size in bytes. */
  headerSize: number;
  /** LBA of the backup header. */
  alternateLba: number;
  /** First sector partitions may use. */
  firstUsableLba: number;
  /** Last sector partitions may use (inclusive). */
  lastUsableLba: number;
  /** Disk GUID. */
  diskGuid: string;
  /** First sector of the entry array. */
  entriesLba: number;
  /** Number of entries. */
  entryCount: number;
  /** Bytes per entry. */
  entrySize: number;
  /** Stored CRC32 of the entry array. */
  entriesCrc: number;
}

/** A used GPT entry (type GUID not zero). */
export interface GptEntry {
  /** Entry index, from 0. */
  index: number;
  /** Partition type GUID. */
  typeGuid: string;
  /** First sector. */
  firstLba: number;
  /** Last sector (inclusive). */
  lastLba: number;
  /** Partition name. */
  name: string;
}

/**
 * Formats 16 bytes as a GUID in the mixed-endian form UEFI uses.
 *
 * @param b 16 bytes.
 * @returns Upper-case `XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX`.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { guidString } from "./gpt.ts";
 * const b = Uint8Array.from([0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4]);
 * assert.strictEqual(guidString(b), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
 * ```
 */
export function guidString(b: Uint8Array): string {
  const h = (i: number) => b[i].toString(16).padStart(2, "0");
  const part = (idx: number[]) => idx.map(h).join("");
  return [
    part([3, 2, 1, 0]),
    part([5, 4]),
    part([7, 6]),
    part([8, 9]),
    part([10, 11, 12, 13, 14, 15]),
  ].join("-").toUpperCase();
}

/**
 * Names a GPT partition type for reports.
 *
 * @param guid The type GUID.
 * @returns A name such as `Linux swap`, or the GUID.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { gptTypeName } from "./gpt.ts";
 * assert.strictEqual(gptTypeName("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"), "Linux swap");
 * ```
 */
export function gptTypeName(guid: string): string {
  return TYPE_NAMES[guid] ?? guid;
}

/** Reads a little-endian u64 LBA that must fit the disk's byte range. */
function lba(view: DataView, at: number, field: string, ss: number): number {
  const v = view.getBigUint64(at, true);
  if (v * BigInt(ss) > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Refusal(`GPT ${field} ${hex(v)} is out of range`);
  }
  return Number(v);
}

/**
 * Parses and checks the GPT header found in LBA 1.
 *
 * @param bytes The header's sector (at least `sectorSize` bytes).
 * @param sectorSize The disk's sector size.
 * @param diskSize The disk size in bytes, when known: the usable area and
 * the entry array must lie inside it.
 * @returns The header.
 * @throws {Refusal} For a wrong signature, revision, size or CRC32, a
 * header that does not say it is in LBA 1, or areas out of order or past
 * the end of the disk.
 *
 * @example Catch a corrupted header
 * ```ts
 * import assert from "node:assert";
 * import { parseGptHeader } from "./gpt.ts";
 * const sector = new Uint8Array(512);
 * sector.set(new TextEncoder().encode("EFI PART"));
 * assert.throws(() => parseGptHeader(sector, 512, undefined), /revision/);
 * ```
 */
export function parseGptHeader(
  bytes: Uint8Array,
  sectorSize: number,
  diskSize: number | undefined,
): GptHeader {
  if (bytes.length < sectorSize) {
    throw new Refusal("GPT header lies past the end of the disk: truncated");
  }
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== GPT_SIGNATURE) {
    throw new Refusal(
      `GPT header in LBA 1 has no "${GPT_SIGNATURE}" signature`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const revision = view.getUint32(8, true);
  if (revision >>> 16 !== 1) {
    throw new Refusal(`GPT revision ${hex(revision)} is not 1.x`);
  }
  const headerSize = view.getUint32(12, true);
  if (headerSize < GPT_HEADER_MIN_SIZE || headerSize > sectorSize) {
    throw new Refusal(
      `GPT header size ${headerSize} is out of range [${GPT_HEADER_MIN_SIZE}, ${sectorSize}]`,
    );
  }
  const stored = view.getUint32(16, true);
  const copy = bytes.slice(0, headerSize);
  copy.fill(0, 16, 20);
  const actual = crc32(copy);
  if (stored !== actual) {
    throw new Refusal(
      `GPT header CRC32 ${hex(stored)} does not match its contents (${
        hex(actual)
      })`,
    );
  }
  const myLba = lba(view, 24, "my LBA", sectorSize);
  if (myLba !== 1) throw new Refusal(`GPT header says it is in LBA ${myLba}`);
  const header: GptHeader = {
    sectorSize,
    headerSize,
    alternateLba: lba(view, 32, "alternate LBA", sectorSize),
    firstUsableLba: lba(view, 40, "first usable LBA", sectorSize),
    lastUsableLba: lba(view, 48, "last usable LBA", sectorSize),
    diskGuid: guidString(bytes.subarray(56, 72)),
    entriesLba: lba(view, 72, "entry array LBA", sectorSize),
    entryCount: view.getUint32(80, true),
    entrySize: view.getUint32(84, true),
    entriesCrc: view.getUint32(88, true),
  };
  checkAreas(header, diskSize);
  return header;
}

function checkAreas(h: GptHeader, diskSize: number | undefined): void {
  if (
    h.entrySize < GPT_ENTRY_MIN_SIZE || h.entrySize % 8 !== 0 ||
    (h.entrySize & (h.entrySize - 1)) !== 0
  ) {
    throw new Refusal(
      `GPT entry size ${h.entrySize} is not 128 times a power of two`,
    );
  }
  const arrayBytes = h.entryCount * h.entrySize;
  if (arrayBytes > GPT_MAX_ENTRY_ARRAY) {
    throw new Refusal(
      `GPT entry array of ${h.entryCount} x ${h.entrySize} bytes is larger than ${GPT_MAX_ENTRY_ARRAY}`,
    );
  }
  const arraySectors = Math.ceil(arrayBytes / h.sectorSize);
  const arrayEnd = h.entriesLba + arraySectors; // exclusive
  if (h.firstUsableLba > h.lastUsableLba) {
    throw new Refusal(
      `GPT first usable LBA ${h.firstUsableLba} is after the last usable LBA ${h.lastUsableLba}`,
    );
  }
  if (h.firstUsableLba < 2 || h.entriesLba < 2) {
    throw new Refusal(
      `GPT usable area (LBA ${h.firstUsableLba}) or entry array (LBA ${h.entriesLba}) overlaps the protective MBR or the header`,
    );
  }
  if (arrayEnd > h.firstUsableLba && h.entriesLba <= h.lastUsableLba) {
    throw new Refusal(
      `GPT entry array (LBA ${h.entriesLba}-${
        arrayEnd - 1
      }) overlaps the usable area (LBA ${h.firstUsableLba}-${h.lastUsableLba})`,
    );
  }
  if (
    h.alternateLba >= h.firstUsableLba && h.alternateLba <= h.lastUsableLba
  ) {
    throw new Refusal(
      `GPT alternate header LBA ${h.alternateLba} lies inside the usable area`,
    );
  }
  if (diskSize !== undefined) {
    const sectors = Math.floor(diskSize / h.sectorSize);
    if (h.lastUsableLba >= sectors || arrayEnd > sectors) {
      throw new Refusal(
        `GPT usable area or entry array ends past the disk's last LBA ${
          sectors - 1
        }: truncated`,
      );
    }
  }
}

/**
 * Checks the entry array's CRC32 and lists its used entries.
 *
 * @param bytes The entry array (`entryCount * entrySize` bytes).
 * @param header The header that points at it.
 * @returns Entries whose type GUID is not zero, in index order.
 * @throws {Refusal} For a CRC32 mismatch, or an entry whose sectors are
 * out of order or outside the usable area.
 *
 * @example An empty array
 * ```ts
 * import assert from "node:assert";
 * import { parseGptEntries } from "./gpt.ts";
 * const header = { sectorSize: 512, headerSize: 92, alternateLba: 99, firstUsableLba: 34, lastUsableLba: 66,
 *   diskGuid: "", entriesLba: 2, entryCount: 4, entrySize: 128, entriesCrc: 0 };
 * assert.throws(() => parseGptEntries(new Uint8Array(512), header), /CRC32/);
 * ```
 */
export function parseGptEntries(
  bytes: Uint8Array,
  header: GptHeader,
): GptEntry[] {
  const size = header.entryCount * header.entrySize;
  if (bytes.length < size) {
    throw new Refusal(
      "GPT entry array lies past the end of the disk: truncated",
    );
  }
  const actual = crc32(bytes.subarray(0, size));
  if (actual !== header.entriesCrc) {
    throw new Refusal(
      `GPT entry array CRC32 ${
        hex(header.entriesCrc)
      } does not match its contents (${hex(actual)})`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, size);
  const out: GptEntry[] = [];
  for (let i = 0; i < header.entryCount; i++) {
    const at = i * header.entrySize;
    const type = bytes.subarray(at, at + 16);
    if (type.every((b) => b === 0)) continue;
    const ss = header.sectorSize;
    const firstLba = lba(view, at + 32, `entry ${i + 1} first LBA`, ss);
    const lastLba = lba(view, at + 40, `entry ${i + 1} last LBA`, ss);
    if (
      firstLba > lastLba || firstLba < header.firstUsableLba ||
      lastLba > header.lastUsableLba
    ) {
      throw new Refusal(
        `GPT entry ${
          i + 1
        } (LBA ${firstLba}-${lastLba}) is not inside the usable area (LBA ${header.firstUsableLba}-${header.lastUsableLba})`,
      );
    }
    const nameUnits = new Uint16Array(36);
    for (let k = 0; k < 36; k++) {
      nameUnits[k] = view.getUint16(at + 56 + 2 * k, true);
    }
    const end = nameUnits.indexOf(0);
    out.push({
      index: i,
      typeGuid: guidString(type),
      firstLba,
      lastLba,
      name: String.fromCharCode(...nameUnits.subarray(0, end < 0 ? 36 : end)),
    });
  }
  return out;
}

/**
 * Reads a GPT disk's partitions: the header in LBA 1 (512-byte sectors,
 * else 4096), then the entry array. Partition `n` is entry `n - 1`.
 *
 * @param disk The disk.
 * @returns The partitions and the sectors of the table (LBA 0, the header,
 * the entry array, and the backup header and array at the end).
 * @throws {Refusal} When the header or the array fails a check.
 *
 * @example No GPT header
 * ```ts
 * import assert from "node:assert";
 * import { readGptPartitions } from "./gpt.ts";
 * const disk = new Uint8Array(65536);
 * const reader = { size: disk.length, read: (o: number, n: number) => Promise.resolve(disk.subarray(o, o + n)) };
 * await assert.rejects(readGptPartitions(reader), /no "EFI PART" signature/);
 * ```
 */
export async function readGptPartitions(
  disk: DiskReader,
): Promise<TableLayout> {
  let header: GptHeader | undefined;
  let firstProblem: Refusal | undefined;
  for (const ss of GPT_SECTOR_SIZES) {
    const sector = await disk.read(ss, ss);
    try {
      header = parseGptHeader(sector, ss, disk.size);
      break;
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      firstProblem ??= err;
      // A signature at this sector size: its problem is the one to report.
      if (new TextDecoder().decode(sector.subarray(0, 8)) === GPT_SIGNATURE) {
        throw err;
      }
    }
  }
  if (!header) throw firstProblem!;
  const ss = header.sectorSize;
  const arrayBytes = header.entryCount * header.entrySize;
  const array = await disk.read(header.entriesLba * ss, arrayBytes);
  const entries = parseGptEntries(array, header);
  return {
    partitions: entries.map((e) => ({
      number: e.index + 1,
      offset: e.firstLba * ss,
      length: (e.lastLba - e.firstLba + 1) * ss,
      type: gptTypeName(e.typeGuid),
      typeKind: e.typeGuid === GPT_TYPE_LINUX_SWAP ? "swap" : "other",
    })),
    table: [
      { offset: 0, length: 2 * ss },
      { offset: header.entriesLba * ss, length: Math.max(arrayBytes, 1) },
      // The backup header, and its entry array where UEFI puts it (just
      // before the header, the primary array's size): no partition may
      // cover them either.
      ...(header.alternateLba > header.lastUsableLba
        ? [{
          offset: (header.alternateLba - Math.ceil(arrayBytes / ss)) * ss,
          length: (Math.ceil(arrayBytes / ss) + 1) * ss,
        }]
        : []),
    ],
  };
}
