/**
 * qcow2pipe's runtime-neutral core: everything that runs wherever Web
 * Streams do (Deno, Node 20+, browsers, Bun), with no file system. Convert
 * raw bytes from any `ReadableStream` (a `File`, a `fetch` body, a Node
 * stream through `Readable.toWeb`) to sparse or compressed qcow2 v3, written
 * into any {@linkcode ImageSink}; open qcow2 or raw images from bytes, a
 * `Blob` ({@linkcode BlobSource}), a URL with Range requests
 * ({@linkcode HttpSource}) or any {@linkcode RandomAccessSource}; describe
 * and check them as `qemu-img info` and `check` do.
 *
 * Codecs are chosen by what the runtime offers: `node:zlib` in Deno and
 * Node, fflate (zlib) and zstd-codec (zstd, WebAssembly) elsewhere.
 * {@linkcode CodecPool} runs them on Web Workers where `Worker` exists and
 * inline where it does not. `deno task bundle` builds this module into one
 * ES module file. File paths, spool files and the CLI are in `mod.ts`.
 *
 * @example Convert a byte stream to zstd qcow2 in memory and read it back
 * ```ts
 * import assert from "node:assert";
 * import { convert, openImage, writesToBytes } from "@qcow2pipe/qcow2pipe/core";
 * import type { HostWrite } from "@qcow2pipe/qcow2pipe/core";
 * const raw = new Uint8Array(300_000).fill(7);
 * const { readable, writable } = new TransformStream<HostWrite, HostWrite>();
 * const bytes = writesToBytes(readable);
 * await convert(new Blob([raw]).stream(), writable, { compression: "zstd" });
 * await using image = await openImage(await bytes);
 * assert.deepStrictEqual(await image.readAt(0, raw.length), raw);
 * ```
 *
 * @module
 */

export * from "./lib/format/mod.ts";

export * from "./lib/io/source.ts";
export * from "./lib/io/blob_source.ts";
export * from "./lib/io/http_source.ts";
export * from "./lib/io/sink.ts";

export * from "./lib/codec/codecs.ts";
export {
  CodecPool,
  type CodecPoolOptions,
  type CompressResult,
} from "./lib/codec/pool.ts";

export * from "./lib/reader/image.ts";
export * from "./lib/reader/open.ts";
export type { ReferencePolicy } from "./lib/reader/references.ts";
export { Qcow2Image, type Qcow2ImageInit } from "./lib/reader/qcow2_image.ts";
export * from "./lib/reader/raw_image.ts";
export * from "./lib/reader/segments.ts";
export * from "./lib/reader/expand.ts";

export * from "./lib/writer/records.ts";
export * from "./lib/writer/chunk_stream.ts";
export * from "./lib/writer/zero_stream.ts";
export * from "./lib/writer/backing_diff_stream.ts";
export * from "./lib/writer/is_zero.ts";
export * from "./lib/writer/compress_stream.ts";
export * from "./lib/writer/host_allocator.ts";
export * from "./lib/writer/packer.ts";
export * from "./lib/writer/finalizer.ts";
export * from "./lib/writer/qcow2_writer.ts";
export * from "./lib/convert.ts";

export * from "./lib/sparsify/mod.ts";

export * from "./lib/tools/input.ts";
export * from "./lib/tools/info.ts";
export * from "./lib/tools/info_text.ts";
export * from "./lib/tools/check.ts";
export * from "./lib/tools/check_text.ts";
