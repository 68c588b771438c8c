// QEMU's own qemu-iotests with qcow2pipe in qemu-img's place (issue 27).
//
//   deno task iotests [--fresh | --cached] [--jobs N] [--markdown] [--cli DIR] [TEST …]
//   deno task iotests --select
//
// 1. Fetches the suite once into iotests/.cache/ (gitignored): the Debian
//    source package of the installed qemu-utils (`apt-get source
//    --download-only`, after adding a deb-src entry matching the deb ones
//    in /etc/apt if there is none; that step needs root), unpacked with
//    `dpkg-source -x`, so that Debian's patches apply and the tests expect
//    what the installed 7.2 binaries print.
// 2. Runs QEMU's `check -qcow2` from the source tree on the tests of
//    iotests/selection.txt (or the TESTs given), twice: with the real
//    qemu-img, and with a wrapper in its place that sends the commands of
//    OUR_COMMANDS (iotests/_check.ts) to `deno run -A cli.ts` and the
//    others to the real qemu-img. qemu-io and qemu-nbd are the real ones;
//    `check` wants a qemu-system and asks it for its default machine, so a
//    stub answers that (the selected tests never start an emulator).
// 3. Prints a table (test, real, ours, first differing line of ours) and
//    `N passed, M failed` for ours. Results are cached in
//    iotests/.cache/results.json, keyed by the program (qemu-img's
//    version; for ours, the sources of lib/, cli.ts and deno.json) and the
//    test script: a test runs again only when one of them changed.
//    --fresh runs everything again; --cached runs nothing and prints the
//    table of the last results (each from the build it ran with);
//    --markdown prints it as a markdown table. --cli DIR runs the cli.ts of another
//    checkout as ours (say, `git archive main` unpacked, to compare).
//
// --select picks the tests again and writes iotests/selection.txt: the qcow2
// tests that run convert, info, check, map or compare, need no emulator, and
// pass with the real qemu-img; the others are listed with the reason.
//
// It lives in its own folder, like bench/: it is neither a library module
// nor a `deno test` (it needs apt, root once, and about 20 CPU minutes).
// Needs python3 (QEMU's check is Python), qemu-img, qemu-io and qemu-nbd.

import { parseArgs } from "node:util";
import { CACHE, ensureSuite, IOTESTS } from "./_suite.ts";
import {
  type Mode,
  type Outcome,
  programKey,
  runCheck,
  useCheckout,
} from "./_check.ts";
import { candidates, readSelection, writeSelection } from "./_select.ts";

interface Cached extends Outcome {
  key: string;
}
type Results = Record<Mode, Record<string, Cached>>;

const RESULTS = `${CACHE}results.json`;

async function loadResults(): Promise<Results> {
  try {
    return JSON.parse(await Deno.readTextFile(RESULTS));
  } catch {
    return { real: {}, ours: {} };
  }
}

async function digest(text: string): Promise<string> {
  const hash = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(text),
  );
  return Array.from(new Uint8Array(hash).slice(0, 12))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function testScript(name: string): Promise<string> {
  for (const path of [`${IOTESTS}/${name}`, `${IOTESTS}/tests/${name}`]) {
    try {
      return await Deno.readTextFile(path);
    } catch {
      // try the next folder
    }
  }
  throw new Error(`Cannot find iotest ${name} in ${IOTESTS}`);
}

/** Runs the tests whose cached result is stale, with one qemu-img. */
async function runMode(
  mode: Mode,
  tests: string[],
  results: Results,
  fresh: boolean,
  jobs: number,
): Promise<void> {
  const program = await programKey(mode);
  const keys = new Map<string, string>();
  for (const t of tests) {
    keys.set(t, await digest(program + "\0" + await testScript(t)));
  }
  // A test that was not run (a prerequisite missing) is tried again.
  const stale = tests.filter((t) =>
    fresh || results[mode][t]?.key !== keys.get(t) ||
    results[mode][t].status === "skip"
  );
  if (stale.length === 0) return;
  console.error(`iotests: ${stale.length} test(s) with the ${mode} qemu-img`);
  const outcomes = await runCheck(mode, stale, jobs);
  for (const t of stale) {
    results[mode][t] = { ...outcomes.get(t)!, key: keys.get(t)! };
  }
  await Deno.writeTextFile(RESULTS, JSON.stringify(results, null, 1));
}

function table(tests: string[], results: Results, markdown: boolean): string {
  const rows = tests.map((t) => {
    const real = results.real[t];
    const ours = results.ours[t];
    return [t, real.status, ours.status, ours.diff];
  });
  const head = ["test", "real", "ours", "first differing line (ours)"];
  if (markdown) {
    const esc = (s: string) =>
      s === "" ? "" : "`" + s.replaceAll("|", "\\|").replaceAll("`", "'") + "`";
    return [
      head,
      head.map(() => "---"),
      ...rows.map((r) => [...r.slice(0, 3), esc(r[3])]),
    ]
      .map((r) => `| ${r.join(" | ")} |`).join("\n");
  }
  const clip = (s: string) => s.length > 90 ? s.slice(0, 87) + "..." : s;
  return [head, ...rows].map((r) =>
    `${r[0].padEnd(18)} ${r[1].padEnd(5)} ${r[2].padEnd(5)} ${clip(r[3])}`
  ).join("\n");
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      fresh: { type: "boolean" },
      select: { type: "boolean" },
      markdown: { type: "boolean" },
      jobs: { type: "string", default: "2" },
      cli: { type: "string" },
      cached: { type: "boolean" },
    },
  });
  const jobs = Number(values.jobs);
  if (values.cli !== undefined) useCheckout(values.cli);
  await ensureSuite();
  const results = await loadResults();
  if (values.select) {
    const found = await candidates();
    await runMode("real", found.chosen, results, values.fresh ?? false, jobs);
    await writeSelection(found, (t) => results.real[t]);
    Deno.exit(0);
  }
  const tests = positionals.length > 0 ? positionals : await readSelection();
  if (!values.cached) {
    await runMode("real", tests, results, values.fresh ?? false, jobs);
    await runMode("ours", tests, results, values.fresh ?? false, jobs);
  }
  console.log(table(tests, results, values.markdown ?? false));
  const passed = tests.filter((t) => results.ours[t].status === "pass").length;
  const realPassed = tests.filter((t) =>
    results.real[t].status === "pass"
  ).length;
  console.log(
    `${passed} passed, ${tests.length - passed} failed ` +
      `(the real qemu-img: ${realPassed} passed)`,
  );
  Deno.exit(passed === tests.length ? 0 : 1);
}
