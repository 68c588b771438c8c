// qemu-img's `-o key=value[,...]`: the creation options of the output
// image, split as QEMU splits them (`,,` is a comma inside a value, a key
// alone means `on`, repeated `-o` are joined, the last value of a key
// wins). Each key qemu-img knows is either taken, accepted when it asks
// for what we write anyway, or refused with the reason.
import { parseInteger, parseSize, UsageError } from "./_util.ts";

/** What `-o` asks of the output image. */
export interface CreateOptions {
  compressionType?: "zlib" | "zstd";
  clusterSize?: number;
  refcountBits?: number;
  backingFile?: string;
  backingFormat?: "raw" | "qcow2";
  /** `extended_l2` (measure only: we write standard L2 entries). */
  extendedL2?: boolean;
  /** `preallocation` (convert and measure). */
  preallocation?: "off" | "metadata" | "falloc" | "full";
  /** `compat`: version 2 (0.10) or 3 (1.1). */
  compat?: "v2" | "v3";
  /** `lazy_refcounts`: the feature bit (refcounts are complete anyway). */
  lazyRefcounts?: boolean;
  /** `size`, the virtual size (create). */
  size?: number;
}

type OutputFormat = "raw" | "qcow2";

/** The commands that take `-o`. */
export type CreateAction = "convert" | "create" | "measure";

/** One creation option, as `-o help` lists it and as it is applied. */
interface Key {
  formats: OutputFormat[];
  /** `<str>`, `<size>`, `<num>`, `<bool (on/off)>`. */
  kind: string;
  /**
   * What `-o help` says of it (qemu-img's words), by the layer that lists
   * it: the qcow2 or raw format, or the `file` protocol (listed only when
   * a target file is named).
   */
  help: Partial<Record<OutputFormat | "file", string>>;
  /** Stores the value (or throws a UsageError naming what is wrong). */
  apply?: (value: string, out: CreateOptions) => void;
  /** The values accepted because we write them anyway, and nothing else. */
  only?: { values: string[]; otherwise: string };
  /** Refused whatever the value: why. */
  unsupported?: string;
  /**
   * The commands that take any valid value despite `only` and
   * `unsupported` (measure computes sizes and writes nothing); only they
   * get the value stored.
   */
  takenBy?: CreateAction[];
}

/** QEMU's spellings of a boolean (qapi_bool_parse). */
function bool(value: string, key: string): boolean {
  if (["on", "yes", "true", "y"].includes(value)) return true;
  if (["off", "no", "false", "n"].includes(value)) return false;
  throw new UsageError(
    `Cannot parse -o ${key}: "${value}" is not on or off`,
  );
}

/** qemu-img's `encrypt.*` keys of qcow2 (all refused): kind and help. */
function encryptKeys(): Record<string, Key> {
  const keys: [string, string, string][] = [
    ["cipher-alg", "<str>", "Name of encryption cipher algorithm"],
    ["cipher-mode", "<str>", "Name of encryption cipher mode"],
    ["format", "<str>", "Encrypt the image, format choices: 'aes', 'luks'"],
    ["hash-alg", "<str>", "Name of encryption hash algorithm"],
    ["iter-time", "<num>", "Time to spend in PBKDF in milliseconds"],
    ["ivgen-alg", "<str>", "Name of IV generator algorithm"],
    ["ivgen-hash-alg", "<str>", "Name of IV generator hash algorithm"],
    [
      "key-secret",
      "<str>",
      "ID of secret providing qcow AES key or LUKS passphrase",
    ],
  ];
  return Object.fromEntries(keys.map(([name, kind, help]) => [
    `encrypt.${name}`,
    {
      formats: ["qcow2"],
      kind,
      help: { qcow2: help },
      unsupported: "images are not encrypted",
    },
  ]));
}

const KEYS: Record<string, Key> = {
  backing_file: {
    formats: ["qcow2"],
    kind: "<str>",
    help: { qcow2: "File name of a base image" },
    apply: (v, out) => out.backingFile = v,
  },
  backing_fmt: {
    formats: ["qcow2"],
    kind: "<str>",
    help: { qcow2: "Image format of the base image" },
    apply: (v, out) => {
      if (v !== "raw" && v !== "qcow2") {
        throw new UsageError(
          `Cannot parse -o backing_fmt: "${v}" is not raw or qcow2`,
        );
      }
      out.backingFormat = v;
    },
  },
  cluster_size: {
    formats: ["qcow2"],
    kind: "<size>",
    help: { qcow2: "qcow2 cluster size" },
    apply: (v, out) => out.clusterSize = parseSize(v, "-o cluster_size"),
  },
  compat: {
    formats: ["qcow2"],
    kind: "<str>",
    help: { qcow2: "Compatibility level (v2 [0.10] or v3 [1.1])" },
    takenBy: ["convert", "measure"],
    only: {
      values: ["1.1", "v3"],
      otherwise: "create writes qcow2 version 3 (compat=1.1) only",
    },
    apply: (v, out) => {
      if (v === "0.10" || v === "v2") out.compat = "v2";
      else if (v === "1.1" || v === "v3") out.compat = "v3";
      else {
        throw new UsageError(
          `Cannot parse -o compat: "${v}" is not 0.10, v2, 1.1 or v3`,
        );
      }
    },
  },
  compression_type: {
    formats: ["qcow2"],
    kind: "<str>",
    help: {
      qcow2: "Compression method used for image cluster compression",
    },
    apply: (v, out) => {
      if (v !== "zlib" && v !== "zstd") {
        throw new UsageError(
          `Cannot parse -o compression_type: "${v}" is not zlib or zstd`,
        );
      }
      out.compressionType = v;
    },
  },
  data_file: {
    formats: ["qcow2"],
    kind: "<str>",
    help: { qcow2: "File name of an external data file" },
    unsupported: "external data files are read, not written",
  },
  data_file_raw: {
    formats: ["qcow2"],
    kind: "<bool (on/off)>",
    help: {
      qcow2: "The external data file must stay valid as a raw image",
    },
    unsupported: "external data files are read, not written",
  },
  ...encryptKeys(),
  encryption: {
    formats: ["qcow2"],
    kind: "<bool (on/off)>",
    help: {
      qcow2:
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    },
    unsupported: "images are not encrypted",
  },
  extended_l2: {
    formats: ["qcow2"],
    kind: "<bool (on/off)>",
    help: { qcow2: "Extended L2 tables" },
    takenBy: ["measure"],
    apply: (v, out) => out.extendedL2 = bool(v, "extended_l2"),
    only: {
      values: ["off"],
      otherwise: "extended L2 entries are read, not written",
    },
  },
  extent_size_hint: {
    formats: ["qcow2", "raw"],
    kind: "<size>",
    help: {
      file: "Extent size hint for the image file, 0 to disable",
    },
    unsupported: "the output file is a plain file; no hints are set",
  },
  lazy_refcounts: {
    formats: ["qcow2"],
    kind: "<bool (on/off)>",
    help: { qcow2: "Postpone refcount updates" },
    takenBy: ["convert", "measure"],
    only: {
      values: ["off"],
      otherwise: "create sets no lazy refcounts bit",
    },
    apply: (v, out) => out.lazyRefcounts = bool(v, "lazy_refcounts"),
  },
  nocow: {
    formats: ["qcow2", "raw"],
    kind: "<bool (on/off)>",
    help: { file: "Turn off copy-on-write (valid only on btrfs)" },
    unsupported: "file attributes are not set",
  },
  preallocation: {
    formats: ["qcow2", "raw"],
    kind: "<str>",
    help: {
      qcow2: "Preallocation mode (allowed values: off, metadata, falloc, full)",
      file: "Preallocation mode (allowed values: off, falloc, full)",
    },
    takenBy: ["convert", "measure"],
    apply: (v, out) => {
      if (v !== "off" && v !== "metadata" && v !== "falloc" && v !== "full") {
        throw new UsageError(
          `Cannot parse -o preallocation: "${v}" is not off, metadata, falloc or full`,
        );
      }
      out.preallocation = v;
    },
    only: {
      values: ["off"],
      otherwise: "outputs are sparse; nothing is preallocated",
    },
  },
  refcount_bits: {
    formats: ["qcow2"],
    kind: "<num>",
    help: { qcow2: "Width of a reference count entry in bits" },
    apply: (v, out) => out.refcountBits = parseInteger(v, "-o refcount_bits"),
  },
  size: {
    formats: ["qcow2", "raw"],
    kind: "<size>",
    help: {
      qcow2: "Virtual disk size",
      raw: "Virtual disk size",
      file: "Virtual disk size",
    },
    takenBy: ["create", "measure"],
    apply: (v, out) => out.size = parseSize(v, "-o size"),
    unsupported: "the output has the size of the input",
  },
};

/**
 * Splits `-o` lists into keys and values, in order: `,,` is a comma
 * inside a value; a key without `=` has the value `on`.
 *
 * @throws {UsageError} For a list qemu-img refuses: empty, starting with
 * a comma, or ending in a single comma.
 */
export function splitOptionList(lists: string[]): [string, string][] {
  const pairs: [string, string][] = [];
  for (const list of lists) {
    // qemu-img refuses an empty list, a leading comma, and a comma left
    // open at the end (an odd run of them), in these words.
    const trailing = list.length - list.replace(/,+$/, "").length;
    if (list === "" || list.startsWith(",") || trailing % 2 === 1) {
      throw new UsageError(`Invalid option list: ${list}`);
    }
    let item = "";
    const finish = () => {
      if (item === "") return;
      const eq = item.indexOf("=");
      pairs.push(
        eq < 0 ? [item, "on"] : [item.slice(0, eq), item.slice(eq + 1)],
      );
      item = "";
    };
    for (let i = 0; i < list.length; i++) {
      if (list[i] !== ",") {
        item += list[i];
      } else if (list[i + 1] === ",") {
        item += ",";
        i++;
      } else {
        finish();
      }
    }
    finish();
  }
  return pairs;
}

/** Whether `-o` asks for the list of options (`help` or `?` as a key). */
export function asksForHelp(lists: string[]): boolean {
  return splitOptionList(lists).some(([k]) => k === "help" || k === "?");
}

/**
 * What `-o` asks of an output image of `format`.
 *
 * @param lists The values of `-o`, in order.
 * @param format The output format.
 * @param action The command, for what it takes and for messages.
 * @throws {UsageError} For a key qemu-img does not know, a key of the
 * other format, a value we do not write, or a bad value.
 */
export function parseCreateOptions(
  lists: string[],
  format: OutputFormat,
  action: CreateAction = "convert",
): CreateOptions {
  const out: CreateOptions = {};
  const last = new Map(splitOptionList(lists));
  for (const [key, value] of last) {
    const spec = Object.hasOwn(KEYS, key) ? KEYS[key] : undefined;
    if (key.startsWith("encrypt.")) {
      throw new UsageError(
        `Cannot ${action}: -o ${key} is not supported (images are not encrypted)`,
      );
    }
    if (spec === undefined) {
      throw new UsageError(
        `Cannot ${action}: -o ${key} is not an option of ${format} images (see -o help)`,
      );
    }
    if (!spec.formats.includes(format)) {
      throw new UsageError(
        `Cannot ${action}: -o ${key} applies to ${
          spec.formats.join(" and ")
        } output only, and the output is ${format}`,
      );
    }
    const taken = spec.takenBy?.includes(action) ?? false;
    if (spec.unsupported !== undefined && !taken) {
      throw new UsageError(
        `Cannot ${action}: -o ${key} is not supported (${spec.unsupported})`,
      );
    }
    if (spec.only && !taken) {
      // The boolean ones are taken when off, in any of QEMU's spellings.
      const accepted = spec.kind.startsWith("<bool")
        ? !bool(value, key)
        : spec.only.values.includes(value);
      if (!accepted) {
        throw new UsageError(
          `Cannot ${action}: -o ${key}=${value} is not supported (${spec.only.otherwise})`,
        );
      }
    }
    // Keys taken by some commands only are stored for those.
    if (!spec.takenBy || taken) spec.apply?.(value, out);
  }
  return out;
}

/**
 * `-o help`: qemu-img's list of the creation options of `format` (those we
 * refuse included, as qemu-img lists them): with a target file named, the
 * file protocol's options too, under "Supported options:"; without one,
 * the format's alone and a note that the protocol may add more.
 *
 * @param format The output format.
 * @param withTarget Whether the command line names the output file.
 * @returns The text, ending with a newline.
 */
export function createOptionsHelp(
  format: OutputFormat,
  withTarget: boolean,
): string {
  const lines = Object.entries(KEYS).flatMap(([name, k]) => {
    const help = k.help[format] ?? (withTarget ? k.help.file : undefined);
    return help === undefined
      ? []
      : [`  ${`${name}=${k.kind}`.padEnd(22)} - ${help}`];
  }).sort();
  return withTarget
    ? `Supported options:\n${lines.join("\n")}\n`
    : `Supported ${format} options:\n${lines.join("\n")}\n\n` +
      "The protocol level may support further options.\n" +
      "Specify the target filename to include those options.\n";
}

/**
 * The options `qemu-img create` lists on its "Formatting" line, in its
 * order, each with the value listed when it is not given (none: left out).
 */
const FORMATTING_LINE: Record<OutputFormat, [string, string?][]> = {
  qcow2: [
    ["cluster_size", "65536"],
    ["extended_l2", "off"],
    ["preallocation"],
    ["compression_type", "zlib"],
    ["size"],
    ["backing_file"],
    ["backing_fmt"],
    ["compat"],
    ["lazy_refcounts", "off"],
    ["refcount_bits", "16"],
  ],
  raw: [["size"], ["preallocation"]],
};

/**
 * The line `qemu-img create` prints before it creates an image:
 * `Formatting 'FILE', fmt=FMT key=value ...`, sizes and numbers in bytes,
 * strings with commas doubled, booleans as given.
 *
 * @param file The new image's name.
 * @param format Its format.
 * @param lists The values of `-o`, in order.
 * @param given What the command line sets over `-o` (the size, `-b`,
 * `-F`), as qemu-img sets them.
 */
export function formattingLine(
  file: string,
  format: OutputFormat,
  lists: string[],
  given: Record<string, string | number | undefined>,
): string {
  const values = new Map<string, string | number>(splitOptionList(lists));
  for (const [key, value] of Object.entries(given)) {
    if (value !== undefined) values.set(key, value);
  }
  let line = `Formatting '${file}', fmt=${format}`;
  for (const [key, fallback] of FORMATTING_LINE[format]) {
    const value = values.get(key) ?? fallback;
    if (value === undefined) continue;
    const kind = KEYS[key].kind;
    let text = String(value);
    if (typeof value === "string" && kind === "<size>") {
      text = String(parseSize(value, `-o ${key}`));
    } else if (typeof value === "string" && kind === "<num>") {
      text = String(parseInteger(value, `-o ${key}`));
    } else if (kind === "<str>") {
      text = text.replaceAll(",", ",,");
    }
    line += ` ${key}=${text}`;
  }
  return line;
}
