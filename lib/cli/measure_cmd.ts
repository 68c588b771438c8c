// `qcow2pipe measure`: the sizes `qemu-img measure` reports for a new
// image, from a source or for a blank image of --size bytes.
import {
  formatMeasure,
  formatMeasureJson,
  measureImage,
} from "../tools/measure.ts";
import { convert } from "../convert.ts";
import { openImage } from "../reader/open.ts";
import type { ImageSink } from "../io/sink.ts";
import { OutBuffer, parseFormat } from "./_args.ts";
import {
  asksForHelp,
  createOptionsHelp,
  parseCreateOptions,
} from "./_create_options.ts";
import {
  formatHelp,
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
  INSPECT_OPTIONS,
  outputFormat,
} from "./_getopt.ts";
import { openNamed } from "./_inputs.ts";
import { parseSize, UsageError } from "./_util.ts";

export const MEASURE_HELP =
  `Usage: qcow2pipe measure [--output=human|json] [-O FMT] [-o OPTIONS] [--size N | [-f FMT] IMG]

Say how large a new image would be, as "qemu-img measure" says it: the
least it needs for the data of IMG (required size) and what it takes with
every cluster allocated (fully allocated size); for a qcow2 source of
version 3, what copying its persistent bitmaps adds (bitmaps size). With
--size, for a blank image of N bytes. The numbers are qemu-img's estimate
(every L2 table and refcount block counted), not what convert writes.

Options:
${formatHelp("  -f, --format FMT", 24, "IMG")}
  -O FMT                format of the new image: raw (default) or qcow2
  -o OPTIONS            its creation options, as qemu-img takes them:
                        cluster_size, refcount_bits, extended_l2, compat,
                        preallocation, backing_file (then every cluster
                        counts), lazy_refcounts
      --size N          measure a blank image of N bytes (suffixes k, M,
                        G, T, P, E; a fraction with a unit)
  -c                    also say what "qcow2pipe convert -c" writes: the
                        "converted size" line ("converted" in JSON), the
                        exact size, found by converting IMG to nowhere
                        (compressed with -o compression_type, else zlib)
      --sparsify        the same for "qcow2pipe convert --sparsify" (with
                        -c too, for both)
      --output FMT      human (default) or json: "qemu-img measure
                        --output=json" (same keys)
      --json            the same as --output=json
${httpTimeoutHelp(24)}
  -U, --force-share     accepted, as qemu-img takes it
  -h, --help            show this help`;

export async function measureCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("measure", args, {
    format: { type: "string", short: "f" },
    "output-format": { type: "string", short: "O" },
    options: { type: "string", short: "o", multiple: true },
    size: { type: "string" },
    output: { type: "string" },
    json: { type: "boolean" },
    compress: { type: "boolean", short: "c" },
    sparsify: { type: "boolean" },
    snapshot: {
      type: "string",
      short: "l",
      unsupported: "a snapshot is not measured; measure the image",
    },
    ...HTTP_OPTIONS,
    ...INSPECT_OPTIONS,
  });
  if (values.help) {
    console.log(MEASURE_HELP);
    return 0;
  }
  if (positionals.length > 1) {
    throw new UsageError(
      "Cannot measure: At most one filename argument is allowed.",
    );
  }
  const output = outputFormat("measure", values.output, values.json);
  const target = values["output-format"] ?? "raw";
  if (target !== "raw" && target !== "qcow2") {
    throw new UsageError(
      `Cannot measure: -O ${target}: Block driver '${target}' does not support size measurement (we measure raw and qcow2)`,
    );
  }
  if (asksForHelp(values.options ?? [])) {
    const out = new OutBuffer();
    await out.add(createOptionsHelp(target, false));
    await out.flush();
    return 0;
  }
  const o = parseCreateOptions(values.options ?? [], target, "measure");
  const size = values.size === undefined
    ? undefined
    : parseSize(values.size, "--size");
  const format = parseFormat(values.format, "-f");
  const http = httpTransport("measure", values["http-timeout"]);
  const options = {
    outputFormat: target,
    size,
    clusterSize: o.clusterSize,
    refcountBits: o.refcountBits,
    extendedL2: o.extendedL2,
    compat: o.compat,
    preallocation: o.preallocation,
    backing: o.backingFile !== undefined,
    format,
    http,
  } as const;
  const [path] = positionals;
  let result;
  if (path === undefined) {
    result = await measureImage(undefined, options);
  } else {
    await using image = await openNamed(path, http, "measure");
    result = await measureImage(image.input, options);
  }
  if (values.compress || values.sparsify) {
    if (path === undefined || target !== "qcow2") {
      throw new UsageError(
        "Cannot measure: -c and --sparsify say what convert writes from IMG to qcow2: give IMG and -O qcow2",
      );
    }
    const ours = Object.entries({
      backing_file: o.backingFile,
      extended_l2: o.extendedL2 ? "on" : undefined,
      compat: o.compat === "v2" ? "0.10" : undefined,
      preallocation: o.preallocation !== "off" ? o.preallocation : undefined,
    }).find(([, v]) => v !== undefined);
    if (ours) {
      throw new UsageError(
        `Cannot measure: -c and --sparsify say what convert writes, and convert does not write -o ${
          ours[0]
        }=${ours[1]}`,
      );
    }
    result.converted = await convertedSize(path, {
      format,
      http,
      clusterSize: o.clusterSize,
      refcountBits: o.refcountBits,
      compression: values.compress ? o.compressionType ?? "zlib" : "none",
      sparsify: values.sparsify ?? false,
    });
  }
  const out = new OutBuffer();
  await out.add(
    output === "json"
      ? formatMeasureJson(result) + "\n"
      : formatMeasure(result),
  );
  await out.flush();
  return 0;
}

/** The size of the file convert writes for `path`, written nowhere. */
async function convertedSize(
  path: string,
  options: {
    format: ReturnType<typeof parseFormat>;
    http: ReturnType<typeof httpTransport>;
    clusterSize?: number;
    refcountBits?: number;
    compression: "zlib" | "zstd" | "none";
    sparsify: boolean;
  },
): Promise<number> {
  await using image = await openImage(path, {
    format: options.format,
    http: options.http,
  });
  let size = 0;
  const nowhere: ImageSink = {
    writeAt: () => Promise.resolve(),
    commit: (n) => {
      size = n ?? 0;
      return Promise.resolve();
    },
    abort: () => Promise.resolve(),
  };
  const summary = await convert(image, nowhere, {
    clusterSize: options.clusterSize,
    refcountBits: options.refcountBits,
    compression: options.compression,
    sparsify: options.sparsify,
  });
  return Math.max(size, summary.fileSize);
}
