// The command line of `qcow2pipe convert`, qemu-img's and ours, read into
// one set of settings: which flag or `-o` key sets what, which combinations
// make no sense, and the one-line error for each.
import { extname } from "node:path";
import type { ZlibWindow } from "../../mod.ts";
import type { ImageFormat } from "../reader/open.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { parseFormat } from "./_args.ts";
import {
  asksForHelp,
  type CreateOptions,
  parseCreateOptions,
} from "./_create_options.ts";
import {
  CACHE_MODES,
  HTTP_OPTIONS,
  httpTransport,
  type OptionValues,
  type ParsedArgs,
  SOURCE_CACHE_OPTION,
} from "./_getopt.ts";
import { parseSnapshot, type SnapshotSelector } from "./_convert_input.ts";
import { parseInteger, parseSize, UsageError } from "./_util.ts";

/**
 * The most codec workers `--workers` and `-m` take. Each worker is a
 * JavaScript isolate of its own (about 8 MiB, plus its codec's buffers);
 * past the number of cores more workers only add memory and scheduling.
 */
export const MAX_WORKERS = 64;

/** The options of `convert`: qemu-img's, then ours. */
export const CONVERT_OPTIONS = {
  // qemu-img's
  format: { type: "string", short: "f" },
  "output-format": { type: "string", short: "O" },
  compressed: { type: "boolean", short: "c" },
  "target-format-options": { type: "string", short: "o", multiple: true },
  backing: { type: "string", short: "B" },
  "backing-format": { type: "string", short: "F" },
  snapshot: { type: "string", short: "ls" },
  parallel: { type: "string", short: "m" },
  "oob-writes": { type: "boolean", short: "W" },
  "no-create": { type: "boolean", short: "n" },
  "target-is-zero": { type: "boolean" },
  "force-share": { type: "boolean", short: "U" },
  progress: { type: "boolean", short: "p" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
  // qemu-img's, refused
  "copy-range-offloading": {
    type: "boolean",
    short: "C",
    unsupported: "copy offloading; the data is always read and written",
    deferred: true,
  },
  "sparse-size": { type: "string", short: "S" },
  "target-cache": { type: "string", short: "t", choices: CACHE_MODES },
  ...SOURCE_CACHE_OPTION,
  rate: { type: "string", short: "r", unsupported: "no rate limit is kept" },
  object: {
    type: "string",
    unsupported: "there are no QEMU objects here; nothing is encrypted",
  },
  "image-opts": { type: "boolean" },
  "target-image-opts": {
    type: "boolean",
    unsupported: "give DST as a file name or -",
  },
  salvage: { type: "boolean" },
  bitmaps: {
    type: "boolean",
    unsupported: "persistent bitmaps are not copied",
  },
  "skip-broken-bitmaps": {
    type: "boolean",
    unsupported: "persistent bitmaps are not copied",
  },
  // ours
  compress: { type: "string" },
  level: { type: "string" },
  "zlib-window": { type: "string" },
  "cluster-size": { type: "string" },
  "refcount-bits": { type: "string" },
  streamable: { type: "boolean" },
  sparsify: { type: "boolean" },
  disk: { type: "string" },
  workers: { type: "string" },
  // accepted: replacing an existing DST is the default, as in qemu-img
  force: { type: "boolean" },
  "no-clobber": { type: "boolean" },
  sync: { type: "boolean" },
  verbose: { type: "boolean" },
  ...HTTP_OPTIONS,
} as const;

type Values = OptionValues<typeof CONVERT_OPTIONS>;

/**
 * Refuses -c for a DST named `.raw` unless -O says qcow2: .raw says raw
 * (.img is as often qcow2, as cloud images are, as raw).
 */
export function checkCompressedName(
  parsed: ParsedArgs<typeof CONVERT_OPTIONS>,
  settings: ConvertSettings,
): void {
  if (
    parsed.values["output-format"] === undefined &&
    settings.compression !== "none" &&
    extname(settings.dst).toLowerCase() === ".raw"
  ) {
    throw new UsageError(
      `Cannot convert: -c writes qcow2, but DST ${settings.dst} is named like a raw image; give -O qcow2 to write qcow2 under that name`,
    );
  }
}

/** Everything `convert` was asked to do. */
export interface ConvertSettings {
  /** The first SRC. */
  src: string;
  /** Every SRC, in order: several are read one after the other. */
  sources: string[];
  dst: string;
  /** -f: the format of SRC, or undefined to probe it. */
  sourceFormat: ImageFormat | undefined;
  outputFormat: "raw" | "qcow2";
  compression: "none" | "zlib" | "zstd";
  level?: number;
  zlibWindow?: ZlibWindow;
  clusterSize?: number;
  refcountBits?: number;
  /** A delta image: the backing file's name as stored, and its format. */
  backing?: { name: string; format: "raw" | "qcow2" };
  snapshot?: SnapshotSelector;
  workers?: number;
  streamable: boolean;
  sparsify: boolean;
  /** --disk: the member of a tar archive to read. */
  disk?: string;
  /**
   * -S: zero detection granularity in bytes (0: zeros are written as
   * data); undefined for the default (a cluster; holes for raw).
   */
  sparseSize?: number;
  /** `-o preallocation`: every cluster allocated (qcow2), zeros written. */
  preallocation?: "off" | "metadata" | "falloc" | "full";
  /** `-o compat`: the qcow2 version written. */
  compat?: "v2" | "v3";
  /** `-o lazy_refcounts`: the feature bit. */
  lazyRefcounts?: boolean;
  /** -n: write into the existing DST. */
  inPlace: boolean;
  targetIsZero: boolean;
  /** --no-clobber: keep an existing DST, even one that appears meanwhile. */
  noClobber: boolean;
  sync: boolean;
  quiet: boolean;
  /**
   * --salvage: an unreadable range of SRC is written as zeros, with
   * qemu-img's warning for each of its 512-byte sectors.
   */
  salvage: boolean;
  /** --verbose: the summary line even when stderr is not a terminal. */
  verbose: boolean;
  progress?: boolean;
  /** How http(s) URLs are fetched (--http-timeout). */
  http: HttpTransport;
  /** --image-opts: each SRC is qemu-img's `key=value,...` options. */
  imageOpts: boolean;
}

/**
 * The extensions of a DST's name that say its format, when -O does not
 * (any case): the one list, which the help and the README show.
 */
export const NAMED_FORMATS = {
  qcow2: [".qcow2", ".qcow", ".qcow2c"],
  raw: [".raw", ".img", ".bin", ".iso"],
} as const;

/** The output format a DST's name says, if it says one. */
function formatFromName(name: string): "raw" | "qcow2" | undefined {
  const ext = extname(name).toLowerCase();
  for (const format of ["qcow2", "raw"] as const) {
    if ((NAMED_FORMATS[format] as readonly string[]).includes(ext)) {
      return format;
    }
  }
  return undefined;
}

/** `--zlib-window`: 4k or 32k. */
function parseZlibWindow(text: string): ZlibWindow {
  const bytes = parseSize(text, "--zlib-window");
  if (bytes !== 4096 && bytes !== 32768) {
    throw new UsageError(
      `Cannot parse --zlib-window: "${text}" is not 4k or 32k`,
    );
  }
  return bytes;
}

/** The one of two spellings of a setting that was given; both is an error. */
function oneOf<T>(
  a: { flag: string; value: T | undefined },
  b: { flag: string; value: T | undefined },
): T | undefined {
  if (a.value !== undefined && b.value !== undefined) {
    throw new UsageError(
      `Cannot convert: ${a.flag} and ${b.flag} set the same thing; give one`,
    );
  }
  return a.value ?? b.value;
}

/** A number given as our flag or as an `-o` key; both is an error. */
function flagOrOption(
  [flag, text, parse]: [
    string,
    string | undefined,
    (text: string, flag: string) => number,
  ],
  [key, value]: [string, number | undefined],
): number | undefined {
  return oneOf(
    { flag, value: text === undefined ? undefined : parse(text, flag) },
    { flag: key, value },
  );
}

/** Formats qemu-img reads but has no driver to create. */
const READ_ONLY_FORMATS = ["bochs", "cloop", "dmg"];

/** The output format: -O, else what the other flags or DST's name say. */
function outputFormatOf(values: Values, dst: string | undefined) {
  const given = values["output-format"];
  if (given !== undefined) {
    if (READ_ONLY_FORMATS.includes(given)) {
      // qemu-img's words: it cannot create these either.
      throw new UsageError(
        `Format driver '${given}' does not support image creation`,
      );
    }
    if (given !== "raw" && given !== "qcow2") {
      throw new UsageError(
        `Cannot convert: output format "${given}" is not raw or qcow2`,
      );
    }
    return given;
  }
  if (values.compressed || values.compress !== undefined) return "qcow2";
  const named = dst === undefined || dst === "-"
    ? undefined
    : formatFromName(dst);
  if (named) return named;
  if (values.backing !== undefined) return "qcow2";
  return undefined;
}

/**
 * `-o help`: the output format the list is for (as qemu-img, raw when
 * nothing says otherwise), or undefined when `-o` does not ask for help.
 */
export function optionsHelpFormat(
  parsed: ParsedArgs<typeof CONVERT_OPTIONS>,
): "raw" | "qcow2" | undefined {
  const lists = parsed.values["target-format-options"] ?? [];
  if (!asksForHelp(lists)) return undefined;
  return outputFormatOf(parsed.values, parsed.positionals[1]) ?? "raw";
}

/**
 * Reads the parsed command line into settings.
 *
 * @throws {UsageError} For a missing or extra operand, a bad value, or
 * flags that contradict each other.
 */
export function convertSettings(
  parsed: ParsedArgs<typeof CONVERT_OPTIONS>,
): ConvertSettings {
  const { values } = parsed;
  checkCopyOffloading(values);
  if (values.salvage && values.sparsify) {
    // The free-space map reads the filesystems through its own reads.
    throw new UsageError(
      "Cannot convert: --salvage does not go with --sparsify (which needs SRC's filesystems readable)",
    );
  }
  if (parsed.refused) throw parsed.refused;
  const [sources, dst] = operandsOf(parsed.positionals);
  const src = sources[0];
  checkSeveral(values, sources, positionals3(parsed.positionals));
  // Nothing says the format: raw, as qemu-img writes without -O.
  const format = outputFormatOf(values, dst) ?? "raw";
  const o: CreateOptions = parseCreateOptions(
    values["target-format-options"] ?? [],
    format,
  );
  const compression = compressionOf(values, o);
  checkQcow2Flags(values, format, compression);
  const inPlace = values["no-create"] ?? false;
  // -n creates nothing: DST keeps its own backing file, as in qemu-img.
  const backing = inPlace && format === "qcow2"
    ? undefined
    : backingOf(values, o);
  const targetIsZero = values["target-is-zero"] ?? false;
  checkInPlace(values, { inPlace, targetIsZero, format, dst });
  if (values["no-clobber"] && values.force) {
    throw new UsageError(
      "Cannot convert: --force and --no-clobber contradict each other (replacing DST is the default; --no-clobber keeps it)",
    );
  }
  const workers = workersOf(values);
  return {
    src,
    sources,
    dst,
    sourceFormat: parseFormat(values.format, "-f"),
    outputFormat: format,
    compression,
    level: values.level === undefined
      ? undefined
      : parseInteger(values.level, "--level"),
    zlibWindow: values["zlib-window"] === undefined
      ? undefined
      : parseZlibWindow(values["zlib-window"]),
    clusterSize: flagOrOption(
      ["--cluster-size", values["cluster-size"], parseSize],
      ["-o cluster_size", o.clusterSize],
    ),
    refcountBits: flagOrOption(
      ["--refcount-bits", values["refcount-bits"], parseInteger],
      ["-o refcount_bits", o.refcountBits],
    ),
    backing,
    snapshot: values.snapshot === undefined
      ? undefined
      : parseSnapshot(values.snapshot),
    workers,
    streamable: values.streamable ?? false,
    sparsify: values.sparsify ?? false,
    disk: values.disk,
    sparseSize: sparseSizeOf(values["sparse-size"]),
    ...versionOf(o, compression),
    preallocation: preallocationOf(o, format, compression, values, dst),
    inPlace,
    targetIsZero,
    noClobber: values["no-clobber"] ?? false,
    sync: values.sync ?? false,
    quiet: values.quiet ?? false,
    salvage: values.salvage ?? false,
    verbose: values.verbose ?? false,
    progress: values.progress,
    http: httpTransport("convert", values["http-timeout"]),
    imageOpts: values["image-opts"] ?? false,
  };
}

/** -C with what qemu-img refuses it with, in qemu-img's words. */
function checkCopyOffloading(values: Values): void {
  if (!values["copy-range-offloading"]) return;
  if (values["sparse-size"] !== undefined) {
    throw new UsageError("Cannot enable copy offloading when -S is used");
  }
  if (values.compressed || values.compress !== undefined) {
    throw new UsageError("Cannot enable copy offloading when -c is used");
  }
  if (values.salvage) {
    throw new UsageError("Cannot use copy offloading in salvaging mode");
  }
}

/**
 * The SRCs and DST: one SRC or several, read one after the other as one
 * disk, as qemu-img concatenates them.
 */
function operandsOf(positionals: string[]): [string[], string] {
  if (positionals.length < 2) {
    throw new UsageError(
      `Cannot convert: expected SRC and DST, got ${positionals.length} argument(s) (see --help)`,
    );
  }
  return [positionals.slice(0, -1), positionals[positionals.length - 1]];
}

/** `-c zlib` read as a third operand: the hint to give with the error. */
function positionals3(positionals: string[]): string {
  return positionals.length === 3 &&
      (positionals[0] === "zlib" || positionals[0] === "zstd")
    ? `; -c takes no value, as in qemu-img: give the type with --compress ${
      positionals[0]
    } or -c -o compression_type=${positionals[0]}`
    : "";
}

/** What several SRCs do not go with. */
function checkSeveral(values: Values, sources: string[], hint: string): void {
  if (sources.length < 2) return;
  if (hint !== "") {
    // `-c zstd a b`: SRC and DST meant, the type read as a first SRC.
    throw new UsageError(
      `Cannot convert: expected SRC and DST, got 3 arguments (the first taken for a SRC)${hint}`,
    );
  }
  if (values.backing !== undefined) {
    // qemu-img's words.
    throw new UsageError(
      "Having a backing file for the target makes no sense when concatenating multiple input images",
    );
  }
  const alone = [
    ["-l/-s", values.snapshot],
    ["--sparsify", values.sparsify],
    ["--disk", values.disk],
  ].filter(([, v]) => v !== undefined && v !== false).map(([f]) => f);
  if (alone.length > 0) {
    throw new UsageError(
      `Cannot convert: ${
        alone.join(", ")
      } take one SRC, and ${sources.length} were given`,
    );
  }
}

/**
 * Compression: -c (zlib unless -o compression_type says otherwise), or
 * --compress TYPE.
 */
function compressionOf(
  values: Values,
  o: CreateOptions,
): ConvertSettings["compression"] {
  const compress = values.compress;
  if (compress !== undefined && compress !== "zlib" && compress !== "zstd") {
    throw new UsageError(
      `Cannot convert: --compress takes zlib or zstd, not "${compress}"`,
    );
  }
  if (
    compress !== undefined && o.compressionType !== undefined &&
    compress !== o.compressionType
  ) {
    throw new UsageError(
      `Cannot convert: --compress ${compress} and -o compression_type=${o.compressionType} contradict each other`,
    );
  }
  const compressed = values.compressed || compress !== undefined;
  if (o.compressionType !== undefined && !compressed) {
    throw new UsageError(
      "Cannot convert: -o compression_type without -c is not supported (the header would name a type that no cluster uses); add -c",
    );
  }
  return compressed ? compress ?? o.compressionType ?? "zlib" : "none";
}

/** Refuses qcow2 flags for raw output, and --zlib-window without zlib. */
function checkQcow2Flags(
  values: Values,
  format: "raw" | "qcow2",
  compression: ConvertSettings["compression"],
): void {
  const compressed = compression !== "none";
  const qcow2Flags = [
    ["-c", compressed],
    ["--level", values.level],
    ["--zlib-window", values["zlib-window"]],
    ["--cluster-size", values["cluster-size"]],
    ["--refcount-bits", values["refcount-bits"]],
    ["--streamable", values.streamable],
    ["-B", values.backing],
    ["-F", values["backing-format"]],
  ] as const;
  const wrong = qcow2Flags.filter(([, v]) => v !== undefined && v !== false);
  if (format === "raw" && wrong.length > 0) {
    throw new UsageError(
      `Cannot convert: ${
        wrong.map(([f]) => f).join(", ")
      } apply to qcow2 output only, and the output is raw`,
    );
  }
  if (values["zlib-window"] !== undefined && compression !== "zlib") {
    throw new UsageError(
      "Cannot convert: --zlib-window needs zlib compression (-c)",
    );
  }
}

/** -n and --target-is-zero: what they go with. */
function checkInPlace(
  values: Values,
  { inPlace, targetIsZero, format, dst }: {
    inPlace: boolean;
    targetIsZero: boolean;
    format: "raw" | "qcow2";
    dst: string;
  },
): void {
  if (targetIsZero && !inPlace) {
    throw new UsageError(
      "Cannot convert: --target-is-zero needs -n (it says that the existing DST reads as zeros)",
    );
  }
  if (inPlace && format === "qcow2") {
    const wrong = [
      ["-c", values.compressed || values.compress !== undefined],
      ["--streamable", values.streamable],
      ["--cluster-size", values["cluster-size"]],
      ["--refcount-bits", values["refcount-bits"]],
    ].filter(([, v]) => v !== undefined && v !== false).map(([f]) => f);
    if (wrong.length > 0) {
      throw new UsageError(
        `Cannot convert: ${
          wrong.join(", ")
        } with -n is not supported (-n writes into the existing qcow2 image as it is laid out)`,
      );
    }
  }
  if (inPlace && dst === "-") {
    throw new UsageError(
      "Cannot convert: -n writes into an existing file or device, not standard output",
    );
  }
  if (inPlace && (values["target-format-options"] ?? []).length > 0) {
    // qemu-img's words.
    throw new UsageError("-o has no effect when skipping image creation");
  }
  if (inPlace && values["no-clobber"]) {
    throw new UsageError(
      "Cannot convert: -n writes into the existing DST, which --no-clobber keeps; give one",
    );
  }
  if (inPlace && values.sparsify) {
    throw new UsageError(
      "Cannot convert: --sparsify with -n is not supported (free space would be left as the target holds it)",
    );
  }
}

/** `-o compat` and `lazy_refcounts`: what version 2 cannot hold. */
function versionOf(
  o: CreateOptions,
  compression: ConvertSettings["compression"],
): Pick<ConvertSettings, "compat" | "lazyRefcounts"> {
  if (o.compat === "v2") {
    const wrong = [
      o.lazyRefcounts && "lazy_refcounts=on",
      o.refcountBits !== undefined && o.refcountBits !== 16 &&
      `refcount_bits=${o.refcountBits}`,
      (o.compressionType === "zstd" ||
        (compression === "zstd")) && "compression_type=zstd",
    ].filter((w) => w);
    if (wrong.length > 0) {
      throw new UsageError(
        `Cannot convert: -o compat=0.10 (qcow2 version 2) cannot hold ${
          wrong.join(", ")
        }; give compat=1.1`,
      );
    }
  }
  return { compat: o.compat, lazyRefcounts: o.lazyRefcounts };
}

/** `-o preallocation`: what it goes with. */
function preallocationOf(
  o: CreateOptions,
  format: "raw" | "qcow2",
  compression: ConvertSettings["compression"],
  values: Values,
  dst: string,
): ConvertSettings["preallocation"] {
  const mode = o.preallocation;
  if (mode === undefined || mode === "off") return mode;
  if (format === "qcow2" && (values.streamable || dst === "-")) {
    throw new UsageError(
      `Cannot convert: -o preallocation=${mode} writes a file at offsets, not a stream or the streamable layout`,
    );
  }
  if (format === "raw" && mode === "metadata") {
    throw new UsageError(
      "Cannot convert: -o preallocation=metadata applies to qcow2 output only (raw takes off, falloc or full)",
    );
  }
  if (compression !== "none") {
    throw new UsageError(
      `Cannot convert: -o preallocation=${mode} and -c contradict each other (compressed clusters are not preallocated)`,
    );
  }
  return mode;
}

/** qemu-img's largest -S: 32768 sectors. */
const MAX_SPARSE_SIZE = 16 << 20;

/** -S SIZE: a multiple of 512 up to 16 MiB, or 0. */
function sparseSizeOf(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const size = parseSize(text, "-S");
  if (size % 512 !== 0 || size > MAX_SPARSE_SIZE) {
    throw new UsageError(
      `Cannot convert: -S ${text} is not a multiple of 512 up to 16 MiB (0 writes zeros as data, allocating every cluster)`,
    );
  }
  return size;
}

/** --workers or -m, in range. */
function workersOf(values: Values): number | undefined {
  const workers = oneOf(
    {
      flag: "--workers",
      value: values.workers === undefined
        ? undefined
        : parseInteger(values.workers, "--workers"),
    },
    {
      flag: "-m",
      value: values.parallel === undefined
        ? undefined
        : parseInteger(values.parallel, "-m"),
    },
  );
  if (workers !== undefined && workers > MAX_WORKERS) {
    const flag = values.workers !== undefined ? "--workers" : "-m";
    throw new UsageError(
      `Cannot convert: ${flag} ${workers} is out of range [${
        flag === "-m" ? 1 : 0
      }, ${MAX_WORKERS}]`,
    );
  }
  if (values.parallel !== undefined && workers === 0) {
    throw new UsageError(
      `Cannot convert: -m 0 is out of range [1, ${MAX_WORKERS}] (--workers 0 runs the codecs without workers)`,
    );
  }
  return workers;
}

/**
 * The backing file of a delta image: -B (or `-o backing_file`) with -F (or
 * `-o backing_fmt`); -B and -F win over `-o`, as in qemu-img.
 */
function backingOf(
  values: Values,
  o: CreateOptions,
): ConvertSettings["backing"] {
  const name = values.backing ?? o.backingFile;
  const formatText = values["backing-format"] ?? o.backingFormat;
  if (name === undefined) {
    if (formatText !== undefined) {
      throw new UsageError(
        "Cannot convert: a backing format (-F) needs a backing file (-B)",
      );
    }
    return undefined;
  }
  if (name === "") {
    throw new UsageError("Cannot convert: the backing file name (-B) is empty");
  }
  if (formatText === undefined) {
    // qemu-img's words (scripts expect them); -F raw or -F qcow2 is missing.
    throw new UsageError(
      "Use of backing file requires explicit backing format",
    );
  }
  const format = parseFormat(formatText, "-F");
  if (format !== "raw" && format !== "qcow2") {
    throw new UsageError(
      `Cannot convert: backing format (-F) "${format}" is not raw or qcow2`,
    );
  }
  return { name, format };
}
