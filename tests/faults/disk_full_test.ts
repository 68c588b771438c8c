// Faults while writing the output: a full file system (a small tmpfs, when
// this process may mount one), a file size limit (RLIMIT_FSIZE set with the
// shell's `ulimit -f`, SIGXFSZ ignored so that writes fail with EFBIG rather
// than kill the process) and a full standard output (/dev/full). Every run
// must end with exit 1 and one line naming the file and the offset, leave no
// temporary file, keep an existing DST as it was and the source untouched.
// Run again with room to spare, the same command completes and its image
// passes qemu-img check.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import { listDir, MiB, mixedBytes, randomBytes } from "../writer/_helpers.ts";
import {
  assertOneLineError,
  CLI,
  type CliResult,
  partialFiles,
  runCli,
} from "../writer/_cli.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";

const LIMIT = 4 * MiB;
const linux = Deno.build.os === "linux";

/** Whether a tmpfs can be mounted here (root with CAP_SYS_ADMIN). */
async function canMountTmpfs(): Promise<boolean> {
  if (!linux) return false;
  const dir = await Deno.makeTempDir({ prefix: "qcow2pipe-mount-probe-" });
  try {
    const m = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir],
      stdout: "null",
      stderr: "null",
    }).output().catch(() => undefined);
    if (!m?.success) return false;
    await umount(dir);
    return true;
  } finally {
    await Deno.remove(dir).catch(() => {});
  }
}

async function umount(dir: string): Promise<void> {
  const u = await new Deno.Command("umount", { args: [dir] }).output();
  if (!u.success) throw new Error(`umount ${dir} failed`);
}

const TMPFS = await canMountTmpfs();
if (linux && !TMPFS) {
  console.error(
    "cannot mount a tmpfs here (needs root): the full-file-system test is skipped; the file-size-limit test still runs",
  );
}

/** Inputs: incompressible raw (much larger than LIMIT) and a qcow2 of it. */
async function inputs(dir: string) {
  const raw = new Uint8Array(24 * MiB);
  raw.set(randomBytes(12 * MiB, 1), 0);
  raw.set(mixedBytes(8 * MiB, 2), 16 * MiB);
  const src = join(dir, "src.raw");
  await Deno.writeFile(src, raw);
  const qcow2 = join(dir, "src.qcow2");
  const image = await convertToBytes(raw, { compression: "zstd", workers: 0 });
  await Deno.writeFile(qcow2, image);
  return { src, raw, qcow2, image };
}

/** Conversions that each write more than LIMIT bytes. */
function commands(src: string, qcow2: string, out: string): string[][] {
  return [
    ["convert", "--compress", "zstd", src, join(out, "a.qcow2")],
    ["convert", "-O", "qcow2", src, join(out, "b.qcow2")],
    [
      "convert",
      "--streamable",
      "--compress",
      "zlib",
      src,
      join(out, "c.qcow2"),
    ],
    ["convert", "-O", "raw", qcow2, join(out, "d.raw")],
    [
      "convert",
      "-O",
      "qcow2",
      "--cluster-size",
      "4k",
      qcow2,
      join(out, "e.qcow2"),
    ],
  ];
}

/**
 * Runs `deno run cli.ts ARGS...` as "$@" of a bash `script` (which sets
 * limits or redirections, then execs it).
 */
async function runCliInShell(
  script: string,
  args: string[],
): Promise<CliResult> {
  const o = await new Deno.Command("bash", {
    args: [
      "-c",
      script,
      "bash",
      Deno.execPath(),
      "run",
      "-A",
      "--quiet",
      CLI,
      ...args,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: o.code,
    signal: o.signal,
    stdout: o.stdout,
    stderr: new TextDecoder().decode(o.stderr),
  };
}

const OLD = new TextEncoder().encode("the previous DST\n");

function assertWriteError(r: CliResult, file: string, why: RegExp): void {
  assertOneLineError(r, why);
  const line = r.stderr.trim();
  // the streamable writer's spool lives in the temporary directory, under
  // the same size limit
  assert.ok(
    line.includes(file) || /qcow2pipe-spool-\w+\/spool\b/.test(line),
    `the error names ${file} (or the spool): ${line}`,
  );
  assert.match(line, /at offset \d+/, "the error says where");
}

/**
 * Runs each command into `out` (where writes fail), with and without an
 * existing DST, then checks the aftermath; `free` lifts the fault and the
 * same commands must then succeed.
 */
async function faultedRuns(
  dir: string,
  out: string,
  run: (args: string[]) => Promise<CliResult>,
  why: RegExp,
  free: () => Promise<void>,
): Promise<void> {
  const { src, raw, qcow2, image } = await inputs(dir);
  const cmds = commands(src, qcow2, out);
  for (const args of cmds) {
    const dst = args[args.length - 1];
    const name = dst.slice(out.length + 1);
    // No DST before: none after.
    assertWriteError(await run(args), name, why);
    assert.deepStrictEqual(await listDir(out), [], `${name}: nothing left`);
    // An existing DST, replaced only by a complete output: kept as it was.
    await Deno.writeFile(dst, OLD);
    assertWriteError(await run(args), name, why);
    assert.deepStrictEqual(await partialFiles(out), [], `${name}: no .partial`);
    assert.deepStrictEqual(await Deno.readFile(dst), OLD, `${name} untouched`);
    await Deno.remove(dst);
  }
  assert.deepStrictEqual(await Deno.readFile(src), raw, "raw source untouched");
  assert.deepStrictEqual(await Deno.readFile(qcow2), image, "qcow2 untouched");

  await free();
  for (const args of cmds) {
    const r = await run(args);
    assert.strictEqual(r.code, 0, r.stderr);
    const dst = args[args.length - 1];
    if (dst.endsWith(".qcow2")) await qemuImg("check", "-q", dst);
    await qemuImg("compare", "-q", "-F", "raw", dst, src);
    await Deno.remove(dst);
  }
}

if (linux) {
  qemuTest("faults: a file size limit (EFBIG) mid-write", async () => {
    await using dir = await tempDir();
    const out = join(dir.path, "out");
    await Deno.mkdir(out);
    let limit = true;
    const run = async (args: string[]): Promise<CliResult> => {
      if (!limit) return await runCli(args);
      return await runCliInShell(
        `trap '' XFSZ; ulimit -f ${LIMIT / 1024}; exec "$@"`,
        args,
      );
    };
    await faultedRuns(dir.path, out, run, /file too large/, () => {
      limit = false;
      return Promise.resolve();
    });
  });
}

if (TMPFS) {
  qemuTest("faults: a full file system (ENOSPC) mid-write", async () => {
    await using dir = await tempDir();
    const out = join(dir.path, "out");
    await Deno.mkdir(out);
    let mounted = false;
    const mount = async (size: string) => {
      const m = await new Deno.Command("mount", {
        args: ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", out],
      }).output();
      assert.ok(m.success, new TextDecoder().decode(m.stderr));
      mounted = true;
    };
    await mount(`${LIMIT / 1024}k`);
    try {
      await faultedRuns(
        dir.path,
        out,
        runCli,
        /no space left on device/,
        async () => {
          await umount(out);
          mounted = false;
          await mount("256m");
        },
      );
    } finally {
      if (mounted) await umount(out);
    }
  });
}

const DEV_FULL = linux && (() => {
  try {
    return Deno.statSync("/dev/full").isCharDevice === true;
  } catch {
    return false;
  }
})();
if (linux && !DEV_FULL) {
  console.error("no /dev/full here: the full-standard-output test is skipped");
}

Deno.test({
  name: "faults: a full standard output (/dev/full)",
  ignore: !DEV_FULL,
  fn: async () => {
    await using dir = await tempDir();
    const { src, raw, qcow2 } = await inputs(dir.path);
    for (
      const args of [
        ["convert", "--compress", "zstd", src, "-"],
        ["convert", "-O", "raw", qcow2, "-"],
        ["convert", "-O", "raw", src, "-"],
      ]
    ) {
      const r = await runCliInShell(`exec "$@" > /dev/full`, args);
      assertOneLineError(
        r,
        /Cannot write to standard output at offset \d+: no space left on device/,
      );
    }
    assert.deepStrictEqual(await Deno.readFile(src), raw, "source untouched");
    assert.deepStrictEqual(await listDir(dir.path), ["src.qcow2", "src.raw"]);
  },
});
