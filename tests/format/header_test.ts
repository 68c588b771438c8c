import assert from "node:assert";
import { EXTENSION, QCOW2_MAGIC } from "../../lib/format/constants.ts";
import {
  backingFormat,
  dataFileName,
  defaultHeader,
  hasExtension,
  parseHeader,
  type Qcow2Header,
  QEMU_FEATURE_NAMES,
  serializeHeader,
} from "../../lib/format/header.ts";
import { serializeExtensions } from "../../lib/format/extensions.ts";
import { assertQcow2Error, assertRangeError, setU64, u64At } from "./_util.ts";

/** A v3 header with a distinct value in every field. */
function fullV3(): Qcow2Header {
  return {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: 21,
    size: Number.MAX_SAFE_INTEGER - 511,
    cryptMethod: 0,
    l1Size: 0x123456,
    l1TableOffset: 0x1_0040_0000,
    refcountTableOffset: 0x20_0000,
    refcountTableClusters: 3,
    nbSnapshots: 7,
    snapshotsOffset: 0x7fe0_0000_0000,
    incompatibleFeatures: 0x8000_0000_0000_0019n,
    compatibleFeatures: 0x4000_0000_0000_0001n,
    autoclearFeatures: 0x2000_0000_0000_0003n,
    refcountOrder: 6,
    headerLength: 112,
    compressionType: 1,
    tail: new Uint8Array(7),
    extensions: [],
    backingFile: undefined,
  };
}

Deno.test("defaultHeader() gives a v3 header with QEMU's defaults and feature name table", () => {
  const h = defaultHeader({ size: 1 << 30 });
  assert.strictEqual(h.version, 3);
  assert.strictEqual(h.size, 1 << 30);
  assert.strictEqual(h.clusterBits, 16);
  assert.strictEqual(h.refcountOrder, 4);
  assert.strictEqual(h.headerLength, 112);
  assert.strictEqual(h.compressionType, 0);
  assert.strictEqual(h.incompatibleFeatures, 0n);
  assert.strictEqual(h.compatibleFeatures, 0n);
  assert.strictEqual(h.autoclearFeatures, 0n);
  assert.strictEqual(h.tail.length, 7);
  assert.strictEqual(h.backingFile, undefined);
  assert.strictEqual(
    h.l1TableOffset + h.refcountTableOffset + h.snapshotsOffset,
    0,
  );
  assert.deepStrictEqual(h.extensions, [{
    kind: "feature-table",
    features: [...QEMU_FEATURE_NAMES],
  }]);
});

Deno.test("defaultHeader() applies clusterBits, refcountOrder, zstd and featureTable options", () => {
  const h = defaultHeader({
    size: 4096,
    clusterBits: 9,
    refcountOrder: 0,
    compressionType: 1,
    featureTable: false,
  });
  assert.strictEqual(h.clusterBits, 9);
  assert.strictEqual(h.refcountOrder, 0);
  assert.strictEqual(h.compressionType, 1);
  assert.strictEqual(h.incompatibleFeatures, 8n);
  assert.deepStrictEqual(h.extensions, []);
  // The feature table is a copy: editing it does not change the constant.
  const d = defaultHeader({ size: 0 });
  const ext = d.extensions[0];
  assert.ok(ext.kind === "feature-table");
  ext.features.pop();
  assert.strictEqual(QEMU_FEATURE_NAMES.length, 8);
});

Deno.test("serializeHeader() writes every v3 field at the spec's offset", () => {
  const h = fullV3();
  const bytes = serializeHeader(h);
  const view = new DataView(bytes.buffer);
  assert.strictEqual(bytes.length, 112 + 8);
  assert.strictEqual(view.getUint32(0), QCOW2_MAGIC);
  assert.strictEqual(view.getUint32(4), 3);
  assert.strictEqual(u64At(bytes, 8), 0n);
  assert.strictEqual(view.getUint32(16), 0);
  assert.strictEqual(view.getUint32(20), 21);
  assert.strictEqual(u64At(bytes, 24), BigInt(h.size));
  assert.strictEqual(view.getUint32(32), 0);
  assert.strictEqual(view.getUint32(36), 0x123456);
  assert.strictEqual(u64At(bytes, 40), 0x1_0040_0000n);
  assert.strictEqual(u64At(bytes, 48), 0x20_0000n);
  assert.strictEqual(view.getUint32(56), 3);
  assert.strictEqual(view.getUint32(60), 7);
  assert.strictEqual(u64At(bytes, 64), 0x7fe0_0000_0000n);
  assert.strictEqual(u64At(bytes, 72), 0x8000_0000_0000_0019n);
  assert.strictEqual(u64At(bytes, 80), 0x4000_0000_0000_0001n);
  assert.strictEqual(u64At(bytes, 88), 0x2000_0000_0000_0003n);
  assert.strictEqual(view.getUint32(96), 6);
  assert.strictEqual(view.getUint32(100), 112);
  assert.strictEqual(bytes[104], 1);
  assert.ok(bytes.subarray(105).every((b) => b === 0));
});

Deno.test("parseHeader() reads back every v3 field that serializeHeader() wrote", () => {
  const h = fullV3();
  const bytes = serializeHeader(h);
  assert.deepStrictEqual(parseHeader(bytes), h);
  assert.deepStrictEqual(serializeHeader(parseHeader(bytes)), bytes);
});

Deno.test("parseHeader() reads a v3 header without compression_type (header_length 104) as zlib", () => {
  const h: Qcow2Header = {
    ...fullV3(),
    headerLength: 104,
    compressionType: 0,
    tail: new Uint8Array(0),
    incompatibleFeatures: 0n,
  };
  const bytes = serializeHeader(h);
  assert.strictEqual(bytes.length, 104 + 8);
  const p = parseHeader(bytes);
  assert.strictEqual(p.headerLength, 104);
  assert.strictEqual(p.compressionType, 0);
  assert.strictEqual(p.tail.length, 0);
  assert.deepStrictEqual(p, h);
  assert.deepStrictEqual(serializeHeader(p), bytes);
});

Deno.test("parseHeader() keeps header bytes past compression_type (longer header_length) in tail", () => {
  const tail = new Uint8Array(23).map((_, i) => i + 1);
  const h: Qcow2Header = { ...fullV3(), headerLength: 128, tail };
  const bytes = serializeHeader(h);
  assert.deepStrictEqual([...bytes.subarray(105, 128)], [...tail]);
  const p = parseHeader(bytes);
  assert.deepStrictEqual(p.tail, tail);
  assert.deepStrictEqual(p.extensions, []);
  assert.deepStrictEqual(serializeHeader(p), bytes);
});

Deno.test("parseHeader() and serializeHeader() round-trip a v2 header, ignoring v3-only fields", () => {
  const h: Qcow2Header = {
    ...fullV3(),
    version: 2,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 72,
    compressionType: 0,
    tail: new Uint8Array(0),
    extensions: [{ kind: "backing-format", format: "raw" }],
    backingFileOffset: 72 + 16 + 8,
    backingFileSize: 8,
    backingFile: "base.img",
  };
  const bytes = serializeHeader(h);
  assert.strictEqual(bytes.length, 72 + 16 + 8 + 8);
  // The backing format extension starts right after the 72-byte v2 header.
  assert.strictEqual(
    new DataView(bytes.buffer).getUint32(72),
    EXTENSION.BACKING_FORMAT,
  );
  const p = parseHeader(bytes);
  assert.deepStrictEqual(p, h);
  assert.deepStrictEqual(serializeHeader(p), bytes);

  // v3-only fields are neither written to nor read from a v2 header.
  const bare: Qcow2Header = {
    ...h,
    incompatibleFeatures: 0xffn,
    refcountOrder: 6,
    extensions: [],
    backingFileOffset: 0,
    backingFileSize: 0,
    backingFile: undefined,
  };
  const v2bytes = serializeHeader(bare);
  assert.strictEqual(v2bytes.length, 80);
  assert.ok(v2bytes.subarray(72).every((b) => b === 0));
  const withJunk = new Uint8Array(512);
  withJunk.set(v2bytes);
  withJunk.fill(0xff, 80); // where compatible_features.. would be in v3
  const v2 = parseHeader(withJunk);
  assert.strictEqual(v2.incompatibleFeatures, 0n);
  assert.strictEqual(v2.compatibleFeatures, 0n);
  assert.strictEqual(v2.autoclearFeatures, 0n);
  assert.strictEqual(v2.refcountOrder, 4);
  assert.strictEqual(v2.headerLength, 72);
  assert.strictEqual(v2.compressionType, 0);
  assert.deepStrictEqual(v2.extensions, []);
});

Deno.test("parseHeader() reads the backing file name and stops extensions at its offset", () => {
  const h = defaultHeader({ size: 1 << 20 });
  h.extensions.unshift({ kind: "backing-format", format: "qcow2" });
  const extLen = serializeExtensions(h.extensions).length;
  h.backingFileOffset = 112 + extLen;
  h.backingFile = "../images/bäse.qcow2";
  h.backingFileSize = new TextEncoder().encode(h.backingFile).length;
  const bytes = serializeHeader(h);
  assert.strictEqual(bytes.length, h.backingFileOffset + h.backingFileSize);
  const cluster = new Uint8Array(65536);
  cluster.set(bytes);
  const p = parseHeader(cluster);
  assert.strictEqual(p.backingFile, "../images/bäse.qcow2");
  assert.strictEqual(backingFormat(p), "qcow2");
  assert.deepStrictEqual(p, h);

  // Without an end marker, extensions still stop at backing_file_offset.
  const noEnd = structuredClone(h);
  noEnd.backingFileOffset -= 8;
  const bytes2 = serializeHeader({ ...noEnd, backingFileOffset: 0 });
  const area = new Uint8Array(65536);
  area.set(bytes2.subarray(0, noEnd.backingFileOffset));
  area.set(
    new TextEncoder().encode(noEnd.backingFile),
    noEnd.backingFileOffset,
  );
  new DataView(area.buffer).setBigUint64(8, BigInt(noEnd.backingFileOffset));
  const p2 = parseHeader(area);
  assert.strictEqual(p2.backingFile, noEnd.backingFile);
  assert.deepStrictEqual(p2.extensions, h.extensions);
});

Deno.test("parseHeader() keeps unknown header extensions so that serializeHeader() reproduces them", () => {
  const h = defaultHeader({ size: 1 << 20 });
  h.extensions = [
    { kind: "unknown", type: 0x0badf00d, data: new Uint8Array([9, 8, 7]) },
    { kind: "data-file", name: "disk.raw" },
    ...h.extensions,
    { kind: "unknown", type: 0x12345678, data: new Uint8Array(0) },
  ];
  h.incompatibleFeatures |= 4n;
  const bytes = serializeHeader(h);
  const p = parseHeader(bytes);
  assert.deepStrictEqual(p.extensions, h.extensions);
  assert.deepStrictEqual(serializeHeader(p), bytes);
  assert.strictEqual(dataFileName(p), "disk.raw");
  assert.ok(hasExtension(p, 0x0badf00d));
  assert.ok(hasExtension(p, 0x12345678));
  assert.ok(hasExtension(p, EXTENSION.DATA_FILE));
  assert.ok(hasExtension(p, EXTENSION.FEATURE_TABLE));
  assert.ok(!hasExtension(p, EXTENSION.BITMAPS));
  assert.strictEqual(backingFormat(p), undefined);
});

Deno.test("backingFormat(), dataFileName() and hasExtension() report absent extensions", () => {
  const h = defaultHeader({ size: 0, featureTable: false });
  assert.strictEqual(backingFormat(h), undefined);
  assert.strictEqual(dataFileName(h), undefined);
  assert.strictEqual(hasExtension(h, EXTENSION.FEATURE_TABLE), false);
  h.extensions.push({ kind: "backing-format", format: "raw" });
  h.extensions.push({ kind: "backing-format", format: "qcow2" });
  // The last one wins, as QEMU reads them (iotest 114; judged by qemu-img
  // in tests/cli/qemu_lines_inspect_test.ts, "info twofmt.qcow2").
  assert.strictEqual(backingFormat(h), "qcow2");
});

Deno.test("parseHeader() rejects input shorter than the 72-byte header", () => {
  assertQcow2Error(() => parseHeader(new Uint8Array(71)), {
    code: "TRUNCATED",
    message:
      "Cannot parse header: image is 71 bytes, shorter than the 72-byte header",
    offset: 0,
  });
});

Deno.test("parseHeader() rejects a wrong magic", () => {
  const bytes = serializeHeader(defaultHeader({ size: 0 }));
  bytes[3] = 0xfa;
  assertQcow2Error(() => parseHeader(bytes), {
    code: "BAD_MAGIC",
    message:
      "Cannot parse header: magic 0x514649fa is not the qcow2 magic 0x514649fb",
    field: "magic",
    offset: 0,
  });
});

Deno.test("parseHeader() rejects versions other than 2 and 3", () => {
  for (const version of [0, 1, 4, 0xffffffff]) {
    const bytes = serializeHeader(defaultHeader({ size: 0 }));
    new DataView(bytes.buffer).setUint32(4, version);
    assertQcow2Error(() => parseHeader(bytes), {
      code: "UNSUPPORTED_VERSION",
      message:
        `Cannot parse header: version ${version} is not supported (expected 2 or 3)`,
      field: "version",
      offset: 4,
    });
  }
});

Deno.test("parseHeader() rejects a v3 header cut before byte 104", () => {
  const bytes = serializeHeader(defaultHeader({ size: 0 })).subarray(0, 100);
  assertQcow2Error(() => parseHeader(bytes), {
    code: "TRUNCATED",
    message:
      "Cannot parse header: image is 100 bytes, shorter than the 104-byte v3 header",
  });
});

Deno.test("parseHeader() rejects a header_length below 104 or not a multiple of 8", () => {
  for (const len of [0, 72, 100, 108, 113]) {
    const bytes = serializeHeader(defaultHeader({ size: 0 }));
    new DataView(bytes.buffer).setUint32(100, len);
    assertQcow2Error(() => parseHeader(bytes), {
      code: "OUT_OF_RANGE",
      message:
        `Cannot parse header: header_length ${len} is out of range [104, cluster size], multiple of 8`,
      field: "header_length",
      offset: 100,
    });
  }
});

Deno.test("parseHeader() rejects a header_length past the end of the input", () => {
  const bytes = serializeHeader(defaultHeader({ size: 0 }));
  new DataView(bytes.buffer).setUint32(100, 4096);
  assertQcow2Error(() => parseHeader(bytes), {
    code: "TRUNCATED",
    message:
      `Cannot parse header: header_length 4096 is out of range [104, ${bytes.length}] (image length)`,
    field: "header_length",
  });
});

Deno.test("parseHeader() rejects a backing file name that ends past the input", () => {
  const h = defaultHeader({ size: 0, featureTable: false });
  h.backingFileOffset = 128;
  h.backingFileSize = 10;
  h.backingFile = "0123456789";
  const bytes = serializeHeader(h).subarray(0, 137);
  assertQcow2Error(() => parseHeader(bytes), {
    code: "TRUNCATED",
    message:
      "Cannot parse header: backing file name at 0x80 with length 10 ends past 0x89",
    field: "backing_file_offset",
    offset: 8,
  });
});

Deno.test("parseHeader() rejects 64-bit offsets and sizes at or above 2^53", () => {
  const cases: [number, string][] = [
    [8, "backing_file_offset"],
    [24, "size"],
    [40, "l1_table_offset"],
    [48, "refcount_table_offset"],
    [64, "snapshots_offset"],
  ];
  for (const [at, field] of cases) {
    const bytes = serializeHeader(defaultHeader({ size: 0 }));
    setU64(bytes, at, 1n << 53n);
    assertQcow2Error(() => parseHeader(bytes), {
      code: "OUT_OF_RANGE",
      message:
        `Cannot parse header: ${field} 0x20000000000000 is out of range [0, 2^53-1]`,
      field,
      offset: at,
    });
  }
});

Deno.test("serializeHeader() refuses a backing file name that overlaps the extensions", () => {
  const h = defaultHeader({ size: 0 });
  h.backingFileOffset = 120;
  h.backingFile = "base";
  h.backingFileSize = 4;
  assertRangeError(
    () => serializeHeader(h),
    "Cannot serialize header: backing file name at 120 overlaps the extensions ending at 512",
  );
});
