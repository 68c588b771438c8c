// Outputs never destroy an input or a file they should not. DST is
// compared with SRC, its backing and data files and -B's chain by device
// and inode (hard links, symbolic links, /proc/self/fd/N, a second node of
// a block device); --no-clobber holds against a DST that appears mid-run
// while the default replaces an existing DST with a complete output only;
// streams (/dev/stdout, FIFOs, character devices) are written in order and
// stay what they are; long names get a short temporary name; a failed run
// leaves the old DST and no temporary file. qemu-img judges the images.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuIo,
  qemuTest,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import { exists, listDir, MiB, mixedBytes } from "./_helpers.ts";
import { toolTest } from "../_tools.ts";
import {
  assertOneLineError,
  CLI,
  type CliResult,
  partialFiles,
  runCli,
} from "./_cli.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { IoError } from "../../lib/format/errors.ts";
import { openStreamOutput } from "../../lib/host/stream_output.ts";
import { temporaryName } from "../../lib/host/_destination.ts";
import { isTemporaryTracked } from "../../lib/host/temp.ts";
import { openImage } from "../../lib/reader/open.ts";
import { expandToPath } from "../../lib/reader/expand_to_path.ts";

const INPUT = mixedBytes(3 * MiB, 22, 64 * 1024);

/** The argv of `deno run -A cli.ts ARGS...`. */
function cliArgv(args: string[]): string[] {
  return [Deno.execPath(), "run", "-A", "--quiet", CLI, ...args];
}

/**
 * Runs the CLI in `cwd` with shell redirections added to its descriptors
 * (`3<src.qcow2` opens fd 3 on SRC, `1<>src.qcow2` makes it stdout).
 */
async function runCliWith(
  redirect: string,
  args: string[],
  cwd: string,
): Promise<CliResult> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `exec "$@" ${redirect}`, "sh", ...cliArgv(args)],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: out.code,
    signal: out.signal,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** A qcow2 SRC made by qemu-img, its raw expansion, and a copy of it. */
async function qcow2Source(dir: string): Promise<{
  src: string;
  raw: string;
  copy: string;
}> {
  const raw = join(dir, "in.raw");
  await Deno.writeFile(raw, INPUT);
  const src = join(dir, "src.qcow2");
  await qemuImg("convert", "-f", "raw", "-O", "qcow2", raw, src);
  const copy = join(dir, "copy.qcow2");
  await Deno.copyFile(src, copy);
  return { src, raw, copy };
}

/** SRC as qemu-img leaves it: clean, identical to its copy byte for byte. */
async function assertIntact(src: string, copy: string): Promise<void> {
  await qemuCheckClean(src);
  await qemuCompareIdentical(copy, src, ["qcow2", "qcow2"]);
  assert.deepStrictEqual(
    await Deno.readFile(src),
    await Deno.readFile(copy),
    `${src} byte for byte`,
  );
}

qemuTest(
  "output safety: -n onto a hard link of a qcow2 SRC is refused and SRC stays intact",
  async () => {
    await using dir = await tempDir();
    const { src, copy } = await qcow2Source(dir.path);
    const link = join(dir.path, "link.raw");
    await Deno.link(src, link);
    const r = await runCli(["convert", "-n", "-O", "raw", src, link]);
    assertOneLineError(
      r,
      /Cannot write \S+link\.raw: it is the input \S+src\.qcow2 \(device \d+, inode \d+\); an input is never overwritten/,
    );
    await assertIntact(src, copy);
    // Without -n the link would be replaced (not written through); still
    // refused: DST names an input.
    assertOneLineError(
      await runCli(["convert", "-O", "raw", src, link]),
      /link\.raw: it is the input/,
    );
    await assertIntact(src, copy);
    assert.strictEqual((await Deno.stat(link)).nlink, 2, "the link is kept");
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

qemuTest(
  "output safety: DST a symbolic link to SRC, or a /proc/self/fd name of it, is refused",
  async () => {
    await using dir = await tempDir();
    const { src, copy } = await qcow2Source(dir.path);
    const sym = join(dir.path, "sym.raw");
    await Deno.symlink("src.qcow2", sym);
    for (const flags of [[], ["-n"], ["--no-clobber"]]) {
      assertOneLineError(
        await runCli(["convert", ...flags, "-O", "raw", src, sym]),
        /sym\.raw: it is the input \S+src\.qcow2/,
      );
      await assertIntact(src, copy);
      assert.ok((await Deno.lstat(sym)).isSymlink, "the link stays a link");
    }
    // fd 3 of the CLI is SRC: /proc/self/fd/3 and /dev/fd/3 are SRC itself,
    // by name only a number.
    for (const name of ["/proc/self/fd/3", "/dev/fd/3"]) {
      for (const flags of [[], ["-n"]]) {
        const r = await runCliWith(
          "3<src.qcow2",
          ["convert", ...flags, "-O", "raw", "src.qcow2", name],
          dir.path,
        );
        assertOneLineError(
          r,
          new RegExp(`Cannot write ${name}: it is the input src\\.qcow2`),
        );
        await assertIntact(src, copy);
      }
    }
    // Standard output opened on SRC (1<>): refused before a byte is written.
    const r = await runCliWith(
      "1<>src.qcow2",
      ["convert", "-O", "raw", "src.qcow2", "-"],
      dir.path,
    );
    assertOneLineError(r, /Cannot write standard output: it is the input/);
    await assertIntact(src, copy);
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

qemuTest(
  "output safety: DST a hard link of a backing or data file of SRC is refused",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.qcow2");
    await Deno.writeFile(join(dir.path, "base.raw"), INPUT);
    await qemuImg(
      "convert",
      "-f",
      "raw",
      "-O",
      "qcow2",
      join(dir.path, "base.raw"),
      base,
    );
    const top = join(dir.path, "top.qcow2");
    await qemuImg(
      "create",
      "-f",
      "qcow2",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      top,
    );
    await qemuIo(top, ["write -P 0x5a 64k 64k"]);
    const baseCopy = join(dir.path, "base-copy.qcow2");
    await Deno.copyFile(base, baseCopy);
    const link = join(dir.path, "link.raw");
    await Deno.link(base, link);
    for (const flags of [[], ["-n"]]) {
      assertOneLineError(
        await runCli([
          "convert",
          ...flags,
          "-f",
          "qcow2",
          "-O",
          "raw",
          top,
          link,
        ]),
        /link\.raw: it is the input \S*base\.qcow2/,
      );
      await assertIntact(base, baseCopy);
    }
    // An external data file.
    const withData = join(dir.path, "data.qcow2");
    await qemuImg(
      "create",
      "-f",
      "qcow2",
      "-o",
      `data_file=${join(dir.path, "data.bin")}`,
      withData,
      "1M",
    );
    await qemuIo(withData, ["write -P 0x33 0 128k"]);
    const dataBytes = await Deno.readFile(join(dir.path, "data.bin"));
    const dataLink = join(dir.path, "data-link.raw");
    await Deno.link(join(dir.path, "data.bin"), dataLink);
    for (const flags of [[], ["-n"]]) {
      assertOneLineError(
        await runCli([
          "convert",
          ...flags,
          "-f",
          "qcow2",
          "-O",
          "raw",
          withData,
          dataLink,
        ]),
        /data-link\.raw: it is the input \S*data\.bin/,
      );
      assert.deepStrictEqual(
        await Deno.readFile(join(dir.path, "data.bin")),
        dataBytes,
      );
    }
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

qemuTest(
  "output safety: DST that is -B's backing file (or a link to it) is refused",
  async () => {
    await using dir = await tempDir();
    const { src: base, copy } = await qcow2Source(dir.path);
    const link = join(dir.path, "link.qcow2");
    await Deno.link(base, link);
    const changed = INPUT.slice();
    changed.fill(0x77, MiB, MiB + 65536);
    await Deno.writeFile(join(dir.path, "new.raw"), changed);
    for (const dst of ["src.qcow2", "link.qcow2"]) {
      const r = await runCli([
        "convert",
        "-B",
        "src.qcow2",
        "-F",
        "qcow2",
        "-O",
        "qcow2",
        "new.raw",
        dst,
      ], { cwd: dir.path });
      assertOneLineError(
        r,
        new RegExp(`Cannot write ${dst.replace(".", "\\.")}: it is the input`),
      );
      await assertIntact(base, copy);
    }
    // The delta itself is written when DST is another file.
    const ok = await runCli([
      "convert",
      "-q",
      "-B",
      "src.qcow2",
      "-F",
      "qcow2",
      "-O",
      "qcow2",
      "new.raw",
      "delta.qcow2",
    ], { cwd: dir.path });
    assert.strictEqual(ok.code, 0, ok.stderr);
    await qemuCheckClean(join(dir.path, "delta.qcow2"));
    await qemuCompareIdentical(
      join(dir.path, "new.raw"),
      join(dir.path, "delta.qcow2"),
    );
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

Deno.test("output safety: standard input that is the -n target is refused", async () => {
  await using dir = await tempDir();
  const target = join(dir.path, "target.raw");
  await Deno.writeFile(target, INPUT);
  const r = await runCliWith(
    "<target.raw",
    ["convert", "-n", "-O", "raw", "-f", "raw", "-", "target.raw"],
    dir.path,
  );
  assertOneLineError(
    r,
    /Cannot write target\.raw: it is the input standard input \(device \d+, inode \d+\)/,
  );
  assert.deepStrictEqual(await Deno.readFile(target), INPUT);
});

const PYTHON_TOOL = {
  name: "python3",
  available: (() => {
    try {
      return new Deno.Command("python3", { args: ["--version"] }).outputSync()
        .success;
    } catch {
      return false;
    }
  })(),
  install: "python3",
};

/**
 * Runs the CLI with one socket as its standard input and output (as inetd
 * starts a service), sending `input` and returning what came back.
 */
async function runOnSocket(
  input: string,
  args: string[],
): Promise<{ code: number; stdout: Uint8Array; stderr: string }> {
  const script = `
import socket, subprocess, sys, threading
data = open(sys.argv[1], "rb").read()
a, b = socket.socketpair()
p = subprocess.Popen(sys.argv[2:], stdin=b, stdout=b)
b.close()
def feed():
    a.sendall(data)
    a.shutdown(socket.SHUT_WR)
t = threading.Thread(target=feed)
t.start()
out = bytearray()
while True:
    chunk = a.recv(65536)
    if not chunk:
        break
    out += chunk
t.join()
sys.stdout.buffer.write(out)
sys.exit(p.wait())
`;
  const out = await new Deno.Command("python3", {
    args: ["-c", script, input, ...cliArgv(args)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: out.code,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

toolTest(
  "output safety: one socket as standard input and output is not an input overwritten: '-' and /dev/stdout write it",
  [PYTHON_TOOL],
  async () => {
    await using dir = await tempDir();
    const input = join(dir.path, "in.raw");
    await Deno.writeFile(input, INPUT);
    for (const dst of ["-", "/dev/stdout"]) {
      const r = await runOnSocket(input, [
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "raw",
        "-",
        dst,
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      assert.deepStrictEqual(r.stdout, INPUT, dst);
    }
  },
);

/** A CLI run fed through a pipe, to act while it runs. */
function spawnCli(args: string[], cwd: string) {
  return new Deno.Command(cliArgv(args)[0], {
    args: cliArgv(args).slice(1),
    cwd,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
}

/** Waits until the directory holds a temporary `.partial` file. */
async function partialAppears(dir: string): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if ((await partialFiles(dir)).length > 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no temporary file appeared in ${dir}`);
}

qemuTest(
  "output safety: with --no-clobber a DST created mid-run survives and the run fails; without, it is replaced by the complete output",
  async () => {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
    const theirs = new TextEncoder().encode("written by another process\n");
    for (const noClobber of [true, false]) {
      const dst = join(dir.path, "dst.qcow2");
      await Deno.remove(dst).catch(() => {});
      const child = spawnCli([
        "convert",
        "-q",
        ...noClobber ? ["--no-clobber"] : [],
        "--compress",
        "zstd",
        "-O",
        "qcow2",
        "-",
        "dst.qcow2",
      ], dir.path);
      const w = child.stdin.getWriter();
      await w.write(INPUT.subarray(0, MiB));
      await partialAppears(dir.path);
      // Another process creates DST while the output is written.
      await new Deno.Command("sh", {
        args: ["-c", 'printf "written by another process\\n" > "$0"', dst],
      }).output();
      await w.write(INPUT.subarray(MiB));
      await w.close();
      const out = await child.output();
      const stderr = new TextDecoder().decode(out.stderr);
      if (noClobber) {
        assertOneLineError(
          { code: out.code, signal: null, stdout: out.stdout, stderr },
          /Cannot write dst\.qcow2: a file appeared there while the output was written; it is kept and the output discarded \(no-clobber\)/,
        );
        assert.deepStrictEqual(
          await Deno.readFile(dst),
          theirs,
          "byte-identical",
        );
      } else {
        assert.strictEqual(out.code, 0, stderr);
        await qemuCheckClean(dst);
        await qemuCompareIdentical(join(dir.path, "in.raw"), dst);
      }
      assert.deepStrictEqual(await partialFiles(dir.path), []);
    }
  },
);

qemuTest(
  "output safety: an existing DST is replaced by a complete output, raw and qcow2",
  async () => {
    await using dir = await tempDir();
    const { src, raw } = await qcow2Source(dir.path);
    const old = mixedBytes(5 * MiB, 9, 4096); // longer than the output
    for (const [dst, format] of [["out.qcow2", "qcow2"], ["out.raw", "raw"]]) {
      const path = join(dir.path, dst);
      await Deno.writeFile(path, old);
      const r = await runCli(["convert", "-q", "-O", format, src, path]);
      assert.strictEqual(r.code, 0, r.stderr);
      if (format === "qcow2") await qemuCheckClean(path);
      await qemuCompareIdentical(raw, path, ["raw", format]);
      assert.strictEqual((await Deno.stat(path)).size < old.length, true);
    }
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

/** What qemu-img expands `src` to. */
async function qemuRaw(dir: string, src: string): Promise<Uint8Array> {
  const out = join(dir, "qemu-expanded.raw");
  await qemuImg("convert", "-O", "raw", src, out);
  const bytes = await Deno.readFile(out);
  await Deno.remove(out);
  return bytes;
}

qemuTest(
  "output safety: /dev/stdout and links to it are streams: the entry stays, the reader gets qemu-img's bytes",
  async () => {
    await using dir = await tempDir();
    const { src } = await qcow2Source(dir.path);
    const want = await qemuRaw(dir.path, src);
    const link = join(dir.path, "out.raw");
    await Deno.symlink("/dev/stdout", link);
    assert.ok((await Deno.lstat("/dev/stdout")).isSymlink);
    for (const dst of ["/dev/stdout", link, "/proc/self/fd/1"]) {
      for (const force of [[], ["--force"]]) {
        const r = await runCli([
          "convert",
          "-q",
          ...force,
          "-O",
          "raw",
          src,
          dst,
        ]);
        assert.strictEqual(r.code, 0, r.stderr);
        assert.deepStrictEqual(r.stdout, want, `${dst} ${force}`);
      }
      // qcow2 goes out in the streamable layout, as to "-".
      const r = await runCli(["convert", "-q", "-O", "qcow2", src, dst]);
      assert.strictEqual(r.code, 0, r.stderr);
      const got = join(dir.path, "from-stdout.qcow2");
      await Deno.writeFile(got, r.stdout);
      await qemuCheckClean(got);
      await qemuCompareIdentical(join(dir.path, "in.raw"), got);
      await Deno.remove(got);
    }
    assert.ok((await Deno.lstat("/dev/stdout")).isSymlink, "/dev/stdout kept");
    assert.ok((await Deno.lstat(link)).isSymlink, "the link kept");
    assert.deepStrictEqual(await partialFiles(dir.path), []);
    assert.deepStrictEqual(
      (await listDir("/dev")).filter((n) => n.endsWith(".partial")),
      [],
      "no temporary file in /dev",
    );
  },
);

qemuTest(
  "output safety: a FIFO is a stream: raw (zeros included) and streamable qcow2 reach the reader, and it stays a FIFO",
  async () => {
    await using dir = await tempDir();
    const { src } = await qcow2Source(dir.path);
    const want = await qemuRaw(dir.path, src);
    const fifo = join(dir.path, "pipe");
    const made = await runStatus("mkfifo", [fifo]);
    assert.strictEqual(made.code, 0, made.stderr);
    for (const force of [[], ["--force"]]) {
      for (const format of ["raw", "qcow2"]) {
        const reading = Deno.readFile(fifo);
        const r = await runCli([
          "convert",
          "-q",
          ...force,
          "-O",
          format,
          src,
          fifo,
        ]);
        assert.strictEqual(r.code, 0, r.stderr);
        const got = await reading;
        if (format === "raw") {
          assert.deepStrictEqual(got, want, `raw ${force}`);
        } else {
          const image = join(dir.path, "from-fifo.qcow2");
          await Deno.writeFile(image, got);
          await qemuCheckClean(image);
          await qemuCompareIdentical(join(dir.path, "in.raw"), image);
          await Deno.remove(image);
        }
        assert.ok((await Deno.lstat(fifo)).isFifo, "still a FIFO");
      }
    }
    // -n needs offsets: a FIFO is refused without being opened.
    assertOneLineError(
      await runCli(["convert", "-n", "-O", "raw", src, fifo]),
      /Cannot write into \S+pipe: it is a FIFO, which cannot be written at offsets/,
    );
    assert.ok((await Deno.lstat(fifo)).isFifo);
    assert.deepStrictEqual(await partialFiles(dir.path), []);
  },
);

Deno.test("output safety: a character device stays one (/dev/null, raw and qcow2)", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  for (const args of [["-O", "raw"], ["--compress", "zstd", "-O", "qcow2"]]) {
    const r = await runCli(["convert", "-q", ...args, "in.raw", "/dev/null"], {
      cwd: dir.path,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.ok((await Deno.stat("/dev/null")).isCharDevice);
  }
});

qemuTest(
  "output safety: DST names of 250 and 255 bytes work and leave no temporary file",
  async () => {
    await using dir = await tempDir();
    const { src, raw } = await qcow2Source(dir.path);
    const names = [
      "d".repeat(244) + ".qcow2", // 250 bytes
      "é".repeat(120) + "x".repeat(9) + ".raw", // 253 bytes, 2-byte characters
      "e".repeat(249) + ".qcow2", // 255: the limit
    ];
    for (const name of names) {
      const bytes = new TextEncoder().encode(name).length;
      assert.ok(bytes >= 249 && bytes <= 255, `${bytes} bytes`);
      const format = name.endsWith(".raw") ? "raw" : "qcow2";
      const r = await runCli(["convert", "-q", "-O", format, src, name], {
        cwd: dir.path,
      });
      assert.strictEqual(r.code, 0, r.stderr);
      const path = join(dir.path, name);
      if (format === "qcow2") await qemuCheckClean(path);
      await qemuCompareIdentical(raw, path, ["raw", format]);
      assert.deepStrictEqual(await partialFiles(dir.path), []);
    }
    assert.strictEqual(
      new TextEncoder().encode(names[0]).length,
      250,
      "a 250-byte name",
    );
  },
);

Deno.test("temporaryName() keeps within 255 bytes, at a character boundary, starting with a dot", () => {
  const encoder = new TextEncoder();
  for (
    const base of [
      "disk.qcow2",
      "a".repeat(237),
      "a".repeat(238),
      "é".repeat(127),
      "日本".repeat(42) + ".raw",
      "a".repeat(255),
    ]
  ) {
    const one = temporaryName(base, "0123abcd");
    const two = temporaryName(base, "9876fedc");
    assert.notStrictEqual(one, two);
    assert.ok(one.startsWith("."), one);
    assert.ok(one.endsWith(".0123abcd.partial"), one);
    assert.ok(encoder.encode(one).length <= 255, `${base.length}: ${one}`);
    assert.ok(!one.includes("\ufffd"), "no cut character");
    const kept = one.slice(1, -".0123abcd.partial".length);
    assert.ok(base.startsWith(kept), "a prefix of the name");
    if (encoder.encode(base).length <= 237) assert.strictEqual(kept, base);
  }
});

qemuTest(
  "output safety: a failed run leaves the old DST intact and no temporary file",
  async () => {
    await using dir = await tempDir();
    const { src } = await qcow2Source(dir.path);
    // Cut SRC short: its last data clusters are past the end of the file, so
    // the run fails after the output was started.
    const bytes = await Deno.readFile(src);
    const cut = join(dir.path, "cut.qcow2");
    await Deno.writeFile(cut, bytes.subarray(0, bytes.length - 2 * 65536));
    const old = new TextEncoder().encode("the old DST\n");
    for (const [dst, format] of [["old.raw", "raw"], ["old.qcow2", "qcow2"]]) {
      for (const flags of [[], ["--force"]]) {
        const path = join(dir.path, dst);
        await Deno.writeFile(path, old);
        const r = await runCli(["convert", ...flags, "-O", format, cut, path]);
        assertOneLineError(r, /past the end of the file/);
        assert.deepStrictEqual(await Deno.readFile(path), old, dst);
        assert.deepStrictEqual(await partialFiles(dir.path), []);
      }
    }
  },
);

Deno.test("output safety: --no-clobber with -n or --force, and a link to nothing, are refused", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  assertOneLineError(
    await runCli(
      ["convert", "-n", "--no-clobber", "-O", "raw", "in.raw", "x"],
      {
        cwd: dir.path,
      },
    ),
    /-n writes into the existing DST, which --no-clobber keeps/,
  );
  assertOneLineError(
    await runCli(["convert", "--force", "--no-clobber", "in.raw", "x.raw"], {
      cwd: dir.path,
    }),
    /--force and --no-clobber contradict each other/,
  );
  await Deno.symlink("nowhere.raw", join(dir.path, "dangling.raw"));
  for (const flags of [[], ["--no-clobber"]]) {
    assertOneLineError(
      await runCli(["convert", ...flags, "in.raw", "dangling.raw"], {
        cwd: dir.path,
      }),
      /Cannot write dangling\.raw: it is a symbolic link to nowhere\.raw, which does not exist/,
    );
  }
  assert.deepStrictEqual(await listDir(dir.path), ["dangling.raw", "in.raw"]);
});

Deno.test("OutputFile: inputs are compared by device and inode before anything is written", async () => {
  await using dir = await tempDir();
  const src = join(dir.path, "src.raw");
  await Deno.writeFile(src, INPUT);
  await Deno.link(src, join(dir.path, "hard.raw"));
  await Deno.symlink("src.raw", join(dir.path, "soft.raw"));
  await using input = await FileSource.open(src);
  const inputs = [input.identity!];
  for (const name of ["src.raw", "hard.raw", "soft.raw"]) {
    const path = join(dir.path, name);
    await assert.rejects(
      OutputFile.create(path, { inputs }),
      new RegExp(`${name.replace(".", "\\.")}: it is the input`),
    );
    await assert.rejects(
      OutputFile.openInPlace(path, { inputs }),
      /it is the input/,
    );
    assert.strictEqual(await openStreamOutput(path, { inputs }), undefined);
  }
  // expandToPath protects the files its source image reads by itself.
  await using image = await openImage(src);
  await assert.rejects(
    expandToPath(image, join(dir.path, "hard.raw")),
    /hard\.raw: it is the input/,
  );
  await assert.rejects(
    expandToPath(image, join(dir.path, "soft.raw"), { inPlace: true }),
    /soft\.raw: it is the input/,
  );
  assert.deepStrictEqual(await Deno.readFile(src), INPUT);
  assert.deepStrictEqual(await listDir(dir.path), [
    "hard.raw",
    "soft.raw",
    "src.raw",
  ]);
});

Deno.test("OutputFile: noClobber commits by link, so a file that appeared meanwhile is kept", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "disk.raw");
  const out = await OutputFile.create(dst, { noClobber: true });
  await out.writeAt(0, new Uint8Array([1, 2, 3]));
  await Deno.writeFile(dst, new Uint8Array([9]), { createNew: true });
  await assert.rejects(
    out.commit(3),
    (e) => e instanceof IoError && e.code === "EXISTS",
  );
  assert.deepStrictEqual(await Deno.readFile(dst), new Uint8Array([9]));
  assert.ok(!isTemporaryTracked(out.writingPath));
  assert.deepStrictEqual(await listDir(dir.path), ["disk.raw"]);
  // Nothing there at commit: the output is linked in, the temporary gone.
  const fresh = join(dir.path, "fresh.raw");
  const ok = await OutputFile.create(fresh, { noClobber: true });
  await ok.writeAt(0, new Uint8Array([4, 5]));
  await ok.commit(2);
  assert.deepStrictEqual(await Deno.readFile(fresh), new Uint8Array([4, 5]));
  assert.strictEqual((await Deno.stat(fresh)).nlink, 1);
  assert.deepStrictEqual(await listDir(dir.path), ["disk.raw", "fresh.raw"]);
});

Deno.test("OutputFile: an existing DST reached by a symbolic link is replaced where it is; the link stays", async () => {
  await using dir = await tempDir();
  await Deno.mkdir(join(dir.path, "real"));
  const real = join(dir.path, "real", "disk.raw");
  await Deno.writeFile(real, new Uint8Array([9, 9, 9, 9]));
  const link = join(dir.path, "disk.raw");
  await Deno.symlink("real/disk.raw", link);
  const out = await OutputFile.create(link);
  assert.ok(out.writingPath.startsWith(join(dir.path, "real", ".disk.raw.")));
  await out.writeAt(0, new Uint8Array([1]));
  await out.commit(2);
  assert.ok((await Deno.lstat(link)).isSymlink);
  assert.deepStrictEqual(await Deno.readFile(real), new Uint8Array([1, 0]));
  assert.deepStrictEqual(await listDir(join(dir.path, "real")), ["disk.raw"]);
});

/** Whether loop devices can be set up here (root, losetup, mknod). */
const LOOP = (() => {
  try {
    return Deno.uid() === 0 &&
      Deno.statSync("/dev/loop-control").isCharDevice === true &&
      new Deno.Command("losetup", { args: ["--version"] }).outputSync()
        .success;
  } catch {
    return false;
  }
})();

Deno.test({
  name:
    "output safety: a second device node of SRC's block device is SRC (-n refused)",
  ignore: !LOOP,
  async fn() {
    await using dir = await tempDir();
    const file = join(dir.path, "disk.img");
    await Deno.writeFile(file, INPUT);
    const setup = await runStatus("losetup", ["--find", "--show", file]);
    assert.strictEqual(setup.code, 0, setup.stderr);
    const loop = setup.stdout.trim();
    try {
      const [major, minor] = (await runStatus("stat", ["-c", "%t %T", loop]))
        .stdout.trim().split(" ").map((h) => parseInt(h, 16));
      const alias = join(dir.path, "alias");
      const made = await runStatus("mknod", [
        alias,
        "b",
        String(major),
        String(minor),
      ]);
      assert.strictEqual(made.code, 0, made.stderr);
      assertOneLineError(
        await runCli(["convert", "-n", "-f", "raw", "-O", "raw", loop, alias]),
        new RegExp(`Cannot write \\S+alias: it is the input ${loop}`),
      );
      assert.deepStrictEqual(await Deno.readFile(file), INPUT);
    } finally {
      await runStatus("losetup", ["-d", loop]);
    }
  },
});

Deno.test("output safety: --no-clobber writes a new DST, linked in under one name", async () => {
  await using dir = await tempDir();
  await Deno.writeFile(join(dir.path, "in.raw"), INPUT);
  const r = await runCli(["convert", "-q", "--no-clobber", "in.raw", "o.raw"], {
    cwd: dir.path,
  });
  assert.strictEqual(r.code, 0, r.stderr);
  assert.ok(await exists(join(dir.path, "o.raw")));
  assert.strictEqual((await Deno.stat(join(dir.path, "o.raw"))).nlink, 1);
  assert.deepStrictEqual(await partialFiles(dir.path), []);
});
