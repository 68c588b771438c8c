/**
 * Named constants of the qcow2 format (QEMU's `docs/interop/qcow2.txt`).
 *
 * Every magic value the format code uses is named here, with the bit layout
 * the specification gives for it.
 *
 * @module
 */

/**
 * The four bytes every qcow2 image starts with: `"QFI\xfb"`, read as a
 * big-endian u32.
 *
 * @example Check a magic number
 * ```ts
 * import assert from "node:assert";
 * import { QCOW2_MAGIC } from "./constants.ts";
 * assert(QCOW2_MAGIC === 0x514649fb);
 * ```
 */
export const QCOW2_MAGIC = 0x514649fb;

/**
 * Length in bytes of a version 2 header, and the fixed part of a version 3
 * header that both versions share.
 *
 * @example Size of a v2 header
 * ```ts
 * import assert from "node:assert";
 * import { V2_HEADER_LENGTH } from "./constants.ts";
 * assert(V2_HEADER_LENGTH === 72);
 * ```
 */
export const V2_HEADER_LENGTH = 72;

/**
 * Smallest header length of a version 3 image (fields up to and including
 * `header_length`).
 *
 * @example Minimum v3 header
 * ```ts
 * import assert from "node:assert";
 * import { V3_MIN_HEADER_LENGTH } from "./constants.ts";
 * assert(V3_MIN_HEADER_LENGTH === 104);
 * ```
 */
export const V3_MIN_HEADER_LENGTH = 104;

/**
 * Header length QEMU writes for version 3 images: 104 bytes plus the
 * one-byte `compression_type` field at byte 104, padded to a multiple of 8.
 *
 * @example Header length with compression_type
 * ```ts
 * import assert from "node:assert";
 * import { V3_HEADER_LENGTH } from "./constants.ts";
 * assert(V3_HEADER_LENGTH === 112);
 * ```
 */
export const V3_HEADER_LENGTH = 112;

/**
 * Smallest `cluster_bits` (512-byte clusters).
 *
 * @example Smallest cluster
 * ```ts
 * import assert from "node:assert";
 * import { MIN_CLUSTER_BITS } from "./constants.ts";
 * assert(1 << MIN_CLUSTER_BITS === 512);
 * ```
 */
export const MIN_CLUSTER_BITS = 9;

/**
 * Largest `cluster_bits` QEMU opens (2 MiB clusters).
 *
 * @example Largest cluster
 * ```ts
 * import assert from "node:assert";
 * import { MAX_CLUSTER_BITS } from "./constants.ts";
 * assert(1 << MAX_CLUSTER_BITS === 2 * 1024 * 1024);
 * ```
 */
export const MAX_CLUSTER_BITS = 21;

/**
 * Smallest `cluster_bits` allowed together with extended L2 entries
 * (16 KiB clusters: 32 subclusters of 512 bytes).
 *
 * @example Extended L2 minimum
 * ```ts
 * import assert from "node:assert";
 * import { MIN_EXTENDED_L2_CLUSTER_BITS } from "./constants.ts";
 * assert(MIN_EXTENDED_L2_CLUSTER_BITS === 14);
 * ```
 */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;

/**
 * Size of the sectors compressed cluster descriptors count in.
 *
 * @example Sector size
 * ```ts
 * import assert from "node:assert";
 * import { COMPRESSED_SECTOR_SIZE } from "./constants.ts";
 * assert(COMPRESSED_SECTOR_SIZE === 512);
 * ```
 */
export const COMPRESSED_SECTOR_SIZE = 512;

/**
 * QEMU's limit on the size of an L1 table, in bytes (32 MiB).
 *
 * @example Largest L1 table in entries
 * ```ts
 * import assert from "node:assert";
 * import { MAX_L1_BYTES } from "./constants.ts";
 * assert(MAX_L1_BYTES / 8 === 4194304);
 * ```
 */
export const MAX_L1_BYTES = 32 * 1024 * 1024;

/**
 * QEMU's limit on the size of the refcount table, in bytes (8 MiB).
 *
 * @example Largest refcount table
 * ```ts
 * import assert from "node:assert";
 * import { MAX_REFTABLE_BYTES } from "./constants.ts";
 * assert(MAX_REFTABLE_BYTES === 8388608);
 * ```
 */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;

/**
 * QEMU's limit on the number of internal snapshots.
 *
 * @example Snapshot limit
 * ```ts
 * import assert from "node:assert";
 * import { MAX_SNAPSHOTS } from "./constants.ts";
 * assert(MAX_SNAPSHOTS === 65536);
 * ```
 */
export const MAX_SNAPSHOTS = 65536;

/**
 * QEMU's limit on the size of one snapshot entry's extra data, in bytes.
 *
 * @example Extra data limit
 * ```ts
 * import assert from "node:assert";
 * import { MAX_SNAPSHOT_EXTRA_DATA } from "./constants.ts";
 * assert(MAX_SNAPSHOT_EXTRA_DATA === 1024);
 * ```
 */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;

/**
 * Longest backing file name the specification allows, in bytes.
 *
 * @example Backing name limit
 * ```ts
 * import assert from "node:assert";
 * import { MAX_BACKING_FILE_NAME } from "./constants.ts";
 * assert(MAX_BACKING_FILE_NAME === 1023);
 * ```
 */
export const MAX_BACKING_FILE_NAME = 1023;

/**
 * QEMU's limit on the number of persistent bitmaps in one image.
 *
 * @example Bitmap limit
 * ```ts
 * import assert from "node:assert";
 * import { MAX_BITMAPS } from "./constants.ts";
 * assert(MAX_BITMAPS === 65535);
 * ```
 */
export const MAX_BITMAPS = 65535;

/**
 * Number of subclusters in a cluster of an image with extended L2 entries.
 *
 * @example Subclusters
 * ```ts
 * import assert from "node:assert";
 * import { SUBCLUSTERS_PER_CLUSTER } from "./constants.ts";
 * assert(SUBCLUSTERS_PER_CLUSTER === 32);
 * ```
 */
export const SUBCLUSTERS_PER_CLUSTER = 32;

/**
 * Incompatible feature bits (header bytes 72-79).
 *
 * - bit 0 `DIRTY`: refcounts may be inconsistent
 * - bit 1 `CORRUPT`: metadata may be corrupt, do not write
 * - bit 2 `DATA_FILE`: guest clusters live in an external data file
 * - bit 3 `COMPRESSION_TYPE`: `compression_type` is present and not zlib
 * - bit 4 `EXTENDED_L2`: L2 entries are 128 bits with subcluster bitmaps
 *
 * @example Test a feature bit
 * ```ts
 * import assert from "node:assert";
 * import { INCOMPAT } from "./constants.ts";
 * const features = 0b1000n;
 * assert((features & INCOMPAT.COMPRESSION_TYPE) !== 0n);
 * ```
 */
export const INCOMPAT = {
  DIRTY: 1n << 0n,
  CORRUPT: 1n << 1n,
  DATA_FILE: 1n << 2n,
  COMPRESSION_TYPE: 1n << 3n,
  EXTENDED_L2: 1n << 4n,
} as const;

/**
 * All incompatible feature bits this implementation understands.
 *
 * @example Find unknown bits
 * ```ts
 * import assert from "node:assert";
 * import { INCOMPAT_KNOWN } from "./constants.ts";
 * assert(((1n << 7n) & ~INCOMPAT_KNOWN) !== 0n);
 * ```
 */
export const INCOMPAT_KNOWN = 0b11111n;

/**
 * Compatible feature bits (header bytes 80-87). Bit 0 `LAZY_REFCOUNTS`.
 *
 * @example Lazy refcounts
 * ```ts
 * import assert from "node:assert";
 * import { COMPAT } from "./constants.ts";
 * assert(COMPAT.LAZY_REFCOUNTS === 1n);
 * ```
 */
export const COMPAT = {
  LAZY_REFCOUNTS: 1n << 0n,
} as const;

/**
 * Auto-clear feature bits (header bytes 88-95).
 *
 * - bit 0 `BITMAPS`: the bitmaps extension is consistent
 * - bit 1 `DATA_FILE_RAW`: the external data file is a valid raw image
 *
 * @example Raw data file bit
 * ```ts
 * import assert from "node:assert";
 * import { AUTOCLEAR } from "./constants.ts";
 * assert(AUTOCLEAR.DATA_FILE_RAW === 2n);
 * ```
 */
export const AUTOCLEAR = {
  BITMAPS: 1n << 0n,
  DATA_FILE_RAW: 1n << 1n,
} as const;

/**
 * Header extension types (the first u32 of each extension).
 *
 * @example Name an extension
 * ```ts
 * import assert from "node:assert";
 * import { EXTENSION } from "./constants.ts";
 * assert(EXTENSION.BACKING_FORMAT === 0xe2792aca);
 * ```
 */
export const EXTENSION = {
  END: 0x00000000,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  CRYPTO_HEADER: 0x0537be77,
  DATA_FILE: 0x44415441,
} as const;

/**
 * Values of the `crypt_method` header field.
 *
 * @example Encryption methods
 * ```ts
 * import assert from "node:assert";
 * import { CRYPT_METHOD } from "./constants.ts";
 * assert(CRYPT_METHOD.LUKS === 2);
 * ```
 */
export const CRYPT_METHOD = {
  NONE: 0,
  AES: 1,
  LUKS: 2,
} as const;

/**
 * Values of the `compression_type` header field (byte 104).
 *
 * @example zstd
 * ```ts
 * import assert from "node:assert";
 * import { COMPRESSION_TYPE } from "./constants.ts";
 * assert(COMPRESSION_TYPE.ZSTD === 1);
 * ```
 */
export const COMPRESSION_TYPE = {
  ZLIB: 0,
  ZSTD: 1,
} as const;

/**
 * Entry layout shared by L1 and L2 tables, as masks over the high and low
 * u32 halves of a big-endian u64 entry.
 *
 * L1 entry:
 * ```text
 * Bit  0 -  8: reserved (0)
 *      9 - 55: L2 table offset (cluster aligned)
 *     56 - 62: reserved (0)
 *          63: COPIED, refcount is exactly one
 * ```
 * L2 entry:
 * ```text
 * Bit  0 - 61: cluster descriptor
 *          62: COMPRESSED
 *          63: COPIED, refcount is exactly one
 * Standard descriptor:
 * Bit       0: ZERO, reads as zeros (v3, without extended L2)
 *      1 -  8: reserved (0)
 *      9 - 55: host cluster offset
 *     56 - 61: reserved (0)
 * ```
 *
 * @example Split an entry into halves
 * ```ts
 * import assert from "node:assert";
 * import { ENTRY } from "./constants.ts";
 * const hi = 0x80000000, lo = 0x00050000;
 * assert((hi & ENTRY.COPIED_HI) !== 0);
 * assert((lo & ENTRY.OFFSET_LO) === 0x50000);
 * ```
 */
export const ENTRY = {
  /** Bit 63 in the high half. */
  COPIED_HI: 0x80000000,
  /** Bit 62 in the high half. */
  COMPRESSED_HI: 0x40000000,
  /** Bits 32-55 of an offset, in the high half. */
  OFFSET_HI: 0x00ffffff,
  /** Bits 9-31 of an offset, in the low half. */
  OFFSET_LO: 0xfffffe00,
  /** Bit 0 of a standard L2 descriptor. */
  ZERO_LO: 0x1,
  /** L1 reserved bits 56-62, high half. */
  L1_RESERVED_HI: 0x7f000000,
  /** L1 reserved bits 0-8, low half. */
  L1_RESERVED_LO: 0x1ff,
  /** Standard L2 reserved bits 56-61, high half. */
  L2_RESERVED_HI: 0x3f000000,
  /** Standard L2 reserved bits 1-8, low half. */
  L2_RESERVED_LO: 0x1fe,
} as const;

/**
 * Refcount table entry layout: bits 0-8 reserved, bits 9-63 the offset of a
 * refcount block (cluster aligned); 0 means no block.
 *
 * @example Reserved bits
 * ```ts
 * import assert from "node:assert";
 * import { REFTABLE_RESERVED_LO } from "./constants.ts";
 * assert(REFTABLE_RESERVED_LO === 0x1ff);
 * ```
 */
export const REFTABLE_RESERVED_LO = 0x1ff;

/**
 * Largest refcount_order (64-bit refcounts).
 *
 * @example Widest refcount
 * ```ts
 * import assert from "node:assert";
 * import { MAX_REFCOUNT_ORDER } from "./constants.ts";
 * assert(1 << MAX_REFCOUNT_ORDER === 64);
 * ```
 */
export const MAX_REFCOUNT_ORDER = 6;

/**
 * Length of one feature name table entry in bytes (type, bit, 46-byte name).
 *
 * @example Entry size
 * ```ts
 * import assert from "node:assert";
 * import { FEATURE_NAME_ENTRY_LENGTH } from "./constants.ts";
 * assert(FEATURE_NAME_ENTRY_LENGTH === 48);
 * ```
 */
export const FEATURE_NAME_ENTRY_LENGTH = 48;
