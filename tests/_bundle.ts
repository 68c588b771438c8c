// Builds the one-file bundle exactly as `deno task bundle` does (the same
// arguments, read from deno.json), into a test's own directory, so tests
// never run a stale dist/ build.

import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const TASK_OUTPUT = "dist/qcow2pipe.js";

/** The `deno bundle` arguments of the bundle task. */
async function taskArgs(): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  const args = String(config.tasks.bundle).split(/\s+/);
  if (
    args[0] !== "deno" || args[1] !== "bundle" || !args.includes(TASK_OUTPUT)
  ) {
    throw new Error(
      `the bundle task is not "deno bundle ... ${TASK_OUTPUT} ...": ${config.tasks.bundle}`,
    );
  }
  return args.slice(1);
}

/**
 * Runs the bundle task's `deno bundle` with `-o out` (and `extra`
 * arguments); returns the path.
 */
export async function buildBundle(
  out: string,
  extra: string[] = [],
): Promise<string> {
  const args = (await taskArgs()).map((a) => a === TASK_OUTPUT ? out : a);
  const result = await new Deno.Command(Deno.execPath(), {
    args: [...args.slice(0, -1), ...extra, args[args.length - 1]],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!result.success) {
    throw new Error(
      `deno ${args.join(" ")} failed: ${
        new TextDecoder().decode(result.stderr)
      }`,
    );
  }
  return out;
}
