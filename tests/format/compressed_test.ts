import assert from "node:assert";
import {
  compressedOffsetBits,
  compressedRange,
  decodeCompressedDescriptor,
  encodeCompressedDescriptor,
  maxCompressedSectors,
  sectorsFor,
} from "../../lib/format/compressed.ts";
import {
  assertQcow2Error,
  assertRangeError,
  prng,
  randomInt,
} from "./_util.ts";

function toBig([hi, lo]: [number, number]): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

Deno.test("compressedOffsetBits() and maxCompressedSectors() follow x = 62 - (cluster_bits - 8)", () => {
  for (let bits = 9; bits <= 21; bits++) {
    assert.strictEqual(compressedOffsetBits(bits), 70 - bits);
    assert.strictEqual(maxCompressedSectors(bits), 2 ** (bits - 8));
    // The sector count field spans bits x..61.
    assert.strictEqual(
      2 ** (62 - compressedOffsetBits(bits)),
      maxCompressedSectors(bits),
    );
  }
  assert.strictEqual(compressedOffsetBits(9), 61);
  assert.strictEqual(maxCompressedSectors(9), 2);
  assert.strictEqual(compressedOffsetBits(21), 49);
  assert.strictEqual(maxCompressedSectors(21), 8192);
});

Deno.test("encodeCompressedDescriptor() places offset, sector count and bit 62 for every cluster_bits 9..21", () => {
  for (let bits = 9; bits <= 21; bits++) {
    const x = BigInt(70 - bits);
    const max = maxCompressedSectors(bits);
    const maxOffset = 2 ** Math.min(70 - bits, 53) - 1;
    for (const sectors of [1, 2, max]) {
      for (const hostOffset of [0, 1, 0x1_2345, maxOffset]) {
        const raw = toBig(
          encodeCompressedDescriptor({ hostOffset, sectors }, bits),
        );
        assert.strictEqual(
          raw,
          (1n << 62n) | (BigInt(sectors - 1) << x) | BigInt(hostOffset),
          `bits ${bits} sectors ${sectors} offset ${hostOffset}`,
        );
      }
    }
  }
});

Deno.test("decodeCompressedDescriptor() round-trips the max sector count and large offsets for every cluster_bits 9..21", () => {
  const rand = prng(7);
  for (let bits = 9; bits <= 21; bits++) {
    const max = maxCompressedSectors(bits);
    const maxOffset = 2 ** Math.min(70 - bits, 53) - 1;
    const cases: [number, number][] = [
      [maxOffset, max],
      [maxOffset, 1],
      [0, max],
      [0x8000_0000, max],
      [0xffff_ffff, max],
      [2 ** 40 + 511, max],
    ];
    for (let i = 0; i < 100; i++) {
      cases.push([randomInt(rand, maxOffset), 1 + randomInt(rand, max - 1)]);
    }
    for (const [hostOffset, sectors] of cases) {
      const [hi, lo] = encodeCompressedDescriptor(
        { hostOffset, sectors },
        bits,
      );
      assert.ok(hi >= 0 && hi <= 0xffffffff && lo >= 0 && lo <= 0xffffffff);
      assert.strictEqual(hi & 0x8000_0000, 0, "bit 63 clear");
      assert.notStrictEqual(hi & 0x4000_0000, 0, "bit 62 set");
      assert.deepStrictEqual(decodeCompressedDescriptor(hi, lo, bits), {
        hostOffset,
        sectors,
      });
    }
  }
});

Deno.test("decodeCompressedDescriptor() ignores bits 62 and 63", () => {
  const [hi, lo] = encodeCompressedDescriptor(
    { hostOffset: 0x50200, sectors: 4 },
    16,
  );
  for (const flags of [0, 0x4000_0000, 0x8000_0000, 0xc000_0000]) {
    const h = ((hi & 0x3fff_ffff) | flags) >>> 0;
    assert.deepStrictEqual(decodeCompressedDescriptor(h, lo, 16), {
      hostOffset: 0x50200,
      sectors: 4,
    });
  }
  // The example from the doc comment: 3 additional sectors.
  assert.deepStrictEqual(decodeCompressedDescriptor(3 << 22, 0x50200, 16), {
    hostOffset: 0x50200,
    sectors: 4,
  });
});

Deno.test("decodeCompressedDescriptor() rejects offsets with bits above 52 set", () => {
  // With 512-byte clusters the offset field reaches bit 60.
  assertQcow2Error(() => decodeCompressedDescriptor(0x0020_0000, 0, 9), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot decode compressed descriptor: host offset 0x20000000000000 is out of range [0, 2^53-1]",
    field: "compressed host offset",
  });
  assertQcow2Error(() => decodeCompressedDescriptor(0x1fff_ffff, 5, 9), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot decode compressed descriptor: host offset 0x1fffffff00000005 is out of range [0, 2^53-1]",
  });
  // 2^53 - 1 itself is fine.
  assert.deepStrictEqual(
    decodeCompressedDescriptor(0x001f_ffff, 0xffff_ffff, 9),
    { hostOffset: Number.MAX_SAFE_INTEGER, sectors: 1 },
  );
});

Deno.test("encodeCompressedDescriptor() rejects offsets that do not fit in x bits", () => {
  for (let bits = 18; bits <= 21; bits++) {
    const x = 70 - bits;
    assertRangeError(
      () =>
        encodeCompressedDescriptor({ hostOffset: 2 ** x, sectors: 1 }, bits),
      `Cannot encode compressed descriptor: host offset ${
        2 ** x
      } is out of range [0, 2^${x})`,
    );
  }
  for (const bad of [2 ** 53, -1, 1.5, NaN]) {
    assertRangeError(
      () => encodeCompressedDescriptor({ hostOffset: bad, sectors: 1 }, 9),
      `Cannot encode compressed descriptor: host offset ${bad} is out of range [0, 2^53)`,
    );
  }
});

Deno.test("encodeCompressedDescriptor() rejects sector counts outside [1, max]", () => {
  for (let bits = 9; bits <= 21; bits++) {
    const max = maxCompressedSectors(bits);
    for (const bad of [0, max + 1, 1.5, -1]) {
      assertRangeError(
        () => encodeCompressedDescriptor({ hostOffset: 0, sectors: bad }, bits),
        `Cannot encode compressed descriptor: sector count ${bad} is out of range [1, ${max}]`,
      );
    }
  }
});

Deno.test("compressedRange() runs from the offset to the end of the last sector", () => {
  assert.deepStrictEqual(compressedRange({ hostOffset: 0x10000, sectors: 1 }), {
    offset: 0x10000,
    length: 512,
  });
  assert.deepStrictEqual(compressedRange({ hostOffset: 0x10100, sectors: 2 }), {
    offset: 0x10100,
    length: 768,
  });
  assert.deepStrictEqual(compressedRange({ hostOffset: 0x101ff, sectors: 1 }), {
    offset: 0x101ff,
    length: 1,
  });
  assert.deepStrictEqual(
    compressedRange({ hostOffset: 2 ** 45 + 3, sectors: 8192 }),
    { offset: 2 ** 45 + 3, length: 8192 * 512 - 3 },
  );
});

Deno.test("compressedRange() covers a descriptor whose sectors cross a host cluster boundary", () => {
  for (let bits = 9; bits <= 21; bits++) {
    const cs = 2 ** bits;
    // Start 100 bytes before the end of host cluster 5, spill into cluster 6.
    const hostOffset = 6 * cs - 100;
    const length = 300;
    const sectors = sectorsFor(hostOffset, length);
    assert.strictEqual(sectors, 2);
    const [hi, lo] = encodeCompressedDescriptor({ hostOffset, sectors }, bits);
    const d = decodeCompressedDescriptor(hi, lo, bits);
    const r = compressedRange(d);
    assert.strictEqual(r.offset, hostOffset);
    assert.strictEqual(r.length, 100 + 512);
    assert.strictEqual(Math.floor(r.offset / cs), 5);
    assert.strictEqual(Math.floor((r.offset + r.length - 1) / cs), 6);
    assert.ok(r.offset + r.length >= hostOffset + length);
  }
});

Deno.test("sectorsFor() counts the 512-byte sectors a payload touches", () => {
  assert.strictEqual(sectorsFor(0, 1), 1);
  assert.strictEqual(sectorsFor(0, 512), 1);
  assert.strictEqual(sectorsFor(0, 513), 2);
  assert.strictEqual(sectorsFor(511, 1), 1);
  assert.strictEqual(sectorsFor(511, 2), 2);
  assert.strictEqual(sectorsFor(1000, 100), 2);
  assert.strictEqual(sectorsFor(0x10000, 65536), 128);
  assert.strictEqual(sectorsFor(0x10001, 65536), 129);
});

Deno.test("sectorsFor() and compressedRange() agree: the range covers the payload and ends within its last sector", () => {
  const rand = prng(5);
  for (let i = 0; i < 2000; i++) {
    const hostOffset = randomInt(rand, 2 ** 40);
    const length = 1 + randomInt(rand, 2 * 65536);
    const sectors = sectorsFor(hostOffset, length);
    const r = compressedRange({ hostOffset, sectors });
    assert.strictEqual(r.offset, hostOffset);
    assert.ok(r.length >= length);
    assert.ok(r.length - length < 512);
    assert.strictEqual((r.offset + r.length) % 512, 0);
  }
});
