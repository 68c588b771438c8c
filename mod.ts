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
 * available alone as `@qcow2pipe/qcow2pipe/format`, and everything that
 * runs without a file system (Node, browsers) as
 * `@qcow2pipe/qcow2pipe/core`; this module adds local files, spool files
 * and the tools that need them. `--sparsify` ({@linkcode mapFreeSpace},
 * {@linkcode freeSpaceChunks}, {@linkcode FreeSpaceStream}, or
 * `convert(..., { sparsify: true })`) drops the free space of ext2/3/4
 * filesystems and swap on MBR, GPT and bare disks; it is also
 * `@qcow2pipe/qcow2pipe/sparsify`.
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

// Deno: local files (this import also gives the core file access by
// path), temporary spool files, and what is built on them.
export * from "./lib/io/file_source.ts";
export * from "./lib/io/output_file.ts";
export * from "./lib/io/file_stream.ts";
export * from "./lib/io/spool.ts";
export * from "./lib/reader/stream_open.ts";
export * from "./lib/writer/streamable.ts";
export * from "./lib/file_writable.ts";

export * from "./lib/tools/map.ts";
export * from "./lib/tools/compare.ts";
