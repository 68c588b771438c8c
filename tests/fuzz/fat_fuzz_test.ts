// Seeded fuzzing of the FAT module: mutated FAT12/16/32 volumes (bare, on
// GPT and on MBR; see _fat_fuzz.ts) must be mapped or left as they are,
// never crash, hang (10 s per case) or grow the runner's peak memory by
// more than 64 MiB while mapping, never call a byte free
// that mtools finds in use in the unmutated volume, and never drop a
// cluster that the mutation made reachable.
//
// Then hostile volumes at the module's limits (_fat_hostile.ts): the largest
// FAT read, one over it, 255 FAT copies, directories nested past the depth
// limit in 512 KiB clusters; the process must finish within 20 s, and no
// volume may raise its peak memory by 300 MiB.
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz/fat_fuzz_test.ts runs N
// cases (default 300, seed 1); a failure names the base and the case seed.

import assert from "node:assert";
import { diskTest, MiB } from "../sparsify/_disks.ts";
import { FAT_TOOLS } from "../sparsify/_fat.ts";
import { buildFatFuzzBases } from "./_fat_fuzz.ts";
import { CASES, fuzzTarget, SEED } from "./_sparsify_cases.ts";

/** Bounds of the hostile volumes (_fat_hostile.ts), for the whole process. */
const HOSTILE_MS = 20_000;
const HOSTILE_MIB = 300;

diskTest(
  `FAT fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated FAT12/16/32 volumes`,
  { tools: [...FAT_TOOLS, "sfdisk"] },
  async () => {
    const { bases, cases, counts } = await fuzzTarget(
      new URL("./_fat_fuzz.ts", import.meta.url),
      buildFatFuzzBases,
      { timeoutMs: 10_000, memoryMiB: 300, growthMiB: 64 },
    );

    // The mutations reach both outcomes, and every base.
    const refused = (counts["untouched"] ?? 0) +
      (counts["partly mapped"] ?? 0) +
      (counts["table refused"] ?? 0);
    assert.ok((counts["mapped"] ?? 0) > CASES / 20, JSON.stringify(counts));
    assert.ok(refused > CASES / 5, JSON.stringify(counts));
    assert.strictEqual(new Set(cases.map((c) => c.base)).size, bases.length);
  },
);

/** What _fat_hostile.ts prints for one volume. */
interface Hostile {
  name: string;
  status: string;
  reason?: string;
  freeBytes: number;
  ms: number;
  growth: number;
}

Deno.test({
  name:
    "FAT volumes at the limits are mapped or refused within 20 s and 300 MiB",
  ignore: Deno.build.os !== "linux", // peak memory is read from /proc
  fn: async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        `--v8-flags=--max-old-space-size=${HOSTILE_MIB}`,
        new URL("./_fat_hostile.ts", import.meta.url).pathname,
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setTimeout(() => child.kill("SIGKILL"), HOSTILE_MS);
    const out = await child.output();
    clearTimeout(timer);
    const dec = new TextDecoder();
    assert.ok(
      out.success,
      `exit ${out.code} ${out.signal ?? ""} (killed after ${HOSTILE_MS} ms?): ${
        dec.decode(out.stderr)
      }`,
    );
    const results = dec.decode(out.stdout).trim().split("\n").map((l) =>
      JSON.parse(l) as Hostile
    );
    const by = new Map(results.map((r) => [r.name, r]));
    for (const r of results) {
      assert.ok(r.growth < HOSTILE_MIB * MiB, JSON.stringify(r));
    }
    const largest = by.get("largest FAT, one chain through every cluster")!;
    assert.deepStrictEqual([largest.status, largest.freeBytes], ["mapped", 0]);
    assert.match(
      by.get("FAT over the budget")!.reason!,
      /^FAT of 67108808 bytes \(16777200 clusters\) is larger than the 33554432 bytes read of a FAT$/,
    );
    const copies = by.get("255 FATs")!;
    assert.deepStrictEqual(
      [copies.status, copies.freeBytes],
      ["mapped", (65_600 - 1) * 512],
    );
    assert.match(
      by.get("directories 100 deep in 512 KiB clusters")!.reason!,
      /^directory (\/D){64} is more than 63 levels deep$/,
    );
  },
});
