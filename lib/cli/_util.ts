// Small helpers shared by the CLI commands. The library never prints; only
// the CLI owns stdout, stderr and exit codes.
import {
  InternalError,
  IoError,
  printable,
  Qcow2Error,
} from "../format/errors.ts";

/** A usage error: wrong flags or arguments (exit code 1, message only). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
  p: 1024 ** 5,
  e: 1024 ** 6,
};

/**
 * Parses sizes like 512, 64k, 64K, 2M, 1G, 1.5G (binary units up to E; a
 * fraction only with a unit; hexadecimal without one, as qemu-img takes
 * them).
 */
export function parseSize(text: string, what: string): number {
  rejectNegative(text, what);
  if (/^\s*0x[0-9a-f]+\s*$/i.test(text)) return parseHex(text, what);
  const m = /^(\d+(?:\.\d+)?)([bkmgtpe]?)(?:i?b)?$/i.exec(text.trim());
  if (!m || (m[1].includes(".") && UNITS[m[2].toLowerCase()] === 1)) {
    throw new UsageError(
      `Cannot parse ${what}: "${text}" is not a size like 512, 64k or 2M`,
    );
  }
  const value = Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()]);
  if (!Number.isSafeInteger(value)) {
    throw new UsageError(`Cannot parse ${what}: "${text}" is too large`);
  }
  return value;
}

/** A size in hexadecimal (`0x1000`), as qemu-img takes it. */
function parseHex(text: string, what: string): number {
  const value = Number(text.trim());
  if (!Number.isSafeInteger(value)) {
    throw new UsageError(`Cannot parse ${what}: "${text}" is too large`);
  }
  return value;
}

/** A negative number given where sizes and counts start at 0. */
function rejectNegative(text: string, what: string): void {
  if (/^\s*-\d/.test(text)) {
    throw new UsageError(
      `Cannot parse ${what}: ${text.trim()} is negative; give 0 or more`,
    );
  }
}

/** Parses a non-negative integer flag. */
export function parseInteger(text: string, what: string): number {
  rejectNegative(text, what);
  if (!/^\d+$/.test(text.trim())) {
    throw new UsageError(
      `Cannot parse ${what}: "${text}" is not a non-negative integer`,
    );
  }
  return Number(text);
}

/**
 * The shortest run whose speed is shown: over less, a speed says more
 * about the clock and the start-up than about the work (a 4 KiB input
 * "at 0.0 MiB/s", a sparse disk's terabytes "at" millions of MiB/s).
 */
const MIN_RATE_SECONDS = 1;

/**
 * A speed in the same binary units as sizes ("26.2 MiB/s", "1.50 GiB/s"),
 * or undefined for a run shorter than a second.
 *
 * @param bytes What was done.
 * @param seconds In how long.
 * @returns The speed, or undefined when it means nothing.
 */
export function formatRate(bytes: number, seconds: number): string | undefined {
  if (!(seconds >= MIN_RATE_SECONDS)) return undefined;
  return `${formatBytes(Math.round(bytes / seconds))}/s`;
}

/** Human-readable binary size. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/**
 * The exit status of a run that failed on an {@linkcode InternalError}
 * (BSD's EX_SOFTWARE): a bug in qcow2pipe, told apart from bad input,
 * whose status is the command's own (1, or 2 for compare, as qemu-img's).
 */
export const EXIT_INTERNAL = 70;

/**
 * A failure printed in qemu-img's words, where scripts written for
 * qemu-img expect them; the library's error is its cause. Its message is
 * the lines to print (the words and, on a second line, qemu-img's hint),
 * each already shown by {@linkcode printable}.
 */
export class QemuWordedError extends Error {
  constructor(message: string, options: ErrorOptions) {
    super(message, options);
    this.name = "QemuWordedError";
  }
}

/**
 * The error, in qemu-img's words when the library gave QEMU's words for
 * it: a reason for not opening the image named `name` on the command line
 * becomes `Could not open 'NAME': REASON`, as qemu-img prints it; a
 * failure's whole message is printed as it is.
 *
 * @param err What opening or reading the image threw.
 * @param name The image as the command line names it.
 * @param messages Whether QEMU's whole messages apply too (they are
 * qemu-img's for `info --backing-chain`, which walks the chain itself).
 * @returns The error to report.
 */
export function inQemuWords(
  err: unknown,
  name: string,
  messages = false,
): unknown {
  if (!(err instanceof Qcow2Error) || err.qemu === undefined) return err;
  const words = err.qemu;
  if ("message" in words && !messages) return err;
  const lines = "failure" in words
    ? [words.failure]
    : "message" in words
    ? [words.message]
    : [`Could not open '${name}': ${words.reason}`, words.hint];
  const shown = lines.filter((line) => line !== undefined).map(printable);
  return new QemuWordedError(shown.join("\n"), { cause: err });
}

/**
 * One line for an error, without a stack trace: the one place that words
 * errors for the user, by the classes of the error contract
 * (lib/format/errors.ts). The library's errors say what could not be done
 * to what (`Cannot open image x: no such file`), and the names in them
 * are shown by {@linkcode printable}, so that a name holding a line break
 * or an escape sequence stays on the line, visible, and the reason after
 * it is kept; an internal error says it is a bug and asks for a report;
 * qemu-img's words keep their second line (the hint), each line shown the
 * same way; anything else keeps its first line and its class name, so
 * that it can be found.
 */
export function describeError(err: unknown): string {
  if (err instanceof InternalError) {
    return `${
      printable(err.message)
    } (an internal error: a bug in qcow2pipe, not a fault of the input; please report it with the command line and the output of QCOW2PIPE_DEBUG=1)`;
  }
  if (
    err instanceof Qcow2Error || err instanceof IoError ||
    err instanceof RangeError || err instanceof UsageError
  ) return printable(err.message);
  // qemu-img's words, with the hint it prints on a second line, each
  // line already shown by printable().
  if (err instanceof QemuWordedError) return err.message;
  if (err instanceof Error) {
    const line = printable(err.message.split("\n")[0]);
    return line.startsWith("Cannot ")
      ? line
      : `${err.name === "Error" ? "" : err.name + ": "}${line}`;
  }
  return printable(String(err).split("\n")[0]);
}

/**
 * Whether QCOW2PIPE_DEBUG asks for stack traces. Without permission to read
 * it, no: the variable is only looked at when Deno allows it, so that a
 * missing `--allow-env` neither prompts nor throws.
 */
function debugRequested(): boolean {
  const env = { name: "env", variable: "QCOW2PIPE_DEBUG" } as const;
  return Deno.permissions.querySync(env).state === "granted" &&
    !!Deno.env.get("QCOW2PIPE_DEBUG");
}

/**
 * Reports a failed command and gives its exit status: one line on stderr
 * (`qcow2pipe: Cannot ...`), the whole error with its stack only when
 * QCOW2PIPE_DEBUG is set; the status is `status`, the command's status
 * for a failure, except {@linkcode EXIT_INTERNAL} for an internal error.
 *
 * @param err What the command threw.
 * @param status The command's exit status for a failure.
 * @returns The exit status.
 */
export function reportError(err: unknown, status = 1): number {
  warn(`qcow2pipe: ${describeError(err)}`);
  if (debugRequested()) console.error(err);
  return err instanceof InternalError ? EXIT_INTERNAL : status;
}

/**
 * The same failure in other words: an error of the same class and code
 * with `message`, the original as its cause (a backing file's open error,
 * said of the backing file).
 */
export function reworded(err: unknown, message: string): Error {
  if (err instanceof Qcow2Error) {
    return new Qcow2Error(err.code, message, {
      offset: err.offset,
      field: err.field,
      cause: err,
    });
  }
  if (err instanceof IoError) {
    return new IoError(err.code, message, { cause: err });
  }
  if (err instanceof InternalError) {
    return new InternalError(message, { cause: err });
  }
  if (err instanceof RangeError) return new RangeError(message, { cause: err });
  if (err instanceof TypeError) return new TypeError(message, { cause: err });
  return new InternalError(message, { cause: err });
}

const encoder = new TextEncoder();

/**
 * The terminal's width, or undefined when stderr is no terminal or the
 * terminal does not know its size (a pseudo-terminal left at 0 × 0).
 */
export function terminalColumns(): number | undefined {
  if (!Deno.stderr.isTerminal()) return undefined;
  try {
    return Deno.consoleSize().columns || undefined;
  } catch {
    return undefined;
  }
}

/** The status line on stderr (the progress bar), not ended by a newline. */
let status: string | undefined;

/**
 * Erases the status line, row by row (erase in line), never with "erase
 * below": at the top-left of a tmux pane, that clears the screen and
 * copies it into the scrollback, once per redraw. When the terminal got
 * narrower than the line since it was drawn, the terminal has wrapped it
 * onto several rows (tmux, VTE, kitty and others reflow on resize): each
 * is erased, from the cursor's row up to the first.
 */
function eraseStatus(): string {
  if (status === undefined) return "";
  const columns = terminalColumns();
  const rows = columns ? Math.max(1, Math.ceil(status.length / columns)) : 1;
  return "\r\x1b[K" + "\x1b[A\r\x1b[K".repeat(rows - 1);
}

/**
 * Draws `text` as the status line in place of the previous one; with
 * `undefined`, removes it, or with `keep` ends it with a newline so that it
 * stays on screen.
 */
export function setStatusLine(
  text: string | undefined,
  options: { keep?: boolean } = {},
): void {
  let out: string;
  if (text === undefined) {
    out = status === undefined ? "" : options.keep ? "\n" : eraseStatus();
  } else {
    out = eraseStatus() + text;
  }
  status = text;
  if (out) Deno.stderr.writeSync(encoder.encode(out));
}

/**
 * Writes a line to stderr, erasing the status line first, so that a message
 * never lands on the end of the progress bar.
 */
export function warn(line: string): void {
  const erase = eraseStatus();
  status = undefined;
  const named = line.startsWith(PREFIX)
    ? programName() + line.slice(PREFIX.length - 2)
    : line;
  Deno.stderr.writeSync(encoder.encode(erase + named + "\n"));
}

/** How our messages start. */
const PREFIX = "qcow2pipe: ";
/** Where a wrapper that runs us under another name says which. */
const NAME_VARIABLE = "QCOW2PIPE_PROGRAM_NAME";
let name: string | undefined;

/**
 * The name messages start with: qcow2pipe, or the name a wrapper gives in
 * QCOW2PIPE_PROGRAM_NAME (qemu-img names itself by the name it was run
 * as, and qemu-iotests' expected outputs say `qemu-img: `; iotests/ runs
 * us that way). Read only where the environment may be read, so that
 * narrow permissions neither prompt nor fail.
 */
function programName(): string {
  if (name !== undefined) return name;
  name = "qcow2pipe";
  const env = { name: "env", variable: NAME_VARIABLE } as const;
  if (Deno.permissions.querySync(env).state === "granted") {
    const given = Deno.env.get(NAME_VARIABLE);
    if (given && /^[\w.+-]{1,64}$/.test(given)) name = given;
  }
  return name;
}
