/**
 * Stage 3 of the forward pipeline: data clusters compressed on a worker
 * pool, results back in cluster order.
 *
 * @module
 */

import type { CodecPool, CompressResult } from "../codec/pool.ts";
import type {
  CodecBackend,
  CompressionType,
  ZlibWindow,
} from "../codec/codecs.ts";
import type { ClusterRecord } from "./records.ts";
import { checkClusterSize, checkRecord } from "./_options.ts";
import { doneWith, Recycler } from "../bytes/recycle.ts";

/**
 * Options of {@linkcode CompressStream}.
 *
 * @example Compress clusters with zstd on this thread
 * ```ts
 * import assert from "node:assert";
 * import { CodecPool } from "../codec/pool.ts";
 * import { CompressStream, type CompressStreamOptions } from "./compress_stream.ts";
 * await using pool = new CodecPool({ workers: 0 });
 * const options: CompressStreamOptions = { pool, clusterSize: 65536, type: "zstd" };
 * const kinds: string[] = [];
 * await ReadableStream.from([
 *   { kind: "data" as const, index: 0, count: 1, data: new Uint8Array(65536).fill(7) },
 * ]).pipeThrough(new CompressStream(options))
 *   .pipeTo(new WritableStream({ write: (r) => void kinds.push(r.kind) }));
 * assert.deepStrictEqual(kinds, ["compressed"]);
 * ```
 */
export interface CompressStreamOptions {
  /** The worker pool (owned by the caller, who closes it). */
  pool: CodecPool;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** zlib or zstd. */
  type: CompressionType;
  /** Level; see `CodecOptions.level`. */
  level?: number;
  /** Codec backend; see `CodecOptions.backend`. */
  backend?: CodecBackend;
  /** zlib window; see `CodecOptions.zlibWindow`. */
  zlibWindow?: ZlibWindow;
  /**
   * Jobs submitted and not yet passed on; when full, the stage stops
   * taking input, so backpressure reaches the source. Four per worker
   * (plus two) keep the workers fed while this thread reads, packs and
   * writes: with two per worker, a worker finished a job with none queued
   * behind it at 92 of 798 completions (1 GiB ext4 disk to zstd), with
   * four at 31.
   * @default {4 * workers + 2}
   */
  maxInFlight?: number;
  /**
   * Most bytes per job.
   * @default {1048576} (1 MiB, at least one cluster)
   */
  jobBytes?: number;
}

/**
 * Compresses `data` runs on a {@linkcode CodecPool}. Each cluster becomes
 * part of a `compressed` run, or stays in a `data` run when compression
 * would not make it smaller (QEMU's rule). Output keeps input order; the
 * first failed job errors the stream.
 *
 * @example Compress one cluster
 * ```ts
 * import assert from "node:assert";
 * import { CodecPool } from "../codec/pool.ts";
 * import { CompressStream } from "./compress_stream.ts";
 * await using pool = new CodecPool({ workers: 1 });
 * const data = new Uint8Array(4096).fill(7);
 * const [out] = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "data" as const, index: 0, count: 1, data }])
 *     .pipeThrough(new CompressStream({ pool, clusterSize: 4096, type: "zlib" })),
 * );
 * assert.strictEqual(out.kind, "compressed");
 * ```
 */
export class CompressStream
  extends TransformStream<ClusterRecord, ClusterRecord> {
  /**
   * Creates the stage.
   *
   * @param options Pool, codec and limits.
   * @throws {RangeError} For an invalid cluster size or limit.
   */
  constructor(options: CompressStreamOptions) {
    const cs = checkClusterSize(options.clusterSize);
    const { pool } = options;
    const codec = {
      type: options.type,
      level: options.level,
      backend: options.backend,
      zlibWindow: options.zlibWindow,
    };
    const maxInFlight = options.maxInFlight ?? 4 * pool.size + 2;
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1) {
      throw new RangeError(
        `Cannot create compress stream: maxInFlight ${maxInFlight} must be at least 1`,
      );
    }
    const jobClusters = Math.max(
      1,
      Math.floor((options.jobBytes ?? 1024 * 1024) / cs),
    );
    // Job buffers go round: see lib/bytes/recycle.ts.
    const jobs = new Recycler(jobClusters * cs);
    const queue: Promise<ClusterRecord[]>[] = [];
    const push = (job: Promise<ClusterRecord[]>) => {
      job.catch(() => {}); // awaited in order; avoid unhandled rejections
      queue.push(job);
    };
    super({
      async transform(record, controller) {
        checkRecord(record, cs, "compress clusters");
        if (record.kind === "data") {
          for (let i = 0; i < record.count; i += jobClusters) {
            const count = Math.min(jobClusters, record.count - i);
            const data = record.data.subarray(i * cs, (i + count) * cs);
            const index = record.index + i;
            const job = jobs.take();
            push(
              pool.compress(codec, data, cs, job).then((r) => {
                jobs.moved(job.buffer, r.data.buffer as ArrayBuffer);
                return split(r, index, count, cs);
              }),
            );
          }
          // Copied into the jobs: nothing after this stage holds the
          // input's bytes, so its buffers may go round (if they do).
          doneWith(record.data);
        } else {
          push(Promise.resolve([record]));
        }
        while (queue.length > maxInFlight) {
          for (const r of await queue.shift()!) controller.enqueue(r);
        }
      },
      async flush(controller) {
        while (queue.length > 0) {
          for (const r of await queue.shift()!) controller.enqueue(r);
        }
      },
    });
  }
}

/** Turns one job's result into compressed runs and data runs. */
function split(
  result: CompressResult,
  index: number,
  count: number,
  cs: number,
): ClusterRecord[] {
  const { data, lengths, offsets } = result;
  const out: ClusterRecord[] = [];
  let i = 0;
  while (i < count) {
    const start = i;
    const from = offsets[start];
    if (lengths[i] === 0) {
      while (i < count && lengths[i] === 0) i++;
      out.push({
        kind: "data",
        index: index + start,
        count: i - start,
        data: data.subarray(from, from + (i - start) * cs),
      });
    } else {
      while (i < count && lengths[i] !== 0) i++;
      // Up to the next cluster's bytes: the last payload's padding too.
      const to = i < count ? offsets[i] : data.length;
      out.push({
        kind: "compressed",
        index: index + start,
        count: i - start,
        data: data.subarray(from, to),
        lengths: lengths.slice(start, i),
        offsets: offsets.slice(start, i).map((at) => at - from),
      });
    }
  }
  return out;
}
