// The progress bar of `convert -p`: renderProgress() itself, and the CLI
// drawing it under a pseudo-terminal (util-linux `script`), but not when
// stderr is a pipe or with -q.

import assert from "node:assert";
import { join } from "node:path";
import { has, tempDir } from "../_qemu.ts";
import { cli, pattern, ROOT } from "./_helpers.ts";
import { renderProgress } from "../../lib/cli/progress.ts";

Deno.test("renderProgress() draws the bar, percentage, sizes, speed and ETA in binary units", () => {
  const MiB = 1024 * 1024;
  assert.strictEqual(
    renderProgress(25 * MiB, 100 * MiB, 1000, 80),
    "[######------------------]  25.0%  25.0 MiB / 100.0 MiB  25.0 MiB/s  ETA 0:03",
  );
  assert.strictEqual(
    renderProgress(100 * MiB, 100 * MiB, 2000, 80),
    "[#######################] 100.0%  100.0 MiB / 100.0 MiB  50.0 MiB/s  ETA 0:00",
  );
  // Nothing done yet: no speed, no ETA.
  assert.strictEqual(
    renderProgress(0, 4096, 0, 80),
    "[------------------------------]   0.0%  0 B / 4.00 KiB  ETA --:--",
  );
  // Within the first second, no speed: it would say nothing yet.
  assert.strictEqual(
    renderProgress(4096, 4096, 20, 80),
    "[##############################] 100.0%  4.00 KiB / 4.00 KiB  ETA 0:00",
  );
  // Speeds scale their unit as sizes do (a sparse disk's terabytes).
  assert.match(renderProgress(2 ** 42, 2 ** 42, 2000, 80), / 2\.00 TiB\/s /);
  // Long jobs show hours; done past total stays at 100%.
  assert.match(renderProgress(1e6, 1e10, 1000), /ETA 2:46:39$/);
  assert.match(renderProgress(2000, 1000, 1000), /^\[#+\] 100\.0%/);
  // An unknown total (standard input): bytes and speed only.
  assert.strictEqual(
    renderProgress(3 * MiB, undefined, 1000),
    "3.00 MiB  3.00 MiB/s",
  );
});

Deno.test("renderProgress() fits any terminal width, dropping the least useful fields first", () => {
  const MiB = 1024 * 1024;
  assert.strictEqual(
    renderProgress(25 * MiB, 100 * MiB, 1000, 50),
    "[####------------]  25.0%  25.0 MiB/s  ETA 0:03",
  );
  assert.strictEqual(
    renderProgress(25 * MiB, 100 * MiB, 1000, 40),
    "[#####-------------]  25.0%  ETA 0:03",
  );
  assert.strictEqual(
    renderProgress(25 * MiB, 100 * MiB, 1000, 20),
    " 25.0%  ETA 0:03",
  );
  for (let columns = 1; columns <= 200; columns++) {
    for (const total of [100 * MiB, 1e13, undefined]) {
      const line = renderProgress(25 * MiB, total, 1000, columns);
      // The last column and room for an echoed ^C stay free.
      assert.ok(
        line.length <= Math.max(1, columns - 3),
        `${columns} columns: ${JSON.stringify(line)}`,
      );
      assert.ok(line.length > 0);
    }
  }
});

const SCRIPT = has("script");
if (!SCRIPT) {
  console.error(
    "util-linux script not found: skipping the pseudo-terminal progress tests",
  );
}

/** Runs the CLI under a pseudo-terminal; returns what the terminal showed. */
async function underPty(
  args: string[],
  cwd: string,
): Promise<{ code: number; screen: string }> {
  const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
  const command = [
    Deno.execPath(),
    "run",
    "-A",
    "--quiet",
    join(ROOT, "cli.ts"),
    ...args,
  ]
    .map(quote).join(" ");
  const out = await new Deno.Command("script", {
    args: ["-qfec", command, "/dev/null"],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", TERM: "dumb" },
  }).output();
  return { code: out.code, screen: new TextDecoder().decode(out.stdout) };
}

/**
 * The progress lines drawn: each redraw returns to the start of the line
 * and erases it (`\r\x1b[K`) before the new text.
 */
function bars(screen: string): string[] {
  const ESC = "\x1b";
  return screen.split("\r").map((s) =>
    (s.startsWith(`${ESC}[K`) ? s.slice(3) : s).split(ESC)[0].split("\n")[0]
  ).filter((s) => s.startsWith("["));
}

async function input(dir: string): Promise<string> {
  const path = join(dir, "in.raw");
  await Deno.writeFile(path, pattern(64 * 1024 * 1024, 5));
  return path;
}

Deno.test({
  name: "convert draws a progress bar when stderr is a terminal",
  ignore: !SCRIPT,
  async fn() {
    await using dir = await tempDir();
    await input(dir.path);
    const { code, screen } = await underPty([
      "convert",
      "--compress",
      "zstd",
      "in.raw",
      "out.qcow2",
    ], dir.path);
    assert.strictEqual(code, 0, screen);
    const drawn = bars(screen);
    assert.ok(
      drawn.length >= 1,
      `a bar was drawn: ${JSON.stringify(screen.slice(0, 200))}`,
    );
    for (const line of drawn) {
      assert.match(
        line,
        // The speed from the first second on.
        /^\[[#-]{10,30}\] +\d+\.\d% {2}.* \/ 64\.0 MiB {2}(\d+\.\d+ [KMG]iB\/s {2})?ETA ((\d+:)?\d+:\d\d|--:--)$/,
      );
    }
    assert.match(drawn.at(-1)!, /\] 100\.0%/);
    const percents = drawn.map((l) => Number(/(\d+\.\d)%/.exec(l)![1]));
    assert.deepStrictEqual(
      percents,
      [...percents].sort((a, b) => a - b),
      "progress only grows",
    );
    // On a terminal, the summary line after the bar.
    assert.match(
      screen,
      /qcow2pipe: wrote out\.qcow2: .* for 64\.0 MiB virtual in/,
    );
    assert.ok((await Deno.stat(join(dir.path, "out.qcow2"))).size > 0);

    // Back to raw draws a bar too.
    const back = await underPty(["convert", "out.qcow2", "back.raw"], dir.path);
    assert.strictEqual(back.code, 0, back.screen);
    assert.match(
      bars(back.screen).at(-1)!,
      /\] 100\.0% {2}64\.0 MiB \/ 64\.0 MiB/,
    );
  },
});

Deno.test({
  name: "convert -q draws no progress bar even on a terminal",
  ignore: !SCRIPT,
  async fn() {
    await using dir = await tempDir();
    await input(dir.path);
    const { code, screen } = await underPty([
      "convert",
      "-q",
      "--compress",
      "zlib",
      "in.raw",
      "out.qcow2",
    ], dir.path);
    assert.strictEqual(code, 0, screen);
    assert.deepStrictEqual(bars(screen), []);
    assert.ok(!/%|MiB\/s|ETA/.test(screen), JSON.stringify(screen));
  },
});

Deno.test("convert off a terminal: silent as qemu-img, -p prints qemu-img's steps on stdout, --verbose the summary", async () => {
  await using dir = await tempDir();
  await input(dir.path);
  const r = await cli(
    ["convert", "--compress", "zstd", "in.raw", "out.qcow2"],
    {
      cwd: dir.path,
    },
  );
  assert.strictEqual(r.code, 0, r.stderr);
  // Nothing at all, as qemu-img prints nothing.
  assert.strictEqual(r.stderr, "");
  assert.strictEqual(r.stdout, "");
  // --verbose: the summary line only.
  const verbose = await cli(
    ["convert", "--verbose", "--compress", "zstd", "in.raw", "out.qcow2"],
    { cwd: dir.path },
  );
  assert.match(
    verbose.stderr,
    /^qcow2pipe: wrote out\.qcow2: [\d.]+ [KM]iB of qcow2 for 64\.0 MiB virtual in [\d.]+ s( \([\d.]+ [KMG]iB\/s of guest disk\))?\n$/,
  );
  // -p: qemu-img's steps on stdout, from 0 to 100, each at most once
  // after moving by more than 1%, then a newline; no bar.
  const forced = await cli([
    "convert",
    "-p",
    "in.raw",
    "out.qcow2",
  ], { cwd: dir.path });
  assert.strictEqual(forced.code, 0, forced.stderr);
  assert.strictEqual(forced.stderr, "");
  assert.match(
    forced.stdout,
    /^ {4}\(0\.00\/100%\)\r( {4}\(\d+\.\d\d\/100%\)\r)* {4}\(100\.00\/100%\)\r\n$/,
  );
});
