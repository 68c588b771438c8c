// Delta images: only the clusters whose content differs from the backing
// image's view are written; zeroed clusters over backing data become zero
// entries. QEMU judges: check is clean, the delta over its base reads the
// same as the new raw disk, info shows the chain, and the delta is no
// larger than `qemu-img convert -B` makes it.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuIo,
  qemuTest,
  tempDir,
} from "../_qemu.ts";
import { convert } from "../../lib/convert.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { openImage } from "../../lib/reader/open.ts";
import { convertToBytes, Qcow2Writer } from "../../lib/writer/qcow2_writer.ts";
import { BackingDiffStream } from "../../lib/writer/backing_diff_stream.ts";
import { StreamableQcow2Writer } from "../../lib/writer/streamable.ts";
import { MiB, textBytes } from "./_helpers.ts";

const CS = 65536;

interface Case {
  base: string;
  format: "qcow2" | "raw";
  raw: string;
  changed: number;
}

/**
 * A 6 MiB base made by QEMU (data, compressed data, zero clusters, holes)
 * and a new raw disk: the base's bytes with clusters changed, zeroed over
 * base data, written over base holes, and 1 MiB more at the end.
 */
async function makeCase(dir: string, format: "qcow2" | "raw"): Promise<Case> {
  const baseRaw = join(dir, "base.raw");
  const bytes = new Uint8Array(6 * MiB);
  bytes.set(textBytes(3 * MiB, 1), 0);
  bytes.set(textBytes(MiB, 2), 4 * MiB);
  await Deno.writeFile(baseRaw, bytes);
  let base = baseRaw;
  if (format === "qcow2") {
    base = join(dir, "base.qcow2");
    await qemuImg("convert", "-f", "raw", "-O", "qcow2", baseRaw, base);
    await qemuIo(base, ["write -c -P 0x61 5M 64k", "write -z 1M 128k"]);
    await qemuImg("convert", "-f", "qcow2", "-O", "raw", base, baseRaw);
  }
  const now = new Uint8Array(7 * MiB);
  now.set(await Deno.readFile(baseRaw));
  now.fill(0x77, 10 * CS + 100, 10 * CS + 200); // changed inside data
  now.fill(0, 20 * CS, 22 * CS); // zeroed over base data
  now.fill(0x42, 60 * CS, 61 * CS); // written over a base hole
  now.fill(0x43, 6 * MiB + 5, 6 * MiB + 7); // past the base's end
  const raw = join(dir, "new.raw");
  await Deno.writeFile(raw, now);
  // 1 + 1 + 1 data clusters; the zeroed pair becomes zero entries.
  return { base, format, raw, changed: 3 };
}

for (const format of ["qcow2", "raw"] as const) {
  for (const compression of ["none", "zlib", "zstd"] as const) {
    qemuTest(
      `delta: new raw disk over a ${format} base, ${compression}: only what changed`,
      async () => {
        await using dir = await tempDir();
        const c = await makeCase(dir.path, format);
        const delta = join(dir.path, "delta.qcow2");
        await using base = await openImage(c.base);
        const summary = await convert(
          (await Deno.open(c.raw)).readable,
          await OutputFile.create(delta),
          {
            compression,
            workers: 1,
            backingFile: {
              name: c.base.slice(dir.path.length + 1),
              format,
            },
            backingImage: base,
          },
        );
        assert.strictEqual(
          summary.dataClusters + summary.compressedClusters,
          c.changed,
          JSON.stringify(summary),
        );
        assert.strictEqual(summary.zeroClusters, 2);
        await qemuCheckClean(delta);
        await qemuCompareIdentical(c.raw, delta, ["raw", "qcow2"]);
        const chain = JSON.parse(
          await qemuImg("info", "--output=json", "--backing-chain", delta),
        );
        assert.strictEqual(chain.length, 2);
        assert.strictEqual(
          chain[0]["backing-filename"],
          `${format === "qcow2" ? "base.qcow2" : "base.raw"}`,
        );
        assert.strictEqual(chain[0]["backing-filename-format"], format);
        // QEMU's own delta of the same input: ours is no larger.
        const theirs = join(dir.path, "qemu.qcow2");
        await qemuImg(
          "convert",
          "-f",
          "raw",
          "-O",
          "qcow2",
          ...(compression === "none"
            ? []
            : ["-c", "-o", `compression_type=${compression}`]),
          "-B",
          c.base,
          "-F",
          format,
          c.raw,
          theirs,
        );
        const ours = (await Deno.stat(delta)).size;
        const qemu = (await Deno.stat(theirs)).size;
        assert.ok(ours <= qemu, `ours ${ours} > qemu-img ${qemu}`);
        console.log(
          `delta over ${format}, ${compression}: ${ours} bytes, qemu-img -B ${qemu}`,
        );
      },
    );
  }
}

qemuTest("delta: the map shows what the base answers", async () => {
  await using dir = await tempDir();
  const c = await makeCase(dir.path, "qcow2");
  const delta = join(dir.path, "delta.qcow2");
  await using base = await openImage(c.base);
  await convert(
    (await Deno.open(c.raw)).readable,
    await OutputFile.create(delta),
    {
      backingFile: { name: "base.qcow2", format: "qcow2" },
      backingImage: base,
    },
  );
  const map = JSON.parse(await qemuImg("map", "--output=json", delta)) as {
    start: number;
    length: number;
    depth: number;
    zero: boolean;
  }[];
  const at = (offset: number) =>
    map.find((e) => e.start <= offset && offset < e.start + e.length)!;
  assert.strictEqual(at(0).depth, 1, "unchanged: from the base");
  assert.strictEqual(at(10 * CS).depth, 0, "changed");
  assert.deepStrictEqual([at(20 * CS).depth, at(20 * CS).zero], [0, true]);
  assert.strictEqual(at(60 * CS).depth, 0, "written over a base hole");
  assert.strictEqual(at(6 * MiB).depth, 0, "past the base's end");
});

Deno.test("BackingDiffStream: zeros over a zero backing stay with the backing", async () => {
  const cs = 4096;
  const base = new Uint8Array(4 * cs);
  base.fill(5, 2 * cs, 3 * cs); // data in cluster 2 only
  await using backing = await openImage(base);
  const out = await Array.fromAsync(
    ReadableStream.from([
      { kind: "zero" as const, index: 0, count: 6 }, // 2 past the base
      { kind: "end" as const, size: 6 * cs },
    ]).pipeThrough(new BackingDiffStream({ backing, clusterSize: cs })),
  );
  assert.deepStrictEqual(out, [
    { kind: "backing", index: 0, count: 2 },
    { kind: "zero", index: 2, count: 1 },
    { kind: "backing", index: 3, count: 3 },
    { kind: "end", size: 6 * cs },
  ]);
});

for (const Writer of [Qcow2Writer, StreamableQcow2Writer]) {
  Deno.test(`${Writer.name}: a backing image needs its name, a name fits QEMU's limit`, async () => {
    await using backing = await openImage(new Uint8Array(4096));
    assert.throws(
      () => new Writer({ backingImage: backing }),
      /needs backingFile/,
    );
    assert.throws(
      () =>
        new Writer({
          backingFile: { name: "x".repeat(1024), format: "qcow2" },
        }),
      /1 to 1023 bytes/,
    );
  });
}

for (const compression of ["none", "zstd"] as const) {
  qemuTest(
    `delta: StreamableQcow2Writer writes a delta over a qcow2 base, ${compression}`,
    async () => {
      await using dir = await tempDir();
      const c = await makeCase(dir.path, "qcow2");
      const delta = join(dir.path, "delta.qcow2");
      await using base = await openImage(c.base);
      await using writer = new StreamableQcow2Writer({
        compression,
        workers: 1,
        backingFile: { name: "base.qcow2", format: "qcow2" },
        backingImage: base,
      });
      const bytes = (await Deno.open(c.raw)).readable.pipeThrough(writer);
      await Deno.writeFile(delta, bytes);
      const summary = await writer.summary;
      assert.strictEqual(
        summary.dataClusters + summary.compressedClusters,
        c.changed,
        JSON.stringify(summary),
      );
      assert.strictEqual(summary.zeroClusters, 2);
      assert.strictEqual(summary.fileSize, (await Deno.stat(delta)).size);
      await qemuCheckClean(delta);
      await qemuCompareIdentical(c.raw, delta, ["raw", "qcow2"]);
      const info = JSON.parse(await qemuImg("info", "--output=json", delta));
      assert.strictEqual(info["backing-filename"], "base.qcow2");
      assert.strictEqual(info["backing-filename-format"], "qcow2");
      // The same delta as the standard layout's, in other places.
      await using again = await openImage(c.base);
      const standard = await convertToBytes(await Deno.readFile(c.raw), {
        compression,
        workers: 1,
        backingFile: { name: "base.qcow2", format: "qcow2" },
        backingImage: again,
      });
      assert.strictEqual(standard.length, summary.fileSize);
    },
  );
}
