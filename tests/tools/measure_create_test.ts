// measure, create and snapshot -l against qemu-img 7.2 on the same inputs:
// measure's text and JSON (parsed and compared key by key, and as text),
// create's image byte for byte and its "Formatting" line, snapshot -l's
// table; the commands that are not provided, and one-line errors.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  createImage,
  formatMeasure,
  formatMeasureJson,
  measureImage,
  type MeasureOptions,
} from "../../lib/tools/mod.ts";
import "../../mod.ts";
import {
  assertOneLineError,
  cli,
  makeImage,
  mixedWrites,
  qemuImg,
  qemuIn,
  qemuIo,
} from "./_helpers.ts";

/** Asserts a failure: exit 1 and one line on stderr. */
function assertFails(
  r: { code: number; stdout: string; stderr: string },
  pattern: RegExp,
  options: { stdout?: string; start?: RegExp } = {},
) {
  assert.strictEqual(r.code, 1, r.stderr);
  assertOneLineError(r, pattern, { start: /^qcow2pipe: /, ...options });
}

/** `-O`/`-o` of qemu-img for measure options. */
function qemuFlags(o: MeasureOptions): string[] {
  const opts: string[] = [];
  if (o.clusterSize !== undefined) opts.push(`cluster_size=${o.clusterSize}`);
  if (o.refcountBits !== undefined) {
    opts.push(`refcount_bits=${o.refcountBits}`);
  }
  if (o.extendedL2) opts.push("extended_l2=on");
  if (o.compat === "v2") opts.push("compat=0.10");
  if (o.backing) opts.push("backing_file=x");
  return [
    "-O",
    o.outputFormat ?? "raw",
    ...(opts.length ? ["-o", opts.join(",")] : []),
  ];
}

/** Asserts measure's text and JSON equal qemu-img's for a source. */
async function assertMeasureLikeQemu(
  source: string | undefined,
  o: MeasureOptions,
  size?: string,
) {
  const args = [
    ...qemuFlags(o),
    ...(size === undefined ? [] : ["--size", size]),
    ...(source === undefined ? [] : [source]),
  ];
  const ours = await measureImage(source, o);
  const what = `measure ${args.join(" ")}`;
  assert.strictEqual(
    formatMeasure(ours),
    await qemuImg("measure", ...args),
    what,
  );
  const json = await qemuImg("measure", "--output=json", ...args);
  const theirs = JSON.parse(json);
  const mine = JSON.parse(formatMeasureJson(ours));
  assert.deepStrictEqual(Object.keys(mine).sort(), Object.keys(theirs).sort());
  for (const key of Object.keys(theirs)) {
    assert.strictEqual(mine[key], theirs[key], `${what}: ${key}`);
  }
  assert.strictEqual(formatMeasureJson(ours) + "\n", json, `${what} (JSON)`);
}

/** The qcow2 output settings each source is measured with. */
const OUTPUTS: MeasureOptions[] = [
  { outputFormat: "raw" },
  { outputFormat: "qcow2" },
  { outputFormat: "qcow2", clusterSize: 512 },
  { outputFormat: "qcow2", clusterSize: 4096, refcountBits: 1 },
  { outputFormat: "qcow2", clusterSize: 2 << 20, refcountBits: 64 },
  { outputFormat: "qcow2", refcountBits: 8, extendedL2: true },
  { outputFormat: "qcow2", clusterSize: 16384, extendedL2: true },
  { outputFormat: "qcow2", compat: "v2" },
  { outputFormat: "qcow2", backing: true },
];

qemuTest(
  "measure: raw and qcow2 sources measured as qemu-img measures them",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    // A sparse raw file: data at odd offsets, a size not a multiple of 512.
    const sparse = join(cwd, "sparse.raw");
    const f = await Deno.open(sparse, { write: true, create: true });
    for (const at of [0, 70000, 5 << 20, (9 << 20) + 4096]) {
      await f.seek(at, Deno.SeekMode.Start);
      await f.write(new Uint8Array(3000).fill(7));
    }
    await f.truncate((12 << 20) + 1000);
    f.close();
    const full = join(cwd, "full.raw");
    await Deno.writeFile(full, new Uint8Array(3 << 20).fill(1));
    const mixed = join(cwd, "mixed.qcow2");
    await makeImage(
      mixed,
      "8M",
      ["cluster_size=4096"],
      mixedWrites(8 << 20, 4096, { compress: true }),
    );
    const snap = join(cwd, "snap.qcow2");
    await makeImage(snap, "4M", [], ["write -q -P 1 0 100k"]);
    await qemuImg("snapshot", "-c", "one", snap);
    await qemuIo(snap, ["write -q -P 2 1M 64k"]);
    const v2 = join(cwd, "v2.qcow2");
    await makeImage(v2, "4M", ["compat=0.10"], ["write -q -P 1 3M 1k"]);
    const base = join(cwd, "base.qcow2");
    await makeImage(base, "6M", [], ["write -q -P 3 0 2M"]);
    const top = join(cwd, "top.qcow2");
    await makeImage(
      top,
      "6M",
      ["backing_file=base.qcow2", "backing_fmt=qcow2"],
      [
        "write -q -P 4 1M 2M",
        "write -q -z 4M 64k",
      ],
    );
    const bitmaps = join(cwd, "bitmaps.qcow2");
    await makeImage(bitmaps, "2G", [], ["write -q -P 5 1G 1M"]);
    await qemuImg("bitmap", "--add", "-g", "512", bitmaps, "b1");
    await qemuImg("bitmap", "--add", "-g", "2M", bitmaps, "second bitmap");
    for (const source of [sparse, full, mixed, snap, v2, top, bitmaps]) {
      for (const o of OUTPUTS) await assertMeasureLikeQemu(source, o);
    }
  },
);

qemuTest("measure: --size measured as qemu-img measures it", async () => {
  const sizes: [string, number][] = [
    ["0", 0],
    ["1000", 1000],
    ["1.5k", 1536],
    ["0x1000", 4096],
    ["1G", 2 ** 30],
    ["2T", 2 * 2 ** 40],
  ];
  for (const [text, size] of sizes) {
    for (const o of OUTPUTS) {
      if (o.backing || (o.clusterSize === 512 && size > 2 ** 40)) continue;
      await assertMeasureLikeQemu(undefined, { ...o, size }, text);
    }
  }
});

qemuTest(
  "measure: the CLI prints qemu-img's text and refuses in one line",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await makeImage(join(cwd, "a.qcow2"), "1G", [], ["write -q -P 1 0 1M"]);
    for (
      const args of [
        ["-O", "qcow2", "a.qcow2"],
        ["--output=json", "-O", "qcow2", "-o", "cluster_size=4k", "a.qcow2"],
        ["--size", "1G", "-O", "qcow2", "-o", "refcount_bits=1"],
        ["--size", "1000"],
      ]
    ) {
      const ours = await cli(["measure", ...args], { cwd });
      const theirs = await qemuIn(cwd, "measure", ...args);
      assert.strictEqual(ours.code, 0, ours.stderr);
      assert.strictEqual(ours.stdout, theirs.stdout, args.join(" "));
    }
    const errors: [string[], RegExp][] = [
      [[], /Either --size N or one filename must be specified/],
      [["--size", "1G", "a.qcow2"], /cannot be used together with a filename/],
      [["a.qcow2", "b"], /At most one filename/],
      [
        ["-O", "qcow2", "--size", "100T", "-o", "cluster_size=512"],
        /too large/,
      ],
      [
        ["-O", "qcow2", "-o", "cluster_size=1000", "--size", "1G"],
        /power of two/,
      ],
      [
        ["-O", "qcow2", "-o", "refcount_bits=3", "--size", "1G"],
        /Refcount width/,
      ],
      [
        ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=4k", "--size", "1G"],
        /at least 16384/,
      ],
      [["-O", "vmdk", "--size", "1G"], /does not support size measurement/],
      [["-O", "qcow2", "-o", "foo=1", "--size", "1G"], /foo/],
      [["--size", "1x"], /--size/],
      [["--size", "99E"], /--size/],
      [["nonexistent.qcow2"], /nonexistent/],
    ];
    for (const [args, pattern] of errors) {
      const theirs = await qemuIn(cwd, "measure", ...args);
      assert.strictEqual(theirs.code, 1, `qemu-img measure ${args.join(" ")}`);
      assertFails(await cli(["measure", ...args], { cwd }), pattern);
    }
  },
);

Deno.test("measure -c and --sparsify: the exact size convert writes, only when asked", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  const disk = new Uint8Array(3 << 20);
  for (let i = 0; i < disk.length; i += 4096) disk[i] = i % 251;
  disk.fill(0, 1 << 20, 2 << 20);
  await Deno.writeFile(join(cwd, "disk.raw"), disk);
  const cases: string[][] = [
    ["-c"],
    ["--sparsify", "-o", "cluster_size=4k,refcount_bits=8"],
    ["-c", "-o", "compression_type=zstd"],
  ];
  const plain = await cli(
    ["measure", "--output=json", "-O", "qcow2", "disk.raw"],
    { cwd },
  );
  assert.strictEqual(JSON.parse(plain.stdout).converted, undefined);
  for (const flags of cases) {
    const m = await cli(
      ["measure", "--output=json", "-O", "qcow2", ...flags, "disk.raw"],
      { cwd },
    );
    assert.strictEqual(m.code, 0, m.stderr);
    const c = await cli(
      ["convert", "-q", "-O", "qcow2", ...flags, "disk.raw", "out.qcow2"],
      { cwd },
    );
    assert.strictEqual(c.code, 0, c.stderr);
    const size = (await Deno.stat(join(cwd, "out.qcow2"))).size;
    assert.strictEqual(JSON.parse(m.stdout).converted, size, flags.join(" "));
    const text = await cli(["measure", "-O", "qcow2", ...flags, "disk.raw"], {
      cwd,
    });
    assert.match(text.stdout, new RegExp(`^converted size: ${size}$`, "m"));
  }
  assertFails(
    await cli(["measure", "-c", "--size", "1G", "-O", "qcow2"], { cwd }),
    /give IMG and -O qcow2/,
  );
});

qemuTest(
  "create: the library's image equals qemu-img create's, byte for byte",
  async () => {
    await using dir = await tempDir();
    const cases: [string, number, string[]][] = [
      ["0", 0, []],
      ["1000", 1000, []],
      ["1G", 2 ** 30, []],
      ["1G", 2 ** 30, ["cluster_size=512"]],
      ["4G", 4 * 2 ** 30, ["cluster_size=512", "refcount_bits=64"]],
      ["16G", 16 * 2 ** 30, ["cluster_size=1024", "refcount_bits=64"]],
      ["1T", 2 ** 40, ["cluster_size=4096", "refcount_bits=1"]],
      ["1M", 2 ** 20, ["cluster_size=2048", "refcount_bits=2"]],
      ["1P", 2 ** 50, ["cluster_size=2M", "refcount_bits=32"]],
      ["3G", 3 * 2 ** 30, ["compression_type=zstd", "refcount_bits=8"]],
      // The refcount table is full: QEMU moves it past everything.
      ["64G", 64 * 2 ** 30, ["cluster_size=512"]],
      ["32G", 32 * 2 ** 30, ["cluster_size=512", "refcount_bits=32"]],
    ];
    for (const [text, size, opts] of cases) {
      const path = join(dir.path, "q.qcow2");
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        ...(opts.length ? ["-o", opts.join(",")] : []),
        path,
        text,
      );
      const get = (k: string) =>
        opts.find((o) => o.startsWith(k + "="))?.split("=")[1];
      const cs = get("cluster_size");
      const image = await createImage(path, {
        format: "qcow2",
        size,
        clusterSize: cs === undefined
          ? undefined
          : cs === "2M"
          ? 2 << 20
          : Number(cs),
        refcountBits: get("refcount_bits")
          ? Number(get("refcount_bits"))
          : undefined,
        compression: get("compression_type") as "zstd" | undefined,
      });
      assert.strictEqual(image.length, image.head.length);
      assert.deepStrictEqual(
        image.head,
        await Deno.readFile(path),
        `create ${opts.join(",")} ${text}`,
      );
    }
  },
);

qemuTest(
  "create: the CLI makes qemu-img's file and prints its line",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await makeImage(join(cwd, "base.qcow2"), "3M", [], ["write -q -P 9 0 1M"]);
    await Deno.writeFile(join(cwd, "base.raw"), new Uint8Array(5000));
    await Deno.mkdir(join(cwd, "vm"));
    // The arguments, IMG standing for the new image's name.
    const cases: string[][] = [
      ["-f", "qcow2", "IMG", "1G"],
      ["-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=8", "IMG", "1.5k"],
      [
        "-f",
        "qcow2",
        "-o",
        "compat=1.1,lazy_refcounts=off,extended_l2=off",
        "IMG",
        "0x100000",
      ],
      ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "IMG"],
      ["-f", "qcow2", "-b", "../base.raw", "-F", "raw", "vm/IMG"],
      [
        "-f",
        "qcow2",
        "-o",
        "backing_file=base.qcow2,backing_fmt=qcow2",
        "IMG",
        "8M",
      ],
      ["-f", "qcow2", "-u", "-b", "missing.qcow2", "-F", "qcow2", "IMG", "1M"],
      ["-f", "qcow2", "-o", "size=5M", "IMG"],
      ["-f", "raw", "IMG", "1000"],
      ["-q", "IMG", "1M"],
    ];
    for (const c of cases) {
      const named = (who: string) => c.map((a) => a.replace("IMG", who));
      const file = c.find((a) => a.includes("IMG"))!;
      const q = join(cwd, file.replace("IMG", "q.img"));
      const o = join(cwd, file.replace("IMG", "o.img"));
      const theirs = await qemuIn(cwd, "create", ...named("q.img"));
      assert.strictEqual(theirs.code, 0, theirs.stderr);
      const ours = await cli(["create", ...named("o.img")], { cwd });
      assert.strictEqual(ours.code, 0, ours.stderr);
      assert.strictEqual(
        ours.stdout,
        theirs.stdout.replaceAll("q.img", "o.img"),
        c.join(" "),
      );
      assert.deepStrictEqual(
        await Deno.readFile(o),
        await Deno.readFile(q),
        c.join(" "),
      );
      if (!c.includes("-u") && c.includes("qcow2")) {
        const check = await qemuIn(cwd, "check", o);
        assert.strictEqual(check.code, 0, check.stdout + check.stderr);
        const info = (p: string) =>
          qemuIn(cwd, "info", "--output=json", p).then((r) =>
            JSON.parse(r.stdout)
          );
        const [a, b] = [await info(o), await info(q)];
        delete a.filename, delete b.filename;
        assert.deepStrictEqual(a, b);
      }
      await Deno.remove(q);
      await Deno.remove(o);
    }
  },
);

qemuTest(
  "create: an existing FILE is replaced, the backing file never",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    const old = join(cwd, "disk.qcow2");
    await Deno.writeFile(old, new Uint8Array(12345).fill(5));
    const r = await cli(["create", "-q", "-f", "qcow2", "disk.qcow2", "1M"], {
      cwd,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.strictEqual(r.stdout, "");
    await qemuImg("create", "-q", "-f", "qcow2", join(cwd, "ref.qcow2"), "1M");
    assert.deepStrictEqual(
      await Deno.readFile(old),
      await Deno.readFile(join(cwd, "ref.qcow2")),
    );
    const before = await Deno.readFile(old);
    assertFails(
      await cli([
        "create",
        "-f",
        "qcow2",
        "-b",
        "disk.qcow2",
        "-F",
        "qcow2",
        "disk.qcow2",
      ], { cwd }),
      /same filename as the backing file/,
    );
    await Deno.symlink("disk.qcow2", join(cwd, "link.qcow2"));
    assertFails(
      await cli([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "disk.qcow2",
        "-F",
        "qcow2",
        "link.qcow2",
      ], { cwd }),
      /backing file|input/,
    );
    assert.deepStrictEqual(await Deno.readFile(old), before);
    const left = [...Deno.readDirSync(cwd)].map((e) => e.name).sort();
    assert.deepStrictEqual(left, ["disk.qcow2", "link.qcow2", "ref.qcow2"]);
  },
);

qemuTest("create: what is not written is refused in one line", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  await makeImage(join(cwd, "base.qcow2"), "1M");
  const errors: [string[], RegExp][] = [
    [["-f", "qcow2", "t.img"], /needs a size/],
    [["-f", "qcow2", "t.img", "100P"], /SIZE/],
    [["-f", "qcow2", "t.img", "8E"], /SIZE/],
    [
      ["-f", "qcow2", "-o", "cluster_size=1000", "t.img", "1M"],
      /cluster size 1000/,
    ],
    [
      ["-f", "qcow2", "-o", "refcount_bits=3", "t.img", "1M"],
      /refcount width 3/,
    ],
    [
      ["-f", "qcow2", "-o", "extended_l2=on", "t.img", "1M"],
      /extended_l2=on is not supported/,
    ],
    [
      ["-f", "qcow2", "-o", "compat=0.10", "t.img", "1M"],
      /compat=0.10 is not supported/,
    ],
    [
      ["-f", "qcow2", "-o", "preallocation=full", "t.img", "1M"],
      /preallocation=full is not supported/,
    ],
    [
      ["-f", "qcow2", "-o", "encryption=on", "t.img", "1M"],
      /encryption is not supported/,
    ],
    [["-f", "vmdk", "t.img", "1M"], /vmdk/],
    [["-f", "qcow2", "-b", "base.qcow2", "t.img"], /without backing format/],
    [
      ["-f", "qcow2", "-b", "missing.qcow2", "-F", "qcow2", "t.img", "1M"],
      /missing\.qcow2/,
    ],
    [
      ["-f", "raw", "-b", "base.qcow2", "-F", "qcow2", "t.img"],
      /Backing file not supported for file format 'raw'/,
    ],
    [["-f", "qcow2", "t.img", "1k", "2k"], /Unexpected argument: 2k/],
  ];
  for (const [args, pattern] of errors) {
    assertFails(await cli(["create", ...args], { cwd }), pattern);
  }
  // Too large for the L1 table: qemu-img prints its line, then fails.
  const big = ["-f", "qcow2", "-o", "cluster_size=512", "t.img", "64T"];
  const theirs = await qemuIn(cwd, "create", ...big);
  assert.strictEqual(theirs.code, 1);
  assertFails(
    await cli(["create", ...big], { cwd }),
    /The image size is too large for file format 'qcow2'/,
    { stdout: theirs.stdout },
  );
  assert.deepStrictEqual(
    [...Deno.readDirSync(cwd)].map((e) => e.name),
    ["base.qcow2"],
  );
});

qemuTest(
  "snapshot -l: the table qemu-img prints; nothing without snapshots",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await makeImage(join(cwd, "s.qcow2"), "4M", [], ["write -q -P 1 0 64k"]);
    await qemuImg("snapshot", "-c", "first", join(cwd, "s.qcow2"));
    await qemuImg(
      "snapshot",
      "-c",
      "a rather long snapshot name",
      join(cwd, "s.qcow2"),
    );
    await makeImage(join(cwd, "none.qcow2"), "1M");
    await Deno.writeFile(join(cwd, "r.raw"), new Uint8Array(1024));
    for (const file of ["s.qcow2", "none.qcow2", "r.raw"]) {
      const theirs = await qemuIn(cwd, "snapshot", "-l", file);
      const ours = await cli(["snapshot", "-l", file], { cwd });
      assert.strictEqual(ours.code, theirs.code, ours.stderr);
      assert.strictEqual(ours.stdout, theirs.stdout, file);
    }
    assert.match(
      (await cli(["snapshot", "-l", "s.qcow2"], { cwd })).stdout,
      /^Snapshot list:\nID +TAG/,
    );
    assertFails(
      await cli(["snapshot", "-c", "x", "s.qcow2"], { cwd }),
      /-c is not supported/,
    );
  },
);

Deno.test("rebase, resize, commit, amend, dd and bitmap: one line, exit 1", async () => {
  for (
    const command of ["rebase", "resize", "commit", "amend", "dd", "bitmap"]
  ) {
    const r = await cli([command, "x.qcow2"]);
    assertFails(r, new RegExp(`^qcow2pipe: ${command} is not provided`));
  }
});
