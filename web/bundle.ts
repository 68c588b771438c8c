// What `deno task bundle` puts in dist/qcow2pipe.js: the runtime-neutral
// core, the inspection tools (map and compare ask the host for holes only
// where a runtime has installed file access), and the format probe. The
// import map of web/index.html maps "@qcow2pipe/qcow2pipe/core", ".../tools"
// and ".../format" to it.

export * from "../core.ts";
export * from "../lib/tools/mod.ts";
export { hasQcow2Magic } from "../lib/format/header.ts";
