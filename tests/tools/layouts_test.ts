// info, map and check against qemu-img on images qemu-img and qemu-io make
// in every basic layout: versions 2 and 3, cluster sizes 512 B to 2 MiB,
// refcount widths 1 to 64 bits, zlib and zstd compressed clusters,
// extended L2 entries with subclusters.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertCheckLikeQemu,
  assertInfoLikeQemu,
  assertMapLikeQemu,
  makeImage,
  mixedWrites,
} from "./_helpers.ts";
import { imageInfo, mapImage } from "../../lib/tools/mod.ts";

const MiB = 1024 * 1024;

for (const compat of ["0.10", "1.1"]) {
  for (const cs of [512, 4096, 65536, 2 * MiB]) {
    qemuTest(
      `tools: compat=${compat} cluster_size=${cs} info, map and check match qemu-img`,
      async () => {
        await using dir = await tempDir();
        const size = cs === 2 * MiB ? 16 * MiB : 2 * MiB + 3 * 512;
        const img = await makeImage(
          join(dir.path, "img.qcow2"),
          String(size),
          [`compat=${compat}`, `cluster_size=${cs}`],
          mixedWrites(size, cs, { compress: true, v2: compat === "0.10" }),
        );
        await assertInfoLikeQemu(img);
        await assertMapLikeQemu(img);
        const check = await assertCheckLikeQemu(img);
        assert.strictEqual(check.exitCode, 0);
        assert.ok(check.compressedClusters >= 1, "compressed clusters counted");
        const map = await mapImage(img);
        assert.ok(
          map.some((e) => e.compressed && e.data && e.offset === undefined),
        );
        assert.ok(map.some((e) => e.data && e.offset !== undefined));
        const info = await imageInfo(img);
        assert.strictEqual(info.clusterSize, cs);
        assert.strictEqual(info.qcow2?.compat, compat);
      },
    );
  }
}

qemuTest("tools: refcount_bits 1 to 64 match qemu-img", async () => {
  await using dir = await tempDir();
  for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
    const img = await makeImage(
      join(dir.path, `rb${bits}.qcow2`),
      "3M",
      [`refcount_bits=${bits}`, "cluster_size=4096"],
      mixedWrites(3 * MiB, 4096, { compress: true }),
    );
    await assertInfoLikeQemu(img);
    await assertMapLikeQemu(img);
    const check = await assertCheckLikeQemu(img);
    assert.strictEqual(check.exitCode, 0, `refcount_bits=${bits}`);
    assert.strictEqual((await imageInfo(img)).qcow2?.refcountBits, bits);
  }
});

qemuTest("tools: zstd compressed clusters match qemu-img", async () => {
  await using dir = await tempDir();
  const img = await makeImage(
    join(dir.path, "zstd.qcow2"),
    "4M",
    ["compression_type=zstd"],
    [
      "write -q -c -P 0x12 0 64k",
      "write -q -c -P 0x13 64k 64k",
      "write -q -P 0x14 128k 512",
      "write -q -c -P 0x15 1M 64k",
    ],
  );
  await assertInfoLikeQemu(img);
  await assertMapLikeQemu(img);
  const check = await assertCheckLikeQemu(img);
  assert.strictEqual(check.compressedClusters, 3);
  assert.strictEqual((await imageInfo(img)).qcow2?.compressionType, "zstd");
});

for (const cs of [16384, 65536, 2 * MiB]) {
  qemuTest(
    `tools: extended L2 with ${cs}-byte clusters matches qemu-img`,
    async () => {
      await using dir = await tempDir();
      const sc = cs / 32;
      const img = await makeImage(
        join(dir.path, "ext.qcow2"),
        String(8 * cs),
        ["extended_l2=on", `cluster_size=${cs}`],
        [
          `write -q -P 0x21 ${sc} ${sc}`,
          `write -q -P 0x22 ${3 * sc} ${2 * sc}`,
          `write -q -z ${6 * sc} ${sc}`,
          `write -q -z -u ${cs} ${cs}`,
          `write -q -c -P 0x23 ${2 * cs} ${cs}`,
          `write -q -P 0x24 ${4 * cs} ${cs}`,
          `write -q -z ${4 * cs + sc} ${sc}`,
          `discard -q ${5 * cs} ${cs}`,
        ],
      );
      await assertInfoLikeQemu(img);
      await assertMapLikeQemu(img);
      assert.strictEqual((await assertCheckLikeQemu(img)).exitCode, 0);
      const map = await mapImage(img);
      // Unallocated subclusters of an allocated cluster keep a host offset.
      assert.ok(map.some((e) => !e.present && e.offset !== undefined));
    },
  );
}
