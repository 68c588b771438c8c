// Extended L2 entries (subcluster allocation): subcluster-sized and
// unaligned writes, zeroes and discards, alone and over backing files, at
// several cluster sizes.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  bytesOf,
  headerOf,
  mixedBytes,
  patternFile,
  qemuImg,
  qemuIoAll,
  scribble,
  verifyImage,
} from "./_helpers.ts";

const MiB = 1024 * 1024;

/** Subcluster-granular writes, zeroes (with and without unmap), discards. */
function subclusterOps(size: number, cs: number, pat: string): string[] {
  const sc = cs / 32;
  const ops: string[] = [];
  const add = (cmd: string, off: number, len: number) => {
    if (off >= size) return;
    len = Math.min(len, size - off);
    if (len > 0) ops.push(`${cmd} ${off} ${len}`);
  };
  for (let c = 0; c * cs < size; c += 3) {
    const base = c * cs;
    add(`write -q -s ${pat}`, base + sc, sc); // one subcluster
    add(
      `write -q -P 0x${(c % 200 + 16).toString(16)}`,
      base + 5 * sc + 17,
      3 * sc,
    ); // unaligned, spans 4
    add(`write -q -z`, base + 6 * sc, sc); // zero inside allocated data
    add(`write -q -z -u`, base + 12 * sc, 2 * sc); // unmap in fresh subclusters
    add(`write -q -z`, base + 20 * sc + 100, 300); // unaligned zeroes
    add(`write -q -s ${pat}`, base + 30 * sc, 4 * sc); // crosses into next cluster
  }
  // Whole clusters: written then discarded, and zeroed.
  add(`write -q -P 0x42`, cs, 2 * cs);
  add(`discard -q`, cs, cs);
  add(`discard -q`, 2 * cs + 4 * sc, 8 * sc);
  add(`write -q -z`, 4 * cs, cs);
  return ops;
}

for (const cs of [16384, 65536, 2 * MiB]) {
  qemuTest(`qemu extended_l2: cluster_size=${cs} subcluster I/O`, async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    const size = cs === 2 * MiB ? 14 * MiB : 40 * cs;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `extended_l2=on,cluster_size=${cs}`,
      img,
      String(size),
    );
    const pat = await patternFile(dir.path, cs);
    await qemuIoAll(img, [
      ...scribble(size, cs, pat, { compress: true }),
      ...subclusterOps(size, cs, pat),
    ]);
    const header = await headerOf(img);
    assert.strictEqual(header.incompatibleFeatures & 16n, 16n, "extended L2");
    const v = await verifyImage(img, dir.path, { seed: cs });
    // Subcluster granularity is visible in the extents.
    const sc = cs / 32;
    assert.ok(
      v.extents.some((e) => e.offset % cs !== 0 && e.offset % sc === 0),
      "extents split at subcluster boundaries",
    );
    assert.ok(bytesOf(v.extents, "zero") > 0);
    assert.ok(bytesOf(v.extents, "compressed") > 0);
  });
}

for (const backingFmt of ["raw", "qcow2"]) {
  qemuTest(
    `qemu extended_l2: subclusters over a ${backingFmt} backing file`,
    async () => {
      await using dir = await tempDir();
      const base = join(dir.path, `base.${backingFmt}`);
      const img = join(dir.path, "top.qcow2");
      const cs = 65536;
      const size = 32 * cs;
      if (backingFmt === "raw") {
        await Deno.writeFile(base, mixedBytes(size, 1234));
      } else {
        await qemuImg(
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          "cluster_size=32768,extended_l2=on",
          base,
          String(size),
        );
        const basePat = await patternFile(dir.path, 4321);
        await qemuIoAll(base, [
          `write -q -s ${basePat} 0 ${size}`,
          ...subclusterOps(size, 32768, basePat),
        ]);
      }
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `extended_l2=on,cluster_size=${cs}`,
        "-b",
        base,
        "-F",
        backingFmt,
        img,
        String(size),
      );
      const pat = await patternFile(dir.path, 99);
      await qemuIoAll(img, subclusterOps(size, cs, pat));
      const v = await verifyImage(img, dir.path);
      // Unallocated subclusters of the top read the backing file.
      assert.ok(
        v.extents.some((e) => e.depth === 1 && e.offset % cs !== 0),
        "backing data shows through unallocated subclusters",
      );
      assert.ok(bytesOf(v.extents, "zero") > 0, "zero subclusters");
    },
  );
}

qemuTest(
  "qemu extended_l2: preallocation=metadata then subcluster I/O",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    const cs = 32768;
    const size = 48 * cs;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `extended_l2=on,cluster_size=${cs},preallocation=metadata`,
      img,
      String(size),
    );
    const pat = await patternFile(dir.path, 8);
    await qemuIoAll(img, subclusterOps(size, cs, pat));
    await verifyImage(img, dir.path);
  },
);
