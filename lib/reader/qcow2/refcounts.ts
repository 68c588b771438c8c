/**
 * The refcounts stored in a qcow2 image, read as QEMU reads them: what
 * `check` compares its counts with, and what `map` asks to tell
 * preallocated metadata.
 *
 * @module
 */

import { hex } from "../../format/errors.ts";
import type { Qcow2Header } from "../../format/header.ts";
import { getRefcount, refcountDecimal } from "../../format/refcount.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { LruCache } from "../../io/lru.ts";
import { readPadded } from "../read.ts";

/** Splits a big-endian u64 of a table into a number (inexact above 2^53). */
function u64At(view: DataView, at: number): number {
  return view.getUint32(at) * 0x1_0000_0000 + view.getUint32(at + 4);
}

/** Thrown by {@linkcode StoredRefcounts.get} for an unaligned refblock. */
export class RefblockError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RefblockError";
  }
}

/**
 * The refcounts stored in an image: its refcount table in memory, refcount
 * blocks read on demand through a small cache (as QEMU's
 * qcow2_get_refcount()).
 */
export class StoredRefcounts {
  /** Refcount table entries (raw, reserved bits included). */
  readonly table: number[];
  /** Low 32 bits of each entry, for alignment and reserved-bit checks. */
  readonly tableLow: Uint32Array;
  readonly #source: RandomAccessSource;
  readonly #clusterBits: number;
  readonly #order: number;
  readonly #blockBits: number;
  readonly #cache = new LruCache<number, Uint8Array>(8 * 1024 * 1024);

  private constructor(
    source: RandomAccessSource,
    header: Qcow2Header,
    table: Uint8Array,
  ) {
    this.#source = source;
    this.#clusterBits = header.clusterBits;
    this.#order = header.refcountOrder;
    this.#blockBits = header.clusterBits + 3 - header.refcountOrder;
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const n = table.length / 8;
    this.table = new Array(n);
    this.tableLow = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      this.table[i] = u64At(view, i * 8);
      this.tableLow[i] = view.getUint32(i * 8 + 4);
    }
  }

  /** Loads the refcount table of an image. */
  static async load(
    source: RandomAccessSource,
    header: Qcow2Header,
  ): Promise<StoredRefcounts> {
    const bytes = header.refcountTableClusters * 2 ** header.clusterBits;
    const table = await readPadded(source, header.refcountTableOffset, bytes);
    return new StoredRefcounts(source, header, table);
  }

  /** Entries of the refcount table. */
  get size(): number {
    return this.table.length;
  }

  /** Host offset of refcount block `index` (reserved bits 0-8 masked). */
  blockOffset(index: number): number {
    const low = this.tableLow[index];
    return this.table[index] - (low & 0x1ff);
  }

  /** Refcounts per refcount block. */
  get perBlock(): number {
    return 2 ** this.#blockBits;
  }

  /** log2 of the refcount width. */
  get order(): number {
    return this.#order;
  }

  /**
   * The refcount block of table entry `index`, or null when there is none
   * (zero-filled where it lies past the end of the file).
   *
   * @throws {RefblockError} When the block offset is unaligned.
   */
  async block(index: number): Promise<Uint8Array | null> {
    if (index >= this.table.length) return null;
    const offset = this.blockOffset(index);
    if (offset === 0) return null;
    const cs = 2 ** this.#clusterBits;
    if ((this.tableLow[index] & (cs - 1) & ~0x1ff) !== 0) {
      throw new RefblockError(
        `Refblock offset ${hex(offset, "c-alt")} unaligned (reftable index: ${
          hex(index, "c-alt")
        })`,
      );
    }
    let block = this.#cache.get(offset);
    if (!block) {
      block = await readPadded(this.#source, offset, cs);
      this.#cache.set(offset, block, cs);
    }
    return block;
  }

  /**
   * Records that refcount block `index` now holds `block` on disk (a
   * repair has just written it), so later reads see it.
   */
  replace(index: number, block: Uint8Array): void {
    const cs = 2 ** this.#clusterBits;
    this.#cache.set(this.blockOffset(index), block, cs);
  }

  /**
   * The stored refcount of a cluster; 0 where no refcount block covers it.
   *
   * @throws {RefblockError} When the covering refcount block is unaligned.
   */
  async get(cluster: number): Promise<number> {
    const block = await this.block(Math.floor(cluster / this.perBlock));
    return block === null
      ? 0
      : getRefcount(block, cluster % this.perBlock, this.#order);
  }

  /**
   * The stored refcount of a cluster in decimal, exactly (a 64-bit count
   * above 2^53 loses digits as a number); "0" where no block covers it.
   *
   * @throws {RefblockError} When the covering refcount block is unaligned.
   */
  async decimal(cluster: number): Promise<string> {
    const block = await this.block(Math.floor(cluster / this.perBlock));
    return block === null
      ? "0"
      : refcountDecimal(block, cluster % this.perBlock, this.#order);
  }

  /**
   * Counts clusters below `end` with a non-zero stored refcount, stopping
   * once `limit` is reached (QEMU's metadata preallocation heuristic).
   *
   * @throws {RefblockError} When a refcount block is unaligned.
   */
  async countAllocated(end: number, limit: number): Promise<number> {
    const perBlock = this.perBlock;
    let count = 0;
    for (let index = 0; index * perBlock < end && count < limit; index++) {
      if (index >= this.table.length) break;
      const block = await this.block(index);
      if (block === null) continue;
      const n = Math.min(perBlock, end - index * perBlock);
      for (let i = 0; i < n && count < limit; i++) {
        if (getRefcount(block, i, this.#order) !== 0) count++;
      }
    }
    return count;
  }
}
