/**
 * Builds the npm package into dist/npm/ (and, with `--pack`, packs it
 * there with `npm pack`): `deno task npm`.
 *
 * Each entry is bundled by `deno bundle` (which resolves the `npm:`
 * imports and deno.json), then by esbuild, which lowers the syntax Node 20
 * lacks (`await using`) and, for the Node entries, binds every `Deno` of
 * the code to lib/node/deno.ts (its `inject` option, lib/node/inject.ts): the same lib/host
 * and lib/cli code runs on `node:fs`, with nothing put on `globalThis`.
 * dist/npm/package.json is npm/manifest.json with deno.json's version (a
 * package.json in npm/ would be taken by Deno for a workspace member).
 *
 * @module
 */
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";
import { join } from "node:path";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
/** Where the package is laid out (gitignored). */
export const PACKAGE_DIR = join(ROOT, "dist", "npm");

/** The package's files: what each is built from, and for which platform. */
const ENTRIES = [
  { entry: "npm/cli.ts", out: "cli.js", node: true },
  { entry: "npm/mod.ts", out: "mod.js", node: true },
  { entry: "core.ts", out: "core.js", node: false },
] as const;

async function run(
  cmd: string,
  args: string[],
  cwd = ROOT,
  env?: Record<string, string>,
): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    env,
    clearEnv: env !== undefined,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed: ${text.decode(out.stderr)}`,
    );
  }
  return text.decode(out.stdout);
}

/**
 * Lays the package out in `dir` (emptied first): cli.js (the `qcow2pipe`
 * bin), mod.js (Node), core.js (bundlers and browsers), package.json,
 * README.md.
 *
 * @param dir Where (default dist/npm/).
 * @returns The package directory.
 * @throws {Error} When `deno bundle` or esbuild fails, naming the step.
 */
export async function buildPackage(dir = PACKAGE_DIR): Promise<string> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  const work = await Deno.makeTempDir({ prefix: "qcow2pipe-npm-" });
  try {
    for (const { entry, out, node } of ENTRIES) {
      const bundled = join(work, out);
      await run(Deno.execPath(), [
        "bundle",
        "--quiet",
        "--platform",
        node ? "deno" : "browser",
        "--keep-names",
        "-o",
        bundled,
        entry,
      ]);
      await esbuild.build({
        entryPoints: [bundled],
        outfile: join(dir, out),
        bundle: true,
        format: "esm",
        platform: node ? "node" : "neutral",
        target: node ? "node20" : "es2022",
        external: ["node:*"],
        inject: node ? [join(ROOT, "lib/node/inject.ts")] : [],
        // Smaller and faster to start (Node compiles the whole file).
        minify: true,
        // Error classes are told apart by name (lib/io/os_errors.ts).
        keepNames: true,
        banner: out === "cli.js" ? { js: "#!/usr/bin/env node" } : undefined,
        logLevel: "error",
      });
    }
  } finally {
    await esbuild.stop();
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
  const config = JSON.parse(await Deno.readTextFile(join(ROOT, "deno.json")));
  const manifest = JSON.parse(
    await Deno.readTextFile(join(ROOT, "npm/manifest.json")),
  );
  const { name, description, ...rest } = manifest;
  await Deno.writeTextFile(
    join(dir, "package.json"),
    JSON.stringify(
      { name, version: config.version, description, ...rest },
      null,
      2,
    ) + "\n",
  );
  await Deno.copyFile(join(ROOT, "README.md"), join(dir, "README.md"));
  return dir;
}

/**
 * Runs `npm pack` on a package laid out by {@linkcode buildPackage}.
 *
 * @param dir The package directory, where the tarball goes too.
 * @param env The environment npm runs in (default: this process's).
 * @returns The tarball's path.
 * @throws {Error} When `npm pack` fails, with its error output.
 */
export async function packPackage(
  dir = PACKAGE_DIR,
  env?: Record<string, string>,
): Promise<string> {
  const pack = ["pack", "--json", "--pack-destination", dir];
  const npm = env ? `${env.PATH}/npm` : "npm";
  const [report] = JSON.parse(await run(npm, pack, dir, env));
  return join(dir, report.filename);
}

if (import.meta.main) {
  await buildPackage();
  console.log(Deno.args.includes("--pack") ? await packPackage() : PACKAGE_DIR);
}
