// Refcounts exactly as QEMU counts them. Host clusters shared by several
// compressed clusters (and payloads that cross into the next host cluster)
// are checked twice: by `qemu-img check`, and by reading the refcount
// blocks with the lib/format functions and comparing them with counts
// derived from the L1/L2 tables. The same audit of QEMU's own compressed
// images shows the audit counts like QEMU does.

import assert from "node:assert";
import { join } from "node:path";
import { refcountMax } from "../../lib/format/refcount.ts";
import { parseHeader } from "../../lib/format/header.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { openImage } from "../../lib/reader/open.ts";
import type { Qcow2WriterOptions } from "../../lib/writer/qcow2_writer.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { convert } from "../../lib/convert.ts";
import { qemuCheckClean, qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import {
  assertGuestBytes,
  type Audit,
  auditRefcounts,
  chunked,
  randomBytes,
  readBack,
  textBytes,
} from "./_helpers.ts";

async function writeAndAudit(
  dir: string,
  name: string,
  input: Uint8Array,
  options: Qcow2WriterOptions,
): Promise<Audit> {
  const path = join(dir, name);
  await Deno.writeFile(path, await convertToBytes(input, options));
  await qemuCheckClean(path);
  assertGuestBytes(await readBack(path), input);
  const bytes = await Deno.readFile(path);
  assert.strictEqual(bytes.length % (options.clusterSize ?? 65536), 0);
  return auditRefcounts(bytes);
}

/** Clusters that compress to a few dozen bytes each, all different. */
function tinyPayloadClusters(count: number, cs: number): Uint8Array {
  const out = new Uint8Array(count * cs);
  for (let i = 0; i < count; i++) {
    out.fill(i + 1, i * cs, (i + 1) * cs);
    out[i * cs + (i % cs)] = 0xff - i;
  }
  return out;
}

/** Clusters compressing to ~40-60% of their size: half noise, half text. */
function halfNoiseClusters(count: number, cs: number): Uint8Array {
  const out = new Uint8Array(count * cs);
  for (let i = 0; i < count; i++) {
    const noise = Math.floor(cs * (0.3 + 0.05 * (i % 6)));
    out.set(randomBytes(noise, i), i * cs);
    out.set(textBytes(cs - noise, i), i * cs + noise);
  }
  return out;
}

qemuTest(
  "refcounts: one host cluster shared by many compressed clusters",
  async () => {
    await using dir = await tempDir();
    const cs = 65536;
    for (const compression of ["zlib", "zstd"] as const) {
      const audit = await writeAndAudit(
        dir.path,
        `${compression}.qcow2`,
        tinyPayloadClusters(48, cs),
        { compression, clusterSize: cs, workers: 2 },
      );
      // 48 payloads of one sector each fit in the first data host cluster
      assert.deepStrictEqual([...audit.payloads.entries()], [[1, 48]]);
      assert.strictEqual(audit.stored[1], 48);
      assert.strictEqual(audit.crossing, 0);
    }
  },
);

qemuTest(
  "refcounts: payloads crossing host cluster boundaries count in both clusters",
  async () => {
    await using dir = await tempDir();
    for (
      const [cs, compression] of [[65536, "zstd"], [4096, "zlib"]] as const
    ) {
      const audit = await writeAndAudit(
        dir.path,
        `cross-${cs}.qcow2`,
        halfNoiseClusters(40, cs),
        { compression, clusterSize: cs, workers: 1 },
      );
      assert.ok(audit.crossing >= 5, `payloads crossing (${audit.crossing})`);
      const shared = [...audit.payloads.values()].filter((n) => n > 1).length;
      assert.ok(shared >= 5, `host clusters shared (${shared})`);
      for (const [c, n] of audit.payloads) {
        assert.strictEqual(audit.stored[c], n);
      }
    }
  },
);

qemuTest(
  "refcounts: 1-bit refcounts give every payload its own host cluster",
  async () => {
    await using dir = await tempDir();
    for (const cs of [512, 4096, 65536]) {
      const audit = await writeAndAudit(
        dir.path,
        `rc1-${cs}.qcow2`,
        tinyPayloadClusters(30, cs),
        { compression: "zstd", clusterSize: cs, refcountBits: 1, workers: 0 },
      );
      assert.strictEqual(audit.refcountBits, 1);
      assert.strictEqual(audit.payloads.size, 30);
      assert.ok(audit.stored.every((n) => n === 1), "every cluster used once");
      assert.ok([...audit.payloads.values()].every((n) => n === 1));
    }
    // crossing is impossible too: a payload never continues a full cluster
    const audit = await writeAndAudit(
      dir.path,
      "rc1-cross.qcow2",
      halfNoiseClusters(20, 4096),
      { compression: "zlib", clusterSize: 4096, refcountBits: 1, workers: 1 },
    );
    assert.strictEqual(audit.crossing, 0);
    assert.ok(audit.stored.every((n) => n === 1));
  },
);

qemuTest(
  "refcounts: 2-bit refcounts fill host clusters to the maximum of 3",
  async () => {
    await using dir = await tempDir();
    const audit = await writeAndAudit(
      dir.path,
      "rc2.qcow2",
      tinyPayloadClusters(31, 4096),
      { compression: "zlib", clusterSize: 4096, refcountBits: 2, workers: 2 },
    );
    assert.strictEqual(audit.refcountBits, 2);
    const counts = [...audit.payloads.values()];
    assert.deepStrictEqual(counts, [...new Array(10).fill(3), 1]);
    assert.ok(audit.stored.every((n) => n >= 1 && n <= refcountMax(1)));
    const crossing = await writeAndAudit(
      dir.path,
      "rc2-cross.qcow2",
      halfNoiseClusters(30, 4096),
      { compression: "zstd", clusterSize: 4096, refcountBits: 2, workers: 2 },
    );
    assert.ok(crossing.crossing > 0);
    assert.ok(crossing.stored.every((n) => n >= 1 && n <= 3));
  },
);

qemuTest(
  "refcounts: 8-bit refcounts stop sharing at 255 payloads",
  async () => {
    // 256 KiB clusters hold 512 one-sector payloads; 8 bits allow 255
    const cs = 256 * 1024;
    const count = 600;
    await using dir = await tempDir();
    const path = join(dir.path, "rc8.qcow2");
    function* chunks() {
      for (let i = 0; i < count; i++) {
        const c = new Uint8Array(cs).fill(i & 0xff);
        c[i % cs] = (i >> 8) + 1;
        yield c;
      }
    }
    const summary = await convert(
      ReadableStream.from(chunks()),
      await OutputFile.create(path),
      { compression: "zstd", clusterSize: cs, refcountBits: 8, workers: 2 },
    );
    assert.strictEqual(summary.compressedClusters, count);
    await qemuCheckClean(path);
    const audit = auditRefcounts(await Deno.readFile(path));
    assert.deepStrictEqual([...audit.payloads.values()], [255, 255, 90]);
    await using image = await openImage(path);
    const expected = [...chunks()];
    for (const i of [0, 254, 255, 256, 509, 510, 599]) {
      assert.deepStrictEqual(await image.readAt(i * cs, cs), expected[i]);
    }
  },
);

qemuTest(
  "refcounts: the audit agrees with QEMU's own compressed images",
  async () => {
    // Validates the audit above: images written by `qemu-img convert -c`
    // (shared and crossing host clusters) pass it unchanged.
    await using dir = await tempDir();
    const raw = join(dir.path, "src.raw");
    await Deno.writeFile(raw, halfNoiseClusters(40, 65536));
    for (const type of ["zlib", "zstd"]) {
      const img = join(dir.path, `qemu-${type}.qcow2`);
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
        img,
      );
      const audit = auditRefcounts(await Deno.readFile(img));
      assert.ok(audit.crossing > 0 && audit.payloads.size > 0);
    }
  },
);

qemuTest(
  "refcounts: a writer that shares a pool with another keeps counts right",
  async () => {
    // Two images written at once on one pool: jobs interleave on the workers
    // but each image's refcounts stay its own.
    await using dir = await tempDir();
    await using pool = new CodecPool({ workers: 2 });
    const a = halfNoiseClusters(24, 65536);
    const b = tinyPayloadClusters(24, 65536);
    const write = async (name: string, input: Uint8Array) => {
      const out = await OutputFile.create(join(dir.path, name));
      await convert(ReadableStream.from(chunked(input, 100003)), out, {
        compression: "zstd",
        pool,
      });
    };
    await Promise.all([write("a.qcow2", a), write("b.qcow2", b)]);
    for (const [name, input] of [["a.qcow2", a], ["b.qcow2", b]] as const) {
      const path = join(dir.path, name);
      await qemuCheckClean(path);
      auditRefcounts(await Deno.readFile(path));
      assertGuestBytes(await readBack(path), input);
    }
  },
);

qemuTest(
  "refcounts: sizes around refcount block and table boundaries",
  async () => {
    // 512-byte clusters: a 64-bit refcount block covers 64 clusters and a
    // refcount table cluster 64 blocks (4096 clusters); 16-bit blocks cover
    // 256. Sweep image sizes across those boundaries, where the refcount
    // blocks and table that count themselves tip into one more block.
    await using dir = await tempDir();
    const checked: string[] = [];
    const sweep: [number, number, "none" | "zlib"][] = [];
    for (let n = 0; n <= 140; n += 3) sweep.push([n, 64, "none"]);
    for (let n = 225; n <= 265; n += 2) sweep.push([n, 16, "none"]);
    for (let n = 4060; n <= 4110; n += 7) sweep.push([n, 64, "none"]);
    for (let n = 40; n <= 90; n += 5) sweep.push([n, 64, "zlib"]);
    for (const [n, bits, compression] of sweep) {
      const input = compression === "none"
        ? randomBytes(n * 512, n)
        : halfNoiseClusters(n, 512);
      const bytes = await convertToBytes(input, {
        clusterSize: 512,
        refcountBits: bits,
        compression,
        workers: 0,
      });
      assert.strictEqual(bytes.length % 512, 0);
      const audit = auditRefcounts(bytes);
      assert.strictEqual(audit.stored.length, bytes.length / 512);
      if (n >= 4096) {
        // past 4096 host clusters the refcount table needs a second cluster
        assert.strictEqual(parseHeader(bytes).refcountTableClusters, 2);
      }
      // qemu-img check on a part of them (every third, and the big ones)
      if (checked.length % 3 === 0 || n > 4000) {
        const path = join(dir.path, `sweep-${n}-${bits}-${compression}.qcow2`);
        await Deno.writeFile(path, bytes);
        await qemuCheckClean(path);
        await using image = await openImage(path);
        assertGuestBytes(await image.readAt(0, image.virtualSize), input);
      }
      checked.push(`${n}/${bits}`);
    }
    assert.strictEqual(checked.length, sweep.length);
  },
);
