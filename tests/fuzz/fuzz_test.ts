// Seeded fuzzing of every read path: real images (QEMU's layouts and our
// writer's) with their metadata mutated; info, check, map and convert to
// raw must succeed or throw a one-line Qcow2Error / RangeError of ours,
// within CASE_TIMEOUT_MS and CASE_MEMORY_BYTES per case (enforced on runner
// subprocesses). Every eighth case is also converted to qcow2: each
// conversion that completes must pass `qemu-img check` and hold what the raw
// expansion holds.
//
// FUZZ_CASES=N FUZZ_SEED=S deno test -A tests/fuzz   runs N cases (default
// 300, seed 1). A failing case is saved under tests/fixtures/fuzz/ (unless
// FUZZ_SAVE=0) and the fixtures are replayed by the second test.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import {
  buildBases,
  bytesOf,
  caseSeed,
  type Failure,
  type FixtureInfo,
  FIXTURES,
  mutate,
  pickBase,
  runJobs,
  type RunnerJob,
  saveFixture,
} from "./_fuzz.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
const SAVE = Deno.env.get("FUZZ_SAVE") !== "0";

function describe(failures: Failure[], saved: Map<Failure, string>): string {
  return failures.map((f) =>
    `${f.job.id}${
      saved.has(f) ? ` (saved as ${saved.get(f)})` : ""
    }: ${f.reason}` +
    (f.report?.ops.find((o) => o.error?.stack)?.error?.stack
      ? `\n    ${
        f.report.ops.find((o) => o.error?.stack)!.error!.stack!.replaceAll(
          "\n",
          "\n    ",
        )
      }`
      : "")
  ).join("\n");
}

qemuTest(
  `fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated images`,
  async () => {
    assert.ok(Number.isSafeInteger(CASES) && CASES > 0, "FUZZ_CASES");
    assert.ok(Number.isSafeInteger(SEED), "FUZZ_SEED");
    await using dir = await tempDir();
    const bases = await buildBases(join(dir.path, "bases"));
    const convertDir = join(dir.path, "converted");
    await Deno.mkdir(convertDir);

    const jobs: RunnerJob[] = [];
    const meta = new Map<
      string,
      { index: number; seed: number; base: string }
    >();
    for (let i = 0; i < CASES; i++) {
      const seed = caseSeed(SEED, i);
      const base = pickBase(bases, seed);
      const id = `${SEED}-${i}`;
      meta.set(id, { index: i, seed, base: base.name });
      jobs.push({
        id,
        base: { dir: base.dir, file: base.file },
        seed,
        stream: base.related.length === 0,
        convertDir: i % 8 === 0 ? convertDir : undefined,
      });
    }
    const { reports, failures } = await runJobs(jobs, 2);

    const saved = new Map<Failure, string>();
    if (SAVE) {
      for (const f of failures) {
        const m = meta.get(f.job.id)!;
        const base = bases.find((b) => b.name === m.base)!;
        const { bytes, mutations } = mutate(await bytesOf(base), m.seed);
        saved.set(
          f,
          await saveFixture({ base, seed: m.seed, bytes, mutations }, {
            runSeed: SEED,
            index: m.index,
            error: f.reason,
          }),
        );
      }
    }
    assert.deepStrictEqual(
      failures.length,
      0,
      `${failures.length} of ${CASES} cases broke the rules:\n${
        describe(failures, saved)
      }`,
    );
    assert.strictEqual(reports.length, CASES);

    // The mutations reach past the header: some cases read through, some fail
    // in each operation.
    const outcome = (op: string, ok: boolean) =>
      reports.filter((r) => r.ops.some((o) => o.op === op && o.ok === ok))
        .length;
    for (const op of ["info", "check", "map", "convert-raw"]) {
      assert.ok(outcome(op, true) > CASES / 20, `${op} succeeded sometimes`);
      assert.ok(outcome(op, false) > CASES / 50, `${op} failed sometimes`);
    }

    // Images converted to qcow2 pass qemu-img check and hold the raw bytes.
    const converted = reports.filter((r) => r.converted && r.expanded);
    assert.ok(
      converted.length >= Math.min(5, CASES / 16),
      "some cases converted",
    );
    for (const r of converted) {
      await qemuImg("check", "-q", "-f", "qcow2", r.converted!);
      await qemuImg(
        "compare",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        r.converted!,
        r.expanded!,
      );
    }
  },
);

// The fixtures present now (none until a case fails): the replay test is
// registered only when there is something to replay.
const fixtureNames: string[] = [];
try {
  for (const e of Deno.readDirSync(FIXTURES)) {
    if (e.isFile && e.name.endsWith(".json")) {
      fixtureNames.push(e.name.slice(0, -5));
    }
  }
} catch (err) {
  if (!(err instanceof Deno.errors.NotFound)) throw err;
}

if (fixtureNames.length > 0) {
  Deno.test(`fuzz: ${fixtureNames.length} saved regression fixtures replay within the rules`, async () => {
    const names = fixtureNames;
    names.sort();
    await using dir = await tempDir();
    const jobs: RunnerJob[] = [];
    for (const name of names) {
      const info: FixtureInfo = JSON.parse(
        await Deno.readTextFile(join(FIXTURES, `${name}.json`)),
      );
      assert.ok(info.mutations.length > 0 && info.error, `${name}.json`);
      const caseDir = join(dir.path, name);
      await Deno.mkdir(caseDir);
      await Deno.copyFile(
        join(FIXTURES, `${name}.qcow2`),
        join(caseDir, "image.qcow2"),
      );
      for (const [as, file] of Object.entries(info.related ?? {})) {
        await Deno.copyFile(join(FIXTURES, file), join(caseDir, as));
      }
      jobs.push({
        id: name,
        path: join(caseDir, "image.qcow2"),
        stream: info.related === undefined,
      });
    }
    const { reports, failures } = await runJobs(jobs, 2);
    assert.deepStrictEqual(
      failures.length,
      0,
      `fixtures that still break the rules:\n${describe(failures, new Map())}`,
    );
    assert.strictEqual(reports.length, names.length);
  });
}
