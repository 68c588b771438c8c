import assert from "node:assert";
import { EXTENSION } from "../../lib/format/constants.ts";
import {
  encodeExtensionData,
  extensionType,
  type HeaderExtension,
  parseExtensions,
  serializeExtensions,
} from "../../lib/format/extensions.ts";
import { QEMU_FEATURE_NAMES } from "../../lib/format/header.ts";
import { assertQcow2Error, setU64 } from "./_util.ts";

const ALL_KINDS: HeaderExtension[] = [
  { kind: "backing-format", format: "qcow2" },
  { kind: "data-file", name: "/var/lib/images/data.raw" },
  { kind: "feature-table", features: QEMU_FEATURE_NAMES.slice() },
  {
    kind: "bitmaps",
    nbBitmaps: 3,
    reserved: 0,
    directorySize: 96,
    directoryOffset: 0x1_2345_0000,
  },
  { kind: "crypto-header", offset: 0x30000, length: 0x1f000 },
  { kind: "unknown", type: 0x12345678, data: new Uint8Array([1, 2, 3]) },
];

Deno.test("extensionType() gives the spec's type code of every extension kind", () => {
  assert.deepStrictEqual(ALL_KINDS.map(extensionType), [
    0xe2792aca,
    0x44415441,
    0x6803f857,
    0x23852875,
    0x0537be77,
    0x12345678,
  ]);
  assert.strictEqual(EXTENSION.END, 0);
});

Deno.test("encodeExtensionData() lays out every known extension as the spec says", () => {
  assert.deepStrictEqual(
    encodeExtensionData({ kind: "backing-format", format: "raw" }),
    new TextEncoder().encode("raw"),
  );
  const ft = encodeExtensionData({
    kind: "feature-table",
    features: [{ type: 2, bit: 1, name: "raw external data" }, {
      type: 1,
      bit: 0,
      name: "lazy refcounts",
    }],
  });
  assert.strictEqual(ft.length, 96);
  assert.strictEqual(ft[0], 2);
  assert.strictEqual(ft[1], 1);
  assert.strictEqual(
    new TextDecoder().decode(ft.subarray(2, 2 + 17)),
    "raw external data",
  );
  assert.ok(ft.subarray(19, 48).every((b) => b === 0));
  assert.strictEqual(ft[48], 1);
  assert.strictEqual(ft[49], 0);

  const bm = encodeExtensionData(ALL_KINDS[3]);
  assert.deepStrictEqual(
    [...bm],
    [
      ...[0, 0, 0, 3],
      ...[0, 0, 0, 0],
      ...[0, 0, 0, 0, 0, 0, 0, 96],
      ...[0, 0, 0, 1, 0x23, 0x45, 0, 0],
    ],
  );
  const crypto = encodeExtensionData(ALL_KINDS[4]);
  assert.deepStrictEqual(
    [...crypto],
    [0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0xf0, 0],
  );
});

Deno.test("serializeExtensions() pads each extension to 8 bytes and ends with a zero marker", () => {
  assert.deepStrictEqual(serializeExtensions([]), new Uint8Array(8));
  const bytes = serializeExtensions([
    { kind: "backing-format", format: "qcow2" },
    { kind: "unknown", type: 0xdeadbeef, data: new Uint8Array(8).fill(7) },
  ]);
  assert.deepStrictEqual([...bytes], [
    ...[0xe2, 0x79, 0x2a, 0xca, 0, 0, 0, 5],
    ...new TextEncoder().encode("qcow2"),
    ...[0, 0, 0],
    ...[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 8],
    ...new Array(8).fill(7),
    ...new Array(8).fill(0),
  ]);
});

Deno.test("parseExtensions() reads back every extension kind that serializeExtensions() wrote", () => {
  const bytes = serializeExtensions(ALL_KINDS);
  const parsed = parseExtensions(bytes, 0, bytes.length);
  assert.deepStrictEqual(parsed, ALL_KINDS);
  assert.deepStrictEqual(serializeExtensions(parsed), bytes);
});

Deno.test("parseExtensions() keeps unknown extensions byte for byte, whatever their length", () => {
  for (const len of [0, 1, 7, 8, 9, 100]) {
    const data = new Uint8Array(len).map((_, i) => (i * 37 + 11) & 0xff);
    const ext: HeaderExtension = { kind: "unknown", type: 0xabcdef01, data };
    const bytes = serializeExtensions([ext]);
    assert.strictEqual(bytes.length, 8 + Math.ceil(len / 8) * 8 + 8);
    const parsed = parseExtensions(bytes, 0, bytes.length);
    assert.deepStrictEqual(parsed, [ext]);
    const p = parsed[0];
    assert.ok(p.kind === "unknown");
    // A copy, not a view into the input.
    assert.notStrictEqual(p.data.buffer, bytes.buffer);
  }
});

Deno.test("parseExtensions() stops at the end marker and ignores what follows", () => {
  const area = new Uint8Array(64);
  area.set(serializeExtensions([{ kind: "backing-format", format: "raw" }]));
  // Garbage after the end marker (offset 16..24 is the end marker).
  area.fill(0xff, 24);
  assert.deepStrictEqual(parseExtensions(area, 0, 64), [
    { kind: "backing-format", format: "raw" },
  ]);
});

Deno.test("parseExtensions() honours start and end and returns [] for an empty area", () => {
  const ext = serializeExtensions([{ kind: "data-file", name: "d" }]);
  const buf = new Uint8Array(200);
  buf.set(ext, 112);
  assert.deepStrictEqual(parseExtensions(buf, 112, 200), [
    { kind: "data-file", name: "d" },
  ]);
  assert.deepStrictEqual(parseExtensions(buf, 112, 112), []);
  // An area without an end marker that is exactly filled is accepted.
  const noEnd = ext.subarray(0, 16);
  assert.deepStrictEqual(parseExtensions(noEnd, 0, 16), [
    { kind: "data-file", name: "d" },
  ]);
  // `end` beyond the buffer is clamped to the buffer.
  assert.deepStrictEqual(parseExtensions(ext, 0, 1 << 20), [
    { kind: "data-file", name: "d" },
  ]);
});

Deno.test("parseExtensions() decodes feature names up to 46 bytes, NUL-terminated or not", () => {
  const long = "x".repeat(46);
  const bytes = serializeExtensions([{
    kind: "feature-table",
    features: [
      { type: 0, bit: 63, name: long },
      { type: 1, bit: 7, name: "y".repeat(60) },
      { type: 2, bit: 0, name: "" },
    ],
  }]);
  const [ext] = parseExtensions(bytes, 0, bytes.length);
  assert.ok(ext.kind === "feature-table");
  assert.deepStrictEqual(ext.features, [
    { type: 0, bit: 63, name: long },
    { type: 1, bit: 7, name: "y".repeat(46) },
    { type: 2, bit: 0, name: "" },
  ]);
});

Deno.test("parseExtensions() rejects an extension header that runs past the area", () => {
  const area = new Uint8Array(12);
  new DataView(area.buffer).setUint32(0, 0x11111111); // length 0
  assertQcow2Error(() => parseExtensions(area, 0, 12), {
    code: "BAD_EXTENSION",
    message:
      "Cannot parse header extension: extension header at 0x8 runs past 0xc",
    offset: 8,
  });
});

Deno.test("parseExtensions() rejects an extension whose length runs past the area", () => {
  const area = new Uint8Array(16);
  const view = new DataView(area.buffer);
  view.setUint32(0, EXTENSION.BACKING_FORMAT);
  view.setUint32(4, 100);
  assertQcow2Error(() => parseExtensions(area, 0, 16), {
    code: "BAD_EXTENSION",
    message:
      "Cannot parse header extension: extension 0xe2792aca at 0x0 has length 100, past the end of the area at 0x10",
    offset: 0,
    field: "length",
  });
});

Deno.test("parseExtensions() rejects bitmaps and crypto extensions of the wrong length", () => {
  const area = new Uint8Array(64);
  const view = new DataView(area.buffer);
  view.setUint32(8, EXTENSION.BITMAPS);
  view.setUint32(12, 16);
  assertQcow2Error(() => parseExtensions(area, 8, 64), {
    code: "BAD_EXTENSION",
    message:
      "Cannot parse header extension: extension 0x23852875 at 0x8 has length 16, expected 24",
    offset: 8,
    field: "length",
  });
  view.setUint32(8, EXTENSION.CRYPTO_HEADER);
  view.setUint32(12, 24);
  assertQcow2Error(() => parseExtensions(area, 8, 64), {
    code: "BAD_EXTENSION",
    message:
      "Cannot parse header extension: extension 0x537be77 at 0x8 has length 24, expected 16",
  });
});

Deno.test("parseExtensions() rejects a bitmap directory offset at or above 2^53", () => {
  const bytes = serializeExtensions([ALL_KINDS[3]]);
  setU64(bytes, 8 + 16, 1n << 60n);
  assertQcow2Error(() => parseExtensions(bytes, 0, bytes.length), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot parse header extension: bitmap_directory_offset 0x1000000000000000 is out of range [0, 2^53-1]",
    field: "bitmap_directory_offset",
    offset: 24,
  });
});
