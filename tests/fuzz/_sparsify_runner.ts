// The one runner of the --sparsify fuzz cases (not a test file):
// `deno run -A _sparsify_runner.ts JOBS.json`, started by _sparsify_cases.ts.
// JOBS.json names the target module (its `target`, see _sparsify_target.ts),
// the bases and the cases. For each case the runner prints
// `{"begin": id, "mutation"}`, maps the mutated disk with mapFreeSpace,
// lists its free ranges and holds them to the rules below, streams every
// fourth case through FreeSpaceStream too, and prints one JSON line
// `{"id", "outcome", "problem"?, "reason"?, "mutation", "ms", "peak",
// "growth"}`.
//
// The rules, the same for every target:
// - the ranges are non-empty, in order, inside the (possibly truncated)
//   disk, and sum to the report's free bytes;
// - every byte called free is free in the base by its own tools (or in the
//   ranges the mutation allows), and none the mutation made live;
// - the target's own reading of the report (its `judge`) finds nothing
//   wrong;
// - streamed, the output is the disk byte for byte, zero runs only where
//   the ranges may be, and they sum to the stage's report;
// - the case's peak resident memory (Linux VmHWM, reset when it starts,
//   and sampled), less the bases the runner holds, stays within the jobs'
//   bound, and so does its growth over the memory at its start while the
//   disk is mapped and its ranges listed, when a bound is given for that.

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { RandomAccessSource } from "../../lib/io/source.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  type CaseBase,
  type FuzzTarget,
  type Mutation,
  outside,
  overlapping,
} from "./_sparsify_target.ts";
import type { Jobs } from "./_sparsify_cases.ts";
import { emit, peakResident, resetPeak } from "./_process.ts";

const MiB = 1024 * 1024;
/** Where a range breaks the rules of the map, if it does. */
function rangeProblem(
  ranges: FreeRange[],
  size: number,
  freeBytes: number,
  allowed: FreeRange[],
  live: FreeRange[],
  what: string,
): string | undefined {
  let end = 0;
  for (const r of ranges) {
    if (!(r.length > 0 && r.offset >= end && r.offset + r.length <= size)) {
      return `${what}: range ${
        JSON.stringify(r)
      } is empty, out of order or past the end (${size})`;
    }
    end = r.offset + r.length;
  }
  const total = ranges.reduce((n, r) => n + r.length, 0);
  if (total !== freeBytes) {
    return `${what}: ranges sum to ${total}, the report says ${freeBytes}`;
  }
  const wrong = outside(ranges, allowed);
  if (wrong) {
    return `${what}: wrong zero: bytes ${wrong.offset}-${
      wrong.offset + wrong.length - 1
    } are not free in the original disk`;
  }
  const hit = overlapping(ranges, live);
  if (hit) {
    return `${what}: dropped bytes ${hit.offset}-${
      hit.offset + hit.length - 1
    }, which the mutation made live`;
  }
  return undefined;
}

/**
 * Streams the mutated disk through FreeSpaceStream in 1 MiB pieces and
 * holds what comes out to the disk and to the rules of the map.
 */
async function streamProblem(
  source: RandomAccessSource,
  m: Mutation,
  allowed: FreeRange[],
  readAhead: number,
): Promise<string | undefined> {
  let fed = 0;
  const pieces = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (fed >= m.size) return controller.close();
      const piece = await source.read(fed, Math.min(MiB, m.size - fed));
      fed += piece.length;
      controller.enqueue(piece);
    },
  }, { highWaterMark: 0 });
  const stage = new FreeSpaceStream({ readAhead });
  const zeros: FreeRange[] = [];
  let at = 0;
  for await (const c of pieces.pipeThrough(stage)) {
    if (c instanceof Uint8Array) {
      const want = await source.read(at, c.length);
      for (let i = 0; i < c.length; i++) {
        if (c[i] !== want[i]) return `stream changed byte ${at + i}`;
      }
      at += c.length;
    } else {
      zeros.push({ offset: at, length: c.zeros });
      at += c.zeros;
    }
  }
  if (at !== m.size) return `stream gave ${at} of ${m.size} bytes`;
  return rangeProblem(
    zeros,
    m.size,
    (await stage.report).freeBytes,
    allowed,
    m.live ?? [],
    "stream",
  );
}

const jobs = JSON.parse(await Deno.readTextFile(Deno.args[0])) as Jobs;
const { target } = await import(jobs.target) as {
  target: FuzzTarget<CaseBase, unknown>;
};
const disks = new Map<string, unknown>();
let held = 0;
for (const b of jobs.bases) {
  const disk = await target.load(b);
  disks.set(b.name, disk);
  held += target.held(disk);
}
const gc = (globalThis as { gc?: () => void }).gc;
// Sampled too, where VmHWM cannot be reset (the module awaits its reads,
// so the timer gets its turns).
let sampled = 0;
const sampler = setInterval(() => {
  sampled = Math.max(sampled, Deno.memoryUsage().rss);
}, 20);

/** The peak resident memory so far in this case. */
function currentPeak(reset: boolean): number {
  return Math.max(reset ? peakResident() : 0, sampled, Deno.memoryUsage().rss);
}

for (const c of jobs.cases) {
  const base = jobs.bases.find((b) => b.name === c.base)!;
  const disk = disks.get(base.name);
  const m = target.mutate(base, disk, c.seed);
  emit({ begin: c.id, mutation: m.desc });
  const allowed = m.allowed ?? base.free;
  let outcome = "";
  let problem: string | undefined;
  let reason: string | undefined;
  /** Peak resident memory once the disk is mapped and its ranges listed. */
  let mapped: number | undefined;
  gc?.();
  const start = Deno.memoryUsage().rss;
  const reset = resetPeak();
  sampled = start;
  const t0 = performance.now();
  try {
    const source = target.source(disk, m);
    const map = await mapFreeSpace(source);
    const ranges = await Array.fromAsync(map.ranges());
    problem = rangeProblem(
      ranges,
      m.size,
      map.report.freeBytes,
      allowed,
      m.live ?? [],
      "map",
    );
    mapped = currentPeak(reset);
    const verdict = target.judge(base, map.report, m);
    outcome = verdict.outcome;
    reason = verdict.reason;
    problem ??= verdict.problem;
    const readAhead = target.readAhead(base);
    if (c.seed % 4 === 0 && readAhead !== undefined) {
      problem ??= await streamProblem(source, m, allowed, readAhead);
    }
  } catch (err) {
    outcome = "crash";
    problem = `threw ${(err as Error)?.stack ?? err}`;
  }
  const ms = Math.round(performance.now() - t0);
  const peak = currentPeak(reset);
  // Growth is judged while the disk is mapped (the stream check's buffers
  // are the test's, not the module's).
  const growth = (mapped ?? peak) - start;
  if (peak - held > jobs.memoryMiB * MiB) {
    problem ??= `peak resident memory ${peak} bytes, over ${held} held and ${
      jobs.memoryMiB * MiB
    } more`;
  }
  if (jobs.growthMiB !== undefined && growth > jobs.growthMiB * MiB) {
    problem ??= `resident memory grew by ${growth} bytes, over ${
      jobs.growthMiB * MiB
    }`;
  }
  emit({
    id: c.id,
    outcome,
    problem,
    reason,
    mutation: m.desc,
    ms,
    peak,
    growth,
  });
}
clearInterval(sampler);
