// qcow2 -> qcow2 re-packing, with images made by qemu-img as sources:
// recompressing zlib -> zstd, changing the cluster size, flattening a
// backing chain, through the CLI and through convert(openImage(...)).

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
import { CodecPool } from "../../lib/codec/pool.ts";
import {
  assertGuestBytes,
  exists,
  MiB,
  mixedBytes,
  qemuInfo,
  readBack,
} from "./_helpers.ts";
import { partialFiles, runCli } from "./_cli.ts";

const SIZE = 6 * MiB + 4096;

async function qemuSource(dir: string, args: string[]): Promise<{
  raw: string;
  img: string;
  input: Uint8Array;
}> {
  const raw = join(dir, "src.raw");
  const img = join(dir, "src.qcow2");
  const input = mixedBytes(SIZE, 77, 200 * 1024);
  await Deno.writeFile(raw, input);
  await qemuImg("convert", "-f", "raw", "-O", "qcow2", ...args, raw, img);
  return { raw, img, input };
}

async function checkRepacked(
  dst: string,
  raw: string,
  src: string,
  input: Uint8Array,
  expected: { compression: string; clusterSize: number },
): Promise<void> {
  const check = await qemuCheckClean(dst);
  await qemuCompareIdentical(raw, dst);
  await qemuCompareIdentical(src, dst, ["qcow2", "qcow2"]);
  const info = await qemuInfo(dst);
  assert.strictEqual(info["cluster-size"], expected.clusterSize);
  assert.strictEqual(
    info["format-specific"].data["compression-type"],
    expected.compression === "zstd" ? "zstd" : "zlib",
  );
  assert.strictEqual(info["backing-filename"], undefined);
  if (expected.compression === "none") {
    assert.strictEqual(check["compressed-clusters"] ?? 0, 0);
  } else {
    assert.ok((check["compressed-clusters"] ?? 0) > 0);
  }
  assertGuestBytes(await readBack(dst), input);
}

qemuTest(
  "repack (cli): zlib-compressed qcow2 from qemu-img recompressed with zstd",
  async () => {
    await using dir = await tempDir();
    const { raw, img, input } = await qemuSource(dir.path, ["-c"]);
    assert.strictEqual(
      (await qemuInfo(img))["format-specific"].data["compression-type"],
      "zlib",
    );
    const dst = join(dir.path, "dst.qcow2");
    const r = await runCli(["convert", "--compress", "zstd", img, dst]);
    assert.strictEqual(r.code, 0, r.stderr);
    await checkRepacked(dst, raw, img, input, {
      compression: "zstd",
      clusterSize: 65536,
    });
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

qemuTest("repack (cli): cluster size changes, compressed and not", async () => {
  await using dir = await tempDir();
  const { raw, img, input } = await qemuSource(dir.path, [
    "-c",
    "-o",
    "compression_type=zstd,cluster_size=65536",
  ]);
  for (
    const [flags, compression, cs] of [
      [["--cluster-size", "4k"], "none", 4096],
      [["--compress", "zlib", "--cluster-size", "2M"], "zlib", 2 * MiB],
      [
        ["--compress", "zstd", "--cluster-size", "512", "--refcount-bits", "1"],
        "zstd",
        512,
      ],
    ] as const
  ) {
    const dst = join(dir.path, `dst-${cs}.qcow2`);
    const r = await runCli(["convert", ...flags, img, dst]);
    assert.strictEqual(r.code, 0, r.stderr);
    await checkRepacked(dst, raw, img, input, { compression, clusterSize: cs });
  }
});

qemuTest(
  "repack (cli): a backing chain made with qemu-img is flattened",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.qcow2");
    const mid = join(dir.path, "mid.qcow2");
    const top = join(dir.path, "top.qcow2");
    const pattern = join(dir.path, "pattern.bin");
    await Deno.writeFile(pattern, mixedBytes(300 * 1024, 5, 10_000));
    await qemuImg(
      "create",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4096",
      base,
      "8M",
    );
    await qemuIo(base, [
      `write -s ${pattern} 0 300k`,
      "write -P 0x11 1M 1M",
      "write -c -P 0x22 3M 64k",
      "write -P 0x33 7M 1M",
    ]);
    await qemuImg(
      "create",
      "-f",
      "qcow2",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      mid,
    );
    await qemuIo(mid, [
      "write -P 0x44 1536k 4k", // over base data
      "write -z 1M 64k", // zeros over base data: must read as zeros
      "write -P 0x55 5M 100k",
    ]);
    // the top is larger than its backing file
    await qemuImg(
      "create",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=65536",
      "-b",
      "mid.qcow2",
      "-F",
      "qcow2",
      top,
      "10M",
    );
    await qemuIo(top, [
      "write -z 7M 512k",
      "write -P 0x66 9M 64k",
      "discard 5M 64k",
    ]);
    const expected = join(dir.path, "expected.raw");
    await qemuImg("convert", "-O", "raw", top, expected);
    const input = await Deno.readFile(expected);
    for (
      const [flags, compression] of [
        [["--compress", "zstd"], "zstd"],
        [["-O", "qcow2"], "none"],
      ] as const
    ) {
      const dst = join(dir.path, `flat-${compression}.qcow2`);
      const r = await runCli(["convert", ...flags, top, dst]);
      assert.strictEqual(r.code, 0, r.stderr);
      await checkRepacked(dst, expected, top, input, {
        compression,
        clusterSize: 65536,
      });
      assert.strictEqual((await qemuInfo(dst))["virtual-size"], 10 * MiB);
    }
  },
);

qemuTest(
  "repack (cli): qcow2 on standard input is spooled, converted, and the spool removed",
  async () => {
    await using dir = await tempDir();
    const { raw, img, input } = await qemuSource(dir.path, ["-c"]);
    const dst = join(dir.path, "dst.qcow2");
    const r = await runCli(["convert", "--compress", "zstd", "-", dst], {
      stdin: await Deno.readFile(img),
    });
    assert.strictEqual(r.code, 0, r.stderr);
    const spool = /spooled it whole \(.*?\) to (\S+) to read/.exec(r.stderr)
      ?.[1];
    assert.ok(spool, `the notice names the spool file: ${r.stderr}`);
    assert.strictEqual(await exists(spool), false, "spool removed");
    await checkRepacked(dst, raw, img, input, {
      compression: "zstd",
      clusterSize: 65536,
    });
  },
);

qemuTest(
  "repack (library): convert(openImage(...)) with a shared pool",
  async () => {
    await using dir = await tempDir();
    const { raw, img, input } = await qemuSource(dir.path, [
      "-c",
      "-o",
      "cluster_size=16384",
    ]);
    await using pool = new CodecPool({ workers: 2 });
    for (
      const [compression, cs] of [["zstd", 65536], ["none", 2 * MiB], [
        "zlib",
        512,
      ]] as const
    ) {
      await using image = await openImage(img);
      const dst = join(dir.path, `lib-${compression}.qcow2`);
      const summary = await convert(image, await OutputFile.create(dst), {
        compression,
        clusterSize: cs,
        pool,
      });
      assert.strictEqual(summary.inputSize, image.virtualSize);
      await checkRepacked(dst, raw, img, input, {
        compression,
        clusterSize: cs,
      });
    }
  },
);
