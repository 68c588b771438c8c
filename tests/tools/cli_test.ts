// The info, check, map and compare commands of the CLI against qemu-img's
// output (run from the image's directory with relative names, as scripts
// do), their exit statuses, --help, and one-line errors.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertOneLineError,
  be64,
  cli,
  hostClusterOf,
  makeImage,
  mixedWrites,
  patch,
  qemuImg,
  qemuIn,
  setRefcount,
} from "./_helpers.ts";

qemuTest("cli: info, map and check print what qemu-img prints", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  await makeImage(
    join(cwd, "base.qcow2"),
    "4M",
    ["cluster_size=4096"],
    mixedWrites(4 << 20, 4096, { compress: true }),
  );
  await Deno.mkdir(join(cwd, "vm"));
  await makeImage(join(cwd, "vm", "top.qcow2"), "6M", [
    "backing_file=../base.qcow2",
    "backing_fmt=qcow2",
  ], [
    "write -q -P 9 1M 100k",
  ]);
  await qemuImg("snapshot", "-c", "s1", join(cwd, "vm", "top.qcow2"));
  const img = "vm/top.qcow2";
  const runs: [string[], string[]][] = [
    [["info", img], ["info", img]],
    [["info", "--json", img], ["info", "--output=json", img]],
    [["info", "--backing-chain", img], ["info", "--backing-chain", img]],
    [["info", "--json", "--backing-chain", img], [
      "info",
      "--output=json",
      "--backing-chain",
      img,
    ]],
    [["map", "--json", img], ["map", "--output=json", img]],
    [["map", "--json", "--start-offset", "1M", "--max-length", "2M", img], [
      "map",
      "--output=json",
      "--start-offset",
      "1M",
      "--max-length",
      "2M",
      img,
    ]],
    [["check", img], ["check", img]],
    [["check", "--json", img], ["check", "--output=json", img]],
  ];
  // The chain leaves vm/ (../base.qcow2): the format is given on both
  // sides, so that the backing file is followed (tests/reader/untrusted_test.ts).
  const given = (
    [command, ...rest]: string[],
  ) => [command, "-f", "qcow2", ...rest];
  const results = await Promise.all(
    runs.map(async ([ours, theirs]) =>
      [
        await cli(given(ours), { cwd }),
        await qemuIn(cwd, ...given(theirs)),
      ] as const
    ),
  );
  results.forEach(([ours, theirs], i) => {
    const what = runs[i][0].join(" ");
    assert.strictEqual(ours.stdout, theirs.stdout, what);
    assert.strictEqual(ours.code, theirs.code, what);
    assert.strictEqual(ours.stderr, "", what);
  });
});

/** qemu-img's and our stderr agree but for the program's name. */
function sameStderr(ours: string, theirs: string): boolean {
  return ours.replaceAll(/^qcow2pipe: /gm, "") ===
    theirs.replaceAll(/^qemu-img: /gm, "");
}

qemuTest(
  "cli: map prints qemu-img's human map: data ranges only, compressed images refused, nothing past the end",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await makeImage(
      join(cwd, "base.qcow2"),
      "4M",
      ["cluster_size=4096"],
      mixedWrites(4 << 20, 4096),
    );
    await Deno.mkdir(join(cwd, "vm"));
    await makeImage(join(cwd, "vm", "top.qcow2"), "6M", [
      "backing_file=../base.qcow2",
      "backing_fmt=qcow2",
    ], ["write -q -P 9 1M 100k", "write -q -z 2M 64k"]);
    await makeImage(join(cwd, "packed.qcow2"), "2M", [], [
      "write -q -P 1 0 64k",
      "write -q -c -P 2 1M 64k",
      "write -q -P 3 1536k 64k",
    ]);
    {
      // A raw file with holes: data is found with SEEK_DATA, as QEMU does.
      using f = await Deno.open(join(cwd, "holes.raw"), {
        write: true,
        create: true,
      });
      await f.truncate(8 << 20);
      await f.seek(3 << 20, Deno.SeekMode.Start);
      await f.write(new Uint8Array(8192).fill(1));
    }
    const runs = [
      ["map", "vm/top.qcow2"],
      ["map", "--start-offset", "1M", "--max-length", "3M", "vm/top.qcow2"],
      ["map", "--start-offset", "64M", "vm/top.qcow2"],
      ["map", "holes.raw"],
      ["map", "packed.qcow2"],
      ["map", "--max-length", "1M", "packed.qcow2"],
    ];
    for (const plain of runs) {
      // The format is given on both sides: vm/top.qcow2's backing file is
      // outside vm/, which a probed image may not reach.
      const image = plain.at(-1)!;
      const args = [
        "map",
        "-f",
        image.endsWith(".raw") ? "raw" : "qcow2",
        ...plain.slice(1),
      ];
      const [ours, theirs] = await Promise.all([
        cli(args, { cwd }),
        qemuIn(cwd, ...args),
      ]);
      const what = args.join(" ");
      assert.strictEqual(ours.stdout, theirs.stdout, what);
      assert.strictEqual(ours.code, theirs.code, what);
      assert.ok(
        sameStderr(ours.stderr, theirs.stderr),
        `${what}: ${ours.stderr}`,
      );
    }
    // What was compared: data lines, the refusal, a bare header.
    const top = await cli(["map", "-f", "qcow2", "vm/top.qcow2"], { cwd });
    assert.match(
      top.stdout,
      /^Offset +Length +Mapped to +File\n((0|0x[\da-f]+) +0x[\da-f]+ +(0|0x[\da-f]+) +vm\/\S+\n){3,}$/,
    );
    const packed = await cli(["map", "packed.qcow2"], { cwd });
    assert.strictEqual(packed.code, 1);
    assert.strictEqual(
      packed.stderr,
      "qcow2pipe: File contains external, encrypted or compressed clusters.\n",
    );
    const past = await cli([
      "map",
      "-f",
      "qcow2",
      "--start-offset",
      "64M",
      "vm/top.qcow2",
    ], {
      cwd,
    });
    assert.strictEqual(
      past.stdout,
      "Offset          Length          Mapped to       File\n",
    );
  },
);

qemuTest(
  "cli: check exit statuses 0, 2, 3 and 63 and messages match qemu-img",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    const writes = ["write -q -P 1 0 128k", "write -q -c -P 2 1M 64k"];
    await makeImage(join(cwd, "ok.qcow2"), "2M", [], writes);
    const broken = await makeImage(join(cwd, "broken.qcow2"), "2M", [], writes);
    await setRefcount(broken, (await hostClusterOf(broken, 0)) / 65536, 0);
    const leaky = await makeImage(join(cwd, "leaky.qcow2"), "2M", [], writes);
    const clusters = Math.ceil((await Deno.stat(leaky)).size / 65536);
    {
      using f = await Deno.open(leaky, { write: true });
      await f.truncate((clusters + 1) * 65536);
    }
    await setRefcount(leaky, clusters, 1);
    await Deno.writeFile(join(cwd, "disk.raw"), new Uint8Array(4096));
    for (
      const [name, code] of [["ok.qcow2", 0], ["broken.qcow2", 2], [
        "leaky.qcow2",
        3,
      ]] as const
    ) {
      const [ours, theirs] = await Promise.all([
        cli(["check", name], { cwd }),
        qemuIn(cwd, "check", name),
      ]);
      assert.strictEqual(ours.code, code, name);
      assert.strictEqual(theirs.code, code, name);
      assert.strictEqual(ours.stdout, theirs.stdout, name);
      assert.strictEqual(ours.stderr, theirs.stderr, name);
      // -q drops the summary, not the problems.
      const [quiet, qemuQuiet] = await Promise.all([
        cli(["check", "-q", name], { cwd }),
        qemuIn(cwd, "check", "-q", name),
      ]);
      assert.deepStrictEqual(
        [quiet.code, quiet.stdout, quiet.stderr],
        [code, "", qemuQuiet.stderr],
        name,
      );
      assert.strictEqual(quiet.stderr === "", code === 0, name);
    }
    for (const args of [["check", "disk.raw"], ["check", "-q", "disk.raw"]]) {
      const [raw, theirs] = await Promise.all([
        cli(args, { cwd }),
        qemuIn(cwd, ...args),
      ]);
      assert.strictEqual(raw.code, 63);
      assert.strictEqual(theirs.code, 63);
      assert.strictEqual(raw.stdout, "");
      assert.strictEqual(
        raw.stderr,
        "qcow2pipe: This image format does not support checks\n",
      );
      assert.ok(sameStderr(raw.stderr, theirs.stderr), theirs.stderr);
    }
  },
);

qemuTest(
  "cli: compare prints qemu-img's lines with its exit statuses",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    const data = new Uint8Array(1 << 20).fill(3);
    await Deno.writeFile(join(cwd, "a.raw"), data);
    data[300000] = 4;
    await Deno.writeFile(join(cwd, "b.raw"), data);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      join(cwd, "a.raw"),
      join(cwd, "a.qcow2"),
    );
    await makeImage(join(cwd, "big.qcow2"), "2M", [
      `backing_file=${join(cwd, "a.raw")}`,
      "backing_fmt=raw",
    ]);
    for (
      const [x, y, code] of [["a.raw", "a.qcow2", 0], ["a.qcow2", "b.raw", 1], [
        "a.raw",
        "big.qcow2",
        0,
      ]] as const
    ) {
      const [ours, theirs] = await Promise.all([
        cli(["compare", x, y], { cwd }),
        qemuIn(cwd, "compare", x, y),
      ]);
      assert.strictEqual(ours.code, code, `${x} ${y}`);
      assert.strictEqual(theirs.code, code, `${x} ${y}`);
      assert.strictEqual(ours.stdout, theirs.stdout, `${x} ${y}`);
    }
    const quiet = await cli(["compare", "-q", "a.raw", "b.raw"], { cwd });
    assert.deepStrictEqual([quiet.code, quiet.stdout], [1, ""]);
    const missing = await cli(["compare", "a.raw", "nope.qcow2"], { cwd });
    assert.strictEqual(missing.code, 2);
    assert.strictEqual(
      (await qemuIn(cwd, "compare", "a.raw", "nope.qcow2")).code,
      2,
    );
    assertOneLineError(missing, /Cannot open image nope\.qcow2: no such file/);
  },
);

Deno.test("cli: every inspection command has --help and one-line usage errors", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  const unknown = join(cwd, "unknown.qcow2");
  const results = await Promise.all([
    ...["info", "check", "map", "compare"].map((c) => cli([c, "--help"])),
    cli(["info"]),
    cli(["map", "--bogus", "x"]),
    cli(["compare", "only-one"]),
    cli(["check", "a", "b"]),
    cli(["map", "--start-offset", "lots", "x"]),
    cli(["info", "missing.qcow2"], { cwd }),
    cli(["--help"]),
    (async () => {
      await Deno.writeFile(unknown, new Uint8Array(0));
      return cli(["info", unknown]);
    })(),
  ]);
  for (const [i, c] of ["info", "check", "map", "compare"].entries()) {
    assert.strictEqual(results[i].code, 0);
    assert.ok(
      results[i].stdout.startsWith(`Usage: qcow2pipe ${c} `),
      results[i].stdout,
    );
  }
  assertOneLineError(results[4], /Cannot describe image: expected IMG, got 0/);
  assertOneLineError(
    results[5],
    /Cannot parse map arguments: Unknown option '--bogus'/,
  );
  assert.strictEqual(results[6].code, 2);
  assertOneLineError(
    results[6],
    /Cannot compare images: expected A and B, got 1/,
  );
  assertOneLineError(results[7], /Cannot check image: expected IMG, got 2/);
  assertOneLineError(results[8], /Cannot parse --start-offset: "lots"/);
  assertOneLineError(
    results[9],
    /Cannot open image missing\.qcow2: no such file/,
  );
  for (const c of ["info", "check", "map", "compare"]) {
    assert.match(results[10].stdout, new RegExp(`^  ${c} `, "m"));
  }
  // An empty file is a raw image of size 0.
  assert.strictEqual(results[11].code, 0);
  assert.match(results[11].stdout, /^file format: raw$/m);
});

qemuTest(
  "cli: info reports an unknown incompatible feature as one line, like qemu-img refuses it",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(join(dir.path, "u.qcow2"), "1M");
    await patch(img, 72, be64(1n << 20n));
    const r = await cli(["info", img]);
    assert.strictEqual(r.code, 1);
    // qemu-img's words (iotest 036 expects them): the feature bits in hex.
    assertOneLineError(
      r,
      /^qcow2pipe: Could not open '.*u\.qcow2': Unsupported qcow2 feature\(s\): Unknown incompatible feature: 100000$/,
      { start: /^qcow2pipe: Could not open / },
    );
  },
);
