// What `deno task bundle` puts in dist/qcow2pipe.js: the runtime-neutral
// core, the inspection tools (map and compare ask the host for holes only
// where a runtime has installed file access), the format probe, and the
// free-space map (sparsify). The import map of web/index.html maps
// "@qcow2pipe/qcow2pipe/core", ".../tools", ".../format" and ".../sparsify"
// to it.

export * from "../core.ts";
export * from "../lib/tools/mod.ts";
export { hasQcow2Magic } from "../lib/format/header.ts";
export * from "../lib/sparsify/mod.ts";
