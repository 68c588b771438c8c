// Seeded fuzzing of the btrfs module: mutated real btrfs disks (checksums
// recomputed as an attacker would) must be mapped or left as they are,
// never crash, take more than CASE_TIMEOUT_MS or CASE_MEMORY_BYTES per case,
// and never call a byte free that is not free in the unmutated disk by
// btrfs-progs (see _btrfs_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/btrfs_fuzz_test.ts
// runs N cases (default 300, seed 1); a failure names the base and the
// case seed, and `mutate(file, base, seed)` rebuilds the case.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { diskTest } from "../sparsify/_disks.ts";
import { caseSeed } from "./_fuzz.ts";
import {
  type BtrfsFuzzBase,
  buildBtrfsFuzzBases,
  CASE_MEMORY_BYTES,
  CASE_TIMEOUT_MS,
  RUNNER,
} from "./_btrfs_fuzz.ts";

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
  reason?: string;
  ms?: number;
  memory?: number;
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
  bases: BtrfsFuzzBase[],
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
        "--v8-flags=--expose-gc,--max-old-space-size=512",
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
      }, CASE_TIMEOUT_MS);
    };
    arm();
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
    if (left.length > 0 || !status.success) {
      const id = current ?? left[0]?.id ?? "(runner)";
      out.push({
        id,
        outcome: "crash",
        problem: killed
          ? `did not finish within ${CASE_TIMEOUT_MS} ms`
          : `runner exited with ${status.code}: ${(await stderr).slice(-2000)}`,
        mutation: current === id ? mutation : undefined,
      });
      pending = left.filter((c) => c.id !== id);
    } else {
      pending = [];
    }
  }
  return out;
}

diskTest(
  `btrfs fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated btrfs disks, checksums recomputed`,
  { tools: ["mkfs.btrfs", "btrfs", "sfdisk"], loop: true },
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    await using dir = await tempDir();
    const bases = await buildBtrfsFuzzBases(join(dir.path, "bases"));
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
    for (const o of outcomes) {
      if (o.problem !== undefined) continue;
      if ((o.memory ?? 0) > CASE_MEMORY_BYTES) {
        o.problem = `peak memory ${o.memory} bytes, over ${CASE_MEMORY_BYTES}`;
      }
      if ((o.ms ?? 0) > CASE_TIMEOUT_MS) {
        o.problem = `took ${o.ms} ms, over ${CASE_TIMEOUT_MS}`;
      }
    }
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

    // The mutations reach both outcomes, on every base.
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 4, JSON.stringify(counts));
    assert.strictEqual(new Set(cases.map((c) => c.base)).size, bases.length);
  },
);
