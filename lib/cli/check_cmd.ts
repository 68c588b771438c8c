// `qcow2pipe check`: a read-only `qemu-img check`, with its messages,
// summary and exit status.
import { checkImage, formatCheckJson, formatCheckResult } from "../../mod.ts";
import {
  expectPositionals,
  parseCommand,
  parseFormat,
  writeOut,
} from "./_args.ts";
import { warn } from "./_util.ts";

export const CHECK_HELP = `Usage: qcow2pipe check [-f FMT] [--json] [-q] IMG

Check a qcow2 image for consistency without writing to it, as
"qemu-img check" does: refcounts are rebuilt from every reference (header,
L1/L2 tables of the active state and of every snapshot, data and
compressed clusters, refcount structures, snapshot table, bitmaps, crypto
header) and compared with the stored ones. Each problem is one line on
standard error, in QEMU's words; the summary goes to standard output.

Exit status: 0 no problems, 2 corruptions, 3 leaked clusters only,
1 the check could not be completed, 63 the format (raw) has no checks
("This image format does not support checks", as qemu-img says).

Options:
  -f FMT        format of IMG: raw or qcow2 (default: probed)
      --json    print "qemu-img check --output=json" (same keys)
  -q, --quiet   no summary; each problem is still one line on standard
                error, as with qemu-img check -q
  -h, --help    show this help`;

export async function checkCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand("check", args, {
    format: { type: "string", short: "f" },
    json: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(CHECK_HELP);
    return 0;
  }
  const [path] = expectPositionals("check image", positionals, ["IMG"]);
  const format = parseFormat(values.format, "-f");
  const result = await checkImage(path, { format });
  const quiet = values.quiet ?? false;
  if (result.exitCode === 63) {
    // qemu-img's words, as scripts may look for them.
    warn("qcow2pipe: This image format does not support checks");
    return 63;
  }
  // Like qemu-img, -q keeps each problem's line and drops the summary.
  for (const line of result.messages) warn(line);
  if (!quiet) {
    if (result.failure === undefined) {
      await writeOut(
        values.json
          ? formatCheckJson(result) + "\n"
          : formatCheckResult(result),
      );
    }
  }
  if (result.failure !== undefined) {
    warn(
      `qcow2pipe: Cannot check ${path}: ${
        result.failure.replace(/^Cannot [^:]*: /, "")
      }`,
    );
  } else if (result.checkErrors > 0) {
    warn(
      `qcow2pipe: Cannot complete the check of ${path}: ${result.checkErrors} internal errors`,
    );
  }
  return result.exitCode;
}
