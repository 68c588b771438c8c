// Runner of the btrfs fuzz cases (not a test file):
// `deno run -A _btrfs_fuzz_runner.ts JOBS.json`. JOBS.json holds the bases
// and the cases; for each case it prints `{"begin": id, "mutation"}`, maps the mutated
// disk with mapFreeSpace (reading the base file with the patches over it,
// so that the process holds only what the analysis allocates), lists its
// free ranges, checks them against the base's free space by btrfs-progs,
// and prints `{"id", "outcome", "problem"?, "ms", "memory", "mutation"}`,
// memory being the peak resident size of the case (VmHWM, reset first).
// Every fourth case of a base small enough also streams the disk through
// FreeSpaceStream: its output must be the disk, with zero runs only over
// the base's free space.

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  BaseFile,
  type BtrfsFuzzBase,
  mutate,
  type Mutation,
  outside,
  PatchedFileSource,
} from "./_btrfs_fuzz.ts";

interface Jobs {
  bases: BtrfsFuzzBase[];
  cases: Array<{ id: string; base: string; seed: number }>;
}

const encoder = new TextEncoder();

function emit(value: unknown): void {
  const line = encoder.encode(JSON.stringify(value) + "\n");
  let done = 0;
  while (done < line.length) done += Deno.stdout.writeSync(line.subarray(done));
}

function resetPeak(): void {
  try {
    const f = Deno.openSync("/proc/self/clear_refs", { write: true });
    try {
      f.writeSync(encoder.encode("5"));
    } finally {
      f.close();
    }
  } catch {
    // not Linux: the sampled value stands
  }
}

function peak(): number {
  try {
    const m = /VmHWM:\s+(\d+)\s+kB/.exec(
      Deno.readTextFileSync("/proc/self/status"),
    );
    return m ? Number(m[1]) * 1024 : Deno.memoryUsage().rss;
  } catch {
    return Deno.memoryUsage().rss;
  }
}

/** Streams the mutated disk through FreeSpaceStream and checks what comes out. */
async function streamProblem(
  base: BtrfsFuzzBase,
  file: BaseFile,
  m: Mutation,
): Promise<string | undefined> {
  const disk = file.read(0, m.size, m.patches);
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

const jobs = JSON.parse(await Deno.readTextFile(Deno.args[0])) as Jobs;
const files = new Map<string, BaseFile>();
for (const b of jobs.bases) files.set(b.name, new BaseFile(b.path));

for (const c of jobs.cases) {
  const base = jobs.bases.find((b) => b.name === c.base)!;
  const file = files.get(base.name)!;
  const m = mutate(file, base, c.seed);
  emit({ begin: c.id, mutation: m.desc });
  let outcome = "";
  let problem: string | undefined;
  let reason: string | undefined;
  (globalThis as { gc?: () => void }).gc?.();
  resetPeak();
  const t0 = performance.now();
  try {
    const map = await mapFreeSpace(new PatchedFileSource(file, m));
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
    for (const r of map.report.regions) {
      if (r.reason !== undefined && /\n|undefined|NaN/.test(r.reason)) {
        problem ??= `bad reason: ${JSON.stringify(r.reason)}`;
      }
    }
    const btrfs = map.report.regions.find((r) => r.found === "btrfs");
    reason = btrfs?.reason;
    outcome = map.report.tableProblem
      ? "table refused"
      : btrfs === undefined
      ? "no btrfs"
      : btrfs.status === "mapped"
      ? "mapped"
      : "untouched";
  } catch (err) {
    outcome = "crash";
    problem = `threw ${(err as Error)?.stack ?? err}`;
  }
  const ms = Math.round(performance.now() - t0);
  const memory = peak();
  if (base.stream && c.seed % 4 === 0) {
    try {
      problem ??= await streamProblem(base, file, m);
    } catch (err) {
      problem ??= `stream threw ${(err as Error)?.stack ?? err}`;
    }
  }
  emit({ id: c.id, outcome, problem, reason, ms, memory, mutation: m.desc });
}
