import assert from "node:assert";
import { decodeL1Entry, encodeL1Entry } from "../../lib/format/l1.ts";
import { assertRangeError, prng, randomInt, setU64, u64At } from "./_util.ts";

Deno.test("encodeL1Entry() writes offset and COPIED as a big-endian u64", () => {
  const table = new Uint8Array(16);
  encodeL1Entry(table, 1, { l2Offset: 0x50000, copied: true });
  assert.deepStrictEqual([...table.subarray(8)], [
    0x80,
    0,
    0,
    0,
    0,
    5,
    0,
    0,
  ]);
  assert.ok(table.subarray(0, 8).every((b) => b === 0));
  encodeL1Entry(table, 0, { l2Offset: 0x12_3456_7800_0000, copied: false });
  assert.strictEqual(u64At(table, 0), 0x12_3456_7800_0000n);
});

Deno.test("decodeL1Entry() and encodeL1Entry() round-trip offsets of every magnitude, including 2 GiB and up", () => {
  const rand = prng(11);
  const offsets = [
    0,
    512,
    65536,
    0x7fff_fe00,
    0x8000_0000, // bit 31 set in the low half
    0xffff_fe00,
    0x1_0000_0000,
    0x1_8000_0000,
    2 ** 40,
    Number.MAX_SAFE_INTEGER - 511,
  ];
  for (let i = 0; i < 300; i++) {
    offsets.push(randomInt(rand, 2 ** 44) * 512);
  }
  const table = new Uint8Array(8 * 4);
  for (const l2Offset of offsets) {
    for (const copied of [false, true]) {
      encodeL1Entry(table, 2, { l2Offset, copied });
      assert.deepStrictEqual(decodeL1Entry(table, 2), {
        l2Offset,
        copied,
        reserved: false,
      });
      assert.strictEqual(
        u64At(table, 16),
        BigInt(l2Offset) | (copied ? 1n << 63n : 0n),
      );
    }
  }
  // Neighbours untouched.
  assert.strictEqual(u64At(table, 8), 0n);
  assert.strictEqual(u64At(table, 24), 0n);
});

Deno.test("encodeL1Entry() overwrites every bit of the previous entry", () => {
  const table = new Uint8Array(8).fill(0xff);
  encodeL1Entry(table, 0, { l2Offset: 0, copied: false });
  assert.ok(table.every((b) => b === 0));
  assert.deepStrictEqual(decodeL1Entry(table, 0), {
    l2Offset: 0,
    copied: false,
    reserved: false,
  });
});

Deno.test("decodeL1Entry() flags each reserved bit (0-8, 56-62) and keeps the offset", () => {
  const table = new Uint8Array(8);
  const base = (1n << 63n) | 0x30000n;
  for (let bit = 0n; bit < 64n; bit++) {
    setU64(table, 0, base | (1n << bit));
    const e = decodeL1Entry(table, 0);
    const reserved = bit <= 8n || (bit >= 56n && bit <= 62n);
    assert.strictEqual(e.reserved, reserved, `bit ${bit}`);
    assert.strictEqual(e.copied, true);
    if (reserved || bit === 63n) {
      assert.strictEqual(e.l2Offset, 0x30000, `bit ${bit}`);
    } else {
      assert.strictEqual(
        BigInt(e.l2Offset),
        0x30000n | (1n << bit),
        `bit ${bit}`,
      );
    }
  }
});

Deno.test("decodeL1Entry() reads entries of a table that is a subarray", () => {
  const buf = new Uint8Array(64);
  const table = buf.subarray(24, 48);
  encodeL1Entry(table, 1, { l2Offset: 0x90000, copied: true });
  assert.strictEqual(u64At(buf, 32), (1n << 63n) | 0x90000n);
  assert.strictEqual(decodeL1Entry(table, 1).l2Offset, 0x90000);
});

Deno.test("encodeL1Entry() rejects unaligned, negative and too large offsets", () => {
  const table = new Uint8Array(8);
  for (const bad of [65537, 100, -512, 2 ** 53, 0.5]) {
    assertRangeError(
      () => encodeL1Entry(table, 0, { l2Offset: bad, copied: true }),
      `Cannot encode L1 entry: offset ${bad} is not a 512-aligned integer in [0, 2^53)`,
    );
  }
  assert.ok(table.every((b) => b === 0));
});
