// Command dispatch for the qcow2pipe CLI.
import { reportError, warn } from "./_util.ts";
import { removeTemporaryFiles } from "../host/temp.ts";
import { printable } from "../format/errors.ts";
import config from "../../deno.json" with { type: "json" };

/** The version, from deno.json: `qcow2pipe 0.1.0`. */
export const VERSION_TEXT = `qcow2pipe ${config.version}`;

export const HELP = `Usage: qcow2pipe COMMAND [options]

Commands:
  convert   convert raw <-> qcow2 (sparse or zlib/zstd compressed)
  info      describe an image (like qemu-img info)
  check     check a qcow2 image's refcounts and tables (like qemu-img check)
  map       list allocated, zero and data ranges (like qemu-img map)
  compare   compare the guest content of two images (like qemu-img compare)
  measure   the size a new image needs (like qemu-img measure)
  create    create a blank qcow2 or raw image (like qemu-img create)
  snapshot  list internal snapshots (like qemu-img snapshot -l)
  demo      build a sample disk, convert it to zstd qcow2 and back, verify

Run "qcow2pipe COMMAND --help" for a command's options, and
"qcow2pipe --version" (-V) for the version.`;

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = {
  convert: async (a) => (await import("./convert_cmd.ts")).convertCommand(a),
  info: async (a) => (await import("./info_cmd.ts")).infoCommand(a),
  check: async (a) => (await import("./check_cmd.ts")).checkCommand(a),
  map: async (a) => (await import("./map_cmd.ts")).mapCommand(a),
  compare: async (a) => (await import("./compare_cmd.ts")).compareCommand(a),
  measure: async (a) => (await import("./measure_cmd.ts")).measureCommand(a),
  create: async (a) => (await import("./create_cmd.ts")).createCommand(a),
  snapshot: async (a) => (await import("./snapshot_cmd.ts")).snapshotCommand(a),
  demo: async (a) => (await import("./demo.ts")).demoCommand(a),
};

/**
 * qemu-img commands that change images in place: named, so that each gets
 * one line saying so rather than "unknown command".
 */
const NOT_PROVIDED = ["amend", "bitmap", "commit", "dd", "rebase", "resize"];

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
  if (command === "--version" || command === "-V") {
    console.log(VERSION_TEXT);
    return 0;
  }
  const run = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  if (!run && NOT_PROVIDED.includes(command)) {
    warn(
      `qcow2pipe: ${command} is not provided (qcow2pipe converts, inspects and creates images; use qemu-img ${command})`,
    );
    return 1;
  }
  if (!run) {
    warn(`qcow2pipe: unknown command "${printable(command)}" (see --help)`);
    return 1;
  }
  // File access by path, for every command (see lib/io/host_files.ts).
  await import("../host/file_source.ts");
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
    return reportError(err, 1);
  } finally {
    for (const [sig, handler] of handlers) {
      Deno.removeSignalListener(sig, handler);
    }
  }
}
