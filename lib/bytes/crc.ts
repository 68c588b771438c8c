/**
 * The checksums the formats read here use, once: CRC-32 (IEEE 802.3: GPT
 * headers and entry arrays; LVM2 labels and metadata, seeded differently),
 * CRC-32C (Castagnoli: VHDX headers, region and metadata tables and log
 * entries; ext4 metadata_csum, XFS, btrfs) and CRC-16 (ANSI: ext4 group
 * descriptors without metadata_csum). All are the reflected, table-driven
 * forms.
 *
 * @module
 */

function table(poly: number, bits: 16 | 32): Uint32Array {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[n] = bits === 16 ? c & 0xffff : c >>> 0;
  }
  return t;
}

/**
 * Eight tables for slicing by 8 (table k advances a byte through k more
 * zero bytes), back to back: a 32-bit CRC takes eight bytes per step.
 */
function tables8(poly: number): Uint32Array {
  const t = new Uint32Array(256 * 8);
  t.set(table(poly, 32));
  for (let k = 1; k < 8; k++) {
    for (let n = 0; n < 256; n++) {
      const prev = t[(k - 1) * 256 + n];
      t[k * 256 + n] = (t[prev & 0xff] ^ (prev >>> 8)) >>> 0;
    }
  }
  return t;
}

/** Reflected polynomial of CRC-32 (IEEE 802.3), as GPT uses it. */
const CRC32_POLY = 0xedb88320;
/** Reflected polynomial of CRC-32C (Castagnoli), as ext4 uses it. */
const CRC32C_POLY = 0x82f63b78;
/** Reflected polynomial of CRC-16 (ANSI, 0x8005), as ext4's gdt_csum uses it. */
const CRC16_POLY = 0xa001;

const CRC32_TABLES = tables8(CRC32_POLY);
const CRC32C_TABLES = tables8(CRC32C_POLY);
const CRC16_TABLE = table(CRC16_POLY, 16);

/** Whether 32-bit words read little-endian here (so a word view can feed the CRC). */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

function update(t: Uint32Array, crc: number, bytes: Uint8Array): number {
  let c = crc >>> 0;
  let i = 0;
  const n = bytes.length;
  if (LITTLE_ENDIAN && (bytes.byteOffset & 3) === 0 && n >= 8) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, n >>> 2);
    const end = (n >>> 3) << 1;
    for (let w = 0; w < end; w += 2) {
      c ^= words[w];
      const d = words[w + 1];
      c = t[1792 + (c & 0xff)] ^ t[1536 + ((c >>> 8) & 0xff)] ^
        t[1280 + ((c >>> 16) & 0xff)] ^ t[1024 + (c >>> 24)] ^
        t[768 + (d & 0xff)] ^ t[512 + ((d >>> 8) & 0xff)] ^
        t[256 + ((d >>> 16) & 0xff)] ^ t[d >>> 24];
    }
    i = end << 2;
  }
  for (; i + 8 <= n; i += 8) {
    c ^= bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) |
      (bytes[i + 3] << 24);
    c = t[1792 + (c & 0xff)] ^ t[1536 + ((c >>> 8) & 0xff)] ^
      t[1280 + ((c >>> 16) & 0xff)] ^ t[1024 + (c >>> 24)] ^
      t[768 + bytes[i + 4]] ^ t[512 + bytes[i + 5]] ^ t[256 + bytes[i + 6]] ^
      t[bytes[i + 7]];
  }
  for (; i < n; i++) c = t[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/**
 * CRC-32 of `bytes` as zlib and the UEFI specification compute it (initial
 * value and final XOR 0xffffffff).
 */
export function crc32(bytes: Uint8Array): number {
  return ~update(CRC32_TABLES, 0xffffffff, bytes) >>> 0;
}

/**
 * CRC-32 (IEEE 802.3) continued from `crc` without pre- or post-inversion:
 * the form LVM2 seeds with 0xf597a6cf for its labels and metadata.
 */
export function crc32Raw(crc: number, bytes: Uint8Array): number {
  return update(CRC32_TABLES, crc, bytes);
}

/**
 * CRC-32C continued from `crc` without pre- or post-inversion: the form of
 * the kernel's `crc32c(crc, data, len)` that ext4 and XFS chain (seeded
 * with ~0 or with the filesystem's checksum seed).
 */
export function crc32cRaw(crc: number, bytes: Uint8Array): number {
  return update(CRC32C_TABLES, crc, bytes);
}

/**
 * CRC-32C of `bytes` with initial value and final XOR 0xffffffff: the
 * checksum VHDX stores (computed with the checksum field zeroed).
 *
 * @param bytes The bytes.
 * @returns The CRC, an unsigned 32-bit number.
 *
 * @example The check value of the Castagnoli polynomial
 * ```ts
 * import assert from "node:assert";
 * import { crc32c } from "./crc.ts";
 * assert.strictEqual(crc32c(new TextEncoder().encode("123456789")), 0xe3069283);
 * ```
 */
export function crc32c(bytes: Uint8Array): number {
  return ~update(CRC32C_TABLES, 0xffffffff, bytes) >>> 0;
}

/** CRC-16 continued from `crc`, as the kernel's `crc16(crc, data, len)`. */
export function crc16(crc: number, bytes: Uint8Array): number {
  let c = crc & 0xffff;
  for (let i = 0; i < bytes.length; i++) {
    c = CRC16_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  }
  return c & 0xffff;
}
