/**
 * The error contract of qcow2pipe: which class a caller catches for what.
 * Every function of the package throws (or rejects with) one of four kinds
 * of error, and nothing else:
 *
 * | class | when | what it carries |
 * | --- | --- | --- |
 * | {@linkcode Qcow2Error} | the image's content: malformed, unsupported, corrupt, or a reference (backing or data file) that may not be followed | `code` ({@linkcode Qcow2ErrorCode}), `offset` and `field` where known |
 * | {@linkcode IoError} | files and HTTP: a file cannot be opened, read, written or renamed, a destination exists or is refused, a server answers with an error, ignores Range, times out or drops the connection | `code` ({@linkcode IoErrorCode}) and `cause`: the operating system's or `fetch`'s error, when there is one |
 * | `RangeError`, `TypeError` | bad options or arguments, found without looking at any file: a value out of range, a wrong type, a path where no file access is loaded | the option, its value and the allowed range in the message |
 * | {@linkcode InternalError} | a broken invariant: a bug in qcow2pipe, never the input's fault | what was found, and `cause` when there is one |
 *
 * A rule decides between the first three: what is found by reading the
 * image's bytes is a `Qcow2Error`; what the file system or the network
 * says (including "this file exists" and "this is a directory") is an
 * `IoError`; what is wrong with the call itself, whatever the files hold,
 * is a `RangeError` or `TypeError`. Where a source fails under a read,
 * the reader says what it was reading in an `IoError` with the source's
 * code, and the source's error as its `cause`.
 *
 * Every message is one line, `Cannot <action>: <reason>`, naming the file,
 * URL or option and the value and limit involved
 * (`Cannot open image disk.raw: no such file`). A name is given as it is
 * (as the caller gave it, as the image stores it), so that a program can
 * find it in the message; a name may hold any character, a line break or
 * an escape sequence too, and a program that shows a message to a person
 * shows it with {@linkcode printable}. A stream that a caller cancels or
 * aborts fails with the reason the caller gave.
 *
 * @example Catch by class
 * ```ts
 * import assert from "node:assert";
 * import { InternalError, IoError, Qcow2Error } from "./errors.ts";
 * function advice(err: unknown): string {
 *   if (err instanceof Qcow2Error) return `the image is bad (${err.code})`;
 *   if (err instanceof IoError) return `check the file or server (${err.code})`;
 *   if (err instanceof RangeError || err instanceof TypeError) return "fix the call";
 *   if (err instanceof InternalError) return "report a bug";
 *   throw err;
 * }
 * const missing = new IoError("NOT_FOUND", "Cannot open image a.raw: no such file");
 * assert.strictEqual(advice(missing), "check the file or server (NOT_FOUND)");
 * ```
 *
 * @module
 */

/**
 * Machine-readable reason a {@linkcode Qcow2Error} was raised.
 *
 * - `BAD_MAGIC`: the file does not start with the qcow2 magic
 * - `UNSUPPORTED_FORMAT`: the image is in another format (VMDK, VHD, ...),
 *   probed by its signature
 * - `UNSUPPORTED_VERSION`: version other than 2 or 3
 * - `OUT_OF_RANGE`: a field holds a value outside what the format or QEMU allows
 * - `UNALIGNED`: an offset that must be cluster (or sector) aligned is not
 * - `RESERVED_BITS`: reserved bits of a field or entry are set
 * - `TRUNCATED`: a structure extends past the end of the file or buffer
 * - `UNSUPPORTED_FEATURE`: unknown incompatible feature bits
 * - `ENCRYPTED`: the image is encrypted (AES or LUKS)
 * - `CORRUPT`: the corrupt bit is set or metadata contradicts itself
 * - `BAD_EXTENSION`: a header extension is malformed
 * - `BAD_SNAPSHOT`: a snapshot table entry is malformed or not found
 * - `BACKING`: a backing file cannot be used (missing, loop, too deep)
 * - `UNTRUSTED_REFERENCE`: a backing or data file may not be followed (an
 *   image whose format was probed names a file outside its directory)
 * - `DECOMPRESS`: a compressed cluster does not decompress to a full cluster
 *
 * @example Tell a damaged image from a failing disk
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../reader/open.ts";
 * import { Qcow2Error, type Qcow2ErrorCode } from "./errors.ts";
 * const bad = new Uint8Array(512);
 * bad.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 9]); // qcow2 magic, version 9
 * const code: Qcow2ErrorCode | undefined = await openImage(bad, { format: "qcow2" })
 *   .then(() => undefined, (e) => e instanceof Qcow2Error ? e.code : undefined);
 * assert.strictEqual(code, "UNSUPPORTED_VERSION");
 * ```
 */
export type Qcow2ErrorCode =
  | "BAD_MAGIC"
  | "UNSUPPORTED_FORMAT"
  | "UNSUPPORTED_VERSION"
  | "OUT_OF_RANGE"
  | "UNALIGNED"
  | "RESERVED_BITS"
  | "TRUNCATED"
  | "UNSUPPORTED_FEATURE"
  | "ENCRYPTED"
  | "CORRUPT"
  | "BAD_EXTENSION"
  | "BAD_SNAPSHOT"
  | "BACKING"
  | "UNTRUSTED_REFERENCE"
  | "DECOMPRESS";

/**
 * Where in an image a {@linkcode Qcow2Error} was found.
 *
 * @example Point at the field that is wrong
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Error, type Qcow2ErrorOptions } from "./errors.ts";
 * const where: Qcow2ErrorOptions = { offset: 20, field: "cluster_bits" };
 * const err = new Qcow2Error("OUT_OF_RANGE", "Cannot parse header: cluster_bits 31 is out of range [9, 21]", where);
 * assert.strictEqual(`${err.field} at ${err.offset}`, "cluster_bits at 20");
 * ```
 */
export interface Qcow2ErrorOptions extends ErrorOptions {
  /** Host (file) offset of the offending structure, when known. */
  offset?: number;
  /** Name of the offending field, as the specification spells it. */
  field?: string;
  /**
   * How QEMU 7.2 words the same condition, where scripts written for
   * qemu-img expect its words: the reason it gives for not opening the
   * image (qemu-img prints `Could not open 'NAME': REASON`), or its whole
   * message.
   */
  qemu?: QemuWords;
}

/**
 * QEMU's words for an error: the reason an image could not be opened
 * (with the hint qemu-img prints on the next line, if any); a
 * whole message (without qemu-img's program name) that qemu-img prints
 * when it walks a backing chain itself (`info --backing-chain`); or a
 * whole message that any command prints (`failure`: reading the image
 * failed after it was opened, as with a snapshot's L1 table).
 *
 * @example The reason QEMU gives for a short L1 table
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Error } from "./errors.ts";
 * const err = new Qcow2Error("OUT_OF_RANGE", "Cannot open image: l1_size 0 is too small", {
 *   qemu: { reason: "L1 table is too small" },
 * });
 * assert.deepStrictEqual(err.qemu, { reason: "L1 table is too small" });
 * ```
 */
export type QemuWords =
  | { reason: string; hint?: string }
  | { message: string }
  | { failure: string };

/**
 * An image is malformed, unsupported or corrupt. The message is one line in
 * the form `Cannot <action>: <reason>` naming the field, value and allowed
 * range; {@linkcode Qcow2Error.code} says why in a machine-readable way.
 *
 * @example Raise and inspect
 * ```ts
 * import assert from "node:assert";
 * import { Qcow2Error } from "./errors.ts";
 * const err = new Qcow2Error(
 *   "OUT_OF_RANGE",
 *   "Cannot parse header: cluster_bits 31 is out of range [9, 21]",
 *   { offset: 20, field: "cluster_bits" },
 * );
 * assert(err.offset === 20 && err.field === "cluster_bits");
 * ```
 */
export class Qcow2Error extends Error {
  /** Machine-readable reason. */
  readonly code: Qcow2ErrorCode;
  /** Host offset of the offending structure, when known. */
  readonly offset: number | undefined;
  /** Name of the offending field, when known. */
  readonly field: string | undefined;
  /** QEMU's words for the condition, where it has words of its own. */
  readonly qemu: QemuWords | undefined;

  /**
   * Creates an error.
   *
   * @param code Machine-readable reason.
   * @param message One-line message, `Cannot <action>: <reason>`.
   * @param options Offset, field and cause.
   */
  constructor(
    code: Qcow2ErrorCode,
    message: string,
    options: Qcow2ErrorOptions = {},
  ) {
    super(message, options.cause === undefined ? {} : { cause: options.cause });
    this.name = "Qcow2Error";
    this.code = code;
    this.offset = options.offset;
    this.field = options.field;
    this.qemu = options.qemu;
  }
}

/**
 * Machine-readable reason an {@linkcode IoError} was raised.
 *
 * - `NOT_FOUND`: a file, directory or device does not exist (a symbolic
 *   link to nothing included)
 * - `PERMISSION`: the operating system or the runtime's permissions refused
 *   access
 * - `EXISTS`: the destination exists and `noClobber` keeps it, or a file
 *   appeared there while the output was written
 * - `NOT_A_FILE`: the path is a directory, a socket or another kind of file
 *   that cannot be used for this (a stream where offsets are needed)
 * - `CHANGED`: a file or resource changed while it was being read or opened
 *   (its size, ETag or contents)
 * - `HTTP`: the server answered with an error status, or with an answer that
 *   cannot be used (a refused redirect, an encoded body, a wrong range)
 * - `RANGE_NOT_SUPPORTED`: the server does not serve byte ranges of the
 *   resource (it answered a Range request with the whole resource)
 * - `NETWORK`: the connection failed or broke, after the retries
 * - `TIMEOUT`: no data came within the idle timeout
 * - `OTHER`: any other failure; `cause` holds the operating system's error
 *   (no space left on the device, an input/output error, the output is
 *   one of the inputs)
 *
 * @example Retry only what may pass the next time
 * ```ts
 * import assert from "node:assert";
 * import { IoError, type IoErrorCode } from "./errors.ts";
 * const transient: IoErrorCode[] = ["NETWORK", "TIMEOUT"];
 * const err = new IoError("TIMEOUT", "Cannot fetch http://h/d.qcow2: no data came for 30 s");
 * assert.ok(transient.includes(err.code));
 * ```
 */
export type IoErrorCode =
  | "NOT_FOUND"
  | "PERMISSION"
  | "EXISTS"
  | "NOT_A_FILE"
  | "CHANGED"
  | "HTTP"
  | "RANGE_NOT_SUPPORTED"
  | "NETWORK"
  | "TIMEOUT"
  | "OTHER";

/**
 * A file or an HTTP resource cannot be opened, read, written or put in
 * place. The message is one line in the form `Cannot <action>: <reason>`
 * naming the file or URL; {@linkcode IoError.code} says why in a
 * machine-readable way, and `cause` is the lower error (the operating
 * system's, `fetch`'s) when there is one.
 *
 * @example Tell a missing file from other failures
 * ```ts
 * import assert from "node:assert";
 * import { IoError } from "./errors.ts";
 * const os = new Error("No such file or directory (os error 2)");
 * const err = new IoError("NOT_FOUND", "Cannot open image a.raw: no such file", { cause: os });
 * assert.ok(err instanceof IoError && err.code === "NOT_FOUND" && err.cause === os);
 * ```
 */
export class IoError extends Error {
  /** Machine-readable reason. */
  readonly code: IoErrorCode;

  /**
   * Creates an error.
   *
   * @param code Machine-readable reason.
   * @param message One-line message, `Cannot <action>: <reason>`, naming
   * the file or URL.
   * @param options The lower error as `cause`, when there is one.
   */
  constructor(code: IoErrorCode, message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? {} : { cause: options.cause });
    this.name = "IoError";
    this.code = code;
  }
}

/**
 * A broken invariant: a bug in qcow2pipe, never the fault of the input or
 * of the call. The message says what was found (`Cannot finish the
 * metadata: refcount block 3 was never written`); a caller can only report
 * it.
 *
 * @example Report a bug apart from bad input
 * ```ts
 * import assert from "node:assert";
 * import { InternalError } from "./errors.ts";
 * function line(err: Error): string {
 *   return err instanceof InternalError
 *     ? `${err.message} (a bug in qcow2pipe; please report it)`
 *     : err.message;
 * }
 * const err = new InternalError("Cannot place L2 table 2: it was already written");
 * assert.match(line(err), /a bug in qcow2pipe/);
 * assert.doesNotMatch(line(new RangeError("Cannot convert: workers -1")), /bug/);
 * ```
 */
export class InternalError extends Error {
  /**
   * Creates an error.
   *
   * @param message One-line message, `Cannot <action>: <reason>`.
   * @param options The error that revealed the bug, as `cause`.
   */
  constructor(message: string, options: ErrorOptions = {}) {
    super(message, options.cause === undefined ? {} : { cause: options.cause });
    this.name = "InternalError";
  }
}

/**
 * Formats a number as hex: the one hex formatter of the package. The
 * default `0x10000` is for error messages; QEMU's messages, reproduced by
 * the tools, use C's `%lx` (`bare`: `10000`) and `%#lx` (`c-alt`: `0x10000`,
 * but `0` for zero).
 *
 * @param value A non-negative integer (exact above 2^53 as a bigint).
 * @param style `0x` (default), `bare` or `c-alt`.
 * @returns e.g. `0x10000`.
 *
 * @example Format an offset
 * ```ts
 * import assert from "node:assert";
 * import { hex } from "./errors.ts";
 * assert(hex(65536) === "0x10000");
 * assert(hex(0, "c-alt") === "0" && hex(2n ** 63n, "bare") === "8000000000000000");
 * ```
 */
export function hex(
  value: number | bigint,
  style: "0x" | "bare" | "c-alt" = "0x",
): string {
  const digits = typeof value === "number" && !Number.isSafeInteger(value)
    ? BigInt(value).toString(16)
    : value.toString(16);
  if (style === "bare") return digits;
  if (style === "c-alt" && (value === 0 || value === 0n)) return "0";
  return "0x" + digits;
}

/**
 * Characters that must not reach a terminal as they are: the C0 controls,
 * DEL and the C1 controls (line breaks, escape sequences), the Unicode line
 * and paragraph separators, the bidirectional embeddings, overrides and
 * isolates (U+202A–U+202E, U+2066–U+2069), which reorder what follows them
 * on screen, a surrogate not in a pair, and the backslash that starts the
 * escapes.
 */
const UNPRINTABLE =
  // deno-lint-ignore no-control-regex -- control characters are what it finds
  /[\0-\x1f\x7f-\x9f\\\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udfff]/gu;

/** The escapes of {@linkcode printable} with a letter of their own. */
const SHORT_ESCAPES: Record<string, string> = {
  "\\": "\\\\",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
};

/**
 * Shows text on one line, safe for a terminal: the one escaper of the
 * package, for names that come from an image or from the caller (a backing
 * file, a tar member, a file of a filesystem) and the messages that hold
 * them. A line break is shown as `\n`, `\r` or `\t`; another control
 * character (C0, DEL, C1) as `\xHH`, its code point in two hex digits; a
 * line or paragraph separator, a bidirectional override or isolate, or a
 * lone surrogate as `\uHHHH`; a backslash as `\\`, so that what is shown
 * reads back to one text only. Everything else, spaces and letters of any
 * script included, is shown as it is. Error messages hold names as they
 * were given (a program may compare them); a program that shows a message
 * to a person passes it through this function, as the qcow2pipe command
 * does.
 *
 * @param text Any text.
 * @returns The same text where every character is one a terminal prints
 * as itself; `text` itself when there was nothing to escape.
 *
 * @example Show a hostile backing file name on one line
 * ```ts
 * import assert from "node:assert";
 * import { printable } from "./errors.ts";
 * const name = "evil\x1b[31mRED\nsecond line";
 * assert.strictEqual(printable(`Cannot open backing file "${name}"`),
 *   'Cannot open backing file "evil\\x1b[31mRED\\nsecond line"');
 * assert.strictEqual(printable("disque été.qcow2"), "disque été.qcow2");
 * ```
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (ch) => {
    const short = SHORT_ESCAPES[ch];
    if (short !== undefined) return short;
    const code = ch.charCodeAt(0);
    return code < 0x100
      ? `\\x${code.toString(16).padStart(2, "0")}`
      : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}
