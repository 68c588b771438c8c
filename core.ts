/**
 * qcow2pipe's runtime-neutral core: everything that runs wherever Web
 * Streams do (Deno, Node 20+, browsers, Bun), with no file system. Convert
 * raw bytes from any `ReadableStream` (a `File`, a `fetch` body, a Node
 * stream through `Readable.toWeb`) to sparse or compressed qcow2 v3, written
 * into any {@linkcode ImageSink}; open qcow2 or raw images from bytes, a
 * `Blob` ({@linkcode BlobSource}), a URL with Range requests
 * ({@linkcode HttpSource}) or any {@linkcode RandomAccessSource}, and
 * expand them to raw. Inspection (`qemu-img info`, `check`, `map`,
 * `compare`) is `@qcow2pipe/qcow2pipe/tools`; the qcow2 format itself
 * `@qcow2pipe/qcow2pipe/format`.
 *
 * The forward pipeline, each stage a Web Streams transform usable alone:
 * `ClusterChunkStream → ZeroDetectStream → BackingDiffStream →
 * CompressStream (CodecPool) → Qcow2PackStream`. The first four turn bytes
 * into cluster records ({@linkcode ClusterRecord}); the last places them in
 * the file and writes the metadata, giving host writes
 * ({@linkcode HostWrite}). {@linkcode Qcow2Writer} and {@linkcode convert}
 * compose them.
 *
 * Codecs are chosen by what the runtime offers: `node:zlib` in Deno and
 * Node, fflate (zlib) and zstd-codec (zstd, WebAssembly) elsewhere.
 * {@linkcode CodecPool} runs them on Web Workers where `Worker` exists and
 * inline where it does not. `deno task bundle` builds this module into one
 * ES module file. File paths, spool files and the CLI are in `mod.ts`.
 *
 * Errors follow one contract: {@linkcode Qcow2Error} for what the image
 * holds (malformed, unsupported, corrupt, a reference that may not be
 * followed), {@linkcode IoError} for files and HTTP (with a `code` and the
 * lower error as `cause`), `RangeError` or `TypeError` for bad options and
 * arguments, {@linkcode InternalError} for a bug in qcow2pipe.
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

// Convert: raw bytes to qcow2, in one call or stage by stage.
export {
  convert,
  type ConvertOptions,
  type ConvertSummary,
} from "./lib/convert.ts";
export {
  convertToBytes,
  Qcow2Writer,
  type Qcow2WriterOptions,
  writesToBytes,
} from "./lib/writer/qcow2_writer.ts";
export {
  ClusterChunkStream,
  type ClusterChunkStreamOptions,
} from "./lib/writer/chunk_stream.ts";
export { ZeroDetectStream } from "./lib/writer/zero_stream.ts";
export {
  BackingDiffStream,
  type BackingDiffStreamOptions,
} from "./lib/writer/backing_diff_stream.ts";
export {
  CompressStream,
  type CompressStreamOptions,
} from "./lib/writer/compress_stream.ts";
export {
  type BackingFileName,
  type PackSummary,
  Qcow2PackStream,
  type Qcow2PackStreamOptions,
  type SpoolStore,
} from "./lib/writer/pack_stream.ts";
export type { ClusterRecord, HostWrite } from "./lib/writer/records.ts";
export type { ZeroBytes } from "./lib/bytes/zeros.ts";
export {
  type ClusterCodec,
  type CodecBackend,
  type CodecOptions,
  type CompressionType,
  createCodec,
  type ZlibWindow,
} from "./lib/codec/codecs.ts";
export {
  CodecPool,
  type CodecPoolOptions,
  type CompressResult,
} from "./lib/codec/pool.ts";

// Open and expand: qcow2 or raw images to their guest bytes.
export {
  type ImageFormat,
  openImage,
  type OpenImageOptions,
} from "./lib/reader/open.ts";
export type { ReferencePolicy } from "./lib/reader/references.ts";
export type { FormatName } from "./lib/reader/formats.ts";
export type { Extent, ExtentKind, GuestImage } from "./lib/reader/image.ts";
export {
  imageChunks,
  imageReadable,
  type ReadImageOptions,
  readSegments,
  type SalvageReport,
  type Segment,
} from "./lib/reader/segments.ts";
export {
  type ExpandOptions,
  type ExpandSource,
  expandToFile,
  expandToStream,
} from "./lib/reader/expand.ts";

// Compressed downloads and tar archives: the disk inside, as a stream.
export {
  bytesOnly,
  type Unpacked,
  type UnpackOptions,
  unpackStream,
} from "./lib/reader/packed/unpack.ts";
export type { Packing } from "./lib/reader/packed/magic.ts";

// Where bytes come from and go to.
export { BytesSource, type RandomAccessSource } from "./lib/io/source.ts";
export { BlobSource } from "./lib/io/blob_source.ts";
export {
  type HttpBody,
  HttpSource,
  type HttpSourceOptions,
  type HttpTransport,
} from "./lib/io/http_source.ts";
export type { ImageSink } from "./lib/io/sink.ts";

// Errors: the contract is the module doc of lib/format/errors.ts.
export {
  InternalError,
  IoError,
  type IoErrorCode,
  Qcow2Error,
  type Qcow2ErrorCode,
  type Qcow2ErrorOptions,
} from "./lib/format/errors.ts";
