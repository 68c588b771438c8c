// The reverse pipeline against QEMU: every on-disk layout qemu-img and
// qemu-io can make (versions, cluster sizes, refcount widths,
// preallocation, lazy refcounts, odd virtual sizes) must expand to exactly
// the bytes of `qemu-img convert -O raw`.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  bytesOf,
  headerOf,
  patchFile,
  patternFile,
  qemuImg,
  qemuIoAll,
  qemuRaw,
  scribble,
  spotCheckReadAt,
  u64,
  verifyImage,
} from "./_helpers.ts";
import { openImage } from "../../lib/reader/open.ts";
import { imageInfo } from "../../lib/tools/info.ts";
import { expandSegments, expandStream } from "./_helpers.ts";
import { CodecPool } from "../../lib/codec/pool.ts";

const KiB = 1024;
const MiB = 1024 * 1024;

/** Disk size per cluster size: enough clusters to span several L2 tables. */
const SIZE_FOR: Record<number, number> = {
  512: 1 * MiB,
  1024: 1 * MiB + 5 * KiB,
  4096: 2 * MiB,
  65536: 4 * MiB,
  [2 * MiB]: 16 * MiB,
};

for (const compat of ["0.10", "1.1"]) {
  for (const cs of [512, 1024, 4096, 65536, 2 * MiB]) {
    qemuTest(
      `qemu layout: compat=${compat} cluster_size=${cs} with mixed writes`,
      async () => {
        await using dir = await tempDir();
        const img = join(dir.path, "img.qcow2");
        const size = SIZE_FOR[cs];
        await qemuImg(
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          `compat=${compat},cluster_size=${cs}`,
          img,
          String(size),
        );
        const pat = await patternFile(dir.path, cs);
        await qemuIoAll(img, scribble(size, cs, pat, { compress: true }));
        const header = await headerOf(img);
        assert.strictEqual(header.version, compat === "0.10" ? 2 : 3);
        assert.strictEqual(2 ** header.clusterBits, cs);
        const v = await verifyImage(img, dir.path, { seed: cs });
        assert.ok(bytesOf(v.extents, "data") > 0, "has data clusters");
        assert.ok(
          bytesOf(v.extents, "compressed") >= cs,
          "has compressed clusters",
        );
        if (compat === "1.1") {
          assert.ok(bytesOf(v.extents, "zero") > 0, "has zero clusters");
        }
      },
    );
  }
}

for (const bits of [1, 2, 4, 8, 16, 32, 64]) {
  qemuTest(`qemu layout: refcount_bits=${bits}`, async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    const size = 3 * MiB;
    const cs = 4096;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `refcount_bits=${bits},cluster_size=${cs}`,
      img,
      String(size),
    );
    const pat = await patternFile(dir.path, bits);
    await qemuIoAll(img, scribble(size, cs, pat, { compress: true }));
    const header = await headerOf(img);
    assert.strictEqual(2 ** header.refcountOrder, bits);
    const v = await verifyImage(img, dir.path, { seed: bits });
    assert.ok(bytesOf(v.extents, "compressed") > 0);
  });
}

for (const prealloc of ["metadata", "falloc", "full"]) {
  for (const compat of ["0.10", "1.1"]) {
    qemuTest(
      `qemu layout: preallocation=${prealloc} compat=${compat}`,
      async () => {
        await using dir = await tempDir();
        const img = join(dir.path, "img.qcow2");
        const size = 2 * MiB + 3 * 65536;
        await qemuImg(
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          `preallocation=${prealloc},compat=${compat}`,
          img,
          String(size),
        );
        // Untouched preallocated clusters must read as zeros.
        const before = await verifyImage(img, dir.path);
        assert.ok(before.expected.every((b) => b === 0));
        assert.strictEqual(
          bytesOf(before.extents, "data"),
          size,
          "preallocated clusters are allocated",
        );
        const pat = await patternFile(dir.path, 7);
        await qemuIoAll(img, scribble(size, 65536, pat));
        await verifyImage(img, dir.path, { seed: 9 });
      },
    );
  }
}

qemuTest("qemu layout: lazy_refcounts=on, cleanly closed", async () => {
  await using dir = await tempDir();
  const img = join(dir.path, "img.qcow2");
  const size = 3 * MiB;
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "lazy_refcounts=on,cluster_size=16k",
    img,
    String(size),
  );
  const pat = await patternFile(dir.path, 3);
  await qemuIoAll(img, scribble(size, 16384, pat, { compress: true }));
  const header = await headerOf(img);
  assert.strictEqual(header.compatibleFeatures & 1n, 1n, "lazy refcounts bit");
  assert.strictEqual(header.incompatibleFeatures & 1n, 0n, "clean");
  await verifyImage(img, dir.path);
});

for (
  const [size, cs] of [
    [1000000, 65536],
    [65537, 512],
    [65537, 4096],
    [65537, 2 * MiB],
    [1000000, 2 * MiB],
    [5 * MiB + 512, 65536],
  ]
) {
  qemuTest(
    `qemu layout: virtual size ${size} with cluster_size=${cs}`,
    async () => {
      await using dir = await tempDir();
      const img = join(dir.path, "img.qcow2");
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `cluster_size=${cs}`,
        img,
        String(size),
      );
      // QEMU rounds the size up to a whole sector.
      const rounded = Math.ceil(size / 512) * 512;
      const header = await headerOf(img);
      assert.strictEqual(header.size, rounded);
      const pat = await patternFile(dir.path, size);
      await qemuIoAll(img, scribble(rounded, cs, pat, { compress: true }));
      const v = await verifyImage(img, dir.path, { seed: size });
      assert.strictEqual(v.virtualSize, rounded);
    },
  );
}

qemuTest(
  "qemu layout: virtual size not a multiple of 512 (patched header) reads whole sectors, as qemu-img convert does",
  async () => {
    // QEMU never writes such a size (it rounds up on create) and counts
    // whole sectors on open: the disk is the header size rounded down.
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    const cs = 65536;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `cluster_size=${cs}`,
      img,
      String(1000448),
    );
    const pat = await patternFile(dir.path, 11);
    await qemuIoAll(img, scribble(1000448, cs, pat, { compress: true }));
    const full = await qemuRaw(img, dir.path);
    for (const odd of [1000000, 999999, 983041, 1000]) {
      await patchFile(img, 24, u64(odd));
      await using pool = new CodecPool({ workers: 2 });
      await using image = await openImage(img);
      const sectors = Math.floor(odd / 512) * 512;
      assert.strictEqual(image.virtualSize, sectors);
      const want = await qemuRaw(img, dir.path);
      assert.strictEqual(want.length, sectors, "qemu-img's own expansion");
      assert.deepStrictEqual(want, full.subarray(0, sectors));
      assert.deepStrictEqual(await expandStream(image, pool), want);
      assert.deepStrictEqual(
        await expandSegments(image, { chunkSize: 4096 }),
        want,
      );
      await spotCheckReadAt(image, want, sectors);
      assert.strictEqual((await imageInfo(img)).virtualSize, sectors);
    }
  },
);

qemuTest("qemu layout: empty and zero-sized images", async () => {
  await using dir = await tempDir();
  for (const [size, opts] of [[0, "compat=1.1"], [4 * MiB, "compat=0.10"]]) {
    const img = join(dir.path, `img-${size}.qcow2`);
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      opts as string,
      img,
      String(size),
    );
    const v = await verifyImage(img, dir.path);
    assert.strictEqual(v.virtualSize, size);
    assert.strictEqual(bytesOf(v.extents, "unallocated"), size);
  }
});

qemuTest("qemu layout: a tiny L2 cache (constant eviction)", async () => {
  await using dir = await tempDir();
  const img = join(dir.path, "img.qcow2");
  const size = 1 * MiB;
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "cluster_size=512",
    img,
    String(size),
  );
  const pat = await patternFile(dir.path, 21);
  await qemuIoAll(img, scribble(size, 512, pat, { compress: true }));
  for (const cacheBytes of [0, 512, 1536]) {
    await verifyImage(img, dir.path, {
      open: { cacheBytes },
      seed: cacheBytes,
    });
  }
});

qemuTest("qemu layout: qemu-img amend and convert variants", async () => {
  await using dir = await tempDir();
  const img = join(dir.path, "img.qcow2");
  const size = 2 * MiB;
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "cluster_size=4096",
    img,
    String(size),
  );
  const pat = await patternFile(dir.path, 31);
  await qemuIoAll(img, scribble(size, 4096, pat, { compress: true }));
  const original = await verifyImage(img, dir.path);
  // Downgrade to v2: zero clusters become something v2 can express.
  await qemuImg("amend", "-q", "-o", "compat=0.10", img);
  assert.strictEqual((await headerOf(img)).version, 2);
  const v2 = await verifyImage(img, dir.path, { seed: 2 });
  assert.deepStrictEqual(v2.expected, original.expected);
  // Back to v3 with 64-bit refcounts (the refcount structures are rebuilt).
  await qemuImg("amend", "-q", "-o", "compat=1.1,refcount_bits=64", img);
  assert.strictEqual((await headerOf(img)).refcountOrder, 6);
  await verifyImage(img, dir.path, { seed: 3 });

  // convert -S 0: every cluster allocated, zeros included.
  const full = join(dir.path, "full.qcow2");
  await qemuImg("convert", "-S", "0", "-O", "qcow2", img, full);
  const f = await verifyImage(full, dir.path, { seed: 4 });
  assert.deepStrictEqual(f.expected, original.expected);
  assert.strictEqual(bytesOf(f.extents, "data"), size);
  // convert to v2 with compression and preallocated metadata elsewhere.
  const v2c = join(dir.path, "v2c.qcow2");
  await qemuImg("convert", "-c", "-O", "qcow2", "-o", "compat=0.10", img, v2c);
  const c = await verifyImage(v2c, dir.path, { seed: 5 });
  assert.deepStrictEqual(c.expected, original.expected);
});
