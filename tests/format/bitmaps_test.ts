import assert from "node:assert";
import {
  BITMAP_FLAGS,
  decodeBitmapTableEntry,
  parseBitmapDirectory,
} from "../../lib/format/bitmaps.ts";
import { assertQcow2Error, setU64 } from "./_util.ts";

interface RawBitmap {
  tableOffset: bigint;
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  extra: number[];
}

/** Builds a bitmap directory the way the spec lays it out. */
function directory(entries: RawBitmap[]): Uint8Array {
  const parts = entries.map((e) => {
    const name = new TextEncoder().encode(e.name);
    const len = Math.ceil((24 + e.extra.length + name.length) / 8) * 8;
    const b = new Uint8Array(len);
    const view = new DataView(b.buffer);
    view.setBigUint64(0, e.tableOffset);
    view.setUint32(8, e.tableSize);
    view.setUint32(12, e.flags);
    b[16] = e.type;
    b[17] = e.granularityBits;
    view.setUint16(18, name.length);
    view.setUint32(20, e.extra.length);
    b.set(e.extra, 24);
    b.set(name, 24 + e.extra.length);
    return b;
  });
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

Deno.test("BITMAP_FLAGS has the spec's in_use, auto and extra_data_compatible bits", () => {
  assert.deepStrictEqual(BITMAP_FLAGS, {
    IN_USE: 1,
    AUTO: 2,
    EXTRA_DATA_COMPATIBLE: 4,
  });
});

Deno.test("parseBitmapDirectory() reads every field of consecutive, padded entries", () => {
  const bytes = directory([
    {
      tableOffset: 0x9_0000n,
      tableSize: 1,
      flags: BITMAP_FLAGS.AUTO,
      type: 1,
      granularityBits: 16,
      name: "b0",
      extra: [],
    },
    {
      tableOffset: 0x1_0000_0000n,
      tableSize: 0x1234,
      flags: BITMAP_FLAGS.IN_USE | BITMAP_FLAGS.EXTRA_DATA_COMPATIBLE,
      type: 1,
      granularityBits: 9,
      name: "bitmäp with a longer name",
      extra: [1, 2, 3, 4, 5],
    },
    {
      tableOffset: 0n,
      tableSize: 0,
      flags: 0,
      type: 1,
      granularityBits: 31,
      name: "x",
      extra: [],
    },
  ]);
  // 24 + 2 -> 32; 24 + 5 + 26 -> 56; 24 + 1 -> 32
  assert.strictEqual(bytes.length, 32 + 56 + 32);
  const dir = parseBitmapDirectory(bytes, 3, 0x8_0000);
  assert.deepStrictEqual(dir, [
    {
      tableOffset: 0x9_0000,
      tableSize: 1,
      flags: 2,
      type: 1,
      granularityBits: 16,
      name: "b0",
      extraData: new Uint8Array(0),
    },
    {
      tableOffset: 0x1_0000_0000,
      tableSize: 0x1234,
      flags: 5,
      type: 1,
      granularityBits: 9,
      name: "bitmäp with a longer name",
      extraData: new Uint8Array([1, 2, 3, 4, 5]),
    },
    {
      tableOffset: 0,
      tableSize: 0,
      flags: 0,
      type: 1,
      granularityBits: 31,
      name: "x",
      extraData: new Uint8Array(0),
    },
  ]);
  assert.deepStrictEqual(parseBitmapDirectory(bytes, 1), dir.slice(0, 1));
  assert.deepStrictEqual(parseBitmapDirectory(new Uint8Array(0), 0), []);
});

Deno.test("parseBitmapDirectory() rejects entries that run past the directory", () => {
  const one: RawBitmap = {
    tableOffset: 0x9_0000n,
    tableSize: 1,
    flags: 2,
    type: 1,
    granularityBits: 16,
    name: "abc",
    extra: [],
  };
  const bytes = directory([one]);
  assertQcow2Error(() => parseBitmapDirectory(bytes, 2, 0x1_0000), {
    code: "BAD_EXTENSION",
    message:
      "Cannot parse bitmap directory: entry 1 at 0x10020 runs past the directory",
    offset: 0x1_0020,
  });
  // The name runs past the end.
  assertQcow2Error(() => parseBitmapDirectory(bytes.subarray(0, 26), 1, 0), {
    code: "BAD_EXTENSION",
    message:
      "Cannot parse bitmap directory: entry 0 at 0x0 runs past the directory",
  });
  // Fixed part cut short.
  assertQcow2Error(() => parseBitmapDirectory(bytes.subarray(0, 23), 1, 0), {
    code: "BAD_EXTENSION",
  });
});

Deno.test("parseBitmapDirectory() rejects a bitmap table offset at or above 2^53", () => {
  const bytes = directory([{
    tableOffset: 1n << 55n,
    tableSize: 1,
    flags: 0,
    type: 1,
    granularityBits: 16,
    name: "b",
    extra: [],
  }]);
  assertQcow2Error(() => parseBitmapDirectory(bytes, 1, 0x40000), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot parse bitmap directory: bitmap_table_offset 0x80000000000000 is out of range [0, 2^53-1]",
    field: "bitmap_table_offset",
    offset: 0x40000,
  });
});

Deno.test("decodeBitmapTableEntry() reads the cluster offset and the all-ones bit", () => {
  const t = new Uint8Array(32);
  setU64(t, 0, 0n);
  setU64(t, 8, 1n);
  setU64(t, 16, 0x8001_0000n);
  setU64(t, 24, 0x00ff_ffff_ffff_fe00n);
  assert.deepStrictEqual(decodeBitmapTableEntry(t, 0), {
    offset: 0,
    allOnes: false,
    reserved: false,
  });
  assert.deepStrictEqual(decodeBitmapTableEntry(t, 1), {
    offset: 0,
    allOnes: true,
    reserved: false,
  });
  assert.deepStrictEqual(decodeBitmapTableEntry(t, 2), {
    offset: 0x8001_0000,
    allOnes: false,
    reserved: false,
  });
  assert.deepStrictEqual(decodeBitmapTableEntry(t, 3), {
    offset: 0xff_ffff_ffff_fe00,
    allOnes: false,
    reserved: false,
  });
  // Bit 0 is reserved once there is an offset, as bits 1-8 and 56-63 are:
  // the offset still decodes, and the entry says so.
  setU64(t, 0, (0x7fn << 56n) | 0x3_0000n | 0x1ffn);
  assert.deepStrictEqual(decodeBitmapTableEntry(t, 0), {
    offset: 0x3_0000,
    allOnes: false,
    reserved: true,
  });
  setU64(t, 0, 0x3_0001n);
  assert.strictEqual(decodeBitmapTableEntry(t, 0).reserved, true);
});
