// Seeded fuzzing of the NTFS module: mutated real NTFS volumes (bare and on
// a GPT disk) must be mapped or left as they are, never crash, take longer
// than 10 s or more than 300 MiB of memory per case, and never
// call a byte free that ntfs-3g does not read as free in the unmutated
// volume (see _ntfs_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/ntfs_fuzz_test.ts runs
// N cases (default 300, seed 1); a failure names the base and the case
// seed, and `mutateNtfs(base, bytes, seed)` rebuilds the case. FUZZ_VERBOSE=1
// prints the outcomes and how often each refusal reason came up.

import assert from "node:assert";
import { ntfsTest } from "../sparsify/_ntfs.ts";
import { buildNtfsFuzzBases } from "./_ntfs_fuzz.ts";
import { CASES, fuzzTarget, SEED } from "./_sparsify_cases.ts";

ntfsTest(
  `ntfs fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated NTFS volumes`,
  ["sfdisk"],
  async () => {
    const { outcomes, counts } = await fuzzTarget(
      new URL("./_ntfs_fuzz.ts", import.meta.url),
      buildNtfsFuzzBases,
      { timeoutMs: 10_000, memoryMiB: 300 },
    );

    // The mutations reach both outcomes, and the MFT walk is what catches
    // a bitmap that frees clusters in use.
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 5, JSON.stringify(counts));
    assert.ok(
      outcomes.some((o) =>
        /\(in use\) has data on cluster \d+, which \$Bitmap calls free/.test(
          o.reason ?? "",
        )
      ),
      "a flipped bitmap bit was caught by the MFT walk",
    );
  },
);
