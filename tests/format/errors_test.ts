import assert from "node:assert";
import { hex, Qcow2Error } from "../../lib/format/errors.ts";

Deno.test("Qcow2Error carries code, message, offset, field and cause", () => {
  const cause = new Error("underlying");
  const err = new Qcow2Error(
    "OUT_OF_RANGE",
    "Cannot parse header: cluster_bits 31 is out of range [9, 21]",
    { offset: 20, field: "cluster_bits", cause },
  );
  assert.ok(err instanceof Error);
  assert.ok(err instanceof Qcow2Error);
  assert.strictEqual(err.name, "Qcow2Error");
  assert.strictEqual(err.code, "OUT_OF_RANGE");
  assert.strictEqual(
    err.message,
    "Cannot parse header: cluster_bits 31 is out of range [9, 21]",
  );
  assert.strictEqual(err.offset, 20);
  assert.strictEqual(err.field, "cluster_bits");
  assert.strictEqual(err.cause, cause);
});

Deno.test("Qcow2Error leaves offset, field and cause undefined when not given", () => {
  const err = new Qcow2Error("CORRUPT", "Cannot read: the image is corrupt");
  assert.strictEqual(err.offset, undefined);
  assert.strictEqual(err.field, undefined);
  assert.strictEqual(err.cause, undefined);
  assert.strictEqual("cause" in err, false);
});

Deno.test("hex() formats numbers and bigints with a 0x prefix in lower case", () => {
  assert.strictEqual(hex(0), "0x0");
  assert.strictEqual(hex(65536), "0x10000");
  assert.strictEqual(hex(0x514649fb), "0x514649fb");
  assert.strictEqual(hex(Number.MAX_SAFE_INTEGER), "0x1fffffffffffff");
  assert.strictEqual(hex(0xffffffffffffffffn), "0xffffffffffffffff");
});
