// The CLI run with fewer permissions than -A: a missing permission is one
// line naming it (no "Uncaught", no stack trace, no prompt), the optional
// ones (QCOW2PIPE_DEBUG, FFI) are done without, and the narrow sets the
// README lists are enough (tests/readme_test.ts runs those lines).

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { cli } from "./_helpers.ts";
import { serveFiles } from "../streams/_server.ts";

/** `deno run FLAGS cli.ts ARGS` without prompts, in `cwd`. */
function cliWith(
  flags: string[],
  args: string[],
  cwd: string,
  env: Record<string, string> = {},
) {
  return cli(args, { cwd, flags, env });
}

function assertOneLine(
  r: { code: number; stderr: string },
  line: string | RegExp,
): void {
  assert.strictEqual(r.code, 1, r.stderr);
  assert.doesNotMatch(r.stderr, /Uncaught|NotCapable|\n\s+at /, "no stack");
  const lines = r.stderr.trimEnd().split("\n");
  assert.strictEqual(lines.length, 1, r.stderr);
  if (typeof line === "string") assert.strictEqual(lines[0], line);
  else assert.match(lines[0], line);
}

Deno.test("cli: a missing permission is one line naming it, without a stack trace", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  await Deno.writeFile(join(cwd, "disk.raw"), new Uint8Array(65536).fill(1));
  // No permission at all.
  assertOneLine(
    await cliWith([], ["info", "disk.raw"], cwd),
    'qcow2pipe: Cannot open image disk.raw: requires read access to "disk.raw", run again with the --allow-read flag',
  );
  // Read only: an error is still one line (reading QCOW2PIPE_DEBUG needs
  // --allow-env, which was not given).
  assertOneLine(
    await cliWith(["-R"], ["info", "nosuch.qcow2"], cwd, {
      QCOW2PIPE_DEBUG: "1",
    }),
    "qcow2pipe: Cannot open image nosuch.qcow2: no such file",
  );
  assertOneLine(
    await cliWith(["-R"], ["convert", "disk.raw", "out.qcow2"], cwd),
    /^qcow2pipe: Cannot write out\.qcow2: requires write access to "\S+", run again with the --allow-write flag$/,
  );
  await using server = serveFiles({ "disk.raw": new Uint8Array(4096) });
  assertOneLine(
    await cliWith(
      ["-R", "-W"],
      ["convert", server.url("disk.raw"), "o.qcow2"],
      cwd,
    ),
    /^qcow2pipe: Cannot fetch http:\S+: requires net access to "127\.0\.0\.1:\d+", run again with the --allow-net flag$/,
  );
  assert.deepStrictEqual([...Deno.readDirSync(cwd)].map((e) => e.name), [
    "disk.raw",
  ]);
  // Granted, the variable adds the stack trace.
  const debug = await cliWith(
    ["-R", "-E=QCOW2PIPE_DEBUG"],
    ["info", "nosuch.qcow2"],
    cwd,
    {
      QCOW2PIPE_DEBUG: "1",
    },
  );
  assert.strictEqual(debug.code, 1);
  assert.match(
    debug.stderr,
    /^qcow2pipe: Cannot open image nosuch\.qcow2: no such file\n/,
  );
  assert.match(debug.stderr, /\n\s+at /);
});

Deno.test("cli: without --allow-ffi, raw files are read whole instead of by their holes, with the same result", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  {
    using f = await Deno.open(join(cwd, "holes.raw"), {
      write: true,
      create: true,
    });
    await f.truncate(4 << 20);
    await f.seek(1 << 20, Deno.SeekMode.Start);
    await f.write(new Uint8Array(4096).fill(7));
  }
  const narrow = await cliWith(["-R", "-W"], [
    "convert",
    "-q",
    "holes.raw",
    "a.qcow2",
  ], cwd);
  assert.strictEqual(narrow.code, 0, narrow.stderr);
  assert.strictEqual(narrow.stderr, "");
  const ffi = await cliWith(["-R", "-W", "--allow-ffi"], [
    "convert",
    "-q",
    "holes.raw",
    "b.qcow2",
  ], cwd);
  assert.strictEqual(ffi.code, 0, ffi.stderr);
  assert.deepStrictEqual(
    await Deno.readFile(join(cwd, "a.qcow2")),
    await Deno.readFile(join(cwd, "b.qcow2")),
  );
  // map tells holes from data only with FFI, as its help says.
  const [withFfi, without] = await Promise.all([
    cliWith(["-R", "--allow-ffi"], ["map", "--json", "holes.raw"], cwd),
    cliWith(["-R"], ["map", "--json", "holes.raw"], cwd),
  ]);
  assert.strictEqual(withFfi.code, 0, withFfi.stderr);
  assert.strictEqual(without.code, 0, without.stderr);
  assert.strictEqual(JSON.parse(withFfi.stdout).length, 3);
  assert.strictEqual(JSON.parse(without.stdout).length, 1);
});
