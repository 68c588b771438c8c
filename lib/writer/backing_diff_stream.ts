/**
 * The forward pipeline's stage for delta images: clusters that read the
 * same as the backing image are left to it.
 *
 * @module
 */

import { checkClusterSize, checkRecord } from "./_options.ts";
import { isZero } from "../bytes/zeros.ts";
import type { ClusterRecord } from "./records.ts";
import type { GuestImage } from "../reader/image.ts";
import { readPastEnd } from "../reader/read.ts";

/**
 * Options of {@linkcode BackingDiffStream}.
 *
 * @example Diff against a base image
 * ```ts
 * import assert from "node:assert";
 * import { BackingDiffStream, openImage } from "../../mod.ts";
 * await using base = await openImage(new Uint8Array(8192).fill(1));
 * const stage = new BackingDiffStream({ backing: base, clusterSize: 4096 });
 * assert.ok(stage.readable instanceof ReadableStream);
 * ```
 */
export interface BackingDiffStreamOptions {
  /** The backing image's guest view (its whole chain). */
  backing: GuestImage;
  /** Cluster size in bytes. */
  clusterSize: number;
  /**
   * Most backing bytes read at once.
   * @default {4194304} (4 MiB)
   */
  readBytes?: number;
}

/**
 * Compares clusters with the backing image, between zero detection and
 * compression. A `data` cluster that reads the same in the backing becomes
 * a `backing` run (left unallocated: the backing answers). A `zero` cluster
 * stays `zero` (written as a zero entry) only where the backing does not
 * read as zeros; elsewhere it is left to the backing too. The backing is
 * read only where its extents hold data, so a sparse backing costs
 * nothing.
 *
 * @example One cluster changed out of four
 * ```ts
 * import assert from "node:assert";
 * import { BackingDiffStream, openImage } from "../../mod.ts";
 * const cs = 4096;
 * const base = new Uint8Array(4 * cs).fill(1);
 * await using backing = await openImage(base);
 * const input = base.slice();
 * input.fill(2, cs, 2 * cs);
 * const out = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "data" as const, index: 0, count: 4, data: input }])
 *     .pipeThrough(new BackingDiffStream({ backing, clusterSize: cs })),
 * );
 * assert.deepStrictEqual(out.map((r) => [r.kind, "count" in r ? r.count : 0]), [
 *   ["backing", 1],
 *   ["data", 1],
 *   ["backing", 2],
 * ]);
 * ```
 */
export class BackingDiffStream
  extends TransformStream<ClusterRecord, ClusterRecord> {
  /**
   * Creates the stage.
   *
   * @param options The backing image and the cluster size.
   * @throws {RangeError} For an invalid cluster size or read size.
   */
  constructor(options: BackingDiffStreamOptions) {
    const cs = checkClusterSize(options.clusterSize);
    const readBytes = options.readBytes ?? 4 * 1024 * 1024;
    if (!Number.isSafeInteger(readBytes) || readBytes < 1) {
      throw new RangeError(
        `Cannot create backing diff stream: readBytes ${readBytes} must be a positive integer`,
      );
    }
    const readClusters = Math.max(1, Math.floor(readBytes / cs));
    const { backing } = options;
    super({
      async transform(record, controller) {
        checkRecord(record, cs, "compare clusters with the backing image");
        if (record.kind !== "data" && record.kind !== "zero") {
          controller.enqueue(record);
          return;
        }
        const out = new RunMerger(record, cs, (r) => controller.enqueue(r));
        for await (const run of backingRuns(backing, record, cs)) {
          if (run.zero) {
            // The backing reads zeros here: input zeros are the same, input
            // data (non-zero clusters) differs.
            out.add(run.start, run.count, record.kind === "zero");
            continue;
          }
          for (let c = 0; c < run.count; c += readClusters) {
            const start = run.start + c;
            const n = Math.min(readClusters, run.count - c);
            const theirs = await readPastEnd(backing, start * cs, n * cs);
            for (let i = 0; i < n; i++) {
              const b = theirs.subarray(i * cs, (i + 1) * cs);
              out.add(
                start + i,
                1,
                record.kind === "zero"
                  ? isZero(b)
                  : sameBytes(out.bytesOf(start + i), b),
              );
            }
          }
        }
        out.flush();
      },
    });
  }
}

/** Cluster runs of a record, by what the backing's extents say. */
interface BackingRun {
  /** First guest cluster. */
  start: number;
  /** Clusters. */
  count: number;
  /** Whether the backing reads zeros over all of them (no read needed). */
  zero: boolean;
}

/**
 * Splits the clusters of `record` into runs the backing surely reads as
 * zeros (its zero and unallocated extents, and past its end) and runs that
 * touch its data, in order.
 */
async function* backingRuns(
  backing: GuestImage,
  record: { index: number; count: number },
  cs: number,
): AsyncGenerator<BackingRun> {
  const first = record.index;
  const end = record.index + record.count;
  const inside = Math.min(end * cs, backing.virtualSize) - first * cs;
  let next = first;
  if (inside > 0) {
    for await (const e of backing.extents(first * cs, inside)) {
      const from = Math.floor(e.offset / cs);
      const to = Math.ceil((e.offset + e.length) / cs);
      if (e.kind === "data" || e.kind === "compressed") {
        if (from > next) yield { start: next, count: from - next, zero: true };
        const start = Math.max(from, next);
        if (to > start) yield { start, count: to - start, zero: false };
        next = Math.max(next, to);
      } else {
        // Clusters wholly inside a zero extent; a cluster it shares with
        // data that follows is that data's.
        const whole = Math.floor((e.offset + e.length) / cs);
        if (whole > next) {
          yield { start: next, count: whole - next, zero: true };
          next = whole;
        }
      }
    }
  }
  if (end > next) yield { start: next, count: end - next, zero: true };
}

/** Whether two equally long arrays hold the same bytes. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  const length = a.length;
  if (length !== b.length) return false;
  if ((a.byteOffset & 3) === 0 && (b.byteOffset & 3) === 0) {
    const n = length >>> 2;
    const wa = new Int32Array(a.buffer, a.byteOffset, n);
    const wb = new Int32Array(b.buffer, b.byteOffset, n);
    for (let i = 0; i < n; i++) if (wa[i] !== wb[i]) return false;
    for (let i = n * 4; i < length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Emits a record's clusters as runs: those the backing answers as
 * `backing`, the others as the record's own kind (`data` keeps its bytes).
 */
class RunMerger {
  #record: { kind: "data" | "zero"; index: number; count: number };
  #data: Uint8Array | undefined;
  #cs: number;
  #emit: (r: ClusterRecord) => void;
  #start = -1;
  #count = 0;
  #same = false;

  constructor(
    record: Extract<ClusterRecord, { kind: "data" | "zero" }>,
    cs: number,
    emit: (r: ClusterRecord) => void,
  ) {
    this.#record = record;
    this.#data = record.kind === "data" ? record.data : undefined;
    this.#cs = cs;
    this.#emit = emit;
  }

  /** The input bytes of guest cluster `index` (data records). */
  bytesOf(index: number): Uint8Array {
    const at = (index - this.#record.index) * this.#cs;
    return this.#data!.subarray(at, at + this.#cs);
  }

  /** Adds `count` clusters from `start`: the same as the backing, or not. */
  add(start: number, count: number, same: boolean): void {
    if (this.#count > 0 && same === this.#same) {
      this.#count += count;
      return;
    }
    this.flush();
    this.#start = start;
    this.#count = count;
    this.#same = same;
  }

  /** Emits the pending run. */
  flush(): void {
    if (this.#count === 0) return;
    const index = this.#start;
    const count = this.#count;
    this.#count = 0;
    if (this.#same) {
      this.#emit({ kind: "backing", index, count });
    } else if (this.#data) {
      const at = (index - this.#record.index) * this.#cs;
      this.#emit({
        kind: "data",
        index,
        count,
        data: this.#data.subarray(at, at + count * this.#cs),
      });
    } else {
      this.#emit({ kind: "zero", index, count });
    }
  }
}
