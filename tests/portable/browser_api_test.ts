// The library's public API in headless Chromium, not only the page: the
// bundle is imported by a page on the loopback server and called as a web
// developer would. A raw disk becomes qcow2 with each codec (zlib, zstd,
// none) through convert() and convertToBytes(); the zstd image is opened
// from a Blob, read, described (imageInfo), checked (checkImage), mapped
// (mapImage) and expanded (expandToStream, expandToFile). The bytes come
// back to Deno, where qemu-img judges every image (check, compare, info,
// map) and the expanded disk.

import assert from "node:assert";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { qemuCompareIdentical, qemuImg, tempDir } from "../_qemu.ts";
import { CHROMIUM, QEMU, toolTest } from "../_tools.ts";
import { buildBundle } from "../_bundle.ts";
import { Chromium } from "../_chromium.ts";
import { MiB, mixedBytes, verifyImage } from "../writer/_helpers.ts";
import { serveWeb } from "../../web/serve.ts";

/** Codecs the page converts with, as `convert`'s `compression` option. */
const CODECS = ["none", "zlib", "zstd"] as const;

/** The page's side: one call of the bundle's API, bytes as base64. */
// deno-lint-ignore no-explicit-any
type Api = any;

/** What one codec's conversions gave in the page. */
interface Converted {
  compression: (typeof CODECS)[number];
  backend: string;
  streamed: string;
  direct: string;
  compressedClusters: number;
}

/** What the page made of the zstd image opened from a Blob. */
interface Opened {
  format: string;
  virtualSize: number;
  reads: string[];
  infoJson: string;
  checkJson: string;
  checkText: string;
  mapJson: string;
  expanded: string;
  expandedToSink: string;
}

/** Reads at these guest ranges: the start, a cluster edge, the tail. */
const READS: [number, number][] = [
  [0, 4096],
  [65536 - 100, 200],
  [3 * MiB + 7, 70_000],
  [5 * MiB - 512, 512],
];

toolTest(
  "browser: the bundle's API in Chromium converts with zlib, zstd and none, opens, reads, describes, checks, maps and expands; qemu-img judges",
  [CHROMIUM, QEMU],
  async () => {
    await using dir = await tempDir();
    const bundle = await buildBundle(join(dir.path, "qcow2pipe.js"));
    // Text, noise, runs and zero runs, with a tail that is not a whole sector.
    const raw = mixedBytes(5 * MiB + 777, 2828);
    const rawPath = join(dir.path, "disk.raw");
    await Deno.writeFile(rawPath, raw);
    const padded = new Uint8Array(Math.ceil(raw.length / 512) * 512);
    padded.set(raw);

    await using server = serveWeb({ port: 0, bundle, onListen() {} });
    await using browser = await Chromium.launch();
    const page = browser.page;
    // Any page of the origin: the API is imported by itself.
    await page.goto(`http://127.0.0.1:${server.addr.port}/qcow2pipe.js`);
    await page.evaluate(async (rawB64: string) => {
      const g = globalThis as Api;
      g.q = await import("/qcow2pipe.js");
      g.fromB64 = async (s: string) =>
        new Uint8Array(
          await (await fetch(`data:application/octet-stream;base64,${s}`))
            .arrayBuffer(),
        );
      g.toB64 = (bytes: Uint8Array<ArrayBuffer>) =>
        new Promise((resolve) => {
          const reader = new FileReader();
          reader.onload = () => resolve(String(reader.result).split(",")[1]);
          reader.readAsDataURL(new Blob([bytes]));
        });
      g.raw = await g.fromB64(rawB64);
    }, Buffer.from(raw).toString("base64"));
    const b64 = (s: string) => new Uint8Array(Buffer.from(s, "base64"));
    const fail = (err: unknown): never => {
      throw new Error(
        `${(err as Error).message}\n${browser.console.join("\n")}`,
      );
    };

    // convert() from a Blob's stream, and convertToBytes(), each codec.
    const images = new Map<string, string>();
    for (const compression of CODECS) {
      const out = await page.evaluate(async (compression) => {
        const g = globalThis as Api;
        const q = g.q;
        const pool = new q.CodecPool();
        try {
          const { readable, writable } = new TransformStream();
          const bytes = q.writesToBytes(readable);
          const summary = await q.convert(
            new Blob([g.raw]).stream(),
            writable,
            { compression, pool },
          );
          const direct = await q.convertToBytes(g.raw, {
            compression,
            clusterSize: 4096,
            refcountBits: 8,
          });
          const backend = compression === "none"
            ? "none"
            : (await q.createCodec({ type: compression })).backend;
          return {
            compression,
            backend,
            streamed: await g.toB64(await bytes),
            direct: await g.toB64(direct),
            compressedClusters: summary.compressedClusters,
          };
        } finally {
          await pool.close();
        }
      }, compression).catch(fail) as Converted;
      assert.strictEqual(out.compression, compression);
      const streamed = join(dir.path, `streamed-${compression}.qcow2`);
      const direct = join(dir.path, `direct-${compression}.qcow2`);
      await Deno.writeFile(streamed, b64(out.streamed));
      await Deno.writeFile(direct, b64(out.direct));
      const { check } = await verifyImage(dir.path, streamed, raw, {
        compression,
        clusterSize: 65536,
        refcountBits: 16,
      });
      assert.strictEqual(
        check["compressed-clusters"] ?? 0,
        out.compressedClusters,
      );
      assert.strictEqual(out.compressedClusters > 0, compression !== "none");
      await verifyImage(dir.path, direct, raw, {
        compression,
        clusterSize: 4096,
        refcountBits: 8,
      });
      images.set(compression, streamed);
      console.log(`${compression}: ${out.backend}`);
    }

    // The zstd image, opened from a Blob named as its file on disk, so that
    // what the tools say of it reads as what qemu-img says.
    const zstdPath = images.get("zstd")!;
    const opened = await page.evaluate(
      async (b64: string, path: string, reads: [number, number][]) => {
        const g = globalThis as Api;
        const q = g.q;
        const file = new File([await g.fromB64(b64)], "disk.qcow2");
        const source = new q.BlobSource(file, path);
        const image = await q.openImage(source);
        try {
          const parts: Uint8Array<ArrayBuffer>[] = [];
          await q.expandToStream(
            image,
            new WritableStream({ write: (c) => void parts.push(c.slice()) }),
          );
          const sinkParts: { offset: number; data: Uint8Array }[] = [];
          let size = -1;
          await q.expandToFile(image, {
            writeAt: (offset: number, data: Uint8Array) => {
              sinkParts.push({ offset, data: data.slice() });
              return Promise.resolve();
            },
            commit: (n: number) => {
              size = n;
              return Promise.resolve();
            },
            abort: () => Promise.resolve(),
          });
          const sunk = new Uint8Array(size);
          for (const p of sinkParts) sunk.set(p.data, p.offset);
          return {
            format: image.format,
            virtualSize: image.virtualSize,
            reads: await Promise.all(
              reads.map(async ([at, n]) => g.toB64(await image.readAt(at, n))),
            ),
            infoJson: q.formatImageInfoJson(await q.imageInfo(source)),
            checkJson: q.formatCheckJson(await q.checkImage(source)),
            checkText: q.formatCheckResult(await q.checkImage(source)),
            mapJson: q.formatMapJson(await q.mapImage(source)),
            expanded: await g.toB64(
              new Uint8Array(await new Blob(parts).arrayBuffer()),
            ),
            expandedToSink: await g.toB64(sunk),
          };
        } finally {
          await image.close();
        }
      },
      Buffer.from(await Deno.readFile(zstdPath)).toString("base64"),
      zstdPath,
      READS,
    ).catch(fail) as Opened;

    assert.strictEqual(opened.format, "qcow2");
    assert.strictEqual(opened.virtualSize, padded.length);
    READS.forEach(([at, n], i) => {
      assert.deepStrictEqual(
        b64(opened.reads[i]),
        padded.subarray(at, at + n),
        `readAt(${at}, ${n})`,
      );
    });
    // info and check as qemu-img prints them (but the host's allocation,
    // which a Blob does not have).
    const info = JSON.parse(opened.infoJson);
    const qemuInfo = JSON.parse(
      await qemuImg("info", "--output=json", "-f", "qcow2", zstdPath),
    );
    delete qemuInfo["actual-size"];
    delete info["actual-size"];
    assert.deepStrictEqual(info, qemuInfo);
    assert.strictEqual(
      opened.checkJson + "\n",
      await qemuImg("check", "--output=json", "-f", "qcow2", zstdPath),
    );
    assert.strictEqual(
      opened.checkText,
      await qemuImg("check", "-f", "qcow2", zstdPath),
    );
    assert.strictEqual(
      opened.mapJson,
      await qemuImg("map", "--output=json", "-f", "qcow2", zstdPath),
    );
    // Expanded twice (a stream, a sink written at offsets): the disk again.
    for (
      const [how, b] of [["stream", opened.expanded], [
        "sink",
        opened.expandedToSink,
      ]]
    ) {
      const path = join(dir.path, `expanded-${how}.raw`);
      await Deno.writeFile(path, b64(b));
      assert.deepStrictEqual(b64(b), padded, `expanded to a ${how}`);
      await qemuCompareIdentical(path, zstdPath);
    }
  },
);
