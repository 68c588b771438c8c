// Seeded fuzzing of the LVM2 module: mutated real PVs (bare, in a GPT
// partition with two metadata areas, with metadata that wraps) must be
// mapped, partly mapped or left as they are, never crash, take longer than
// 10 s or more than 300 MiB of memory per case, never call a byte
// free that the case does not allow, and never map a VG that the test's own
// reading finds inconsistent (see _lvm_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/lvm_fuzz_test.ts runs N
// cases (default 300, seed 1); a failure names the base and the case seed,
// and `mutateLvm(base, bytes, seed)` rebuilds the case. FUZZ_VERBOSE=1
// prints the outcomes and how often each refusal reason came up.

import assert from "node:assert";
import { lvmTest } from "../sparsify/_lvm.ts";
import { buildLvmFuzzBases } from "./_lvm_fuzz.ts";
import { CASES, fuzzTarget, SEED } from "./_sparsify_cases.ts";

lvmTest(
  `lvm fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated LVM2 PVs`,
  ["mke2fs", "debugfs", "dumpe2fs", "sfdisk"],
  async () => {
    const { outcomes, counts } = await fuzzTarget(
      new URL("./_lvm_fuzz.ts", import.meta.url),
      buildLvmFuzzBases,
      { timeoutMs: 10_000, memoryMiB: 300 },
    );

    // The mutations reach every outcome, and the checks that matter most.
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 5, JSON.stringify(counts));
    const reasons = outcomes.map((o) => o.reason ?? "");
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
