// Seeded fuzzing of the --sparsify parsers (ext2/3/4, GPT, MBR, swap):
// mutated real disks must be mapped, partly mapped or left as they are,
// never crash, hang (CASE_TIMEOUT_MS per case) or run out of memory
// (RUNNER_HEAP_MIB), and never call a byte free that is not free in the
// unmutated disk by dumpe2fs (see _sparsify_fuzz.ts): no live block is
// dropped, including when used blocks are freed with every count and
// checksum fixed up as an attacker would.
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/sparsify_fuzz_test.ts
// runs N cases (default 300, seed 1); a failure names the base and the
// case seed, and `mutate(base, bytes, seed)` rebuilds the case.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { diskTest } from "../sparsify/_disks.ts";
import { caseSeed } from "./_fuzz.ts";
import { buildFuzzBases } from "./_sparsify_fuzz.ts";
import { type Case, runCases } from "./_sparsify_cases.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
diskTest(
  `sparsify fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated ext2/3/4, GPT and MBR disks`,
  { tools: ["mke2fs", "debugfs", "dumpe2fs", "sfdisk", "mkswap"] },
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    await using dir = await tempDir();
    const bases = await buildFuzzBases(join(dir.path, "bases"));
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

    // The mutations reach every outcome, and every base.
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
    const refused = (counts["untouched"] ?? 0) +
      (counts["partly mapped"] ?? 0) +
      (counts["table refused"] ?? 0);
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok(refused > CASES / 5, JSON.stringify(counts));
    assert.strictEqual(new Set(cases.map((c) => c.base)).size, bases.length);

    // The attack of issue 22 (used blocks freed, counts and checksums made
    // to agree) runs often, and never leaves a disk mapped whole: the
    // filesystem it hits is always left as it is.
    const attacks = outcomes.filter((o) =>
      o.mutation?.[0]?.startsWith("freed used blocks")
    );
    const inodeEdits = outcomes.filter((o) =>
      /^inode \d+ /.test(o.mutation?.[0] ?? "")
    );
    if (CASES >= 300) {
      // Reach is judged on runs long enough to show it.
      assert.ok(attacks.length > CASES / 20, `${attacks.length} attack cases`);
      assert.ok(
        inodeEdits.length > CASES / 20,
        `${inodeEdits.length} inode cases`,
      );
    }
    const missed = attacks.filter((o) => o.outcome === "mapped");
    assert.deepStrictEqual(missed, [], "attacks mapped whole");
  },
);
