// Bounds every image type checks: a guest range inside the disk, and
// metadata read whole from a file.

import { hex, Qcow2Error } from "../format/errors.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { readError } from "../io/os_errors.ts";

/** Throws a RangeError unless `[offset, offset + length)` is inside the disk. */
export function checkRange(offset: number, length: number, size: number): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) ||
    offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new RangeError(
      `Cannot read guest range: [${offset}, ${
        offset + length
      }) is outside the virtual disk [0, ${size})`,
    );
  }
}

/**
 * Reads exactly `length` bytes or throws a TRUNCATED Qcow2Error naming
 * `what`; into `into` (at least `length` bytes) where the source can.
 */
export async function readExact(
  source: RandomAccessSource,
  offset: number,
  length: number,
  what: string,
  into?: Uint8Array,
): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    if (into && source.readInto) {
      bytes = into.subarray(0, length);
      bytes = bytes.subarray(0, await source.readInto(offset, bytes));
    } else bytes = await source.read(offset, length);
  } catch (err) {
    throw readError(`${what} at ${hex(offset)}`, err);
  }
  if (bytes.length < length) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read ${what}: ${length} bytes at ${
        hex(offset)
      } run past the end of the file (${source.size} bytes)`,
      { offset },
    );
  }
  return bytes;
}
