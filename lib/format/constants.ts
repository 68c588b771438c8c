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
 * @example Start a header with the magic
 * ```ts
 * import assert from "node:assert";
 * import { QCOW2_MAGIC } from "./constants.ts";
 * const head = new Uint8Array(4);
 * new DataView(head.buffer).setUint32(0, QCOW2_MAGIC);
 * assert.strictEqual(new TextDecoder().decode(head.subarray(0, 3)), "QFI");
 * ```
 */
export const QCOW2_MAGIC = 0x514649fb;

/**
 * Length in bytes of a version 2 header, and the fixed part of a version 3
 * header that both versions share.
 *
 * @example How much of a file to read before a header can be parsed
 * ```ts
 * import assert from "node:assert";
 * import { V2_HEADER_LENGTH } from "./constants.ts";
 * import { defaultHeader, parseHeader, serializeHeader } from "./header.ts";
 * const image = serializeHeader(defaultHeader({ size: 1 << 20 }));
 * assert.throws(() => parseHeader(image.subarray(0, V2_HEADER_LENGTH - 1)), /shorter than/);
 * ```
 */
export const V2_HEADER_LENGTH = 72;

/**
 * Smallest header length of a version 3 image (fields up to and including
 * `header_length`).
 *
 * @example Read `compression_type`, the byte right after the minimal header
 * ```ts
 * import assert from "node:assert";
 * import { COMPRESSION_TYPE, V3_MIN_HEADER_LENGTH } from "./constants.ts";
 * import { defaultHeader, serializeHeader } from "./header.ts";
 * const bytes = serializeHeader(defaultHeader({ size: 1 << 20, compressionType: COMPRESSION_TYPE.ZSTD }));
 * const headerLength = new DataView(bytes.buffer).getUint32(100);
 * assert(headerLength > V3_MIN_HEADER_LENGTH);
 * assert.strictEqual(bytes[V3_MIN_HEADER_LENGTH], COMPRESSION_TYPE.ZSTD);
 * ```
 */
export const V3_MIN_HEADER_LENGTH = 104;

/**
 * Header length QEMU writes for version 3 images: 104 bytes plus the
 * one-byte `compression_type` field at byte 104, padded to a multiple of 8.
 *
 * @example Find the first header extension of a new image
 * ```ts
 * import assert from "node:assert";
 * import { EXTENSION, V3_HEADER_LENGTH } from "./constants.ts";
 * import { defaultHeader, serializeHeader } from "./header.ts";
 * const bytes = serializeHeader(defaultHeader({ size: 1 << 20 }));
 * const view = new DataView(bytes.buffer);
 * assert.strictEqual(view.getUint32(V3_HEADER_LENGTH), EXTENSION.FEATURE_TABLE);
 * ```
 */
export const V3_HEADER_LENGTH = 112;

/**
 * The largest L1 index QEMU 7.2 keeps (a C `int`): an image whose virtual
 * size needs more L1 entries is "too big" for it.
 *
 * @example The largest virtual size with 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { MAX_L1_INDEX } from "./constants.ts";
 * const perL1Entry = 65536 * (65536 / 8); // one L2 table's reach: 512 MiB
 * assert.strictEqual((MAX_L1_INDEX + 1) * perL1Entry, 2 ** 60);
 * ```
 */
export const MAX_L1_INDEX = 2 ** 31 - 1;

/**
 * The cluster size written when none is asked for (64 KiB), as qemu-img
 * creates qcow2 images.
 *
 * @example Clusters a 1 GiB disk needs at the default size
 * ```ts
 * import assert from "node:assert";
 * import { DEFAULT_CLUSTER_SIZE } from "./constants.ts";
 * assert.strictEqual((1 << 30) / DEFAULT_CLUSTER_SIZE, 16384);
 * ```
 */
export const DEFAULT_CLUSTER_SIZE = 65536;

/**
 * Smallest `cluster_bits` (512-byte clusters).
 *
 * @example Check a cluster size a user asked for
 * ```ts
 * import assert from "node:assert";
 * import { MAX_CLUSTER_BITS, MIN_CLUSTER_BITS } from "./constants.ts";
 * const isClusterSize = (bytes: number) => {
 *   const bits = Math.log2(bytes);
 *   return Number.isInteger(bits) && bits >= MIN_CLUSTER_BITS && bits <= MAX_CLUSTER_BITS;
 * };
 * assert(isClusterSize(512) && isClusterSize(65536));
 * assert(!isClusterSize(256) && !isClusterSize(3 << 16));
 * ```
 */
export const MIN_CLUSTER_BITS = 9;

/**
 * Largest `cluster_bits` QEMU opens (2 MiB clusters).
 *
 * @example Larger clusters are refused
 * ```ts
 * import assert from "node:assert";
 * import { MAX_CLUSTER_BITS } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const largest = defaultHeader({ size: 0, clusterBits: MAX_CLUSTER_BITS });
 * largest.refcountTableClusters = 1;
 * validateHeader(largest);
 * const larger = { ...largest, clusterBits: MAX_CLUSTER_BITS + 1 };
 * assert.throws(() => validateHeader(larger), /cluster_bits 22 is out of range/);
 * ```
 */
export const MAX_CLUSTER_BITS = 21;

/**
 * Smallest `cluster_bits` allowed together with extended L2 entries
 * (16 KiB clusters: 32 subclusters of 512 bytes).
 *
 * @example Extended L2 entries need 16 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { INCOMPAT, MIN_EXTENDED_L2_CLUSTER_BITS } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const h = defaultHeader({ size: 1 << 20, clusterBits: MIN_EXTENDED_L2_CLUSTER_BITS - 1 });
 * h.incompatibleFeatures |= INCOMPAT.EXTENDED_L2;
 * assert.throws(() => validateHeader(h), /for extended L2 entries/);
 * ```
 */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;

/**
 * Size of the sectors compressed cluster descriptors count in.
 *
 * @example The sectors a compressed payload touches
 * ```ts
 * import assert from "node:assert";
 * import { COMPRESSED_SECTOR_SIZE } from "./constants.ts";
 * import { sectorsFor } from "./compressed.ts";
 * const hostOffset = 0x30100, length = 1000;
 * const first = Math.floor(hostOffset / COMPRESSED_SECTOR_SIZE);
 * const last = Math.floor((hostOffset + length - 1) / COMPRESSED_SECTOR_SIZE);
 * assert.strictEqual(last - first + 1, sectorsFor(hostOffset, length));
 * ```
 */
export const COMPRESSED_SECTOR_SIZE = 512;

/**
 * QEMU's limit on the size of an L1 table, in bytes (32 MiB).
 *
 * @example The largest disk QEMU opens with 64 KiB clusters (2 PiB)
 * ```ts
 * import assert from "node:assert";
 * import { MAX_L1_BYTES } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { l2Entries } from "./l2.ts";
 * import { validateHeader } from "./validate.ts";
 * const largest = (MAX_L1_BYTES / 8) * l2Entries(16, false) * 65536;
 * const h = defaultHeader({ size: largest + 65536 });
 * h.l1Size = MAX_L1_BYTES / 8;
 * assert.throws(() => validateHeader(h), /more than QEMU's limit/);
 * ```
 */
export const MAX_L1_BYTES = 32 * 1024 * 1024;

/**
 * QEMU's limit on the size of the refcount table, in bytes (8 MiB).
 *
 * @example How many clusters the refcount table may take
 * ```ts
 * import assert from "node:assert";
 * import { MAX_REFTABLE_BYTES } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const h = defaultHeader({ size: 0 });
 * h.refcountTableClusters = MAX_REFTABLE_BYTES / 65536 + 1;
 * assert.throws(() => validateHeader(h), /refcount_table_clusters 129 is out of range \[1, 128\]/);
 * ```
 */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;

/**
 * QEMU's limit on the number of internal snapshots.
 *
 * @example A header claiming more snapshots is refused
 * ```ts
 * import assert from "node:assert";
 * import { MAX_SNAPSHOTS } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const h = defaultHeader({ size: 0 });
 * h.refcountTableClusters = 1;
 * h.nbSnapshots = MAX_SNAPSHOTS + 1;
 * assert.throws(() => validateHeader(h), /nb_snapshots 65537 is out of range/);
 * ```
 */
export const MAX_SNAPSHOTS = 65536;

/**
 * QEMU's limit on `extra_data_size` in a snapshot table entry, in bytes
 * (`QCOW_MAX_SNAPSHOT_EXTRA_DATA`): QEMU does not open an image with a
 * larger one, and the snapshot table parser refuses it.
 *
 * @example A snapshot entry with more extra data is refused
 * ```ts
 * import assert from "node:assert";
 * import { MAX_SNAPSHOT_EXTRA_DATA } from "./constants.ts";
 * import { parseSnapshotTable, serializeSnapshotEntry } from "./snapshot.ts";
 * const entry = (extraBytes: number) => serializeSnapshotEntry({
 *   l1TableOffset: 0x50000, l1Size: 1, id: "1", name: "base", dateSec: 0,
 *   dateNsec: 0, vmClockNsec: 0n, vmStateSize: 0, vmStateSize32: 0,
 *   diskSize: 1 << 20, icount: undefined, extraData: new Uint8Array(extraBytes),
 * });
 * assert.strictEqual(parseSnapshotTable(entry(MAX_SNAPSHOT_EXTRA_DATA), 1)[0].name, "base");
 * assert.throws(
 *   () => parseSnapshotTable(entry(MAX_SNAPSHOT_EXTRA_DATA + 8), 1),
 *   /extra_data_size 1032 is out of range \[0, 1024\]/,
 * );
 * ```
 */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;

/**
 * Longest backing file name the specification allows, in bytes.
 *
 * @example Check a backing file name before writing it
 * ```ts
 * import assert from "node:assert";
 * import { MAX_BACKING_FILE_NAME } from "./constants.ts";
 * const fits = (name: string) => new TextEncoder().encode(name).length <= MAX_BACKING_FILE_NAME;
 * assert(fits("base.qcow2"));
 * assert(!fits("é".repeat(512)));
 * ```
 */
export const MAX_BACKING_FILE_NAME = 1023;

/**
 * QEMU's limit on `nb_bitmaps` in the bitmaps extension, the number of
 * persistent bitmaps in one image (`QCOW2_MAX_BITMAPS`): QEMU does not open
 * an image that declares more, and header validation refuses it.
 *
 * @example A bitmaps extension declaring more bitmaps is refused
 * ```ts
 * import assert from "node:assert";
 * import { MAX_BITMAPS } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const withBitmaps = (nbBitmaps: number) => {
 *   const h = defaultHeader({ size: 0 });
 *   h.refcountTableClusters = 1;
 *   h.extensions.push({ kind: "bitmaps", nbBitmaps, reserved: 0, directorySize: 32, directoryOffset: 0x90000 });
 *   return h;
 * };
 * validateHeader(withBitmaps(MAX_BITMAPS));
 * assert.throws(() => validateHeader(withBitmaps(MAX_BITMAPS + 1)), /nb_bitmaps 65536 is out of range \[1, 65535\]/);
 * ```
 */
export const MAX_BITMAPS = 65535;

/**
 * Number of subclusters in a cluster of an image with extended L2 entries.
 *
 * @example Which subcluster holds a guest offset
 * ```ts
 * import assert from "node:assert";
 * import { SUBCLUSTERS_PER_CLUSTER } from "./constants.ts";
 * const clusterSize = 65536;
 * const subclusterSize = clusterSize / SUBCLUSTERS_PER_CLUSTER;
 * const guestOffset = 3 * clusterSize + 5000;
 * assert.strictEqual(Math.floor((guestOffset % clusterSize) / subclusterSize), 2);
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
 * @example A zstd image sets the compression type bit
 * ```ts
 * import assert from "node:assert";
 * import { COMPRESSION_TYPE, INCOMPAT } from "./constants.ts";
 * import { defaultHeader, parseHeader, serializeHeader } from "./header.ts";
 * const h = parseHeader(serializeHeader(defaultHeader({ size: 1 << 20, compressionType: COMPRESSION_TYPE.ZSTD })));
 * assert((h.incompatibleFeatures & INCOMPAT.COMPRESSION_TYPE) !== 0n);
 * assert((h.incompatibleFeatures & INCOMPAT.DIRTY) === 0n);
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
 * @example Find the feature bits of a newer QEMU
 * ```ts
 * import assert from "node:assert";
 * import { INCOMPAT_KNOWN } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * const h = defaultHeader({ size: 0 });
 * h.incompatibleFeatures |= 1n << 5n;
 * assert.strictEqual(h.incompatibleFeatures & ~INCOMPAT_KNOWN, 1n << 5n);
 * ```
 */
export const INCOMPAT_KNOWN = 0b11111n;

/**
 * Compatible feature bits (header bytes 80-87). Bit 0 `LAZY_REFCOUNTS`.
 *
 * @example Set lazy refcounts: the last byte of the compatible features
 * ```ts
 * import assert from "node:assert";
 * import { COMPAT } from "./constants.ts";
 * import { defaultHeader, serializeHeader } from "./header.ts";
 * const h = defaultHeader({ size: 1 << 20 });
 * h.compatibleFeatures |= COMPAT.LAZY_REFCOUNTS;
 * assert.strictEqual(serializeHeader(h)[87], 1);
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
 * @example Raw external data needs an external data file
 * ```ts
 * import assert from "node:assert";
 * import { AUTOCLEAR } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const h = defaultHeader({ size: 0 });
 * h.refcountTableClusters = 1;
 * h.autoclearFeatures |= AUTOCLEAR.DATA_FILE_RAW;
 * assert.throws(() => validateHeader(h), /without the external data file bit/);
 * ```
 */
export const AUTOCLEAR = {
  BITMAPS: 1n << 0n,
  DATA_FILE_RAW: 1n << 1n,
} as const;

/**
 * Header extension types (the first u32 of each extension).
 *
 * @example Whether an image names its backing file's format
 * ```ts
 * import assert from "node:assert";
 * import { EXTENSION } from "./constants.ts";
 * import { defaultHeader, hasExtension } from "./header.ts";
 * const h = defaultHeader({ size: 1 << 20 });
 * assert(!hasExtension(h, EXTENSION.BACKING_FORMAT));
 * h.extensions.push({ kind: "backing-format", format: "raw" });
 * assert(hasExtension(h, EXTENSION.BACKING_FORMAT));
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
 * @example An encrypted image is refused
 * ```ts
 * import assert from "node:assert";
 * import { CRYPT_METHOD } from "./constants.ts";
 * import { defaultHeader } from "./header.ts";
 * import { assertReadable } from "./validate.ts";
 * const h = defaultHeader({ size: 0 });
 * h.cryptMethod = CRYPT_METHOD.LUKS;
 * assert.throws(() => assertReadable(h), /encrypted \(crypt_method 2, LUKS\)/);
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
 * @example Write a zstd header
 * ```ts
 * import assert from "node:assert";
 * import { COMPRESSION_TYPE } from "./constants.ts";
 * import { defaultHeader, serializeHeader } from "./header.ts";
 * const bytes = serializeHeader(defaultHeader({ size: 1 << 20, compressionType: COMPRESSION_TYPE.ZSTD }));
 * assert.strictEqual(bytes[104], COMPRESSION_TYPE.ZSTD);
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
 * @example Read an L2 entry by hand
 * ```ts
 * import assert from "node:assert";
 * import { ENTRY } from "./constants.ts";
 * import { encodeL2Entry } from "./l2.ts";
 * const layout = { clusterBits: 16, extendedL2: false, dataFile: false };
 * const table = new Uint8Array(8);
 * encodeL2Entry(table, 0, { type: "normal", hostOffset: 0x1_0005_0000, copied: true }, layout);
 * const view = new DataView(table.buffer);
 * const hi = view.getUint32(0), lo = view.getUint32(4);
 * assert((hi & ENTRY.COPIED_HI) !== 0 && (hi & ENTRY.COMPRESSED_HI) === 0);
 * assert.strictEqual((hi & ENTRY.OFFSET_HI) * 2 ** 32 + ((lo & ENTRY.OFFSET_LO) >>> 0), 0x1_0005_0000);
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
 * @example Find a refcount table entry with reserved bits set
 * ```ts
 * import assert from "node:assert";
 * import { REFTABLE_RESERVED_LO } from "./constants.ts";
 * import { encodeRefcountTableEntry } from "./refcount.ts";
 * const table = new Uint8Array(16);
 * encodeRefcountTableEntry(table, 0, 0x30000);
 * encodeRefcountTableEntry(table, 1, 0x40000);
 * table[15] |= 0x10;
 * const view = new DataView(table.buffer);
 * const bad = [0, 1].filter((i) => (view.getUint32(i * 8 + 4) & REFTABLE_RESERVED_LO) !== 0);
 * assert.deepStrictEqual(bad, [1]);
 * ```
 */
export const REFTABLE_RESERVED_LO = 0x1ff;

/**
 * Largest refcount_order (64-bit refcounts).
 *
 * @example Every refcount width an image may use
 * ```ts
 * import assert from "node:assert";
 * import { MAX_REFCOUNT_ORDER } from "./constants.ts";
 * import { refcountMax } from "./refcount.ts";
 * const widths = [];
 * for (let order = 0; order <= MAX_REFCOUNT_ORDER; order++) widths.push(1 << order);
 * assert.deepStrictEqual(widths, [1, 2, 4, 8, 16, 32, 64]);
 * assert.throws(() => refcountMax(MAX_REFCOUNT_ORDER + 1));
 * ```
 */
export const MAX_REFCOUNT_ORDER = 6;

/**
 * Length of one feature name table entry in bytes (type, bit, 46-byte name).
 *
 * @example Count the entries of a feature name table
 * ```ts
 * import assert from "node:assert";
 * import { FEATURE_NAME_ENTRY_LENGTH } from "./constants.ts";
 * import { encodeExtensionData } from "./extensions.ts";
 * import { QEMU_FEATURE_NAMES } from "./header.ts";
 * const data = encodeExtensionData({ kind: "feature-table", features: QEMU_FEATURE_NAMES.slice() });
 * assert.strictEqual(data.length / FEATURE_NAME_ENTRY_LENGTH, QEMU_FEATURE_NAMES.length);
 * ```
 */
export const FEATURE_NAME_ENTRY_LENGTH = 48;
