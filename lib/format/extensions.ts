/**
 * Header extensions: the typed sections stored directly after the qcow2
 * header, each `type (u32) | length (u32) | data | padding to 8 bytes`.
 *
 * @module
 */

import { EXTENSION, FEATURE_NAME_ENTRY_LENGTH } from "./constants.ts";
import { hex, Qcow2Error } from "./errors.ts";
import {
  alignUp,
  decodeText,
  encodeText,
  viewOf,
  writeU64,
} from "../bytes/binary.ts";
import { readU64 } from "./_bytes.ts";

/**
 * One entry of the feature name table extension.
 *
 * @example The feature names an image carries
 * ```ts
 * import assert from "node:assert";
 * import { type FeatureName, parseExtensions, serializeExtensions } from "./extensions.ts";
 * const features: FeatureName[] = [{ type: 0, bit: 0, name: "dirty bit" }];
 * const bytes = serializeExtensions([{ kind: "feature-table", features }]);
 * const [ext] = parseExtensions(bytes, 0, bytes.length);
 * assert.deepStrictEqual(ext, { kind: "feature-table", features });
 * ```
 */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  /** Bit number within the selected bitmap, 0-63. */
  bit: number;
  /** Feature name (up to 46 bytes). */
  name: string;
}

/**
 * A decoded header extension. Unknown types keep their raw data so that
 * serializing gives back the same bytes.
 *
 * @example Encode a backing format extension and read it back
 * ```ts
 * import assert from "node:assert";
 * import { type HeaderExtension, parseExtensions, serializeExtensions } from "./extensions.ts";
 * const ext: HeaderExtension = { kind: "backing-format", format: "raw" };
 * const bytes = serializeExtensions([ext]);
 * assert.deepStrictEqual(parseExtensions(bytes, 0, bytes.length), [ext]);
 * ```
 */
export type HeaderExtension =
  | { kind: "backing-format"; format: string }
  | { kind: "feature-table"; features: FeatureName[] }
  | {
    kind: "bitmaps";
    nbBitmaps: number;
    reserved: number;
    directorySize: number;
    directoryOffset: number;
  }
  | { kind: "crypto-header"; offset: number; length: number }
  | { kind: "data-file"; name: string }
  | { kind: "unknown"; type: number; data: Uint8Array };

const ACTION = "parse header extension";

/**
 * Parses the header extension area `bytes[start, end)`, stopping at the end
 * marker. `base` is the host offset of `bytes[0]`, used in error messages.
 *
 * @param bytes Buffer holding the extension area.
 * @param start Offset of the first extension (the header length).
 * @param end Where the area ends: the backing file name offset, or the
 * cluster size.
 * @returns The extensions in file order (the end marker excluded).
 * @throws {Qcow2Error} `BAD_EXTENSION` when an extension runs past `end` or
 * a known extension has the wrong length.
 *
 * @example Parse an empty area
 * ```ts
 * import assert from "node:assert";
 * import { parseExtensions } from "./extensions.ts";
 * assert(parseExtensions(new Uint8Array(16), 0, 16).length === 0);
 * ```
 */
export function parseExtensions(
  bytes: Uint8Array,
  start: number,
  end: number,
): HeaderExtension[] {
  const view = viewOf(bytes);
  const out: HeaderExtension[] = [];
  const limit = Math.min(end, bytes.length);
  let at = start;
  while (at < limit) {
    if (at + 8 > limit) {
      throw new Qcow2Error(
        "BAD_EXTENSION",
        `Cannot ${ACTION}: extension header at ${hex(at)} runs past ${
          hex(limit)
        }`,
        { offset: at },
      );
    }
    const type = view.getUint32(at);
    const length = view.getUint32(at + 4);
    const dataAt = at + 8;
    if (length > limit - dataAt) {
      throw new Qcow2Error(
        "BAD_EXTENSION",
        `Cannot ${ACTION}: extension ${hex(type)} at ${
          hex(at)
        } has length ${length}, past the end of the area at ${hex(limit)}`,
        { offset: at, field: "length" },
      );
    }
    if (type === EXTENSION.END) return out;
    const data = bytes.subarray(dataAt, dataAt + length);
    out.push(decodeExtension(type, data, at));
    at = dataAt + alignUp(length, 8);
  }
  return out;
}

function expectLength(
  type: number,
  data: Uint8Array,
  want: number,
  at: number,
) {
  if (data.length !== want) {
    throw new Qcow2Error(
      "BAD_EXTENSION",
      `Cannot ${ACTION}: extension ${hex(type)} at ${
        hex(at)
      } has length ${data.length}, expected ${want}`,
      { offset: at, field: "length" },
    );
  }
}

function decodeExtension(
  type: number,
  data: Uint8Array,
  at: number,
): HeaderExtension {
  const view = viewOf(data);
  switch (type) {
    case EXTENSION.BACKING_FORMAT:
      return { kind: "backing-format", format: decodeText(data) };
    case EXTENSION.DATA_FILE:
      return { kind: "data-file", name: decodeText(data) };
    case EXTENSION.FEATURE_TABLE: {
      const features: FeatureName[] = [];
      // A last entry cut short is read as QEMU reads it: the missing bytes
      // are zeros (QEMU copies the extension into a zeroed table).
      for (let i = 0; i < data.length; i += FEATURE_NAME_ENTRY_LENGTH) {
        const raw = data.subarray(
          Math.min(i + 2, data.length),
          i + FEATURE_NAME_ENTRY_LENGTH,
        );
        const nul = raw.indexOf(0);
        features.push({
          type: data[i],
          bit: data[i + 1] ?? 0,
          name: decodeText(nul < 0 ? raw : raw.subarray(0, nul)),
        });
      }
      return { kind: "feature-table", features };
    }
    case EXTENSION.BITMAPS:
      expectLength(type, data, 24, at);
      return {
        kind: "bitmaps",
        nbBitmaps: view.getUint32(0),
        reserved: view.getUint32(4),
        directorySize: readU64(
          view,
          8,
          "bitmap_directory_size",
          ACTION,
          at + 8,
        ),
        directoryOffset: readU64(
          view,
          16,
          "bitmap_directory_offset",
          ACTION,
          at + 8,
        ),
      };
    case EXTENSION.CRYPTO_HEADER:
      expectLength(type, data, 16, at);
      return {
        kind: "crypto-header",
        offset: readU64(view, 0, "crypto header offset", ACTION, at + 8),
        length: readU64(view, 8, "crypto header length", ACTION, at + 8),
      };
    default:
      return { kind: "unknown", type, data: data.slice() };
  }
}

/**
 * The u32 type code of an extension.
 *
 * @param ext A decoded extension.
 * @returns Its type as stored in the file.
 *
 * @example Type of a data file extension
 * ```ts
 * import assert from "node:assert";
 * import { extensionType } from "./extensions.ts";
 * assert(extensionType({ kind: "data-file", name: "x" }) === 0x44415441);
 * ```
 */
export function extensionType(ext: HeaderExtension): number {
  switch (ext.kind) {
    case "backing-format":
      return EXTENSION.BACKING_FORMAT;
    case "feature-table":
      return EXTENSION.FEATURE_TABLE;
    case "bitmaps":
      return EXTENSION.BITMAPS;
    case "crypto-header":
      return EXTENSION.CRYPTO_HEADER;
    case "data-file":
      return EXTENSION.DATA_FILE;
    case "unknown":
      return ext.type;
  }
}

/**
 * Encodes the data part of an extension (without type, length or padding).
 *
 * @param ext A decoded extension.
 * @returns The extension's data bytes.
 *
 * @example Encode a backing format
 * ```ts
 * import assert from "node:assert";
 * import { encodeExtensionData } from "./extensions.ts";
 * const data = encodeExtensionData({ kind: "backing-format", format: "qcow2" });
 * assert(data.length === 5);
 * ```
 */
export function encodeExtensionData(ext: HeaderExtension): Uint8Array {
  switch (ext.kind) {
    case "backing-format":
      return encodeText(ext.format);
    case "data-file":
      return encodeText(ext.name);
    case "feature-table": {
      const out = new Uint8Array(
        ext.features.length * FEATURE_NAME_ENTRY_LENGTH,
      );
      ext.features.forEach((f, i) => {
        const at = i * FEATURE_NAME_ENTRY_LENGTH;
        out[at] = f.type;
        out[at + 1] = f.bit;
        out.set(
          encodeText(f.name).subarray(0, FEATURE_NAME_ENTRY_LENGTH - 2),
          at + 2,
        );
      });
      return out;
    }
    case "bitmaps": {
      const out = new Uint8Array(24);
      const view = viewOf(out);
      view.setUint32(0, ext.nbBitmaps);
      view.setUint32(4, ext.reserved);
      writeU64(view, 8, ext.directorySize);
      writeU64(view, 16, ext.directoryOffset);
      return out;
    }
    case "crypto-header": {
      const out = new Uint8Array(16);
      const view = viewOf(out);
      writeU64(view, 0, ext.offset);
      writeU64(view, 8, ext.length);
      return out;
    }
    case "unknown":
      return ext.data;
  }
}

/**
 * Serializes extensions followed by the end marker, each padded to a
 * multiple of 8 bytes with zeros.
 *
 * @param extensions Extensions in the order to write them.
 * @returns The extension area bytes, end marker included.
 *
 * @example Only an end marker
 * ```ts
 * import assert from "node:assert";
 * import { serializeExtensions } from "./extensions.ts";
 * assert(serializeExtensions([]).length === 8);
 * ```
 */
export function serializeExtensions(extensions: HeaderExtension[]): Uint8Array {
  const parts = extensions.map((ext) => ({
    type: extensionType(ext),
    data: encodeExtensionData(ext),
  }));
  const total = parts.reduce((n, p) => n + 8 + alignUp(p.data.length, 8), 8);
  const out = new Uint8Array(total);
  const view = viewOf(out);
  let at = 0;
  for (const p of parts) {
    view.setUint32(at, p.type);
    view.setUint32(at + 4, p.data.length);
    out.set(p.data, at + 8);
    at += 8 + alignUp(p.data.length, 8);
  }
  return out;
}
