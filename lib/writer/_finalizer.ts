/**
 * qcow2 metadata after the data, the second half of `Qcow2PackStream` in
 * its default layout: L2 tables and refcount blocks are written as soon as
 * they are final, then the L1 table, the refcount table and the header.
 *
 * @module
 */

import { InternalError } from "../format/errors.ts";
import { l1SizeFor } from "../format/geometry.ts";
import { encodeRefcountTableEntry } from "../format/refcount.ts";
import {
  headerCluster,
  l1Table,
  L2Tables,
  refcountSizing,
} from "./_metadata.ts";
import type { CompressionType } from "../codec/codecs.ts";
import type { HostAllocator } from "./_host_allocator.ts";
import type { PlacedRecord } from "./_packer.ts";
import type { BackingFileName, PackSummary } from "./pack_stream.ts";
import type { HostWrite } from "./records.ts";

/** Options of {@linkcode MetadataFinalizer}, checked by the caller. */
export interface MetadataFinalizerOptions {
  /** The allocator the packer uses. */
  allocator: HostAllocator;
  /** Compression type recorded in the header. */
  compressionType: CompressionType;
  /** The backing file to name in the header (delta images). */
  backingFile: BackingFileName | undefined;
  /** Called with the number of guest bytes mapped so far. */
  onProgress: ((guestBytes: number) => void) | undefined;
  /** The format version (default v3). */
  compat?: "v2" | "v3";
  /** Set the lazy refcounts feature bit. */
  lazyRefcounts?: boolean;
}

/**
 * Turns placed clusters into a complete qcow2 v3 image as host writes, the
 * header last. Memory holds only the L2 tables and refcount blocks that can
 * still change, the L1 table and the refcount table.
 *
 * @example Finalize an empty image
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./_host_allocator.ts";
 * import { MetadataFinalizer } from "./_finalizer.ts";
 * import type { HostWrite } from "./records.ts";
 * const finalizer = new MetadataFinalizer({
 *   allocator: new HostAllocator({ clusterSize: 65536 }),
 *   compressionType: "zlib",
 *   backingFile: undefined,
 *   onProgress: undefined,
 * });
 * const writes: HostWrite[] = [];
 * finalizer.accept({ kind: "end", size: 0 }, (w) => writes.push(w));
 * assert.strictEqual(writes.at(-1)!.offset, 0); // the header comes last
 * assert.strictEqual(finalizer.summary!.fileSize, 3 * 65536);
 * ```
 */
export class MetadataFinalizer {
  /** What was written, once the end record has been handled. */
  summary: PackSummary | undefined;
  #alloc: HostAllocator;
  #cs: number;
  #compression: CompressionType;
  #onProgress: ((n: number) => void) | undefined;
  #backingFile: BackingFileName | undefined;
  #version: Pick<MetadataFinalizerOptions, "compat" | "lazyRefcounts">;
  #tables: L2Tables;
  #l1: number[] = [];
  #reftable: number[] = [];
  #mapped = 0;
  #l2Count = 0;
  #blockCount = 0;

  /** @param options Allocator, header fields and progress callback. */
  constructor(options: MetadataFinalizerOptions) {
    this.#alloc = options.allocator;
    this.#cs = this.#alloc.clusterSize;
    this.#compression = options.compressionType;
    this.#onProgress = options.onProgress;
    this.#backingFile = options.backingFile;
    this.#version = {
      compat: options.compat,
      lazyRefcounts: options.lazyRefcounts,
    };
    this.#tables = new L2Tables(this.#cs, this.#backingFile !== undefined);
  }

  /**
   * Takes one placed record: passes writes on, maps clusters (writing the
   * tables and blocks that became final), and at the end writes the rest.
   *
   * @param record A placed record.
   * @param emit Receives host writes.
   * @throws {InternalError} For clusters mapped out of order or beyond the end
   * (internal errors: the packer lets no such record through).
   */
  accept(record: PlacedRecord, emit: (w: HostWrite) => void): void {
    if (record.kind === "write") {
      emit({ offset: record.offset, data: record.data });
      return;
    }
    if (record.kind === "end") {
      this.#finish(record.size, emit);
      return;
    }
    this.#tables.map(record);
    this.#mapped += record.count * this.#cs;
    this.#onProgress?.(this.#mapped);
    this.#writeTablesBelow(
      Math.floor((record.index + record.count) / (this.#cs / 8)),
      emit,
    );
    this.#writeFinalBlocks(emit);
  }

  #writeTablesBelow(limit: number, emit: (w: HostWrite) => void): void {
    for (const { index, table } of this.#tables.takeBelow(limit)) {
      const offset = this.#alloc.allocClusters(1);
      this.#l1[index] = offset;
      this.#l2Count++;
      emit({ offset, data: table });
    }
  }

  #writeFinalBlocks(emit: (w: HostWrite) => void): void {
    for (;;) {
      const blocks = this.#alloc.takeFinalBlocks();
      if (blocks.length === 0) return;
      for (const { index, block } of blocks) {
        const offset = this.#alloc.allocClusters(1);
        this.#reftable[index] = offset;
        this.#blockCount++;
        emit({ offset, data: block });
      }
    }
  }

  #finish(inputSize: number, emit: (w: HostWrite) => void): void {
    // QEMU sees a disk in whole 512-byte sectors; round up so every input
    // byte stays visible.
    const virtualSize = Math.ceil(inputSize / 512) * 512;
    this.#writeTablesBelow(Infinity, emit);
    const l1Size = l1SizeFor(virtualSize, Math.log2(this.#cs), false);
    if (this.#l1.length > l1Size) {
      throw new InternalError(
        `Cannot write the L1 table: clusters were mapped beyond the end of the input (${this.#l1.length} L1 entries, ${l1Size} expected)`,
      );
    }
    let l1Offset = 0;
    if (l1Size > 0) {
      const l1 = l1Table(l1Size, this.#cs, this.#l1);
      l1Offset = this.#alloc.allocClusters(l1.length / this.#cs);
      emit({ offset: l1Offset, data: l1 });
    }
    this.#writeFinalBlocks(emit);
    const reftable = this.#writeLastBlocks(emit);
    emit({
      offset: 0,
      data: headerCluster({
        virtualSize,
        clusterSize: this.#cs,
        refcountOrder: this.#alloc.refcountOrder,
        compression: this.#compression,
        l1Size,
        l1TableOffset: l1Offset,
        refcountTableOffset: reftable.offset,
        refcountTableClusters: reftable.clusters,
        backingFile: this.#backingFile,
        ...this.#version,
      }),
    });
    const counts = this.#tables.counts;
    this.summary = {
      inputSize,
      virtualSize,
      fileSize: this.#alloc.end,
      dataClusters: counts.data,
      compressedClusters: counts.compressed,
      zeroClusters: counts.zero,
      backingClusters: counts.backing,
      l2Tables: this.#l2Count,
      refcountBlocks: this.#blockCount,
      spoolBytes: 0,
    };
  }

  /**
   * Places the refcount blocks still open and the refcount table at the end
   * of the file (they count themselves) and writes them.
   */
  #writeLastBlocks(
    emit: (w: HostWrite) => void,
  ): { offset: number; clusters: number } {
    const cs = this.#cs;
    this.#alloc.closeTail();
    const placed = this.#reftable.length;
    const { blocks, tableClusters } = refcountSizing(
      this.#alloc.end / cs - placed,
      this.#alloc.blockEntries,
      cs,
    );
    const newBlocks = blocks - placed;
    const blocksOffset = newBlocks > 0
      ? this.#alloc.allocClusters(newBlocks)
      : 0;
    const reftableOffset = this.#alloc.allocClusters(tableClusters);
    for (const { index, block } of this.#alloc.takeFinalBlocks(true)) {
      if (index < placed || index >= blocks) {
        throw new InternalError(
          `Cannot write the refcount table: refcount block ${index} is outside [${placed}, ${blocks})`,
        );
      }
      const offset = blocksOffset + (index - placed) * cs;
      this.#reftable[index] = offset;
      this.#blockCount++;
      emit({ offset, data: block });
    }
    const reftable = new Uint8Array(tableClusters * cs);
    for (let j = 0; j < blocks; j++) {
      if (this.#reftable[j] === undefined) {
        throw new InternalError(
          `Cannot write the refcount table: refcount block ${j} was never written`,
        );
      }
      encodeRefcountTableEntry(reftable, j, this.#reftable[j]);
    }
    emit({ offset: reftableOffset, data: reftable });
    return { offset: reftableOffset, clusters: tableClusters };
  }
}
