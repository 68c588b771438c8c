import assert from "node:assert";
import {
  decodeRefcountTableEntry,
  encodeRefcountTableEntry,
  getRefcount,
  refcountBlockEntries,
  refcountMax,
  setRefcount,
} from "../../lib/format/refcount.ts";
import {
  assertQcow2Error,
  assertRangeError,
  prng,
  randomInt,
  setU64,
  u64At,
} from "./_util.ts";

const ORDERS = [0, 1, 2, 3, 4, 5, 6];

Deno.test("refcountMax() is 2^(2^order) - 1, capped at 2^53 - 1 for 64-bit refcounts", () => {
  assert.deepStrictEqual(ORDERS.map(refcountMax), [
    1,
    3,
    15,
    255,
    65535,
    0xffff_ffff,
    Number.MAX_SAFE_INTEGER,
  ]);
});

Deno.test("refcountMax(), refcountBlockEntries() and getRefcount() reject orders outside 0..6", () => {
  for (const bad of [-1, 7, 1.5, NaN]) {
    const message = `Cannot use refcount_order ${bad}: out of range [0, 6]`;
    assertRangeError(() => refcountMax(bad), message);
    assertRangeError(() => refcountBlockEntries(16, bad), message);
    assertRangeError(() => getRefcount(new Uint8Array(512), 0, bad), message);
    assertRangeError(
      () => setRefcount(new Uint8Array(512), 0, bad, 0),
      message,
    );
  }
});

Deno.test("refcountBlockEntries() is cluster_size * 8 / refcount_bits for 512 B to 2 MiB clusters", () => {
  for (let bits = 9; bits <= 21; bits++) {
    for (const order of ORDERS) {
      assert.strictEqual(
        refcountBlockEntries(bits, order),
        (2 ** bits * 8) / (1 << order),
      );
    }
  }
  assert.strictEqual(refcountBlockEntries(9, 6), 64);
  assert.strictEqual(refcountBlockEntries(21, 0), 16 * 1024 * 1024);
  assert.strictEqual(refcountBlockEntries(16, 4), 32768);
});

Deno.test("setRefcount() packs sub-byte refcounts with entry 0 in the least significant bits", () => {
  const b = new Uint8Array(8);
  setRefcount(b, 9, 0, 1);
  assert.strictEqual(b[1], 0b10);
  setRefcount(b, 0, 0, 1);
  setRefcount(b, 7, 0, 1);
  assert.strictEqual(b[0], 0b1000_0001);
  b.fill(0);
  setRefcount(b, 0, 1, 3);
  setRefcount(b, 3, 1, 2);
  assert.strictEqual(b[0], 0b1000_0011);
  b.fill(0);
  setRefcount(b, 1, 2, 0xa);
  setRefcount(b, 2, 2, 0x5);
  assert.deepStrictEqual([b[0], b[1]], [0xa0, 0x05]);
});

Deno.test("setRefcount() writes byte-sized and wider refcounts big-endian", () => {
  const b = new Uint8Array(32);
  setRefcount(b, 2, 3, 0xab);
  assert.strictEqual(b[2], 0xab);
  b.fill(0);
  setRefcount(b, 1, 4, 0x1234);
  assert.deepStrictEqual([...b.subarray(2, 4)], [0x12, 0x34]);
  b.fill(0);
  setRefcount(b, 1, 5, 0xdead_beef);
  assert.deepStrictEqual([...b.subarray(4, 8)], [0xde, 0xad, 0xbe, 0xef]);
  b.fill(0);
  setRefcount(b, 3, 6, 2 ** 40 + 5);
  assert.strictEqual(u64At(b, 24), (1n << 40n) + 5n);
  assert.ok(b.subarray(0, 24).every((x) => x === 0));
});

for (const clusterBits of [9, 21]) {
  for (const order of ORDERS) {
    Deno.test(
      `setRefcount() and getRefcount() store random ${
        1 << order
      }-bit refcounts in a ${
        2 ** clusterBits
      }-byte block without touching other entries`,
      () => {
        const entries = refcountBlockEntries(clusterBits, order);
        const max = refcountMax(order);
        const rand = prng(1000 * clusterBits + order);
        const block = new Uint8Array(2 ** clusterBits);
        // Start from a non-zero background so that stray clears show up too.
        const background = Math.min(max, 1 + (order > 0 ? 1 : 0));
        for (let i = 0; i < entries; i++) {
          setRefcount(block, i, order, background);
        }
        const model = new Map<number, number>();
        const indices = [0, 1, entries - 2, entries - 1];
        for (let i = 0; i < 3000; i++) {
          indices.push(randomInt(rand, entries - 1));
        }
        for (const index of indices) {
          const value = randomInt(rand, 3) === 0 ? max : randomInt(rand, max);
          setRefcount(block, index, order, value);
          model.set(index, value);
          assert.strictEqual(getRefcount(block, index, order), value);
        }
        for (let i = 0; i < entries; i++) {
          const want = model.get(i) ?? background;
          const got = getRefcount(block, i, order);
          if (got !== want) {
            assert.fail(`entry ${i}: got ${got}, want ${want}`);
          }
        }
      },
    );
  }
}

Deno.test("setRefcount() changes only the bits of the entry it writes, for every width", () => {
  const rand = prng(99);
  for (const order of ORDERS) {
    const bits = 1 << order;
    for (let trial = 0; trial < 200; trial++) {
      const block = new Uint8Array(512).map(() => randomInt(rand, 255));
      const before = block.slice();
      const entries = refcountBlockEntries(9, order);
      const index = randomInt(rand, entries - 1);
      const value = randomInt(rand, refcountMax(order));
      setRefcount(block, index, order, value);
      // Compare bit by bit: only bits [index*bits, (index+1)*bits) may differ.
      for (let bit = 0; bit < 512 * 8; bit++) {
        if (bit >= index * bits && bit < (index + 1) * bits) continue;
        const a = (before[bit >> 3] >> (bit & 7)) & 1;
        const b = (block[bit >> 3] >> (bit & 7)) & 1;
        if (a !== b) assert.fail(`order ${order}: bit ${bit} changed`);
      }
      assert.strictEqual(getRefcount(block, index, order), value);
    }
  }
});

Deno.test("setRefcount() accepts the max value of each width and rejects one more", () => {
  for (const order of ORDERS) {
    const block = new Uint8Array(512);
    const max = refcountMax(order);
    setRefcount(block, 5, order, max);
    assert.strictEqual(getRefcount(block, 5, order), max);
    assert.strictEqual(getRefcount(block, 4, order), 0);
    assert.strictEqual(getRefcount(block, 6, order), 0);
    const over = order === 6 ? 2 ** 53 : max + 1;
    assertRangeError(
      () => setRefcount(block, 5, order, over),
      `Cannot set refcount: ${over} is out of range [0, ${max}] for ${
        1 << order
      }-bit refcounts`,
    );
    for (const bad of [-1, 0.5]) {
      assertRangeError(
        () => setRefcount(block, 5, order, bad),
        `Cannot set refcount: ${bad} is out of range [0, ${max}] for ${
          1 << order
        }-bit refcounts`,
      );
    }
    // A refused write leaves the entry as it was.
    assert.strictEqual(getRefcount(block, 5, order), max);
  }
});

Deno.test("getRefcount() reads full-width 32-bit and 64-bit values from raw bytes", () => {
  const b = new Uint8Array(16).fill(0xff);
  assert.strictEqual(getRefcount(b, 0, 5), 0xffff_ffff);
  assert.strictEqual(getRefcount(b, 3, 5), 0xffff_ffff);
  // 64-bit values above 2^53 come back rounded, as documented.
  assert.strictEqual(getRefcount(b, 1, 6), 2 ** 64);
  setU64(b, 0, (1n << 53n) - 1n);
  assert.strictEqual(getRefcount(b, 0, 6), Number.MAX_SAFE_INTEGER);
});

Deno.test("getRefcount() and setRefcount() work on a block that is a subarray", () => {
  const buf = new Uint8Array(1024).fill(0x11);
  const block = buf.subarray(300, 812);
  for (const order of ORDERS) {
    setRefcount(block, 3, order, 1);
    assert.strictEqual(getRefcount(block, 3, order), 1);
  }
  setRefcount(block, 0, 6, 0x1234_5678_9abc);
  assert.strictEqual(u64At(buf, 300), 0x1234_5678_9abcn);
  assert.ok(buf.subarray(0, 300).every((x) => x === 0x11));
  assert.ok(buf.subarray(812).every((x) => x === 0x11));
});

Deno.test("encodeRefcountTableEntry() and decodeRefcountTableEntry() round-trip block offsets", () => {
  const rand = prng(3);
  const table = new Uint8Array(32);
  const offsets = [0, 512, 0x10000, 0x8000_0000, 0xffff_fe00, 2 ** 40];
  offsets.push(Number.MAX_SAFE_INTEGER - 511);
  for (let i = 0; i < 200; i++) offsets.push(randomInt(rand, 2 ** 43) * 512);
  for (const offset of offsets) {
    encodeRefcountTableEntry(table, 2, offset);
    assert.strictEqual(u64At(table, 16), BigInt(offset));
    assert.deepStrictEqual(decodeRefcountTableEntry(table, 2), {
      blockOffset: offset,
      reserved: false,
    });
  }
  assert.strictEqual(u64At(table, 8), 0n);
  assert.strictEqual(u64At(table, 24), 0n);
});

Deno.test("decodeRefcountTableEntry() flags reserved bits 0-8 and masks them off the offset", () => {
  const table = new Uint8Array(8);
  for (let bit = 0n; bit < 9n; bit++) {
    setU64(table, 0, 0x8000_0000n | (1n << bit));
    assert.deepStrictEqual(decodeRefcountTableEntry(table, 0), {
      blockOffset: 0x8000_0000,
      reserved: true,
    });
  }
  setU64(table, 0, 0x8000_0200n);
  assert.strictEqual(decodeRefcountTableEntry(table, 0).reserved, false);
});

Deno.test("decodeRefcountTableEntry() rejects offsets at or above 2^53", () => {
  const table = new Uint8Array(16);
  setU64(table, 8, 1n << 53n);
  assertQcow2Error(() => decodeRefcountTableEntry(table, 1), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot decode refcount table entry 1: offset 0x20000000000000 is out of range [0, 2^53-1]",
    field: "refcount table entry",
  });
});

Deno.test("encodeRefcountTableEntry() rejects unaligned and out-of-range offsets", () => {
  const table = new Uint8Array(8);
  for (const bad of [1, 0x10100, -512, 2 ** 53]) {
    assertRangeError(
      () => encodeRefcountTableEntry(table, 0, bad),
      `Cannot encode refcount table entry: offset ${bad} is not a 512-aligned integer in [0, 2^53)`,
    );
  }
});
