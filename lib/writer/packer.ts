/**
 * Stage 4 of the forward pipeline: host placement. Normal clusters go to
 * cluster-aligned host offsets, compressed clusters are packed back to
 * back at 512-byte granularity across host cluster boundaries.
 *
 * @module
 */

import { checkRecord } from "./_options.ts";
import { COMPRESSED_SECTOR_SIZE } from "../format/constants.ts";
import { compressedSpan } from "../format/compressed.ts";
import { HostAllocator, type HostAllocatorOptions } from "./host_allocator.ts";
import type { ClusterRecord, PlacedRecord } from "./records.ts";

/**
 * Options of {@linkcode ClusterPacker}: an allocator to share with the
 * finalizer, or the settings to make one.
 *
 * @example A packer that shares its allocator with the finalizer
 * ```ts
 * import assert from "node:assert";
 * import { ClusterPacker, type ClusterPackerOptions } from "./packer.ts";
 * import { HostAllocator } from "./host_allocator.ts";
 * const allocator = new HostAllocator({ clusterSize: 65536 });
 * const options: ClusterPackerOptions = { allocator };
 * assert.strictEqual(new ClusterPacker(options).allocator, allocator);
 * ```
 */
export type ClusterPackerOptions =
  | { allocator: HostAllocator }
  | HostAllocatorOptions;

/**
 * Assigns host offsets to cluster runs and emits the bytes to write with
 * them: a `data` run becomes one `write` plus one `normal` mapping; a
 * `compressed` run becomes `write`s of its payloads (sector-aligned, zero
 * padded, merged where contiguous) plus one `compressed` mapping. `zero`
 * and `end` pass through. The allocator it uses is {@linkcode
 * ClusterPacker.allocator}; give the same one to the `MetadataFinalizer`.
 *
 * @example Place one data cluster after the header cluster
 * ```ts
 * import assert from "node:assert";
 * import { ClusterPacker } from "./packer.ts";
 * const packer = new ClusterPacker({ clusterSize: 512 });
 * const out = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "data" as const, index: 0, count: 1, data: new Uint8Array(512) }])
 *     .pipeThrough(packer),
 * );
 * assert.deepStrictEqual(out[1], { kind: "normal", index: 0, count: 1, hostOffset: 512 });
 * ```
 */
export class ClusterPacker
  extends TransformStream<ClusterRecord, PlacedRecord> {
  /** The host allocator (shared with the finalizer). */
  readonly allocator: HostAllocator;

  /**
   * Creates the stage.
   *
   * @param options A shared allocator, or cluster size and refcount width.
   * @throws {RangeError} For invalid settings.
   */
  constructor(options: ClusterPackerOptions) {
    const allocator = "allocator" in options
      ? options.allocator
      : new HostAllocator(options);
    super({
      transform(record, controller) {
        checkRecord(record, allocator.clusterSize, "place clusters");
        switch (record.kind) {
          case "data": {
            const hostOffset = allocator.allocClusters(record.count);
            controller.enqueue({
              kind: "write",
              offset: hostOffset,
              data: record.data,
            });
            controller.enqueue({
              kind: "normal",
              index: record.index,
              count: record.count,
              hostOffset,
            });
            return;
          }
          case "compressed": {
            const hostOffsets: number[] = [];
            const sectors: number[] = [];
            const { data, lengths, offsets } = record;
            // Payloads that land back to back become one write: a view of
            // `data` when it lays them out as they land (CompressStream's
            // records, with `offsets`), else a copy.
            let runStart = -1;
            let runEnd = -1;
            let runFrom = 0; // where the run starts in data
            let inPlace = true;
            let parts: Uint8Array[] = [];
            const flush = () => {
              if (parts.length === 0) return;
              const length = runEnd - runStart;
              let buf: Uint8Array;
              if (inPlace && runFrom + length <= data.length) {
                buf = data.subarray(runFrom, runFrom + length);
              } else {
                buf = new Uint8Array(length);
                let at = 0;
                for (const p of parts) {
                  buf.set(p, at);
                  at += compressedSpan(p.length);
                }
              }
              controller.enqueue({
                kind: "write",
                offset: runStart,
                data: buf,
              });
              parts = [];
            };
            let from = 0;
            for (let k = 0; k < lengths.length; k++) {
              const length = lengths[k];
              const at = offsets ? offsets[k] : from;
              const payload = data.subarray(at, at + length);
              const offset = allocator.allocCompressed(length);
              const span = compressedSpan(length);
              hostOffsets.push(offset);
              sectors.push(span / COMPRESSED_SECTOR_SIZE);
              if (offset !== runEnd) {
                flush();
                runStart = offset;
                runFrom = at;
                inPlace = offsets !== undefined;
              } else if (at !== runFrom + (offset - runStart)) {
                inPlace = false;
              }
              parts.push(payload);
              runEnd = offset + span;
              from = at + length;
            }
            flush();
            controller.enqueue({
              kind: "compressed",
              index: record.index,
              count: record.count,
              hostOffsets,
              sectors,
            });
            return;
          }
          default:
            controller.enqueue(record);
        }
      },
    });
    this.allocator = allocator;
  }
}
