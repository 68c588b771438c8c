/**
 * Host placement, the first half of `Qcow2PackStream`: normal clusters go
 * to cluster-aligned host offsets, compressed clusters are packed back to
 * back at 512-byte granularity across host cluster boundaries.
 *
 * @module
 */

import { checkRecord } from "./_options.ts";
import { COMPRESSED_SECTOR_SIZE } from "../format/constants.ts";
import { compressedSpan } from "../format/compressed.ts";
import type { HostAllocator } from "./_host_allocator.ts";
import type { ClusterRecord } from "./records.ts";

/**
 * What the packer hands to the layout: guest clusters with their host
 * placement, bytes to write, and the end of input.
 *
 * - `normal`: guest clusters `index..index+count-1` live in the host
 *   clusters starting at `hostOffset`
 * - `compressed`: guest cluster `index + i` is compressed at
 *   `hostOffsets[i]` over `sectors[i]` sectors
 * - `zero`: clusters that read as zeros: left unallocated, or zero entries
 *   when the image has a backing file
 * - `backing`: clusters left unallocated for the backing file to answer
 * - `write`: bytes to write at a host offset
 * - `end`: the input is over; `size` is its exact length in bytes
 */
export type PlacedRecord =
  | { kind: "normal"; index: number; count: number; hostOffset: number }
  | {
    kind: "compressed";
    index: number;
    count: number;
    hostOffsets: number[];
    sectors: number[];
  }
  | { kind: "zero"; index: number; count: number }
  | { kind: "backing"; index: number; count: number }
  | { kind: "write"; offset: number; data: Uint8Array }
  | { kind: "end"; size: number };

/**
 * Assigns host offsets to cluster runs from an allocator and emits the
 * bytes to write with them: a `data` run becomes one `write` plus one
 * `normal` mapping; a `compressed` run becomes `write`s of its payloads
 * (sector-aligned, zero padded, merged where contiguous) plus one
 * `compressed` mapping. `zero`, `backing` and `end` pass through.
 *
 * @example Place one data cluster after the header cluster
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./_host_allocator.ts";
 * import { ClusterPacker, type PlacedRecord } from "./_packer.ts";
 * const packer = new ClusterPacker(new HostAllocator({ clusterSize: 512 }));
 * const out: PlacedRecord[] = [];
 * packer.place({ kind: "data", index: 0, count: 1, data: new Uint8Array(512) }, (r) => out.push(r));
 * assert.deepStrictEqual(out[1], { kind: "normal", index: 0, count: 1, hostOffset: 512 });
 * ```
 */
export class ClusterPacker {
  /** The allocator placements come from. */
  readonly allocator: HostAllocator;
  #next = 0; // the guest cluster after the last one placed
  #ended = false;

  /**
   * @param allocator Where host space comes from (the layout allocates its
   * metadata from the same one).
   */
  constructor(allocator: HostAllocator) {
    this.allocator = allocator;
  }

  /**
   * Checks, once the input has ended, that the end record came.
   *
   * @throws {RangeError} When it did not.
   */
  checkEnded(): void {
    if (!this.#ended) {
      throw new RangeError(
        "Cannot place clusters: the input ended without an end record",
      );
    }
  }

  /**
   * Places one record. The records are checked here, for every layout:
   * whole clusters at this cluster size, in guest order without overlap,
   * none after the end record or beyond the end it gives.
   *
   * @param record A cluster record.
   * @param emit Receives the writes and the mapping, in that order.
   * @throws {RangeError} When the record breaks that contract.
   */
  place(record: ClusterRecord, emit: (placed: PlacedRecord) => void): void {
    const cs = this.allocator.clusterSize;
    checkRecord(record, cs, "place clusters");
    if (this.#ended) {
      throw new RangeError(
        `Cannot place clusters: a ${record.kind} record came after the end record`,
      );
    }
    if (record.kind === "end") {
      const clusters = Math.ceil(record.size / cs);
      if (this.#next > clusters) {
        throw new RangeError(
          `Cannot place clusters: cluster ${
            this.#next - 1
          } is beyond the end of the input (${record.size} bytes, ${clusters} clusters)`,
        );
      }
      this.#ended = true;
    } else {
      if (record.index < this.#next) {
        throw new RangeError(
          `Cannot place clusters: a ${record.kind} record at cluster ${record.index} came after cluster ${
            this.#next - 1
          }; records must be in guest order`,
        );
      }
      this.#next = record.index + record.count;
    }
    switch (record.kind) {
      case "data": {
        const hostOffset = this.allocator.allocClusters(record.count);
        emit({ kind: "write", offset: hostOffset, data: record.data });
        emit({
          kind: "normal",
          index: record.index,
          count: record.count,
          hostOffset,
        });
        return;
      }
      case "compressed":
        this.#placeCompressed(record, emit);
        return;
      default:
        emit(record);
    }
  }

  #placeCompressed(
    record: Extract<ClusterRecord, { kind: "compressed" }>,
    emit: (placed: PlacedRecord) => void,
  ): void {
    const hostOffsets: number[] = [];
    const sectors: number[] = [];
    const { data, lengths, offsets } = record;
    // Payloads that land back to back become one write: a view of `data`
    // when it lays them out as they land (CompressStream's records, with
    // `offsets`), else a copy.
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
      emit({ kind: "write", offset: runStart, data: buf });
      parts = [];
    };
    let from = 0;
    for (let k = 0; k < lengths.length; k++) {
      const length = lengths[k];
      const at = offsets ? offsets[k] : from;
      const payload = data.subarray(at, at + length);
      const offset = this.allocator.allocCompressed(length);
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
    emit({
      kind: "compressed",
      index: record.index,
      count: record.count,
      hostOffsets,
      sectors,
    });
  }
}
