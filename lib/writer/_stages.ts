// The forward pipeline wired once for both writers: chunker, zero
// detection, backing comparison (deltas), compression, then the pack stage
// in the layout the writer asks for.
import { CodecPool } from "../codec/pool.ts";
import { writerSettings } from "./_options.ts";
import { BackingDiffStream } from "./backing_diff_stream.ts";
import { ClusterChunkStream } from "./chunk_stream.ts";
import { CompressStream } from "./compress_stream.ts";
import { Qcow2PackStream, type Qcow2PackStreamOptions } from "./pack_stream.ts";
import type { Qcow2WriterOptions } from "./qcow2_writer.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import type { HostWrite } from "./records.ts";
import { ZeroDetectStream } from "./zero_stream.ts";

/** The stages, wired. */
export interface WriterStages {
  /** Bytes (or `{ zeros }`) in. */
  writable: WritableStream<Uint8Array | ZeroBytes>;
  /** Host writes out. */
  readable: ReadableStream<HostWrite>;
  /** The last stage: its summary, and its spools to delete. */
  pack: Qcow2PackStream;
  /** The pool started here (none given and compression asked for). */
  ownPool: CodecPool | undefined;
}

/**
 * Checks the options and wires the stages from bytes to host writes.
 *
 * @param options The writer's options.
 * @param streamable The streamable layout's spools (default: the metadata
 * after the data).
 * @throws {RangeError} For invalid options.
 */
export function writerStages(
  options: Qcow2WriterOptions,
  streamable?: Qcow2PackStreamOptions["streamable"],
): WriterStages {
  const { clusterSize, compression } = writerSettings(options);
  const chunker = new ClusterChunkStream({ clusterSize });
  let records = chunker.readable.pipeThrough(
    new ZeroDetectStream({
      clusterSize,
      // qemu-img ignores -S for compressed output, but for -S 0.
      sparseSize: compression !== "none" && options.sparseSize !== 0
        ? undefined
        : options.sparseSize,
    }),
  );
  if (options.backingImage) {
    records = records.pipeThrough(
      new BackingDiffStream({ backing: options.backingImage, clusterSize }),
    );
  }
  if (options.compat === "v2" && options.backingFile) {
    // Version 2 has no zero entries: zeros that must hide the backing
    // file's bytes are stored as data.
    records = records.pipeThrough(
      new ZeroDetectStream({ clusterSize, sparseSize: 0 }),
    );
  }
  let ownPool: CodecPool | undefined;
  try {
    if (compression !== "none") {
      const pool = options.pool ??
        (ownPool = new CodecPool({ workers: options.workers }));
      records = records.pipeThrough(
        new CompressStream({
          pool,
          clusterSize,
          type: compression,
          level: options.level,
          backend: options.backend,
          zlibWindow: options.zlibWindow,
        }),
      );
    }
    const pack = new Qcow2PackStream({
      clusterSize,
      refcountBits: options.refcountBits,
      compressionType: compression === "zstd" ? "zstd" : "zlib",
      backingFile: options.backingFile,
      onProgress: options.onProgress,
      compat: options.compat,
      lazyRefcounts: options.lazyRefcounts,
      streamable,
    });
    return {
      writable: chunker.writable,
      readable: records.pipeThrough(pack),
      pack,
      ownPool,
    };
  } catch (err) {
    void ownPool?.close();
    throw err;
  }
}
