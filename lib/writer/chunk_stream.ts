/**
 * Stage 1 of the forward pipeline: bytes in chunks of any size become runs
 * of whole guest clusters.
 *
 * @module
 */

import type { ZeroBytes } from "../bytes/zeros.ts";
import type { ClusterRecord } from "./records.ts";
import { checkClusterSize } from "./_options.ts";

/**
 * Options of {@linkcode ClusterChunkStream}.
 *
 * @example Chunk at 4 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { ClusterChunkStream, type ClusterChunkStreamOptions } from "./chunk_stream.ts";
 * const options: ClusterChunkStreamOptions = { clusterSize: 4096 };
 * const kinds: string[] = [];
 * await ReadableStream.from([new Uint8Array(10_000)])
 *   .pipeThrough(new ClusterChunkStream(options))
 *   .pipeTo(new WritableStream({ write: (r) => void kinds.push(r.kind) }));
 * // Two whole clusters as they come, then the tail padded to a third.
 * assert.deepStrictEqual(kinds, ["data", "data", "end"]);
 * ```
 */
export interface ClusterChunkStreamOptions {
  /** Cluster size in bytes, a power of two from 512 to 2 MiB. */
  clusterSize: number;
  /**
   * Largest run emitted, in bytes (at least one cluster).
   * @default {4194304} (4 MiB)
   */
  maxRunBytes?: number;
}

/**
 * Cuts a byte stream into runs of whole clusters, numbered from guest
 * cluster 0. Input chunks may have any size; aligned parts of a chunk are
 * passed on as views (not copied), so upstream must not reuse its buffers.
 * `{ zeros: n }` chunks stand for `n` zero bytes and become `zero` runs
 * without being materialized. The last partial cluster is zero-padded, and
 * a final `end` record carries the exact input length.
 *
 * @example Chunk 100 000 bytes into 64 KiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { ClusterChunkStream } from "./chunk_stream.ts";
 * import type { ClusterRecord } from "./records.ts";
 * const records: ClusterRecord[] = await Array.fromAsync(
 *   ReadableStream.from([new Uint8Array(100_000)])
 *     .pipeThrough(new ClusterChunkStream({ clusterSize: 65536 })),
 * );
 * assert.deepStrictEqual(records.map((r) => r.kind), ["data", "data", "end"]);
 * assert.deepStrictEqual(records.at(-1), { kind: "end", size: 100_000 });
 * ```
 */
export class ClusterChunkStream
  extends TransformStream<Uint8Array | ZeroBytes, ClusterRecord> {
  #clusterSize: number;
  #maxRun: number;
  #pending: Uint8Array | undefined;
  #fill = 0;
  #index = 0;
  #total = 0;

  /**
   * Creates the stage.
   *
   * @param options Cluster size and largest run.
   * @throws {RangeError} For a cluster size that is not a power of two in
   * [512, 2 MiB] or a run smaller than one cluster.
   */
  constructor(options: ClusterChunkStreamOptions) {
    super({
      transform: (chunk, controller) => this.#transform(chunk, controller),
      flush: (controller) => this.#flush(controller),
    });
    this.#clusterSize = checkClusterSize(options.clusterSize);
    const maxRun = options.maxRunBytes ?? 4 * 1024 * 1024;
    if (!Number.isInteger(maxRun) || maxRun < this.#clusterSize) {
      throw new RangeError(
        `Cannot create chunk stream: maxRunBytes ${maxRun} is smaller than the cluster size ${this.#clusterSize}`,
      );
    }
    this.#maxRun = Math.floor(maxRun / this.#clusterSize);
  }

  #emitPending(
    controller: TransformStreamDefaultController<ClusterRecord>,
  ): void {
    controller.enqueue({
      kind: "data",
      index: this.#index++,
      count: 1,
      data: this.#pending!,
    });
    this.#pending = undefined;
    this.#fill = 0;
  }

  #transform(
    chunk: Uint8Array | ZeroBytes,
    controller: TransformStreamDefaultController<ClusterRecord>,
  ): void {
    const cs = this.#clusterSize;
    if (!(chunk instanceof Uint8Array)) {
      let zeros = chunk.zeros;
      if (!Number.isSafeInteger(zeros) || zeros < 0) {
        throw new RangeError(
          `Cannot chunk input: zero run length ${zeros} is not a non-negative integer`,
        );
      }
      this.#total += zeros;
      if (this.#fill > 0) {
        const n = Math.min(zeros, cs - this.#fill);
        this.#fill += n; // the pending buffer is already zeroed there
        zeros -= n;
        if (this.#fill === cs) this.#emitPending(controller);
      }
      const whole = Math.floor(zeros / cs);
      if (whole > 0) {
        controller.enqueue({ kind: "zero", index: this.#index, count: whole });
        this.#index += whole;
      }
      const rest = zeros - whole * cs;
      if (rest > 0) {
        this.#pending = new Uint8Array(cs);
        this.#fill = rest;
      }
      return;
    }
    this.#total += chunk.length;
    let at = 0;
    if (this.#fill > 0) {
      const n = Math.min(chunk.length, cs - this.#fill);
      this.#pending!.set(chunk.subarray(0, n), this.#fill);
      this.#fill += n;
      at = n;
      if (this.#fill === cs) this.#emitPending(controller);
    }
    while (chunk.length - at >= cs) {
      const count = Math.min(
        this.#maxRun,
        Math.floor((chunk.length - at) / cs),
      );
      controller.enqueue({
        kind: "data",
        index: this.#index,
        count,
        data: chunk.subarray(at, at + count * cs),
      });
      this.#index += count;
      at += count * cs;
    }
    if (at < chunk.length) {
      this.#pending = new Uint8Array(cs);
      this.#pending.set(chunk.subarray(at));
      this.#fill = chunk.length - at;
    }
  }

  #flush(controller: TransformStreamDefaultController<ClusterRecord>): void {
    if (this.#fill > 0) this.#emitPending(controller);
    controller.enqueue({ kind: "end", size: this.#total });
  }
}
