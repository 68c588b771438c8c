/**
 * The error type for images that are malformed, unsupported or corrupt.
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
 * - `IO`: the underlying source failed
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
  | "DECOMPRESS"
  | "IO";

/** Where in an image a {@linkcode Qcow2Error} was found. *
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
}

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
