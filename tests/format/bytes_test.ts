import assert from "node:assert";
import {
  alignUp,
  decodeText,
  encodeText,
  joinU64,
  splitU64,
  viewOf,
  writeU64,
} from "../../lib/bytes/binary.ts";
import { readU64, splitTableOffset } from "../../lib/format/_bytes.ts";
import {
  assertQcow2Error,
  assertRangeError,
  prng,
  randomInt,
} from "./_util.ts";

Deno.test("viewOf() covers exactly the bytes of a subarray", () => {
  const buf = new Uint8Array(32);
  const sub = buf.subarray(8, 16);
  const view = viewOf(sub);
  assert.strictEqual(view.byteOffset, 8);
  assert.strictEqual(view.byteLength, 8);
  view.setUint8(0, 0xab);
  assert.strictEqual(buf[8], 0xab);
});

Deno.test("readU64() and writeU64() round-trip safe integers big-endian", () => {
  const rand = prng(1);
  const buf = new Uint8Array(16);
  const view = viewOf(buf);
  const values = [0, 1, 0xffffffff, 0x1_0000_0000, Number.MAX_SAFE_INTEGER];
  for (let i = 0; i < 200; i++) {
    values.push(randomInt(rand, Number.MAX_SAFE_INTEGER));
  }
  for (const v of values) {
    writeU64(view, 4, v);
    assert.strictEqual(view.getBigUint64(4), BigInt(v));
    assert.strictEqual(readU64(view, 4, "f", "test"), v);
  }
  writeU64(view, 0, 0x0001020304050607);
  assert.deepStrictEqual([...buf.subarray(0, 8)], [0, 1, 2, 3, 4, 5, 6, 7]);
});

Deno.test("readU64() rejects values at or above 2^53 naming the field and offset", () => {
  const buf = new Uint8Array(16);
  const view = viewOf(buf);
  view.setBigUint64(8, 1n << 53n);
  assertQcow2Error(() => readU64(view, 8, "size", "parse header", 100), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot parse header: size 0x20000000000000 is out of range [0, 2^53-1]",
    field: "size",
    offset: 108,
  });
  view.setBigUint64(8, 0xffffffffffffffffn);
  assertQcow2Error(() => readU64(view, 8, "x", "act"), {
    code: "OUT_OF_RANGE",
    message: "Cannot act: x 0xffffffffffffffff is out of range [0, 2^53-1]",
  });
});

Deno.test("splitU64() and joinU64() are inverse for safe integers", () => {
  const rand = prng(2);
  for (let i = 0; i < 500; i++) {
    const v = randomInt(rand, Number.MAX_SAFE_INTEGER);
    const [hi, lo] = splitU64(v);
    assert.ok(hi >= 0 && hi <= 0x1fffff && lo >= 0 && lo <= 0xffffffff);
    assert.strictEqual(joinU64(hi, lo), v);
  }
  assert.deepStrictEqual(splitU64(0x1_8000_0000), [1, 0x80000000]);
});

Deno.test("splitTableOffset() accepts 512-aligned safe integers and rejects the rest", () => {
  assert.deepStrictEqual(splitTableOffset(0, "t"), [0, 0]);
  assert.deepStrictEqual(splitTableOffset(0x1_0000_0200, "t"), [1, 0x200]);
  assert.deepStrictEqual(
    splitTableOffset(Number.MAX_SAFE_INTEGER - 511, "t"),
    [0x1fffff, 0xfffffe00],
  );
  for (const bad of [1, 511, 513, -512, 2 ** 53, 1.5, NaN, Infinity]) {
    assertRangeError(
      () => splitTableOffset(bad, "thing"),
      `Cannot encode thing: offset ${bad} is not a 512-aligned integer in [0, 2^53)`,
    );
  }
});

Deno.test("alignUp() rounds up to a power of two", () => {
  assert.strictEqual(alignUp(0, 8), 0);
  assert.strictEqual(alignUp(1, 8), 8);
  assert.strictEqual(alignUp(8, 8), 8);
  assert.strictEqual(alignUp(9, 8), 16);
  assert.strictEqual(alignUp(65537, 65536), 131072);
});

Deno.test("encodeText() and decodeText() round-trip UTF-8", () => {
  for (const s of ["", "base.qcow2", "snäpshot ✓", "日本語"]) {
    assert.strictEqual(decodeText(encodeText(s)), s);
  }
  assert.strictEqual(encodeText("é").length, 2);
});
