// Big-endian helpers shared by the format modules. Private: not exported from mod.ts.
import { hex, Qcow2Error } from "./errors.ts";

const TWO_32 = 0x1_0000_0000;

/** Largest high half of a u64 whose value is still a safe integer. */
const SAFE_HI = 0x1fffff;

/** Returns a DataView over exactly the bytes of `bytes`. */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

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

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / TWO_32));
  view.setUint32(at + 4, value >>> 0);
}

/** Combines two u32 halves into a number (caller ensures hi <= SAFE_HI). */
export function joinU64(hi: number, lo: number): number {
  return hi * TWO_32 + lo;
}

/** Splits a safe integer into [hi, lo] u32 halves. */
export function splitU64(value: number): [number, number] {
  return [Math.floor(value / TWO_32), value >>> 0];
}

/** Decodes bytes as UTF-8 (lossy), as QEMU treats names as byte strings. */
export function decodeText(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}

/** Encodes a string as UTF-8. */
export function encodeText(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** Rounds `value` up to a multiple of `align` (a power of two). */
export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
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

/** The parts back to back in one new buffer. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
