// Command lines read the way qemu-img reads them (glibc getopt_long):
// short flags bundle (`-pc`), a short option takes the rest of its word or
// the next word as its value (`-fqcow2`, `-f qcow2`, `-o -x`), long options
// take `--name=value` or `--name value` and may be shortened to any unique
// prefix, options and operands mix in any order, and `--` ends the
// options. Options that qemu-img has and we do not are named, so that each
// gets a one-line error instead of a misreading.
import { readFormatsText } from "../reader/formats.ts";
import { UsageError } from "./_util.ts";
import { DEFAULT_IDLE_TIMEOUT, type HttpTransport } from "../io/http_source.ts";

/** What each command does, for messages: `Cannot describe image: ...`. */
export const ACTIONS: Record<string, string> = {
  convert: "convert",
  info: "describe image",
  check: "check image",
  map: "map image",
  compare: "compare images",
  measure: "measure",
  create: "create image",
  snapshot: "list snapshots",
};

/** One option of a command, under its long name. */
export interface OptionSpec {
  /** Whether it takes a value (`string`) or is a flag (`boolean`). */
  type: "boolean" | "string";
  /** The one-letter names that spell it too (`"ls"`: `-l` and `-s`). */
  short?: string;
  /** Keep every value given, in order (qemu-img joins repeated `-o`). */
  multiple?: boolean;
  /**
   * qemu-img has this option and we do not support it: why, for the
   * error (`-C is not supported (copy offloading ...)`).
   */
  unsupported?: string;
  /**
   * Refuse an `unsupported` option only once every option is read (as
   * qemu-img checks combinations after reading them all): it is stored in
   * the values and its error kept in {@linkcode ParsedArgs.refused}, for
   * the command to throw after its own checks.
   */
  deferred?: boolean;
  /** The values taken, when only some are: any other one is refused. */
  choices?: readonly string[];
}

/** A command's options by long name. */
export type OptionSpecs = Record<string, OptionSpec>;

/** Parsed values by long name: strings, lists of strings, or flags. */
export type OptionValues<O extends OptionSpecs> = {
  [K in keyof O]?: O[K] extends { type: "string"; multiple: true } ? string[]
    : O[K] extends { type: "string" } ? string
    : boolean;
};

/** What {@linkcode getopt} found. */
export interface ParsedArgs<O extends OptionSpecs> {
  values: OptionValues<O>;
  positionals: string[];
  /** The error of the first `deferred` unsupported option given. */
  refused?: UsageError;
}

/**
 * Parses a command's arguments as qemu-img does.
 *
 * @param command The command, for messages (`convert`).
 * @param args The arguments after the command.
 * @param specs Its options.
 * @throws {UsageError} For an unknown, ambiguous or unsupported option, a
 * missing value, or a value given to a flag.
 */
export function getopt<O extends OptionSpecs>(
  command: string,
  args: string[],
  specs: O,
): ParsedArgs<O> {
  const values: Record<string, string | string[] | boolean> = {};
  const positionals: string[] = [];
  let refused: UsageError | undefined;
  const bad = (reason: string) =>
    new UsageError(
      `Cannot parse ${command} arguments: ${reason} (see ${command} --help)`,
    );
  const set = (name: string, as: string, value: string | true) => {
    const spec = specs[name];
    if (spec.unsupported !== undefined) {
      const error = new UsageError(
        `Cannot ${
          ACTIONS[command] ?? command
        }: ${as} is not supported (${spec.unsupported})`,
      );
      if (!spec.deferred) throw error;
      refused ??= error;
    }
    if (
      spec.choices !== undefined && typeof value === "string" &&
      !spec.choices.includes(value)
    ) {
      throw new UsageError(
        `Cannot ${
          ACTIONS[command] ?? command
        }: ${as} "${value}" is not one of ${spec.choices.join(", ")}`,
      );
    }
    if (spec.multiple && typeof value === "string") {
      values[name] = [...(values[name] as string[] | undefined ?? []), value];
    } else {
      values[name] = value;
    }
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      positionals.push(...args.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const written = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      const name = longName(written, specs, bad);
      const spec = specs[name];
      if (spec.type === "boolean") {
        if (eq >= 0) throw bad(`Option '--${name}' does not take a value`);
        set(name, `--${name}`, true);
      } else if (eq >= 0) {
        set(name, `--${name}`, arg.slice(eq + 1));
      } else {
        if (i + 1 >= args.length) {
          throw bad(`Option '--${name}' needs a value`);
        }
        set(name, `--${name}`, args[++i]);
      }
      continue;
    }
    if (arg.length < 2 || !arg.startsWith("-")) {
      positionals.push(arg);
      continue;
    }
    for (let j = 1; j < arg.length; j++) {
      const letter = arg[j];
      const name = Object.keys(specs).find((k) =>
        specs[k].short?.includes(letter)
      );
      if (name === undefined) throw bad(`Unknown option '-${letter}'`);
      if (specs[name].type === "boolean") {
        set(name, `-${letter}`, true);
        continue;
      }
      if (j + 1 < arg.length) {
        set(name, `-${letter}`, arg.slice(j + 1));
      } else if (i + 1 < args.length) {
        set(name, `-${letter}`, args[++i]);
      } else {
        throw bad(`Option '-${letter}' needs a value`);
      }
      break;
    }
  }
  return { values: values as OptionValues<O>, positionals, refused };
}

/** The long option a written name means: itself, or the one it starts. */
function longName(
  written: string,
  specs: OptionSpecs,
  bad: (reason: string) => UsageError,
): string {
  if (Object.hasOwn(specs, written)) return written;
  const matches = written === ""
    ? []
    : Object.keys(specs).filter((k) => k.startsWith(written));
  if (matches.length === 1) return matches[0];
  if (matches.length === 0) throw bad(`Unknown option '--${written}'`);
  throw bad(
    `Option '--${written}' is ambiguous (${
      matches.map((m) => `--${m}`).join(", ")
    })`,
  );
}

/**
 * The value of `--output` (qemu-img's `human` or `json`), with `--json`
 * as its short form.
 */
export function outputFormat(
  action: string,
  output: string | undefined,
  json: boolean | undefined,
): "human" | "json" {
  if (output !== undefined && output !== "human" && output !== "json") {
    throw new UsageError(
      `Cannot ${action}: --output takes human or json, not "${output}"`,
    );
  }
  if (json && output === "human") {
    throw new UsageError(
      `Cannot ${action}: --json and --output=human contradict each other`,
    );
  }
  return json ? "json" : output ?? "human";
}

/**
 * The cache modes qemu-img takes for `-t` and `-T`. They are accepted and
 * change nothing: files are read and written through the page cache, and
 * the same bytes are written whatever the mode.
 */
export const CACHE_MODES = [
  "none",
  "off",
  "writeback",
  "writethrough",
  "directsync",
  "unsafe",
] as const;

/** `-T`, the source cache mode of qemu-img's check, compare and convert. */
export const SOURCE_CACHE_OPTION = {
  "source-cache": { type: "string", short: "T", choices: CACHE_MODES },
} as const satisfies OptionSpecs;

/** The options every inspection command shares with qemu-img's. */
export const INSPECT_OPTIONS = {
  help: { type: "boolean", short: "h" },
  "force-share": { type: "boolean", short: "U" },
  object: {
    type: "string",
    unsupported: "there are no QEMU objects here; encrypted data is not read",
  },
  "image-opts": {
    type: "boolean",
    unsupported: "give the image as a file name or an http(s) URL",
  },
} as const satisfies OptionSpecs;

/**
 * The options of the commands that only read metadata (info, check, map)
 * with qemu-img's ways of naming an image: `--image-opts` (driver and
 * file.filename only) and `--object secret,...` (for an
 * `encrypt.key-secret` option; never read: nothing is decrypted).
 */
export const NAMING_OPTIONS = {
  ...INSPECT_OPTIONS,
  object: { type: "string", multiple: true },
  "image-opts": { type: "boolean" },
} as const satisfies OptionSpecs;

/** `--http-timeout`, which every command that reads http(s) URLs takes. */
export const HTTP_OPTIONS = {
  "http-timeout": { type: "string" },
} as const satisfies OptionSpecs;

/** The longest `--http-timeout`, in seconds (a day). */
const MAX_HTTP_TIMEOUT = 86_400;

/**
 * How URLs are fetched, from `--http-timeout SECONDS` (how long a request
 * may wait for data; decimals allowed).
 *
 * @throws {UsageError} For a value that is not a number of seconds in
 * range.
 */
export function httpTransport(
  action: string,
  timeout: string | undefined,
): HttpTransport {
  if (timeout === undefined) return {};
  const seconds = /^\d+(\.\d+)?$/.test(timeout) ? Number(timeout) : NaN;
  if (!(seconds > 0 && seconds <= MAX_HTTP_TIMEOUT)) {
    throw new UsageError(
      `Cannot ${action}: --http-timeout "${timeout}" is not a number of seconds in (0, ${MAX_HTTP_TIMEOUT}]`,
    );
  }
  return { idleTimeout: Math.max(1, Math.round(seconds * 1000)) };
}

/**
 * The help lines of `--http-timeout`, its description starting at
 * `column` as the other options' do.
 */
export function httpTimeoutHelp(column: number): string {
  const flag = "      --http-timeout S";
  const pad = " ".repeat(column);
  const first = flag.length < column ? flag.padEnd(column) : `${flag}\n${pad}`;
  return `${first}give up on an http(s) URL when no data came for S
${pad}seconds (default ${
    DEFAULT_IDLE_TIMEOUT / 1000
  }); a dropped connection or a 5xx
${pad}answer is retried from where it stopped`;
}

/**
 * An option's help: `flags`, then `text` from `column` on, wrapped at 80
 * columns. For text that is not a literal (the formats read come from the
 * reader's registry).
 */
export function optionHelp(
  flags: string,
  column: number,
  text: string,
): string {
  const pad = " ".repeat(column);
  const lines: string[] = [];
  let line = flags.length < column ? flags.padEnd(column) : `${flags}\n${pad}`;
  let empty = true;
  for (const word of text.split(/\s+/)) {
    const lastLine = line.slice(line.lastIndexOf("\n") + 1);
    if (!empty && lastLine.length + 1 + word.length > 80) {
      lines.push(line);
      line = pad;
      empty = true;
    }
    line += (empty ? "" : " ") + word;
    empty = false;
  }
  lines.push(line);
  return lines.join("\n");
}

/** The help of `-f`: the formats read, and what probing means. */
export function formatHelp(
  flags: string,
  column: number,
  image: string,
  more = "a probed image may only lead to files in its own directory",
): string {
  return optionHelp(
    flags,
    column,
    `format of ${image}: ${readFormatsText("or")} (default: probed; ${more})`,
  );
}
