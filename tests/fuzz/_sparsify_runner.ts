// Runner of the --sparsify fuzz cases (not a test file):
// `deno run -A _sparsify_runner.ts JOBS.json`. JOBS.json holds the bases
// and the cases; for each case it prints `{"begin": id}`, maps the mutated
// disk with mapFreeSpace, lists its free ranges, checks them against the
// base's free space, and prints `{"id", "outcome", "problem"?}`. Every
// fourth case also streams the disk through FreeSpaceStream: its output
// must be the disk, with zero runs only over the base's free space.

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  type FuzzBase,
  mutate,
  outside,
  PatchedSource,
} from "./_sparsify_fuzz.ts";

interface Jobs {
  bases: FuzzBase[];
  cases: Array<{ id: string; base: string; seed: number }>;
}

const encoder = new TextEncoder();

/** Streams the mutated disk through FreeSpaceStream and checks what comes out. */
async function streamProblem(
  base: FuzzBase,
  m: ReturnType<typeof mutate>,
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
const bytes = new Map<string, Uint8Array>();
for (const b of jobs.bases) bytes.set(b.name, await Deno.readFile(b.path));

for (const c of jobs.cases) {
  emit({ begin: c.id });
  const base = jobs.bases.find((b) => b.name === c.base)!;
  const m = mutate(base, bytes.get(base.name)!, c.seed);
  let outcome = "";
  let problem: string | undefined;
  try {
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
