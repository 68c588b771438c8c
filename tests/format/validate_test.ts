import assert from "node:assert";
import { defaultHeader, type Qcow2Header } from "../../lib/format/header.ts";
import { l1SizeFor } from "../../lib/format/geometry.ts";
import { assertReadable, validateHeader } from "../../lib/format/validate.ts";
import { assertQcow2Error, type ExpectedQcow2Error } from "./_util.ts";

/** A consistent header QEMU would open: tables laid out after the header. */
function valid(
  options: {
    size?: number;
    clusterBits?: number;
    refcountOrder?: number;
    extendedL2?: boolean;
  } = {},
): Qcow2Header {
  const clusterBits = options.clusterBits ?? 16;
  const size = options.size ?? 1 << 30;
  const h = defaultHeader({
    size,
    clusterBits,
    refcountOrder: options.refcountOrder,
  });
  const cs = 2 ** clusterBits;
  if (options.extendedL2) h.incompatibleFeatures |= 16n;
  h.refcountTableOffset = cs;
  h.refcountTableClusters = 1;
  h.l1TableOffset = 3 * cs;
  h.l1Size = l1SizeFor(size, clusterBits, options.extendedL2 ?? false);
  return h;
}

function rejects(
  h: Qcow2Header,
  code: ExpectedQcow2Error["code"],
  message: string,
  field?: string,
  offset?: number,
): void {
  const expected: ExpectedQcow2Error = { code, message };
  if (field !== undefined) expected.field = field;
  if (offset !== undefined) expected.offset = offset;
  assertQcow2Error(() => validateHeader(h), expected);
}

Deno.test("validateHeader() accepts consistent headers for every cluster size and refcount width", () => {
  for (let bits = 9; bits <= 21; bits++) {
    for (let order = 0; order <= 6; order++) {
      const h = valid({ clusterBits: bits, refcountOrder: order });
      validateHeader(h);
      assertReadable(h);
    }
    if (bits >= 14) {
      validateHeader(valid({ clusterBits: bits, extendedL2: true }));
    }
  }
  const v2 = valid();
  v2.version = 2;
  v2.headerLength = 72;
  v2.extensions = [];
  v2.tail = new Uint8Array(0);
  validateHeader(v2);
  const zstd = valid();
  zstd.compressionType = 1;
  zstd.incompatibleFeatures |= 8n;
  validateHeader(zstd);
  // Passing validation means no exception; the header is not modified.
  assert.deepStrictEqual(zstd, {
    ...valid(),
    compressionType: 1,
    incompatibleFeatures: 8n,
  });
});

Deno.test("validateHeader() rejects cluster_bits outside [9, 21]", () => {
  rejects(
    valid({ clusterBits: 22 }),
    "OUT_OF_RANGE",
    "Cannot open image: cluster_bits 22 is out of range [9, 21]",
    "cluster_bits",
    20,
  );
  const h = valid();
  h.clusterBits = 8;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: cluster_bits 8 is out of range [9, 21]",
  );
});

Deno.test("validateHeader() rejects extended L2 entries with clusters below 16 KiB", () => {
  rejects(
    valid({ clusterBits: 12, extendedL2: true }),
    "OUT_OF_RANGE",
    "Cannot open image: cluster_bits 12 is out of range [14, 21] for extended L2 entries",
    "cluster_bits",
    20,
  );
  rejects(
    valid({ clusterBits: 13, extendedL2: true }),
    "OUT_OF_RANGE",
    "Cannot open image: cluster_bits 13 is out of range [14, 21] for extended L2 entries",
  );
});

Deno.test("validateHeader() rejects an l1_size too small for the virtual size", () => {
  const h = valid({ size: 2 ** 30 + 1 });
  assert.strictEqual(h.l1Size, 3);
  h.l1Size = 2;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: l1_size 2 is too small for virtual size 1073741825 (needs at least 3)",
    "l1_size",
    36,
  );
});

Deno.test("validateHeader() rejects an L1 table over QEMU's 32 MiB limit", () => {
  const h = valid();
  h.l1Size = 4194305;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: l1_size 4194305 is out of range [0, 4194304]",
    "l1_size",
  );
  // A virtual size that would need more entries than that.
  const big = valid({ clusterBits: 9, size: 2 ** 30 });
  big.size = 2 ** 37 + 512;
  rejects(
    big,
    "OUT_OF_RANGE",
    "Cannot open image: size 137438953984 needs 4194305 L1 entries, more than QEMU's limit of 4194304 for 512-byte clusters",
    "size",
    24,
  );
});

Deno.test("validateHeader() rejects table offsets not aligned to the cluster size", () => {
  const l1 = valid();
  l1.l1TableOffset = 0x30200;
  rejects(
    l1,
    "UNALIGNED",
    "Cannot open image: l1_table_offset 0x30200 is not aligned to the cluster size 65536",
    "l1_table_offset",
    40,
  );
  const rt = valid({ clusterBits: 12 });
  rt.refcountTableOffset = 0x1800;
  rejects(
    rt,
    "UNALIGNED",
    "Cannot open image: refcount_table_offset 0x1800 is not aligned to the cluster size 4096",
    "refcount_table_offset",
    48,
  );
  const sn = valid();
  sn.nbSnapshots = 1;
  sn.snapshotsOffset = 0x40008;
  rejects(
    sn,
    "UNALIGNED",
    "Cannot open image: snapshots_offset 0x40008 is not aligned to the cluster size 65536",
    "snapshots_offset",
    64,
  );
});

Deno.test("validateHeader() rejects refcount_table_clusters 0 and more than 8 MiB of refcount table", () => {
  const zero = valid();
  zero.refcountTableClusters = 0;
  rejects(
    zero,
    "OUT_OF_RANGE",
    "Cannot open image: refcount_table_clusters 0 is out of range [1, 128]",
    "refcount_table_clusters",
    56,
  );
  const big = valid({ clusterBits: 21 });
  big.refcountTableClusters = 5;
  rejects(
    big,
    "OUT_OF_RANGE",
    "Cannot open image: refcount_table_clusters 5 is out of range [1, 4]",
  );
  const ok = valid({ clusterBits: 9 });
  ok.refcountTableClusters = 16384;
  validateHeader(ok);
  ok.refcountTableClusters = 16385;
  rejects(
    ok,
    "OUT_OF_RANGE",
    "Cannot open image: refcount_table_clusters 16385 is out of range [1, 16384]",
  );
});

Deno.test("validateHeader() rejects the compression type bit without a non-zlib compression_type", () => {
  const short = valid();
  short.incompatibleFeatures |= 8n;
  short.headerLength = 104;
  short.tail = new Uint8Array(0);
  short.compressionType = 0;
  rejects(
    short,
    "OUT_OF_RANGE",
    "Cannot open image: header_length 104 does not include compression_type, which the compression type feature bit requires",
    "header_length",
    100,
  );
  const zlib = valid();
  zlib.incompatibleFeatures |= 8n;
  rejects(
    zlib,
    "OUT_OF_RANGE",
    "Cannot open image: compression_type 0 (zlib) contradicts the compression type feature bit, which requires a non-zlib type",
    "compression_type",
    104,
  );
});

Deno.test("validateHeader() rejects a non-zlib compression_type without the feature bit, and unknown types", () => {
  const zstd = valid();
  zstd.compressionType = 1;
  rejects(
    zstd,
    "OUT_OF_RANGE",
    "Cannot open image: compression_type 1 requires the compression type feature bit, which is clear",
    "compression_type",
  );
  const unknown = valid();
  unknown.compressionType = 2;
  unknown.incompatibleFeatures |= 8n;
  rejects(
    unknown,
    "OUT_OF_RANGE",
    "Cannot open image: compression_type 2 is out of range [0, 1]",
  );
});

Deno.test("validateHeader() rejects header_length, refcount_order and crypt_method out of range", () => {
  const hl = valid({ clusterBits: 9 });
  hl.headerLength = 1024;
  rejects(
    hl,
    "OUT_OF_RANGE",
    "Cannot open image: header_length 1024 is out of range [104, 512]",
    "header_length",
  );
  const ro = valid();
  ro.refcountOrder = 7;
  rejects(
    ro,
    "OUT_OF_RANGE",
    "Cannot open image: refcount_order 7 is out of range [0, 6]",
    "refcount_order",
    96,
  );
  const cm = valid();
  cm.cryptMethod = 3;
  rejects(
    cm,
    "OUT_OF_RANGE",
    "Cannot open image: crypt_method 3 is out of range [0, 2]",
    "crypt_method",
    32,
  );
});

Deno.test("validateHeader() rejects raw external data without the external data file bit", () => {
  const h = valid();
  h.autoclearFeatures = 2n;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: autoclear_features 0x2 sets raw external data without the external data file bit",
    "autoclear_features",
    88,
  );
  h.incompatibleFeatures |= 4n;
  validateHeader(h);
});

Deno.test("validateHeader() rejects too many snapshots", () => {
  const h = valid();
  h.nbSnapshots = 65537;
  h.snapshotsOffset = 0x50000;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: nb_snapshots 65537 is out of range [0, 65536]",
    "nb_snapshots",
    60,
  );
});

Deno.test("validateHeader() checks the backing file name's offset and size", () => {
  const h = valid({ clusterBits: 12 });
  h.backingFileOffset = 4097;
  h.backingFileSize = 1;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: backing_file_offset 4097 is out of range [112, 4096]",
    "backing_file_offset",
    8,
  );
  h.backingFileOffset = 100;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: backing_file_offset 100 is out of range [112, 4096]",
  );
  h.backingFileOffset = 4000;
  h.backingFileSize = 97;
  rejects(
    h,
    "OUT_OF_RANGE",
    "Cannot open image: backing_file_size 97 is out of range [0, 96]",
    "backing_file_size",
    16,
  );
  h.backingFileSize = 96;
  validateHeader(h);
  const big = valid();
  big.backingFileOffset = 512;
  big.backingFileSize = 1024;
  rejects(
    big,
    "OUT_OF_RANGE",
    "Cannot open image: backing_file_size 1024 is out of range [0, 1023]",
  );
});

Deno.test("validateHeader() checks the backing format, bitmaps and crypto header extensions", () => {
  const bf = valid();
  bf.extensions.push({ kind: "backing-format", format: "0123456789abcdef" });
  rejects(
    bf,
    "BAD_EXTENSION",
    'Cannot open image: backing format extension "0123456789abcdef" is longer than QEMU\'s 15-byte limit',
    "backing format extension",
  );
  bf.extensions[1] = { kind: "backing-format", format: "0123456789abcde" };
  validateHeader(bf);

  const bitmaps = (
    nbBitmaps: number,
    reserved: number,
    directorySize: number,
    directoryOffset: number,
  ) => {
    const h = valid();
    h.extensions.push({
      kind: "bitmaps",
      nbBitmaps,
      reserved,
      directorySize,
      directoryOffset,
    });
    return h;
  };
  validateHeader(bitmaps(1, 0, 32, 0x90000));
  rejects(
    bitmaps(0, 0, 32, 0x90000),
    "BAD_EXTENSION",
    "Cannot open image: nb_bitmaps 0 is out of range [1, 65535]",
    "nb_bitmaps",
  );
  rejects(
    bitmaps(65536, 0, 32, 0x90000),
    "BAD_EXTENSION",
    "Cannot open image: nb_bitmaps 65536 is out of range [1, 65535]",
  );
  rejects(
    bitmaps(1, 7, 32, 0x90000),
    "BAD_EXTENSION",
    "Cannot open image: bitmaps extension reserved field 7 is not 0",
  );
  rejects(
    bitmaps(1, 0, 1024 * 65535 + 1, 0x90000),
    "BAD_EXTENSION",
    "Cannot open image: bitmap_directory_size 67107841 is out of range [0, 67107840]",
  );
  rejects(
    bitmaps(1, 0, 32, 0x90200),
    "BAD_EXTENSION",
    "Cannot open image: bitmap_directory_offset 0x90200 is not aligned to the cluster size 65536",
    "bitmap_directory_offset",
  );

  const crypto = valid();
  crypto.extensions.push({
    kind: "crypto-header",
    offset: 0x20000,
    length: 4096,
  });
  rejects(
    crypto,
    "BAD_EXTENSION",
    "Cannot open image: crypto header extension is present but crypt_method is 0, not LUKS",
  );
  crypto.cryptMethod = 2;
  validateHeader(crypto);
});

Deno.test("assertReadable() accepts the dirty, data file, compression type and extended L2 bits", () => {
  const h = valid();
  h.incompatibleFeatures = 0b11101n;
  h.compatibleFeatures = 0xffff_ffff_ffff_ffffn;
  h.autoclearFeatures = 0xffff_ffff_ffff_ffffn;
  assertReadable(h);
});

Deno.test("assertReadable() names an unknown incompatible bit, with and without a feature name", () => {
  const bare = valid();
  bare.extensions = [];
  bare.incompatibleFeatures = 1n << 5n;
  assertQcow2Error(() => assertReadable(bare), {
    code: "UNSUPPORTED_FEATURE",
    message: "Cannot open image: incompatible_features 0x20 has unknown bit 5",
    field: "incompatible_features",
    offset: 72,
  });

  const named = valid();
  named.incompatibleFeatures = (1n << 5n) | (1n << 63n) | 1n;
  named.extensions.push({
    kind: "feature-table",
    features: [
      // Same bit but a compatible feature: must not be used.
      { type: 1, bit: 5, name: "not this one" },
      { type: 0, bit: 5, name: "future feature" },
    ],
  });
  assertQcow2Error(() => assertReadable(named), {
    code: "UNSUPPORTED_FEATURE",
    message:
      'Cannot open image: incompatible_features 0x8000000000000021 has unknown bit 5 "future feature", bit 63',
  });
});

Deno.test("assertReadable() refuses images with the corrupt bit", () => {
  const h = valid();
  h.incompatibleFeatures = 2n;
  assertQcow2Error(() => assertReadable(h), {
    code: "CORRUPT",
    message:
      "Cannot open image: the corrupt bit is set in incompatible_features (QEMU found the metadata inconsistent; repair it with qemu-img check -r all)",
    field: "incompatible_features",
    offset: 72,
  });
  // Unknown bits are reported before the corrupt bit.
  h.incompatibleFeatures |= 1n << 40n;
  assertQcow2Error(() => assertReadable(h), { code: "UNSUPPORTED_FEATURE" });
});

Deno.test("assertReadable() refuses AES and LUKS encrypted images", () => {
  const aes = valid();
  aes.cryptMethod = 1;
  assertQcow2Error(() => assertReadable(aes), {
    code: "ENCRYPTED",
    message:
      "Cannot open image: the image is encrypted (crypt_method 1, AES) and encryption is not supported",
    field: "crypt_method",
    offset: 32,
  });
  const luks = valid();
  luks.cryptMethod = 2;
  assertQcow2Error(() => assertReadable(luks), {
    code: "ENCRYPTED",
    message:
      "Cannot open image: the image is encrypted (crypt_method 2, LUKS) and encryption is not supported",
  });
});
