/**
 * Stage 5 of the forward pipeline: qcow2 metadata. L2 tables and refcount
 * blocks are written as soon as they are final, then the L1 table, the
 * refcount table and the header.
 *
 * @module
 */

import { COMPRESSION_TYPE } from "../format/constants.ts";
import {
  defaultHeader,
  type Qcow2Header,
  serializeHeader,
} from "../format/header.ts";
import { l1SizeFor } from "../format/geometry.ts";
import { encodeL1Entry } from "../format/l1.ts";
import { encodeL2Entry, type L2Layout } from "../format/l2.ts";
import { encodeRefcountTableEntry } from "../format/refcount.ts";
import type { CompressionType } from "../codec/codecs.ts";
import type { HostAllocator } from "./host_allocator.ts";
import type { HostWrite, PlacedRecord } from "./records.ts";

/**
 * Options of {@linkcode MetadataFinalizer}.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./host_allocator.ts";
 * import type { MetadataFinalizerOptions } from "./finalizer.ts";
 * const o: MetadataFinalizerOptions = { allocator: new HostAllocator({ clusterSize: 65536 }) };
 * assert.ok(o.allocator);
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
 * import { convertToBytes, imageInfo, type BackingFileName } from "../../mod.ts";
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
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { FinalizerSummary } from "./finalizer.ts";
 * const s: Partial<FinalizerSummary> = { virtualSize: 1024 };
 * assert.strictEqual(s.virtualSize, 1024);
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
  #entries: number;
  #layout: L2Layout;
  #compression: CompressionType;
  #onProgress: ((n: number) => void) | undefined;
  #tables = new Map<number, Uint8Array>();
  #l1: number[] = [];
  #reftable: number[] = [];
  #doneBelow = 0; // L2 tables with lower indices are final
  #mapped = 0;
  #counts = {
    data: 0,
    compressed: 0,
    zero: 0,
    backing: 0,
    l2: 0,
    blocks: 0,
  };
  #backingFile: BackingFileName | undefined;

  constructor(options: MetadataFinalizerOptions) {
    this.#alloc = options.allocator;
    this.#cs = this.#alloc.clusterSize;
    this.#entries = this.#cs / 8;
    this.#layout = {
      clusterBits: Math.log2(this.#cs),
      extendedL2: false,
      dataFile: false,
    };
    this.#compression = options.compressionType ?? "zlib";
    this.#onProgress = options.onProgress;
    this.#backingFile = options.backingFile;
    if (this.#backingFile) checkBackingFile(this.#backingFile);
  }

  #table(index: number): Uint8Array {
    const t = Math.floor(index / this.#entries);
    if (t < this.#doneBelow) {
      throw new Error(
        `Internal error: L2 table ${t} was already written (cluster ${index} arrived late)`,
      );
    }
    let table = this.#tables.get(t);
    if (!table) {
      table = new Uint8Array(this.#cs);
      this.#tables.set(t, table);
    }
    return table;
  }

  accept(record: PlacedRecord, emit: (w: HostWrite) => void): void {
    if (this.ended) {
      throw new Error(
        "Cannot finalize image: a record arrived after the end record",
      );
    }
    const E = this.#entries;
    switch (record.kind) {
      case "write":
        emit({ offset: record.offset, data: record.data });
        return;
      case "normal":
        for (let i = 0; i < record.count; i++) {
          const index = record.index + i;
          encodeL2Entry(this.#table(index), index % E, {
            type: "normal",
            hostOffset: record.hostOffset + i * this.#cs,
            copied: true,
          }, this.#layout);
        }
        this.#counts.data += record.count;
        break;
      case "compressed":
        for (let i = 0; i < record.count; i++) {
          const index = record.index + i;
          encodeL2Entry(this.#table(index), index % E, {
            type: "compressed",
            hostOffset: record.hostOffsets[i],
            sectors: record.sectors[i],
          }, this.#layout);
        }
        this.#counts.compressed += record.count;
        break;
      case "zero":
        // Over a backing file, unallocated would read the backing's bytes.
        if (this.#backingFile) {
          for (let i = 0; i < record.count; i++) {
            const index = record.index + i;
            encodeL2Entry(this.#table(index), index % E, {
              type: "zero-plain",
            }, this.#layout);
          }
        }
        this.#counts.zero += record.count;
        break;
      case "backing":
        this.#counts.backing += record.count;
        break;
      case "end":
        this.#finish(record.size, emit);
        return;
    }
    this.#mapped += record.count * this.#cs;
    this.#onProgress?.(this.#mapped);
    this.#writeTablesBelow(Math.floor((record.index + record.count) / E), emit);
    this.#writeFinalBlocks(emit);
  }

  #writeTablesBelow(limit: number, emit: (w: HostWrite) => void): void {
    if (limit <= this.#doneBelow) return;
    for (const t of [...this.#tables.keys()].sort((a, b) => a - b)) {
      if (t >= limit) break;
      const table = this.#tables.get(t)!;
      this.#tables.delete(t);
      const offset = this.#alloc.allocClusters(1);
      this.#l1[t] = offset;
      this.#counts.l2++;
      emit({ offset, data: table });
    }
    this.#doneBelow = limit;
  }

  #writeFinalBlocks(emit: (w: HostWrite) => void): void {
    for (;;) {
      const blocks = this.#alloc.takeFinalBlocks();
      if (blocks.length === 0) return;
      for (const { index, block } of blocks) {
        const offset = this.#alloc.allocClusters(1);
        this.#reftable[index] = offset;
        this.#counts.blocks++;
        emit({ offset, data: block });
      }
    }
  }

  #finish(inputSize: number, emit: (w: HostWrite) => void): void {
    const cs = this.#cs;
    // QEMU sees a disk in whole 512-byte sectors; round up so every input
    // byte stays visible.
    const virtualSize = Math.ceil(inputSize / 512) * 512;
    const clusterBits = Math.log2(cs);
    this.#writeTablesBelow(Infinity, emit);
    const l1Size = l1SizeFor(virtualSize, clusterBits, false);
    if (this.#l1.length > l1Size) {
      throw new Error(
        `Internal error: clusters were mapped beyond the end of the input (${this.#l1.length} L1 entries, ${l1Size} expected)`,
      );
    }
    let l1Offset = 0;
    const l1Bytes = new Uint8Array(Math.ceil((l1Size * 8) / cs) * cs);
    if (l1Size > 0) {
      l1Offset = this.#alloc.allocClusters(l1Bytes.length / cs);
      for (let t = 0; t < this.#l1.length; t++) {
        if (this.#l1[t]) {
          encodeL1Entry(l1Bytes, t, { l2Offset: this.#l1[t], copied: true });
        }
      }
      emit({ offset: l1Offset, data: l1Bytes });
    }
    this.#writeFinalBlocks(emit);

    // The remaining refcount blocks and the refcount table count
    // themselves: find the smallest layout that covers the whole file.
    this.#alloc.closeTail();
    const R = this.#alloc.blockEntries;
    const placed = this.#reftable.length;
    const before = this.#alloc.end / cs;
    let blocks = Math.ceil(before / R);
    let tableClusters = 0;
    for (;;) {
      tableClusters = Math.ceil((blocks * 8) / cs);
      const total = before + (blocks - placed) + tableClusters;
      const need = Math.ceil(total / R);
      if (need === blocks) break;
      blocks = need;
    }
    const newBlocks = blocks - placed;
    const blocksOffset = newBlocks > 0
      ? this.#alloc.allocClusters(newBlocks)
      : 0;
    const reftableOffset = this.#alloc.allocClusters(tableClusters);
    const last = this.#alloc.takeFinalBlocks(true);
    for (const { index, block } of last) {
      if (index < placed || index >= blocks) {
        throw new Error(
          `Internal error: refcount block ${index} is outside [${placed}, ${blocks})`,
        );
      }
      const offset = blocksOffset + (index - placed) * cs;
      this.#reftable[index] = offset;
      this.#counts.blocks++;
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

    const header = defaultHeader({
      size: virtualSize,
      clusterBits,
      refcountOrder: this.#alloc.refcountOrder,
      compressionType: this.#compression === "zstd"
        ? COMPRESSION_TYPE.ZSTD
        : COMPRESSION_TYPE.ZLIB,
    });
    header.l1Size = l1Size;
    header.l1TableOffset = l1Offset;
    header.refcountTableOffset = reftableOffset;
    header.refcountTableClusters = tableClusters;
    if (this.#backingFile) nameBackingFile(header, this.#backingFile, cs);
    const headerCluster = new Uint8Array(cs);
    headerCluster.set(serializeHeader(header));
    emit({ offset: 0, data: headerCluster });

    this.ended = true;
    this.summary = {
      inputSize,
      virtualSize,
      fileSize: this.#alloc.end,
      dataClusters: this.#counts.data,
      compressedClusters: this.#counts.compressed,
      zeroClusters: this.#counts.zero,
      backingClusters: this.#counts.backing,
      l2Tables: this.#counts.l2,
      refcountBlocks: this.#counts.blocks,
    };
  }
}

/** QEMU's limit on a backing file name (1023 bytes and a NUL). */
const MAX_BACKING_NAME = 1023;

function checkBackingFile(backing: BackingFileName): void {
  const bytes = new TextEncoder().encode(backing.name).length;
  if (bytes < 1 || bytes > MAX_BACKING_NAME || backing.name.includes("\0")) {
    throw new RangeError(
      `Cannot name backing file "${backing.name}": a name is 1 to ${MAX_BACKING_NAME} bytes without NUL (it has ${bytes})`,
    );
  }
  if (backing.format !== "qcow2" && backing.format !== "raw") {
    throw new RangeError(
      `Cannot name backing file "${backing.name}": format "${backing.format}" is not qcow2 or raw`,
    );
  }
}

/**
 * Puts the backing file's name and format into a header: the format as a
 * backing format extension, the name right after the extensions, as QEMU
 * lays them out in the first cluster.
 */
function nameBackingFile(
  header: Qcow2Header,
  backing: BackingFileName,
  clusterSize: number,
): void {
  header.extensions.unshift({ kind: "backing-format", format: backing.format });
  const name = new TextEncoder().encode(backing.name);
  const withoutName = serializeHeader(header).length;
  if (withoutName + name.length > clusterSize) {
    throw new RangeError(
      `Cannot name backing file "${backing.name}": the header, its extensions and the name need ${
        withoutName + name.length
      } bytes, more than the ${clusterSize}-byte first cluster`,
    );
  }
  header.backingFile = backing.name;
  header.backingFileOffset = withoutName;
  header.backingFileSize = name.length;
}
