// A small least-recently-used cache bounded by a total weight (bytes).
// It knows nothing about qcow2.

/**
 * LRU cache with a weight budget; values over budget are still returned
 * once. `onEvict` sees each value the budget pushes out (to reuse its
 * memory), not one replaced by `set` under the same key.
 */
export class LruCache<K, V> {
  #map = new Map<K, { value: V; weight: number }>();
  #weight = 0;
  #budget: number;
  #onEvict: ((value: V) => void) | undefined;

  constructor(budget: number, onEvict?: (value: V) => void) {
    this.#budget = budget;
    this.#onEvict = onEvict;
  }

  get(key: K): V | undefined {
    const hit = this.#map.get(key);
    if (hit === undefined) return undefined;
    this.#map.delete(key);
    this.#map.set(key, hit);
    return hit.value;
  }

  set(key: K, value: V, weight: number): void {
    const old = this.#map.get(key);
    if (old) {
      this.#weight -= old.weight;
      this.#map.delete(key);
    }
    this.#map.set(key, { value, weight });
    this.#weight += weight;
    for (const [k, v] of this.#map) {
      if (this.#weight <= this.#budget || this.#map.size <= 1) break;
      this.#map.delete(k);
      this.#weight -= v.weight;
      this.#onEvict?.(v.value);
    }
  }

  get size(): number {
    return this.#map.size;
  }
}
