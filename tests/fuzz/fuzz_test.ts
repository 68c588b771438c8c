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
// FUZZ_SAVE=0) and the fixtures are replayed by the last test.
//
// The rules hold for every case, so for any number of cases. Whether the
// mutations reach every operation (each of info, check, map and convert
// both succeeds and fails on some cases) is a property of the mutator that a
// short run cannot show: with 5 cases an operation may by chance never
// fail. It is judged on runs of REACH_MIN_CASES cases or more, the default
// run among them; a short run says that it was not judged.

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

/** Runs of this many cases or more judge the reach of the mutations. */
const REACH_MIN_CASES = 300;

/** Runs `cases` seeded cases; every one must keep the rules. */
async function fuzzRun(cases: number, seed: number, save: boolean) {
  assert.ok(Number.isSafeInteger(cases) && cases > 0, "FUZZ_CASES");
  assert.ok(Number.isSafeInteger(seed), "FUZZ_SEED");
  await using dir = await tempDir();
  const bases = await buildBases(join(dir.path, "bases"));
  const convertDir = join(dir.path, "converted");
  await Deno.mkdir(convertDir);

  const jobs: RunnerJob[] = [];
  const meta = new Map<
    string,
    { index: number; seed: number; base: string }
  >();
  for (let i = 0; i < cases; i++) {
    const caseSeedI = caseSeed(seed, i);
    const base = pickBase(bases, caseSeedI);
    const id = `${seed}-${i}`;
    meta.set(id, { index: i, seed: caseSeedI, base: base.name });
    jobs.push({
      id,
      base: { dir: base.dir, file: base.file },
      seed: caseSeedI,
      stream: base.related.length === 0,
      convertDir: i % 8 === 0 ? convertDir : undefined,
    });
  }
  const { reports, failures } = await runJobs(jobs, 2);

  const saved = new Map<Failure, string>();
  if (save) {
    for (const f of failures) {
      const m = meta.get(f.job.id)!;
      const base = bases.find((b) => b.name === m.base)!;
      const { bytes, mutations } = mutate(await bytesOf(base), m.seed);
      saved.set(
        f,
        await saveFixture({ base, seed: m.seed, bytes, mutations }, {
          runSeed: seed,
          index: m.index,
          error: f.reason,
        }),
      );
    }
  }
  assert.deepStrictEqual(
    failures.length,
    0,
    `${failures.length} of ${cases} cases broke the rules:\n${
      describe(failures, saved)
    }`,
  );
  assert.strictEqual(reports.length, cases);

  // Images converted to qcow2 pass qemu-img check and hold the raw bytes.
  const converted = reports.filter((r) => r.converted && r.expanded);
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

  if (cases < REACH_MIN_CASES) {
    console.error(
      `fuzz: ${cases} cases are too few to judge whether the mutations reach every operation (judged from ${REACH_MIN_CASES} cases)`,
    );
    return;
  }
  // The mutations reach past the header: some cases read through, some fail
  // in each operation, and some convert.
  const outcome = (op: string, ok: boolean) =>
    reports.filter((r) => r.ops.some((o) => o.op === op && o.ok === ok))
      .length;
  for (const op of ["info", "check", "map", "convert-raw"]) {
    assert.ok(outcome(op, true) > cases / 20, `${op} succeeded sometimes`);
    assert.ok(outcome(op, false) > cases / 50, `${op} failed sometimes`);
  }
  assert.ok(converted.length >= 5, "some cases converted");
}

qemuTest(
  `fuzz: ${CASES} seeded cases (seed ${SEED}) of mutated images`,
  () => fuzzRun(CASES, SEED, SAVE),
);

// A short run keeps the same rules (the reach is not judged on it).
if (CASES >= REACH_MIN_CASES) {
  qemuTest(
    "fuzz: a short run (5 cases, seed 7) keeps the same rules",
    () => fuzzRun(5, 7, false),
  );
}

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
