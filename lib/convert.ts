/**
 * One call for the whole forward pipeline: a raw byte stream or an opened
 * image in, a complete qcow2 file out.
 *
 * @module
 */

import type { ImageSink } from "./io/sink.ts";
import type { GuestImage } from "./reader/image.ts";
import { imageChunks, type SalvageReport } from "./reader/segments.ts";
import { CodecPool } from "./codec/pool.ts";
import { Qcow2Writer, type Qcow2WriterOptions } from "./writer/qcow2_writer.ts";
import type { PackSummary } from "./writer/pack_stream.ts";
import type { ZeroBytes } from "./bytes/zeros.ts";
import type { HostWrite } from "./writer/records.ts";
import type { SparsifyReport } from "./sparsify/report.ts";
import { doneWith } from "./bytes/recycle.ts";
import { isZero } from "./bytes/zeros.ts";
import { measureImage } from "./tools/measure.ts";

/**
 * Options of {@linkcode convert}: the writer's, and `sparsify`.
 *
 * @example Convert a disk with its free space dropped
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "./convert.ts";
 * import { OutputFile } from "./host/output_file.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a); // a bare swap area, old bytes in its pages
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const dir = await Deno.makeTempDir();
 * const summary = await convert(ReadableStream.from([disk]), await OutputFile.create(`${dir}/swap.qcow2`), {
 *   compression: "zstd",
 *   workers: 1,
 *   sparsify: true,
 * });
 * assert.strictEqual(summary.sparsify!.freeBytes, (1 << 20) - 4096);
 * assert.strictEqual(summary.compressedClusters, 1); // the header's cluster; the rest is unallocated
 * await Deno.remove(dir, { recursive: true });
 * ```
 *
 * @example Salvage what can be read of an image with a broken cluster
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "./convert.ts";
 * import { openImage } from "./reader/open.ts";
 * import { OutputFile } from "./host/output_file.ts";
 * const dir = await Deno.makeTempDir();
 * const clusters = [1, 2, 3].map((n) => new Uint8Array(65536).fill(n));
 * await convert(ReadableStream.from(clusters), await OutputFile.create(`${dir}/a.qcow2`), {
 *   compression: "zlib",
 *   workers: 1,
 * });
 * // Break the compressed bytes of the second cluster.
 * const file = await Deno.readFile(`${dir}/a.qcow2`);
 * await using intact = await openImage(file.slice());
 * const second = (await Array.fromAsync(intact.extents()))
 *   .find((e) => e.offset === 65536)!.hostOffset!;
 * file.fill(0xff, second, second + 16);
 * await using image = await openImage(file);
 * const lost: [number, number][] = [];
 * const summary = await convert(image, await OutputFile.create(`${dir}/b.qcow2`), {
 *   salvage: (offset, length) => lost.push([offset, length]),
 * });
 * assert.deepStrictEqual(lost, [[65536, 65536]]); // read as zeros
 * assert.strictEqual(summary.dataClusters, 2);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface ConvertOptions extends Qcow2WriterOptions {
  /**
   * Read the disk's partition table and filesystems and let their free
   * space (ext2/3/4 free blocks, swap pages) read as zeros, without
   * reading it when the input is an opened image. A stream input is
   * mapped as it passes ({@linkcode FreeSpaceStream}).
   * @default {false}
   */
  sparsify?: boolean;
  /**
   * qemu-img's `-o preallocation` for a file output: `metadata`, `falloc`
   * and `full` allocate every cluster (zeros included) and make the file
   * as large as `qemu-img measure` says a fully allocated image is, as
   * qemu-img's preallocated images are; `full` writes the zeros, the others
   * leave zero clusters as holes of the file. Not with compression.
   * @default {"off"}
   */
  preallocation?: "off" | "metadata" | "falloc" | "full";
  /**
   * qemu-img's `--salvage`, for an image input: a range that cannot be
   * read (a compressed cluster that does not decompress, a read that
   * fails) is written as zeros, and this function is told of it (see
   * `ReadImageOptions.salvage`). Not with `sparsify`.
   */
  salvage?: SalvageReport;
}

/**
 * What {@linkcode convert} wrote, and what `sparsify` found.
 *
 * @example What was found, and what was stored
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "./convert.ts";
 * import { openImage } from "./reader/open.ts";
 * import { OutputFile } from "./host/output_file.ts";
 * const disk = new Uint8Array(1 << 20).fill(0x5a); // a bare swap area, old bytes in its pages
 * new DataView(disk.buffer).setUint32(1024, 1, true); // version 1
 * new DataView(disk.buffer).setUint32(1028, 255, true); // last_page
 * disk.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * const dir = await Deno.makeTempDir();
 * await using image = await openImage(disk);
 * const summary = await convert(image, await OutputFile.create(`${dir}/swap.qcow2`), { sparsify: true });
 * assert.deepStrictEqual(summary.sparsify!.regions.map((r) => r.found), ["swap"]);
 * assert.strictEqual(summary.dataClusters, 1);
 * assert.strictEqual(summary.zeroClusters, 15);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface ConvertSummary extends PackSummary {
  /** The free-space report, when `sparsify` was asked for. */
  sparsify?: SparsifyReport;
}

/**
 * Converts to qcow2: raw bytes from a stream, or the guest view of an
 * opened image (qcow2 of any layout or chain, or raw), written through
 * {@linkcode Qcow2Writer}'s stages `ClusterChunkStream → ZeroDetectStream →
 * CompressStream → Qcow2PackStream` into `output`: an
 * {@linkcode ImageSink} (an `OutputFile`, committed when complete and
 * aborted on error) or a `WritableStream` of host writes.
 *
 * @param input Raw bytes (chunks of any size, `{ zeros }` for holes) or an
 * opened image.
 * @param output Where to write: an {@linkcode ImageSink} such as an
 * `OutputFile`, or a stream of host writes.
 * @param options Cluster size, compression, level, refcount width,
 * workers, sparsify.
 * @returns What was written (with the free-space report when sparsifying).
 * @throws {RangeError} For invalid options (salvage with sparsify among them).
 * @throws {Qcow2Error} When the input image is corrupt.
 *
 * @example Convert a raw stream to a zstd qcow2 file
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "./convert.ts";
 * import { OutputFile } from "./host/output_file.ts";
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
  options: ConvertOptions = {},
): Promise<ConvertSummary> {
  const isFile = !(output instanceof WritableStream);
  if (options.salvage && options.sparsify) {
    throw new RangeError("Cannot convert: salvage does not go with sparsify");
  }
  const preallocation = options.preallocation ?? "off";
  if (preallocation !== "off") {
    if (!isFile || (options.compression ?? "none") !== "none") {
      throw new RangeError(
        `Cannot convert: preallocation ${preallocation} needs a file output without compression`,
      );
    }
    options = { ...options, sparseSize: 0 };
  }
  // try/finally rather than `await using`: this module is part of the
  // runtime-neutral bundle, and Node 20 cannot parse `using` declarations.
  let owned: CodecPool | undefined;
  try {
    let pool = options.pool;
    if (pool === undefined && (options.compression ?? "none") !== "none") {
      pool = owned = new CodecPool({ workers: options.workers });
    }
    let stream = input instanceof ReadableStream ? input : undefined;
    let report: Promise<SparsifyReport> | undefined;
    // The file systems' code loads only when sparsifying.
    if (options.sparsify && stream) {
      const { FreeSpaceStream } = await import("./sparsify/stream.ts");
      const stage = new FreeSpaceStream();
      stream = stream.pipeThrough(stage);
      report = stage.report;
    } else if (options.sparsify) {
      const { freeSpaceChunks } = await import("./sparsify/chunks.ts");
      const mapped = await freeSpaceChunks(input as GuestImage, { pool });
      stream = mapped.readable;
      report = Promise.resolve(mapped.report);
    }
    // Every buffer is done with once the sink, or CompressStream, calls
    // doneWith(): the image's chunks can go round.
    stream ??= imageChunks(input as GuestImage, {
      pool,
      recycle: true,
      salvage: options.salvage,
    });
    const writer = new Qcow2Writer({ ...options, pool });
    try {
      const sink = isFile
        ? new WritableStream<HostWrite>({
          async write(w) {
            // Preallocated without zeros: a new file reads zeros where
            // nothing is written.
            const hole = (preallocation === "metadata" ||
              preallocation === "falloc") &&
              !output.isDevice &&
              isZero(w.data);
            if (!hole) {
              await output.writeAt(w.offset, w.data);
            }
            // An ImageSink is done with bytes once writeAt resolves, and
            // writes come in pipeline order: buffers may go round.
            doneWith(w.data);
          },
        })
        : output;
      await stream.pipeThrough(writer).pipeTo(sink);
      const summary: ConvertSummary = await writer.summary;
      if (isFile) {
        await output.commit(
          await preallocatedSize(output, summary, options),
        );
      }
      return report ? { ...summary, sparsify: await report } : summary;
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

/** Bytes of zeros written at once to fill a preallocated file's tail. */
const FILL_BYTES = 1 << 20;

/**
 * The size of the finished file: as written, or with preallocation the
 * size `qemu-img measure` gives a fully allocated image (its tail written
 * with zeros for `full`).
 */
async function preallocatedSize(
  output: ImageSink,
  summary: PackSummary,
  options: ConvertOptions,
): Promise<number> {
  const mode = options.preallocation ?? "off";
  if (mode === "off") return summary.fileSize;
  const { fullyAllocated } = await measureImage(undefined, {
    outputFormat: "qcow2",
    size: summary.virtualSize,
    clusterSize: options.clusterSize,
    refcountBits: options.refcountBits,
  });
  const size = Math.max(summary.fileSize, fullyAllocated);
  if (mode === "full") {
    for (let at = summary.fileSize; at < size; at += FILL_BYTES) {
      await output.writeAt(at, new Uint8Array(Math.min(FILL_BYTES, size - at)));
    }
  }
  return size;
}
