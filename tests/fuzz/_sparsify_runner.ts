// Runner of the --sparsify fuzz cases (not a test file):
// `deno run -A _sparsify_runner.ts JOBS.json`. JOBS.json holds the bases
// and the cases; for each case it prints `{"begin": id}`, maps the mutated
// disk with mapFreeSpace, lists its free ranges, checks them against the
// base's free space, and prints `{"id", "outcome", "problem"?}`. Every
// fourth case also streams the disk through FreeSpaceStream: its output
// must be the disk, with zero runs only over the base's free space. The
// jobs may name the module whose `mutate` makes the cases, and a bound on
// resident memory; a mutation may name byte ranges it made live (a
// directory entry pointed at free space), which must never be dropped.
// Memory: the growth of peak resident memory while the disk is mapped
// (Linux VmHWM, reset before each case) must stay under the jobs' bound.

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  type FuzzBase,
  type Mutation,
  outside,
  PatchedSource,
} from "./_sparsify_fuzz.ts";

interface Jobs {
  bases: FuzzBase[];
  cases: Array<{ id: string; base: string; seed: number }>;
  mutator?: string;
  rssLimitMiB?: number;
}

/**
 * Resets the peak resident memory (Linux `clear_refs` 5) and returns the
 * resident memory now, or undefined where that cannot be done.
 */
function resetPeak(): number | undefined {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return peakResident();
  } catch {
    return undefined;
  }
}

/** Peak resident memory since the last reset (VmHWM), in bytes. */
function peakResident(): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(
    Deno.readTextFileSync("/proc/self/status"),
  );
  return Number(m![1]) * 1024;
}

/** The first range of `ranges` that overlaps one of `live`, if any. */
function overlapping(
  ranges: FreeRange[],
  live: FreeRange[],
): FreeRange | undefined {
  return ranges.find((r) =>
    live.some((l) =>
      l.offset < r.offset + r.length && r.offset < l.offset + l.length
    )
  );
}

const encoder = new TextEncoder();

/** Streams the mutated disk through FreeSpaceStream and checks what comes out. */
async function streamProblem(
  base: FuzzBase,
  m: Mutation,
): Promise<string | undefined> {
  const disk = await new PatchedSource(bytes.get(base.name)!, m).read(
    0,
    m.size,
  );
  const pieces = [];
  for (let at = 0; at < disk.length; at += 1 << 20) {
    pieces.push(disk.subarray(at, at + (1 << 20)));
  }
  const stage = new FreeSpaceStream({ readAhead: 4 << 20 });
  const zeros: FreeRange[] = [];
  let at = 0;
  for await (const c of ReadableStream.from(pieces).pipeThrough(stage)) {
    if (c instanceof Uint8Array) {
      for (let i = 0; i < c.length; i++) {
        if (c[i] !== disk[at + i]) return `stream changed byte ${at + i}`;
      }
      at += c.length;
    } else {
      zeros.push({ offset: at, length: c.zeros });
      at += c.zeros;
    }
  }
  if (at !== disk.length) return `stream gave ${at} of ${disk.length} bytes`;
  const wrong = outside(zeros, base.free);
  if (wrong) {
    return `stream wrong zero: bytes ${wrong.offset}-${
      wrong.offset + wrong.length - 1
    } are not free in the original disk`;
  }
  const hit = overlapping(zeros, m.live ?? []);
  if (hit) return `stream dropped bytes the mutation made live (${hit.offset})`;
  const dropped = zeros.reduce((n, r) => n + r.length, 0);
  const report = await stage.report;
  if (dropped !== report.freeBytes) {
    return `stream dropped ${dropped}, its report says ${report.freeBytes}`;
  }
  return undefined;
}
function emit(value: unknown): void {
  const line = encoder.encode(JSON.stringify(value) + "\n");
  let done = 0;
  while (done < line.length) done += Deno.stdout.writeSync(line.subarray(done));
}

const jobs = JSON.parse(await Deno.readTextFile(Deno.args[0])) as Jobs;
const { mutate } = await import(
  jobs.mutator ?? new URL("./_sparsify_fuzz.ts", import.meta.url).href
) as {
  mutate: (base: FuzzBase, bytes: Uint8Array, seed: number) => Mutation;
};
const bytes = new Map<string, Uint8Array>();
for (const b of jobs.bases) bytes.set(b.name, await Deno.readFile(b.path));

for (const c of jobs.cases) {
  emit({ begin: c.id });
  const base = jobs.bases.find((b) => b.name === c.base)!;
  const m = mutate(base, bytes.get(base.name)!, c.seed);
  let outcome = "";
  let problem: string | undefined;
  try {
    const before = jobs.rssLimitMiB ? resetPeak() : undefined;
    const map = await mapFreeSpace(
      new PatchedSource(bytes.get(base.name)!, m),
    );
    const ranges: FreeRange[] = [];
    for await (const r of map.ranges()) ranges.push(r);
    let end = 0;
    for (const r of ranges) {
      if (!(r.length > 0 && r.offset >= end && r.offset + r.length <= m.size)) {
        problem = `range ${
          JSON.stringify(r)
        } is empty, out of order or past the end (${m.size})`;
      }
      end = r.offset + r.length;
    }
    if (before !== undefined) {
      const growth = peakResident() - before;
      if (growth > jobs.rssLimitMiB! * 1024 * 1024) {
        problem ??=
          `mapping took ${growth} bytes of memory, over ${jobs.rssLimitMiB} MiB`;
      }
    }
    const total = ranges.reduce((n, r) => n + r.length, 0);
    if (total !== map.report.freeBytes) {
      problem ??=
        `ranges sum to ${total}, the report says ${map.report.freeBytes}`;
    }
    const wrong = outside(ranges, base.free);
    if (wrong) {
      problem ??= `wrong zero: bytes ${wrong.offset}-${
        wrong.offset + wrong.length - 1
      } are not free in the original disk`;
    }
    const hit = overlapping(ranges, m.live ?? []);
    if (hit) {
      problem ??= `dropped bytes ${hit.offset}-${
        hit.offset + hit.length - 1
      }, which the mutation made live`;
    }
    if (c.seed % 4 === 0) problem ??= await streamProblem(base, m);
    const mapped = map.report.regions.filter((r) => r.status === "mapped")
      .length;
    outcome = map.report.tableProblem
      ? "table refused"
      : mapped === 0
      ? "untouched"
      : mapped === map.report.regions.length
      ? "mapped"
      : "partly mapped";
  } catch (err) {
    outcome = "crash";
    problem = `threw ${(err as Error)?.stack ?? err}`;
  }
  emit({ id: c.id, outcome, problem, mutation: m.desc });
}
