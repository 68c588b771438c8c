// The cluster allocator of QEMU 7.2's qcow2 driver, followed step by step
// so that images we lay out end where QEMU's do: `blankQcow2()` (what
// `qemu-img create` writes) and `writeIntoQcow2()` (clusters allocated in
// an existing image, as `qemu-img convert -n` allocates them).
import {
  refcountBlockEntries,
  refcountMetadataClusters,
} from "../format/refcount.ts";

/** A refcount table QEMU has moved away from: its clusters keep its bytes. */
export interface StaleTable {
  cluster: number;
  entries: number[];
}

/**
 * The refcount table and blocks as QEMU's allocator leaves them: clusters
 * are taken first-fit from the start of the file, a refcount block added
 * where the first free cluster is when one is missing, and the table moved
 * past everything when it is full.
 */
export class QemuAllocator {
  /** Refcount by cluster (a hole: 0). */
  readonly refcounts: number[] = [];
  /** Refcount block cluster by table index (0: none). */
  table: number[];
  /** Where the table is, in clusters. */
  tableCluster = 1;
  tableClusters = 1;
  /** Tables moved away from, oldest first. */
  readonly stale: StaleTable[] = [];
  #clusterBits: number;
  #order: number;
  #perBlock: number;
  #free = 0;
  /** Table indices whose refcount block changed since {@linkcode takeTouched}. */
  #touched = new Set<number>();
  /** Whether the table moved since {@linkcode takeTouched}. */
  moved = false;

  constructor(clusterBits: number, order: number) {
    this.#clusterBits = clusterBits;
    this.#order = order;
    this.#perBlock = refcountBlockEntries(clusterBits, order);
    this.table = new Array(2 ** clusterBits / 8).fill(0);
  }

  get perBlock(): number {
    return this.#perBlock;
  }

  refcount(cluster: number): number {
    const t = Math.floor(cluster / this.#perBlock);
    if (t >= this.table.length || this.table[t] === 0) return 0;
    return this.refcounts[cluster] ?? 0;
  }

  /** The first run of `n` free clusters from the search position on. */
  #findFree(n: number): number {
    for (let found = 0; found < n;) {
      found = this.refcount(this.#free++) === 0 ? found + 1 : 0;
    }
    return this.#free - n;
  }

  /**
   * Adds one to the refcounts of `n` clusters from `start`; "again" when
   * a refcount block had to be added first (the caller searches again).
   */
  #reference(start: number, n: number): "ok" | "again" {
    let block = -1;
    for (let c = start; c < start + n; c++) {
      const t = Math.floor(c / this.#perBlock);
      if (t !== block) {
        if (this.#blockFor(c) === "again") {
          this.#free = Math.min(this.#free, start);
          for (let d = start; d < c; d++) {
            this.refcounts[d]--;
            this.#touch(d);
          }
          return "again";
        }
        block = t;
      }
      this.refcounts[c] = (this.refcounts[c] ?? 0) + 1;
      this.#touched.add(t);
    }
    return "ok";
  }

  /** Makes sure the refcount block of `cluster` exists. */
  #blockFor(cluster: number): "ok" | "again" {
    const t = Math.floor(cluster / this.#perBlock);
    if (t < this.table.length && this.table[t] !== 0) return "ok";
    const block = this.#findFree(1);
    if (Math.floor(block / this.#perBlock) === t) {
      // It describes itself.
      this.refcounts[block] = 1;
      this.#touch(block);
    } else if (this.#reference(block, 1) === "again") {
      return "again";
    }
    if (t < this.table.length) this.table[t] = block;
    else this.#grow(cluster, block);
    return "again";
  }

  /**
   * Moves the refcount table to a larger one, as QEMU does: new refcount
   * blocks and the table past everything allocated so far, describing
   * themselves; the old table's clusters freed (their bytes stay).
   */
  #grow(cluster: number, block: number): void {
    const perTable = 2 ** this.#clusterBits / 8;
    const used = Math.ceil(Math.max(cluster + 1, block + 1) / this.#perBlock);
    const start = used * this.#perBlock;
    const { blocks: total } = refcountMetadataClusters(
      start,
      this.#clusterBits,
      this.#order,
      true,
    );
    const size = Math.ceil((total + Math.ceil(total / 2)) / perTable) *
      perTable;
    const table: number[] = new Array(size).fill(0);
    this.table.forEach((b, i) => {
      if (i < size) table[i] = b;
    });
    table[Math.floor(cluster / this.#perBlock)] = block;
    let at = start;
    for (let i = start / this.#perBlock; i < total; i++) {
      if (table[i] === 0) table[i] = at++;
    }
    const tableAt = at;
    const end = tableAt + size / perTable;
    this.stale.push({ cluster: this.tableCluster, entries: this.table });
    this.table = table;
    for (let c = start; c < end; c++) this.refcounts[c] = 1;
    for (let i = 0; i < this.tableClusters; i++) {
      const c = this.tableCluster + i;
      this.refcounts[c]--;
      this.#free = Math.min(this.#free, c);
    }
    this.tableCluster = tableAt;
    this.tableClusters = size / perTable;
    this.moved = true;
    table.forEach((b, i) => {
      if (b !== 0) this.#touched.add(i);
    });
  }

  #touch(cluster: number): void {
    this.#touched.add(Math.floor(cluster / this.#perBlock));
  }

  /**
   * Takes one reference away from a cluster (freed at 0, and found again
   * by the next search).
   */
  release(cluster: number): void {
    if (this.refcount(cluster) === 0) return;
    this.refcounts[cluster]--;
    this.#touch(cluster);
    this.#free = Math.min(this.#free, cluster);
  }

  /** The table indices whose blocks changed since the last call, sorted. */
  takeTouched(): number[] {
    const touched = [...this.#touched].sort((a, b) => a - b);
    this.#touched.clear();
    return touched;
  }

  /** Allocates `n` clusters. */
  allocate(n: number): number {
    for (;;) {
      const start = this.#findFree(n);
      if (this.#reference(start, n) === "ok") return start;
    }
  }
}
