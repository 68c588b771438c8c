// Runs the command line in this process, then prints its peak resident
// memory (VmHWM, in KiB) on stdout: the packed-input tests compare it
// between a small and a large input.
import { main } from "../../lib/cli/main.ts";

const code = await main(Deno.args);
const status = await Deno.readTextFile("/proc/self/status");
const hwm = /VmHWM:\s+(\d+) kB/.exec(status)?.[1];
console.log(JSON.stringify({ code, peakKiB: Number(hwm) }));
Deno.exit(code);
