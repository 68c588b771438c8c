// The qcow2 reader reads L2 tables into the buffers its cache let go of,
// and compare reads into buffers it reuses: a walk in progress keeps its
// own copy of its table whatever other walks load meanwhile, and a reused
// buffer never shows what it held before.

import assert from "node:assert";
import { join } from "node:path";
import { LruCache } from "../../lib/io/lru.ts";
import { openImage } from "../../mod.ts";
import { readPastEnd } from "../../lib/reader/read.ts";
import { qemuTest, tempDir } from "../_qemu.ts";
import { makeImage, qemuIo } from "../tools/_helpers.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
/** Guest bytes one L2 table of 64 KiB clusters maps. */
const TABLE_SPAN = 512 * MiB;

Deno.test("LruCache() hands values the budget pushes out to onEvict, not replaced ones", () => {
  const evicted: string[] = [];
  const cache = new LruCache<number, string>(2, (v) => evicted.push(v));
  cache.set(1, "a", 1);
  cache.set(2, "b", 1);
  cache.set(1, "a2", 1); // replaced under its key: not evicted
  assert.deepStrictEqual(evicted, []);
  cache.get(2);
  cache.set(3, "c", 1); // 1 is the least recently used
  assert.deepStrictEqual(evicted, ["a2"]);
  assert.strictEqual(cache.get(1), undefined);
  assert.strictEqual(cache.get(2), "b");
});

qemuTest(
  "qcow2 reader: a walk keeps its table while other reads recycle the cache's buffers",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "tables.qcow2");
    // A different pattern of clusters in each of 12 tables' ranges.
    const writes: string[] = [];
    for (let t = 0; t < 12; t++) {
      for (let c = 0; c <= t; c++) {
        writes.push(
          `write -P ${t + 1} ${t * TABLE_SPAN + c * 3 * 64 * KiB} 64k`,
        );
      }
    }
    await makeImage(img, `${12 * 512}M`, [], writes);
    // A cache of one table: every other table loaded evicts it.
    await using image = await openImage(img, { cacheBytes: 64 * KiB });
    const all = async () =>
      (await Array.fromAsync(image.extents(0, image.virtualSize))).map((e) =>
        `${e.offset}+${e.length}:${e.kind}`
      );
    const expected = await all();
    assert.ok(expected.length > 24, "extents in every table");

    // A walk stops in the middle of table 5, where reads load every
    // other table (each evicting the one before and reusing its buffer),
    // then goes on.
    const walk = image.extents(0, image.virtualSize);
    const seen: string[] = [];
    for (;;) {
      const next = await walk.next();
      assert.ok(!next.done);
      seen.push(`${next.value.offset}+${next.value.length}:${next.value.kind}`);
      if (next.value.offset >= 5 * TABLE_SPAN + 64 * KiB) break;
    }
    for (let t = 11; t >= 0; t--) {
      const bytes = await image.readAt(t * TABLE_SPAN, 64 * KiB);
      assert.strictEqual(bytes[0], t + 1, `table ${t}'s first cluster`);
    }
    for await (const e of walk) seen.push(`${e.offset}+${e.length}:${e.kind}`);
    assert.deepStrictEqual(seen, expected);
    assert.deepStrictEqual(await all(), expected, "a fresh walk after them");
  },
);

qemuTest(
  "readPastEnd() into a reused buffer: holes, zero clusters and the end read as zeros",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "holes.qcow2");
    await makeImage(img, "1M", [], [
      "write -P 7 0 64k",
      "write -P 8 192k 64k",
    ]);
    await qemuIo(img, ["write -z 192k 4k"]);
    await using image = await openImage(img);
    const buffer = new Uint8Array(2 * MiB).fill(0xee);
    const got = await readPastEnd(image, 0, 1536 * KiB, buffer);
    assert.strictEqual(got.buffer, buffer.buffer, "read in place");
    const expected = new Uint8Array(1536 * KiB);
    expected.set(await image.readAt(0, MiB));
    assert.deepStrictEqual(got, expected);
    assert.strictEqual(got[64 * KiB], 0, "a hole after data");
    assert.strictEqual(got[192 * KiB], 0, "a zeroed range");
    assert.strictEqual(got[196 * KiB], 8);
    assert.strictEqual(got[MiB + 5], 0, "past the end of the disk");
  },
);
