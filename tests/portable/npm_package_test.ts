// The npm package as a Node user gets it: npm/build.ts lays it out and
// `npm pack` packs it; the tarball is installed into an empty folder, and
// `npx qcow2pipe` converts (raw, qcow2 and VMDK in; zstd and zlib qcow2 and
// raw out), describes, checks, maps and compares there, with a PATH that
// holds node and npm and no deno. qemu-img judges every output.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import { NODE, QEMU, toolTest } from "../_tools.ts";
import { MiB, mixedBytes } from "../writer/_helpers.ts";
import { buildPackage, packPackage } from "../../npm/build.ts";
import ts from "typescript";

/** Where a program is found on this machine's PATH. */
async function which(name: string): Promise<string> {
  const out = await new Deno.Command("sh", {
    args: ["-c", `command -v ${name}`],
    stdout: "piped",
  }).output();
  const path = new TextDecoder().decode(out.stdout).trim();
  assert.ok(out.success && path, `${name} is not on the PATH`);
  return Deno.realPath(path);
}

/**
 * An environment whose PATH is one folder holding node, npm, npx, sh and
 * head (links to this machine's), so that no deno can be found.
 */
async function nodeOnlyEnv(root: string): Promise<Record<string, string>> {
  const bin = join(root, "bin");
  await Deno.mkdir(bin);
  for (const name of ["node", "npm", "npx", "sh", "head"]) {
    await Deno.symlink(await which(name), join(bin, name));
  }
  const home = join(root, "home");
  await Deno.mkdir(home);
  return {
    PATH: bin,
    HOME: home,
    npm_config_cache: join(root, "npm-cache"),
    npm_config_update_notifier: "false",
    NO_COLOR: "1",
  };
}

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function inFolder(
  cwd: string,
  env: Record<string, string>,
  cmd: string,
  args: string[],
): Promise<Ran> {
  const out = await new Deno.Command(join(env.PATH, cmd), {
    args,
    cwd,
    env,
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return {
    code: out.code,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
  };
}

/**
 * What TypeScript (strict, the declarations of packages checked too) says
 * of `file`, resolving packages as Node does or as a bundler does: one
 * `TSnnnn: message` line each.
 */
function typeErrors(file: string, resolution: "node" | "bundler"): string[] {
  const node = resolution === "node";
  const program = ts.createProgram([file], {
    strict: true,
    noEmit: true,
    skipLibCheck: false,
    target: ts.ScriptTarget.ES2022,
    module: node ? ts.ModuleKind.NodeNext : ts.ModuleKind.ESNext,
    moduleResolution: node
      ? ts.ModuleResolutionKind.NodeNext
      : ts.ModuleResolutionKind.Bundler,
    lib: ["lib.esnext.d.ts", "lib.dom.d.ts"],
    types: [],
  });
  return ts.getPreEmitDiagnostics(program).map((d) =>
    `TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`
  );
}

toolTest(
  "npm: the packed tarball installs into an empty folder and npx qcow2pipe convert, info, check, map, compare run there without deno; qemu-img judges",
  [NODE, QEMU],
  async () => {
    await using dir = await tempDir();
    const env = await nodeOnlyEnv(dir.path);
    const pkg = await buildPackage(join(dir.path, "package"));
    const tarball = await packPackage(pkg, env);
    const app = join(dir.path, "app");
    await Deno.mkdir(app);

    const install = await inFolder(app, env, "npm", [
      "install",
      "--offline",
      "--no-audit",
      "--no-fund",
      tarball,
    ]);
    assert.strictEqual(install.code, 0, install.stderr);
    const qcow2pipe = async (...args: string[]) => {
      const ran = await inFolder(app, env, "npx", ["qcow2pipe", ...args]);
      // Nothing from Node itself (experimental or deprecation warnings).
      assert.doesNotMatch(ran.stderr, /Warning|node:/, ran.stderr);
      return ran;
    };
    const ok = async (...args: string[]) => {
      const ran = await qcow2pipe(...args);
      assert.strictEqual(
        ran.code,
        0,
        `qcow2pipe ${args.join(" ")}: ${ran.stderr}`,
      );
      return ran.stdout;
    };
    assert.match(await ok("--version"), /^qcow2pipe \d+\.\d+\.\d+\n$/);

    // Inputs: raw with data, zeros and a hole; qcow2 (zlib) and VMDK by QEMU.
    const raw = mixedBytes(6 * MiB + 4096, 2028);
    const at = (name: string) => join(app, name);
    await Deno.writeFile(at("disk.raw"), raw);
    await Deno.truncate(at("disk.raw"), 10 * MiB);
    await qemuImg(
      "convert",
      "-c",
      "-O",
      "qcow2",
      at("disk.raw"),
      at("qemu.qcow2"),
    );
    await qemuImg("convert", "-O", "vmdk", at("disk.raw"), at("qemu.vmdk"));

    // A sparse raw input is read whole under Node (no SEEK_DATA), and the
    // notice says why without naming a Deno flag.
    const sparse = await qcow2pipe(
      "convert",
      "-O",
      "qcow2",
      "disk.raw",
      "s.qcow2",
    );
    assert.strictEqual(sparse.code, 0, sparse.stderr);
    assert.match(sparse.stderr, /holes cannot be skipped under Node/);
    assert.doesNotMatch(sparse.stderr, /--allow-ffi/);
    await qemuCompareIdentical(at("disk.raw"), at("s.qcow2"));

    // raw -> qcow2 with each codec, on worker threads (-m 2).
    for (const type of ["zstd", "zlib"]) {
      const out = `${type}.qcow2`;
      await ok(
        "convert",
        "-m",
        "2",
        "-c",
        "-o",
        `compression_type=${type}`,
        "-O",
        "qcow2",
        "disk.raw",
        out,
      );
      await qemuCompareIdentical(at("disk.raw"), at(out));
      const check = await qemuCheckClean(at(out));
      assert.ok(
        (check["compressed-clusters"] ?? 0) > 0,
        `${out}: nothing compressed`,
      );
      const info = JSON.parse(await qemuImg("info", "--output=json", at(out)));
      assert.strictEqual(info.format, "qcow2");
      assert.strictEqual(info["virtual-size"], 10 * MiB);
      assert.strictEqual(
        info["format-specific"].data["compression-type"],
        type,
      );
    }
    // Other formats -> qcow2, and qcow2 -> raw (sparse: the hole stays one).
    await ok("convert", "-O", "qcow2", "qemu.vmdk", "from-vmdk.qcow2");
    await qemuCompareIdentical(at("disk.raw"), at("from-vmdk.qcow2"));
    await qemuCheckClean(at("from-vmdk.qcow2"));
    for (const source of ["qemu.qcow2", "zstd.qcow2"]) {
      await ok("convert", "-O", "raw", source, "back.raw");
      assert.deepStrictEqual(
        await Deno.readFile(at("back.raw")),
        await Deno.readFile(at("disk.raw")),
        `${source} -> raw`,
      );
      const { blocks } = await Deno.stat(at("back.raw"));
      assert.ok(blocks! * 512 < 10 * MiB, `back.raw is not sparse`);
    }

    // qcow2 to standard output (the streamable layout, written in order).
    const piped = await inFolder(app, env, "sh", [
      "-c",
      "npx qcow2pipe convert -c -O qcow2 disk.raw - > piped.qcow2",
    ]);
    assert.strictEqual(piped.code, 0, piped.stderr);
    await qemuCompareIdentical(at("disk.raw"), at("piped.qcow2"));
    await qemuCheckClean(at("piped.qcow2"));

    // A reader that goes away: one line, as under Deno (no stack trace).
    const cut = await inFolder(app, env, "sh", [
      "-c",
      "npx qcow2pipe convert -q -c -O qcow2 disk.raw - | head -c 1 >/dev/null",
    ]);
    assert.match(
      cut.stderr,
      /^qcow2pipe: Cannot write to standard output at offset \d+: broken pipe \(os error 32\)\n$/,
    );

    // The library: Node gets mod.js (files by path, the pool on
    // worker_threads), and core.js is there for bundlers.
    const library = await inFolder(app, env, "node", [
      "--input-type=module",
      "-e",
      `import { CodecPool, openImage } from "qcow2pipe";
      import * as core from "qcow2pipe/core";
      const pool = new CodecPool({ workers: 2 }); // Node 20: no await using
      const ones = new Uint8Array(65536).fill(1);
      const { lengths } = await pool.compress({ type: "zstd" }, ones, 65536);
      const image = await openImage("zstd.qcow2");
      console.log(JSON.stringify({
        workers: pool.size, compressed: lengths[0] > 0 && lengths[0] < 65536,
        size: image.virtualSize, core: typeof core.convert,
        fileAccess: typeof core.FileSource,
      }));
      await pool.close();
      await image.close();`,
    ]);
    assert.strictEqual(library.code, 0, library.stderr);
    assert.deepStrictEqual(JSON.parse(library.stdout), {
      workers: 2,
      compressed: true,
      size: 10 * MiB,
      core: "function",
      fileAccess: "undefined",
    });

    // TypeScript: the installed package's declarations, as a Node project
    // (the `node` condition: mod.ts's API; `.mts`: an ES module whatever
    // the folder's package.json says) and as a bundler project (the
    // `default` condition: core.ts's) resolve them, every .d.ts checked.
    await Deno.writeTextFile(
      at("typed.mts"),
      `import { CodecPool, FileSource, openImage, type GuestImage } from "qcow2pipe";
      import { convert, type ConvertSummary } from "qcow2pipe/core";
      export async function size(path: string): Promise<number> {
        const image: GuestImage = await openImage(await FileSource.open(path));
        await using pool = new CodecPool({ workers: 1 });
        const summary: ConvertSummary | undefined = undefined;
        return image.virtualSize + pool.size + (summary ? 1 : 0) + convert.length;
      }`,
    );
    assert.deepStrictEqual(typeErrors(at("typed.mts"), "node"), []);
    // Wrong uses are refused: the declarations are types, not `any`; a
    // bundler gets core.ts's API, which reads no file by path.
    await Deno.writeTextFile(
      at("wrong.mts"),
      `import { openImage } from "qcow2pipe";
      export const n: string = (await openImage("a.qcow2")).virtualSize;`,
    );
    assert.deepStrictEqual(typeErrors(at("wrong.mts"), "node"), [
      "TS2322: Type 'number' is not assignable to type 'string'.",
    ]);
    await Deno.writeTextFile(
      at("bundled.mts"),
      `import { FileSource, openImage } from "qcow2pipe";
      export const both = [FileSource, openImage];`,
    );
    assert.deepStrictEqual(typeErrors(at("bundled.mts"), "bundler"), [
      `TS2305: Module '"qcow2pipe"' has no exported member 'FileSource'.`,
    ]);

    // info and map say what qemu-img says; check finds no error.
    const ours = JSON.parse(await ok("info", "--output=json", "zstd.qcow2"));
    const theirs = JSON.parse(
      await qemuImg("info", "--output=json", at("zstd.qcow2")),
    );
    for (
      const key of ["format", "virtual-size", "cluster-size", "actual-size"]
    ) {
      assert.strictEqual(ours[key], theirs[key], `info ${key}`);
    }
    assert.deepStrictEqual(ours["format-specific"], theirs["format-specific"]);
    assert.deepStrictEqual(
      JSON.parse(await ok("map", "--output=json", "zlib.qcow2")),
      JSON.parse(await qemuImg("map", "--output=json", at("zlib.qcow2"))),
    );
    assert.match(
      await ok("check", "zstd.qcow2"),
      /No errors were found on the image\./,
    );
    assert.match(
      await ok("compare", "disk.raw", "zstd.qcow2"),
      /Images are identical\./,
    );

    // A difference, and a missing file: qemu-img's exit codes, one line.
    const changed = raw.slice();
    changed[5000] ^= 1;
    await Deno.writeFile(at("changed.raw"), changed);
    const differ = await qcow2pipe("compare", "changed.raw", "zstd.qcow2");
    const qemu = await runStatus("qemu-img", [
      "compare",
      at("changed.raw"),
      at("zstd.qcow2"),
    ]);
    assert.deepStrictEqual([differ.code, differ.stdout], [
      qemu.code,
      qemu.stdout,
    ]);
    const missing = await qcow2pipe("info", "missing.qcow2");
    assert.strictEqual(missing.code, 1);
    assert.strictEqual(
      missing.stderr,
      "qcow2pipe: Cannot open image missing.qcow2: no such file\n",
    );
  },
);
