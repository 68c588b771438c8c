// The progress bar in a real terminal (a tmux pane): it fits a narrow pane,
// follows a resize, never scrolls, and Ctrl-C erases it before the
// "interrupted" line. The conversion reads from a loopback server that
// pauses halfway until the test lets it go on, so the bar is on screen for
// as long as the test looks at it, whatever the machine's speed.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { TmuxPane, tmuxTest } from "../_tmux.ts";
import { serveFiles } from "../streams/_server.ts";
import { pattern, ROOT } from "./_helpers.ts";

const MiB = 1024 * 1024;
const cli = [Deno.execPath(), "run", "-A", "--quiet", join(ROOT, "cli.ts")];

/**
 * An 8 MiB raw disk served without ranges, its transfer paused halfway
 * until `resume()`: the bar stays on screen for as long as a test looks.
 */
const pausedDisk = (seed: number) =>
  serveFiles({ "disk.raw": pattern(8 * MiB, seed) }, {
    ranges: false,
    pauseAfter: 4 * MiB,
  });

/** Rows showing the bar (a percentage). */
const barRows = (rows: string[]) => rows.filter((r) => /\d%/.test(r));

/** Whether the bar shows some progress (the pipeline holds a few chunks back). */
const underWay = (rows: string[]) =>
  barRows(rows).some((r) => !/\] +0\.0%/.test(r));

/** Asserts the screen is the bar alone, on one row that fits `columns`. */
function assertBarAlone(rows: string[], columns: number): void {
  assert.strictEqual(rows.length, 1, `one row:\n${rows.join("\n")}`);
  assert.match(rows[0], /^\[[#-]+\] +\d+\.\d%/);
  assert.ok(
    rows[0].length <= columns - 3,
    `${rows[0].length} characters in ${columns} columns: ${rows[0]}`,
  );
}

tmuxTest(
  "convert's progress bar fits a 50-column terminal, follows a resize and never scrolls",
  async () => {
    await using dir = await tempDir();
    await using server = pausedDisk(3);
    await using pane = await TmuxPane.start(
      [
        ...cli,
        "convert",
        "--compress",
        "zstd",
        server.url("disk.raw"),
        "out.qcow2",
      ],
      { columns: 50, rows: 12, cwd: dir.path },
    );
    // Halfway: the bar is redrawn in place while the transfer waits.
    let rows = await pane.waitFor("the bar under way", underWay);
    assertBarAlone(rows, 50);
    // Redraws (the timer draws while no bytes come) stay on that row.
    const seen = rows[0];
    rows = await pane.waitFor("a redraw", (r) => r[0] !== seen);
    assertBarAlone(rows, 50);

    // Narrower: the terminal rewraps the old line; the next redraw clears
    // what it left and fits the new width.
    await pane.resize(34, 12);
    rows = await pane.waitFor(
      "the bar redrawn for 34 columns",
      // (not the old line's tail, which the narrower pane shows until then)
      (r) => r.length === 1 && r[0].length <= 31 && /^\[[#-]+\] /.test(r[0]),
    );
    assertBarAlone(rows, 34);
    // Wider again: the bar grows back.
    await pane.resize(70, 12);
    rows = await pane.waitFor(
      "the bar redrawn for 70 columns",
      (r) => r.length === 1 && r[0].length > 34,
    );
    assertBarAlone(rows, 70);

    server.resume();
    rows = await pane.waitFor("the end", (r) => r.includes("[exit 0]"));
    // The finished bar, the summary, the status: nothing else.
    assert.strictEqual(barRows(rows).length, 1, rows.join("\n"));
    assert.match(rows[0], /^\[#+\] 100\.0% /);
    assert.ok(rows[0].length <= 67, rows[0]);
    assert.match(
      rows.slice(1).join(""),
      /^qcow2pipe: wrote out\.qcow2: .* s( \(.*iB\/s of guest disk\))?\[exit 0\]$/,
    );
    assert.ok((await Deno.stat(join(dir.path, "out.qcow2"))).size > 0);
  },
);

tmuxTest(
  "Ctrl-C in a terminal erases the progress bar before saying interrupted",
  async () => {
    await using dir = await tempDir();
    await using server = pausedDisk(4);
    await using pane = await TmuxPane.start(
      [
        ...cli,
        "convert",
        "--compress",
        "zstd",
        server.url("disk.raw"),
        "out.qcow2",
      ],
      { columns: 50, rows: 12, cwd: dir.path },
    );
    await pane.waitFor("the bar under way", underWay);
    await pane.sendKeys("C-c");
    const rows = await pane.waitFor(
      "the exit status",
      (r) => r.some((row) => row.startsWith("[exit")),
    );
    // The terminal echoed ^C after the bar; both are gone.
    assert.deepStrictEqual(rows, [
      "qcow2pipe: interrupted by SIGINT",
      "[exit 130]",
    ]);
    assert.deepStrictEqual([...Deno.readDirSync(dir.path)], []);
  },
);

tmuxTest(
  "in a terminal, the optional permissions (FFI, QCOW2PIPE_DEBUG) are never asked for",
  async () => {
    await using dir = await tempDir();
    {
      using f = await Deno.open(join(dir.path, "holes.raw"), {
        write: true,
        create: true,
      });
      await f.truncate(4 * MiB);
      await f.write(new Uint8Array(4096).fill(7));
    }
    const deno = [Deno.execPath(), "run", "--quiet"];
    const runs: [string[], string[]][] = [
      [[
        ...deno,
        "-R",
        "-W",
        join(ROOT, "cli.ts"),
        "convert",
        "-q",
        "holes.raw",
        "a.qcow2",
      ], ["[exit 0]"]],
      [[
        "env",
        "QCOW2PIPE_DEBUG=1",
        ...deno,
        "-R",
        join(ROOT, "cli.ts"),
        "info",
        "nosuch",
      ], ["qcow2pipe: Cannot open image nosuch: no such file", "[exit 1]"]],
    ];
    for (const [argv, screen] of runs) {
      await using pane = await TmuxPane.start(argv, {
        columns: 100,
        rows: 12,
        cwd: dir.path,
      });
      // Deno's prompt would wait for an answer: the run would not end.
      const rows = await pane.waitFor(
        "the exit status",
        (r) => r.some((row) => row.startsWith("[exit")),
      );
      assert.deepStrictEqual(rows, screen);
    }
  },
);

tmuxTest(
  "the progress bar at the top of a pane is redrawn in place: no copy of the screen reaches the scrollback",
  async () => {
    await using dir = await tempDir();
    await using server = pausedDisk(5);
    await using pane = await TmuxPane.start(
      [...cli, "convert", server.url("disk.raw"), "out.qcow2"],
      { columns: 60, rows: 10, cwd: dir.path },
    );
    // The bar starts at the pane's top-left; a few redraws go by.
    let rows = await pane.waitFor("the bar under way", underWay);
    for (let redraws = 0; redraws < 3; redraws++) {
      const seen = rows[0];
      rows = await pane.waitFor("a redraw", (r) => r[0] !== seen);
    }
    // Erasing with "erase below" there would have cleared the screen,
    // which tmux copies into the scrollback, a bar each time.
    const history = await pane.history();
    assert.deepStrictEqual(history, rows, history.join("\n"));
    server.resume();
    rows = await pane.waitFor("the end", (r) => r.includes("[exit 0]"));
    assert.strictEqual(barRows(await pane.history()).length, 1);
  },
);

/** The screen of a pane that ran `cli ARGS` in `cwd`, once it has ended. */
async function screenAtExit(args: string[], cwd: string): Promise<string[]> {
  await using pane = await TmuxPane.start([...cli, ...args], {
    columns: 200,
    rows: 12,
    cwd,
  });
  return await pane.waitFor(
    "the exit status",
    (r) => r.some((row) => row.startsWith("[exit")),
  );
}

/**
 * Asserts that `cli ARGS`, run in a terminal, showed `line` alone (a byte
 * written to the terminal would show before it) and wrote nothing in
 * `cwd`, which holds in.raw.
 */
async function assertRefused(
  args: string[],
  line: string,
  cwd: string,
): Promise<void> {
  assert.deepStrictEqual(await screenAtExit(args, cwd), [line, "[exit 1]"]);
  assert.deepStrictEqual(
    [...Deno.readDirSync(cwd)].map((e) => e.name),
    ["in.raw"],
  );
}

tmuxTest(
  "convert refuses a terminal as standard output or standard input, in one line, writing nothing",
  async () => {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "in.raw"), pattern(MiB, 6));
    const runs: [string[], string][] = [
      [
        ["convert", "-O", "qcow2", "in.raw", "-"],
        "qcow2pipe: Cannot write to standard output: it is a terminal, and an image is binary; redirect it (> FILE or | COMMAND)",
      ],
      [
        ["convert", "-O", "raw", "in.raw", "-"],
        "qcow2pipe: Cannot write to standard output: it is a terminal, and an image is binary; redirect it (> FILE or | COMMAND)",
      ],
      [
        ["convert", "-O", "qcow2", "-", "out.qcow2"],
        "qcow2pipe: Cannot read standard input: it is a terminal; redirect an image into it (< FILE or COMMAND |)",
      ],
    ];
    for (const [args, line] of runs) {
      await assertRefused(args, line, dir.path);
    }
  },
);

tmuxTest(
  "convert refuses a DST that is a terminal, decided on what it opened, in one line, writing nothing; /dev/null is taken",
  async () => {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "in.raw"), pattern(MiB, 7));
    const refused = (dst: string) =>
      `qcow2pipe: Cannot write ${dst}: it is a terminal, and an image is binary; name a file or a pipe`;
    // /dev/tty is the pane's terminal; /dev/stdout and /proc/self/fd/2 lead
    // to it too (standard output, standard error).
    const runs: [string[], string][] = [
      [["-O", "raw", "in.raw", "/dev/tty"], refused("/dev/tty")],
      [["-O", "qcow2", "in.raw", "/dev/tty"], refused("/dev/tty")],
      [["-W", "-O", "qcow2", "in.raw", "/dev/tty"], refused("/dev/tty")],
      [["-O", "raw", "in.raw", "/dev/stdout"], refused("/dev/stdout")],
      [["-O", "raw", "in.raw", "/proc/self/fd/2"], refused("/proc/self/fd/2")],
    ];
    for (const [args, line] of runs) {
      await assertRefused(["convert", ...args], line, dir.path);
    }
    // A character device that is no terminal, from the same terminal.
    assert.deepStrictEqual(
      await screenAtExit(
        ["convert", "-q", "-O", "raw", "in.raw", "/dev/null"],
        dir.path,
      ),
      ["[exit 0]"],
    );
  },
);
