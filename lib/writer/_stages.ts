// The stages both writers share, from raw bytes to cluster records:
// chunker, zero detection, backing comparison (deltas), compression.
import { CodecPool } from "../codec/pool.ts";
import { type WriterSettings, writerSettings } from "./_options.ts";
import { BackingDiffStream } from "./backing_diff_stream.ts";
import { ClusterChunkStream } from "./chunk_stream.ts";
import { CompressStream } from "./compress_stream.ts";
import type { Qcow2WriterOptions } from "./qcow2_writer.ts";
import type { ClusterRecord, ZeroBytes } from "./records.ts";
import { ZeroDetectStream } from "./zero_stream.ts";

/** The record stages, wired. */
export interface RecordStages extends WriterSettings {
  /** Bytes (or `{ zeros }`) in. */
  writable: WritableStream<Uint8Array | ZeroBytes>;
  /** Cluster records out, in guest order. */
  records: ReadableStream<ClusterRecord>;
  /** The pool started here (none given and compression asked for). */
  ownPool: CodecPool | undefined;
}

/**
 * Checks the options and wires the stages up to cluster records.
 *
 * @throws {RangeError} For invalid options.
 */
export function recordStages(options: Qcow2WriterOptions): RecordStages {
  const settings = writerSettings(options);
  const { clusterSize, compression } = settings;
  const chunker = new ClusterChunkStream({ clusterSize });
  let records = chunker.readable.pipeThrough(
    new ZeroDetectStream({ clusterSize }),
  );
  if (options.backingImage) {
    records = records.pipeThrough(
      new BackingDiffStream({ backing: options.backingImage, clusterSize }),
    );
  }
  let ownPool: CodecPool | undefined;
  if (compression !== "none") {
    const pool = options.pool ??
      (ownPool = new CodecPool({ workers: options.workers }));
    try {
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
    } catch (err) {
      void ownPool?.close();
      throw err;
    }
  }
  return { ...settings, writable: chunker.writable, records, ownPool };
}
