import assert from "node:assert";
import { geometryOf, l1SizeFor } from "../../lib/format/geometry.ts";
import { defaultHeader } from "../../lib/format/header.ts";

Deno.test("geometryOf() derives cluster, L2 and refcount sizes for cluster_bits 9 to 21", () => {
  for (let bits = 9; bits <= 21; bits++) {
    for (const order of [0, 4, 6]) {
      const h = defaultHeader({
        size: 0,
        clusterBits: bits,
        refcountOrder: order,
      });
      const cs = 2 ** bits;
      assert.deepStrictEqual(geometryOf(h), {
        clusterBits: bits,
        clusterSize: cs,
        extendedL2: false,
        l2EntrySize: 8,
        l2Entries: cs / 8,
        subclusterSize: cs,
        refcountOrder: order,
        refcountBlockEntries: (cs * 8) / (1 << order),
        dataFile: false,
      });
    }
  }
});

Deno.test("geometryOf() reads extended L2 and external data file from the incompatible bits", () => {
  const h = defaultHeader({ size: 0, clusterBits: 21 });
  h.incompatibleFeatures |= 16n;
  const g = geometryOf(h);
  assert.strictEqual(g.extendedL2, true);
  assert.strictEqual(g.l2EntrySize, 16);
  assert.strictEqual(g.l2Entries, 131072);
  assert.strictEqual(g.subclusterSize, 65536);
  assert.strictEqual(g.dataFile, false);

  const small = defaultHeader({ size: 0, clusterBits: 14 });
  small.incompatibleFeatures |= 16n | 4n;
  const s = geometryOf(small);
  assert.strictEqual(s.subclusterSize, 512);
  assert.strictEqual(s.l2Entries, 1024);
  assert.strictEqual(s.dataFile, true);
});

Deno.test("l1SizeFor() rounds the virtual size up to whole L2 tables", () => {
  // 64 KiB clusters: one L2 table maps 8192 * 64 KiB = 512 MiB.
  const span = 512 * 1024 * 1024;
  assert.strictEqual(l1SizeFor(0, 16, false), 0);
  assert.strictEqual(l1SizeFor(1, 16, false), 1);
  assert.strictEqual(l1SizeFor(span, 16, false), 1);
  assert.strictEqual(l1SizeFor(span + 1, 16, false), 2);
  assert.strictEqual(l1SizeFor(2 ** 30, 16, false), 2);
  // Extended L2 halves what one table maps.
  assert.strictEqual(l1SizeFor(span, 16, true), 2);
  // 512-byte clusters: 64 entries of 512 bytes = 32 KiB per table.
  assert.strictEqual(l1SizeFor(2 ** 30, 9, false), 32768);
  assert.strictEqual(l1SizeFor(2 ** 30, 9, true), 65536);
  // 2 MiB clusters: 262144 entries * 2 MiB = 512 GiB per table.
  assert.strictEqual(l1SizeFor(2 ** 40, 21, false), 2);
  assert.strictEqual(l1SizeFor(2 ** 53 - 512, 21, false), 16384);
});
