// A compact in-memory refcount table for the checker: one byte per host
// cluster, with the rare counts above 254 kept in a map. Like QEMU's
// in-memory table it saturates at the image's refcount maximum.

const SPILL = 255;

/** Reference counts of host clusters, as the checker rebuilds them. */
export class RefcountMap {
  #counts: Uint8Array;
  #spill = new Map<number, number>();
  #size: number;
  readonly #max: number;

  /**
   * @param clusters Clusters of the file (the array holds one more: a
   * reference may end less than a cluster past the end of the file).
   * @param max The largest refcount the image can store.
   */
  constructor(clusters: number, max: number) {
    this.#counts = new Uint8Array(clusters + 1);
    this.#size = clusters;
    this.#max = max;
  }

  /** Clusters covered so far: the file's, plus any referenced just past it. */
  get size(): number {
    return this.#size;
  }

  /** The count of a cluster. */
  get(cluster: number): number {
    if (cluster >= this.#counts.length) return 0;
    const c = this.#counts[cluster];
    return c === SPILL ? this.#spill.get(cluster)! : c;
  }

  /**
   * Adds a reference; returns false (count unchanged) when the count is
   * already at the refcount maximum.
   */
  increment(cluster: number): boolean {
    if (cluster >= this.#counts.length) {
      throw new RangeError(
        `Cannot count reference: cluster ${cluster} is past the map of ${this.#counts.length}`,
      );
    }
    const now = this.get(cluster);
    if (now >= this.#max) return false;
    if (now + 1 < SPILL) this.#counts[cluster] = now + 1;
    else {
      this.#counts[cluster] = SPILL;
      this.#spill.set(cluster, now + 1);
    }
    if (cluster >= this.#size) this.#size = cluster + 1;
    return true;
  }

  /**
   * Sets a count (at most the refcount maximum), growing the map past its
   * end when the cluster lies there (a repair allocating clusters).
   */
  set(cluster: number, count: number): void {
    if (cluster >= this.#counts.length) {
      const grown = new Uint8Array(
        Math.max(cluster + 1, this.#counts.length * 2),
      );
      grown.set(this.#counts);
      this.#counts = grown;
    }
    if (count < SPILL) {
      this.#counts[cluster] = count;
      this.#spill.delete(cluster);
    } else {
      this.#counts[cluster] = SPILL;
      this.#spill.set(cluster, count);
    }
    if (cluster >= this.#size && count > 0) this.#size = cluster + 1;
  }

  /** Makes the map cover `clusters` clusters (free where never counted). */
  extend(clusters: number): void {
    if (clusters > this.#size) {
      if (clusters > this.#counts.length) this.set(clusters - 1, 0);
      this.#size = clusters;
    }
  }
}
