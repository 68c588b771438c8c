// The qemu-img options of our commands that the command-line suite
// (qemu_lines_*_test.ts) cannot run with qemu-img: the ones qemu-img 7.2
// has and we refuse, our own spellings (--compress, -s, --json,
// --version), delta images from a pipe and to standard output, and what
// info, check and map fetch over HTTP.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuTest,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import { cli } from "../tools/_helpers.ts";
import { runCli } from "../writer/_cli.ts";
import { serveFiles } from "../streams/_server.ts";
import { makeFixtures } from "./_lines.ts";
import { diskTest, sh } from "../sparsify/_disks.ts";
import config from "../../deno.json" with { type: "json" };

/** One `qcow2pipe: Cannot ...` line on stderr, exit status `code`. */
function assertRefused(
  r: { code: number; stdout: string; stderr: string },
  pattern: RegExp,
  code = 1,
): void {
  assert.strictEqual(r.code, code, r.stderr);
  assert.strictEqual(r.stdout, "");
  const lines = r.stderr.trimEnd().split("\n");
  assert.strictEqual(lines.length, 1, r.stderr);
  assert.match(lines[0], /^qcow2pipe: Cannot /);
  assert.match(lines[0], pattern);
}

Deno.test("cli: --version and -V print the version in deno.json", async () => {
  for (const flag of ["--version", "-V"]) {
    const r = await cli([flag]);
    assert.strictEqual(r.code, 0);
    assert.strictEqual(r.stdout, `qcow2pipe ${config.version}\n`);
  }
});

/** Options qemu-img 7.2 takes that we refuse: command, arguments, and the option named. */
const REFUSED: [string[], string][] = [
  [["convert", "-C", "a.raw", "b.qcow2"], "-C"],
  [["convert", "-r", "1M", "a.raw", "b.qcow2"], "-r"],
  [
    ["convert", "--object", "secret,id=s0,data=x", "a.raw", "b.qcow2"],
    "--object",
  ],
  [
    ["convert", "--target-image-opts", "a.raw", "b.qcow2"],
    "--target-image-opts",
  ],
  [["convert", "--bitmaps", "a.raw", "b.qcow2"], "--bitmaps"],
  [
    ["convert", "--skip-broken-bitmaps", "a.raw", "b.qcow2"],
    "--skip-broken-bitmaps",
  ],
  [["compare", "--image-opts", "a.raw", "a.qcow2"], "--image-opts"],
  [
    ["compare", "--object", "secret,id=s0,data=x", "a.raw", "a.qcow2"],
    "--object",
  ],
  [["measure", "--image-opts", "a.raw"], "--image-opts"],
];

qemuTest(
  "cli: qemu-img options we do not support are refused in one line naming the option",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await Deno.writeFile(join(cwd, "a.raw"), new Uint8Array(65536).fill(1));
    await qemuImg("create", "-q", "-f", "qcow2", join(cwd, "a.qcow2"), "1M");
    for (const [args, option] of REFUSED) {
      const what = args.join(" ");
      // qemu-img has the option (it may still fail on our made-up values).
      const theirs = await runStatus(
        "qemu-img",
        args.map((a) =>
          a.endsWith(".raw") || a.endsWith(".qcow2") ? join(cwd, a) : a
        ),
      );
      assert.doesNotMatch(theirs.stderr, /unrecognized|invalid option/, what);
      await Deno.remove(join(cwd, "b.qcow2")).catch(() => {});
      const ours = await cli(args, { cwd });
      const command = args[0];
      assertRefused(
        ours,
        new RegExp(`: ${option} is not supported \\(.+\\)$`),
        command === "compare" ? 2 : 1,
      );
      await assert.rejects(
        Deno.stat(join(cwd, "b.qcow2")),
        Deno.errors.NotFound,
      );
    }
    // check -r repairs (tests/tools/repair_test.ts): a clean image is
    // left as it is, as qemu-img leaves it.
    const before = await Deno.readFile(join(cwd, "a.qcow2"));
    const repair = await cli(["check", "-r", "leaks", "a.qcow2"], { cwd });
    assert.strictEqual(repair.code, 0, repair.stderr);
    assert.deepStrictEqual(await Deno.readFile(join(cwd, "a.qcow2")), before);
  },
);

Deno.test("cli: --output takes human or json; --json is its short form", async () => {
  await using dir = await tempDir();
  const img = join(dir.path, "a.raw");
  await Deno.writeFile(img, new Uint8Array(4096));
  const json = await cli(["info", "--json", img]);
  assert.strictEqual(json.code, 0);
  assert.deepStrictEqual(
    JSON.parse(json.stdout),
    JSON.parse((await cli(["info", "--output=json", img])).stdout),
  );
  assertRefused(
    await cli(["map", "--output=xml", img]),
    /--output takes human or json, not "xml"/,
  );
  assertRefused(
    await cli(["check", "--json", "--output=human", img]),
    /--json and --output=human contradict each other/,
  );
});

qemuTest(
  "cli convert, create: -o help prints qemu-img's list",
  async () => {
    for (
      const args of [
        ["convert", "-O", "qcow2", "-o", "help"],
        ["convert", "-O", "qcow2", "-o", "help", "x.raw", "y.qcow2"],
        ["convert", "-o", "?", "x.raw", "y.raw"],
        ["create", "-f", "qcow2", "-o", "help", "y.qcow2", "1M"],
        ["create", "-f", "raw", "-o", "help"],
      ]
    ) {
      const ours = await cli(args);
      assert.strictEqual(ours.code, 0, ours.stderr);
      assert.strictEqual(ours.stdout, await qemuImg(...args), args.join(" "));
    }
  },
);

Deno.test("cli convert: -c takes no value; the type is --compress's or -o compression_type's", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  await Deno.writeFile(join(cwd, "a.raw"), new Uint8Array(65536).fill(1));
  assertRefused(
    await cli(["convert", "-c", "zstd", "a.raw", "b.qcow2"], { cwd }),
    /got 3 arguments .*-c takes no value, as in qemu-img: give the type with --compress zstd or -c -o compression_type=zstd/,
  );
  assertRefused(
    await cli([
      "convert",
      "--compress",
      "zlib",
      "-o",
      "compression_type=zstd",
      "a.raw",
      "b.qcow2",
    ], { cwd }),
    /--compress zlib and -o compression_type=zstd contradict each other/,
  );
  assertRefused(
    await cli(["convert", "-o", "compression_type=zstd", "a.raw", "b.qcow2"], {
      cwd,
    }),
    /-o compression_type without -c is not supported/,
  );
  assertRefused(
    await cli([
      "convert",
      "--cluster-size",
      "4k",
      "-o",
      "cluster_size=4k",
      "a.raw",
      "b.qcow2",
    ], { cwd }),
    /--cluster-size and -o cluster_size set the same thing; give one/,
  );
  assertRefused(
    await cli(["convert", "-m", "65", "a.raw", "b.qcow2"], { cwd }),
    /-m 65 is out of range \[1, 64\]/,
  );
  assertRefused(
    await cli(["convert", "-m", "2", "--workers", "2", "a.raw", "b.qcow2"], {
      cwd,
    }),
    /--workers and -m set the same thing/,
  );
  const zstd = await cli(
    ["convert", "--compress", "zstd", "a.raw", "b.qcow2"],
    {
      cwd,
    },
  );
  assert.strictEqual(zstd.code, 0, zstd.stderr);
  const info = JSON.parse(
    (await cli(["info", "--json", "b.qcow2"], { cwd })).stdout,
  );
  assert.strictEqual(info["format-specific"].data["compression-type"], "zstd");
});

qemuTest(
  "cli convert: -s ID_OR_NAME reads the snapshot qemu-img's -l ID_OR_NAME reads",
  async () => {
    await using fx = await makeFixtures();
    for (const name of ["1", "first"]) {
      const theirs = join(fx.dir, `q-${name}.raw`);
      const ours = join(fx.dir, `o-${name}.raw`);
      await qemuImg(
        "convert",
        "-O",
        "raw",
        "-l",
        name,
        join(fx.dir, "disk.qcow2"),
        theirs,
      );
      const r = await cli([
        "convert",
        "-q",
        "-O",
        "raw",
        "-s",
        name,
        "disk.qcow2",
        ours,
      ], { cwd: fx.dir });
      assert.strictEqual(r.code, 0, r.stderr);
      await qemuCompareIdentical(theirs, ours, ["raw", "raw"]);
    }
    // From a pipe the image cannot be read twice: a name that is another
    // snapshot's ID is refused with the ID to give.
    const piped = await runCli([
      "convert",
      "-q",
      "-O",
      "raw",
      "-l",
      "snapshot.name=1",
      "-",
      join(fx.dir, "p.raw"),
    ], {
      stdinFile: join(fx.dir, "disk.qcow2"),
    });
    assert.strictEqual(piped.code, 1);
    assert.match(piped.stderr, /give -l snapshot\.id=2$/m);
    const byId = await runCli([
      "convert",
      "-q",
      "-O",
      "raw",
      "-l",
      "snapshot.id=2",
      "-",
      join(fx.dir, "p.raw"),
    ], {
      stdinFile: join(fx.dir, "disk.qcow2"),
    });
    assert.strictEqual(byId.code, 0, byId.stderr);
    await qemuImg(
      "convert",
      "-O",
      "raw",
      "-l",
      "snapshot.id=2",
      join(fx.dir, "disk.qcow2"),
      join(fx.dir, "q2.raw"),
    );
    await qemuCompareIdentical(join(fx.dir, "q2.raw"), join(fx.dir, "p.raw"), [
      "raw",
      "raw",
    ]);
  },
);

qemuTest(
  "cli convert: delta images from a pipe (raw and qcow2), zlib and zstd, and to standard output",
  async () => {
    await using fx = await makeFixtures();
    const cwd = fx.dir;
    const cases: [string, string[]][] = [
      ["new.raw", []],
      ["new.raw", ["-c"]],
      ["new.raw", ["--compress", "zstd"]],
      ["new.qcow2", ["-c", "-o", "compression_type=zstd"]],
    ];
    await qemuImg(
      "convert",
      "-f",
      "raw",
      "-O",
      "qcow2",
      join(cwd, "new.raw"),
      join(cwd, "new.qcow2"),
    );
    for (const [i, [input, flags]] of cases.entries()) {
      const delta = `delta${i}.qcow2`;
      const r = await runCli(
        [
          "convert",
          "-q",
          "-O",
          "qcow2",
          ...flags,
          "-B",
          "base.qcow2",
          "-F",
          "qcow2",
          "-",
          delta,
        ],
        { cwd, stdinFile: join(cwd, input) },
      );
      assert.strictEqual(r.code, 0, r.stderr);
      await qemuCheckClean(join(cwd, delta));
      await qemuCompareIdentical(join(cwd, "new.raw"), join(cwd, delta), [
        "raw",
        "qcow2",
      ]);
      const chain = JSON.parse(
        await qemuImg(
          "info",
          "--output=json",
          "--backing-chain",
          join(cwd, delta),
        ),
      );
      assert.deepStrictEqual(chain.map((i: { format: string }) => i.format), [
        "qcow2",
        "qcow2",
      ]);
      assert.strictEqual(chain[0]["backing-filename"], "base.qcow2");
      // Only what changed is stored: far less than the 9 MiB disk.
      assert.ok((await Deno.stat(join(cwd, delta))).size < 1024 * 1024);
    }
    // The streamable layout writes deltas too: to standard output, and to
    // a file with --streamable.
    for (const target of [["-"], ["--streamable", "s.qcow2"]]) {
      const r = await runCli([
        "convert",
        "-q",
        "-O",
        "qcow2",
        "-B",
        "base.qcow2",
        "-F",
        "qcow2",
        "new.raw",
        ...target,
      ], { cwd });
      assert.strictEqual(r.code, 0, r.stderr);
      const delta = join(cwd, "s.qcow2");
      if (target[0] === "-") await Deno.writeFile(delta, r.stdout);
      else assert.strictEqual(r.stdout.length, 0);
      await qemuCheckClean(delta);
      await qemuCompareIdentical(join(cwd, "new.raw"), delta, [
        "raw",
        "qcow2",
      ]);
      const info = JSON.parse(await qemuImg("info", "--output=json", delta));
      assert.strictEqual(info["backing-filename"], "base.qcow2");
      assert.strictEqual(info["backing-filename-format"], "qcow2");
      assert.ok((await Deno.stat(delta)).size < 1024 * 1024);
      await Deno.remove(delta);
    }
    const missing = await runCli([
      "convert",
      "-O",
      "qcow2",
      "-B",
      "nope.qcow2",
      "-F",
      "qcow2",
      "new.raw",
      "sub-delta.qcow2",
    ], { cwd });
    // qemu-img's words (it opens the backing file through the new image).
    assert.strictEqual(
      missing.stderr,
      "qcow2pipe: Could not open 'sub-delta.qcow2': Could not open backing file: Could not open 'nope.qcow2': No such file or directory\n",
    );
  },
);

qemuTest(
  "cli: info, check and map over HTTP fetch the metadata, not the data",
  async () => {
    await using dir = await tempDir();
    const raw = new Uint8Array(64 << 20);
    for (let i = 0; i < raw.length; i += 4096) raw[i] = 1 + (i >> 12) % 255;
    await Deno.writeFile(join(dir.path, "d.raw"), raw);
    await qemuImg(
      "convert",
      "-f",
      "raw",
      "-O",
      "qcow2",
      join(dir.path, "d.raw"),
      join(dir.path, "d.qcow2"),
    );
    const image = await Deno.readFile(join(dir.path, "d.qcow2"));
    assert.ok(image.length > 64 << 20);
    const fetched: Record<string, [number, number]> = {};
    for (const command of ["info", "check", "map"]) {
      await using server = serveFiles({ "d.qcow2": image });
      const r = await cli([command, server.url("d.qcow2")]);
      assert.strictEqual(r.code, 0, r.stderr);
      fetched[command] = [server.requests.length, server.bytesSent];
    }
    // info: the one request that opens the image (its first bytes: the
    // header, and here the tables too); check and map: the header, L1, L2
    // and refcount tables only. Never the 64 MiB of data.
    assert.strictEqual(fetched.info[0], 1, `info: ${fetched.info}`);
    for (const command of ["info", "check", "map"]) {
      assert.ok(
        fetched[command][1] <= 1 << 20,
        `${command}: ${fetched[command]}`,
      );
    }
  },
);

qemuTest(
  "cli convert: -n --target-is-zero leaves the target's zeros unwritten; -n alone writes them",
  async () => {
    await using fx = await makeFixtures();
    const cwd = fx.dir;
    const allocated = async (name: string) =>
      (await Deno.stat(join(cwd, name))).blocks! * 512;
    for (const name of ["z1.raw", "z2.raw"]) {
      using f = await Deno.open(join(cwd, name), { write: true, create: true });
      await f.truncate(12 << 20);
    }
    assert.strictEqual(await allocated("z1.raw"), 0);
    const plain = await cli([
      "convert",
      "-q",
      "-n",
      "-O",
      "raw",
      "disk.qcow2",
      "z1.raw",
    ], { cwd });
    const zero = await cli([
      "convert",
      "-q",
      "-n",
      "--target-is-zero",
      "-O",
      "raw",
      "disk.qcow2",
      "z2.raw",
    ], { cwd });
    assert.strictEqual(plain.code, 0, plain.stderr);
    assert.strictEqual(zero.code, 0, zero.stderr);
    await qemuCompareIdentical(join(cwd, "z1.raw"), join(cwd, "z2.raw"), [
      "raw",
      "raw",
    ]);
    // -n writes the whole 8 MiB input, zeros included; --target-is-zero
    // writes the data (about 1.7 MiB) only.
    assert.ok(await allocated("z1.raw") >= 8 << 20);
    assert.ok(await allocated("z2.raw") < 4 << 20);
  },
);

diskTest(
  "cli convert: -n writes into a block device as qemu-img writes into a file",
  { tools: ["qemu-img", "losetup"], loop: true },
  async () => {
    await using fx = await makeFixtures();
    const cwd = fx.dir;
    await Deno.copyFile(join(cwd, "target.raw"), join(cwd, "q.raw"));
    await Deno.copyFile(join(cwd, "target.raw"), join(cwd, "o.raw"));
    await qemuImg(
      "convert",
      "-n",
      "-O",
      "raw",
      join(cwd, "top.qcow2"),
      join(cwd, "q.raw"),
    );
    const dev = (await sh("losetup", ["-f", "--show", join(cwd, "o.raw")]))
      .trim();
    try {
      const r = await cli([
        "convert",
        "-q",
        "-n",
        "-O",
        "raw",
        "top.qcow2",
        dev,
      ], { cwd });
      assert.strictEqual(r.code, 0, r.stderr);
    } finally {
      await sh("losetup", ["-d", dev]);
    }
    await qemuCompareIdentical(join(cwd, "q.raw"), join(cwd, "o.raw"), [
      "raw",
      "raw",
    ]);
  },
);
