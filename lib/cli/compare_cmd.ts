// `qcow2pipe compare`: are two images the same as the guest sees them, as
// `qemu-img compare` answers it (exit 0 identical, 1 different, 2 error).
import { compareImages, formatCompareResult } from "../../mod.ts";
import {
  expectPositionals,
  parseCommand,
  parseFormat,
  writeOut,
} from "./_args.ts";
import { reportError } from "./_util.ts";

export const COMPARE_HELP = `Usage: qcow2pipe compare [-f FMT] [-F FMT] [-q] A B

Compare the guest content of two images (any mix of raw and qcow2, backing
chains followed), as "qemu-img compare" does. Prints "Images are
identical." or "Content mismatch at offset N!" (N is the start of the
first differing 512-byte sector). When the sizes differ, the extra part
of the larger image must read as zeros ("Warning: Image size mismatch!").

Exit status: 0 identical, 1 different, 2 an image could not be opened or
read.

Options:
  -f FMT        format of A: raw or qcow2 (default: probed; a probed image
                may only lead to files in its own directory)
  -F FMT        format of B
  -q, --quiet   print nothing; only the exit status
  -h, --help    show this help`;

export async function compareCommand(args: string[]): Promise<number> {
  try {
    const { values, positionals } = parseCommand("compare", args, {
      format: { type: "string", short: "f" },
      "second-format": { type: "string", short: "F" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(COMPARE_HELP);
      return 0;
    }
    const [a, b] = expectPositionals("compare images", positionals, ["A", "B"]);
    const formats = [
      parseFormat(values.format, "-f"),
      parseFormat(values["second-format"], "-F"),
    ] as const;
    const result = await compareImages(a, b, { formats: [...formats] });
    const quiet = values.quiet ?? false;
    const text = formatCompareResult(result);
    if (!quiet) await writeOut(text);
    return result.identical ? 0 : 1;
  } catch (err) {
    reportError(err);
    return 2;
  }
}
