/**
 * qcow2pipe: convert raw disk images to sparse or compressed qcow2 v3
 * images through a streaming Web Streams pipeline, and expand qcow2 images
 * (any layout QEMU writes, backing chains included) back to raw.
 *
 * Forward pipeline, each stage usable alone:
 * `ClusterChunkStream → ZeroDetectStream → BackingDiffStream →
 * CompressStream (CodecPool) → Qcow2PackStream` (cluster records in, host
 * writes out: placement and metadata), composed by {@linkcode convert},
 * {@linkcode Qcow2Writer} and {@linkcode StreamableQcow2Writer}. Reverse: {@linkcode openImage}, then
 * {@linkcode imageReadable}, {@linkcode readSegments} or
 * {@linkcode expandToPath}. Everything that runs without a file system
 * (Node, browsers) is also `@qcow2pipe/qcow2pipe/core`; this module adds
 * local files, spool files and the streamable layout.
 *
 * Subpaths: `@qcow2pipe/qcow2pipe/tools` (`qemu-img info`, `check`, `map`
 * and `compare` as functions), `@qcow2pipe/qcow2pipe/format` (the qcow2
 * format as pure functions and constants), `@qcow2pipe/qcow2pipe/sparsify`
 * (the free space of ext2/3/4 and swap on MBR, GPT and bare disks, which
 * `convert(..., { sparsify: true })` drops).
 *
 * @example Round trip through qcow2 in memory
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes, openImage } from "@qcow2pipe/qcow2pipe";
 * const raw = new Uint8Array(200_000).fill(7);
 * const qcow2 = await convertToBytes(raw, { compression: "zstd", workers: 1 });
 * await using image = await openImage(qcow2);
 * assert.deepStrictEqual(await image.readAt(0, raw.length), raw);
 * ```
 *
 * @module
 */

export * from "./core.ts";

// Deno: local files, spool files, and what is built on them.
export { FileSource } from "./lib/io/file_source.ts";
export type { FileIdentity } from "./lib/io/source.ts";
export {
  OutputExistsError,
  OutputFile,
  type OutputFileOptions,
} from "./lib/io/output_file.ts";
export { fileChunks, sparseFileChunks } from "./lib/io/file_stream.ts";
export {
  expandToPath,
  type ExpandToPathOptions,
} from "./lib/reader/expand_to_path.ts";
export {
  openImageStream,
  type OpenStreamOptions,
  type StreamedImage,
} from "./lib/reader/stream_open.ts";
export {
  StreamableQcow2Writer,
  type StreamableWriterOptions,
} from "./lib/writer/streamable.ts";
export { qcow2FileWritable } from "./lib/file_writable.ts";
