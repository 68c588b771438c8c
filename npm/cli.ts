/**
 * The npm package's `qcow2pipe` command: lib/cli under Node, the same
 * commands and options as `deno run -A cli.ts`. In a thread that the codec
 * pool started (this file is its script), it serves codec jobs instead.
 *
 * @module
 */
import process from "node:process";
import { runsCodecJobs } from "../lib/node/threads.ts";
import { main } from "../lib/cli/main.ts";

if (!runsCodecJobs()) process.exit(await main(process.argv.slice(2)));
