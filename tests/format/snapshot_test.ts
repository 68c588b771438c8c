import assert from "node:assert";
import {
  parseSnapshotTable,
  serializeSnapshotEntry,
  SNAPSHOT_FIXED_LENGTH,
  type SnapshotEntry,
  snapshotEntryLength,
} from "../../lib/format/snapshot.ts";
import { assertQcow2Error, setU64, u64At } from "./_util.ts";

/**
 * A snapshot entry; unless `extraData` is given, the 24-byte extra data
 * QEMU writes, holding vmStateSize, diskSize and icount.
 */
function snapshot(partial: Partial<SnapshotEntry> = {}): SnapshotEntry {
  const e: SnapshotEntry = {
    l1TableOffset: 0x5_0000,
    l1Size: 16,
    id: "1",
    name: "base",
    dateSec: 1_700_000_000,
    dateNsec: 123_456_789,
    vmClockNsec: 0x0123_4567_89ab_cdefn,
    vmStateSize: 0,
    vmStateSize32: 0,
    diskSize: 1 << 30,
    icount: -1n,
    extraData: new Uint8Array(24),
    ...partial,
  };
  if (partial.extraData === undefined) {
    const view = new DataView(e.extraData.buffer);
    view.setBigUint64(0, BigInt(e.vmStateSize));
    view.setBigUint64(8, BigInt(e.diskSize ?? 0));
    view.setBigInt64(16, e.icount ?? 0n);
  }
  return e;
}

/** What parseSnapshotTable() gives for `entry` after serialization. */
function normalized(entry: SnapshotEntry): SnapshotEntry {
  return parseSnapshotTable(serializeSnapshotEntry(entry), 1)[0];
}

Deno.test("SNAPSHOT_FIXED_LENGTH is the 40-byte fixed part", () => {
  assert.strictEqual(SNAPSHOT_FIXED_LENGTH, 40);
});

Deno.test("serializeSnapshotEntry() writes every field at the spec's offset", () => {
  const e = snapshot({
    id: "12",
    name: "name",
    vmStateSize: 0x1_0000_0000,
    vmStateSize32: 0,
  });
  const b = serializeSnapshotEntry(e);
  const view = new DataView(b.buffer);
  assert.strictEqual(b.length, 72); // 40 + 24 + 2 + 4 = 70, padded to 72
  assert.strictEqual(u64At(b, 0), 0x5_0000n);
  assert.strictEqual(view.getUint32(8), 16);
  assert.strictEqual(view.getUint16(12), 2);
  assert.strictEqual(view.getUint16(14), 4);
  assert.strictEqual(view.getUint32(16), 1_700_000_000);
  assert.strictEqual(view.getUint32(20), 123_456_789);
  assert.strictEqual(u64At(b, 24), 0x0123_4567_89ab_cdefn);
  assert.strictEqual(view.getUint32(32), 0);
  assert.strictEqual(view.getUint32(36), 24);
  assert.strictEqual(u64At(b, 40), 0x1_0000_0000n); // vm_state_size_large
  assert.strictEqual(u64At(b, 48), 1n << 30n); // disk_size
  assert.strictEqual(view.getBigInt64(56), -1n); // icount
  assert.strictEqual(new TextDecoder().decode(b.subarray(64, 66)), "12");
  assert.strictEqual(new TextDecoder().decode(b.subarray(66, 70)), "name");
  assert.deepStrictEqual([...b.subarray(70)], [0, 0]);
});

Deno.test("parseSnapshotTable() reads back what serializeSnapshotEntry() wrote, byte for byte", () => {
  const entries = [
    snapshot(),
    snapshot({
      id: "2",
      name: "snäpshot ✓",
      vmStateSize: 2 ** 40,
      vmStateSize32: 0,
      icount: 12345n,
    }),
    snapshot({ id: "3", name: "", l1TableOffset: 2 ** 50, l1Size: 0 }),
  ];
  for (const e of entries) {
    const bytes = serializeSnapshotEntry(e);
    assert.strictEqual(bytes.length % 8, 0);
    assert.strictEqual(snapshotEntryLength(bytes, 0), bytes.length);
    const [p] = parseSnapshotTable(bytes, 1);
    assert.deepStrictEqual(p, e);
    assert.deepStrictEqual(serializeSnapshotEntry(p), bytes);
  }
});

Deno.test("parseSnapshotTable() reads consecutive entries of different lengths", () => {
  const entries = [
    snapshot({ id: "1", name: "a" }),
    snapshot({
      id: "22",
      name: "bbbbbbbbb",
      extraData: new Uint8Array(0),
      diskSize: undefined,
      icount: undefined,
    }),
    snapshot({ id: "333", name: "c".repeat(100) }),
  ];
  const parts = entries.map(serializeSnapshotEntry);
  const table = new Uint8Array(parts.reduce((n, p) => n + p.length, 0) + 64);
  let at = 0;
  for (const p of parts) {
    table.set(p, at);
    assert.strictEqual(snapshotEntryLength(table, at), p.length);
    at += p.length;
  }
  const parsed = parseSnapshotTable(table, 3, 0x70000);
  assert.deepStrictEqual(parsed, entries);
  assert.deepStrictEqual(parseSnapshotTable(table, 0), []);
  assert.deepStrictEqual(parseSnapshotTable(table, 2), entries.slice(0, 2));
});

Deno.test("parseSnapshotTable() takes only what the extra data holds (0, 8, 16, 24 and more bytes)", () => {
  // No extra data: vm_state_size is the u32, no disk size or icount.
  const bare = normalized(
    snapshot({
      extraData: new Uint8Array(0),
      vmStateSize: 77,
      vmStateSize32: 77,
      diskSize: 4096,
      icount: 5n,
    }),
  );
  assert.strictEqual(bare.vmStateSize, 77);
  assert.strictEqual(bare.vmStateSize32, 77);
  assert.strictEqual(bare.diskSize, undefined);
  assert.strictEqual(bare.icount, undefined);
  assert.strictEqual(bare.extraData.length, 0);

  // 8 bytes: the 64-bit vm state size only.
  const eight = normalized(
    snapshot({
      extraData: new Uint8Array(8),
      vmStateSize: 2 ** 33,
      vmStateSize32: 0,
    }),
  );
  assert.strictEqual(eight.vmStateSize, 2 ** 33);
  assert.strictEqual(eight.vmStateSize32, 0);
  assert.strictEqual(eight.diskSize, undefined);

  // 16 bytes: plus the disk size, but no icount.
  const sixteen = normalized(snapshot({ extraData: new Uint8Array(16) }));
  assert.strictEqual(sixteen.diskSize, 1 << 30);
  assert.strictEqual(sixteen.icount, undefined);

  // Longer extra data (from a future QEMU) is kept whole.
  const extra = new Uint8Array(40).fill(0xcd);
  const long = snapshot({ extraData: extra, icount: 9n });
  const bytes = serializeSnapshotEntry(long);
  const [p] = parseSnapshotTable(bytes, 1);
  assert.strictEqual(p.extraData.length, 40);
  assert.deepStrictEqual(
    [...p.extraData.subarray(24)],
    new Array(16).fill(0xcd),
  );
  assert.strictEqual(p.icount, 9n);
  assert.strictEqual(p.diskSize, 1 << 30);
  assert.deepStrictEqual(serializeSnapshotEntry(p), bytes);
  // The caller's extraData is not modified by serialization.
  assert.ok(extra.every((b) => b === 0xcd));
});

Deno.test("snapshotEntryLength() sums the fixed part, extra data, id and name, padded to 8", () => {
  const fixed = new Uint8Array(48);
  const view = new DataView(fixed.buffer);
  view.setUint16(8 + 12, 1);
  assert.strictEqual(snapshotEntryLength(fixed, 8), 48);
  view.setUint16(8 + 14, 7);
  assert.strictEqual(snapshotEntryLength(fixed, 8), 48);
  view.setUint16(8 + 14, 8);
  assert.strictEqual(snapshotEntryLength(fixed, 8), 56);
  view.setUint32(8 + 36, 1024);
  assert.strictEqual(snapshotEntryLength(fixed, 8), 40 + 1024 + 16);
});

Deno.test("parseSnapshotTable() rejects a table cut inside an entry's fixed part", () => {
  const one = serializeSnapshotEntry(snapshot());
  const table = new Uint8Array(one.length + 39);
  table.set(one);
  assertQcow2Error(() => parseSnapshotTable(table, 2, 0x1000), {
    code: "BAD_SNAPSHOT",
    message: `Cannot parse snapshot table: snapshot 1 at 0x${
      (0x1000 + one.length).toString(16)
    } is truncated`,
    offset: 0x1000 + one.length,
  });
});

Deno.test("parseSnapshotTable() rejects an entry whose id or name runs past the table", () => {
  const bytes = serializeSnapshotEntry(snapshot({ name: "abcdef" }));
  const cut = bytes.subarray(0, 40 + 24 + 1 + 3);
  assertQcow2Error(() => parseSnapshotTable(cut, 1, 0x2000), {
    code: "BAD_SNAPSHOT",
    message: "Cannot parse snapshot table: snapshot 0 at 0x2000 is truncated",
  });
});

Deno.test("parseSnapshotTable() rejects extra data over QEMU's 1024-byte limit", () => {
  const bytes = new Uint8Array(40 + 1025 + 8);
  new DataView(bytes.buffer).setUint32(36, 1025);
  assertQcow2Error(() => parseSnapshotTable(bytes, 1, 0x3000), {
    code: "BAD_SNAPSHOT",
    message:
      "Cannot parse snapshot table: snapshot 0 extra_data_size 1025 is out of range [0, 1024]",
    field: "extra_data_size",
    offset: 0x3000 + 36,
  });
  new DataView(bytes.buffer).setUint32(36, 1024);
  assert.strictEqual(parseSnapshotTable(bytes, 1)[0].extraData.length, 1024);
});

Deno.test("parseSnapshotTable() rejects 64-bit fields at or above 2^53", () => {
  const bytes = serializeSnapshotEntry(snapshot());
  setU64(bytes, 0, 1n << 53n);
  assertQcow2Error(() => parseSnapshotTable(bytes, 1, 0x100), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot parse snapshot table: l1_table_offset 0x20000000000000 is out of range [0, 2^53-1]",
    field: "l1_table_offset",
    offset: 0x100,
  });
  const b2 = serializeSnapshotEntry(snapshot());
  setU64(b2, 48, 1n << 60n);
  assertQcow2Error(() => parseSnapshotTable(b2, 1, 0x100), {
    code: "OUT_OF_RANGE",
    message:
      "Cannot parse snapshot table: disk_size 0x1000000000000000 is out of range [0, 2^53-1]",
    field: "disk_size",
    offset: 0x100 + 40 + 8,
  });
});
