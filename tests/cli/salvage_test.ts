// `convert --salvage` judged by qemu-img 7.2 on real corrupt images: a
// compressed cluster whose payload does not decompress, a data cluster and
// an L2 table past the end of the file. Both tools convert the same file
// to raw; the bytes must be identical, and both exit codes and (where
// qemu-img warns) the warning lines must agree.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, runStatus, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { openImage } from "../../lib/reader/open.ts";
import { imageChunks } from "../../lib/reader/segments.ts";

const MiB = 1 << 20;
const CLUSTER = 65536;

/** 1 MiB that compresses: each 64 KiB cluster a run of its own byte. */
function disk(): Uint8Array {
  const bytes = new Uint8Array(MiB);
  for (let c = 0; c < MiB / CLUSTER; c++) {
    const at = c * CLUSTER;
    bytes.fill(c + 1, at, at + 60000);
    for (let i = 0; i < 1000; i++) bytes[at + i * 60] = (i * 7 + c) & 0xff;
  }
  return bytes;
}

/** The L1 table's offset and the L2 table's (entry 0) of a qcow2 file. */
function tables(file: Uint8Array): { l1: number; l2: number } {
  const v = new DataView(file.buffer, file.byteOffset);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
  return { l1, l2 };
}

/** Writes guest cluster 1's L2 entry, or L1 entry 0, as `value`. */
function setEntry(file: Uint8Array, at: number, value: bigint): void {
  new DataView(file.buffer, file.byteOffset).setBigUint64(at, value);
}

/** A 1 MiB qcow2 image made by qemu-img, compressed or not, and corrupted. */
async function corruptImage(
  dir: string,
  name: string,
  compressed: boolean,
  corrupt: (file: Uint8Array) => void,
): Promise<string> {
  const raw = join(dir, `${name}.src.raw`);
  await Deno.writeFile(raw, disk());
  const path = join(dir, `${name}.qcow2`);
  await qemuImg(
    "convert",
    ...(compressed ? ["-c"] : []),
    "-f",
    "raw",
    "-O",
    "qcow2",
    raw,
    path,
  );
  const file = await Deno.readFile(path);
  corrupt(file);
  await Deno.writeFile(path, file);
  return path;
}

/** Guest cluster 1's compressed payload overwritten with bytes that do not inflate. */
function badPayload(file: Uint8Array): void {
  const { l2 } = tables(file);
  const entry = new DataView(file.buffer, file.byteOffset).getBigUint64(
    l2 + 8,
  );
  assert.ok(entry & (1n << 62n), "cluster 1 is compressed");
  const offset = Number(entry & ((1n << 54n) - 1n)); // 64 KiB clusters
  file.fill(0xff, offset, offset + 64);
}

/** Guest cluster 2 pointed at 4 GiB, far past the end of the file. */
function dataPastEnd(file: Uint8Array): void {
  setEntry(file, tables(file).l2 + 16, (1n << 63n) | 0x100000000n);
}

/** L1 entry 0 pointed at 4 GiB: its L2 table lies past the end of the file. */
function l2PastEnd(file: Uint8Array): void {
  setEntry(file, tables(file).l1, (1n << 63n) | 0x100000000n);
}

/** Both tools' `convert ARGS SRC DST.raw`: exit codes, stderr lines, output bytes. */
async function both(dir: string, src: string, args: string[]) {
  const ours = join(dir, "ours.raw");
  const theirs = join(dir, "theirs.raw");
  await Deno.remove(ours).catch(() => {});
  await Deno.remove(theirs).catch(() => {});
  const q = await runStatus("qemu-img", [
    "convert",
    ...args,
    "-O",
    "raw",
    src,
    theirs,
  ]);
  const o = await runCli(["convert", ...args, "-O", "raw", src, ours]);
  const lines = (text: string, prefix: string) =>
    text.split("\n").filter((l) => l !== "").map((l) =>
      l.startsWith(prefix) ? l.slice(prefix.length) : l
    );
  const read = (p: string) => Deno.readFile(p).catch(() => undefined);
  return {
    qemu: {
      code: q.code,
      lines: lines(q.stderr, "qemu-img: "),
      bytes: await read(theirs),
    },
    ours: {
      code: o.code,
      lines: lines(o.stderr, "qcow2pipe: "),
      bytes: await read(ours),
    },
  };
}

qemuTest(
  "convert --salvage: a compressed cluster that does not inflate reads as zeros, with qemu-img's warnings and exit code",
  async () => {
    await using dir = await tempDir();
    const src = await corruptImage(dir.path, "payload", true, badPayload);
    const r = await both(dir.path, src, ["--salvage"]);
    assert.strictEqual(r.qemu.code, 0);
    assert.strictEqual(r.ours.code, 0);
    assert.ok(r.qemu.bytes && r.ours.bytes);
    assert.deepStrictEqual(r.ours.bytes, r.qemu.bytes);
    // One line per 512-byte sector of the cluster, offsets in the guest.
    assert.strictEqual(r.qemu.lines.length, CLUSTER / 512);
    assert.deepStrictEqual(r.ours.lines, r.qemu.lines);
    assert.strictEqual(
      r.ours.lines[0],
      "warning: error while reading offset 65536: Input/output error",
    );
    // The clusters around it are read, not zeroed with it.
    assert.ok(r.ours.bytes.subarray(0, CLUSTER).some((b) => b !== 0));
    assert.ok(r.ours.bytes.subarray(2 * CLUSTER).some((b) => b !== 0));
    assert.ok(
      r.ours.bytes.subarray(CLUSTER, 2 * CLUSTER).every((b) => b === 0),
    );
  },
);

qemuTest(
  "convert --salvage -q: no warnings, the same bytes, exit 0",
  async () => {
    await using dir = await tempDir();
    const src = await corruptImage(dir.path, "payload", true, badPayload);
    const r = await both(dir.path, src, ["--salvage", "-q"]);
    assert.deepStrictEqual([r.ours.code, r.qemu.code], [0, 0]);
    assert.deepStrictEqual([r.ours.lines, r.qemu.lines], [[], []]);
    assert.deepStrictEqual(r.ours.bytes, r.qemu.bytes);
  },
);

qemuTest(
  "convert without --salvage: a compressed cluster that does not inflate fails in one line naming the image and where",
  async () => {
    await using dir = await tempDir();
    const src = await corruptImage(dir.path, "payload", true, badPayload);
    const r = await both(dir.path, src, []);
    assert.strictEqual(r.qemu.code, 1);
    assert.strictEqual(r.ours.code, 1);
    assert.strictEqual(r.ours.lines.length, 1);
    assert.match(
      r.ours.lines[0],
      /^Cannot read guest offset 0x10000 of .*payload\.qcow2: zlib cluster at host offset 0x[0-9a-f]+/,
    );
    assert.strictEqual(r.ours.bytes, undefined, "no output is left behind");
  },
);

for (
  const [what, corrupt, warned] of [
    ["a data cluster past the end of the file", dataPastEnd, 131072],
    ["an L2 table past the end of the file", l2PastEnd, 0],
  ] as const
) {
  qemuTest(
    `convert --salvage: ${what} reads as zeros as in qemu-img, with one warning for the range`,
    async () => {
      await using dir = await tempDir();
      const src = await corruptImage(dir.path, "past", false, corrupt);
      const r = await both(dir.path, src, ["--salvage"]);
      assert.deepStrictEqual([r.ours.code, r.qemu.code], [0, 0]);
      assert.ok(r.qemu.bytes);
      assert.deepStrictEqual(r.ours.bytes, r.qemu.bytes);
      // qemu-img reads zeros past the end of the file and says nothing; we
      // say once what we read as zeros, and why.
      assert.deepStrictEqual(r.qemu.lines, []);
      assert.strictEqual(r.ours.lines.length, 1);
      assert.match(
        r.ours.lines[0],
        new RegExp(
          `^warning: error while reading offset ${warned}: Input/output error \\(\\d+ bytes read as zeros: Cannot read image .*past\\.qcow2: .*past the end of the file`,
        ),
      );
      // Without --salvage we keep refusing (qemu-img reads zeros).
      const plain = await runCli(["convert", "-O", "raw", src, `${src}.raw`]);
      assert.strictEqual(plain.code, 1);
      assert.match(
        plain.stderr,
        /^qcow2pipe: Cannot read image .*past\.qcow2: .*past the end of the file \(\d+ bytes\)\n$/,
      );
    },
  );
}

qemuTest("convert -C --salvage is refused in qemu-img's words", async () => {
  await using dir = await tempDir();
  const src = await corruptImage(dir.path, "payload", true, badPayload);
  const r = await both(dir.path, src, ["-C", "--salvage"]);
  assert.strictEqual(r.ours.code, 1);
  assert.deepStrictEqual(r.ours.lines, r.qemu.lines);
  assert.deepStrictEqual(r.ours.lines, [
    "Cannot use copy offloading in salvaging mode",
  ]);
});

qemuTest(
  "salvage: every bad compressed cluster reads as zeros, each reported once, in guest order",
  async () => {
    // Every L2 entry of a 64 MiB image points at the one bad payload: each
    // cluster fails and reads as zeros, one report each, in order.
    await using dir = await tempDir();
    const src = await corruptImage(dir.path, "payload", true, (file) => {
      badPayload(file);
      const { l2 } = tables(file);
      const v = new DataView(file.buffer, file.byteOffset);
      const bad = v.getBigUint64(l2 + 8);
      for (let i = 0; i < MiB / CLUSTER; i++) v.setBigUint64(l2 + 8 * i, bad);
    });
    await using image = await openImage(src);
    const reports: [number, number, string][] = [];
    let zeros = 0;
    const chunks = imageChunks(image, {
      chunkSize: 4 * CLUSTER,
      salvage: (offset, length, _err, cause) =>
        reports.push([offset, length, cause]),
    });
    for await (const c of chunks) {
      if (c instanceof Uint8Array) {
        assert.ok(c.every((b) => b === 0));
        zeros += c.length;
      } else zeros += c.zeros;
    }
    assert.strictEqual(zeros, MiB);
    assert.deepStrictEqual(
      reports,
      Array.from(
        { length: MiB / CLUSTER },
        (_, i) => [i * CLUSTER, CLUSTER, "read"],
      ),
    );
  },
);

qemuTest(
  "convert --salvage of several SRCs: warnings at offsets in their own SRC, as qemu-img's; the same bytes",
  async () => {
    await using dir = await tempDir();
    const good = await corruptImage(dir.path, "good", false, () => {});
    const bad = await corruptImage(dir.path, "payload", true, badPayload);
    const ours = join(dir.path, "ours.raw");
    const theirs = join(dir.path, "theirs.raw");
    const args = ["convert", "--salvage", "-O", "raw", good, bad];
    const q = await runStatus("qemu-img", [...args, theirs]);
    const o = await runCli([...args, ours]);
    assert.deepStrictEqual([o.code, q.code], [0, 0]);
    assert.deepStrictEqual(
      await Deno.readFile(ours),
      await Deno.readFile(theirs),
    );
    assert.strictEqual(
      o.stderr.replaceAll("qcow2pipe: ", "qemu-img: "),
      q.stderr,
    );
    assert.match(
      q.stderr,
      /^qemu-img: warning: error while reading offset 65536:/,
    );
  },
);

qemuTest(
  "convert --salvage -c -O qcow2: the image written reads as qemu-img's salvaged raw",
  async () => {
    await using dir = await tempDir();
    const src = await corruptImage(dir.path, "payload", true, badPayload);
    const theirs = join(dir.path, "theirs.raw");
    const ours = join(dir.path, "ours.qcow2");
    await runStatus("qemu-img", [
      "convert",
      "--salvage",
      "-q",
      "-O",
      "raw",
      src,
      theirs,
    ]);
    const o = await runCli([
      "convert",
      "--salvage",
      "-q",
      "-c",
      "-O",
      "qcow2",
      src,
      ours,
    ]);
    assert.strictEqual(o.code, 0);
    assert.strictEqual(o.stderr, "");
    assert.match(
      await qemuImg("compare", "-f", "qcow2", "-F", "raw", ours, theirs),
      /Images are identical/,
    );
  },
);

Deno.test("convert --salvage --sparsify is refused in one line", async () => {
  const r = await runCli([
    "convert",
    "--salvage",
    "--sparsify",
    "a.raw",
    "b.raw",
  ]);
  assert.strictEqual(r.code, 1);
  assert.strictEqual(
    r.stderr,
    "qcow2pipe: Cannot convert: --salvage does not go with --sparsify (which needs SRC's filesystems readable)\n",
  );
});
