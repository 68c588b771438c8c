// Seeded fuzzing of the XFS module: mutated XFS images (checksums mostly
// recomputed) must be mapped or left as they are, never crash, hang
// (10 s per case) or take more than 300 MiB of memory, and
// never call a byte free that xfs_db does not list as free in the
// unmutated image (see _xfs_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/xfs_fuzz_test.ts runs
// N cases (default 300, seed 1); a failure names the base and the case
// seed, and `mutateXfs(base, bytes, seed)` rebuilds the case.

import assert from "node:assert";
import { diskTest } from "../sparsify/_disks.ts";
import { XFS_TOOLS } from "../sparsify/_xfs.ts";
import { buildXfsBases } from "./_xfs_fuzz.ts";
import { CASES, fuzzTarget, SEED } from "./_sparsify_cases.ts";

diskTest(
  `xfs fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated XFS v4 and v5 images`,
  { tools: XFS_TOOLS },
  async () => {
    const { bases, cases, counts } = await fuzzTarget(
      new URL("./_xfs_fuzz.ts", import.meta.url),
      buildXfsBases,
      { timeoutMs: 10_000, memoryMiB: 300 },
    );

    // The mutations reach both outcomes, and every base.
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 5, JSON.stringify(counts));
    assert.strictEqual(new Set(cases.map((c) => c.base)).size, bases.length);
  },
);
