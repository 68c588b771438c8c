// Wording of operating-system errors inside our one-line messages, so that
// every command says the same thing for the same failure.

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

/**
 * Why a file could not be opened, read or written, in the words every
 * command uses: "no such file", "it is a directory", "permission denied",
 * a missing Deno permission as Deno words it, else the OS's words without
 * the call and path Deno appends (`: open 'x'`).
 */
export function fileReason(err: unknown): string {
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
 * An error saying what could not be done to which file
 * (`Cannot open image disk.raw: no such file`), of the same class as the
 * OS error it wraps, so that callers can still tell a missing file from
 * other failures.
 *
 * @param what The action and the file: `open image disk.raw`.
 * @param err The OS error.
 */
export function fileError(what: string, err: unknown): Error {
  const message = `Cannot ${what}: ${fileReason(err)}`;
  const Class = osError(err)
    ? (err as Error).constructor as ErrorConstructor
    : Error;
  return new Class(message, { cause: err });
}
