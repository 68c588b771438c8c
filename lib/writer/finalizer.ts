/**
 * Stage 5 of the forward pipeline: qcow2 metadata. L2 tables and refcount
 * blocks are written as soon as they are final, then the L1 table, the
 * refcount table and the header.
 *
 * @module
 */

import { l1SizeFor } from "../format/geometry.ts";
import { encodeRefcountTableEntry } from "../format/refcount.ts";
import { checkBackingFile } from "./_options.ts";
import {
  headerCluster,
  l1Table,
  L2Tables,
  refcountSizing,
} from "./_metadata.ts";
import type { CompressionType } from "../codec/codecs.ts";
import type { HostAllocator } from "./host_allocator.ts";
import type { HostWrite, PlacedRecord } from "./records.ts";

/**
 * Options of {@linkcode MetadataFinalizer}.
 *
 * @example Name zstd in the header of an empty image
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./host_allocator.ts";
 * import { MetadataFinalizer } from "./finalizer.ts";
 * const allocator = new HostAllocator({ clusterSize: 4096 });
 * const finalizer = new MetadataFinalizer({ allocator, compressionType: "zstd" });
 * const writes = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "end" as const, size: 4096 }]).pipeThrough(finalizer),
 * );
 * const image = new Uint8Array(finalizer.summary!.fileSize);
 * for (const w of writes) image.set(w.data, w.offset);
 * assert.strictEqual(image[104], 1); // compression_type: zstd
 * ```
 */
export interface MetadataFinalizerOptions {
  /** The allocator the packer used. */
  allocator: HostAllocator;
  /**
   * Compression type recorded in the header (zstd also sets the
   * incompatible feature bit).
   * @default {"zlib"}
   */
  compressionType?: CompressionType;
  /**
   * The backing file to name in the header (delta images): its name as
   * stored, resolved by readers against the image's directory, and its
   * format. `zero` clusters then become zero entries, so that they do not
   * read from the backing file.
   */
  backingFile?: BackingFileName;
  /** Called with the number of guest bytes mapped so far. */
  onProgress?: (guestBytes: number) => void;
}

/**
 * A backing file as an image names it: the name stored in the header and
 * the format in its backing format extension.
 *
 * @example Name a base image beside the delta
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes, type BackingFileName } from "../../mod.ts";
 * import { imageInfo } from "../tools/mod.ts";
 * const backingFile: BackingFileName = { name: "base.qcow2", format: "qcow2" };
 * const info = await imageInfo(await convertToBytes(new Uint8Array(4096), { backingFile }));
 * assert.strictEqual(info.backingFilename, "base.qcow2");
 * assert.strictEqual(info.backingFilenameFormat, "qcow2");
 * ```
 */
export interface BackingFileName {
  /** The name stored in the image (1 to 1023 bytes of UTF-8). */
  name: string;
  /** The backing file's format. */
  format: "qcow2" | "raw";
}

/**
 * What the finalizer wrote, available once its readable side has closed.
 *
 * @example Count what a writer stored
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Writer, writesToBytes } from "./qcow2_writer.ts";
 * const raw = new Uint8Array(3 * 65536);
 * raw.fill(1, 65536, 2 * 65536); // one data cluster between two zero ones
 * await using writer = new Qcow2Writer();
 * await writesToBytes(ReadableStream.from([raw]).pipeThrough(writer));
 * const summary = await writer.summary;
 * assert.strictEqual(summary.dataClusters, 1);
 * assert.strictEqual(summary.zeroClusters, 2);
 * ```
 */
export interface FinalizerSummary {
  /** Exact input length in bytes. */
  inputSize: number;
  /** Virtual size written to the header (input rounded up to 512). */
  virtualSize: number;
  /** Size of the image file in bytes. */
  fileSize: number;
  /** Guest clusters stored uncompressed. */
  dataClusters: number;
  /** Guest clusters stored compressed. */
  compressedClusters: number;
  /** Guest clusters that read as zeros (unallocated, or zero entries). */
  zeroClusters: number;
  /** Guest clusters left to the backing file (delta images). */
  backingClusters: number;
  /** L2 tables written. */
  l2Tables: number;
  /** Refcount blocks written. */
  refcountBlocks: number;
}

/**
 * Turns placed clusters into a complete qcow2 v3 image as a stream of host
 * writes. Memory holds only the L2 tables and refcount blocks that can
 * still change, the L1 table and the refcount table.
 *
 * @example Finalize an empty image
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./host_allocator.ts";
 * import { MetadataFinalizer } from "./finalizer.ts";
 * const finalizer = new MetadataFinalizer({ allocator: new HostAllocator({ clusterSize: 65536 }) });
 * const writes = await Array.fromAsync(
 *   ReadableStream.from([{ kind: "end" as const, size: 0 }]).pipeThrough(finalizer),
 * );
 * assert.strictEqual(writes.at(-1)!.offset, 0); // the header comes last
 * assert.strictEqual(finalizer.summary!.fileSize, 3 * 65536);
 * ```
 */
export class MetadataFinalizer
  implements TransformStream<PlacedRecord, HostWrite> {
  #stream: TransformStream<PlacedRecord, HostWrite>;
  #summary: FinalizerSummary | undefined;

  /**
   * Creates the stage.
   *
   * @param options Allocator, compression type and progress callback.
   */
  constructor(options: MetadataFinalizerOptions) {
    const state = new FinalizerState(options);
    this.#stream = new TransformStream<PlacedRecord, HostWrite>({
      transform: (record, controller) =>
        state.accept(record, (w) => controller.enqueue(w)),
      flush: (controller) => {
        if (!state.ended) {
          throw new Error(
            "Cannot finalize image: the input ended without an end record",
          );
        }
        this.#summary = state.summary;
        void controller;
      },
    });
  }

  /** The writable side: placed records. */
  get writable(): WritableStream<PlacedRecord> {
    return this.#stream.writable;
  }

  /** The readable side: host writes, the header last. */
  get readable(): ReadableStream<HostWrite> {
    return this.#stream.readable;
  }

  /** What was written, once the stream has finished. */
  get summary(): FinalizerSummary | undefined {
    return this.#summary;
  }
}

class FinalizerState {
  ended = false;
  summary: FinalizerSummary | undefined;
  #alloc: HostAllocator;
  #cs: number;
  #compression: CompressionType;
  #onProgress: ((n: number) => void) | undefined;
  #backingFile: BackingFileName | undefined;
  #tables: L2Tables;
  #l1: number[] = [];
  #reftable: number[] = [];
  #mapped = 0;
  #l2Count = 0;
  #blockCount = 0;

  constructor(options: MetadataFinalizerOptions) {
    this.#alloc = options.allocator;
    this.#cs = this.#alloc.clusterSize;
    this.#compression = options.compressionType ?? "zlib";
    this.#onProgress = options.onProgress;
    this.#backingFile = options.backingFile;
    if (this.#backingFile) checkBackingFile(this.#backingFile);
    this.#tables = new L2Tables(this.#cs, this.#backingFile !== undefined);
  }

  accept(record: PlacedRecord, emit: (w: HostWrite) => void): void {
    if (this.ended) {
      throw new Error(
        "Cannot finalize image: a record arrived after the end record",
      );
    }
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
      throw new Error(
        `Internal error: clusters were mapped beyond the end of the input (${this.#l1.length} L1 entries, ${l1Size} expected)`,
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
      }),
    });
    this.ended = true;
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
        throw new Error(
          `Internal error: refcount block ${index} is outside [${placed}, ${blocks})`,
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
        throw new Error(
          `Internal error: refcount block ${j} was never written`,
        );
      }
      encodeRefcountTableEntry(reftable, j, this.#reftable[j]);
    }
    emit({ offset: reftableOffset, data: reftable });
    return { offset: reftableOffset, clusters: tableClusters };
  }
}
