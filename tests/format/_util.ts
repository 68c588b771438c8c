// Shared helpers for the format tests (not a test file).
import assert from "node:assert";
import { Qcow2Error, type Qcow2ErrorCode } from "../../lib/format/errors.ts";
export { prng } from "../../lib/_prng.ts";

/** A random integer in [0, max] (max up to 2^53 - 1). */
export function randomInt(rand: () => number, max: number): number {
  if (max <= 0xffffffff) return Math.floor(rand() * (max + 1));
  const hiMax = Math.floor(max / 0x1_0000_0000);
  for (;;) {
    const hi = Math.floor(rand() * (hiMax + 1));
    const lo = Math.floor(rand() * 0x1_0000_0000);
    const v = hi * 0x1_0000_0000 + lo;
    if (v <= max) return v;
  }
}

/** What a thrown Qcow2Error must look like. */
export interface ExpectedQcow2Error {
  code: Qcow2ErrorCode;
  message?: string;
  field?: string;
  offset?: number;
}

/** Asserts that `fn` throws a Qcow2Error with the given properties. */
export function assertQcow2Error(
  fn: () => unknown,
  expected: ExpectedQcow2Error,
): Qcow2Error {
  let caught: unknown = undefined;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(
    caught instanceof Qcow2Error,
    `expected a Qcow2Error, got ${String(caught)}`,
  );
  assert.strictEqual(caught.name, "Qcow2Error");
  assert.strictEqual(caught.code, expected.code);
  if (expected.message !== undefined) {
    assert.strictEqual(caught.message, expected.message);
  }
  if ("field" in expected) assert.strictEqual(caught.field, expected.field);
  if ("offset" in expected) assert.strictEqual(caught.offset, expected.offset);
  return caught;
}

/** Asserts that `fn` throws a RangeError with exactly this message. */
export function assertRangeError(fn: () => unknown, message: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof RangeError, `expected RangeError, got ${e}`);
    assert.strictEqual(e.message, message);
    return true;
  });
}

/** Reads a big-endian u64 of `bytes` at `at` as a bigint. */
export function u64At(bytes: Uint8Array, at: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .getBigUint64(at);
}

/** Writes a big-endian u64 bigint into `bytes` at `at`. */
export function setU64(bytes: Uint8Array, at: number, value: bigint): void {
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    .setBigUint64(at, value);
}
