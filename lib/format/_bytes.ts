// u64 fields of the format: read with a range check naming the field, and
// table offsets split with theirs. The plain helpers are lib/bytes/binary.ts.
import { hex, Qcow2Error } from "./errors.ts";
import { splitU64 } from "../bytes/binary.ts";

const TWO_32 = 0x1_0000_0000;

/** Largest high half of a u64 whose value is still a safe integer. */
const SAFE_HI = 0x1fffff;

/**
 * Reads a big-endian u64 as a number, throwing a Qcow2Error naming `field`
 * when the value is not a safe integer.
 */
export function readU64(
  view: DataView,
  at: number,
  field: string,
  action: string,
  base = 0,
): number {
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  if (hi > SAFE_HI) {
    const value = (BigInt(hi) << 32n) | BigInt(lo);
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot ${action}: ${field} ${hex(value)} is out of range [0, 2^53-1]`,
      { offset: base + at, field },
    );
  }
  return hi * TWO_32 + lo;
}

/** Splits a 512-aligned offset below 2^53 into halves, or throws. */
export function splitTableOffset(
  offset: number,
  what: string,
): [number, number] {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % 512 !== 0) {
    throw new RangeError(
      `Cannot encode ${what}: offset ${offset} is not a 512-aligned integer in [0, 2^53)`,
    );
  }
  return splitU64(offset);
}
