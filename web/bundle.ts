// What `deno task bundle` puts in dist/qcow2pipe.js: the runtime-neutral
// core and the inspection tools that need no file system (info and check;
// map and compare ask the host for holes), and the format probe. The import
// map of web/index.html maps "@qcow2pipe/qcow2pipe/core", ".../tools" and
// ".../format" to it.

export * from "../core.ts";
// The tools one by one: lib/tools/mod.ts would bring map and compare.
export { type ImageInfo, imageInfo } from "../lib/tools/info.ts";
export { formatImageInfo } from "../lib/tools/info_text.ts";
export { checkImage, type CheckResult } from "../lib/tools/check.ts";
export { formatCheckResult } from "../lib/tools/check_text.ts";
export { hasQcow2Magic } from "../lib/format/header.ts";
