// Internal snapshots, persistent bitmaps and the dirty bit, as QEMU leaves
// them: every snapshot (by name and by ID) and the active state must
// expand to what qemu-img convert reads.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertQcow2Rejects,
  bytesOf,
  headerOf,
  patternFile,
  qemuImg,
  qemuIoAll,
  qemuMap,
  qemuRaw,
  runIn,
  scribble,
  verifyImage,
} from "./_helpers.ts";
import { openImage } from "../../lib/reader/open.ts";
import type { Qcow2Image } from "../../lib/reader/qcow2/image.ts";
import { INCOMPAT } from "../../lib/format/constants.ts";

const MiB = 1024 * 1024;

/** Offset of a cluster no image layer has allocated (for `write -c`). */
async function freeCluster(img: string, cs: number): Promise<number> {
  for (const e of (await qemuMap(img)).reverse()) {
    const start = Math.ceil(e.start / cs) * cs;
    if (!e.present && start + cs <= e.start + e.length) return start;
  }
  throw new Error(`no free cluster in ${img}`);
}

for (
  const [opts, cs] of [
    ["compat=1.1,cluster_size=65536", 65536],
    ["compat=0.10,cluster_size=4096", 4096],
    ["extended_l2=on,cluster_size=32768,compression_type=zstd", 32768],
    ["compat=1.1,cluster_size=512,refcount_bits=8", 512],
  ] as const
) {
  qemuTest(`qemu snapshots: taken between writes (${opts})`, async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    const size = 2 * MiB;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", opts, img, String(size));
    const pat = await patternFile(dir.path, cs);
    await qemuIoAll(img, scribble(size, cs, pat, { compress: true }));
    await qemuImg("snapshot", "-c", "first", img);
    // Overwrite, zero and discard some of what the snapshot holds.
    await qemuIoAll(img, [
      `write -q -P 0xa1 0 ${2 * cs + 100}`,
      `write -q -z ${size / 2} ${4 * cs}`,
      `discard -q ${size / 4} ${4 * cs}`,
      `write -q -c -P 0xa2 ${await freeCluster(img, cs)} ${cs}`,
    ]);
    await qemuImg("snapshot", "-c", "second", img);
    // Grow the disk: the older snapshots keep their smaller size. (QEMU
    // cannot resize v2 images with snapshots.)
    const v2 = opts.includes("0.10");
    const grown = v2 ? size : size + 3 * MiB;
    if (!v2) await qemuImg("resize", "-q", img, String(grown));
    await qemuIoAll(img, [
      `write -q -P 0xa3 ${v2 ? size - 6000 : size - 1000} 5000`,
      `write -q -s ${pat} ${grown - MiB} ${3 * cs + 7}`,
    ]);
    await qemuImg("snapshot", "-c", "third", img);
    await qemuIoAll(img, [`write -q -P 0xa4 ${cs / 2} ${cs}`]);

    await using active = await openImage(img) as Qcow2Image;
    assert.deepStrictEqual(
      active.snapshots.map((s) => [s.id, s.name]),
      [["1", "first"], ["2", "second"], ["3", "third"]],
    );
    const now = await verifyImage(img, dir.path);
    assert.strictEqual(now.virtualSize, grown);

    const first = await verifyImage(img, dir.path, {
      snapshotName: "first",
      open: { snapshot: "first" },
    });
    assert.strictEqual(first.virtualSize, size);
    // By ID, compared with qemu's snapshot.id selection.
    const second = await verifyImage(img, dir.path, {
      snapshotId: "2",
      open: { snapshot: "2" },
      seed: 2,
    });
    assert.strictEqual(second.virtualSize, size);
    // The `-l ID_OR_NAME` form.
    const third = await verifyImage(img, dir.path, {
      snapshotParam: "third",
      open: { snapshot: "third" },
      seed: 3,
    });
    assert.strictEqual(third.virtualSize, grown);
    // They really differ (the test would be vacuous otherwise).
    assert.notDeepStrictEqual(first.expected, second.expected);
    assert.notDeepStrictEqual(third.expected, now.expected);
  });
}

qemuTest("qemu snapshots: deleted snapshots and IDs vs names", async () => {
  await using dir = await tempDir();
  const img = join(dir.path, "img.qcow2");
  await qemuImg("create", "-q", "-f", "qcow2", img, String(MiB));
  await qemuIoAll(img, [`write -q -P 1 0 4096`]);
  await qemuImg("snapshot", "-c", "a", img);
  await qemuIoAll(img, [`write -q -P 2 0 4096`]);
  // A snapshot whose name is another snapshot's ID: the ID wins.
  await qemuImg("snapshot", "-c", "1", img);
  await qemuIoAll(img, [`write -q -P 3 0 4096`]);
  await qemuImg("snapshot", "-c", "b", img);
  await qemuImg("snapshot", "-d", "a", img);
  await qemuIoAll(img, [`write -q -P 4 0 4096`]);

  await using image = await openImage(img) as Qcow2Image;
  assert.deepStrictEqual(
    image.snapshots.map((s) => [s.id, s.name]),
    [["2", "1"], ["3", "b"]],
  );
  await verifyImage(img, dir.path, {
    snapshotId: "2",
    open: { snapshot: "2" },
  });
  const byName = await verifyImage(img, dir.path, {
    snapshotName: "1",
    open: { snapshot: "1" },
  });
  assert.strictEqual(byName.expected[0], 2);
  await verifyImage(img, dir.path, {
    snapshotName: "b",
    open: { snapshot: "b" },
  });
  // ID 1 was deleted, and no snapshot is named "a" any more.
  for (const missing of ["a", "4", "first"]) {
    await assertQcow2Rejects(
      () => openImage(img, { snapshot: missing }),
      "BAD_SNAPSHOT",
      `"${missing}"`,
    );
  }
});

qemuTest(
  "qemu snapshots: a snapshot of an overlay with a backing file",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.qcow2");
    const top = join(dir.path, "top.qcow2");
    const size = MiB;
    await qemuImg("create", "-q", "-f", "qcow2", base, String(size));
    const pat = await patternFile(dir.path, 1);
    await qemuIoAll(base, [`write -q -s ${pat} 0 ${size}`]);
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      base,
      "-F",
      "qcow2",
      top,
    );
    await qemuIoAll(top, [`write -q -P 5 4096 4096`]);
    await qemuImg("snapshot", "-c", "s", top);
    await qemuIoAll(top, [`write -q -z 0 65536`, `write -q -P 6 70000 100`]);
    const s = await verifyImage(top, dir.path, {
      snapshotName: "s",
      open: { snapshot: "s" },
    });
    assert.strictEqual(s.expected[4096], 5);
    assert.ok(s.extents.some((e) => e.depth === 1), "backing shows through");
    await verifyImage(top, dir.path);
  },
);

qemuTest("qemu bitmaps: persistent dirty bitmaps", async () => {
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
  await qemuImg("bitmap", "--add", img, "bm0");
  await qemuImg("bitmap", "--add", "-g", "65536", img, "bm1");
  const pat = await patternFile(dir.path, 2);
  await qemuIoAll(img, scribble(size, 4096, pat, { compress: true }));
  await qemuImg("bitmap", "--disable", img, "bm1");
  await qemuIoAll(img, [`write -q -P 9 ${MiB} 8192`]);
  const header = await headerOf(img);
  const ext = header.extensions.find((e) => e.kind === "bitmaps");
  assert.ok(ext && ext.kind === "bitmaps" && ext.nbBitmaps === 2);
  assert.strictEqual(header.autoclearFeatures & 1n, 1n, "bitmaps bit");
  const v = await verifyImage(img, dir.path);
  assert.ok(bytesOf(v.extents, "data") > 0);
});

qemuTest(
  "qemu dirty bit: image left open with lazy refcounts",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    const size = 2 * MiB;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "lazy_refcounts=on,cluster_size=4096",
      img,
      String(size),
    );
    const pat = await patternFile(dir.path, 3);
    await qemuIoAll(img, scribble(size, 4096, pat, { compress: true }));
    // Kill qemu-io after writing: it never clears the dirty bit.
    const killed = await new Deno.Command("qemu-io", {
      args: [
        "-f",
        "qcow2",
        "-c",
        `write -q -P 0x42 ${MiB + 5} 70000`,
        "-c",
        `write -q -z 0 8192`,
        "-c",
        "sigraise 9",
        img,
      ],
      stdout: "null",
      stderr: "null",
    }).output();
    assert.strictEqual(killed.success, false);
    const header = await headerOf(img);
    assert.strictEqual(
      header.incompatibleFeatures & INCOMPAT.DIRTY,
      INCOMPAT.DIRTY,
      "the dirty bit is set",
    );
    const v = await verifyImage(img, dir.path);
    assert.strictEqual(v.expected[MiB + 5], 0x42);
    // qemu-img agrees once it has repaired the refcounts.
    await runIn(undefined, "qemu-img", ["check", "-q", "-r", "all", img]);
    assert.strictEqual(
      (await headerOf(img)).incompatibleFeatures & INCOMPAT.DIRTY,
      0n,
    );
    assert.deepStrictEqual(await qemuRaw(img, dir.path), v.expected);
  },
);

qemuTest(
  "qemu snapshots: table at the very end of the file, last entry unpadded",
  async () => {
    // Regression: QEMU pads snapshot entries to 8 bytes only between them,
    // so after `snapshot -c` the file can end mid-padding of the last
    // entry; reading the padded length failed as truncated.
    await using dir = await tempDir();
    for (const name of ["first", "a", "snapshot-with-a-longer-name"]) {
      const img = join(dir.path, `${name}.qcow2`);
      await qemuImg("create", "-q", "-f", "qcow2", img, String(MiB));
      await qemuIoAll(img, [`write -q -P 1 0 65536`]);
      await qemuImg("snapshot", "-c", name, img);
      const header = await headerOf(img);
      const { size } = await Deno.stat(img);
      const unpadded = 40 + 24 + 1 + name.length; // fixed, extra, id "1", name
      assert.strictEqual(header.snapshotsOffset + unpadded, size);
      await verifyImage(img, dir.path, {
        snapshotName: name,
        open: { snapshot: name },
      });
      await verifyImage(img, dir.path);
    }
  },
);
