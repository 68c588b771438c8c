// Seeded fuzzing of the XFS module: mutated XFS images (checksums mostly
// recomputed) must be mapped or left as they are, never crash, hang
// (CASE_TIMEOUT_MS per case) or run out of memory (RUNNER_HEAP_MIB), and
// never call a byte free that xfs_db does not list as free in the
// unmutated image (see _xfs_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/xfs_fuzz_test.ts runs
// N cases (default 300, seed 1); a failure names the base and the case
// seed, and `mutateXfs(base, bytes, seed)` rebuilds the case.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { diskTest } from "../sparsify/_disks.ts";
import { caseSeed } from "./_fuzz.ts";
import {
  buildXfsBases,
  CASE_TIMEOUT_MS,
  RUNNER,
  RUNNER_HEAP_MIB,
  type XfsBase,
} from "./_xfs_fuzz.ts";
import { XFS_TOOLS } from "../sparsify/_xfs.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

interface Case {
  id: string;
  base: string;
  seed: number;
}

interface Outcome {
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

/** Runs cases in one runner process; a case that hangs is killed and reported. */
async function runCases(
  dir: string,
  bases: XfsBase[],
  cases: Case[],
  tag: string,
): Promise<Outcome[]> {
  const out: Outcome[] = [];
  let pending = cases;
  while (pending.length > 0) {
    const file = join(dir, `jobs-${tag}.json`);
    await Deno.writeTextFile(file, JSON.stringify({ bases, cases: pending }));
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

diskTest(
  `xfs fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated XFS v4 and v5 images`,
  { tools: XFS_TOOLS },
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    await using dir = await tempDir();
    const bases = await buildXfsBases(join(dir.path, "bases"));
    const cases: Case[] = [];
    for (let i = 0; i < CASES; i++) {
      const seed = caseSeed(SEED, i);
      cases.push({
        id: `${SEED}-${i}`,
        base: bases[seed % bases.length].name,
        seed,
      });
    }
    const halves = [
      cases.filter((_, i) => i % 2 === 0),
      cases.filter((_, i) => i % 2 === 1),
    ];
    const outcomes = (await Promise.all(
      halves.map((h, k) => runCases(dir.path, bases, h, String(k))),
    )).flat();
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
      `${bad.length} of ${CASES} cases broke the rules:\n${describe}`,
    );
    assert.strictEqual(outcomes.length, CASES);

    // The mutations reach both outcomes, and every base.
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 5, JSON.stringify(counts));
    assert.strictEqual(new Set(cases.map((c) => c.base)).size, bases.length);
  },
);
