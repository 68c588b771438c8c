// Running the CLI (`deno run -A cli.ts ...`) from the writer tests (not a
// test file).

import assert from "node:assert";
import { fileURLToPath } from "node:url";
import { listDir } from "./_helpers.ts";

/** Absolute path of cli.ts. */
export const CLI = fileURLToPath(new URL("../../cli.ts", import.meta.url));

/** What a CLI run returned. */
export interface CliResult {
  code: number;
  signal: string | null;
  stdout: Uint8Array;
  stderr: string;
}

/**
 * Runs `deno run -A cli.ts ARGS...`, optionally feeding `stdin` bytes, or
 * with standard input redirected from `stdinFile` (by the shell, so that it
 * can be any file, a directory included).
 */
export async function runCli(
  args: string[],
  options: {
    stdin?: Uint8Array;
    stdinFile?: string;
    cwd?: string;
    env?: Record<string, string>;
  } = {},
): Promise<CliResult> {
  const argv = [Deno.execPath(), "run", "-A", "--quiet", CLI, ...args];
  const child = new Deno.Command(options.stdinFile ? "sh" : argv[0], {
    args: options.stdinFile
      ? ["-c", 'exec "$@" < "$0"', options.stdinFile, ...argv]
      : argv.slice(1),
    cwd: options.cwd,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...options.env },
  }).spawn();
  if (options.stdin) {
    // The CLI may stop reading early (a refusal at the first cluster): a
    // broken pipe here is its answer, not the test's failure.
    const w = child.stdin.getWriter();
    try {
      await w.write(options.stdin);
      await w.close();
    } catch (err) {
      if (!(err instanceof Deno.errors.BrokenPipe)) throw err;
    }
  }
  const out = await child.output();
  return {
    code: out.code,
    signal: out.signal,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Asserts a failed run: exit code 1 and exactly one line on stderr. */
export function assertOneLineError(r: CliResult, pattern: RegExp): void {
  assert.strictEqual(r.code, 1, `exit code (stderr: ${r.stderr})`);
  const lines = r.stderr.trimEnd().split("\n");
  assert.strictEqual(lines.length, 1, `one line on stderr: ${r.stderr}`);
  assert.match(lines[0], /^qcow2pipe: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(lines[0], /^qcow2pipe: .*\bat \S+:\d+:\d+/, "no stack");
}

/** Temporary `.partial` files in a directory. */
export async function partialFiles(dir: string): Promise<string[]> {
  return (await listDir(dir)).filter((n) => n.endsWith(".partial"));
}
