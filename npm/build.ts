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
 * TypeScript's compiler writes the declarations of mod.ts and core.ts (and
 * of every file they reach) under types/, for the package's `types`
 * conditions.
 *
 * @module
 */
import * as esbuild from "esbuild";
import ts from "typescript";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

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
    await writeDeclarations(dir, work);
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

/** The entries whose declarations the package holds (its `types`). */
const DECLARED = ["mod.ts", "core.ts"];

/**
 * A declaration file's relative imports as a Node resolver finds them:
 * `./x.ts` becomes `./x.js`, which TypeScript resolves to `./x.d.ts`.
 */
function nodeSpecifiers(text: string): string {
  return text.replace(
    /((?:from\s+|import\()(["']))(\.{1,2}\/[^"'\n]*)\.ts\2/g,
    "$1$3.js$2",
  );
}

/**
 * Writes the declarations (`.d.ts`) of {@linkcode DECLARED} and of every
 * file they reach into `dir`/types, laid out as the sources are. The
 * compiler reads Deno's own declarations (`deno types`, written into
 * `work`) for the names lib/host uses; nothing is type-checked here
 * (`deno check` does that), only declared.
 *
 * @throws {Error} With the compiler's messages when it reports any.
 */
async function writeDeclarations(dir: string, work: string): Promise<void> {
  const denoTypes = join(work, "lib.deno.d.ts");
  await Deno.writeTextFile(denoTypes, await run(Deno.execPath(), ["types"]));
  const options: ts.CompilerOptions = {
    declaration: true,
    emitDeclarationOnly: true,
    noCheck: true,
    allowImportingTsExtensions: true,
    resolveJsonModule: true,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    target: ts.ScriptTarget.ES2022,
    lib: ["lib.esnext.d.ts", "lib.dom.d.ts"],
    types: [],
    strict: true,
    skipLibCheck: true,
    rootDir: ROOT,
    outDir: join(dir, "types"),
  };
  const roots = [...DECLARED.map((f) => join(ROOT, f)), denoTypes];
  const program = ts.createProgram(roots, options);
  const written: Promise<void>[] = [];
  const result = program.emit(undefined, (path, text) => {
    written.push(
      Deno.mkdir(dirname(path), { recursive: true }).then(() =>
        Deno.writeTextFile(path, nodeSpecifiers(text))
      ),
    );
  });
  await Promise.all(written);
  const problems = [
    ...program.getOptionsDiagnostics(),
    ...program.getSyntacticDiagnostics(),
    ...result.diagnostics,
  ];
  if (problems.length > 0) {
    const host = {
      getCanonicalFileName: (f: string) => f,
      getCurrentDirectory: () => ROOT,
      getNewLine: () => "\n",
    };
    throw new Error(
      `declarations failed: ${ts.formatDiagnostics(problems, host)}`,
    );
  }
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
