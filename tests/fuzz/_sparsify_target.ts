// What a --sparsify fuzz target is (not a test file): the shape of a case
// (patches over a base disk), and what a target module exports for the one
// case runner (_sparsify_runner.ts): how a base is held, how a case is made
// from a seed, and how the map's report is read. The rules every case is
// held to (no byte called free that the base's own tools do not call free,
// ranges in order, report and stream agreeing, memory and time bounds) are
// the runner's, the same for every target.

import type { RandomAccessSource } from "../../lib/io/source.ts";
import type { FreeRange, SparsifyReport } from "../../lib/sparsify/report.ts";
import { merge } from "../sparsify/_disks.ts";

/** A disk to mutate, and what is free on it by its own tools. */
export interface CaseBase {
  name: string;
  path: string;
  size: number;
  /** Free ranges of the unmutated disk, disk offsets: the oracle. */
  free: FreeRange[];
}

/** Bytes to overwrite at a disk offset. */
export interface Patch {
  at: number;
  bytes: number[];
}

/** A mutated disk: patches over the base and a size (smaller when truncated). */
export interface Mutation {
  patches: Patch[];
  size: number;
  desc: string[];
  /** A bitmap bit was flipped already. */
  flipped?: boolean;
  /** Byte ranges the mutation made live (free before it), never to be dropped. */
  live?: FreeRange[];
  /** Bytes that may read as zeros, when not the base's free ranges. */
  allowed?: FreeRange[];
}

/** How a target reads a map's report: the outcome, and a broken rule of its own. */
export interface Verdict {
  /** Such as `mapped`, `untouched`, `table refused`. */
  outcome: string;
  /** Why the target's filesystem was left as it is. */
  reason?: string;
  /** A rule of the target's that the report breaks. */
  problem?: string;
}

/**
 * What a target module exports as `target`: its bases held one way (`D`:
 * their bytes, or a file read as needed), its cases, and its reading of the
 * report.
 */
export interface FuzzTarget<B extends CaseBase = CaseBase, D = unknown> {
  /** Opens a base for the cases of a runner. */
  load(base: B): Promise<D>;
  /** Bytes of `disk` the runner holds in memory (not counted against a case). */
  held(disk: D): number;
  /** The mutation of case `seed` of a base. */
  mutate(base: B, disk: D, seed: number): Mutation;
  /** The mutated disk as a source. */
  source(disk: D, m: Mutation): RandomAccessSource;
  /** The outcome of a case from the map's report. */
  judge(base: B, report: SparsifyReport, m: Mutation): Verdict;
  /**
   * FreeSpaceStream's read-ahead for the stream check of every fourth case
   * of `base`, or undefined to skip it there.
   */
  readAhead(base: B): number | undefined;
}

/** Writes the patches' bytes that fall in `out`, the disk's bytes from `at`. */
export function applyPatches(
  out: Uint8Array,
  at: number,
  patches: Patch[],
): Uint8Array {
  for (const p of patches) {
    if (p.at >= at + out.length || p.at + p.bytes.length <= at) continue;
    p.bytes.forEach((b, i) => {
      const k = p.at + i - at;
      if (k >= 0 && k < out.length) out[k] = b;
    });
  }
  return out;
}

/** The bytes of `[at, at + n)` of `base` with the patches applied. */
export function current(
  base: Uint8Array,
  patches: Patch[],
  at: number,
  n: number,
): Uint8Array {
  return applyPatches(base.slice(at, at + n), at, patches);
}

/** A base read as needed: `[at, at + n)` with `patches` applied. */
export interface PatchedBase {
  read(at: number, n: number, patches: Patch[]): Uint8Array;
}

/** A base (its bytes, or read as needed) with a mutation's patches over it, as a source. */
export class PatchedSource implements RandomAccessSource {
  readonly #base: Uint8Array | PatchedBase;
  readonly #patches: Patch[];
  readonly size: number;
  readonly name = "<fuzz case>";

  constructor(base: Uint8Array | PatchedBase, m: Mutation) {
    this.#base = base;
    this.#patches = m.patches;
    this.size = m.size;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const n = Math.max(0, Math.min(length, this.size - offset));
    const base = this.#base;
    return Promise.resolve(
      base instanceof Uint8Array
        ? current(base, this.#patches, offset, n)
        : base.read(offset, n, this.#patches),
    );
  }
}

/**
 * A target whose bases are held in memory (read whole when the runner
 * starts), its cases patched over them.
 */
export function inMemory<B extends CaseBase>(
  t: Pick<FuzzTarget<B, Uint8Array>, "mutate" | "judge" | "readAhead">,
): FuzzTarget<B, Uint8Array> {
  return {
    load: (base) => Deno.readFile(base.path),
    held: (bytes) => bytes.length,
    source: (bytes, m) => new PatchedSource(bytes, m),
    ...t,
  };
}

/**
 * The outcome of a whole disk: its table refused, or how many of its
 * regions were mapped (none: untouched; all: mapped; else partly mapped).
 */
export function diskOutcome(report: SparsifyReport): string {
  const mapped = report.regions.filter((r) => r.status === "mapped").length;
  return report.tableProblem
    ? "table refused"
    : mapped === 0
    ? "untouched"
    : mapped === report.regions.length
    ? "mapped"
    : "partly mapped";
}

/** The first range of `inner` not inside the union of `outer`, if any. */
export function outside(
  inner: FreeRange[],
  outer: FreeRange[],
): FreeRange | undefined {
  const o = merge(outer);
  for (const r of inner) {
    const hit = o.find((x) =>
      x.offset <= r.offset && r.offset + r.length <= x.offset + x.length
    );
    if (!hit) return r;
  }
  return undefined;
}

/** The first range of `ranges` that overlaps one of `live`, if any. */
export function overlapping(
  ranges: FreeRange[],
  live: FreeRange[],
): FreeRange | undefined {
  return ranges.find((r) =>
    live.some((l) =>
      l.offset < r.offset + r.length && r.offset < l.offset + l.length
    )
  );
}
