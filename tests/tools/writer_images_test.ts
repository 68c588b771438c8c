// info, map and check against qemu-img on images our own writer produces
// (convertToBytes, and convert() into a file), in every cluster size,
// compression and refcount width; and the tools on images in memory.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertCheckLikeQemu,
  assertInfoLikeQemu,
  assertMapLikeQemu,
  makeImage,
  mixedWrites,
  pattern,
} from "./_helpers.ts";
import {
  BytesSource,
  convert,
  convertToBytes,
  openImage,
  OutputFile,
} from "../../mod.ts";
import {
  checkImage,
  compareImages,
  imageInfo,
  mapImage,
} from "../../lib/tools/mod.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A disk with data, zero runs and an unaligned tail. */
function disk(size: number, seed: number): Uint8Array {
  const raw = pattern(size, seed);
  raw.fill(0, Math.floor(size * 0.2), Math.floor(size * 0.45));
  raw.fill(0, Math.floor(size * 0.7), Math.floor(size * 0.75));
  return raw;
}

const MATRIX: {
  clusterSize: number;
  compression: "none" | "zlib" | "zstd";
  refcountBits: number;
}[] = [
  { clusterSize: 512, compression: "none", refcountBits: 16 },
  { clusterSize: 4096, compression: "zlib", refcountBits: 1 },
  { clusterSize: 65536, compression: "zstd", refcountBits: 64 },
  { clusterSize: 65536, compression: "none", refcountBits: 8 },
  { clusterSize: 2 * MiB, compression: "zlib", refcountBits: 32 },
];

for (const options of MATRIX) {
  qemuTest(
    `tools: our writer's image (${options.clusterSize}-byte clusters, ${options.compression}, ${options.refcountBits}-bit refcounts) matches qemu-img`,
    async () => {
      await using dir = await tempDir();
      const size = options.clusterSize === 2 * MiB
        ? 9 * MiB + 4096
        : MiB + 3 * 512;
      const raw = disk(size, options.clusterSize);
      const bytes = await convertToBytes(raw, { ...options, workers: 1 });
      const img = join(dir.path, "ours.qcow2");
      await Deno.writeFile(img, bytes);
      await assertInfoLikeQemu(img);
      await assertMapLikeQemu(img);
      const check = await assertCheckLikeQemu(img);
      assert.strictEqual(check.exitCode, 0);
      if (options.compression !== "none") {
        assert.ok(check.compressedClusters > 0);
      }
      // The same answers from the bytes in memory (no file, no holes).
      const fromBytes = await checkImage(bytes);
      assert.strictEqual(fromBytes.exitCode, 0);
      assert.strictEqual(fromBytes.allocatedClusters, check.allocatedClusters);
      const map = await mapImage(bytes);
      assert.deepStrictEqual(
        map.map(({ file: _f, ...e }) => e),
        (await mapImage(img)).map(({ file: _f, ...e }) => e),
      );
      assert.strictEqual((await imageInfo(bytes)).virtualSize, size);
      const raw2 = join(dir.path, "in.raw");
      await Deno.writeFile(raw2, raw);
      assert.deepStrictEqual(await compareImages(raw2, img), {
        identical: true,
        sizeA: size,
        sizeB: size,
      });
    },
  );
}

qemuTest(
  "tools: convert() of a qemu-made backing chain into a file matches qemu-img",
  async () => {
    await using dir = await tempDir();
    const base = await makeImage(
      join(dir.path, "base.qcow2"),
      "3M",
      [],
      mixedWrites(3 * MiB, 65536, { compress: true }),
    );
    const top = await makeImage(join(dir.path, "top.qcow2"), "4M", [
      `backing_file=${base}`,
      "backing_fmt=qcow2",
    ], [
      "write -q -P 0x71 100k 300k",
      "write -q -z 2M 64k",
    ]);
    const out = join(dir.path, "flat.qcow2");
    {
      await using image = await openImage(top);
      await convert(image, await OutputFile.create(out), {
        compression: "zstd",
        workers: 1,
      });
    }
    await assertInfoLikeQemu(out);
    await assertMapLikeQemu(out);
    assert.strictEqual((await assertCheckLikeQemu(out)).exitCode, 0);
    const same = await compareImages(top, out);
    assert.strictEqual(same.identical, true);
  },
);

Deno.test("tools: a caller's source is left open and read through", async () => {
  const bytes = await convertToBytes(disk(256 * KiB, 7), { workers: 1 });
  let closed = false;
  const inner = new BytesSource(bytes, "mem.qcow2");
  const source = {
    get size() {
      return inner.size;
    },
    name: inner.name,
    read: (o: number, l: number) => inner.read(o, l),
    close() {
      closed = true;
    },
  };
  assert.strictEqual((await imageInfo(source)).filename, "mem.qcow2");
  assert.strictEqual((await checkImage(source)).exitCode, 0);
  const map = await mapImage(source);
  assert.strictEqual(map.reduce((n, e) => n + e.length, 0), 256 * KiB);
  assert.ok(map.every((e) => e.data && e.present));
  assert.strictEqual((await compareImages(source, bytes)).identical, true);
  assert.strictEqual(closed, false);
});
