/**
 * Binary helpers under every layer: a DataView over exactly a view's bytes,
 * u64 values as two big-endian u32 halves, alignment, text, concatenation.
 * No format knowledge: what a field means is the format's.
 *
 * @module
 */

const TWO_32 = 0x1_0000_0000;

/** Returns a DataView over exactly the bytes of `bytes`. */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / TWO_32));
  view.setUint32(at + 4, value >>> 0);
}

/**
 * The big-endian u32 at `at`, by byte arithmetic: no DataView made for a
 * table entry decoded once per cluster.
 */
export function u32be(bytes: Uint8Array, at: number): number {
  return ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) |
    bytes[at + 3]) >>> 0;
}

/** Combines two u32 halves into a number (caller ensures hi <= SAFE_HI). */
export function joinU64(hi: number, lo: number): number {
  return hi * TWO_32 + lo;
}

/** Splits a safe integer into [hi, lo] u32 halves. */
export function splitU64(value: number): [number, number] {
  return [Math.floor(value / TWO_32), value >>> 0];
}

/** One decoder for every call (a snapshot table decodes two names each). */
const UTF8 = new TextDecoder();

/** Decodes bytes as UTF-8 (lossy), as QEMU treats names as byte strings. */
export function decodeText(bytes: Uint8Array): string {
  return UTF8.decode(bytes);
}

/** Encodes a string as UTF-8. */
export function encodeText(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** Rounds `value` up to a multiple of `align` (a power of two). */
export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
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
