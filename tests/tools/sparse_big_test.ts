// check, map and compare on large sparse qcow2 images (issue 26's shape:
// a little data in every GiB, internal snapshots), run with our CLI and
// with qemu-img: the same standard output and exit status. Empty L2
// entries are passed over in bulk (bytes/zeros.ts zeroUnits), so these
// cover runs of them that end at a data cluster, at the end of a table,
// at the end of a --max-length, and the 16-byte entries of extended L2.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import { cli, makeImage, qemuImg, qemuIo, qemuStatus } from "./_helpers.ts";

const KiB = 1024;
const GiB = 1024 ** 3;

/** Runs `args` with both tools: the same stdout and exit status. */
async function sameAsQemu(args: string[]): Promise<string> {
  const q = await qemuStatus(...args);
  const ours = await cli(args);
  assert.strictEqual(ours.stdout, q.stdout, `${args.join(" ")}: stdout`);
  assert.strictEqual(
    ours.code,
    q.code,
    `${args.join(" ")}: exit status (ours: ${ours.stderr})`,
  );
  return q.stdout;
}

/**
 * qemu-io writes: 64 KiB in every GiB of `gibs`, at a place that moves
 * through the GiB, and a cluster at the end of every second L2 table's
 * range (512 MiB with 64 KiB clusters).
 */
function everyGib(gibs: number): string[] {
  const writes: string[] = [];
  for (let g = 0; g < gibs; g++) {
    const at = g * GiB + (g % 13) * 192 * KiB;
    writes.push(`write -P ${1 + g % 250} ${at} 64k`);
    if (g % 2 === 1) writes.push(`write -P 7 ${(g + 1) * GiB - 64 * KiB} 64k`);
  }
  return writes;
}

qemuTest(
  "check, map, compare: a sparse 64 GiB image with snapshots as qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "sparse.qcow2");
    await makeImage(img, "64G", [], everyGib(64));
    for (let s = 1; s <= 3; s++) {
      await qemuImg("snapshot", "-c", `s${s}`, img);
    }
    // Written after the snapshots: copied clusters beside shared ones.
    await qemuIo(img, ["write -P 9 5G 128k", "write -z 9G 64k"]);
    const copy = join(dir.path, "copy.qcow2");
    await qemuImg("convert", "-O", "qcow2", img, copy);

    assert.match(await sameAsQemu(["check", img]), /No errors were found/);
    await sameAsQemu(["check", "--output=json", img]);
    const human = await sameAsQemu(["map", img]);
    assert.ok(human.split("\n").length > 64, "a line per data run");
    await sameAsQemu(["map", "--output=json", img]);
    await sameAsQemu(["map", "--output=json", copy]);
    // Ranges that end inside a table, in the middle of empty entries.
    await sameAsQemu([
      "map",
      "--output=json",
      "--start-offset=1000M",
      "--max-length=1100M",
      img,
    ]);
    await sameAsQemu(["map", "--start-offset=3G", "--max-length=300M", img]);

    assert.strictEqual(
      await sameAsQemu(["compare", img, copy]),
      "Images are identical.\n",
    );
    // One byte written deep in a sparse stretch of the copy.
    await qemuIo(copy, ["write -P 1 " + (40 * GiB + 300 * 1024 * KiB) + " 1"]);
    assert.strictEqual(
      await sameAsQemu(["compare", img, copy]),
      `Content mismatch at offset ${40 * GiB + 300 * 1024 * KiB}!\n`,
    );
    // A data cluster gone from the copy: the first one that differs.
    await qemuIo(copy, ["write -z 0 64k"]);
    assert.strictEqual(
      await sameAsQemu(["compare", copy, img]),
      "Content mismatch at offset 0!\n",
    );
  },
);

qemuTest(
  "check, map, compare: sparse 4 TiB and extended L2 images as qemu-img",
  async () => {
    await using dir = await tempDir();
    // A few writes in 4 TiB: tables of nothing but empty entries between.
    const big = join(dir.path, "big.qcow2");
    await makeImage(big, "4T", [], [
      "write -P 1 0 64k",
      "write -P 2 1T 1k",
      "write -P 3 4095G 64k",
      "write -P 4 4194240M 64k",
    ]);
    await sameAsQemu(["check", big]);
    await sameAsQemu(["map", big]);
    await sameAsQemu(["map", "--output=json", big]);
    const copy = join(dir.path, "big-copy.qcow2");
    await qemuImg("convert", "-O", "qcow2", big, copy);
    assert.strictEqual(
      await sameAsQemu(["compare", big, copy]),
      "Images are identical.\n",
    );

    // 16-byte entries: subclusters of 2 KiB, empty entries in runs.
    const ext = join(dir.path, "extended.qcow2");
    await makeImage(ext, "16G", ["extended_l2=on"], [
      ...everyGib(16),
      "write -P 5 3G 2k",
      "write -z 6G 4k",
    ]);
    await qemuImg("snapshot", "-c", "s1", ext);
    await qemuIo(ext, ["write -P 6 2G 6k"]);
    await sameAsQemu(["check", ext]);
    await sameAsQemu(["map", ext]);
    await sameAsQemu(["map", "--output=json", ext]);
    await sameAsQemu([
      "map",
      "--output=json",
      "--start-offset=2047M",
      "--max-length=2050M",
      ext,
    ]);
    const extCopy = join(dir.path, "extended-copy.qcow2");
    await qemuImg("convert", "-O", "qcow2", ext, extCopy);
    assert.strictEqual(
      await sameAsQemu(["compare", ext, extCopy]),
      "Images are identical.\n",
    );
  },
);
