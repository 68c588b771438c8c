// `qcow2pipe compare`: are two images the same as the guest sees them, as
// `qemu-img compare` answers it (exit 0 identical, 1 different, 2 error).
import { compareImages } from "../tools/compare.ts";
import { formatCompareResult } from "../tools/compare_text.ts";
import {
  formatStatusMismatch,
  STRICT_SIZE_MISMATCH,
} from "../tools/compare_text.ts";
import { expectPositionals, parseFormat, writeOut } from "./_args.ts";
import { reportError } from "./_util.ts";
import {
  formatHelp,
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
  INSPECT_OPTIONS,
  SOURCE_CACHE_OPTION,
} from "./_getopt.ts";
import { openNamed } from "./_inputs.ts";
import { qemuProgressLine } from "./progress.ts";
import { firstStatusMismatch } from "./_strict.ts";

export const COMPARE_HELP =
  `Usage: qcow2pipe compare [-f FMT] [-F FMT] [-s] [-p] [-q] [--http-timeout S] [-U] A B

Compare the guest content of two images (any mix of raw, qcow2, qcow and
vdi, backing chains followed), as "qemu-img compare" does. Prints "Images are
identical." or "Content mismatch at offset N!" (N is the start of the
first differing 512-byte sector). When the sizes differ, the extra part
of the larger image must read as zeros ("Warning: Image size mismatch!").
A and B are files or http(s) URLs (read with Range requests).

Exit status: 0 identical, 1 different, 2 an image could not be opened or
read.

Options:
${formatHelp("  -f FMT", 16, "A")}
  -F FMT        format of B
  -s            strict, as in qemu-img: the sizes must be equal ("Strict
                mode: Image size mismatch!") and so must the allocation
                of every range, as "map --output=json" shows it ("Strict
                mode: Offset N block status mismatch!")
  -p            print qemu-img's progress lines, "    (0.00/100%)" at the
                start and "    (100.00/100%)" at the end
  -q, --quiet   print nothing; only the exit status
${httpTimeoutHelp(16)}
  -U, --force-share
                accepted, as qemu-img takes it: images are read without
                locks
  -h, --help    show this help`;

export async function compareCommand(args: string[]): Promise<number> {
  try {
    const { values, positionals } = getopt("compare", args, {
      format: { type: "string", short: "f" },
      "second-format": { type: "string", short: "F" },
      strict: { type: "boolean", short: "s" },
      quiet: { type: "boolean", short: "q" },
      progress: { type: "boolean", short: "p" },
      ...SOURCE_CACHE_OPTION,
      ...HTTP_OPTIONS,
      ...INSPECT_OPTIONS,
    });
    if (values.help) {
      console.log(COMPARE_HELP);
      return 0;
    }
    const [a, b] = expectPositionals("compare images", positionals, ["A", "B"]);
    const formats = [
      parseFormat(values.format, "-f"),
      parseFormat(values["second-format"], "-F"),
    ] as [ReturnType<typeof parseFormat>, ReturnType<typeof parseFormat>];
    const http = httpTransport("compare images", values["http-timeout"]);
    await using first = await openNamed(a, http, "compare");
    await using second = await openNamed(b, http, "compare");
    // -p: qemu-img's first and last steps (those in between are left out:
    // the comparison reports no progress of its own), and its newline at
    // the very end.
    const progress = values.progress && !values.quiet;
    if (progress) await writeOut(qemuProgressLine(0));
    const result = await compareImages(first.input, second.input, {
      formats: [...formats],
      http,
    });
    let text = formatCompareResult(result);
    let identical = result.identical;
    if (values.strict) {
      if (result.sizeA !== result.sizeB) {
        text = STRICT_SIZE_MISMATCH;
        identical = false;
      } else {
        const at = await firstStatusMismatch(
          first.input,
          second.input,
          formats,
          result.sizeA,
          http,
        );
        // qemu-img walks the images in order: a content difference before
        // the first status difference is found first.
        if (at !== undefined && (result.identical || result.offset! >= at)) {
          text = formatStatusMismatch(at);
          identical = false;
        }
      }
    }
    // qemu-img stops counting at a difference: 100% only for a match.
    if (progress) {
      text = (identical ? qemuProgressLine(100) : "") + text + "\n";
    }
    if (!values.quiet) await writeOut(text);
    return identical ? 0 : 1;
  } catch (err) {
    return reportError(err, 2);
  }
}
