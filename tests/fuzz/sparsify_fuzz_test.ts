// Seeded fuzzing of the --sparsify parsers (ext2/3/4, GPT, MBR, swap):
// mutated real disks must be mapped, partly mapped or left as they are,
// never crash, hang (10 s per case) or take more than 300 MiB of memory,
// and never call a byte free that is not free in the unmutated disk by
// dumpe2fs (see _sparsify_fuzz.ts, and _sparsify_runner.ts for the rules
// every case is held to): no live block is
// dropped, including when used blocks are freed with every count and
// checksum fixed up as an attacker would.
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/sparsify_fuzz_test.ts
// runs N cases (default 300, seed 1); a failure names the base and the
// case seed, and `mutate(base, bytes, seed)` rebuilds the case.

import assert from "node:assert";
import { diskTest } from "../sparsify/_disks.ts";
import { buildFuzzBases } from "./_sparsify_fuzz.ts";
import { CASES, fuzzTarget, SEED } from "./_sparsify_cases.ts";

diskTest(
  `sparsify fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated ext2/3/4, GPT and MBR disks`,
  { tools: ["mke2fs", "debugfs", "dumpe2fs", "sfdisk", "mkswap"] },
  async () => {
    const { bases, cases, outcomes, counts } = await fuzzTarget(
      new URL("./_sparsify_fuzz.ts", import.meta.url),
      buildFuzzBases,
      { timeoutMs: 10_000, memoryMiB: 300 },
    );

    // The mutations reach every outcome, and every base.
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
