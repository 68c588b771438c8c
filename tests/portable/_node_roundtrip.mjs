// Run by node_test.ts under Node (not a test file):
//
//   node _node_roundtrip.mjs BUNDLE RAW OUTDIR
//
// With the one-file bundle only: converts RAW (a Node read stream adapted
// to a Web stream) to zstd and to zlib qcow2 files, writing through an
// ImageSink over a Node FileHandle, then expands each back to raw, once as
// a Web stream piped into a Node write stream and once as a sparse file.
// Prints a JSON report on stdout; node_test.ts has qemu-img judge the files.

import { createReadStream, createWriteStream, openAsBlob } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import { Readable, Writable } from "node:stream";
import { pathToFileURL } from "node:url";
import zlib from "node:zlib";

const [bundle, raw, outDir] = process.argv.slice(2);
const q = await import(pathToFileURL(bundle).href);

/**
 * An ImageSink over a local file: positional writes into PATH.part, renamed
 * to PATH when committed, removed when aborted.
 */
async function fileSink(path) {
  const temp = `${path}.part`;
  const handle = await open(temp, "w");
  return {
    async writeAt(offset, data) {
      for (let done = 0; done < data.length;) {
        const { bytesWritten } = await handle.write(
          data,
          done,
          data.length - done,
          offset + done,
        );
        done += bytesWritten;
      }
    },
    async commit(size) {
      await handle.truncate(size);
      await handle.close();
      await rename(temp, path);
    },
    async abort() {
      await handle.close().catch(() => {});
      await rm(temp, { force: true });
    },
  };
}

const report = {
  node: process.versions.node,
  hasWorker: typeof globalThis.Worker === "function",
  nodeZstd: typeof zlib.zstdCompressSync === "function",
  poolSize: new q.CodecPool({ workers: 2 }).size,
  images: [],
};
for (const compression of ["zstd", "zlib"]) {
  const backend = (await q.createCodec({ type: compression })).backend;
  const qcow2 = `${outDir}/disk-${compression}.qcow2`;
  const summary = await q.convert(
    Readable.toWeb(createReadStream(raw)),
    await fileSink(qcow2),
    { compression, workers: 2 },
  );

  // qcow2 -> raw: a Web stream into a Node stream ...
  const streamed = `${outDir}/disk-${compression}.streamed.raw`;
  const image = await q.openImage(new q.BlobSource(await openAsBlob(qcow2)));
  await q.imageReadable(image).pipeTo(
    Writable.toWeb(createWriteStream(streamed)),
  );
  // ... and a sparse file through the same kind of sink.
  const sparse = `${outDir}/disk-${compression}.sparse.raw`;
  await q.expandToFile(image, await fileSink(sparse));
  await image.close();
  report.images.push({
    compression,
    backend,
    qcow2,
    streamed,
    sparse,
    summary,
  });
}
console.log(JSON.stringify(report));
