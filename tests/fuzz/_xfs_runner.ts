// Runner of the XFS fuzz cases (not a test file):
// `deno run -A _xfs_runner.ts JOBS.json`. For each case it prints
// `{"begin": id}`, maps the mutated image with mapFreeSpace, lists its
// free ranges, checks them against the base's free space by xfs_db, and
// prints `{"id", "outcome", "problem"?, "mutation"}`. Every fourth case
// also streams the image through FreeSpaceStream: its output must be the
// image, with zero runs only over the base's free space.

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { outside, PatchedSource } from "./_sparsify_fuzz.ts";
import { mutateXfs, type XfsBase } from "./_xfs_fuzz.ts";

interface Jobs {
  bases: XfsBase[];
  cases: Array<{ id: string; base: string; seed: number }>;
}

const encoder = new TextEncoder();

function emit(value: unknown): void {
  const line = encoder.encode(JSON.stringify(value) + "\n");
  let done = 0;
  while (done < line.length) done += Deno.stdout.writeSync(line.subarray(done));
}

async function streamProblem(
  base: XfsBase,
  disk: Uint8Array,
): Promise<string | undefined> {
  const pieces = [];
  for (let at = 0; at < disk.length; at += 1 << 20) {
    pieces.push(disk.subarray(at, at + (1 << 20)));
  }
  const stage = new FreeSpaceStream();
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
    } are not free in the original image`;
  }
  return undefined;
}

const jobs = JSON.parse(await Deno.readTextFile(Deno.args[0])) as Jobs;
const bytes = new Map<string, Uint8Array>();
for (const b of jobs.bases) bytes.set(b.name, await Deno.readFile(b.path));

for (const c of jobs.cases) {
  emit({ begin: c.id });
  const base = jobs.bases.find((b) => b.name === c.base)!;
  const m = mutateXfs(base, bytes.get(base.name)!, c.seed);
  let outcome = "";
  let problem: string | undefined;
  try {
    const source = new PatchedSource(bytes.get(base.name)!, m);
    const map = await mapFreeSpace(source);
    const ranges: FreeRange[] = [];
    for await (const r of map.ranges()) ranges.push(r);
    let end = 0;
    for (const r of ranges) {
      if (!(r.length > 0 && r.offset >= end && r.offset + r.length <= m.size)) {
        problem = `range ${
          JSON.stringify(r)
        } is empty, out of order or past the end`;
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
      } are not free in the original image`;
    }
    const [region] = map.report.regions;
    if (region.status === "untouched" && /\n/.test(region.reason ?? "\n")) {
      problem ??= `reason is not one line: ${JSON.stringify(region.reason)}`;
    }
    if (c.seed % 4 === 0) {
      problem ??= await streamProblem(base, await source.read(0, m.size));
    }
    outcome = region.status;
  } catch (err) {
    outcome = "crash";
    problem = `threw ${(err as Error)?.stack ?? err}`;
  }
  emit({ id: c.id, outcome, problem, mutation: m.desc });
}
