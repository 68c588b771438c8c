/**
 * Host space allocation and reference counting for a qcow2 file being
 * written front to back. Private to `Qcow2PackStream`, which owns one: its
 * packer and its metadata draw from the same allocator.
 *
 * @module
 */

import { compressedSpan } from "../format/compressed.ts";
import {
  getRefcount,
  refcountBlockEntries,
  refcountMax,
  setRefcount,
} from "../format/refcount.ts";
import { checkClusterSize, refcountOrderOf } from "./_options.ts";

/** Partly used clusters kept open for compressed payloads. */
const MAX_FRAGMENTS = 8;

/**
 * Options of {@linkcode HostAllocator}.
 *
 * @example Keep payloads in allocation order
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./_host_allocator.ts";
 * const alloc = new HostAllocator({ clusterSize: 4096, backfill: false });
 * const a = alloc.allocCompressed(3000);
 * const table = alloc.allocClusters(1);
 * const b = alloc.allocCompressed(500); // would fit after `a` with backfill
 * assert.deepStrictEqual([a, table, b], [4096, 8192, 12288]);
 * ```
 */
export interface HostAllocatorOptions {
  /** Cluster size in bytes. */
  clusterSize: number;
  /**
   * Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64.
   * @default {16}
   */
  refcountBits?: number;
  /**
   * Let a compressed payload go back into the partly used cluster after
   * whole clusters were allocated past it (QEMU does; saves space). Off,
   * host offsets follow allocation order: the streamable layout needs its
   * data in guest order.
   * @default {true}
   */
  backfill?: boolean;
}

/**
 * A refcount block whose counts can no longer change.
 *
 * @example Take the block of the clusters allocated so far
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./_host_allocator.ts";
 * import { getRefcount } from "../format/refcount.ts";
 * const alloc = new HostAllocator({ clusterSize: 512, refcountBits: 16 });
 * alloc.allocClusters(300); // past the first block's 256 clusters
 * const [first] = alloc.takeFinalBlocks();
 * assert.strictEqual(first.index, 0);
 * assert.strictEqual(getRefcount(first.block, 255, alloc.refcountOrder), 1);
 * ```
 */
export interface FinalRefcountBlock {
  /** Refcount table index of the block. */
  index: number;
  /** The block's bytes (one cluster). */
  block: Uint8Array;
}

/**
 * Hands out host space from the start of the file to its end and counts
 * references the way QEMU does:
 *
 * - whole clusters (data, tables) are allocated at the end of the file with
 *   refcount 1;
 * - compressed payloads are packed back to back at 512-byte granularity,
 *   continuing in the last partly used cluster and crossing into the next
 *   cluster when it is free; each host cluster a payload touches gains one
 *   reference, and a cluster whose count reached the refcount maximum is not
 *   shared further (so 1-bit refcounts still work);
 * - with backfill, a partly used cluster that whole clusters were allocated
 *   past stays open (a few at a time), and later payloads that fit in it go
 *   there: where QEMU leaves the rest of that cluster empty, this fills it.
 *
 * Refcount blocks are kept in memory only while they can still change;
 * {@linkcode HostAllocator.takeFinalBlocks} hands over the ones that cannot.
 * Cluster 0 (the header) is allocated on construction.
 *
 * @example Pack two small payloads into one cluster
 * ```ts
 * import assert from "node:assert";
 * import { HostAllocator } from "./_host_allocator.ts";
 * const alloc = new HostAllocator({ clusterSize: 4096 });
 * const a = alloc.allocCompressed(100);
 * const b = alloc.allocCompressed(100);
 * assert.deepStrictEqual([a, b], [4096, 4608]);
 * assert.strictEqual(alloc.refcount(4096), 2);
 * ```
 */
export class HostAllocator {
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  /** log2 of the refcount width. */
  readonly refcountOrder: number;
  /** Entries per refcount block. */
  readonly blockEntries: number;
  #max: number;
  #end = 0;
  #tail = 0; // next free byte in the partly used compressed cluster; 0 = none
  // Free starts in partly used clusters that whole clusters were allocated
  // past (backfill only), lowest first; payloads that fit go there.
  #fragments: number[] = [];
  #blocks = new Map<number, Uint8Array>();
  #taken = 0; // blocks below this index were handed out as final
  #backfill: boolean;

  /**
   * Creates an allocator and allocates the header cluster.
   *
   * @param options Cluster size and refcount width.
   * @throws {RangeError} For an invalid cluster size or refcount width.
   */
  constructor(options: HostAllocatorOptions) {
    this.clusterSize = checkClusterSize(options.clusterSize);
    this.refcountOrder = refcountOrderOf(options.refcountBits ?? 16);
    this.blockEntries = refcountBlockEntries(
      Math.log2(this.clusterSize),
      this.refcountOrder,
    );
    this.#max = refcountMax(this.refcountOrder);
    this.#backfill = options.backfill ?? true;
    this.allocClusters(1);
  }

  /** Host offset where the next whole cluster would be allocated. */
  get end(): number {
    return this.#end;
  }

  /**
   * Allocates `count` contiguous clusters at the end of the file, each with
   * refcount 1.
   *
   * @param count Number of clusters (at least 1).
   * @returns Host offset of the first cluster.
   */
  allocClusters(count: number): number {
    const start = this.#end;
    this.#end += count * this.clusterSize;
    for (let c = 0; c < count; c++) this.#addRef(start + c * this.clusterSize);
    return start;
  }

  /**
   * Allocates room for a compressed payload at a 512-byte boundary.
   *
   * @param length Payload length in bytes (1 to cluster size - 1).
   * @returns Host offset of the payload.
   * @throws {RangeError} For a length outside that range.
   */
  allocCompressed(length: number): number {
    const cs = this.clusterSize;
    if (!Number.isInteger(length) || length < 1 || length >= cs) {
      throw new RangeError(
        `Cannot allocate compressed payload: length ${length} is out of range [1, ${
          cs - 1
        }]`,
      );
    }
    const span = compressedSpan(length);
    let start = this.#fromFragment(span);
    if (start !== -1) return start;
    if (this.#tail !== 0) {
      const tailCluster = this.#tail - (this.#tail % cs);
      const tailEnd = tailCluster + cs;
      const shareable = this.refcount(tailCluster) < this.#max;
      const last = tailEnd === this.#end;
      if (
        shareable && (last || (this.#backfill && this.#tail + span <= tailEnd))
      ) {
        start = this.#tail;
      }
    }
    if (start === -1) {
      start = this.#end;
      if (this.#tail !== 0 && this.#backfill) this.#keepFragment(this.#tail);
    }
    this.addReferences(start, span);
    const end = start + span;
    this.#tail = end % cs === 0 ? 0 : end;
    return start;
  }

  /**
   * Counts one more reference to each cluster that `[offset, offset +
   * length)` touches; clusters past the end extend the file. For laying
   * out again what was placed elsewhere (the streamable writer places its
   * data region on its own, then after the metadata).
   *
   * @param offset Host offset.
   * @param length Bytes (at least 1).
   */
  addReferences(offset: number, length: number): void {
    const cs = this.clusterSize;
    const end = offset + length;
    for (let c = offset - (offset % cs); c < end; c += cs) {
      if (c >= this.#end) this.#end = c + cs;
      this.#addRef(c);
    }
  }

  /** Fits `span` bytes into a kept fragment; -1 when none has room. */
  #fromFragment(span: number): number {
    const cs = this.clusterSize;
    for (let i = 0; i < this.#fragments.length; i++) {
      const start = this.#fragments[i];
      const cluster = start - (start % cs);
      if (start + span > cluster + cs) continue;
      if (this.refcount(cluster) >= this.#max) {
        this.#fragments.splice(i--, 1);
        continue;
      }
      this.#addRef(cluster);
      const next = start + span;
      if (next % cs === 0) this.#fragments.splice(i, 1);
      else this.#fragments[i] = next;
      return start;
    }
    return -1;
  }

  /** Keeps the rest of a partly used cluster for later payloads. */
  #keepFragment(start: number): void {
    this.#fragments.push(start);
    this.#fragments.sort((a, b) => a - b);
    // A few are enough to take the waste: drop the smallest beyond that.
    if (this.#fragments.length > MAX_FRAGMENTS) {
      const cs = this.clusterSize;
      let smallest = 0;
      for (let i = 1; i < this.#fragments.length; i++) {
        const room = (f: number) => cs - (f % cs);
        if (room(this.#fragments[i]) < room(this.#fragments[smallest])) {
          smallest = i;
        }
      }
      this.#fragments.splice(smallest, 1);
    }
  }

  /**
   * The current refcount of the cluster holding `offset`.
   *
   * @param offset A host offset.
   * @returns Its cluster's refcount (0 for clusters already handed out in
   * final blocks).
   */
  refcount(offset: number): number {
    const cluster = Math.floor(offset / this.clusterSize);
    const block = this.#blocks.get(Math.floor(cluster / this.blockEntries));
    return block
      ? getRefcount(block, cluster % this.blockEntries, this.refcountOrder)
      : 0;
  }

  #addRef(offset: number): void {
    const cluster = Math.floor(offset / this.clusterSize);
    const index = Math.floor(cluster / this.blockEntries);
    if (index < this.#taken) {
      throw new Error(
        `Internal error: refcount block ${index} was already written`,
      );
    }
    let block = this.#blocks.get(index);
    if (!block) {
      block = new Uint8Array(this.clusterSize);
      this.#blocks.set(index, block);
    }
    const entry = cluster % this.blockEntries;
    setRefcount(
      block,
      entry,
      this.refcountOrder,
      getRefcount(block, entry, this.refcountOrder) + 1,
    );
  }

  /**
   * Hands over the refcount blocks that can no longer change: those wholly
   * below both the end of the file and the partly used compressed cluster.
   * With `all`, every remaining block (at the very end of writing).
   *
   * @param all Hand over every block, final or not.
   * @returns The blocks, in index order.
   */
  takeFinalBlocks(all = false): FinalRefcountBlock[] {
    const cs = this.clusterSize;
    const settledBytes = all ? Infinity : Math.min(
      this.#end,
      this.#tail === 0 ? Infinity : this.#tail - (this.#tail % cs),
      this.#fragments.length === 0
        ? Infinity
        : this.#fragments[0] - (this.#fragments[0] % cs),
    );
    const settledBlocks = all
      ? Infinity
      : Math.floor(settledBytes / this.clusterSize / this.blockEntries);
    const out: FinalRefcountBlock[] = [];
    for (const index of [...this.#blocks.keys()].sort((a, b) => a - b)) {
      if (index >= settledBlocks) break;
      out.push({ index, block: this.#blocks.get(index)! });
      this.#blocks.delete(index);
      this.#taken = index + 1;
    }
    return out;
  }

  /**
   * Stops compressed packing from continuing in the current partly used
   * cluster (used before the last metadata is laid out).
   */
  closeTail(): void {
    this.#tail = 0;
    this.#fragments = [];
  }
}
