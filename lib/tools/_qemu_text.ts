// Text the way qemu-img prints it: QEMU's pretty JSON writer with QDict key
// order, its "Format specific information" dump, and size_to_str().
//
// QEMU keeps object members in a QDict: a 512-bucket hash table keyed by
// tdb_hash(), iterated bucket by bucket, the most recently inserted key first
// within a bucket. Its JSON and human outputs list keys in that order, so
// reproducing the hash reproduces qemu-img's output byte for byte. Objects
// given here must list their keys in QEMU's insertion (schema) order.

import { printable } from "../format/errors.ts";

/** A JSON-like value as QEMU's QObject: plain objects keep insertion order. */
export type QValue =
  | string
  | number
  | boolean
  | QValue[]
  | { [key: string]: QValue };

const QDICT_BUCKET_MAX = 512;
const encoder = new TextEncoder();

/** QEMU's tdb_hash() of a key (qobject/qdict.c). */
export function tdbHash(key: string): number {
  const b = encoder.encode(key);
  let value = Math.imul(0x238f13af, b.length) >>> 0;
  for (let i = 0; i < b.length; i++) {
    value = (value + ((b[i] << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** The keys of an object in the order a QDict iterates them. */
export function qdictOrder(keys: string[]): string[] {
  return keys
    .map((key, index) => ({
      key,
      index,
      bucket: tdbHash(key) % QDICT_BUCKET_MAX,
    }))
    .sort((a, b) => a.bucket - b.bucket || b.index - a.index)
    .map((e) => e.key);
}

function quoted(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    switch (ch) {
      case '"':
        out += '\\"';
        continue;
      case "\\":
        out += "\\\\";
        continue;
      case "\b":
        out += "\\b";
        continue;
      case "\f":
        out += "\\f";
        continue;
      case "\n":
        out += "\\n";
        continue;
      case "\r":
        out += "\\r";
        continue;
      case "\t":
        out += "\\t";
        continue;
    }
    const u4 = (n: number) =>
      "\\u" + n.toString(16).toUpperCase().padStart(4, "0");
    if (cp > 0xffff) {
      out += u4(0xd800 + ((cp - 0x10000) >> 10)) +
        u4(0xdc00 + ((cp - 0x10000) & 0x3ff));
    } else if (cp < 0x20 || cp >= 0x7f) {
      out += u4(cp);
    } else {
      out += ch;
    }
  }
  return out + '"';
}

/**
 * Serializes a value as `qobject_to_json_pretty()` does (4-space indent,
 * QDict key order), without a trailing newline.
 */
export function qemuJson(value: QValue): string {
  const write = (v: QValue, depth: number): string => {
    if (typeof v === "string") return quoted(v);
    if (typeof v === "number" || typeof v === "boolean") return String(v);
    const inner = "\n" + " ".repeat(4 * (depth + 1));
    const close = "\n" + " ".repeat(4 * depth);
    if (Array.isArray(v)) {
      const items = v.map((x) => inner + write(x, depth + 1));
      return "[" + items.join(",") + close + "]";
    }
    const items = qdictOrder(Object.keys(v)).map((k) =>
      inner + quoted(k) + ": " + write(v[k], depth + 1)
    );
    return "{" + items.join(",") + close + "}";
  };
  return write(value, 0);
}

/**
 * Renders an object as qemu-img's human "Format specific information" dump
 * (`dump_qobject`): keys with dashes as spaces, lists as `[i]:`, nested
 * values indented by four spaces per level.
 */
export function qemuDump(value: QValue, indent: number): string {
  let out = "";
  const pad = (n: number) => " ".repeat(n * 4);
  const composite = (v: QValue) => typeof v === "object";
  // Strings name files (a data file, a VMDK extent) and bitmaps, from the
  // image: shown by printable(), each stays on its line.
  const scalar = (v: QValue) => printable(String(v));
  const dump = (v: QValue, level: number) => {
    if (Array.isArray(v)) {
      v.forEach((item, i) => {
        out += `${pad(level)}[${i}]:${composite(item) ? "\n" : " "}`;
        if (composite(item)) dump(item, level + 1);
        else out += scalar(item) + "\n";
      });
    } else if (typeof v === "object") {
      for (const key of qdictOrder(Object.keys(v))) {
        const item = v[key];
        out += `${pad(level)}${key.replaceAll("-", " ")}:${
          composite(item) ? "\n" : " "
        }`;
        if (composite(item)) dump(item, level + 1);
        else out += scalar(item) + "\n";
      }
    } else {
      out += scalar(v) + "\n";
    }
  };
  dump(value, indent);
  return out;
}

/** QEMU's size_to_str(): three significant digits and a binary unit. */
export function sizeToStr(bytes: number): string {
  const suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
  // frexp(val / (1000 / 1024)) gives the exponent e with 2^(e-1) <= x < 2^e.
  const x = bytes / (1000 / 1024);
  const exp = x === 0 ? 0 : Math.floor(Math.log2(x)) + 1;
  let i = Math.max(0, Math.trunc((exp - 1) / 10));
  i = Math.min(i, suffixes.length - 1);
  const value = bytes / 2 ** (i * 10);
  return `${formatG3(value)} ${suffixes[i]}B`;
}

/** C's `%0.3g`. */
function formatG3(value: number): string {
  if (value === 0) return "0";
  const text = value.toPrecision(3);
  const strip = (t: string) => t.includes(".") ? t.replace(/\.?0+$/, "") : t;
  const e = /^(.*)e([+-])(\d+)$/.exec(text);
  // C writes the exponent with at least two digits: 999.7 gives "1e+03".
  if (e) return `${strip(e[1])}e${e[2]}${e[3].padStart(2, "0")}`;
  return strip(text);
}
