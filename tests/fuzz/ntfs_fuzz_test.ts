// Seeded fuzzing of the NTFS module: mutated real NTFS volumes (bare and on
// a GPT disk) must be mapped or left as they are, never crash, take longer
// than CASE_TIMEOUT_MS or more than CASE_RSS_BYTES of memory, and never
// call a byte free that ntfs-3g does not read as free in the unmutated
// volume (see _ntfs_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/ntfs_fuzz_test.ts runs
// N cases (default 300, seed 1); a failure names the base and the case
// seed, and `mutateNtfs(base, bytes, seed)` rebuilds the case. FUZZ_VERBOSE=1
// prints the outcomes and how often each refusal reason came up.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { ntfsTest } from "../sparsify/_ntfs.ts";
import { caseSeed } from "./_fuzz.ts";
import {
  buildNtfsFuzzBases,
  NTFS_RUNNER,
  type NtfsFuzzBase,
} from "./_ntfs_fuzz.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
/** Wall-clock limit of one case, in milliseconds. */
const CASE_TIMEOUT_MS = 10_000;
/** Memory a case may use on top of the runner's copy of the bases. */
const CASE_RSS_BYTES = 300 * 1024 * 1024;

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
  mutation?: string[];
}

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

/** Runs cases in a runner process; a case that hangs is killed and reported. */
async function runCases(
  dir: string,
  bases: NtfsFuzzBase[],
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
        "--config",
        CONFIG,
        NTFS_RUNNER,
        file,
        String(CASE_RSS_BYTES),
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

ntfsTest(
  `ntfs fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated NTFS volumes`,
  ["sfdisk"],
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    await using dir = await tempDir();
    const bases = await buildNtfsFuzzBases(join(dir.path, "bases"));
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

    // The mutations reach both outcomes, and the MFT walk is what catches
    // a bitmap that frees clusters in use.
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 5, JSON.stringify(counts));
    const reasons = outcomes.map((o) => o.reason ?? "");
    if (Deno.env.get("FUZZ_VERBOSE")) {
      console.log(JSON.stringify(counts));
      const tally: Record<string, number> = {};
      for (const r of reasons) {
        const k = r.replace(/0x[0-9a-f]+|\d+/g, "N").replace(/"[^"]*"/g, "S")
          .slice(0, 70);
        tally[k] = (tally[k] ?? 0) + 1;
      }
      console.log(
        Object.entries(tally).sort((a, b) => b[1] - a[1]).map(([k, n]) =>
          `${n} ${k}`
        ).join("\n"),
      );
    }
    assert.ok(
      reasons.some((r) =>
        /\(in use\) has data on cluster \d+, which \$Bitmap calls free/.test(r)
      ),
      "a flipped bitmap bit was caught by the MFT walk",
    );
  },
);
