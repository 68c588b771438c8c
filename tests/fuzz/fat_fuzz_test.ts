// Seeded fuzzing of the FAT module: mutated FAT12/16/32 volumes (bare, on
// GPT and on MBR; see _fat_fuzz.ts) must be mapped or left as they are,
// never crash, hang (CASE_TIMEOUT_MS per case) or grow the runner's peak
// memory by more than RSS_LIMIT_MIB while mapping, never call a byte free
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
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { diskTest, MiB } from "../sparsify/_disks.ts";
import { FAT_TOOLS } from "../sparsify/_fat.ts";
import { caseSeed } from "./_fuzz.ts";
import { buildFatFuzzBases } from "./_fat_fuzz.ts";
import { type Case, runCases } from "./_sparsify_cases.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
/** Most growth of the runner's peak resident memory while a disk is mapped. */
const RSS_LIMIT_MIB = 64;
const MUTATOR = new URL("./_fat_fuzz.ts", import.meta.url).href;
/** Bounds of the hostile volumes (_fat_hostile.ts), for the whole process. */
const HOSTILE_MS = 20_000;
const HOSTILE_MIB = 300;

diskTest(
  `FAT fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated FAT12/16/32 volumes`,
  { tools: [...FAT_TOOLS, "sfdisk"] },
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    await using dir = await tempDir();
    const bases = await buildFatFuzzBases(join(dir.path, "bases"));
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
    const options = { mutator: MUTATOR, rssLimitMiB: RSS_LIMIT_MIB };
    const outcomes = (await Promise.all(
      halves.map((h, k) => runCases(dir.path, bases, h, String(k), options)),
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

    // The mutations reach both outcomes, and every base.
    const counts: Record<string, number> = {};
    for (const o of outcomes) counts[o.outcome] = (counts[o.outcome] ?? 0) + 1;
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
