// Small helpers shared by the CLI commands. The library never prints; only
// the CLI owns stdout, stderr and exit codes.
import { Qcow2Error } from "../format/errors.ts";
import { OutputExistsError } from "../io/output_file.ts";

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
};

/** Parses sizes like 512, 64k, 64K, 2M, 1G (binary units). */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)([bkmgt]?)(?:i?b)?$/i.exec(text.trim());
  if (!m) {
    throw new UsageError(
      `Cannot parse ${what}: "${text}" is not a size like 512, 64k or 2M`,
    );
  }
  const value = Number(m[1]) * UNITS[m[2].toLowerCase()];
  if (!Number.isSafeInteger(value)) {
    throw new UsageError(`Cannot parse ${what}: "${text}" is too large`);
  }
  return value;
}

/** Parses a non-negative integer flag. */
export function parseInteger(text: string, what: string): number {
  if (!/^\d+$/.test(text.trim())) {
    throw new UsageError(
      `Cannot parse ${what}: "${text}" is not a non-negative integer`,
    );
  }
  return Number(text);
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
 * One line for an error, without a stack trace. The library's errors say
 * what could not be done to what (`Cannot open image x: no such file`);
 * anything else keeps its class name, so that it can be found.
 */
export function describeError(err: unknown): string {
  if (
    err instanceof Qcow2Error || err instanceof RangeError ||
    err instanceof UsageError || err instanceof OutputExistsError
  ) return err.message;
  if (err instanceof Error) {
    const line = err.message.split("\n")[0];
    return line.startsWith("Cannot ")
      ? line
      : `${err.name === "Error" ? "" : err.name + ": "}${line}`;
  }
  return String(err);
}

/** Writes a line to stderr. */
export function warn(line: string): void {
  Deno.stderr.writeSync(new TextEncoder().encode(line + "\n"));
}
