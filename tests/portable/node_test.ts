// The bundle under the machine's Node (20 here): a raw file becomes zstd
// and zlib qcow2 through Node streams adapted to Web Streams, and expands
// back (as a stream and as a sparse file), all by _node_roundtrip.mjs with
// nothing but the bundle. qemu-img, our reader, libqcow and 7-Zip judge the
// images; the expanded files must equal the input.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { NODE, QEMU, toolTest } from "../_tools.ts";
import { buildBundle } from "../_bundle.ts";
import { assertOtherReaders } from "../_readers.ts";
import { MiB, mixedBytes, verifyImage } from "../writer/_helpers.ts";

interface Report {
  node: string;
  hasWorker: boolean;
  nodeZstd: boolean;
  poolSize: number;
  images: {
    compression: "zstd" | "zlib";
    backend: string;
    qcow2: string;
    streamed: string;
    sparse: string;
    summary: { virtualSize: number; compressedClusters: number };
  }[];
}

toolTest(
  "node: the bundle converts raw to zstd and zlib qcow2 and back through Node streams; qemu-img judges",
  [NODE, QEMU],
  async () => {
    await using dir = await tempDir();
    const bundle = await buildBundle(join(dir.path, "qcow2pipe.js"));
    const raw = mixedBytes(6 * MiB + 4097, 2020);
    const rawPath = join(dir.path, "disk.raw");
    await Deno.writeFile(rawPath, raw);

    const script = new URL("./_node_roundtrip.mjs", import.meta.url).pathname;
    const out = await new Deno.Command("node", {
      args: [script, bundle, rawPath, dir.path],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(out.success, `node failed (${out.code}):\n${stderr}`);
    assert.strictEqual(stderr, "", "node printed warnings or errors");
    const report: Report = JSON.parse(new TextDecoder().decode(out.stdout));
    console.log(
      `node ${report.node}: pool of ${report.poolSize} workers, ${
        report.images.map((i) => `${i.compression} on ${i.backend}`).join(", ")
      }`,
    );

    // Where there is no Worker the pool runs inline; the codecs are what
    // Node offers: node:zlib, and zstd-codec where node:zlib has no zstd.
    assert.strictEqual(report.poolSize, report.hasWorker ? 2 : 0);
    const backends = Object.fromEntries(
      report.images.map((i) => [i.compression, i.backend]),
    );
    assert.deepStrictEqual(backends, {
      zstd: report.nodeZstd ? "node" : "zstd-codec",
      zlib: "node",
    });

    const padded = new Uint8Array(Math.ceil(raw.length / 512) * 512);
    padded.set(raw);
    for (const image of report.images) {
      const { check } = await verifyImage(dir.path, image.qcow2, raw, {
        compression: image.compression,
        clusterSize: 65536,
        refcountBits: 16,
      });
      assert.strictEqual(
        check["compressed-clusters"],
        image.summary.compressedClusters,
      );
      assert.ok(image.summary.compressedClusters > 0);
      await assertOtherReaders(image.qcow2, raw, image.compression, dir.path);
      for (const back of [image.streamed, image.sparse]) {
        const bytes = await Deno.readFile(back);
        assert.strictEqual(bytes.length, padded.length, back);
        assert.ok(bytes.every((b, i) => b === padded[i]), `${back} differs`);
      }
    }
  },
);
