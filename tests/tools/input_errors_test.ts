// What a new user trips over at the edges of the CLI, each answered by one
// line: an error about an image names it (compare reads two), `-` where
// standard input is not read, an empty standard input, the option that
// gives the second image's format, a sparse raw file read whole without
// FFI, a DST whose directory Deno may not write, and speeds that mean
// something.

import assert from "node:assert";
import { join } from "node:path";
import { createQcow2, qemuTest, tempDir } from "../_qemu.ts";
import {
  assertOneLineError,
  be64,
  cli,
  l2EntryAt,
  patch,
  pattern,
  qemuImg,
  qemuIo,
  u64At,
} from "./_helpers.ts";
import { formatRate } from "../../lib/cli/_util.ts";

const MiB = 1024 * 1024;

/**
 * good.qcow2 (1 MiB of data), copies of it broken in three ways, a
 * compressed image with a broken cluster, and top.qcow2 over l2.qcow2.
 */
async function images(dir: string): Promise<void> {
  const good = await createQcow2(dir, "good.qcow2", "4M");
  await qemuIo(good, ["write -P 7 0 1M"]);
  const copy = async (name: string) => {
    await Deno.copyFile(good, join(dir, name));
    return join(dir, name);
  };
  // The L1 table far past the end of the file: refused when opened to read.
  await patch(await copy("l1.qcow2"), 40, be64(0x25790000));
  // A snapshot table past the end of the file.
  const snap = await copy("snap.qcow2");
  await patch(snap, 60, new Uint8Array([0, 0, 0, 1]));
  await patch(snap, 64, be64(0x7000000));
  // The first L2 entry leads past the end of the file: found when read.
  const l2 = await copy("l2.qcow2");
  await patch(l2, await l2EntryAt(l2, 0), be64((1n << 63n) | 0x40000000n));
  await createQcow2(dir, "top.qcow2", "4M", "-b", "l2.qcow2", "-F", "qcow2");
  // A compressed cluster whose deflate stream is broken.
  await Deno.writeFile(join(dir, "text.raw"), pattern(MiB, 3));
  const z = join(dir, "z.qcow2");
  await qemuImg("convert", "-c", "-O", "qcow2", join(dir, "text.raw"), z);
  await Deno.remove(join(dir, "text.raw"));
  // 64 KiB clusters: the host offset is the entry's low 54 bits.
  const entry = await u64At(z, await l2EntryAt(z, 0));
  await patch(
    z,
    Number(entry & ((1n << 54n) - 1n)),
    new Uint8Array(64).fill(0xff),
  );
}

qemuTest(
  "cli: an error about an image names it, whichever of compare's two it is",
  async () => {
    await using dir = await tempDir();
    await images(dir.path);
    const cwd = dir.path;
    for (const bad of ["l1.qcow2", "snap.qcow2", "l2.qcow2", "z.qcow2"]) {
      const runs = [
        ["compare", "good.qcow2", bad],
        ["compare", bad, "good.qcow2"],
        ["convert", bad, "out.raw"],
        ["convert", "-O", "qcow2", bad, "out.qcow2"],
      ];
      for (const args of runs) {
        const r = await cli(args, { cwd });
        assert.strictEqual(r.code, args[0] === "compare" ? 2 : 1, r.stderr);
        assertOneLineError(r, new RegExp(` ${bad.replace(".", "\\.")}[:( ]`));
        assert.doesNotMatch(r.stderr, /good\.qcow2/);
      }
    }
    // The same words from each: opening, and reading.
    assertOneLineError(
      await cli(["compare", "good.qcow2", "l1.qcow2"], { cwd }),
      /^qcow2pipe: Cannot open image l1\.qcow2: L1 table at 0x25790000 with \d+ entries ends past the end of the file/,
    );
    assertOneLineError(
      await cli(["compare", "good.qcow2", "l2.qcow2"], { cwd }),
      /^qcow2pipe: Cannot read image l2\.qcow2: guest cluster 0x0 maps to host offset 0x40000000, past the end of the file/,
    );
    assertOneLineError(
      await cli(["convert", "snap.qcow2", "out.raw"], { cwd }),
      /^qcow2pipe: Cannot read snapshot 0 header of snap\.qcow2: /,
    );
    assertOneLineError(
      await cli(["convert", "z.qcow2", "out.raw"], { cwd }),
      /^qcow2pipe: Cannot read guest offset 0x0 of z\.qcow2: zlib cluster at host offset /,
    );
    // In a chain, the backing file at fault is named, once, not the top.
    assertOneLineError(
      await cli(["compare", "good.qcow2", "top.qcow2"], { cwd }),
      /^qcow2pipe: Cannot read image \S*l2\.qcow2: guest cluster 0x0 maps to host offset 0x40000000, past the end of the file \(\d+ bytes\)$/,
    );
    // No output was left behind.
    const left = [...Deno.readDirSync(cwd)].map((e) => e.name).sort();
    assert.deepStrictEqual(left, [
      "good.qcow2",
      "l1.qcow2",
      "l2.qcow2",
      "snap.qcow2",
      "top.qcow2",
      "z.qcow2",
    ]);
  },
);

qemuTest(
  "cli compare: a refused backing file of the second image names -F, of the first -f",
  async () => {
    await using dir = await tempDir();
    const cwd = dir.path;
    await Deno.mkdir(join(cwd, "vm"));
    await Deno.mkdir(join(cwd, "other"));
    await qemuImg(
      "create",
      "-q",
      "-f",
      "raw",
      join(cwd, "other/base.raw"),
      "1M",
    );
    await createQcow2(
      join(cwd, "vm"),
      "top.qcow2",
      "1M",
      ...["-b", join(cwd, "other/base.raw"), "-F", "raw"],
    );
    await qemuImg("create", "-q", "-f", "raw", join(cwd, "plain.raw"), "1M");
    const second = await cli(["compare", "plain.raw", "vm/top.qcow2"], { cwd });
    assert.strictEqual(second.code, 2);
    assertOneLineError(
      second,
      /outside the directory of vm\/top\.qcow2; its format was probed: pass -F qcow2 to follow it$/,
    );
    const first = await cli(["compare", "vm/top.qcow2", "plain.raw"], { cwd });
    assertOneLineError(first, /probed: pass -f qcow2 to follow it$/);
    const given = await cli(
      ["compare", "-F", "qcow2", "plain.raw", "vm/top.qcow2"],
      { cwd },
    );
    assert.strictEqual(given.code, 0, given.stderr);
  },
);

Deno.test("cli: '-' is refused by the commands that do not read standard input, naming the command", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  await Deno.writeFile(join(cwd, "a.raw"), new Uint8Array(4096));
  const runs: [string[], string][] = [
    [["info", "-"], "info"],
    [["check", "-"], "check"],
    [["check", "-r", "all", "-"], "check"],
    [["map", "-"], "map"],
    [["measure", "-O", "qcow2", "-"], "measure"],
    [["snapshot", "-l", "-"], "snapshot"],
    [["compare", "a.raw", "-"], "compare"],
  ];
  for (const [args, command] of runs) {
    const r = await cli(args, { cwd });
    assert.strictEqual(r.code, command === "compare" ? 2 : 1, r.stderr);
    assertOneLineError(
      r,
      new RegExp(
        `^qcow2pipe: Cannot open image -: ${command} does not read standard input \\(only convert does\\); give a file or an http\\(s\\) URL$`,
      ),
    );
  }
});

Deno.test("cli convert: an empty standard input is refused, and no DST is written", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  // cli() gives the run an empty standard input (/dev/null).
  for (
    const args of [
      ["-", "out.qcow2"],
      ["-f", "raw", "-O", "qcow2", "-", "out.qcow2"],
      ["-O", "raw", "-", "-"],
    ]
  ) {
    const r = await cli(["convert", ...args], { cwd });
    assert.strictEqual(r.code, 1);
    assertOneLineError(
      r,
      /^qcow2pipe: Cannot convert standard input: it is empty \(did the command before the pipe fail\?\)$/,
    );
  }
  assert.deepStrictEqual([...Deno.readDirSync(cwd)], []);
});

Deno.test({
  name:
    "cli convert: without --allow-ffi, a sparse raw SRC is said once to be read whole, and why",
  ignore: Deno.build.os !== "linux" && Deno.build.os !== "darwin",
  async fn() {
    await using dir = await tempDir();
    const cwd = dir.path;
    {
      using f = await Deno.open(join(cwd, "holes.raw"), {
        write: true,
        create: true,
      });
      await f.truncate(8 * MiB);
      await f.write(new Uint8Array(4096).fill(7));
    }
    const { blocks } = await Deno.stat(join(cwd, "holes.raw"));
    if (blocks === null || blocks * 512 >= 8 * MiB) {
      throw new Error("this file system does not keep holes");
    }
    const flags = ["-R", "-W"];
    for (const format of ["qcow2", "raw"]) {
      const out = `out.${format}`;
      const r = await cli(
        ["convert", "-f", "raw", "-O", format, "holes.raw", out],
        { cwd, flags },
      );
      assert.strictEqual(r.code, 0, r.stderr);
      assertOneLineError(
        r,
        /^qcow2pipe: holes\.raw is sparse, but its holes cannot be skipped without --allow-ffi \(they are found with lseek through FFI\): reading all 8\.00 MiB of it$/,
        { start: /^qcow2pipe: / },
      );
      // -q silences it; with FFI there is nothing to say.
      const quiet = await cli(
        ["convert", "-q", "-f", "raw", "-O", format, "holes.raw", out],
        { cwd, flags },
      );
      assert.strictEqual(quiet.stderr, "");
      const ffi = await cli(
        ["convert", "-f", "raw", "-O", format, "holes.raw", out],
        { cwd },
      );
      assert.strictEqual(ffi.stderr, "");
    }
  },
});

Deno.test("cli convert: a DST Deno may write but not its directory says the directory needs write access", async () => {
  await using dir = await tempDir();
  const cwd = dir.path;
  await Deno.writeFile(join(cwd, "in.raw"), new Uint8Array(64 * 1024).fill(1));
  for (const format of ["raw", "qcow2"]) {
    const r = await cli(
      ["convert", "-O", format, "in.raw", "x.img"],
      { cwd, flags: ["-R", "-W=x.img"] },
    );
    assert.strictEqual(r.code, 1);
    assertOneLineError(
      r,
      /^qcow2pipe: Cannot write x\.img: it is written under a temporary name in \. and then renamed, so Deno must allow writing in the directory \(--allow-write=\.\), not only to the file$/,
    );
  }
  assert.deepStrictEqual(
    [...Deno.readDirSync(cwd)].map((e) => e.name),
    ["in.raw"],
  );
});

Deno.test("formatRate() gives no speed for a run under a second, and scales its unit", () => {
  assert.strictEqual(formatRate(4096, 0.01), undefined);
  assert.strictEqual(formatRate(4 * 1024 ** 4, 0.3), undefined);
  assert.strictEqual(formatRate(25 * MiB, 1), "25.0 MiB/s");
  assert.strictEqual(formatRate(4 * 1024 ** 4, 2), "2.00 TiB/s");
  assert.strictEqual(formatRate(100, 4), "25 B/s");
});
