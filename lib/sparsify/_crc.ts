// The three checksums the partition tables and filesystems read here use:
// CRC-32 (IEEE 802.3, GPT headers and entry arrays; LVM2 labels and
// metadata, seeded differently), CRC-32C (Castagnoli, ext4 metadata_csum)
// and CRC-16 (ANSI, ext4 group descriptors without metadata_csum). All are
// the reflected, table-driven forms.

function table(poly: number, bits: 16 | 32): Uint32Array {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[n] = bits === 16 ? c & 0xffff : c >>> 0;
  }
  return t;
}

/** Reflected polynomial of CRC-32 (IEEE 802.3), as GPT uses it. */
const CRC32_POLY = 0xedb88320;
/** Reflected polynomial of CRC-32C (Castagnoli), as ext4 uses it. */
const CRC32C_POLY = 0x82f63b78;
/** Reflected polynomial of CRC-16 (ANSI, 0x8005), as ext4's gdt_csum uses it. */
const CRC16_POLY = 0xa001;

const CRC32_TABLE = table(CRC32_POLY, 32);
const CRC32C_TABLE = table(CRC32C_POLY, 32);
const CRC16_TABLE = table(CRC16_POLY, 16);

function update(t: Uint32Array, crc: number, bytes: Uint8Array): number {
  let c = crc >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    c = t[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  }
  return c >>> 0;
}

/**
 * CRC-32 of `bytes` as zlib and the UEFI specification compute it (initial
 * value and final XOR 0xffffffff).
 */
export function crc32(bytes: Uint8Array): number {
  return ~update(CRC32_TABLE, 0xffffffff, bytes) >>> 0;
}

/**
 * CRC-32 (IEEE 802.3) continued from `crc` without pre- or post-inversion:
 * the form LVM2 seeds with 0xf597a6cf for its labels and metadata.
 */
export function crc32Raw(crc: number, bytes: Uint8Array): number {
  return update(CRC32_TABLE, crc, bytes);
}

/**
 * CRC-32C continued from `crc` without pre- or post-inversion: the form of
 * the kernel's `crc32c(crc, data, len)` that ext4 chains (seeded with ~0 or
 * with the filesystem's checksum seed).
 */
export function crc32cRaw(crc: number, bytes: Uint8Array): number {
  return update(CRC32C_TABLE, crc, bytes);
}

/** CRC-16 continued from `crc`, as the kernel's `crc16(crc, data, len)`. */
export function crc16(crc: number, bytes: Uint8Array): number {
  let c = crc & 0xffff;
  for (let i = 0; i < bytes.length; i++) {
    c = CRC16_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  }
  return c & 0xffff;
}
