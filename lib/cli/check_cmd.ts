// `qcow2pipe check`: a read-only `qemu-img check`, with its messages,
// summary and exit status.
import {
  checkImage,
  formatCheckJson,
  formatCheckResult,
} from "../tools/mod.ts";
import { expectPositionals, parseFormat, writeOut } from "./_args.ts";
import { inQemuWords, warn } from "./_util.ts";
import {
  formatHelp,
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
  INSPECT_OPTIONS,
  outputFormat,
  SOURCE_CACHE_OPTION,
} from "./_getopt.ts";
import { openNamed } from "./_inputs.ts";

export const CHECK_HELP =
  `Usage: qcow2pipe check [-f FMT] [--output=human|json] [-q] [--http-timeout S] [-U] IMG

Check an image for consistency without writing to it, as "qemu-img
check" does. qcow2: refcounts are rebuilt from every reference (header,
L1/L2 tables of the active state and of every snapshot, data and
compressed clusters, refcount structures, snapshot table, bitmaps, crypto
header) and compared with the stored ones. VDI: the block map. VMDK: each
grain's offset inside its extent file. VHDX: each present block inside the
file and clear of the log and regions. Each problem is one line on
standard error, in QEMU's words; the summary goes to standard output.
IMG is a file or an http(s) URL (read with Range requests). Repairs
(qemu-img check -r) are not made: the image is never written.

Exit status: 0 no problems, 2 corruptions, 3 leaked clusters only,
1 the check could not be completed, 63 the format (raw, qcow, vpc) has no
checks ("This image format does not support checks", as qemu-img says).

Options:
${formatHelp("  -f, --format FMT", 22, "IMG")}
      --output FMT    human (default) or json: "qemu-img check
                      --output=json" (same keys)
      --json          the same as --output=json
  -q, --quiet         no summary; each problem is still one line on
                      standard error, as with qemu-img check -q
${httpTimeoutHelp(22)}
  -U, --force-share   accepted, as qemu-img takes it: images are read
                      without locks
  -h, --help          show this help`;

export async function checkCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("check", args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    json: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
    repair: {
      type: "string",
      short: "r",
      unsupported:
        "repair is not supported: check only reads the image; qemu-img check -r repairs it in place",
    },
    ...SOURCE_CACHE_OPTION,
    ...HTTP_OPTIONS,
    ...INSPECT_OPTIONS,
  });
  if (values.help) {
    console.log(CHECK_HELP);
    return 0;
  }
  const [path] = expectPositionals("check image", positionals, ["IMG"]);
  const output = outputFormat("check image", values.output, values.json);
  const format = parseFormat(values.format, "-f");
  const http = httpTransport("check image", values["http-timeout"]);
  await using image = await openNamed(path, http);
  const result = await checkImage(image.input, { format }).catch((err) => {
    throw inQemuWords(err, path);
  });
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
        output === "json"
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
