// The shape of lib/, checked: the folders form layers that import only
// downward, no file reaches into another folder's private (`_`) files, and
// the runtime-neutral layers name no Deno API, and what the browser bundle
// reaches uses no built-in Chromium or Node 20 lacks. The picture in the README's
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

/**
 * Every file the entry points (paths from the repository's root) reach
 * through relative imports, however indirectly, as absolute paths.
 */
async function reachedFrom(entries: string[]): Promise<Set<string>> {
  const root = dirname(LIB);
  const reached = new Set<string>();
  const queue = entries.map((entry) => join(root, entry));
  while (queue.length > 0) {
    const path = queue.pop()!;
    if (reached.has(path)) continue;
    reached.add(path);
    const { imports } = importsOf(await Deno.readTextFile(path));
    for (const spec of imports) {
      queue.push(normalize(join(dirname(path), spec)));
    }
  }
  return reached;
}

Deno.test("the runtime-neutral entry points reach no host file, however indirectly", async () => {
  const reached = await reachedFrom(NEUTRAL_ENTRIES);
  const host = [...reached].map((path) => relative(LIB, path))
    .filter((path) => ["host", "node"].includes(folderOf(path)));
  assert.ok(reached.size > 50, `only ${reached.size} files reached`);
  assert.deepStrictEqual(host, []);
});

/**
 * Built-ins (and syntax) that a runtime the core runs on lacks, each with
 * who lacks it: Chromium 156 (what tests/portable/ drives) and Node 20
 * (the oldest Node the package supports). lib/bytes/portable.ts has what
 * to use instead of the first two.
 */
const UNPORTABLE: readonly [RegExp, string][] = [
  [/\bReadableStream\s*\.\s*from\b/, "Chromium (streamFrom)"],
  [/\bPromise\s*\.\s*withResolvers\b/, "Node 20 (deferred)"],
  [/\bPromise\s*\.\s*try\b/, "Node 20"],
  [/\bArray\s*\.\s*fromAsync\b/, "Node 20"],
  [/\b(?:from|to|setFrom)(?:Base64|Hex)\b/, "Node 20"],
  [/(?<![.\w$])Iterator\s*\./, "Node 20 (iterator helpers)"],
  [/\.toArray\s*\(/, "Node 20 (iterator helpers)"],
  [
    /\.(?:union|intersection|difference|symmetricDifference|isSubsetOf|isSupersetOf|isDisjointFrom)\s*\(/,
    "Node 20 (Set methods)",
  ],
  [/\b(?:Object|Map)\s*\.\s*groupBy\b/, "Node 20"],
  [/\bRegExp\s*\.\s*escape\b|\bError\s*\.\s*isError\b/, "Node 20"],
  [
    /\bMath\s*\.\s*sumPrecise\b|(?<![.\w$])(?:Float16Array|Temporal)\b/,
    "Node 20",
  ],
  [/\bSymbol\s*\.\s*metadata\b/, "Chromium"],
  [
    /(?<![.\w$])(?:setImmediate|clearImmediate|process|Buffer|global)\b/,
    "Chromium (Node globals)",
  ],
  [/(?<![.\w$])SharedArrayBuffer\b/, "Chromium without cross-origin isolation"],
  [/\.unref\s*\(/, "Chromium (timers and ports have no unref)"],
  [/\b(?:await\s+)?using\s+[\w$]+\s*=/, "Node 20 (using declarations)"],
];

/** What the browser bundle, core.ts and the other neutral entries reach. */
const PORTABLE_ENTRIES = [
  ...NEUTRAL_ENTRIES,
  "lib/sparsify/mod.ts",
  "web/bundle.ts",
];

Deno.test("the unportable-built-in list catches each use it names, and not in comments or strings", () => {
  const code = (text: string) => importsOf(text).code;
  const caught = (text: string) =>
    UNPORTABLE.filter(([pattern]) => pattern.test(code(text))).length;
  for (
    const use of [
      "ReadableStream.from([x])",
      "const { promise } = Promise.withResolvers<void>();",
      "await Array.fromAsync(it)",
      "Uint8Array.fromBase64(s)",
      "it.values().toArray()",
      "a.union(b)",
      "setImmediate(f)",
      "timer.unref()",
      "await using image = await openImage(x);",
    ]
  ) {
    assert.strictEqual(caught(use), 1, use);
  }
  for (
    const fine of [
      "// ReadableStream.from([x]) where it exists",
      "const s = 'Promise.withResolvers';",
      "this.process(x); options.global; la.take(n);",
      "const using = 1; streamFrom([x]);",
    ]
  ) {
    assert.strictEqual(caught(fine), 0, fine);
  }
});

Deno.test("nothing the runtime-neutral entries reach uses a built-in Chromium or Node 20 lacks", async () => {
  const root = dirname(LIB);
  const found: string[] = [];
  const reached = await reachedFrom(PORTABLE_ENTRIES);
  for (const path of reached) {
    const { code } = importsOf(await Deno.readTextFile(path));
    for (const [pattern, who] of UNPORTABLE) {
      const match = code.match(pattern);
      if (match) found.push(`${relative(root, path)}: ${match[0]} (${who})`);
    }
  }
  assert.ok(reached.size > 100, `only ${reached.size} files reached`);
  assert.deepStrictEqual(found, []);
});
