// The conversion matrix shared by the convert_matrix_*_test.ts files (not a
// test file): input shapes x chunkings x options, each image checked with
// qemu-img and our reader.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import { convert } from "../../lib/convert.ts";
import {
  convertToBytes,
  Qcow2Writer,
  type Qcow2WriterOptions,
  writesToBytes,
} from "../../lib/writer/qcow2_writer.ts";
import { OutputFile } from "../../lib/io/output_file.ts";
import type { CodecBackend } from "../../lib/codec/codecs.ts";
import type { PackSummary } from "../../lib/writer/pack_stream.ts";
import { isZero } from "../../lib/writer/is_zero.ts";
import {
  bytesInput,
  holesInput,
  type Input,
  KiB,
  listDir,
  MiB,
  mixedBytes,
  randomBytes,
  runBytes,
  streamOf,
  verifyImage,
} from "./_helpers.ts";

/** Input shapes by name. */
export const SHAPES: Record<string, (chunk?: number) => Input> = {
  empty: (c) => bytesInput(new Uint8Array(0), c),
  one: (c) => bytesInput(new Uint8Array([0x42]), c),
  "odd-1000": (c) => bytesInput(mixedBytes(1000, 11, 300), c),
  "odd-65537": (c) => bytesInput(mixedBytes(65537, 12, 4000), c),
  "odd-3x64k+511": (c) => bytesInput(mixedBytes(3 * 65536 + 511, 13), c),
  "odd-1MiB+333": (c) => bytesInput(mixedBytes(MiB + 333, 14), c),
  "zeros-3MiB+100": (c) => bytesInput(new Uint8Array(3 * MiB + 100), c),
  "random-1MiB+333": (c) => bytesInput(randomBytes(MiB + 333, 15), c),
  "mixed-5MiB+77": (c) => bytesInput(mixedBytes(5 * MiB + 77, 16), c),
  "mixed-9MiB": (c) => bytesInput(mixedBytes(9 * MiB, 17, 256 * KiB), c),
  "runs-2MiB+5": (c) => bytesInput(runBytes(2 * MiB + 5, 18), c),
  "runs-300k": (c) => bytesInput(runBytes(300_001, 19, 30_000), c),
  "holes-a": () => holesInput(20, 24),
  "holes-b": () => holesInput(21, 40),
};

/** How the image is produced. */
export type Via = "convert" | "writer" | "bytes";

/** One matrix entry. */
export interface MatrixCase {
  shape: keyof typeof SHAPES;
  /** Chunk size the input is delivered in (undefined: one chunk). */
  chunk?: number;
  clusterSize: number;
  refcountBits: number;
  compression: "none" | "zlib" | "zstd";
  level?: number;
  backend?: CodecBackend;
  workers?: number;
  via?: Via;
}

function describe(c: MatrixCase): string {
  const parts = [
    c.shape,
    c.chunk === undefined ? "whole" : `chunks of ${c.chunk}`,
    `cluster ${c.clusterSize}`,
    `refcount ${c.refcountBits}`,
    c.compression,
  ];
  if (c.level !== undefined) parts.push(`level ${c.level}`);
  if (c.backend !== undefined) parts.push(c.backend);
  if (c.workers !== undefined) parts.push(`workers ${c.workers}`);
  parts.push(`via ${c.via ?? "convert"}`);
  return parts.join(", ");
}

/** Expected cluster counts from the input bytes alone. */
function countClusters(bytes: Uint8Array, cs: number) {
  let zero = 0;
  let nonZero = 0;
  for (let at = 0; at < bytes.length; at += cs) {
    if (isZero(bytes.subarray(at, Math.min(bytes.length, at + cs)))) zero++;
    else nonZero++;
  }
  return { zero, nonZero };
}

async function produce(
  c: MatrixCase,
  input: Input,
  path: string,
): Promise<PackSummary> {
  const options: Qcow2WriterOptions = {
    clusterSize: c.clusterSize,
    refcountBits: c.refcountBits,
    compression: c.compression,
    level: c.level,
    backend: c.backend,
    workers: c.workers,
  };
  switch (c.via ?? "convert") {
    case "convert":
      return await convert(
        streamOf(input.chunks()),
        await OutputFile.create(path),
        options,
      );
    case "writer": {
      await using writer = new Qcow2Writer(options);
      const bytes = await writesToBytes(
        streamOf(input.chunks()).pipeThrough(writer),
      );
      await Deno.writeFile(path, bytes);
      const summary = await writer.summary;
      assert.strictEqual(bytes.length, summary.fileSize);
      return summary;
    }
    case "bytes": {
      const bytes = await convertToBytes(input.bytes, options);
      await Deno.writeFile(path, bytes);
      // No summary here: rebuild the parts the checks below need.
      return {
        inputSize: input.bytes.length,
        virtualSize: Math.ceil(input.bytes.length / 512) * 512,
        fileSize: bytes.length,
        dataClusters: -1,
        compressedClusters: -1,
        zeroClusters: -1,
        backingClusters: -1,
        l2Tables: -1,
        refcountBlocks: -1,
        spoolBytes: 0,
      };
    }
  }
}

/** Registers one qemu test per case. */
export function registerMatrix(cases: MatrixCase[]): void {
  for (const c of cases) {
    qemuTest(`convert matrix: ${describe(c)}`, async () => {
      const input = SHAPES[c.shape](c.chunk);
      await using dir = await tempDir();
      const image = join(dir.path, "out.qcow2");
      const summary = await produce(c, input, image);
      const { check } = await verifyImage(dir.path, image, input.bytes, {
        compression: c.compression,
        clusterSize: c.clusterSize,
        refcountBits: c.refcountBits,
      });
      const size = input.bytes.length;
      assert.strictEqual(summary.inputSize, size);
      assert.strictEqual(summary.virtualSize, Math.ceil(size / 512) * 512);
      assert.strictEqual((await Deno.stat(image)).size, summary.fileSize);
      assert.strictEqual(summary.fileSize % c.clusterSize, 0);
      assert.strictEqual(check["image-end-offset"], summary.fileSize);
      assert.strictEqual(
        check["total-clusters"] ?? 0,
        Math.ceil(size / c.clusterSize),
      );
      if (summary.dataClusters >= 0) {
        const { zero, nonZero } = countClusters(input.bytes, c.clusterSize);
        assert.strictEqual(summary.zeroClusters, zero);
        assert.strictEqual(
          summary.dataClusters + summary.compressedClusters,
          nonZero,
        );
        assert.strictEqual(check["allocated-clusters"] ?? 0, nonZero);
        assert.strictEqual(
          check["compressed-clusters"] ?? 0,
          summary.compressedClusters,
        );
        if (c.compression === "none") {
          assert.strictEqual(summary.compressedClusters, 0);
        }
        if (c.shape.startsWith("random") && c.compression !== "none") {
          // Incompressible clusters stay uncompressed, as in QEMU; only the
          // last, zero-padded partial cluster compresses.
          assert.strictEqual(
            summary.dataClusters,
            Math.floor(size / c.clusterSize),
          );
          assert.strictEqual(
            summary.compressedClusters,
            nonZero - summary.dataClusters,
          );
        }
        if (
          c.compression !== "none" &&
          (c.shape.startsWith("runs") || c.shape.startsWith("mixed"))
        ) {
          assert.ok(summary.compressedClusters > 0, "some clusters compressed");
        }
      }
      assert.deepStrictEqual(await listDir(dir.path), [
        "out.qcow2",
        "source.raw",
      ]);
    });
  }
}
