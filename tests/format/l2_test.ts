import assert from "node:assert";
import {
  decodeL2Entry,
  encodeL2Entry,
  l2Entries,
  type L2Entry,
  type L2EntryInit,
  l2EntrySize,
  type L2Layout,
  subclusterType,
} from "../../lib/format/l2.ts";
import { assertQcow2Error, assertRangeError, setU64, u64At } from "./_util.ts";

const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;

function std(clusterBits = 16, dataFile = false): L2Layout {
  return { clusterBits, extendedL2: false, dataFile };
}
function ext(clusterBits = 16, dataFile = false): L2Layout {
  return { clusterBits, extendedL2: true, dataFile };
}

function entry(partial: Partial<L2Entry> & Pick<L2Entry, "type">): L2Entry {
  return {
    hostOffset: 0,
    copied: false,
    reserved: false,
    allocMask: 0,
    zeroMask: 0,
    ...partial,
  };
}

Deno.test("l2EntrySize() is 8 bytes, or 16 with extended L2", () => {
  assert.strictEqual(l2EntrySize(false), 8);
  assert.strictEqual(l2EntrySize(true), 16);
});

Deno.test("l2Entries() is cluster_size / entry size for cluster_bits 9 to 21", () => {
  for (let bits = 9; bits <= 21; bits++) {
    assert.strictEqual(l2Entries(bits, false), 2 ** (bits - 3));
    assert.strictEqual(l2Entries(bits, true), 2 ** (bits - 4));
  }
  assert.strictEqual(l2Entries(9, false), 64);
  assert.strictEqual(l2Entries(21, true), 131072);
});

Deno.test("encodeL2Entry() and decodeL2Entry() round-trip every cluster type with 512 B, 64 KiB and 2 MiB clusters", () => {
  for (const bits of [9, 16, 21]) {
    const layout = std(bits);
    const cs = 2 ** bits;
    const table = new Uint8Array(8 * 8);
    const cases: [L2EntryInit, L2Entry][] = [
      [{ type: "unallocated" }, entry({ type: "unallocated" })],
      [{ type: "zero-plain" }, entry({ type: "zero-plain" })],
      [
        { type: "zero-alloc", hostOffset: 5 * cs },
        entry({ type: "zero-alloc", hostOffset: 5 * cs }),
      ],
      [
        { type: "zero-alloc", hostOffset: 0x8000_0000, copied: true },
        entry({ type: "zero-alloc", hostOffset: 0x8000_0000, copied: true }),
      ],
      [
        { type: "normal", hostOffset: 3 * cs },
        entry({ type: "normal", hostOffset: 3 * cs }),
      ],
      [
        { type: "normal", hostOffset: 2 ** 52, copied: true },
        entry({ type: "normal", hostOffset: 2 ** 52, copied: true }),
      ],
      [
        { type: "compressed", hostOffset: 7 * cs + 123, sectors: 2 },
        entry({
          type: "compressed",
          hostOffset: 7 * cs + 123,
          compressed: { hostOffset: 7 * cs + 123, sectors: 2 },
        }),
      ],
    ];
    for (const [init, want] of cases) {
      table.fill(0xee);
      encodeL2Entry(table, 3, init, layout);
      assert.deepStrictEqual(decodeL2Entry(table, 3, layout), want);
      // Neighbouring entries untouched.
      assert.ok(table.subarray(0, 24).every((b) => b === 0xee));
      assert.ok(table.subarray(32).every((b) => b === 0xee));
    }
  }
});

Deno.test("encodeL2Entry() sets the spec's bits for each standard cluster type", () => {
  const t = new Uint8Array(8);
  const layout = std();
  encodeL2Entry(t, 0, { type: "unallocated" }, layout);
  assert.strictEqual(u64At(t, 0), 0n);
  encodeL2Entry(t, 0, { type: "zero-plain" }, layout);
  assert.strictEqual(u64At(t, 0), 1n);
  encodeL2Entry(t, 0, { type: "zero-alloc", hostOffset: 0x50000 }, layout);
  assert.strictEqual(u64At(t, 0), 0x50001n);
  encodeL2Entry(
    t,
    0,
    { type: "zero-alloc", hostOffset: 0x50000, copied: true },
    layout,
  );
  assert.strictEqual(u64At(t, 0), COPIED | 0x50001n);
  encodeL2Entry(
    t,
    0,
    { type: "normal", hostOffset: 0x1_8000_0000, copied: true },
    layout,
  );
  assert.strictEqual(u64At(t, 0), COPIED | 0x1_8000_0000n);
  encodeL2Entry(
    t,
    0,
    { type: "compressed", hostOffset: 0x50200, sectors: 4 },
    layout,
  );
  assert.strictEqual(u64At(t, 0), COMPRESSED | (3n << 54n) | 0x50200n);
});

Deno.test("decodeL2Entry() classifies raw entries like qcow2_get_cluster_type()", () => {
  const t = new Uint8Array(8);
  const cases: [bigint, L2Layout, string, number, boolean][] = [
    [0n, std(), "unallocated", 0, false],
    [COPIED, std(), "unallocated", 0, true],
    [1n, std(), "zero-plain", 0, false],
    [COPIED | 1n, std(), "zero-plain", 0, true],
    [0x70001n, std(), "zero-alloc", 0x70000, false],
    [0x70000n, std(), "normal", 0x70000, false],
    [COPIED | 0x70000n, std(), "normal", 0x70000, true],
    [COMPRESSED | 0x70000n, std(), "compressed", 0x70000, false],
    // Bit 62 wins over the zero bit and over COPIED.
    [COPIED | COMPRESSED | 0x70001n, std(), "compressed", 0x70001, true],
  ];
  for (const [raw, layout, type, hostOffset, copied] of cases) {
    setU64(t, 0, raw);
    const e = decodeL2Entry(t, 0, layout);
    assert.strictEqual(e.type, type, `0x${raw.toString(16)}`);
    assert.strictEqual(e.hostOffset, hostOffset);
    assert.strictEqual(e.copied, copied);
    assert.strictEqual(e.allocMask, 0);
    assert.strictEqual(e.zeroMask, 0);
  }
});

Deno.test("decodeL2Entry() treats offset 0 with COPIED as a normal cluster only with an external data file", () => {
  const t = new Uint8Array(16);
  for (const layout of [std(16, true), ext(16, true)]) {
    encodeL2Entry(
      t,
      0,
      { type: "normal", hostOffset: 0, copied: true, allocMask: 1 },
      layout,
    );
    const e = decodeL2Entry(t, 0, layout);
    assert.strictEqual(e.type, "normal");
    assert.strictEqual(e.hostOffset, 0);
    assert.strictEqual(e.copied, true);
    assert.strictEqual(subclusterType(e, 0, layout.extendedL2), "normal");
    // Without COPIED, offset 0 is unallocated even with a data file.
    encodeL2Entry(t, 0, { type: "normal", hostOffset: 0 }, layout);
    assert.strictEqual(decodeL2Entry(t, 0, layout).type, "unallocated");
  }
  // Without a data file, offset 0 is unallocated whatever COPIED says.
  setU64(t, 0, COPIED);
  assert.strictEqual(decodeL2Entry(t, 0, std(16, false)).type, "unallocated");
  // The zero flag still wins in data file mode.
  setU64(t, 0, COPIED | 1n);
  assert.strictEqual(decodeL2Entry(t, 0, std(16, true)).type, "zero-plain");
  // Non-zero offsets in the data file are normal clusters.
  setU64(t, 0, COPIED | 0x10000n);
  assert.strictEqual(decodeL2Entry(t, 0, std(16, true)).type, "normal");
});

Deno.test("decodeL2Entry() flags each reserved bit (1-8, 56-61) of a standard descriptor", () => {
  const t = new Uint8Array(8);
  const base = COPIED | 0x40000n;
  for (let bit = 0n; bit < 62n; bit++) {
    setU64(t, 0, base | (1n << bit));
    const e = decodeL2Entry(t, 0, std());
    const reserved = (bit >= 1n && bit <= 8n) || (bit >= 56n && bit <= 61n);
    assert.strictEqual(e.reserved, reserved, `bit ${bit}`);
    if (reserved) {
      assert.strictEqual(e.type, "normal");
      assert.strictEqual(e.hostOffset, 0x40000);
    }
  }
  // Compressed descriptors have no reserved bits of this kind.
  setU64(t, 0, COMPRESSED | (0x3fn << 56n) | 0x1fen);
  assert.strictEqual(decodeL2Entry(t, 0, std(21)).reserved, false);
});

Deno.test("decodeL2Entry() reads extended L2 bitmaps: zero bits in the high half, allocation bits in the low half", () => {
  const layout = ext(16);
  const t = new Uint8Array(32);
  setU64(t, 16, COPIED | 0x90000n);
  setU64(t, 24, 0x0000_00f0_8000_000fn);
  const e = decodeL2Entry(t, 1, layout);
  assert.deepStrictEqual(e, {
    type: "normal",
    hostOffset: 0x90000,
    copied: true,
    reserved: false,
    allocMask: 0x8000_000f,
    zeroMask: 0xf0,
  });
  // Round trip through encodeL2Entry.
  const u = new Uint8Array(32);
  encodeL2Entry(u, 1, {
    type: "normal",
    hostOffset: 0x90000,
    copied: true,
    allocMask: 0x8000_000f,
    zeroMask: 0xf0,
  }, layout);
  assert.deepStrictEqual(u, t);
});

Deno.test("decodeL2Entry() ignores the zero bit (bit 0) with extended L2 entries", () => {
  const layout = ext(16);
  const t = new Uint8Array(16);
  setU64(t, 0, 1n);
  assert.strictEqual(decodeL2Entry(t, 0, layout).type, "unallocated");
  setU64(t, 0, 0x20001n);
  assert.strictEqual(decodeL2Entry(t, 0, layout).type, "normal");
  assert.strictEqual(decodeL2Entry(t, 0, layout).hostOffset, 0x20000);
});

Deno.test("encodeL2Entry() writes extended L2 entries for every cluster type", () => {
  for (const bits of [14, 16, 21]) {
    const layout = ext(bits);
    const cs = 2 ** bits;
    const t = new Uint8Array(48).fill(0x55);
    const check = (
      init: L2EntryInit,
      word: bigint,
      bitmap: bigint,
      type: string,
    ) => {
      encodeL2Entry(t, 1, init, layout);
      assert.strictEqual(u64At(t, 16), word);
      assert.strictEqual(u64At(t, 24), bitmap);
      assert.strictEqual(decodeL2Entry(t, 1, layout).type, type);
      assert.ok(t.subarray(0, 16).every((b) => b === 0x55));
      assert.ok(t.subarray(32).every((b) => b === 0x55));
    };
    const off = BigInt(4 * cs);
    check({ type: "unallocated" }, 0n, 0n, "unallocated");
    check(
      { type: "unallocated", zeroMask: 0x0000_ffff },
      0n,
      0x0000_ffffn << 32n,
      "unallocated",
    );
    check({ type: "zero-plain" }, 0n, 0xffff_ffffn << 32n, "unallocated");
    check(
      { type: "zero-alloc", hostOffset: 4 * cs, copied: true },
      COPIED | off,
      0xffff_ffffn << 32n,
      "normal",
    );
    check(
      { type: "normal", hostOffset: 4 * cs },
      off,
      0xffff_ffffn,
      "normal",
    );
    check(
      {
        type: "normal",
        hostOffset: 4 * cs,
        copied: true,
        allocMask: 0x0000_00ff,
        zeroMask: 0xff00_0000,
      },
      COPIED | off,
      (0xff00_0000n << 32n) | 0xffn,
      "normal",
    );
    check(
      { type: "compressed", hostOffset: 4 * cs + 1000, sectors: 3 },
      COMPRESSED | (2n << BigInt(70 - bits)) | (off + 1000n),
      0n,
      "compressed",
    );
  }
});

Deno.test("subclusterType() classifies non-extended entries as one subcluster", () => {
  const cases: [L2Entry, string][] = [
    [entry({ type: "unallocated" }), "unallocated-plain"],
    [entry({ type: "zero-plain" }), "zero-plain"],
    [entry({ type: "zero-alloc", hostOffset: 0x10000 }), "zero-alloc"],
    [entry({ type: "normal", hostOffset: 0x10000 }), "normal"],
    [entry({ type: "compressed", hostOffset: 0x10000 }), "compressed"],
  ];
  for (const [e, want] of cases) {
    for (const sc of [0, 5, 31]) {
      assert.strictEqual(subclusterType(e, sc, false), want);
    }
  }
});

Deno.test("subclusterType() classifies every subcluster of extended entries like qcow2_get_subcluster_type()", () => {
  const normal = entry({
    type: "normal",
    hostOffset: 0x10000,
    allocMask: 0x8000_00ff,
    zeroMask: 0x7fff_0000,
  });
  for (let sc = 0; sc < 32; sc++) {
    const want = sc < 8 || sc === 31
      ? "normal"
      : sc >= 16
      ? "zero-alloc"
      : "unallocated-alloc";
    assert.strictEqual(subclusterType(normal, sc, true), want, `sc ${sc}`);
  }
  const unalloc = entry({ type: "unallocated", zeroMask: 0x8000_0001 });
  for (let sc = 0; sc < 32; sc++) {
    const want = sc === 0 || sc === 31 ? "zero-plain" : "unallocated-plain";
    assert.strictEqual(subclusterType(unalloc, sc, true), want, `sc ${sc}`);
  }
  const compressed = entry({ type: "compressed", hostOffset: 0x10200 });
  const zeroPlain = entry({ type: "zero-plain" });
  const zeroAlloc = entry({ type: "zero-alloc", hostOffset: 0x10000 });
  for (let sc = 0; sc < 32; sc++) {
    assert.strictEqual(subclusterType(compressed, sc, true), "compressed");
    assert.strictEqual(subclusterType(zeroPlain, sc, true), "zero-plain");
    assert.strictEqual(subclusterType(zeroAlloc, sc, true), "zero-alloc");
  }
});

Deno.test("subclusterType() is 'invalid' for contradictory extended L2 bitmaps", () => {
  // A subcluster both allocated and zero makes the whole cluster invalid.
  for (const bit of [0, 13, 31]) {
    const mask = (2 ** bit) >>> 0;
    const both = entry({
      type: "normal",
      hostOffset: 0x10000,
      allocMask: mask,
      zeroMask: mask,
    });
    for (const sc of [0, 13, 30, 31]) {
      assert.strictEqual(subclusterType(both, sc, true), "invalid");
    }
    // Allocation bits in an unallocated cluster are invalid too.
    const unalloc = entry({ type: "unallocated", allocMask: mask });
    for (const sc of [0, 13, 31]) {
      assert.strictEqual(subclusterType(unalloc, sc, true), "invalid");
    }
  }
  // From raw bytes: all ones in the bitmap of a normal cluster.
  const t = new Uint8Array(16);
  setU64(t, 0, 0x20000n);
  setU64(t, 8, 0xffff_ffff_ffff_ffffn);
  const e = decodeL2Entry(t, 0, ext());
  assert.strictEqual(subclusterType(e, 7, true), "invalid");
});

Deno.test("decodeL2Entry() decodes compressed entries of every cluster size, extended or not", () => {
  for (let bits = 9; bits <= 21; bits++) {
    for (const layout of [std(bits), ext(bits)]) {
      const t = new Uint8Array(32);
      const sectors = 2 ** (bits - 8);
      const hostOffset = 2 ** Math.min(70 - bits, 53) - 1;
      encodeL2Entry(t, 1, { type: "compressed", hostOffset, sectors }, layout);
      const e = decodeL2Entry(t, 1, layout);
      assert.strictEqual(e.type, "compressed");
      assert.strictEqual(e.hostOffset, hostOffset);
      assert.deepStrictEqual(e.compressed, { hostOffset, sectors });
      assert.strictEqual(e.copied, false);
    }
  }
});

Deno.test("decodeL2Entry() rejects a compressed host offset at or above 2^53", () => {
  const t = new Uint8Array(8);
  setU64(t, 0, COMPRESSED | (1n << 53n));
  assertQcow2Error(() => decodeL2Entry(t, 0, std(9)), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot decode compressed descriptor: host offset 0x20000000000000 is out of range [0, 2^53-1]",
  });
});

Deno.test("encodeL2Entry() rejects unaligned or out-of-range offsets", () => {
  const t = new Uint8Array(16);
  for (const type of ["normal", "zero-alloc"] as const) {
    assertRangeError(
      () => encodeL2Entry(t, 0, { type, hostOffset: 0x10100 }, std()),
      "Cannot encode L2 entry: offset 65792 is not a 512-aligned integer in [0, 2^53)",
    );
    assertRangeError(
      () => encodeL2Entry(t, 0, { type, hostOffset: -512 }, ext()),
      "Cannot encode L2 entry: offset -512 is not a 512-aligned integer in [0, 2^53)",
    );
  }
  assertRangeError(
    () =>
      encodeL2Entry(
        t,
        0,
        { type: "compressed", hostOffset: 0, sectors: 257 },
        std(16),
      ),
    "Cannot encode compressed descriptor: sector count 257 is out of range [1, 256]",
  );
});
