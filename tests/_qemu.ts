// Test helpers for running qemu-img / qemu-io, the reference implementation.
// Tests that need them are skipped with a visible message when they are
// absent, except under CI (CI=true), where their absence fails the test.

import assert from "node:assert";
// Tests run in Deno and open images by path through modules under lib/
// (not only mod.ts): give the runtime-neutral reader Deno's file access.
import "../lib/host/file_source.ts";

/** Whether `cmd` runs (`cmd --version`, or the given arguments). */
export function has(cmd: string, args = ["--version"]): boolean {
  try {
    const out = new Deno.Command(cmd, {
      args,
      stdout: "null",
      stderr: "null",
    })
      .outputSync();
    return out.success;
  } catch {
    return false;
  }
}

/** Whether qemu-img and qemu-io can be run here. */
export const HAVE_QEMU: boolean = has("qemu-img") && has("qemu-io");

/** Whether the tests run under CI (CI set and not "false"). */
export const IN_CI: boolean = (Deno.env.get("CI") ?? "") !== "" &&
  Deno.env.get("CI") !== "false";

/**
 * Makes a registrar for tests that need outside tools: without them a test
 * is skipped (with one message on stderr) outside CI, and fails under CI.
 *
 * @param what The tools, for messages (`qemu-img/qemu-io`).
 * @param present Whether they were found.
 * @param install How to install them (`apt-get install qemu-utils`).
 */
export function toolTest(
  what: string,
  present: boolean,
  install: string,
): (
  name: string,
  fn: (t: Deno.TestContext) => Promise<void> | void,
) => void {
  let warned = false;
  return (name, fn) => {
    if (!present && !IN_CI) {
      if (!warned) {
        console.error(
          `${what} not found: skipping tests that need them (${install})`,
        );
        warned = true;
      }
      Deno.test({ name, ignore: true, fn });
      return;
    }
    Deno.test(name, async (t) => {
      if (!present) {
        throw new Error(`${what} required under CI but not found`);
      }
      await fn(t);
    });
  };
}

/**
 * Registers a test that needs qemu-img/qemu-io. Without them it is skipped
 * (with a message on stderr) outside CI, and fails under CI.
 */
export const qemuTest: (
  name: string,
  fn: (t: Deno.TestContext) => Promise<void> | void,
) => void = toolTest(
  "qemu-img/qemu-io",
  HAVE_QEMU,
  "apt-get install qemu-utils",
);

/**
 * Runs a command and returns stdout; throws with stderr when it fails.
 * qemu-img's LUKS key derivation measures CPU time and sometimes gives up
 * under load ("Unable to get accurate CPU usage"): that is retried.
 */
export async function run(
  cmd: string,
  args: string[],
  opts: { stdin?: Uint8Array } = {},
): Promise<string> {
  for (let attempt = 1;; attempt++) {
    const child = new Deno.Command(cmd, {
      args,
      stdin: opts.stdin ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (opts.stdin) {
      const w = child.stdin.getWriter();
      await w.write(opts.stdin);
      await w.close();
    }
    const out = await child.output();
    const stdout = new TextDecoder().decode(out.stdout);
    if (out.success) return stdout;
    const stderr = new TextDecoder().decode(out.stderr);
    if (attempt < 5 && stderr.includes("accurate CPU usage")) continue;
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${stderr.trim()}`,
    );
  }
}

/** Runs a command and returns its exit code, stdout and stderr. */
export async function runStatus(
  cmd: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  })
    .output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** `qemu-img ARGS...` */
export function qemuImg(...args: string[]): Promise<string> {
  return run("qemu-img", args);
}

/** `qemu-io -f FORMAT -c CMD ... IMAGE` with one -c per command. */
export function qemuIo(
  image: string,
  commands: string[],
  format = "qcow2",
): Promise<string> {
  return run("qemu-io", [
    "-f",
    format,
    ...commands.flatMap((c) => ["-c", c]),
    image,
  ]);
}

/** A fresh temporary directory, removed by the returned disposer. */
export async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "qcow2pipe-test-" });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    },
  };
}

/** What `qemu-img check --output=json` reports. */
export interface QemuCheck {
  "check-errors": number;
  "image-end-offset"?: number;
  "total-clusters"?: number;
  "allocated-clusters"?: number;
  "compressed-clusters"?: number;
  leaks?: number;
  corruptions?: number;
}

/**
 * Runs `qemu-img check` (text, then JSON) and asserts exit code 0, "No
 * errors were found", no leaks and no corruptions. Returns the JSON report.
 */
export async function qemuCheckClean(path: string): Promise<QemuCheck> {
  const text = await runStatus("qemu-img", ["check", "-f", "qcow2", path]);
  const all = text.stdout + text.stderr;
  assert.strictEqual(text.code, 0, `qemu-img check ${path}:\n${all}`);
  assert.match(text.stdout, /No errors were found on the image\./);
  assert.doesNotMatch(all, /leak/i, all);
  assert.doesNotMatch(all, /\bERROR\b|corrupt/, all);
  const json = await runStatus("qemu-img", [
    "check",
    "--output=json",
    "-f",
    "qcow2",
    path,
  ]);
  assert.strictEqual(json.code, 0, json.stdout + json.stderr);
  const report = JSON.parse(json.stdout) as QemuCheck;
  assert.strictEqual(report["check-errors"], 0);
  assert.strictEqual(report.leaks ?? 0, 0, "leaked clusters");
  assert.strictEqual(report.corruptions ?? 0, 0, "corruptions");
  return report;
}

/** Runs `qemu-img compare` and asserts "Images are identical." */
export async function qemuCompareIdentical(
  a: string,
  b: string,
  formats: [string, string] = ["raw", "qcow2"],
): Promise<void> {
  const r = await runStatus("qemu-img", [
    "compare",
    "-f",
    formats[0],
    "-F",
    formats[1],
    a,
    b,
  ]);
  assert.strictEqual(
    r.code,
    0,
    `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`,
  );
  assert.match(r.stdout, /Images are identical\./);
}

/** `qemu-img create -q -f qcow2 ARGS... DIR/NAME SIZE`, returning the path. */
export async function createQcow2(
  dir: string,
  name: string,
  size: string,
  ...args: string[]
): Promise<string> {
  const path = `${dir}/${name}`;
  await qemuImg("create", "-q", "-f", "qcow2", ...args, path, size);
  return path;
}

/** Reads `length` bytes of a file at `offset` (fewer at its end). */
export async function readAt(
  path: string,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  using file = await Deno.open(path);
  await file.seek(offset, Deno.SeekMode.Start);
  const out = new Uint8Array(length);
  let n = 0;
  while (n < length) {
    const r = await file.read(out.subarray(n));
    if (r === null) break;
    n += r;
  }
  return out.subarray(0, n);
}
