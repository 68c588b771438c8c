/**
 * qcow2pipe: convert raw disk images to sparse or compressed qcow2 v3
 * images through a streaming Web Streams pipeline, and expand qcow2 images
 * (any layout QEMU writes, backing chains included) back to raw.
 *
 * Forward pipeline, each stage usable alone:
 * `ClusterChunkStream → ZeroDetectStream → CompressStream (CodecPool) →
 * ClusterPacker → MetadataFinalizer`, composed by {@linkcode convert} and
 * {@linkcode Qcow2Writer}. Reverse: {@linkcode openImage}, then
 * {@linkcode imageReadable}, {@linkcode readSegments} or
 * {@linkcode expandToFile}. The qcow2 format core (pure functions) is also
 * available alone as `@qcow2pipe/qcow2pipe/format`. `--sparsify`
 * ({@linkcode mapFreeSpace}, {@linkcode freeSpaceChunks},
 * {@linkcode FreeSpaceStream}, or `convert(..., { sparsify: true })`) drops
 * the free space of ext2/3/4 filesystems and swap on MBR, GPT and bare
 * disks; it is also `@qcow2pipe/qcow2pipe/sparsify`.
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

export * from "./lib/format/mod.ts";

export * from "./lib/io/source.ts";
export * from "./lib/io/output_file.ts";
export * from "./lib/io/file_stream.ts";
export * from "./lib/io/http_source.ts";
export * from "./lib/io/spool.ts";

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
export * from "./lib/reader/stream_open.ts";

export * from "./lib/writer/records.ts";
export * from "./lib/writer/chunk_stream.ts";
export * from "./lib/writer/zero_stream.ts";
export * from "./lib/writer/backing_diff_stream.ts";
export * from "./lib/writer/is_zero.ts";
export * from "./lib/writer/compress_stream.ts";
export * from "./lib/writer/host_allocator.ts";
export * from "./lib/writer/packer.ts";
export * from "./lib/writer/finalizer.ts";
export * from "./lib/writer/convert.ts";
export * from "./lib/writer/streamable.ts";
export * from "./lib/convert.ts";

export * from "./lib/sparsify/mod.ts";

export * from "./lib/tools/info.ts";
export * from "./lib/tools/info_text.ts";
export * from "./lib/tools/check.ts";
export * from "./lib/tools/check_text.ts";
export * from "./lib/tools/map.ts";
export * from "./lib/tools/compare.ts";
export * from "./lib/tools/input.ts";
