// The bundle (`deno task bundle`: core.ts and its dependencies in one ES
// module) holds only runtime-neutral code: no Deno API, none of the file,
// spool or CLI modules, and no import but the optional `node:zlib`. The
// Node and Chromium tests run it; this one reads it.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { buildBundle } from "../_bundle.ts";

/** Modules that use Deno's APIs (or the CLI): never in the bundle. */
const DENO_ONLY = [
  "lib/host/",
  "lib/reader/stream_open.ts",
  "lib/reader/expand_to_path.ts",
  "lib/writer/streamable.ts",
  "lib/file_writable.ts",
  "lib/cli/",
  "mod.ts",
];

/**
 * `node:` modules the bundle may name. zstd-codec's Emscripten loader
 * `require`s fs, path and crypto in its Node branch (lib/codec/_zstd_wasm.ts
 * lends it a stand-in `require`); node:zlib is imported when present.
 */
const NODE_NAMES = ["node:crypto", "node:fs", "node:path", "node:zlib"];

Deno.test("bundle: one ES module of runtime-neutral code, importing only node:zlib (optional)", async () => {
  await using dir = await tempDir();
  const path = await buildBundle(join(dir.path, "qcow2pipe.js"), [
    "--sourcemap=external",
  ]);
  const code = await Deno.readTextFile(path);
  const sources: string[] = JSON.parse(
    await Deno.readTextFile(`${path}.map`),
  ).sources;
  const gzip = await new Response(
    new Blob([code]).stream().pipeThrough(new CompressionStream("gzip")),
  ).arrayBuffer();
  console.log(
    `bundle: ${code.length} bytes, ${gzip.byteLength} gzipped, ${sources.length} modules`,
  );

  // What went in: the core, fflate, zstd-codec's WebAssembly binding and
  // xz-decompress (xz downloads) only.
  const ours = sources.filter((s) => !s.includes("/npm/"))
    .map((s) => s.replace(/^.*?\/(lib\/|core\.ts)/, "$1"));
  assert.ok(ours.includes("lib/reader/open.ts"));
  assert.ok(ours.includes("lib/writer/qcow2_writer.ts"));
  assert.ok(ours.includes("lib/codec/pool.ts"));
  for (const deno of DENO_ONLY) {
    assert.ok(
      !ours.some((s) => s.startsWith(deno)),
      `${deno} is in the bundle`,
    );
  }
  const npm = sources.filter((s) => s.includes("/npm/"))
    .map((s) => s.replace(/^.*\/npm\/registry\.npmjs\.org\//, ""));
  assert.deepStrictEqual(npm.sort(), [
    "fflate/0.8.2/esm/browser.js",
    "xz-decompress/0.2.3/dist/package/xz-decompress.js",
    "zstd-codec/0.1.5/lib/zstd-codec-binding-wasm.js",
  ]);

  // No Deno API anywhere in the code.
  assert.doesNotMatch(code, /\bDeno\s*[.[]/);
  // No static import; one dynamic import, of node:zlib.
  assert.doesNotMatch(code, /(?:^|[;}\n])\s*import\s*[{*\w"']/);
  const dynamic = [...code.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)]
    .map((m) => m[1]);
  assert.deepStrictEqual(dynamic, ["node:zlib"]);
  const nodeNames = [...new Set(code.match(/"node:[a-z_/]+"/g))]
    .map((s) => s.slice(1, -1)).sort();
  assert.deepStrictEqual(nodeNames, NODE_NAMES);

  // It exports the core's API.
  for (const name of ["convert", "openImage", "CodecPool", "BlobSource"]) {
    assert.match(code, new RegExp(`\\bas ${name}\\b`), `exports ${name}`);
  }
});
