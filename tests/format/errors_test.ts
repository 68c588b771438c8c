import assert from "node:assert";
import { hex, printable, Qcow2Error } from "../../lib/format/errors.ts";

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

Deno.test("printable() escapes what a terminal would act on, shows a backslash as two, and leaves everything else as it is", () => {
  // Ordinary names: spaces, accents, other scripts, emoji (a surrogate pair).
  for (
    const name of [
      "disk image.qcow2",
      "disque été.qcow2",
      "日本語/ディスク",
      "a😀b",
    ]
  ) {
    assert.strictEqual(printable(name), name);
  }
  const cases: [string, string][] = [
    ["evil\x1b[31mRED\nsecond line", "evil\\x1b[31mRED\\nsecond line"],
    ["a\\nb", "a\\\\nb"], // a backslash and an n: not a newline
    ["tab\there\rcr", "tab\\there\\rcr"],
    ["\0\x07\x7f", "\\x00\\x07\\x7f"],
    ["c1\x85\x9b", "c1\\x85\\x9b"],
    ["line\u2028para\u2029", "line\\u2028para\\u2029"],
    [
      "\u202aembed\u202eoverride\u2066isolate\u2069",
      "\\u202aembed\\u202eoverride\\u2066isolate\\u2069",
    ],
    ["lone\ud800high \udc00low", "lone\\ud800high \\udc00low"],
  ];
  for (const [text, shown] of cases) {
    assert.strictEqual(printable(text), shown);
    const codes = [...printable(text)].map((c) => c.codePointAt(0)!);
    assert.ok(codes.every((c) => c >= 0x20 && (c < 0x7f || c > 0x9f)));
  }
  // What is shown reads back to one text only: the escapes of a backslash
  // and of a newline differ.
  assert.notStrictEqual(printable("\\n"), printable("\n"));
  // The marks that only hint direction (U+200E, U+200F) are no overrides.
  assert.strictEqual(printable("a\u200eb"), "a\u200eb");
});
