/**
 * The VMDK text descriptor: the `createType`, the CIDs, the parent hint
 * and the extent lines, read as QEMU's block/vmdk.c reads them (the first
 * occurrence of each key, extent lines that parse, `RW` ones only).
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";

/** Longest descriptor read, as QEMU reads it (1 MiB - 1). */
export const MAX_DESCRIPTOR_BYTES = (1 << 20) - 1;

/** Bytes QEMU reads for the CIDs and the parent hint (20 sectors). */
export const DESC_SIZE = 20 * 512;

/** Most extent lines a descriptor may name. */
export const MAX_EXTENTS = 4096;

/** Longest parent hint QEMU keeps (`PATH_MAX - 1`). */
const MAX_PARENT_HINT = 4095;

/** `parentCID` of an image with no parent. */
export const NO_PARENT_CID = 0xffffffff;

/**
 * One extent line: `RW <sectors> <type> "<file>" [<offset>]`.
 *
 * - `FLAT`: the file's bytes from `offset` sectors on
 * - `VMFS`: the same, from offset 0
 * - `SPARSE`: a hosted sparse extent (header, grain directory and tables)
 * - `VMFSSPARSE`, `SESPARSE`: ESXi sparse extents (not read)
 */
export interface ExtentLine {
  /** Extent type as written. */
  type: string;
  /** Sectors the line says the extent holds. */
  sectors: number;
  /** The file name as written. */
  file: string;
  /** Flat extents: where the data starts in the file, in sectors. */
  offset: number;
}

/** What a descriptor says. */
export interface Descriptor {
  /** `createType`, when present. */
  createType: string | undefined;
  /** `CID`, when present and hex. */
  cid: number | undefined;
  /** `parentCID`, when present and hex. */
  parentCid: number | undefined;
  /** `parentFileNameHint`, when present. */
  parentHint: string | undefined;
  /** The `RW` extent lines of a known type, in order. */
  extents: ExtentLine[];
}

/** The value of `key="value"` at the first occurrence of `key`. */
function quotedValue(text: string, key: string): string | undefined {
  const at = text.indexOf(key);
  if (at < 0) return undefined;
  const from = at + key.length + 2;
  if (from >= text.length) return undefined;
  const end = text.indexOf('"', from);
  return end < 0 ? undefined : text.slice(from, end);
}

/** The hex number after `key=` at the first occurrence of `key`. */
function hexValue(text: string, key: string): number | undefined {
  const at = text.indexOf(key);
  if (at < 0) return undefined;
  const m = /^\s*(?:0[xX])?([0-9a-fA-F]{1,8})/.exec(
    text.slice(at + key.length + 1, at + key.length + 40),
  );
  return m ? parseInt(m[1], 16) : undefined;
}

const EXTENT_LINE =
  /^\s*(\S{1,10})\s+([+-]?\d+)\s+(\S{1,10})\s+"([^\n\r"]{1,511})"(?:\s+([+-]?\d+))?/;

/**
 * Parses a descriptor's text.
 *
 * @param text The descriptor, cut at its first NUL byte.
 * @param where What to call it in messages (`disk.vmdk`).
 * @returns What it says.
 * @throws {Qcow2Error} `CORRUPT` for an extent line QEMU calls invalid, a
 * parent hint without its closing quote or too long, or too many extents.
 *
 * @example The descriptor of a flat image
 * ```ts
 * import assert from "node:assert";
 * import { parseDescriptor } from "./descriptor.ts";
 * const d = parseDescriptor('version=1\nCID=12ab\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "d-flat.vmdk" 0\n', "d.vmdk");
 * assert.strictEqual(d.createType, "monolithicFlat");
 * assert.deepStrictEqual(d.extents, [{ type: "FLAT", sectors: 2048, file: "d-flat.vmdk", offset: 0 }]);
 * ```
 */
export function parseDescriptor(text: string, where: string): Descriptor {
  const extents: ExtentLine[] = [];
  for (const line of text.split("\n")) {
    const m = EXTENT_LINE.exec(line);
    if (!m || m[1] !== "RW") continue;
    const [, , count, type, file, off] = m;
    const invalid = () =>
      new Qcow2Error(
        "CORRUPT",
        `Cannot parse descriptor of ${where}: invalid extent line "${
          line.replace(/\r$/, "").slice(0, 200)
        }"`,
      );
    let offset = 0;
    if (type === "FLAT") {
      if (off === undefined || Number(off) < 0) throw invalid();
      offset = Number(off);
    } else if (off !== undefined) throw invalid();
    const sectors = Number(count);
    if (
      sectors <= 0 ||
      !["FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"].includes(type)
    ) continue;
    if (!Number.isSafeInteger(sectors) || !Number.isSafeInteger(offset)) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot parse descriptor of ${where}: extent "${file}" has ${count} sectors at offset ${
          off ?? 0
        }, past 2^53 bytes`,
      );
    }
    if (extents.length === MAX_EXTENTS) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot parse descriptor of ${where}: more than ${MAX_EXTENTS} extents`,
      );
    }
    extents.push({ type, sectors, file, offset });
  }
  return {
    createType: quotedValue(text, "createType"),
    cid: hexValue(text, "CID"),
    parentCid: hexValue(text, "parentCID"),
    parentHint: parentHint(text, where),
    extents,
  };
}

/** `parentFileNameHint="..."` as QEMU reads it, or undefined. */
function parentHint(text: string, where: string): string | undefined {
  const head = text.slice(0, DESC_SIZE);
  const at = head.indexOf("parentFileNameHint");
  if (at < 0) return undefined;
  const from = at + "parentFileNameHint".length + 2;
  const end = head.indexOf('"', from);
  if (end < 0 || end - from > MAX_PARENT_HINT) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot parse descriptor of ${where}: parentFileNameHint ${
        end < 0
          ? "has no closing quote"
          : `is longer than ${MAX_PARENT_HINT} bytes`
      }`,
    );
  }
  return head.slice(from, end);
}

/**
 * The descriptor text of raw bytes: up to the first NUL, as latin-1 (the
 * names are bytes to QEMU; UTF-8 names are decoded as UTF-8).
 *
 * @param bytes The bytes read.
 * @returns The text.
 */
export function descriptorText(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  const body = nul < 0 ? bytes : bytes.subarray(0, nul);
  return new TextDecoder("utf-8").decode(body);
}
