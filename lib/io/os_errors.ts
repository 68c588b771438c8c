// Wording of operating-system errors inside our one-line messages, so that
// every command says the same thing for the same failure, and the one
// place that turns them into IoErrors (lib/format/errors.ts has the
// contract).

import {
  InternalError,
  IoError,
  type IoErrorCode,
  Qcow2Error,
} from "../format/errors.ts";

/**
 * The OS's words for an I/O error, first letter lowered to continue a
 * sentence: "no space left on device (os error 28)".
 */
export function ioReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.charAt(0).toLowerCase() + message.slice(1);
}

/**
 * The classes of Deno's OS errors (`Deno.errors`), by name. They take
 * `(message, options)` as Error does. Named rather than taken from `Deno`
 * so that the runtime-neutral reader can word errors too (elsewhere no
 * error has these classes and the names never match).
 */
const OS_ERRORS = new Set([
  "NotFound",
  "PermissionDenied",
  "ConnectionRefused",
  "ConnectionReset",
  "ConnectionAborted",
  "NotConnected",
  "AddrInUse",
  "AddrNotAvailable",
  "BrokenPipe",
  "AlreadyExists",
  "InvalidData",
  "TimedOut",
  "Interrupted",
  "WriteZero",
  "WouldBlock",
  "UnexpectedEof",
  "BadResource",
  "Http",
  "Busy",
  "NotSupported",
  "FilesystemLoop",
  "IsADirectory",
  "NetworkUnreachable",
  "NotADirectory",
  "NotCapable",
]);

function osError(err: unknown): string | undefined {
  return err instanceof Error && OS_ERRORS.has(err.name) &&
      err.constructor.name === err.name
    ? err.name
    : undefined;
}

/** Node's error codes (`err.code`) for the same failures, where Node runs this. */
const NODE_CODES: Record<string, IoErrorCode> = {
  ENOENT: "NOT_FOUND",
  ENOTDIR: "NOT_FOUND",
  EACCES: "PERMISSION",
  EPERM: "PERMISSION",
  EEXIST: "EXISTS",
  EISDIR: "NOT_A_FILE",
  ETIMEDOUT: "TIMEOUT",
  ECONNREFUSED: "NETWORK",
  ECONNRESET: "NETWORK",
  ENETUNREACH: "NETWORK",
};

/**
 * The {@linkcode IoErrorCode} of an operating-system error (Deno's classes
 * by name, Node's `code`), or of an IoError already made; `OTHER` for
 * anything else.
 */
export function ioCode(err: unknown): IoErrorCode {
  if (err instanceof IoError) return err.code;
  switch (osError(err)) {
    case "NotFound":
    case "NotADirectory":
      return "NOT_FOUND";
    case "PermissionDenied":
    case "NotCapable":
      return "PERMISSION";
    case "AlreadyExists":
      return "EXISTS";
    case "IsADirectory":
      return "NOT_A_FILE";
    case "TimedOut":
      return "TIMEOUT";
    case "ConnectionRefused":
    case "ConnectionReset":
    case "ConnectionAborted":
    case "NotConnected":
    case "NetworkUnreachable":
    case "AddrNotAvailable":
      return "NETWORK";
  }
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && Object.hasOwn(NODE_CODES, code)
    ? NODE_CODES[code]
    : "OTHER";
}

/**
 * Why a file could not be opened, read or written, in the words every
 * command uses: "no such file", "it is a directory", "permission denied",
 * a missing Deno permission as Deno words it, else the OS's words without
 * the call and path Deno appends (`: open 'x'`). For an IoError already
 * made (`FileSource.open`'s), the words for its cause.
 */
export function fileReason(err: unknown): string {
  if (err instanceof IoError) {
    return err.cause !== undefined
      ? fileReason(err.cause)
      : err.message.replace(/^Cannot .*?: /, "");
  }
  switch (osError(err)) {
    case "NotFound":
      return "no such file";
    case "IsADirectory":
      return "it is a directory";
    case "NotADirectory":
      return "a part of the path is not a directory";
    case "PermissionDenied":
      return "permission denied";
  }
  return ioReason(err).split("\n")[0].replace(/: [a-z_]+ '.*'$/, "");
}

/**
 * An IoError saying what could not be done to which file
 * (`Cannot open image disk.raw: no such file`), its code from the OS error
 * (`NOT_FOUND`), and the OS error as its cause (an IoError given is
 * unwrapped to its cause, so that the OS error stays the cause).
 *
 * @param what The action and the file: `open image disk.raw`.
 * @param err The OS error.
 */
export function fileError(what: string, err: unknown): IoError {
  const cause = err instanceof IoError ? err.cause ?? err : err;
  return new IoError(ioCode(err), `Cannot ${what}: ${fileReason(err)}`, {
    cause,
  });
}

/**
 * A source's failure while the reader reads `what` (`guest offset 0x10000:
 * 65536 bytes at host offset 0x50000 of disk.qcow2`): an IoError with the
 * source's code and the failure as its cause. What the source found wrong
 * with the image (a Qcow2Error), a bug (InternalError) and a bad call
 * (RangeError) pass through as they are. The source's message is kept as
 * it is (an operating-system error in the words every command uses).
 */
export function readError(what: string, err: unknown): Error {
  if (
    err instanceof Qcow2Error || err instanceof InternalError ||
    err instanceof RangeError
  ) return err;
  const reason = osError(err) !== undefined
    ? fileReason(err)
    : err instanceof Error
    ? err.message
    : String(err);
  return new IoError(ioCode(err), `Cannot read ${what}: ${reason}`, {
    cause: err,
  });
}
