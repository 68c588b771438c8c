// Runner of the NTFS fuzz cases (not a test file):
// `deno run -A _ntfs_runner.ts JOBS.json RSS_LIMIT`. For each case it prints
// `{"begin": id}`, maps the mutated disk with mapFreeSpace, lists its free
// ranges, checks them against the base's free clusters (ntfs-3g's), and
// prints `{"id", "outcome", "problem"?, "reason"?}`. Every fourth case also
// streams the disk through FreeSpaceStream (a read-ahead that holds these
// small volumes): its output must be the disk, with zero runs only over the
// base's free clusters. Peak resident memory during a case must stay
// within RSS_LIMIT bytes plus the bases the runner holds.

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { outside, PatchedSource } from "./_sparsify_fuzz.ts";
import { mutateNtfs, type NtfsFuzzBase } from "./_ntfs_fuzz.ts";

interface Jobs {
  bases: NtfsFuzzBase[];
  cases: Array<{ id: string; base: string; seed: number }>;
}

const encoder = new TextEncoder();

function emit(value: unknown): void {
  const line = encoder.encode(JSON.stringify(value) + "\n");
  let done = 0;
  while (done < line.length) done += Deno.stdout.writeSync(line.subarray(done));
}

async function streamProblem(
  disk: Uint8Array,
  free: FreeRange[],
): Promise<string | undefined> {
  const pieces = [];
  for (let at = 0; at < disk.length; at += 1 << 20) {
    pieces.push(disk.subarray(at, at + (1 << 20)));
  }
  const stage = new FreeSpaceStream({ readAhead: 64 << 20 });
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
  const wrong = outside(zeros, free);
  if (wrong) {
    return `stream wrong zero: bytes ${wrong.offset}-${
      wrong.offset + wrong.length - 1
    } are not free in the original disk`;
  }
  const dropped = zeros.reduce((n, r) => n + r.length, 0);
  const report = await stage.report;
  if (dropped !== report.freeBytes) {
    return `stream dropped ${dropped}, its report says ${report.freeBytes}`;
  }
  return undefined;
}

const jobs = JSON.parse(await Deno.readTextFile(Deno.args[0])) as Jobs;
const bytes = new Map<string, Uint8Array>();
for (const b of jobs.bases) bytes.set(b.name, await Deno.readFile(b.path));
// A case may use this much memory on top of the bases the runner holds.
const baseBytes = [...bytes.values()].reduce((n, b) => n + b.length, 0);
const rssLimit = Number(Deno.args[1]) + baseBytes;
// Peak resident memory, sampled while a case runs (the module awaits reads,
// so the timer gets its turns).
let peak = 0;
const sampler = setInterval(() => {
  peak = Math.max(peak, Deno.memoryUsage().rss);
}, 20);

for (const c of jobs.cases) {
  emit({ begin: c.id });
  peak = 0;
  const base = jobs.bases.find((b) => b.name === c.base)!;
  const original = bytes.get(base.name)!;
  const m = mutateNtfs(base, original, c.seed);
  let outcome = "";
  let problem: string | undefined;
  let reason: string | undefined;
  try {
    const source = new PatchedSource(original, m);
    const map = await mapFreeSpace(source);
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
    if (c.seed % 4 === 0) {
      problem ??= await streamProblem(await source.read(0, m.size), base.free);
    }
    const region = map.report.regions.find((r) => r.found === "ntfs");
    reason = region?.reason ?? map.report.tableProblem;
    outcome = map.report.tableProblem
      ? "table refused"
      : region?.status === "mapped"
      ? "mapped"
      : "untouched";
  } catch (err) {
    outcome = "crash";
    problem = `threw ${(err as Error)?.stack ?? err}`;
  }
  peak = Math.max(peak, Deno.memoryUsage().rss);
  if (peak > rssLimit) {
    problem ??= `resident memory ${peak} bytes exceeds ${rssLimit}`;
  }
  emit({ id: c.id, outcome, problem, reason, mutation: m.desc });
}
clearInterval(sampler);
