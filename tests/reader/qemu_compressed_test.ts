// Compressed clusters written by QEMU, zlib and zstd: `qemu-img convert -c`
// of a mixed raw file (many compressed clusters packed into shared host
// clusters) and qemu-io compressed writes, expanded with and without the
// worker pool.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  bytesOf,
  expandSegments,
  headerOf,
  mixedRaw,
  patternFile,
  qemuImg,
  qemuIoAll,
  scribble,
  verifyImage,
} from "./_helpers.ts";
import { openImage } from "../../lib/reader/open.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import type { Extent } from "../../lib/reader/image.ts";

const MiB = 1024 * 1024;

/** How many compressed clusters share a host cluster with another. */
function sharedHostClusters(extents: Extent[], cs: number): number {
  const perHost = new Map<number, Set<number>>();
  for (const e of extents) {
    if (e.kind !== "compressed") continue;
    const host = Math.floor(e.hostOffset! / cs);
    const guest = Math.floor(e.offset / cs);
    if (!perHost.has(host)) perHost.set(host, new Set());
    perHost.get(host)!.add(guest);
  }
  let shared = 0;
  for (const s of perHost.values()) if (s.size > 1) shared += s.size;
  return shared;
}

for (const type of ["zlib", "zstd"]) {
  for (
    const [cs, size, compat] of [
      [512, 256 * 1024, "1.1"],
      [4096, 2 * MiB, "1.1"],
      [65536, 4 * MiB, "1.1"],
      [65536, 3 * MiB + 4096, "0.10"],
      [2 * MiB, 8 * MiB, "1.1"],
    ] as const
  ) {
    if (type === "zstd" && compat === "0.10") continue; // zstd needs v3
    qemuTest(
      `qemu compressed: convert -c ${type} cluster_size=${cs} compat=${compat}`,
      async () => {
        await using dir = await tempDir();
        const raw = join(dir.path, "src.raw");
        const img = join(dir.path, "img.qcow2");
        // Pieces smaller than a cluster so most clusters mix content.
        await Deno.writeFile(
          raw,
          mixedRaw(size, Math.max(512, cs / 4), cs + size),
        );
        const opts = [`cluster_size=${cs}`, `compat=${compat}`];
        if (type === "zstd") opts.push("compression_type=zstd");
        await qemuImg(
          "convert",
          "-c",
          "-f",
          "raw",
          "-O",
          "qcow2",
          "-o",
          opts.join(","),
          raw,
          img,
        );
        const header = await headerOf(img);
        assert.strictEqual(header.compressionType, type === "zstd" ? 1 : 0);
        const v = await verifyImage(img, dir.path, { seed: cs });
        // convert -c keeps zero clusters unallocated: reading the source
        // back must match too.
        assert.deepStrictEqual(v.expected, await Deno.readFile(raw));
        assert.ok(bytesOf(v.extents, "compressed") > size / 4);
        if (cs < 2 * MiB) {
          assert.ok(
            sharedHostClusters(v.extents, cs) >= 4,
            "compressed clusters share host clusters",
          );
        }
      },
    );
  }

  qemuTest(
    `qemu compressed: qemu-io write -c ${type} mixed with normal writes`,
    async () => {
      await using dir = await tempDir();
      const img = join(dir.path, "img.qcow2");
      const size = 3 * MiB;
      const cs = 16384;
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `cluster_size=${cs},compression_type=${type}`,
        img,
        String(size),
      );
      const pat = await patternFile(dir.path, 5);
      // Compressed clusters scattered through the disk, some overwritten.
      const cmds: string[] = [];
      for (let c = 0; c < size / cs; c += 7) {
        cmds.push(
          c % 3 === 0
            ? `write -q -c -s ${pat} ${c * cs} ${cs}`
            : `write -q -c -P ${c & 0xff} ${c * cs} ${cs}`,
        );
      }
      cmds.push(...scribble(size, cs, pat));
      await qemuIoAll(img, cmds);
      const v = await verifyImage(img, dir.path, { seed: 77 });
      assert.ok(bytesOf(v.extents, "compressed") >= 20 * cs);
    },
  );
}

qemuTest(
  "qemu compressed: small chunks, many in flight, pool and inline agree",
  async () => {
    await using dir = await tempDir();
    const raw = join(dir.path, "src.raw");
    const img = join(dir.path, "img.qcow2");
    const size = 2 * MiB;
    const src = mixedRaw(size, 1024, 99);
    await Deno.writeFile(raw, src);
    await qemuImg(
      "convert",
      "-c",
      "-f",
      "raw",
      "-O",
      "qcow2",
      "-o",
      "cluster_size=4096,compression_type=zstd",
      raw,
      img,
    );
    await using pool = new CodecPool({ workers: 2 });
    await using image = await openImage(img);
    for (const chunkSize of [512, 4096, 65536, 1 << 20]) {
      for (const maxInFlight of [1, 2, 16]) {
        assert.deepStrictEqual(
          await expandSegments(image, { pool, chunkSize, maxInFlight }),
          src,
          `pool chunkSize=${chunkSize} maxInFlight=${maxInFlight}`,
        );
      }
      assert.deepStrictEqual(
        await expandSegments(image, { chunkSize }),
        src,
        `inline chunkSize=${chunkSize}`,
      );
    }
  },
);

qemuTest(
  "qemu compressed: adjacent compressed clusters from chain layers of different cluster size and type",
  async () => {
    // Regression: consecutive compressed extents from different images of
    // a chain were decompressed as one group with the first one's cluster
    // size and codec.
    await using dir = await tempDir();
    const size = 1 * MiB;
    const raw = join(dir.path, "src.raw");
    const base = join(dir.path, "base.qcow2");
    const top = join(dir.path, "top.qcow2");
    await Deno.writeFile(raw, mixedRaw(size, 2048, 5));
    await qemuImg(
      "convert",
      "-c",
      "-f",
      "raw",
      "-O",
      "qcow2",
      "-o",
      "cluster_size=65536",
      raw,
      base,
    );
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4096,compression_type=zstd",
      "-b",
      base,
      "-F",
      "qcow2",
      top,
    );
    const pat = await patternFile(dir.path, 6);
    const cmds: string[] = [];
    for (let c = 0; c < size / 4096; c += 3) {
      cmds.push(`write -q -c -s ${pat} ${c * 4096} 4096`);
    }
    await qemuIoAll(top, cmds);
    const v = await verifyImage(top, dir.path, { chunkSize: 1 << 20 });
    const kinds = v.extents.filter((e) => e.kind === "compressed");
    assert.ok(
      kinds.some((e) => e.depth === 0) && kinds.some((e) => e.depth === 1),
    );
  },
);

qemuTest(
  "qemu compressed: a compressed backing cluster read in pieces around an overlay's small data clusters",
  async () => {
    // Each 64 KiB compressed cluster of the base is read in 8 KiB pieces
    // between 4 KiB data clusters of the overlay: it is decompressed once
    // and kept for the pieces after the first, which must outlive the
    // buffer it was decompressed into (verifyImage expands with buffers
    // that go round, poisoned under `deno task test`).
    await using dir = await tempDir();
    const size = 1 * MiB;
    const raw = join(dir.path, "src.raw");
    const base = join(dir.path, "base.qcow2");
    const top = join(dir.path, "top.qcow2");
    await Deno.writeFile(raw, mixedRaw(size, 2048, 9));
    await qemuImg("convert", "-c", "-f", "raw", "-O", "qcow2", raw, base);
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4096",
      "-b",
      base,
      "-F",
      "qcow2",
      top,
    );
    const pat = await patternFile(dir.path, 6);
    const cmds: string[] = [];
    for (let c = 0; c < size / 4096; c += 3) {
      cmds.push(`write -q -s ${pat} ${c * 4096} 4096`);
    }
    await qemuIoAll(top, cmds);
    const v = await verifyImage(top, dir.path, { chunkSize: 1 << 20 });
    const pieces = v.extents.filter((e) =>
      e.kind === "compressed" && e.depth === 1
    );
    const clusters = new Set(pieces.map((e) => e.hostOffset)).size;
    assert.ok(
      clusters >= 4 && pieces.length >= 4 * clusters,
      `${pieces.length} pieces of ${clusters} compressed clusters`,
    );
  },
);
