/**
 * The qcow (version 1) header and table entries, as QEMU's `block/qcow.c`
 * reads them: pure functions over bytes.
 *
 * ```text
 * Offset  Size  Field (big endian)
 * 0       4     magic "QFI\xfb"
 * 4       4     version (1)
 * 8       8     backing_file_offset (0: no backing file)
 * 16      4     backing_file_size (at most 1023)
 * 20      4     mtime
 * 24      8     size (bytes; the disk is size / 512 whole sectors)
 * 32      1     cluster_bits (9 to 16)
 * 33      1     l2_bits (6 to 13: entries per L2 table)
 * 34      2     padding
 * 36      4     crypt_method (0 none, 1 AES)
 * 40      8     l1_table_offset
 * ```
 *
 * The L1 table has `ceil(size / 2^(cluster_bits + l2_bits))` u64 entries,
 * each the host offset of an L2 table (0: none). An L2 entry is 0
 * (unallocated: the backing file, or zeros), the host offset of a cluster
 * (512-byte aligned), or, with bit 63 set, a compressed cluster: with
 * `x = 63 - cluster_bits`, bits 0 to x-1 hold the host offset of the
 * compressed bytes and bits x to 62 their size in bytes (a raw deflate
 * stream, window 2^12).
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import { decodeText, viewOf } from "../../bytes/binary.ts";

/** Bytes of the header. */
export const QCOW_HEADER_SIZE = 48;
/** "QFI\xfb", the magic qcow and qcow2 share. */
export const QCOW_MAGIC = 0x514649fb;
/** The version this header has. */
export const QCOW_VERSION = 1;
/** `crypt_method` of an unencrypted image. */
export const QCOW_CRYPT_NONE = 0;
/** `crypt_method` of an AES-CBC encrypted image. */
export const QCOW_CRYPT_AES = 1;
/** Longest backing file name QEMU reads. */
export const QCOW_MAX_BACKING_NAME = 1023;
/** Largest L1 table read (QEMU allows up to 2 GiB; a 32 MiB table maps 2 PiB at 4 KiB clusters). */
export const QCOW_MAX_L1_BYTES = 32 * 1024 * 1024;

/** A parsed and validated qcow header. */
export interface QcowHeader {
  /** Host offset of the backing file name (0: none). */
  backingFileOffset: number;
  /** Length of the backing file name. */
  backingFileSize: number;
  /** `size` as stored (bytes). */
  size: number;
  /** Virtual size: `size` rounded down to whole sectors, as QEMU does. */
  virtualSize: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** log2 of the entries of an L2 table. */
  l2Bits: number;
  /** Host offset of the L1 table. */
  l1TableOffset: number;
  /** Entries of the L1 table. */
  l1Size: number;
}

function safe(
  view: DataView,
  at: number,
  field: string,
): number {
  const value = view.getBigUint64(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open qcow image: ${field} ${
        hex(value)
      } is out of range [0, 2^53-1]`,
      { offset: at, field },
    );
  }
  return Number(value);
}

/**
 * Parses and validates a qcow version 1 header with QEMU's rules; an
 * encrypted image is refused.
 *
 * @param bytes The first 48 bytes of the file (or more).
 * @returns The header.
 * @throws {Qcow2Error} `BAD_MAGIC`, `UNSUPPORTED_VERSION`, `OUT_OF_RANGE`,
 * `ENCRYPTED` or `UNSUPPORTED_FEATURE`, naming the field.
 *
 * @example An AES-encrypted image is refused
 * ```ts
 * import assert from "node:assert";
 * import { parseQcowHeader } from "./header.ts";
 * const h = new Uint8Array(48);
 * const v = new DataView(h.buffer);
 * v.setUint32(0, 0x514649fb);
 * v.setUint32(4, 1);
 * v.setBigUint64(24, 1n << 20n);
 * h[32] = 12;
 * h[33] = 9;
 * v.setUint32(36, 1);
 * assert.throws(() => parseQcowHeader(h), /is encrypted/);
 * ```
 */
export function parseQcowHeader(bytes: Uint8Array): QcowHeader {
  const v = viewOf(bytes);
  const magic = v.getUint32(0);
  if (magic !== QCOW_MAGIC) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot open qcow image: bad magic ${hex(magic)} (expected ${
        hex(QCOW_MAGIC)
      })`,
      { offset: 0, field: "magic" },
    );
  }
  const version = v.getUint32(4);
  if (version !== QCOW_VERSION) {
    throw new Qcow2Error(
      "UNSUPPORTED_VERSION",
      `Cannot open qcow image: version ${version} is not 1`,
      { offset: 4, field: "version" },
    );
  }
  const size = v.getBigUint64(24);
  if (size <= 1n || size > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open qcow image: size ${size} is out of range [2, 2^53-1]`,
      { offset: 24, field: "size" },
    );
  }
  const clusterBits = bytes[32];
  if (clusterBits < 9 || clusterBits > 16) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open qcow image: cluster_bits ${clusterBits} is out of range [9, 16]`,
      { offset: 32, field: "cluster_bits" },
    );
  }
  const l2Bits = bytes[33];
  if (l2Bits < 6 || l2Bits > 13) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open qcow image: l2_bits ${l2Bits} is out of range [6, 13]`,
      { offset: 33, field: "l2_bits" },
    );
  }
  const crypt = v.getUint32(36);
  if (crypt === QCOW_CRYPT_AES) {
    throw new Qcow2Error(
      "ENCRYPTED",
      "Cannot open qcow image: it is encrypted (crypt_method 1, AES-CBC), which is not supported",
      { offset: 36, field: "crypt_method" },
    );
  }
  if (crypt !== QCOW_CRYPT_NONE) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot open qcow image: crypt_method ${crypt} is not 0 (none) or 1 (AES)`,
      { offset: 36, field: "crypt_method" },
    );
  }
  const backingFileOffset = safe(v, 8, "backing_file_offset");
  const backingFileSize = v.getUint32(16);
  if (backingFileOffset !== 0 && backingFileSize > QCOW_MAX_BACKING_NAME) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open qcow image: backing_file_size ${backingFileSize} is out of range [0, ${QCOW_MAX_BACKING_NAME}]`,
      { offset: 16, field: "backing_file_size" },
    );
  }
  const l1TableOffset = safe(v, 40, "l1_table_offset");
  const span = 2n ** BigInt(clusterBits + l2Bits);
  const l1Size = Number((size + span - 1n) / span);
  if (l1Size * 8 > QCOW_MAX_L1_BYTES) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open qcow image: size ${size} needs an L1 table of ${l1Size} entries, more than ${
        QCOW_MAX_L1_BYTES / 8
      }`,
      { offset: 24, field: "size" },
    );
  }
  const n = Number(size);
  return {
    backingFileOffset,
    backingFileSize: backingFileOffset === 0 ? 0 : backingFileSize,
    size: n,
    virtualSize: n - (n % 512),
    clusterBits,
    l2Bits,
    l1TableOffset,
    l1Size,
  };
}

/**
 * The backing file name as QEMU reads it: the stored bytes up to the first
 * NUL.
 *
 * @param bytes The `backing_file_size` bytes at `backing_file_offset`.
 * @returns The name ("" means none).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { backingName } from "./header.ts";
 * assert.strictEqual(backingName(new TextEncoder().encode("base.raw")), "base.raw");
 * ```
 */
export function backingName(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decodeText(nul < 0 ? bytes : bytes.subarray(0, nul));
}

/** A decoded L2 entry. */
export type QcowL2Entry =
  | { type: "unallocated" }
  | { type: "normal"; hostOffset: number }
  | { type: "compressed"; hostOffset: number; size: number };

/**
 * Decodes an L2 entry from its u32 halves. Host offsets past 2^53 come out
 * as numbers that are not safe integers (they lie past any file).
 *
 * @param hi Bits 32-63 of the entry.
 * @param lo Bits 0-31 of the entry.
 * @param clusterBits log2 of the cluster size.
 * @returns What it says.
 *
 * @example A compressed cluster of 300 bytes at 0x1200 (4 KiB clusters)
 * ```ts
 * import assert from "node:assert";
 * import { decodeQcowL2Entry } from "./header.ts";
 * // bit 63, then the size from bit 51 (bit 19 of the high half)
 * const hi = (0x80000000 | (300 << 19)) >>> 0;
 * assert.deepStrictEqual(decodeQcowL2Entry(hi, 0x1200, 12), { type: "compressed", hostOffset: 0x1200, size: 300 });
 * ```
 */
export function decodeQcowL2Entry(
  hi: number,
  lo: number,
  clusterBits: number,
): QcowL2Entry {
  if (hi === 0 && lo === 0) return { type: "unallocated" };
  if ((hi & 0x80000000) === 0) {
    return { type: "normal", hostOffset: hi * 2 ** 32 + lo };
  }
  // x = 63 - cluster_bits: the offset below bit x, the size from bit x.
  const hiBits = 63 - clusterBits - 32;
  return {
    type: "compressed",
    hostOffset: (hi & ((1 << hiBits) - 1)) * 2 ** 32 + lo,
    size: (hi >>> hiBits) & ((1 << clusterBits) - 1),
  };
}
