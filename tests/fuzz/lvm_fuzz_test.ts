// Seeded fuzzing of the LVM2 module: mutated real PVs (bare, in a GPT
// partition with two metadata areas, with metadata that wraps) must be
// mapped, partly mapped or left as they are, never crash, take longer than
// CASE_TIMEOUT_MS or more than CASE_RSS_BYTES of memory, never call a byte
// free that the case does not allow, and never map a VG that the test's own
// reading finds inconsistent (see _lvm_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/lvm_fuzz_test.ts runs N
// cases (default 300, seed 1); a failure names the base and the case seed,
// and `mutateLvm(base, bytes, seed)` rebuilds the case. FUZZ_VERBOSE=1
// prints the outcomes and how often each refusal reason came up.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { lvmTest } from "../sparsify/_lvm.ts";
import { caseSeed } from "./_fuzz.ts";
import { type FuzzCase, runFuzzCases } from "./_cases.ts";
import { buildLvmFuzzBases, LVM_RUNNER } from "./_lvm_fuzz.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
/** Wall-clock limit of one case, in milliseconds. */
const CASE_TIMEOUT_MS = 10_000;
/** Memory a case may use on top of the runner's copy of the bases. */
const CASE_RSS_BYTES = 300 * 1024 * 1024;

lvmTest(
  `lvm fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated LVM2 PVs`,
  ["mke2fs", "debugfs", "dumpe2fs", "sfdisk"],
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    await using dir = await tempDir();
    const bases = await buildLvmFuzzBases(join(dir.path, "bases"));
    const cases: FuzzCase[] = [];
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
      halves.map((h, k) =>
        runFuzzCases({
          file: join(dir.path, `jobs-${k}.json`),
          runner: LVM_RUNNER,
          config: CONFIG,
          args: [String(CASE_RSS_BYTES)],
          bases,
          cases: h,
          timeoutMs: CASE_TIMEOUT_MS,
        })
      ),
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

    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
    const reasons = outcomes.map((o) => o.reason ?? "");
    if (Deno.env.get("FUZZ_VERBOSE")) {
      console.log(JSON.stringify(counts));
      const tally: Record<string, number> = {};
      for (const r of reasons) {
        const k = r.replace(/0x[0-9a-f]+|\d+/g, "N").replace(/"[^"]*"/g, "S")
          .slice(0, 80);
        tally[k] = (tally[k] ?? 0) + 1;
      }
      console.log(
        Object.entries(tally).sort((a, b) => b[1] - a[1]).map(([k, n]) =>
          `${n} ${k}`
        ).join("\n"),
      );
    }
    // The mutations reach every outcome, and the checks that matter most.
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 5, JSON.stringify(counts));
    for (
      const re of [
        /label CRC/,
        /header CRC/,
        /both use extent/,
        /which has \d+ extents/,
        /is (a snapshot|a thin pool|a RAID volume|a mirror|a virtual volume|striped over)/,
      ]
    ) {
      assert.ok(reasons.some((r) => re.test(r)), `some case refused by ${re}`);
    }
  },
);
