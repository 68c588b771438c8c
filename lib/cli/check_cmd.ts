// `qcow2pipe check`: `qemu-img check`, with its messages, summary and exit
// status; read-only, except with -r, which repairs the named image in place
// (opened for writing only then).
import { checkImage, type CheckResult } from "../tools/check.ts";
import {
  formatCheckJson,
  formatCheckResult,
  formatRepairHeader,
} from "../tools/check_text.ts";
import { repairImage } from "../tools/repair.ts";
import { FileSource } from "../host/file_source.ts";
import { isHttpUrl } from "../io/http_source.ts";
import { expectPositionals, writeOut } from "./_args.ts";
import { inQemuWords, UsageError, warn } from "./_util.ts";
import { printable } from "../format/errors.ts";
import {
  formatHelp,
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
  NAMING_OPTIONS,
  outputFormat,
  SOURCE_CACHE_OPTION,
} from "./_getopt.ts";
import { namedFile, openNamed, refuseStandardInput } from "./_inputs.ts";

export const CHECK_HELP =
  `Usage: qcow2pipe check [-f FMT] [--output=human|json] [-q] [-r leaks|all] [--http-timeout S] [-U] IMG

Check an image for consistency, as "qemu-img check" does; without -r the
image is only read. qcow2: refcounts are rebuilt from every reference (header,
L1/L2 tables of the active state and of every snapshot, data and
compressed clusters, refcount structures, snapshot table, bitmaps, crypto
header) and compared with the stored ones. VDI: the block map. VMDK: each
grain's offset inside its extent file. VHDX: each present block inside the
file and clear of the log and regions. Each problem is one line on
standard error, in QEMU's words; the summary goes to standard output.
IMG is a file or an http(s) URL (read with Range requests).

With -r (qcow2 only), the image is repaired in place as "qemu-img check
-r" repairs it, then checked again: -r leaks frees leaked clusters; -r all
also raises refcounts that are too low, rebuilds the refcount structures
when a cluster in use has refcount 0, fixes COPIED flags and clears the
corrupt bit. Only IMG is written (never a backing file), and a repair cut
short at any point leaves an image that check -r all can still repair.
An image with an external data file is not repaired.

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
  -r, --repair MODE   leaks or all: repair IMG in place (see above)
${httpTimeoutHelp(22)}
  -U, --force-share   accepted, as qemu-img takes it: images are read
                      without locks
      --image-opts    IMG is qemu-img's options: driver=FMT,file.filename=PATH
                      (json:{...} and file:PATH names are taken too)
      --object SECRET secret,id=ID,... for encrypt.key-secret=ID (never read)
  -h, --help          show this help`;

export async function checkCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("check", args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    json: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
    repair: { type: "string", short: "r" },
    ...SOURCE_CACHE_OPTION,
    ...HTTP_OPTIONS,
    ...NAMING_OPTIONS,
  });
  if (values.help) {
    console.log(CHECK_HELP);
    return 0;
  }
  const [name] = expectPositionals("check image", positionals, ["IMG"]);
  const output = outputFormat("check image", values.output, values.json);
  const { path, format } = await namedFile(name, values, true);
  const http = httpTransport("check image", values["http-timeout"]);
  const quiet = values.quiet ?? false;
  const mode = values.repair;
  if (mode !== undefined) {
    if (mode !== "leaks" && mode !== "all") {
      // qemu-img's words for the same mistake.
      throw new UsageError(
        `Unknown option value for -r (expecting 'leaks' or 'all'): ${mode}`,
      );
    }
    refuseStandardInput(path, "check");
    if (isHttpUrl(path)) {
      throw new UsageError(
        `Cannot repair ${path}: an image read over HTTP cannot be written`,
      );
    }
    await using file = await FileSource.open(path, path, { write: true });
    const { repair, recheck, final } = await repairImage(file, {
      mode,
      format,
    });
    if (final.exitCode === 63) return unsupported();
    for (const line of repair.messages) warn(printable(line));
    if (recheck !== undefined) {
      const header = !quiet && output === "human"
        ? formatRepairHeader(repair)
        : "";
      // qemu-img's standard output is buffered off a terminal: what it
      // says of the repair comes out after the lines of the check run
      // again, and scripts expect that order.
      const late = !Deno.stdout.isTerminal();
      if (!late) await writeOut(header);
      for (const line of recheck.messages) warn(printable(line));
      if (late) await writeOut(header);
    }
    return await report(path, final, quiet, output);
  }
  await using image = await openNamed(path, http, "check");
  const result = await checkImage(image.input, { format }).catch((err) => {
    throw inQemuWords(err, path);
  });
  if (result.exitCode === 63) return unsupported();
  // Like qemu-img, -q keeps each problem's line and drops the summary.
  for (const line of result.messages) warn(printable(line));
  return await report(path, result, quiet, output);
}

/** qemu-img's words for a format without checks, as scripts look for them. */
function unsupported(): number {
  warn("qcow2pipe: This image format does not support checks");
  return 63;
}

/** The summary (unless quiet), the failure line if any, and the exit status. */
async function report(
  path: string,
  result: CheckResult,
  quiet: boolean,
  output: string,
): Promise<number> {
  if (!quiet) {
    if (result.failure === undefined) {
      await writeOut(
        output === "json"
          ? formatCheckJson(result) + "\n"
          : formatCheckResult(result),
      );
    }
  }
  if (result.failure?.startsWith("Check failed: ")) {
    // qemu-img's words when the format's check itself failed; the lines
    // before say what failed.
    warn(`qcow2pipe: ${printable(result.failure)}`);
  } else if (result.failure !== undefined) {
    warn(
      `qcow2pipe: Cannot check ${printable(path)}: ${
        printable(result.failure.replace(/^Cannot [^:]*: /, ""))
      }`,
    );
  } else if (result.checkErrors > 0) {
    warn(
      `qcow2pipe: Cannot complete the check of ${
        printable(path)
      }: ${result.checkErrors} internal errors`,
    );
  }
  return result.exitCode;
}
