/**
 * Stage 2 of the forward pipeline: all-zero clusters are marked so that
 * they are never allocated.
 *
 * @module
 */

import type { ClusterRecord } from "./records.ts";
import { isZero } from "../bytes/zeros.ts";
import { checkClusterSize, checkRecord } from "./_options.ts";

/** Options of {@linkcode ZeroDetectStream}. */
export interface ZeroDetectOptions {
  /** Cluster size in bytes. */
  clusterSize: number;
  /**
   * The granularity of zero detection in bytes, as qemu-img's `-S`: 0
   * keeps every cluster as data, zeros included (zero runs become data
   * records of zeros); a size larger than a cluster leaves zeros
   * unallocated only in whole blocks of that size (aligned to it) that are
   * all zero, and stores the other clusters of a block holding data as
   * data. Sizes up to a cluster detect zeros cluster by cluster.
   * @default {clusterSize}
   */
  sparseSize?: number;
}

/** Bytes of zeros handed on at most in one data record (`sparseSize` 0). */
const ZERO_RUN_BYTES = 1 << 20;

/**
 * Splits `data` runs into `zero` runs (clusters whose bytes are all zero)
 * and `data` runs (the rest, as views of the input). Other records pass
 * through unchanged.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { ZeroDetectStream } from "./zero_stream.ts";
 * const data = new Uint8Array(3 * 512);
 * data[600] = 1; // cluster 1 holds data
 * const out = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "data" as const, index: 0, count: 3, data }])
 *     .pipeThrough(new ZeroDetectStream({ clusterSize: 512 })),
 * );
 * assert.deepStrictEqual(out.map((r) => r.kind), ["zero", "data", "zero"]);
 * ```
 *
 * @example qemu-img's `-S 0`: zeros stored as data
 * ```ts
 * import assert from "node:assert";
 * import { ZeroDetectStream } from "./zero_stream.ts";
 * const out = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "zero" as const, index: 0, count: 4 }])
 *     .pipeThrough(new ZeroDetectStream({ clusterSize: 512, sparseSize: 0 })),
 * );
 * assert.deepStrictEqual(out.map((r) => [r.kind, "count" in r && r.count]), [["data", 4]]);
 * ```
 */
export class ZeroDetectStream
  extends TransformStream<ClusterRecord, ClusterRecord> {
  /**
   * Creates the stage.
   *
   * @param options The cluster size and the detection granularity.
   * @throws {RangeError} For an invalid cluster size, or a negative or
   * non-integer `sparseSize`.
   */
  constructor(options: ZeroDetectOptions) {
    const cs = checkClusterSize(options.clusterSize);
    const sparse = options.sparseSize ?? cs;
    if (!Number.isSafeInteger(sparse) || sparse < 0) {
      throw new RangeError(
        `Cannot detect zero clusters: sparse size ${sparse} is not a non-negative integer`,
      );
    }
    const split = (
      record: ClusterRecord,
      emit: (r: ClusterRecord) => void,
    ) => {
      checkRecord(record, cs, "detect zero clusters");
      if (record.kind !== "data") {
        emit(record);
        return;
      }
      splitZeros(record, cs, emit);
    };
    if (sparse === 0) {
      super({
        transform(record, controller) {
          checkRecord(record, cs, "detect zero clusters");
          if (record.kind !== "zero") {
            controller.enqueue(record);
            return;
          }
          zerosAsData(record, cs, (r) => controller.enqueue(r));
        },
      });
      return;
    }
    const blockClusters = Math.ceil(sparse / cs);
    if (blockClusters <= 1) {
      super({
        transform(record, controller) {
          split(record, (r) => controller.enqueue(r));
        },
      });
      return;
    }
    const blocks = new SparseBlocks(cs, blockClusters);
    super({
      transform(record, controller) {
        const emit = (r: ClusterRecord) => controller.enqueue(r);
        split(record, (r) => blocks.add(r, emit));
      },
    });
  }
}

/** Splits a data run into its zero and data runs, in order. */
function splitZeros(
  record: Extract<ClusterRecord, { kind: "data" }>,
  cs: number,
  emit: (r: ClusterRecord) => void,
): void {
  let runStart = 0;
  let runZero = isZero(record.data.subarray(0, cs));
  for (let i = 1; i <= record.count; i++) {
    const zero = i < record.count
      ? isZero(record.data.subarray(i * cs, (i + 1) * cs))
      : !runZero;
    if (zero === runZero) continue;
    const index = record.index + runStart;
    const count = i - runStart;
    emit(
      runZero ? { kind: "zero", index, count } : {
        kind: "data",
        index,
        count,
        data: record.data.subarray(runStart * cs, i * cs),
      },
    );
    runStart = i;
    runZero = zero;
  }
}

/** A zero run as data records of zeros, a bounded number of bytes each. */
function zerosAsData(
  record: { index: number; count: number },
  cs: number,
  emit: (r: ClusterRecord) => void,
): void {
  const per = Math.max(1, Math.floor(ZERO_RUN_BYTES / cs));
  for (let done = 0; done < record.count; done += per) {
    const count = Math.min(per, record.count - done);
    // A new buffer each time: later stages may hand buffers on.
    emit({
      kind: "data",
      index: record.index + done,
      count,
      data: new Uint8Array(count * cs),
    });
  }
}

/**
 * Holds the records of one block of `blockClusters` clusters until the
 * block is complete: a block holding data stores its zero clusters as
 * data; whole zero blocks pass as zero runs.
 */
class SparseBlocks {
  #cs: number;
  #per: number;
  #block = -1;
  #held: ClusterRecord[] = [];
  #data = false;

  constructor(cs: number, blockClusters: number) {
    this.#cs = cs;
    this.#per = blockClusters;
  }

  add(record: ClusterRecord, emit: (r: ClusterRecord) => void): void {
    if (record.kind !== "data" && record.kind !== "zero") {
      this.#flush(emit);
      emit(record);
      return;
    }
    let { index, count } = record;
    const end = index + count;
    while (index < end) {
      const block = Math.floor(index / this.#per);
      if (block !== this.#block) {
        this.#flush(emit);
        this.#block = block;
      }
      const stop = Math.min(end, (block + 1) * this.#per);
      const from = index - record.index;
      const part: ClusterRecord = record.kind === "data"
        ? {
          kind: "data",
          index,
          count: stop - index,
          data: record.data.subarray(
            from * this.#cs,
            (from + stop - index) * this.#cs,
          ),
        }
        : { kind: "zero", index, count: stop - index };
      if (record.kind === "zero" && stop - index === this.#per) {
        // A whole block of zeros.
        emit(part);
      } else {
        this.#held.push(part);
        this.#data ||= record.kind === "data";
      }
      index = stop;
    }
  }

  #flush(emit: (r: ClusterRecord) => void): void {
    for (const r of this.#held) {
      if (r.kind === "zero" && this.#data) zerosAsData(r, this.#cs, emit);
      else emit(r);
    }
    this.#held = [];
    this.#data = false;
  }
}
