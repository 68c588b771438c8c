// Command dispatch for the qcow2pipe CLI.
import { convertCommand } from "./convert_cmd.ts";
import { demoCommand } from "./demo.ts";
import { describeError, warn } from "./_util.ts";
import { liveTemporaryFiles } from "../../mod.ts";

export const HELP = `Usage: qcow2pipe COMMAND [options]

Commands:
  convert   convert raw <-> qcow2 (sparse or zlib/zstd compressed)
  demo      build a sample disk, convert it to zstd qcow2 and back, verify

Run "qcow2pipe COMMAND --help" for a command's options.`;

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  convert: convertCommand,
  demo: demoCommand,
};

/** Removes temporary output files; used on signals. */
function removeTemporaryFiles(): void {
  for (const path of liveTemporaryFiles) {
    try {
      Deno.removeSync(path);
    } catch {
      // already gone
    }
  }
  liveTemporaryFiles.clear();
}

/** Runs the CLI and returns the exit code. */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (
    command === undefined || command === "-h" || command === "--help" ||
    command === "help"
  ) {
    console.log(HELP);
    return command === undefined ? 1 : 0;
  }
  const run = COMMANDS[command];
  if (!run) {
    warn(`qcow2pipe: unknown command "${command}" (see --help)`);
    return 1;
  }
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT"]
    : ["SIGINT", "SIGTERM"];
  const handlers = signals.map((sig) => {
    const handler = () => {
      removeTemporaryFiles();
      warn(`qcow2pipe: interrupted by ${sig}`);
      Deno.exit(sig === "SIGINT" ? 130 : 143);
    };
    Deno.addSignalListener(sig, handler);
    return [sig, handler] as const;
  });
  try {
    return await run(rest);
  } catch (err) {
    warn(`qcow2pipe: ${describeError(err)}`);
    if (Deno.env.get("QCOW2PIPE_DEBUG")) console.error(err);
    return 1;
  } finally {
    for (const [sig, handler] of handlers) {
      Deno.removeSignalListener(sig, handler);
    }
  }
}
