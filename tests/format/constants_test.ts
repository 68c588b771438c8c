import assert from "node:assert";
import {
  AUTOCLEAR,
  COMPAT,
  COMPRESSED_SECTOR_SIZE,
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  ENTRY,
  EXTENSION,
  FEATURE_NAME_ENTRY_LENGTH,
  INCOMPAT,
  INCOMPAT_KNOWN,
  MAX_CLUSTER_BITS,
  MAX_REFCOUNT_ORDER,
  MIN_CLUSTER_BITS,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  QCOW2_MAGIC,
  REFTABLE_RESERVED_LO,
  SUBCLUSTERS_PER_CLUSTER,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from "../../lib/format/constants.ts";

/** The u64 a pair of (high, low) u32 masks selects. */
function mask(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** A u64 mask of bits [from, to]. */
function bits(from: number, to: number): bigint {
  return ((1n << BigInt(to - from + 1)) - 1n) << BigInt(from);
}

Deno.test("QCOW2_MAGIC is the bytes 'QFI\\xfb' read big-endian", () => {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, QCOW2_MAGIC);
  assert.deepStrictEqual([...bytes], [0x51, 0x46, 0x49, 0xfb]);
  assert.strictEqual(new TextDecoder().decode(bytes.subarray(0, 3)), "QFI");
});

Deno.test("header lengths and limits match the specification", () => {
  assert.strictEqual(V2_HEADER_LENGTH, 72);
  assert.strictEqual(V3_MIN_HEADER_LENGTH, 104);
  assert.strictEqual(V3_HEADER_LENGTH, 112);
  assert.strictEqual(V3_HEADER_LENGTH % 8, 0);
  assert.strictEqual(MIN_CLUSTER_BITS, 9);
  assert.strictEqual(MAX_CLUSTER_BITS, 21);
  assert.strictEqual(MIN_EXTENDED_L2_CLUSTER_BITS, 14);
  // The smallest extended L2 cluster has 512-byte subclusters.
  assert.strictEqual(
    2 ** MIN_EXTENDED_L2_CLUSTER_BITS / SUBCLUSTERS_PER_CLUSTER,
    COMPRESSED_SECTOR_SIZE,
  );
  assert.strictEqual(MAX_REFCOUNT_ORDER, 6);
  assert.strictEqual(FEATURE_NAME_ENTRY_LENGTH, 48);
});

Deno.test("feature bits are the spec's bit numbers", () => {
  assert.deepStrictEqual(INCOMPAT, {
    DIRTY: 1n,
    CORRUPT: 2n,
    DATA_FILE: 4n,
    COMPRESSION_TYPE: 8n,
    EXTENDED_L2: 16n,
  });
  assert.strictEqual(
    INCOMPAT_KNOWN,
    Object.values(INCOMPAT).reduce((a, b) => a | b, 0n),
  );
  assert.deepStrictEqual(COMPAT, { LAZY_REFCOUNTS: 1n });
  assert.deepStrictEqual(AUTOCLEAR, { BITMAPS: 1n, DATA_FILE_RAW: 2n });
});

Deno.test("extension types, crypt methods and compression types are the spec's values", () => {
  assert.deepStrictEqual(EXTENSION, {
    END: 0,
    BACKING_FORMAT: 0xe2792aca,
    FEATURE_TABLE: 0x6803f857,
    BITMAPS: 0x23852875,
    CRYPTO_HEADER: 0x0537be77,
    DATA_FILE: 0x44415441,
  });
  // "DATA" in ASCII.
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, EXTENSION.DATA_FILE);
  assert.strictEqual(new TextDecoder().decode(b), "DATA");
  assert.deepStrictEqual(CRYPT_METHOD, { NONE: 0, AES: 1, LUKS: 2 });
  assert.deepStrictEqual(COMPRESSION_TYPE, { ZLIB: 0, ZSTD: 1 });
});

Deno.test("ENTRY masks select exactly the L1/L2 bit ranges of the specification", () => {
  assert.strictEqual(mask(ENTRY.COPIED_HI, 0), 1n << 63n);
  assert.strictEqual(mask(ENTRY.COMPRESSED_HI, 0), 1n << 62n);
  assert.strictEqual(mask(ENTRY.OFFSET_HI, ENTRY.OFFSET_LO), bits(9, 55));
  assert.strictEqual(mask(0, ENTRY.ZERO_LO), 1n);
  assert.strictEqual(
    mask(ENTRY.L1_RESERVED_HI, ENTRY.L1_RESERVED_LO),
    bits(0, 8) | bits(56, 62),
  );
  assert.strictEqual(
    mask(ENTRY.L2_RESERVED_HI, ENTRY.L2_RESERVED_LO),
    bits(1, 8) | bits(56, 61),
  );
  // L1: offset, reserved and COPIED partition the 64 bits.
  const l1 = [
    mask(ENTRY.OFFSET_HI, ENTRY.OFFSET_LO),
    mask(ENTRY.L1_RESERVED_HI, ENTRY.L1_RESERVED_LO),
    mask(ENTRY.COPIED_HI, 0),
  ];
  assert.strictEqual(l1.reduce((a, b) => a | b), bits(0, 63));
  assert.strictEqual(l1[0] & l1[1], 0n);
  // Standard L2: zero, reserved, offset, COMPRESSED and COPIED too.
  const l2 = [
    mask(0, ENTRY.ZERO_LO),
    mask(ENTRY.L2_RESERVED_HI, ENTRY.L2_RESERVED_LO),
    mask(ENTRY.OFFSET_HI, ENTRY.OFFSET_LO),
    mask(ENTRY.COMPRESSED_HI, 0),
    mask(ENTRY.COPIED_HI, 0),
  ];
  assert.strictEqual(l2.reduce((a, b) => a | b), bits(0, 63));
  assert.strictEqual(l2.reduce((a, b) => a + b), bits(0, 63));
  assert.strictEqual(REFTABLE_RESERVED_LO, Number(bits(0, 8)));
});
