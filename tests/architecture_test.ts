// The shape of lib/, checked: the folders form layers that import only
// downward, no file reaches into another folder's private (`_`) files, and
// the runtime-neutral layers name no Deno API. The picture in the README's
// "Library" section is LAYERS below, drawn.
import assert from "node:assert";
import { dirname, join, normalize, relative } from "node:path";

const LIB = normalize(new URL("../lib", import.meta.url).pathname);

/**
 * lib/'s folders from the bottom up. A file may import files of its own
 * folder and of folders on a lower line; folders on one line may not import
 * each other. "." is lib/'s own files (convert.ts and friends).
 */
const LAYERS: readonly (readonly string[])[] = [
  ["bytes"],
  ["format"],
  ["codec"],
  ["io"],
  ["host", "node"],
  ["reader"],
  ["writer"],
  ["sparsify", "tools"],
  ["."],
  ["cli"],
];

/** Folders whose code runs in any runtime: no `Deno.` outside comments. */
const NEUTRAL = [
  "bytes",
  "format",
  "codec",
  "io",
  "reader",
  "writer",
  "sparsify",
  "tools",
];

/**
 * The runtime-neutral entry points (what the browser bundle and other
 * runtimes import): nothing they reach, however indirectly, is in lib/host.
 */
const NEUTRAL_ENTRIES = ["core.ts", "lib/tools/mod.ts", "lib/format/mod.ts"];

interface Source {
  /** Path relative to lib/. */
  path: string;
  /** The code with comments and string contents removed. */
  code: string;
  /** Relative specifiers imported (static, dynamic, side effect, workers). */
  imports: string[];
}

/**
 * Splits TypeScript into code and string literals, dropping comments, so an
 * import written in a doc example is not taken for one in the code.
 */
function scan(text: string): { code: string; strings: Map<number, string> } {
  let code = "";
  const strings = new Map<number, string>();
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const next = text[i + 1];
    if (c === "/" && next === "/") {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (c === "/" && next === "*") {
      const end = text.indexOf("*/", i + 2);
      i = end < 0 ? text.length : end + 2;
    } else if (c === '"' || c === "'" || c === "`") {
      let j = i + 1;
      let value = "";
      while (j < text.length && text[j] !== c) {
        if (text[j] === "\\") j++;
        value += text[j];
        j++;
      }
      strings.set(code.length, value);
      code += `${c}${c}`;
      i = j + 1;
    } else {
      code += c;
      i++;
    }
  }
  return { code, strings };
}

function importsOf(text: string): { code: string; imports: string[] } {
  const { code, strings } = scan(text);
  const imports: string[] = [];
  const patterns = [
    /\bfrom\s*(["'])\1/g,
    /\bimport\s*(["'])\1/g,
    /\bimport\s*\(\s*(["'`])\1\s*\)/g,
    /\bnew\s+URL\s*\(\s*(["'`])\1\s*,\s*import\.meta\.url/g,
  ];
  for (const pattern of patterns) {
    for (const match of code.matchAll(pattern)) {
      const at = match.index + match[0].indexOf(match[1]);
      const spec = strings.get(at);
      if (spec !== undefined && spec.startsWith(".")) imports.push(spec);
    }
  }
  return { code, imports };
}

async function sources(): Promise<Source[]> {
  const out: Source[] = [];
  async function walk(dir: string) {
    for await (const entry of Deno.readDir(dir)) {
      const path = join(dir, entry.name);
      if (entry.isDirectory) await walk(path);
      else if (/\.(ts|js)$/.test(entry.name)) {
        const { code, imports } = importsOf(await Deno.readTextFile(path));
        out.push({ path: relative(LIB, path), code, imports });
      }
    }
  }
  await walk(LIB);
  return out.sort((a, b) => a.path.localeCompare(b.path));
}

/** The top folder of a path relative to lib/, "." for lib/'s own files. */
function folderOf(path: string): string {
  const parts = path.split("/");
  return parts.length === 1 ? "." : parts[0];
}

function layerOf(folder: string): number {
  const index = LAYERS.findIndex((line) => line.includes(folder));
  return index;
}

function targets(source: Source): string[] {
  return source.imports.map((spec) =>
    normalize(join(dirname(source.path), spec))
  );
}

const ALL = await sources();

Deno.test("the scanner sees imports in code and none in comments or strings", () => {
  const { imports } = importsOf(`
    import { a } from "./a.ts";
    import type { B } from '../b/b.ts';
    export * from "./c.ts";
    import "./d.ts";
    const e = await import("./e.ts");
    const w = new URL("./w.ts", import.meta.url);
    // import { x } from "./no1.ts";
    /** @example
     * import { y } from "../no2.ts";
     */
    const s = 'from "./no3.ts"';
  `);
  assert.deepStrictEqual(imports.sort(), [
    "../b/b.ts",
    "./a.ts",
    "./c.ts",
    "./d.ts",
    "./e.ts",
    "./w.ts",
  ]);
});

Deno.test("every folder of lib/ has a place in the layers", () => {
  const folders = new Set(ALL.map((s) => folderOf(s.path)));
  const missing = [...folders].filter((f) => layerOf(f) < 0);
  assert.deepStrictEqual(missing, [], "add these folders to LAYERS");
});

Deno.test("lib/'s folders import only from their own layer's folder or below", () => {
  const upward: string[] = [];
  for (const source of ALL) {
    const from = folderOf(source.path);
    for (const target of targets(source)) {
      if (target.startsWith("..")) continue; // outside lib/ (none expected)
      const to = folderOf(target);
      if (to === from) continue;
      if (layerOf(to) >= layerOf(from)) {
        upward.push(`${source.path} -> ${target}`);
      }
    }
  }
  assert.deepStrictEqual(upward, []);
});

Deno.test("no file imports another folder's private (_) file", () => {
  const reaching: string[] = [];
  for (const source of ALL) {
    for (const target of targets(source)) {
      const name = target.split("/").at(-1)!;
      const owner = dirname(target);
      const inside = owner === "." ||
        dirname(source.path) === owner ||
        dirname(source.path).startsWith(owner + "/");
      if (name.startsWith("_") && !inside) {
        reaching.push(`${source.path} -> ${target}`);
      }
    }
  }
  assert.deepStrictEqual(reaching, []);
});

Deno.test("the runtime-neutral layers name no Deno API", () => {
  const using = ALL.filter((s) =>
    NEUTRAL.includes(folderOf(s.path)) && /\bDeno\s*\./.test(s.code)
  ).map((s) => s.path);
  assert.deepStrictEqual(using, []);
});

Deno.test("the runtime-neutral entry points reach no host file, however indirectly", async () => {
  const root = dirname(LIB);
  const reached = new Set<string>();
  const queue = NEUTRAL_ENTRIES.map((entry) => join(root, entry));
  while (queue.length > 0) {
    const path = queue.pop()!;
    if (reached.has(path)) continue;
    reached.add(path);
    const { imports } = importsOf(await Deno.readTextFile(path));
    for (const spec of imports) {
      queue.push(normalize(join(dirname(path), spec)));
    }
  }
  const host = [...reached].map((path) => relative(LIB, path))
    .filter((path) => ["host", "node"].includes(folderOf(path)));
  assert.ok(reached.size > 50, `only ${reached.size} files reached`);
  assert.deepStrictEqual(host, []);
});
