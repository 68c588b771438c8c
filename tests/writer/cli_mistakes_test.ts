// The usual mistakes of a new user, each answered by one line that says
// what is wrong and where: a directory or a missing file as SRC (the same
// words from every command), too many workers, a compression flag with a
// raw-named DST, a mistyped device under /dev, negative numbers. And what a
// successful convert says at the end.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuTest, tempDir } from "../_qemu.ts";
import { exists, listDir, MiB, mixedBytes } from "./_helpers.ts";
import { type CliResult, runCli } from "./_cli.ts";
import { QCOW2_MAGIC } from "../../lib/format/constants.ts";

const INPUT = mixedBytes(MiB + 4321, 7, 64 * 1024);

/** Asserts one `qcow2pipe: ...` line on stderr, nothing on stdout, no stack. */
function assertOneLine(r: CliResult, code: number, line: string): void {
  assert.strictEqual(r.code, code, r.stderr);
  assert.strictEqual(r.stderr, `qcow2pipe: ${line}\n`);
  assert.strictEqual(r.stdout.length, 0);
}

/** Every command that reads one image, with SRC in place. */
function commandsOn(src: string): string[][] {
  return [
    ["convert", src, "out.qcow2"],
    ["convert", "-O", "raw", src, "out.raw"],
    ["info", src],
    ["check", src],
    ["map", src],
    ["compare", src, "in.raw"],
    ["compare", "in.raw", src],
  ];
}

Deno.test("cli: a directory as SRC is named, with what was being done, by every command", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  await Deno.mkdir(join(dir.path, "somedir"));
  for (const args of commandsOn("somedir")) {
    const r = await runCli(args, { cwd: dir.path });
    assertOneLine(
      r,
      args[0] === "compare" ? 2 : 1,
      "Cannot open image somedir: it is a directory",
    );
  }
  // As standard input too.
  const stdin = await runCli(["convert", "-", "out.qcow2"], {
    cwd: dir.path,
    stdinFile: join(dir.path, "somedir"),
  });
  assertOneLine(
    stdin,
    1,
    "Cannot read standard input at offset 0: it is a directory",
  );
  assert.deepStrictEqual(await listDir(dir.path), ["in.raw", "somedir"]);
});

Deno.test("cli: a missing SRC is worded the same by every command", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  for (const args of commandsOn("nosuch.raw")) {
    const r = await runCli(args, { cwd: dir.path });
    assertOneLine(
      r,
      args[0] === "compare" ? 2 : 1,
      "Cannot open image nosuch.raw: no such file",
    );
  }
  assert.deepStrictEqual(await listDir(dir.path), ["in.raw"]);
});

Deno.test("cli convert: a temporary directory that cannot be made is named", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  const made = await runCli(["convert", "-q", "in.raw", "in.qcow2"], {
    cwd: dir.path,
  });
  assert.strictEqual(made.code, 0, made.stderr);
  const missing = join(dir.path, "no-such-tmp");
  // qcow2 to a pipe waits in a spool; qcow2 from a pipe spools its tables.
  const runs: [string[], string][] = [
    [["--compress", "zstd", "-", "-"], "in.raw"],
    [["-O", "raw", "-", "o.raw"], "in.qcow2"],
  ];
  for (const [args, input] of runs) {
    assertOneLine(
      await runCli(["convert", ...args], {
        cwd: dir.path,
        stdinFile: join(dir.path, input),
        env: { TMPDIR: missing },
      }),
      1,
      "Cannot create a temporary directory in the system's temporary directory (TMPDIR): no such file",
    );
  }
});

Deno.test("cli convert: DST under a file, or an existing directory, is named with the reason", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  await Deno.mkdir(join(dir.path, "d.qcow2"));
  assertOneLine(
    await runCli(["convert", "in.raw", "in.raw/x.qcow2"], { cwd: dir.path }),
    1,
    "Cannot write in.raw/x.qcow2: a part of the path is not a directory",
  );
  // A directory is never replaced, --no-clobber or not.
  for (const force of [[], ["--no-clobber"]]) {
    assertOneLine(
      await runCli(["convert", ...force, "in.raw", "d.qcow2"], {
        cwd: dir.path,
      }),
      1,
      "Cannot write d.qcow2: it is a directory",
    );
  }
});

Deno.test("cli convert: --workers takes 0 to 64, says so in --help, and 0 runs without workers", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  for (const n of ["65", "999"]) {
    assertOneLine(
      await runCli([
        "convert",
        "--workers",
        n,
        "--compress",
        "zstd",
        "in.raw",
        "o.qcow2",
      ], {
        cwd: dir.path,
      }),
      1,
      `Cannot convert: --workers ${n} is out of range [0, 64]`,
    );
  }
  assertOneLine(
    await runCli(["convert", "--workers", "-1", "in.raw", "o.qcow2"], {
      cwd: dir.path,
    }),
    1,
    "Cannot parse --workers: -1 is negative; give 0 or more",
  );
  assert.deepStrictEqual(await listDir(dir.path), ["in.raw"]);
  const help = new TextDecoder().decode(
    (await runCli(["convert", "--help"])).stdout,
  );
  assert.match(
    help,
    /--workers N +compression\/decompression workers, 0 to 64\n.*0 runs the\n +codecs on the main thread/,
  );
  const inline = await runCli([
    "convert",
    "-q",
    "--workers",
    "0",
    "--compress",
    "zstd",
    "in.raw",
    "o.qcow2",
  ], { cwd: dir.path });
  assert.strictEqual(inline.code, 0, inline.stderr);
  assert.ok(await exists(join(dir.path, "o.qcow2")));
});

Deno.test("cli convert: -c with a DST named .raw is refused unless -O qcow2 says so (.img stays open to qcow2)", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  for (const name of ["out.raw", "OUT.RAW"]) {
    assertOneLine(
      await runCli(["convert", "--compress", "zstd", "in.raw", name], {
        cwd: dir.path,
      }),
      1,
      `Cannot convert: -c writes qcow2, but DST ${name} is named like a raw image; give -O qcow2 to write qcow2 under that name`,
    );
  }
  assert.deepStrictEqual(await listDir(dir.path), ["in.raw"]);
  const asked = await runCli(
    ["convert", "-q", "-O", "qcow2", "--compress", "zstd", "in.raw", "out.raw"],
    { cwd: dir.path },
  );
  assert.strictEqual(asked.code, 0, asked.stderr);
  // Cloud images named .img are often qcow2: -c there is not refused.
  const img = await runCli(
    ["convert", "-q", "--compress", "zstd", "in.raw", "out.img"],
    {
      cwd: dir.path,
    },
  );
  assert.strictEqual(img.code, 0, img.stderr);
  for (const name of ["out.raw", "out.img"]) {
    const head = await Deno.readFile(join(dir.path, name));
    assert.strictEqual(new DataView(head.buffer).getUint32(0), QCOW2_MAGIC);
  }
});

const ROOT_WITH_DEVTMPFS = Deno.build.os === "linux" &&
  Deno.uid() === 0 &&
  Deno.statSync("/dev").dev !== Deno.statSync("/").dev;
if (!ROOT_WITH_DEVTMPFS) {
  console.error(
    "not root, or /dev is no file system of its own: skipping the /dev typo test",
  );
}

Deno.test({
  name:
    "cli convert: a mistyped device under /dev is refused, not created as a regular file",
  ignore: !ROOT_WITH_DEVTMPFS,
  async fn() {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
    const typo = `/dev/qcow2pipe-test-${crypto.randomUUID().slice(0, 8)}`;
    try {
      for (
        const args of [["-O", "raw"], ["--compress", "zstd", "-O", "qcow2"]]
      ) {
        assertOneLine(
          await runCli(["convert", ...args, "in.raw", typo], { cwd: dir.path }),
          1,
          `Cannot write ${typo}: no such device (regular files are not created in /dev)`,
        );
        assert.strictEqual(await exists(typo), false);
        assert.deepStrictEqual(
          (await listDir("/dev")).filter((n) => n.includes("qcow2pipe-test")),
          [],
          "no temporary file in /dev",
        );
      }
      // An existing device is still written: /dev/null takes anything.
      const devNull = await runCli([
        "convert",
        "-q",
        "-O",
        "raw",
        "in.raw",
        "/dev/null",
      ], {
        cwd: dir.path,
      });
      assert.strictEqual(devNull.code, 0, devNull.stderr);
    } finally {
      await Deno.remove(typo).catch(() => {});
    }
  },
});

Deno.test("cli: a negative size says it is negative, not that the flag is ambiguous", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  const runs: [string[], string, string][] = [
    [["map", "--start-offset", "-5", "in.raw"], "--start-offset", "-5"],
    [["map", "--max-length", "-1M", "in.raw"], "--max-length", "-1M"],
    [
      ["convert", "--cluster-size", "-64k", "in.raw", "o.qcow2"],
      "--cluster-size",
      "-64k",
    ],
  ];
  for (const [args, flag, value] of runs) {
    assertOneLine(
      await runCli(args, { cwd: dir.path }),
      1,
      `Cannot parse ${flag}: ${value} is negative; give 0 or more`,
    );
  }
});

Deno.test("cli demo: --size is documented with its range and one placeholder, and takes 1 MiB", async () => {
  const help = new TextDecoder().decode(
    (await runCli(["demo", "--help"])).stdout,
  );
  assert.match(help, /^Usage: qcow2pipe demo \[--size MIB\] \[--keep\]$/m);
  assert.match(
    help,
    /^ {2}--size MIB +virtual size of the sample disk in MiB, 1 to 1048576$/m,
  );
  assert.doesNotMatch(help, /SIZE_MIB|--size N\b/);
  const small = await runCli(["demo", "--size", "1"]);
  assert.strictEqual(small.code, 0, small.stderr);
  assert.match(
    new TextDecoder().decode(small.stdout),
    /round trip identical \(1\.00 MiB compared byte for byte\)/,
  );
  assertOneLine(
    await runCli(["demo", "--size", "0"]),
    1,
    "Cannot run demo: --size 0 is out of range [1, 1048576] MiB",
  );
});

qemuTest(
  "cli convert: with --verbose, raw to qcow2 and qcow2 to raw both end with a summary in binary units, unless -q",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await Deno.writeFile(join(cwd, "in.raw"), INPUT);
    // A 1 MiB run usually ends within a second, when no speed is shown.
    const rate = String
      .raw`in [\d.]+ s(?: \([\d.]+ [KMG]iB/s of guest disk\))?`;
    const runs: [string[], RegExp][] = [
      [
        ["convert", "--compress", "zstd", "in.raw", "a.qcow2"],
        new RegExp(
          `^qcow2pipe: wrote a\\.qcow2: [\\d.]+ KiB of qcow2 for 1\\.00 MiB virtual ${rate}\\n$`,
        ),
      ],
      [
        ["convert", "a.qcow2", "b.raw"],
        new RegExp(`^qcow2pipe: wrote b\\.raw: 1\\.00 MiB of raw ${rate}\\n$`),
      ],
      [
        ["convert", "-O", "raw", "a.qcow2", "-"],
        new RegExp(
          `^qcow2pipe: wrote standard output: 1\\.00 MiB of raw ${rate}\\n$`,
        ),
      ],
      [
        ["convert", "--compress", "zlib", "--streamable", "in.raw", "c.qcow2"],
        new RegExp(
          `^qcow2pipe: wrote c\\.qcow2: [\\d.]+ KiB of streamable qcow2 for 1\\.00 MiB virtual ${rate}; [\\d.]+ KiB waited in the spool\\n$`,
        ),
      ],
    ];
    for (const [args, summary] of runs) {
      const r = await runCli(["convert", "--verbose", ...args.slice(1)], {
        cwd,
      });
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(r.stderr, summary, args.join(" "));
      // Without --verbose, off a terminal: nothing, as qemu-img.
      const silent = await runCli(args, { cwd });
      assert.strictEqual(silent.stderr, "", args.join(" "));
      const quiet = await runCli(
        ["convert", "-q", ...args.slice(1)],
        { cwd },
      );
      assert.strictEqual(quiet.code, 0, quiet.stderr);
      assert.strictEqual(quiet.stderr, "", `-q ${args.join(" ")}`);
    }
    await qemuCheckClean(join(cwd, "a.qcow2"));
    assert.deepStrictEqual(
      (await Deno.readFile(join(cwd, "b.raw"))).subarray(0, INPUT.length),
      INPUT,
    );
  },
);
