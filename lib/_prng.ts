// mulberry32, a small deterministic PRNG: the demo disk, the benchmark data
// and the tests' inputs are the same bytes on every run and every machine.
// Not for anything that needs unpredictability.

/** A stream of 32-bit unsigned values from `seed`. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** The same stream as numbers uniform in [0, 1). */
export function prng(seed: number): () => number {
  const next = mulberry32(seed);
  return () => next() / 0x1_0000_0000;
}

/** Seeded choices over {@linkcode mulberry32}: the tests' mutations. */
export class Rand {
  readonly #next: () => number;
  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }
  /** A 32-bit unsigned value. */
  u32(): number {
    return this.#next();
  }
  /** A number uniform in [0, 1). */
  next(): number {
    return this.#next() / 0x1_0000_0000;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() < p;
  }
  /** One of `items`. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
}
