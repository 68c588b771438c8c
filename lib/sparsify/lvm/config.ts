/**
 * The text LVM2 writes its volume group metadata in: sections, `key =
 * value` assignments, strings, integers and lists of them, `#` comments.
 * Parsed by hand with every size bounded; anything outside the subset LVM2
 * writes is a {@linkcode Refusal}.
 *
 * ```text
 * vg0 {                                  # a section
 *     id = "UibPb2-EdAq-4bm7-j1ff-sbkW-pdmm-jDnQoo"   # a string
 *     seqno = 3                          # an integer
 *     status = ["RESIZEABLE", "READ"]    # a list of strings and integers
 *     physical_volumes { pv0 { ... } }   # sections nest
 * }
 * contents = "Text Format Volume Group"
 * ```
 *
 * Not accepted (LVM2 never writes them in metadata): floats, hexadecimal,
 * single-quoted strings, bare words as values, escapes other than `\"` and
 * `\\`, nested lists, trailing commas, a key given twice in one section.
 *
 * @module
 */

import { Refusal } from "../_region.ts";

/** Deepest nesting of sections (LVM2 writes 4: VG, LVs, LV, segment). */
export const CONFIG_MAX_DEPTH = 8;
/** Most keys and list items in one text, all sections together. */
export const CONFIG_MAX_ENTRIES = 1 << 18;
/** Longest string value, in UTF-16 code units. */
export const CONFIG_MAX_STRING = 64 * 1024;
/** Longest key or section name (LVM2 names are at most 127 bytes). */
export const CONFIG_MAX_NAME = 256;
/** Most digits of an integer (2^53 has 16). */
const MAX_DIGITS = 16;

/** A value that is not a section. */
export type ConfigScalar = string | number;
/** What a key holds. */
export type ConfigValue = ConfigScalar | ConfigScalar[] | ConfigSection;

/** Characters of a key or section name: LVM2's name characters. */
const NAME = /^[A-Za-z0-9_.+-]$/;

function kindOf(v: ConfigValue | undefined): string {
  if (v === undefined) return "missing";
  if (v instanceof ConfigSection) return "a section";
  if (Array.isArray(v)) return "a list";
  return typeof v === "string" ? "a string" : "an integer";
}

/**
 * A section of the text: its keys in the order written. The getters
 * refuse, naming the section's path and the key, when a key is missing or
 * holds another kind of value.
 *
 * @example Read a volume group's sequence number
 * ```ts
 * import assert from "node:assert";
 * import { parseLvmConfig } from "./config.ts";
 * const root = parseLvmConfig('vg0 {\n seqno = 3\n status = ["READ"]\n}\n');
 * const vg = root.section("vg0");
 * assert.strictEqual(vg.integer("seqno"), 3);
 * assert.deepStrictEqual(vg.list("status"), ["READ"]);
 * assert.throws(() => vg.string("seqno"), /vg0: seqno is an integer, not a string/);
 * ```
 */
export class ConfigSection {
  /** Where the section is, for messages: `vg0/logical_volumes/root`. */
  readonly path: string;
  readonly #entries = new Map<string, ConfigValue>();

  /**
   * Creates an empty section.
   *
   * @param path Its path, for messages (empty for the top level).
   */
  constructor(path: string) {
    this.path = path;
  }

  /** @internal Adds a key; the parser refuses duplicates before. */
  set(key: string, value: ConfigValue): void {
    this.#entries.set(key, value);
  }

  /**
   * Whether the section has `key`.
   *
   * @param key The key.
   * @returns Whether it is there.
   */
  has(key: string): boolean {
    return this.#entries.has(key);
  }

  /**
   * The keys, in the order written.
   *
   * @returns The keys.
   */
  keys(): string[] {
    return [...this.#entries.keys()];
  }

  /**
   * The value of `key`, whatever it is.
   *
   * @param key The key.
   * @returns The value, or undefined.
   */
  get(key: string): ConfigValue | undefined {
    return this.#entries.get(key);
  }

  #where(key: string): string {
    return this.path ? `${this.path}: ${key}` : key;
  }

  #need(key: string, want: string, ok: (v: ConfigValue) => boolean) {
    const v = this.#entries.get(key);
    if (v === undefined || !ok(v)) {
      throw new Refusal(
        `metadata ${this.#where(key)} is ${kindOf(v)}, not ${want}`,
      );
    }
    return v;
  }

  /**
   * The string at `key`.
   *
   * @param key The key.
   * @returns The string.
   * @throws {Refusal} When it is missing or not a string.
   */
  string(key: string): string {
    return this.#need(key, "a string", (v) => typeof v === "string") as string;
  }

  /**
   * The integer at `key`, which must be at least `min`.
   *
   * @param key The key.
   * @param min The smallest value accepted.
   * @returns The integer.
   * @throws {Refusal} When it is missing, not an integer, or below `min`.
   */
  integer(key: string, min = 0): number {
    const v = this.#need(
      key,
      "an integer",
      (v) => typeof v === "number",
    ) as number;
    if (v < min) {
      throw new Refusal(
        `metadata ${this.#where(key)} ${v} is less than ${min}`,
      );
    }
    return v;
  }

  /**
   * The list at `key`.
   *
   * @param key The key.
   * @returns The list.
   * @throws {Refusal} When it is missing or not a list.
   */
  list(key: string): ConfigScalar[] {
    return this.#need(key, "a list", Array.isArray) as ConfigScalar[];
  }

  /**
   * The list of strings at `key` (a status or flags list).
   *
   * @param key The key.
   * @returns The strings.
   * @throws {Refusal} When it is missing or holds anything but strings.
   */
  strings(key: string): string[] {
    const list = this.list(key);
    if (list.some((v) => typeof v !== "string")) {
      throw new Refusal(
        `metadata ${this.#where(key)} holds something other than strings`,
      );
    }
    return list as string[];
  }

  /**
   * The section at `key`.
   *
   * @param key The key.
   * @returns The section.
   * @throws {Refusal} When it is missing or not a section.
   */
  section(key: string): ConfigSection {
    return this.#need(
      key,
      "a section",
      (v) => v instanceof ConfigSection,
    ) as ConfigSection;
  }

  /**
   * The sections directly inside this one, in the order written.
   *
   * @returns `[name, section]` pairs.
   * @throws {Refusal} When a key holds a value instead of a section.
   */
  sections(): Array<[string, ConfigSection]> {
    const out: Array<[string, ConfigSection]> = [];
    for (const [k, v] of this.#entries) {
      if (!(v instanceof ConfigSection)) {
        throw new Refusal(
          `metadata ${this.#where(k)} is ${kindOf(v)}, not a section`,
        );
      }
      out.push([k, v]);
    }
    return out;
  }
}

/** The parser's state: the text and where it is. */
class Cursor {
  readonly text: string;
  at = 0;
  line = 1;
  entries = 0;

  constructor(text: string) {
    this.text = text;
  }

  fail(what: string): never {
    throw new Refusal(`metadata text line ${this.line}: ${what}`);
  }

  count(): void {
    if (++this.entries > CONFIG_MAX_ENTRIES) {
      this.fail(`more than ${CONFIG_MAX_ENTRIES} keys and list items`);
    }
  }

  /** Skips whitespace and comments; returns the next character or "". */
  peek(): string {
    const t = this.text;
    while (this.at < t.length) {
      const c = t[this.at];
      if (c === "\n") {
        this.line++;
        this.at++;
      } else if (c === " " || c === "\t" || c === "\r") {
        this.at++;
      } else if (c === "#") {
        const nl = t.indexOf("\n", this.at);
        this.at = nl < 0 ? t.length : nl;
      } else {
        return c;
      }
    }
    return "";
  }

  name(): string {
    const start = this.at;
    while (this.at < this.text.length && NAME.test(this.text[this.at])) {
      this.at++;
      if (this.at - start > CONFIG_MAX_NAME) {
        this.fail(`a name is longer than ${CONFIG_MAX_NAME} characters`);
      }
    }
    if (this.at === start) {
      this.fail(`unexpected ${describe(this.text[this.at])}`);
    }
    return this.text.slice(start, this.at);
  }

  string(): string {
    const t = this.text;
    this.at++; // the opening quote
    let out = "";
    let from = this.at;
    for (;;) {
      if (this.at >= t.length) this.fail("a string is not closed");
      const c = t[this.at];
      if (c === '"') break;
      if (c === "\n") this.line++;
      if (c === "\0") this.fail("a string holds a NUL character");
      if (c === "\\") {
        const e = t[this.at + 1];
        if (e !== '"' && e !== "\\") {
          this.fail(`escape \\${e ?? ""} in a string is not \\" or \\\\`);
        }
        out += t.slice(from, this.at) + e;
        this.at += 2;
        from = this.at;
      } else {
        this.at++;
      }
      if (out.length + this.at - from > CONFIG_MAX_STRING) {
        this.fail(`a string is longer than ${CONFIG_MAX_STRING} characters`);
      }
    }
    out += t.slice(from, this.at);
    this.at++; // the closing quote
    return out;
  }

  integer(): number {
    const t = this.text;
    const start = this.at;
    if (t[this.at] === "-") this.at++;
    const digits = this.at;
    while (this.at < t.length && t[this.at] >= "0" && t[this.at] <= "9") {
      this.at++;
    }
    const n = this.at - digits;
    if (n === 0) this.fail(`unexpected ${describe(t[start])}`);
    if (this.at < t.length && NAME.test(t[this.at])) {
      this.fail(`"${t.slice(start, this.at + 1)}" is not an integer`);
    }
    const v = Number(t.slice(start, this.at));
    if (n > MAX_DIGITS || !Number.isSafeInteger(v)) {
      this.fail(
        `integer ${t.slice(start, Math.min(this.at, start + 40))}${
          this.at - start > 40 ? "..." : ""
        } is out of range (at most 2^53 - 1)`,
      );
    }
    return v;
  }

  scalar(): ConfigScalar {
    const c = this.peek();
    if (c === '"') return this.string();
    if (c === "-" || (c >= "0" && c <= "9")) return this.integer();
    this.fail(`unexpected ${describe(c)} where a value should be`);
  }

  value(): ConfigScalar | ConfigScalar[] {
    if (this.peek() !== "[") return this.scalar();
    this.at++;
    const list: ConfigScalar[] = [];
    if (this.peek() === "]") {
      this.at++;
      return list;
    }
    for (;;) {
      this.count();
      list.push(this.scalar());
      const c = this.peek();
      this.at++;
      if (c === "]") return list;
      if (c !== ",") this.fail(`unexpected ${describe(c)} in a list`);
    }
  }
}

function describe(c: string | undefined): string {
  if (c === undefined || c === "") return "end of text";
  const code = c.charCodeAt(0);
  return code < 0x20 || code === 0x7f
    ? `character 0x${code.toString(16).padStart(2, "0")}`
    : `"${c}"`;
}

/** Reads the entries of `section` up to its `}` (or the end, at the top). */
function entries(cur: Cursor, section: ConfigSection, depth: number): void {
  for (;;) {
    const c = cur.peek();
    if (c === "") {
      if (depth > 0) cur.fail(`section ${section.path} is not closed`);
      return;
    }
    if (c === "}") {
      if (depth === 0) cur.fail('unexpected "}"');
      cur.at++;
      return;
    }
    const key = cur.name();
    if (section.has(key)) {
      cur.fail(
        `${section.path ? section.path + "/" : ""}${key} is given twice`,
      );
    }
    cur.count();
    const op = cur.peek();
    cur.at++;
    if (op === "=") {
      section.set(key, cur.value());
    } else if (op === "{") {
      if (depth + 1 > CONFIG_MAX_DEPTH) {
        cur.fail(`sections nest deeper than ${CONFIG_MAX_DEPTH}`);
      }
      const inner = new ConfigSection(
        section.path ? `${section.path}/${key}` : key,
      );
      section.set(key, inner);
      entries(cur, inner, depth + 1);
    } else {
      cur.fail(`unexpected ${describe(op)} after ${key}`);
    }
  }
}

/**
 * Parses metadata text. Time and memory are linear in its length.
 *
 * @param text The text (UTF-8 decoded).
 * @returns The top-level section.
 * @throws {Refusal} On anything outside the syntax above, or past a bound.
 *
 * @example Parse a volume group's text
 * ```ts
 * import assert from "node:assert";
 * import { parseLvmConfig } from "./config.ts";
 * const root = parseLvmConfig(`
 * vg0 {
 *   extent_size = 8192  # 4 MiB
 *   logical_volumes { root { segment1 { stripes = ["pv0", 0] } } }
 * }
 * contents = "Text Format Volume Group"
 * `);
 * assert.deepStrictEqual(root.keys(), ["vg0", "contents"]);
 * const seg = root.section("vg0").section("logical_volumes").section("root").section("segment1");
 * assert.deepStrictEqual(seg.list("stripes"), ["pv0", 0]);
 * assert.strictEqual(seg.path, "vg0/logical_volumes/root/segment1");
 * assert.throws(() => parseLvmConfig("a = 1.5"), /line 1: "1\." is not an integer/);
 * ```
 */
export function parseLvmConfig(text: string): ConfigSection {
  const cur = new Cursor(text);
  const root = new ConfigSection("");
  entries(cur, root, 0);
  return root;
}
