// Seeded fuzzing of the btrfs module: mutated real btrfs disks (checksums
// recomputed as an attacker would) must be mapped or left as they are,
// never crash, take more than 20 s or 300 MiB per case (the bounds),
// and never call a byte free that is not free in the unmutated disk by
// btrfs-progs (see _btrfs_fuzz.ts).
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/btrfs_fuzz_test.ts
// runs N cases (default 300, seed 1); a failure names the base and the
// case seed, and `mutate(file, base, seed)` rebuilds the case.

import assert from "node:assert";
import { diskTest } from "../sparsify/_disks.ts";
import { buildBtrfsFuzzBases } from "./_btrfs_fuzz.ts";
import { CASES, fuzzTarget, SEED } from "./_sparsify_cases.ts";

diskTest(
  `btrfs fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated btrfs disks, checksums recomputed`,
  { tools: ["mkfs.btrfs", "btrfs", "sfdisk"], loop: true },
  async () => {
    const { bases, cases, counts } = await fuzzTarget(
      new URL("./_btrfs_fuzz.ts", import.meta.url),
      buildBtrfsFuzzBases,
      { timeoutMs: 20_000, memoryMiB: 300 },
    );

    // The mutations reach both outcomes, on every base.
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok((counts["untouched"] ?? 0) > CASES / 4, JSON.stringify(counts));
    assert.strictEqual(new Set(cases.map((c) => c.base)).size, bases.length);
  },
);
