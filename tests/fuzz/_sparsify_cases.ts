// Running seeded --sparsify fuzz cases (not a test file): the one case
// runner of every sparsify fuzz test. A test names its target module (the
// mutator, see _sparsify_target.ts), its bases and its bounds; the cases go
// to runner subprocesses (_sparsify_runner.ts) in two batches that run side
// by side, each case with a wall-clock limit (past it the runner is killed,
// the case reported, and the rest of the batch runs in a new process), a
// heap limit and a memory bound, and every outcome comes back as one JSON
// line. No case may break a rule; the test then judges the reach.
//
// FUZZ_OUTCOMES=FILE writes every outcome there as JSON lines;
// FUZZ_VERBOSE=1 prints the outcome counts and how often each reason came.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { caseSeed } from "./_fuzz.ts";
import type { CaseBase } from "./_sparsify_target.ts";

const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const RUNNER = new URL("./_sparsify_runner.ts", import.meta.url).pathname;
/** Heap limit of a runner process, in MiB. */
const RUNNER_HEAP_MIB = 512;

/** One case: a base and a seed. */
export interface Case {
  id: string;
  base: string;
  seed: number;
}

/** What a case came to; `problem` when it broke a rule. */
export interface Outcome {
  id: string;
  outcome: string;
  problem?: string;
  reason?: string;
  mutation?: string[];
  /** Wall-clock time of the case, in milliseconds. */
  ms?: number;
  /** Peak resident memory of the runner during the case, and its growth, in bytes. */
  peak?: number;
  growth?: number;
}

/** The bounds of every case of a test. */
export interface Bounds {
  /** Wall-clock limit of one case, in milliseconds. */
  timeoutMs: number;
  /** Most peak resident memory of a case, beyond the bases the runner holds, in MiB. */
  memoryMiB: number;
  /** Most growth of resident memory over a case's start, in MiB, when given. */
  growthMiB?: number;
}

/** What a runner is given (JOBS.json). */
export interface Jobs extends Omit<Bounds, "timeoutMs"> {
  /** URL of the module exporting `target`. */
  target: string;
  bases: CaseBase[];
  cases: Case[];
}

/** Splits a text stream into lines. */
async function* lines(stream: ReadableStream<Uint8Array>) {
  let rest = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    rest += text;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, nl);
      rest = rest.slice(nl + 1);
    }
  }
}

/**
 * Runs `cases` in runner processes, one after another: a case that hangs
 * past the timeout or kills its runner is reported as a crash, and the
 * cases after it run in a new runner.
 */
async function runBatch(
  file: string,
  jobs: Omit<Jobs, "cases">,
  cases: Case[],
  timeoutMs: number,
): Promise<Outcome[]> {
  const out: Outcome[] = [];
  let pending = cases;
  while (pending.length > 0) {
    await Deno.writeTextFile(file, JSON.stringify({ ...jobs, cases: pending }));
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        `--v8-flags=--expose-gc,--max-old-space-size=${RUNNER_HEAP_MIB}`,
        "--config",
        CONFIG,
        RUNNER,
        file,
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    let current: string | undefined;
    let mutation: string[] | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let killed = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        killed = true;
        child.kill("SIGKILL");
      }, timeoutMs);
    };
    arm(); // startup counts against the first case
    for await (const line of lines(child.stdout)) {
      const msg = JSON.parse(line) as { begin?: string } & Outcome;
      if (msg.begin !== undefined) {
        current = msg.begin;
        mutation = msg.mutation;
        arm();
      } else {
        out.push(msg);
        current = undefined;
      }
    }
    clearTimeout(timer);
    const status = await child.status;
    const done = new Set(out.map((o) => o.id));
    const left = pending.filter((c) => !done.has(c.id));
    if (left.length === 0 && status.success) break;
    const id = current ?? left[0]?.id ?? "(runner)";
    out.push({
      id,
      outcome: "crash",
      problem: killed
        ? `did not finish within ${timeoutMs} ms`
        : `runner exited with ${status.code}: ${(await stderr).slice(-2000)}`,
      mutation: current === id ? mutation : undefined,
    });
    pending = left.filter((c) => c.id !== id);
  }
  return out;
}

/** A fuzz run: the target, its bases, how many cases from which seed, the bounds. */
export interface FuzzRun extends Bounds {
  /** URL of the module exporting `target`. */
  target: string;
  bases: CaseBase[];
  /** Number of cases, and the seed they derive from. */
  count: number;
  seed: number;
  /** Where the runners' job files go. */
  dir: string;
}

/**
 * Runs `count` seeded cases (case `i` has seed `caseSeed(seed, i)` and the
 * base that seed picks), half in each of two runner processes, and asserts
 * that none broke a rule (the failures named with their base, seed and
 * mutation) and that every case has its outcome.
 *
 * @returns The cases, their outcomes, and the count of each outcome.
 */
export async function runFuzz(run: FuzzRun): Promise<{
  cases: Case[];
  outcomes: Outcome[];
  counts: Record<string, number>;
}> {
  assert.ok(Number.isSafeInteger(run.count) && run.count > 0, "FUZZ_CASES");
  const cases: Case[] = [];
  for (let i = 0; i < run.count; i++) {
    const seed = caseSeed(run.seed, i);
    cases.push({
      id: `${run.seed}-${i}`,
      base: run.bases[seed % run.bases.length].name,
      seed,
    });
  }
  const jobs = {
    target: run.target,
    bases: run.bases,
    memoryMiB: run.memoryMiB,
    growthMiB: run.growthMiB,
  };
  const halves = [0, 1].map((k) => cases.filter((_, i) => i % 2 === k));
  const outcomes = (await Promise.all(
    halves.map((h, k) =>
      runBatch(join(run.dir, `jobs-${k}.json`), jobs, h, run.timeoutMs)
    ),
  )).flat();
  const dump = Deno.env.get("FUZZ_OUTCOMES");
  if (dump) {
    await Deno.writeTextFile(
      dump,
      outcomes.map((o) => JSON.stringify(o)).join("\n") + "\n",
    );
  }
  const counts: Record<string, number> = {};
  for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
  if (Deno.env.get("FUZZ_VERBOSE")) printTally(counts, outcomes);
  const bad = outcomes.filter((o) => o.problem !== undefined);
  const describe = bad.map((o) => {
    const c = cases.find((x) => x.id === o.id);
    return `case ${o.id} (base ${c?.base}, seed ${c?.seed}): ${o.problem}\n    mutation: ${
      (o.mutation ?? []).join("; ")
    }`;
  }).join("\n");
  assert.strictEqual(
    bad.length,
    0,
    `${bad.length} of ${run.count} cases broke the rules:\n${describe}`,
  );
  assert.strictEqual(outcomes.length, run.count);
  return { cases, outcomes, counts };
}

/** Prints the outcome counts and how often each reason (numbers blanked) came. */
function printTally(counts: Record<string, number>, outcomes: Outcome[]) {
  console.log(JSON.stringify(counts));
  const tally: Record<string, number> = {};
  for (const o of outcomes) {
    const k = (o.reason ?? "").replace(/0x[0-9a-f]+|\d+/g, "N")
      .replace(/"[^"]*"/g, "S").slice(0, 80);
    tally[k] = (tally[k] ?? 0) + 1;
  }
  console.log(
    Object.entries(tally).sort((a, b) => b[1] - a[1]).map(([k, n]) =>
      `${n} ${k}`
    ).join("\n"),
  );
  const slowest = outcomes.reduce((a, o) => Math.max(a, o.ms ?? 0), 0);
  const most = outcomes.reduce((a, o) => Math.max(a, o.peak ?? 0), 0);
  console.log(
    `slowest case ${slowest} ms; highest peak ${
      (most / 2 ** 20).toFixed(0)
    } MiB`,
  );
}

/** Cases of a fuzz test, from FUZZ_CASES (default 300). */
export const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
/** The seed the cases derive from, from FUZZ_SEED (default 1). */
export const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);

/**
 * A fuzz test's run: builds the bases in a temporary directory, then runs
 * {@linkcode CASES} cases from {@linkcode SEED} against `target` (the URL
 * of a module exporting `target`) within `bounds`, as {@linkcode runFuzz}.
 *
 * @returns The bases, the cases, their outcomes, and the count of each outcome.
 */
export async function fuzzTarget<B extends CaseBase>(
  target: URL,
  build: (dir: string) => Promise<B[]>,
  bounds: Bounds,
): Promise<{
  bases: B[];
  cases: Case[];
  outcomes: Outcome[];
  counts: Record<string, number>;
}> {
  await using dir = await tempDir();
  const bases = await build(join(dir.path, "bases"));
  const run = await runFuzz({
    target: target.href,
    bases,
    count: CASES,
    seed: SEED,
    dir: dir.path,
    ...bounds,
  });
  return { bases, ...run };
}
