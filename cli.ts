/**
 * The qcow2pipe command line: `deno run -A cli.ts COMMAND [options]`.
 * Run with `--help` for the commands.
 *
 * @module
 */
import { main } from "./lib/cli/main.ts";

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
