// Compressed output size against QEMU: the same 96 MiB mixed input
// (text, incompressible noise, runs of one byte and zero runs, from a
// seeded PRNG) converted by `qemu-img convert -c -O qcow2` and by us, with
// zlib and with zstd, at 64 KiB clusters. Our image must be within 2% of
// QEMU's, pass check and compare identical to the source.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import { convert } from "../../lib/convert.ts";
import { OutputFile } from "../../lib/io/output_file.ts";
import { fileChunks } from "../../lib/io/file_stream.ts";
import {
  KiB,
  MiB,
  mixedBytes,
  qemuCheckClean,
  qemuCompareIdentical,
  qemuInfo,
} from "./_helpers.ts";

const SIZE = 96 * MiB;

qemuTest(
  "size: compressed output within 2% of qemu-img convert -c (zlib and zstd)",
  async () => {
    await using dir = await tempDir();
    const raw = join(dir.path, "mixed.raw");
    // Written in slices so the whole input never sits in memory twice.
    {
      const file = await Deno.open(raw, { write: true, create: true });
      for (let at = 0; at < SIZE; at += 8 * MiB) {
        const slice = mixedBytes(8 * MiB, 1234 + at / MiB, 256 * KiB);
        let done = 0;
        while (done < slice.length) {
          done += await file.write(slice.subarray(done));
        }
      }
      file.close();
    }
    for (const type of ["zlib", "zstd"] as const) {
      const theirs = join(dir.path, `qemu-${type}.qcow2`);
      const ours = join(dir.path, `ours-${type}.qcow2`);
      await qemuImg(
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        `compression_type=${type}`,
        raw,
        theirs,
      );
      const summary = await convert(
        fileChunks(await Deno.open(raw)),
        await OutputFile.create(ours),
        { compression: type, workers: 2 },
      );
      const qemuSize = (await Deno.stat(theirs)).size;
      const ourSize = (await Deno.stat(ours)).size;
      assert.strictEqual(ourSize, summary.fileSize);
      const ratio = ourSize / qemuSize;
      console.log(
        `${type}: ${
          SIZE / MiB
        } MiB mixed input -> qemu-img ${qemuSize} bytes, qcow2pipe ${ourSize} bytes, ratio ${
          ratio.toFixed(4)
        } (${summary.compressedClusters} compressed, ${summary.dataClusters} data, ${summary.zeroClusters} zero clusters)`,
      );
      assert.ok(
        Math.abs(ratio - 1) <= 0.02,
        `${type}: size ratio ${ratio} is outside 1 ± 2%`,
      );
      // a real mix: all three kinds of clusters, and real compression
      assert.ok(summary.compressedClusters > 100);
      assert.ok(summary.dataClusters > 100);
      assert.ok(summary.zeroClusters > 100);
      assert.ok(ourSize < SIZE * 0.8);
      await qemuCheckClean(ours);
      await qemuCompareIdentical(raw, ours);
      const info = await qemuInfo(ours);
      assert.strictEqual(
        info["format-specific"].data["compression-type"],
        type,
      );
      await Deno.remove(theirs);
      await Deno.remove(ours);
    }
  },
);
