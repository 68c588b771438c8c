/**
 * Stage 2 of the forward pipeline: all-zero clusters are marked so that
 * they are never allocated.
 *
 * @module
 */

import type { ClusterRecord } from "./records.ts";
import { isZero } from "../bytes/zeros.ts";
import { checkClusterSize, checkRecord } from "./_options.ts";

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
 */
export class ZeroDetectStream
  extends TransformStream<ClusterRecord, ClusterRecord> {
  /**
   * Creates the stage.
   *
   * @param options The cluster size.
   * @throws {RangeError} For an invalid cluster size.
   */
  constructor(options: { clusterSize: number }) {
    const cs = checkClusterSize(options.clusterSize);
    super({
      transform(record, controller) {
        checkRecord(record, cs, "detect zero clusters");
        if (record.kind !== "data") {
          controller.enqueue(record);
          return;
        }
        let runStart = 0;
        let runZero = isZero(record.data.subarray(0, cs));
        for (let i = 1; i <= record.count; i++) {
          const zero = i < record.count
            ? isZero(record.data.subarray(i * cs, (i + 1) * cs))
            : !runZero;
          if (zero === runZero) continue;
          const index = record.index + runStart;
          const count = i - runStart;
          controller.enqueue(
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
      },
    });
  }
}
