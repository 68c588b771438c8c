/**
 * The npm package's entry for Node: the library of mod.ts (files by path
 * on `node:fs`), its codec pool on `worker_threads`. Bundlers and browsers
 * get core.ts (the package's `default` export condition).
 *
 * @module
 */
import { runsCodecJobs } from "../lib/node/threads.ts";

runsCodecJobs();

export * from "../mod.ts";
