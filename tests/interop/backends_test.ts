// Images written with each codec backend (node:zlib for zlib and zstd,
// fflate, zstd-codec) and without compression, in several layouts, judged
// by other readers: qemu-img check (clean) and compare (identical), QEMU's
// info, our reader, libqcow (pyqcow) and 7-Zip (`7zz x`). libqcow and 7-Zip
// do not read zstd images; there the judgement is their refusal (see
// tests/_readers.ts). The same image must come out of the worker pool and
// of the inline path, byte for byte.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { QEMU, toolTest } from "../_tools.ts";
import { assertOtherReaders } from "../_readers.ts";
import { MiB, mixedBytes, verifyImage } from "../writer/_helpers.ts";
import type { CodecBackend } from "../../lib/codec/codecs.ts";
import {
  convertToBytes,
  type Qcow2WriterOptions,
} from "../../lib/writer/qcow2_writer.ts";
import { StreamableQcow2Writer } from "../../lib/writer/streamable.ts";

type Compression = "none" | "zlib" | "zstd";

const BACKENDS: {
  label: string;
  compression: Compression;
  backend?: CodecBackend;
}[] = [
  { label: "uncompressed", compression: "none" },
  { label: "zlib on node:zlib", compression: "zlib", backend: "node" },
  { label: "zlib on fflate", compression: "zlib", backend: "fflate" },
  { label: "zstd on node:zlib", compression: "zstd", backend: "node" },
  { label: "zstd on zstd-codec", compression: "zstd", backend: "zstd-codec" },
];

const LAYOUTS: {
  label: string;
  clusterSize: number;
  refcountBits: number;
  streamable?: boolean;
}[] = [
  {
    label: "64 KiB clusters, 16-bit refcounts",
    clusterSize: 65536,
    refcountBits: 16,
  },
  {
    label: "512-byte clusters, 1-bit refcounts",
    clusterSize: 512,
    refcountBits: 1,
  },
  {
    label: "2 MiB clusters, 64-bit refcounts",
    clusterSize: 2 * MiB,
    refcountBits: 64,
  },
  {
    label: "streamable layout",
    clusterSize: 65536,
    refcountBits: 16,
    streamable: true,
  },
];

/** Text, noise, runs of one byte and zero runs, with an unaligned tail. */
const RAW = mixedBytes(5 * MiB + 333, 1717);

async function write(
  options: Qcow2WriterOptions,
  streamable: boolean,
): Promise<Uint8Array> {
  if (!streamable) return await convertToBytes(RAW, options);
  await using writer = new StreamableQcow2Writer(options);
  const out = ReadableStream.from([RAW]).pipeThrough(writer);
  return new Uint8Array(await new Response(out).arrayBuffer());
}

for (const b of BACKENDS) {
  for (const layout of LAYOUTS) {
    const judges = b.compression === "zstd"
      ? "qemu-img reads it, libqcow and 7-Zip refuse zstd"
      : "qemu-img, libqcow and 7-Zip read it";
    toolTest(
      `interop: ${b.label}, ${layout.label}: ${judges}`,
      [QEMU],
      async () => {
        await using dir = await tempDir();
        const options: Qcow2WriterOptions = {
          compression: b.compression,
          backend: b.backend,
          clusterSize: layout.clusterSize,
          refcountBits: layout.refcountBits,
        };
        const bytes = await write(
          { ...options, workers: 2 },
          layout.streamable ?? false,
        );
        const inline = await write(
          { ...options, workers: 0 },
          layout.streamable ?? false,
        );
        assert.ok(
          bytes.length === inline.length &&
            bytes.every((x, i) => x === inline[i]),
          "the worker pool and the inline path wrote different images",
        );
        const image = join(dir.path, "disk.qcow2");
        await Deno.writeFile(image, bytes);
        const { check } = await verifyImage(dir.path, image, RAW, {
          compression: b.compression,
          clusterSize: layout.clusterSize,
          refcountBits: layout.refcountBits,
        });
        if (b.compression !== "none") {
          assert.ok((check["compressed-clusters"] ?? 0) > 0, "compressed");
        }
        await assertOtherReaders(image, RAW, b.compression, dir.path);
      },
    );
  }
}
