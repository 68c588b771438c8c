// Running seeded --sparsify fuzz cases in a runner subprocess (not a test
// file): a case that hangs past CASE_TIMEOUT_MS is killed and reported, the
// runner's heap is bounded by RUNNER_HEAP_MIB, and every outcome comes back
// as one JSON line (see _sparsify_runner.ts).

import { join } from "node:path";
import {
  CASE_TIMEOUT_MS,
  type FuzzBase,
  RUNNER,
  RUNNER_HEAP_MIB,
} from "./_sparsify_fuzz.ts";

const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

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
  mutation?: string[];
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

/** Where the mutations come from, and the memory bound of the runner. */
export interface RunOptions {
  /** URL of a module exporting `mutate(base, bytes, seed)` (default: ./_sparsify_fuzz.ts). */
  mutator?: string;
  /** Peak resident memory allowed after a case, in MiB. */
  rssLimitMiB?: number;
}

/**
 * Runs cases in one runner process; a case that hangs is killed and
 * reported.
 */
export async function runCases(
  dir: string,
  bases: FuzzBase[],
  cases: Case[],
  tag: string,
  options: RunOptions = {},
): Promise<Outcome[]> {
  const out: Outcome[] = [];
  let pending = cases;
  while (pending.length > 0) {
    const file = join(dir, `jobs-${tag}.json`);
    await Deno.writeTextFile(
      file,
      JSON.stringify({ ...options, bases, cases: pending }),
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        `--v8-flags=--max-old-space-size=${RUNNER_HEAP_MIB}`,
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
    let timer: ReturnType<typeof setTimeout> | undefined;
    let killed = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        killed = true;
        child.kill("SIGKILL");
      }, CASE_TIMEOUT_MS);
    };
    arm();
    for await (const line of lines(child.stdout)) {
      const msg = JSON.parse(line) as { begin?: string } & Outcome;
      if (msg.begin !== undefined) {
        current = msg.begin;
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
    if (left.length > 0 || !status.success) {
      const id = current ?? left[0]?.id ?? "(runner)";
      out.push({
        id,
        outcome: "crash",
        problem: killed
          ? `did not finish within ${CASE_TIMEOUT_MS} ms`
          : `runner exited with ${status.code}: ${(await stderr).slice(-2000)}`,
      });
      pending = left.filter((c) => c.id !== id);
    } else {
      pending = [];
    }
  }
  return out;
}
