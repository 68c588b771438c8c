/**
 * The two forms `qemu-img map` prints: `--output=json` (QEMU's exact text,
 * one entry at a time or a whole map) and the human form (a line for each
 * range that holds data, with where it is mapped).
 *
 * @module
 */

import { hex, printable } from "../format/errors.ts";
import type { MapEntry } from "./map.ts";

/**
 * One entry as a line of `qemu-img map --output=json` (without the list
 * punctuation around it).
 *
 * @param entry A map entry.
 * @returns `{ "start": ..., "length": ..., ... }`, QEMU's exact text.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatMapEntryJson } from "./map_text.ts";
 * assert.strictEqual(
 *   formatMapEntryJson({ start: 0, length: 512, depth: 0, present: true, zero: false, data: true, offset: 0 }),
 *   '{ "start": 0, "length": 512, "depth": 0, "present": true, "zero": false, "data": true, "offset": 0}',
 * );
 * ```
 */
export function formatMapEntryJson(entry: MapEntry): string {
  let line = `{ "start": ${entry.start}, "length": ${entry.length},` +
    ` "depth": ${entry.depth}, "present": ${entry.present}, "zero": ${entry.zero},` +
    ` "data": ${entry.data}`;
  if (entry.offset !== undefined) line += `, "offset": ${entry.offset}`;
  return line + "}";
}

/**
 * A whole map as `qemu-img map --output=json` prints it.
 *
 * @param entries The entries.
 * @returns QEMU's exact text, ending with a newline.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatMapJson } from "./map_text.ts";
 * const text = formatMapJson([{ start: 0, length: 512, depth: 0, present: false, zero: true, data: false }]);
 * assert.strictEqual(text, '[{ "start": 0, "length": 512, "depth": 0, "present": false, "zero": true, "data": false}]\n');
 * ```
 */
export function formatMapJson(entries: Iterable<MapEntry>): string {
  return "[" + [...entries].map(formatMapEntryJson).join(",\n") + "]\n";
}

/** qemu-img's `%#-16x`: hexadecimal with 0x, except for 0, left-aligned in 16 columns. */
function hex16(n: number): string {
  return hex(n, "c-alt").padEnd(16);
}

/**
 * The header line of `qemu-img map`'s human form.
 *
 * @example Print a map in the human form
 * ```ts
 * import assert from "node:assert";
 * import { formatMapEntryHuman, MAP_HUMAN_HEADER } from "./map_text.ts";
 * const entry = { start: 0, length: 65536, depth: 0, present: true, zero: false, data: true, offset: 327680, file: "a.qcow2" };
 * assert.strictEqual(
 *   MAP_HUMAN_HEADER + formatMapEntryHuman(entry),
 *   "Offset          Length          Mapped to       File\n" +
 *     "0               0x10000         0x50000         a.qcow2\n",
 * );
 * ```
 */
export const MAP_HUMAN_HEADER: string = `${"Offset".padEnd(16)}${
  "Length".padEnd(16)
}${"Mapped to".padEnd(16)}File\n`;

/**
 * One entry as `qemu-img map`'s human form prints it, after
 * {@linkcode MAP_HUMAN_HEADER}: only ranges that hold data are listed.
 *
 * @param entry A map entry.
 * @returns The line, ending with a newline; `""` for a range the human
 * form leaves out (unallocated or reading as zeros); `undefined` for a
 * range holding data at no host offset (compressed, encrypted or
 * external clusters), where qemu-img stops with an error after the lines
 * before it.
 *
 * @example Zero ranges are left out, compressed ones cannot be shown
 * ```ts
 * import assert from "node:assert";
 * import { formatMapEntryHuman } from "./map_text.ts";
 * const zero = { start: 0, length: 512, depth: 0, present: true, zero: true, data: false };
 * assert.strictEqual(formatMapEntryHuman(zero), "");
 * const compressed = { start: 512, length: 512, depth: 0, present: true, zero: false, data: true, compressed: true };
 * assert.strictEqual(formatMapEntryHuman(compressed), undefined);
 * ```
 */
export function formatMapEntryHuman(entry: MapEntry): string | undefined {
  if (entry.data && entry.offset === undefined) return undefined;
  if (!entry.data || entry.zero) return "";
  return `${hex16(entry.start)}${hex16(entry.length)}${hex16(entry.offset!)}${
    printable(entry.file ?? "")
  }\n`;
}
