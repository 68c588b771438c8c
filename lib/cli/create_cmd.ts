// `qcow2pipe create`: a new, empty qcow2 or raw image, the file qemu-img
// create makes for the same options, put in place only once complete.
// Backing files are opened by name through the host's file access, which
// main.ts installs before a command runs.
import { createImage } from "../tools/create.ts";
import { OutputFile } from "../host/output_file.ts";
import { isHttpUrl } from "../io/http_source.ts";
import type { FileIdentity } from "../io/source.ts";
import { printable } from "../format/errors.ts";
import {
  asksForHelp,
  createOptionsHelp,
  formattingLine,
  parseCreateOptions,
} from "./_create_options.ts";
import { writeOut } from "./_args.ts";
import {
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
} from "./_getopt.ts";
import { parseSize, UsageError } from "./_util.ts";

export const CREATE_HELP =
  `Usage: qcow2pipe create [-q] [-f FMT] [-b BACKING -F BACKING_FMT] [-u] [-o OPTIONS] FILE [SIZE]

Create a new, empty image as "qemu-img create" does: a qcow2 image equal
byte for byte to qemu-img's for the same options, or a raw image (a sparse
file). An existing FILE is replaced, as qemu-img replaces it, but only by
the complete image (written beside it, then renamed); the backing file is
never replaced. SIZE takes the suffixes k, M, G, T, P, E (powers of 1024)
and is rounded up to whole 512-byte sectors; with a backing file it
defaults to the backing file's size.

Options:
  -f FMT                format of FILE: raw (default) or qcow2
  -b BACKING            backing file (qcow2), stored as given: a relative
                        name is read relative to FILE's directory
  -F BACKING_FMT        format of the backing file: raw or qcow2 (needed
                        with -b, as in qemu-img)
  -u                    do not open the backing file (SIZE is then needed)
  -o OPTIONS            creation options: cluster_size, refcount_bits,
                        compression_type, backing_file, backing_fmt, size,
                        and compat=1.1, lazy_refcounts=off,
                        extended_l2=off, preallocation=off (what is
                        written anyway); "-o help" lists them
  -q, --quiet           do not print the "Formatting ..." line
${httpTimeoutHelp(24)}
  -h, --help            show this help`;

export async function createCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("create", args, {
    format: { type: "string", short: "f" },
    backing: { type: "string", short: "b" },
    "backing-format": { type: "string", short: "F" },
    options: { type: "string", short: "o", multiple: true },
    quiet: { type: "boolean", short: "q" },
    unsafe: { type: "boolean", short: "u" },
    help: { type: "boolean", short: "h" },
    object: {
      type: "string",
      unsupported: "there are no QEMU objects here; images are not encrypted",
    },
    ...HTTP_OPTIONS,
  });
  if (values.help) {
    console.log(CREATE_HELP);
    return 0;
  }
  const format = values.format ?? "raw";
  if (format !== "raw" && format !== "qcow2") {
    throw new UsageError(
      `Cannot create image: -f ${format} is not a format we create (raw or qcow2)`,
    );
  }
  const lists = values.options ?? [];
  if (asksForHelp(lists)) {
    await writeOut(createOptionsHelp(format, positionals.length >= 1));
    return 0;
  }
  if (positionals.length < 1 || positionals.length > 2) {
    throw new UsageError(
      positionals.length === 0
        ? "Cannot create image: Expecting image file name (see --help)"
        : `Cannot create image: Unexpected argument: ${positionals[2]}`,
    );
  }
  const [file, sizeText] = positionals;
  const o = parseCreateOptions(lists, format, "create");
  const size = sizeText === undefined ? o.size : parseSize(sizeText, "SIZE");
  const backingName = values.backing ?? o.backingFile;
  const backingFormat = values["backing-format"] ?? o.backingFormat;
  if (
    backingFormat !== undefined && backingFormat !== "raw" &&
    backingFormat !== "qcow2"
  ) {
    throw new UsageError(
      `Cannot create image: -F ${backingFormat} is not raw or qcow2`,
    );
  }
  if (backingName !== undefined && backingFormat === undefined) {
    throw new UsageError(
      `Cannot create image: ${file}: Backing file specified without backing format (give -F raw or -F qcow2)`,
    );
  }
  // The backing file, never replaced (compared by device and inode).
  const inputs: FileIdentity[] = [];
  const image = await createImage(file, {
    format,
    size,
    clusterSize: o.clusterSize,
    refcountBits: o.refcountBits,
    compression: o.compressionType,
    backingFile: backingName === undefined
      ? undefined
      : { name: backingName, format: backingFormat! },
    unsafe: values.unsafe,
    http: httpTransport("create image", values["http-timeout"]),
    onSize: (n, backingPath) => {
      if (backingPath !== undefined && !isHttpUrl(backingPath)) {
        const st = statOrUndefined(backingPath);
        if (st?.ino != null && st.dev != null) {
          inputs.push({ dev: st.dev, ino: st.ino, name: backingPath });
        }
        const dst = statOrUndefined(file);
        if (dst && st && dst.dev === st.dev && dst.ino === st.ino) {
          throw new UsageError(
            `Cannot create image: ${file}: Error: Trying to create an image with the same filename as the backing file`,
          );
        }
      }
      if (values.quiet) return;
      console.log(printable(formattingLine(file, format, lists, {
        size: n,
        backing_file: backingName,
        backing_fmt: backingFormat,
      })));
    },
  });
  const out = await OutputFile.create(file, { inputs });
  try {
    if (image.head.length > 0) await out.writeAt(0, image.head);
    await out.commit(image.length);
  } catch (err) {
    await out.abort();
    throw err;
  }
  return 0;
}

function statOrUndefined(path: string): Deno.FileInfo | undefined {
  try {
    return Deno.statSync(path);
  } catch {
    return undefined;
  }
}
