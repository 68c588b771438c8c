// `convert -n` into an existing qcow2 image (writeIntoQcow2): the same
// command run by qemu-img and by our CLI on copies of one target; qemu-img
// judges the results (check clean, compare identical, the same map, the
// same bytes where QEMU's allocator is followed exactly).

import assert from "node:assert";
import { join } from "node:path";
import {
  createQcow2,
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuIo,
  qemuTest,
  tempDir,
} from "../_qemu.ts";
import { assertOneLineError, runCli } from "./_cli.ts";
import { writeIntoQcow2 } from "../../lib/writer/write_into.ts";
import { BytesImageFile } from "../../lib/tools/repair.ts";
import { blankQcow2 } from "../../lib/writer/blank_image.ts";
import { openImage } from "../../lib/reader/open.ts";

/** qemu-img's `map --output=json` with host offsets left out. */
async function guestMap(path: string): Promise<string> {
  return (await qemuImg("map", "--output=json", path))
    .replaceAll(/, "offset": \d+/g, "");
}

/**
 * Runs `convert -n ARGS SRC TARGET` with qemu-img and with ours, each on
 * its own copy of TARGET; ours must pass qemu-img check and read as
 * `reference` (SRC, or qemu-img's copy when TARGET reaches past SRC).
 * Returns both copies' paths and our copy's check.
 */
async function bothInto(
  dir: string,
  target: string,
  src: string,
  { args = [], reference = "src" }: {
    args?: string[];
    reference?: "src" | "theirs";
  } = {},
): Promise<[string, string, Awaited<ReturnType<typeof qemuCheckClean>>]> {
  const theirs = join(dir, "theirs.qcow2");
  const ours = join(dir, "ours.qcow2");
  await Deno.copyFile(target, theirs);
  await Deno.copyFile(target, ours);
  await qemuImg("convert", "-n", "-O", "qcow2", ...args, src, theirs);
  const r = await runCli(["convert", "-n", "-O", "qcow2", ...args, src, ours]);
  assert.strictEqual(r.code, 0, r.stderr);
  const check = await qemuCheckClean(ours);
  await qemuCompareIdentical(
    reference === "src" ? src : theirs,
    ours,
    ["qcow2", "qcow2"],
  );
  return [theirs, ours, check];
}

/** A source image with data, written zeros and holes. */
async function source(dir: string, size: string): Promise<string> {
  const src = await createQcow2(dir, "src.qcow2", size);
  await qemuIo(src, [
    "write -q -P 0x11 0 200k",
    "write -q -z 256k 64k",
    "write -q -P 0x22 1M 64k",
  ]);
  return src;
}

qemuTest(
  "convert -n: into a new version 3 or 2 image, as qemu-img writes it",
  async () => {
    for (const compat of ["1.1", "0.10"]) {
      await using dir = await tempDir();
      const src = await source(dir.path, "4M");
      const target = await createQcow2(
        dir.path,
        "t.qcow2",
        "4M",
        "-o",
        `compat=${compat}`,
      );
      const [theirs, ours] = await bothInto(dir.path, target, src);
      assert.deepStrictEqual(
        await Deno.readFile(ours),
        await Deno.readFile(theirs),
        `compat=${compat}: the same bytes as qemu-img's`,
      );
    }
  },
);

qemuTest(
  "convert -n: over a backing file, zeros hide it (zero entries in v3, zero clusters in v2)",
  async () => {
    for (const compat of ["1.1", "0.10"]) {
      await using dir = await tempDir();
      const src = await source(dir.path, "4M");
      const base = await createQcow2(dir.path, "base.qcow2", "4M");
      await qemuIo(base, ["write -q -P 0x77 0 4M"]);
      const target = await createQcow2(
        dir.path,
        "t.qcow2",
        "4M",
        "-o",
        `compat=${compat}`,
        "-b",
        base,
        "-F",
        "qcow2",
      );
      const [theirs, ours] = await bothInto(dir.path, target, src);
      assert.strictEqual(await guestMap(ours), await guestMap(theirs), compat);
    }
  },
);

qemuTest(
  "convert -n: over data, compressed clusters and a larger target; with and without -S 0",
  async () => {
    await using dir = await tempDir();
    const src = await source(dir.path, "2M");
    const target = await createQcow2(dir.path, "t.qcow2", "3M");
    // Data it owns (overwritten in place), compressed clusters (freed),
    // and data past SRC's end (kept).
    await qemuIo(target, [
      "write -q -P 0x33 0 1M",
      "write -c -q -P 0x44 1M 512k",
      "write -q -P 0x55 2M 1M",
    ]);
    for (const args of [[], ["-S", "0"]]) {
      const [theirs, ours] = await bothInto(dir.path, target, src, {
        args,
        reference: "theirs",
      });
      assert.strictEqual(
        await guestMap(ours),
        await guestMap(theirs),
        args.join(" "),
      );
    }
  },
);

qemuTest(
  "convert -n: refcount blocks added and the refcount table moved, as QEMU's allocator does",
  async () => {
    await using dir = await tempDir();
    // 512-byte clusters with 64-bit refcounts: a refcount block covers 64
    // clusters and the table 64 blocks, so 4 MiB of data outgrows both.
    const src = await createQcow2(dir.path, "src.qcow2", "4M");
    await qemuIo(src, ["write -q -P 0x5a 0 4M"]);
    const target = await createQcow2(
      dir.path,
      "t.qcow2",
      "4M",
      "-o",
      "cluster_size=512,refcount_bits=64",
    );
    const [theirs, ours, check] = await bothInto(dir.path, target, src);
    const info = JSON.parse(await qemuImg("info", "--output=json", ours));
    assert.strictEqual(info["cluster-size"], 512);
    assert.strictEqual(
      check["image-end-offset"],
      (await qemuCheckClean(theirs))["image-end-offset"],
      "the image ends where qemu-img's does",
    );
  },
);

qemuTest(
  "convert -n: refused for a smaller target and a target with snapshots, nothing written",
  async () => {
    await using dir = await tempDir();
    const src = await source(dir.path, "4M");
    const small = await createQcow2(dir.path, "small.qcow2", "2M");
    const before = await Deno.readFile(small);
    assertOneLineError(
      await runCli(["convert", "-n", "-O", "qcow2", src, small]),
      /Cannot write into \S+small\.qcow2: the input \(4194304 bytes\) is larger than the image \(2097152 bytes\)/,
    );
    assert.deepStrictEqual(await Deno.readFile(small), before);
    const snap = await createQcow2(dir.path, "snap.qcow2", "4M");
    await qemuImg("snapshot", "-c", "s1", snap);
    assertOneLineError(
      await runCli(["convert", "-n", "-O", "qcow2", src, snap]),
      /Cannot write into \S+snap\.qcow2: it has 1 internal snapshot\(s\)/,
    );
    await qemuCheckClean(snap);
    // -n never writes into an input.
    assertOneLineError(
      await runCli(["convert", "-n", "-O", "qcow2", src, src]),
      /it is the input/,
    );
  },
);

Deno.test("writeIntoQcow2() writes a stream into an image in memory, zero runs as zero entries", async () => {
  const file = new BytesImageFile(blankQcow2({ size: 1 << 20 }));
  const data = new Uint8Array(65536).fill(9);
  const summary = await writeIntoQcow2(
    ReadableStream.from([data, { zeros: 65536 }, data]),
    file,
  );
  assert.deepStrictEqual(summary, {
    guestBytes: 3 * 65536,
    allocatedClusters: 3, // the L2 table and two data clusters
    freedClusters: 0,
  });
  await using image = await openImage(file.bytes());
  const back = await image.readAt(0, 3 * 65536);
  assert.deepStrictEqual(back.subarray(0, 65536), data);
  assert.ok(back.subarray(65536, 2 * 65536).every((b) => b === 0));
  assert.deepStrictEqual(back.subarray(2 * 65536), data);
  const kinds = [];
  for await (const e of image.extents()) kinds.push(e.kind);
  assert.deepStrictEqual(kinds.slice(0, 3), ["data", "zero", "data"]);
});
