// compareImages against qemu-img compare: identical and different pairs,
// raw against qcow2, backing chains, zero clusters against holes and
// written zeros, and different sizes (the extra part must read as zeros).

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import { makeImage, pattern, qemuImg, qemuStatus } from "./_helpers.ts";
import { compareImages, formatCompareResult } from "../../lib/tools/mod.ts";
import { IoError } from "../../mod.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Compares with both tools; returns our result after checking QEMU's text and status. */
async function sameAsQemu(a: string, b: string) {
  const ours = await compareImages(a, b);
  const q = await qemuStatus("compare", a, b);
  assert.strictEqual(formatCompareResult(ours), q.stdout, `compare ${a} ${b}`);
  assert.strictEqual(
    ours.identical ? 0 : 1,
    q.code,
    `exit status of compare ${a} ${b}`,
  );
  return ours;
}

async function writeRaw(path: string, bytes: Uint8Array, size = bytes.length) {
  await Deno.writeFile(path, bytes);
  if (size !== bytes.length) {
    using f = await Deno.open(path, { write: true });
    await f.truncate(size);
  }
  return path;
}

qemuTest(
  "compare: raw and qcow2 pairs, identical and different, match qemu-img",
  async () => {
    await using dir = await tempDir();
    const data = pattern(3 * MiB, 1);
    data.fill(0, MiB, 2 * MiB);
    const a = await writeRaw(join(dir.path, "a.raw"), data);
    const changed = data.slice();
    changed[1234567] ^= 0xff;
    const b = await writeRaw(join(dir.path, "b.raw"), changed);
    const qa = join(dir.path, "a.qcow2");
    const qbc = join(dir.path, "b-compressed.qcow2");
    await qemuImg("convert", "-O", "qcow2", a, qa);
    await qemuImg("convert", "-c", "-O", "qcow2", b, qbc);

    assert.strictEqual((await sameAsQemu(a, qa)).identical, true);
    assert.strictEqual((await sameAsQemu(qa, a)).identical, true);
    const diff = await sameAsQemu(a, b);
    assert.strictEqual(diff.offset, 1234432, "start of the differing sector");
    assert.strictEqual((await sameAsQemu(qa, qbc)).offset, 1234432);
    assert.strictEqual((await sameAsQemu(qbc, b)).identical, true);
    assert.strictEqual((await sameAsQemu(a, a)).identical, true);
  },
);

qemuTest(
  "compare: zero clusters, holes and written zeros match qemu-img",
  async () => {
    await using dir = await tempDir();
    const empty = await makeImage(join(dir.path, "empty.qcow2"), "2M");
    const zeroed = await makeImage(join(dir.path, "zeroed.qcow2"), "2M", [], [
      "write -q -z 0 1M",
      "write -q -P 0 1M 1M",
    ]);
    const hole = await writeRaw(
      join(dir.path, "hole.raw"),
      new Uint8Array(0),
      2 * MiB,
    );
    const zeros = await writeRaw(
      join(dir.path, "zeros.raw"),
      new Uint8Array(2 * MiB),
    );
    const one = new Uint8Array(2 * MiB);
    one[700001] = 1;
    const dot = await writeRaw(join(dir.path, "dot.raw"), one);
    for (
      const [x, y] of [[empty, hole], [empty, zeros], [zeroed, hole], [
        zeros,
        zeroed,
      ]]
    ) {
      assert.strictEqual((await sameAsQemu(x, y)).identical, true, `${x} ${y}`);
    }
    for (
      const [x, y] of [[empty, dot], [dot, zeroed], [hole, dot], [dot, zeros]]
    ) {
      assert.strictEqual((await sameAsQemu(x, y)).offset, 699904, `${x} ${y}`);
    }
  },
);

qemuTest(
  "compare: different sizes, odd sizes and backing chains match qemu-img",
  async () => {
    await using dir = await tempDir();
    const data = pattern(MiB + 1000, 2);
    const short = await writeRaw(join(dir.path, "short.raw"), data);
    const padded = await writeRaw(join(dir.path, "padded.raw"), data, 3 * MiB);
    const tail = new Uint8Array(3 * MiB);
    tail.set(data);
    tail[2 * MiB + 77] = 5;
    const dirty = await writeRaw(join(dir.path, "dirty.raw"), tail);
    let r = await sameAsQemu(short, padded);
    assert.strictEqual(r.identical, true);
    assert.notStrictEqual(r.sizeA, r.sizeB);
    r = await sameAsQemu(dirty, short);
    assert.strictEqual(r.offset, 2 * MiB);

    // A chain: raw base, qcow2 overlay larger than its base.
    const base = await writeRaw(join(dir.path, "base.raw"), pattern(MiB, 3));
    const top = await makeImage(join(dir.path, "top.qcow2"), "2M", [
      `backing_file=${base}`,
      "backing_fmt=raw",
    ], [
      "write -q -P 0x31 64k 64k",
    ]);
    const flat = join(dir.path, "flat.raw");
    await qemuImg("convert", "-O", "raw", top, flat);
    assert.strictEqual((await sameAsQemu(top, flat)).identical, true);
    assert.strictEqual((await sameAsQemu(top, base)).offset, 65536);
    assert.strictEqual((await sameAsQemu(base, top)).offset, 65536);
  },
);

Deno.test("compare: in-memory images and errors", async () => {
  const raw = new Uint8Array(128 * KiB);
  raw.fill(9, 4096, 9000);
  const other = raw.slice();
  other[8999] = 0;
  assert.deepStrictEqual(await compareImages(raw, other), {
    identical: false,
    offset: 8704,
    sizeA: 128 * KiB,
    sizeB: 128 * KiB,
  });
  await assert.rejects(
    compareImages(raw, "/nonexistent/disk.qcow2"),
    (e: Error) =>
      e instanceof IoError && e.code === "NOT_FOUND" &&
      e.message === "Cannot open image /nonexistent/disk.qcow2: no such file",
  );
});
