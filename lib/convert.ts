/**
 * One call for the whole forward pipeline: a raw byte stream or an opened
 * image in, a complete qcow2 file out.
 *
 * @module
 */

import type { ImageSink } from "./io/sink.ts";
import type { GuestImage } from "./reader/image.ts";
import { imageChunks } from "./reader/segments.ts";
import { CodecPool } from "./codec/pool.ts";
import { Qcow2Writer, type Qcow2WriterOptions } from "./writer/convert.ts";
import type { FinalizerSummary } from "./writer/finalizer.ts";
import type { HostWrite, ZeroBytes } from "./writer/records.ts";

/**
 * Converts to qcow2: raw bytes from a stream, or the guest view of an
 * opened image (qcow2 of any layout or chain, or raw), written through the
 * stages `ClusterChunkStream → ZeroDetectStream → CompressStream →
 * ClusterPacker → MetadataFinalizer` into `output`: an
 * {@linkcode ImageSink} (an `OutputFile`, committed when complete and
 * aborted on error) or a `WritableStream` of host writes.
 *
 * @param input Raw bytes (chunks of any size, `{ zeros }` for holes) or an
 * opened image.
 * @param output Where to write: an {@linkcode ImageSink} such as an
 * `OutputFile`, or a stream of host writes.
 * @param options Cluster size, compression, level, refcount width, workers.
 * @returns What was written.
 * @throws {RangeError} For invalid options.
 * @throws {Qcow2Error} When the input image is corrupt.
 *
 * @example Convert a raw stream to a zstd qcow2 file
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "./convert.ts";
 * import { OutputFile } from "./io/output_file.ts";
 * const dir = await Deno.makeTempDir();
 * const summary = await convert(
 *   ReadableStream.from([new Uint8Array(1 << 20).fill(1)]),
 *   await OutputFile.create(`${dir}/disk.qcow2`),
 *   { compression: "zstd", workers: 1 },
 * );
 * assert.strictEqual(summary.compressedClusters, 16);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function convert(
  input: ReadableStream<Uint8Array | ZeroBytes> | GuestImage,
  output: ImageSink | WritableStream<HostWrite>,
  options: Qcow2WriterOptions = {},
): Promise<FinalizerSummary> {
  const isFile = !(output instanceof WritableStream);
  // try/finally rather than `await using`: this module is part of the
  // runtime-neutral bundle, and Node 20 cannot parse `using` declarations.
  let owned: CodecPool | undefined;
  try {
    let pool = options.pool;
    if (pool === undefined && (options.compression ?? "none") !== "none") {
      pool = owned = new CodecPool({ workers: options.workers });
    }
    const stream = input instanceof ReadableStream
      ? input
      : imageChunks(input, { pool });
    const writer = new Qcow2Writer({ ...options, pool });
    try {
      const sink = isFile
        ? new WritableStream<HostWrite>({
          write: (w) => output.writeAt(w.offset, w.data),
        })
        : output;
      await stream.pipeThrough(writer).pipeTo(sink);
      const summary = await writer.summary;
      if (isFile) await output.commit(summary.fileSize);
      return summary;
    } finally {
      await writer.close();
    }
  } catch (err) {
    if (isFile) await output.abort();
    throw err;
  } finally {
    await owned?.close();
  }
}
