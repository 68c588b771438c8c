/**
 * The LVM2 physical volume label: one 512-byte sector among the first
 * four of the PV, holding the label header and the PV header. Every
 * integer is little-endian.
 *
 * ```text
 * label_header (at the start of the sector):
 *    0 id "LABELONE"       8 sector_xl (u64, this sector's number)
 *   16 crc_xl (u32, over bytes 20-511)   20 offset_xl (u32, of the PV header)
 *   24 type "LVM2 001"
 * pv_header (at offset_xl, 32 in practice):
 *    0 pv_uuid (32 characters of [0-9A-Za-z!#])
 *   32 device_size_xl (u64, bytes)
 *   40 data areas: {offset u64, size u64} ..., ended by an offset of 0
 *      metadata areas: {offset u64, size u64} ..., ended the same way
 * pv_header_extension (after the lists):
 *    0 version (u32: 1 bootloader areas, 2 the "used" flag)  4 flags (u32)
 *    8 bootloader areas: {offset u64, size u64} ..., ended by an offset of 0
 * ```
 *
 * The CRC is LVM2's: CRC-32 (IEEE) seeded with 0xf597a6cf, not inverted.
 *
 * @module
 */

import { crc32Raw } from "../../bytes/crc.ts";
import { hex, Refusal } from "../_region.ts";

/** Bytes of a sector as LVM2 counts them. */
export const LVM_SECTOR = 512;
/** Sectors at the start of a PV the label is looked for in. */
export const LABEL_SCAN_SECTORS = 4;
/** The label's id, at byte 0 of its sector. */
export const LABEL_ID = "LABELONE";
/** The label type of a text-format (LVM2) PV, at byte 24. */
export const LABEL_TYPE = "LVM2 001";
/** Seed of LVM2's CRC. */
export const LVM_CRC_INIT = 0xf597a6cf;
/** Label header field offsets. */
export const LABEL = {
  SECTOR: 8,
  CRC: 16,
  OFFSET: 20,
  TYPE: 24,
  /** Bytes of the label header. */
  SIZE: 32,
} as const;
/** Bytes of the PV UUID (no dashes on disk). */
export const PV_UUID_LENGTH = 32;
/** PV header extension versions known (1 bootloader areas, 2 the used flag). */
export const PV_EXTENSION_MAX_VERSION = 2;
/** PV header extension flag: the PV belongs to a VG. */
export const PV_EXT_USED = 0x1;

/** A byte range of the PV: `offset` from its first byte, `size` bytes. */
export interface DiskArea {
  offset: number;
  /** Bytes; 0 for a data area means "to the end of the device". */
  size: number;
}

/** A PV label and header, checked on their own (not against the device). */
export interface PvLabel {
  /** Sector the label is in (0-3). */
  sector: number;
  /** The PV UUID as LVM2 prints it, with dashes (6-4-4-4-4-4-6). */
  uuid: string;
  /** Device size the PV was made for, in bytes. */
  deviceSize: number;
  /** The data area (one on every LVM2 PV). */
  dataArea: DiskArea;
  /** Metadata areas (0, 1 or 2). */
  metadataAreas: DiskArea[];
  /** Bootloader areas (0 or 1). */
  bootloaderAreas: DiskArea[];
}

/**
 * LVM2's CRC of `bytes`, continued from `crc`.
 *
 * @param bytes The bytes.
 * @param crc The CRC so far.
 * @returns The CRC.
 *
 * @example A label's CRC covers its bytes 20-511
 * ```ts
 * import assert from "node:assert";
 * import { lvmCrc } from "./label.ts";
 * const text = new TextEncoder().encode("vg0 {\n}\n");
 * // Continued over two pieces is the same as over the whole.
 * assert.strictEqual(lvmCrc(text.subarray(3), lvmCrc(text.subarray(0, 3))), lvmCrc(text));
 * ```
 */
export function lvmCrc(bytes: Uint8Array, crc: number = LVM_CRC_INIT): number {
  return crc32Raw(crc, bytes);
}

function ascii(bytes: Uint8Array, at: number, n: number): string {
  return String.fromCharCode(...bytes.subarray(at, at + n));
}

/**
 * The sectors among the first four of `head` that start with the label id
 * and carry the LVM2 type.
 *
 * @param head The first bytes of a region (2048 covers the four sectors).
 * @returns The sector numbers.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { labelSectors } from "./label.ts";
 * const head = new Uint8Array(2048);
 * head.set(new TextEncoder().encode("LABELONE"), 512);
 * head.set(new TextEncoder().encode("LVM2 001"), 512 + 24);
 * assert.deepStrictEqual(labelSectors(head), [1]);
 * ```
 */
export function labelSectors(head: Uint8Array): number[] {
  const out: number[] = [];
  for (let s = 0; s < LABEL_SCAN_SECTORS; s++) {
    const at = s * LVM_SECTOR;
    if (head.length < at + LABEL.SIZE) break;
    if (
      ascii(head, at, 8) === LABEL_ID &&
      ascii(head, at + LABEL.TYPE, 8) === LABEL_TYPE
    ) out.push(s);
  }
  return out;
}

/** Formats a 32-character PV or VG UUID as LVM2 prints it. */
export function dashedUuid(raw: string): string {
  return [
    raw.slice(0, 6),
    raw.slice(6, 10),
    raw.slice(10, 14),
    raw.slice(14, 18),
    raw.slice(18, 22),
    raw.slice(22, 26),
    raw.slice(26),
  ].join("-");
}

/** Characters of an LVM2 UUID. */
const UUID_CHARS = /^[0-9A-Za-z!#]{32}$/;

/**
 * Parses and checks the label in `sector`.
 *
 * @param bytes The 512 bytes of the sector.
 * @param sector Its number (0-3).
 * @returns The label.
 * @throws {Refusal} When a field is wrong: the sector number, the CRC, the
 * type, the UUID, an area list (unterminated, empty where one is needed,
 * more areas than LVM2 writes), an unknown extension version or flag.
 *
 * @example Read the label pvcreate wrote, and refuse one byte changed
 * ```ts
 * import assert from "node:assert";
 * import { LABEL, lvmCrc, parsePvLabel } from "./label.ts";
 * const s = new Uint8Array(512);
 * const v = new DataView(s.buffer);
 * s.set(new TextEncoder().encode("LABELONE"), 0);
 * v.setUint32(LABEL.OFFSET, 32, true);
 * s.set(new TextEncoder().encode("LVM2 001"), LABEL.TYPE);
 * s.set(new TextEncoder().encode("zGhZhnYzF8Ue3gMf0fbXQaoUr8af1KEE"), 32);
 * v.setBigUint64(64, 64n << 20n, true); // device size
 * v.setBigUint64(72, 1n << 20n, true); // data area at 1 MiB, to the end
 * v.setBigUint64(104, 4096n, true); // metadata area at 4 KiB ...
 * v.setBigUint64(112, 1044480n, true); // ... of 1020 KiB
 * v.setUint32(LABEL.CRC, lvmCrc(s.subarray(LABEL.OFFSET)), true);
 * const label = parsePvLabel(s, 0);
 * assert.strictEqual(label.uuid, "zGhZhn-YzF8-Ue3g-Mf0f-bXQa-oUr8-af1KEE");
 * assert.deepStrictEqual(label.metadataAreas, [{ offset: 4096, size: 1044480 }]);
 * s[40] ^= 1;
 * assert.throws(() => parsePvLabel(s, 0), /label CRC/);
 * ```
 */
export function parsePvLabel(bytes: Uint8Array, sector: number): PvLabel {
  if (bytes.length < LVM_SECTOR) {
    throw new Refusal(`LVM2 label sector ${sector} is truncated`);
  }
  const s = bytes.subarray(0, LVM_SECTOR);
  const view = new DataView(s.buffer, s.byteOffset, LVM_SECTOR);
  const where = `LVM2 label in sector ${sector}`;
  if (ascii(s, 0, 8) !== LABEL_ID || ascii(s, LABEL.TYPE, 8) !== LABEL_TYPE) {
    throw new Refusal(
      `no ${LABEL_ID} / ${LABEL_TYPE} label in sector ${sector}`,
    );
  }
  const said = view.getBigUint64(LABEL.SECTOR, true);
  if (said !== BigInt(sector)) {
    throw new Refusal(`${where} says it is in sector ${said}`);
  }
  const crc = view.getUint32(LABEL.CRC, true);
  const computed = lvmCrc(s.subarray(LABEL.OFFSET));
  if (crc !== computed) {
    throw new Refusal(
      `${where}: label CRC ${hex(crc)} does not match its contents (${
        hex(computed)
      })`,
    );
  }
  const start = view.getUint32(LABEL.OFFSET, true);
  // The PV header needs the UUID, the size and two terminators.
  if (start < LABEL.SIZE || start > LVM_SECTOR - (PV_UUID_LENGTH + 8 + 32)) {
    throw new Refusal(`${where}: PV header offset ${start} is out of range`);
  }
  const rawUuid = ascii(s, start, PV_UUID_LENGTH);
  if (!UUID_CHARS.test(rawUuid)) {
    throw new Refusal(`${where}: PV UUID is not 32 UUID characters`);
  }
  let at = start + PV_UUID_LENGTH;
  const deviceSize = u64(view, at, `${where}: device size`);
  at += 8;
  /** Reads a list of areas up to its terminator; `at` moves past it. */
  const list = (what: string): DiskArea[] => {
    const out: DiskArea[] = [];
    for (;;) {
      if (at + 16 > LVM_SECTOR) {
        throw new Refusal(`${where}: the ${what} list is not terminated`);
      }
      const offset = u64(view, at, `${where}: ${what} offset`);
      const size = u64(view, at + 8, `${where}: ${what} size`);
      at += 16;
      if (offset === 0) return out;
      out.push({ offset, size });
    }
  };
  const data = list("data area");
  const metadataAreas = list("metadata area");
  if (data.length !== 1) {
    throw new Refusal(
      `${where}: ${data.length} data areas (an LVM2 PV has one)`,
    );
  }
  if (metadataAreas.length > 2) {
    throw new Refusal(
      `${where}: ${metadataAreas.length} metadata areas (LVM2 writes at most 2)`,
    );
  }
  let bootloaderAreas: DiskArea[] = [];
  if (at + 8 <= LVM_SECTOR) {
    const version = view.getUint32(at, true);
    const flags = view.getUint32(at + 4, true);
    at += 8;
    if (version > PV_EXTENSION_MAX_VERSION) {
      throw new Refusal(
        `${where}: PV header extension version ${version} is not known (1-${PV_EXTENSION_MAX_VERSION})`,
      );
    }
    if (flags & ~PV_EXT_USED) {
      throw new Refusal(
        `${where}: PV header extension has unknown flags ${hex(flags)}`,
      );
    }
    if (version >= 1) bootloaderAreas = list("bootloader area");
    if (bootloaderAreas.length > 1) {
      throw new Refusal(
        `${where}: ${bootloaderAreas.length} bootloader areas (LVM2 writes at most 1)`,
      );
    }
  }
  return {
    sector,
    uuid: dashedUuid(rawUuid),
    deviceSize,
    dataArea: data[0],
    metadataAreas,
    bootloaderAreas,
  };
}

/** Reads a u64 that must be a safe integer, or refuses naming the field. */
export function u64(view: DataView, at: number, what: string): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Refusal(`${what} ${v} is out of range`);
  }
  return Number(v);
}
