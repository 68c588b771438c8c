/**
 * An LVM2 metadata area: a 512-byte header, then a circular buffer that
 * holds the volume group's text metadata. Little-endian.
 *
 * ```text
 * mda_header (the area's first 512 bytes):
 *    0 checksum_xl (u32, LVM2's CRC of bytes 4-511)
 *    4 magic " LVM2 x[5A%r0N*>" (16 bytes)   20 version (u32, 1)
 *   24 start (u64, the area's byte offset on the PV)   32 size (u64, bytes)
 *   40 raw_locn[]: {offset u64, size u64, checksum u32, flags u32} ...,
 *      ended by an offset of 0. Slot 0 is the committed metadata, slot 1
 *      metadata written but not yet committed. flags bit 0: ignored.
 * ```
 *
 * The text lies at `offset` from the area's start and is `size` bytes
 * (its trailing NUL included); when it runs past the end of the area it
 * continues at byte 512, just after the header. `checksum` is LVM2's CRC
 * of the text, continued from the first piece over the second.
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import { lvmCrc, u64 } from "./label.ts";

/** Bytes of the header. */
export const MDA_HEADER_SIZE = 512;
/** The header's magic, at byte 4. */
export const MDA_MAGIC = " LVM2 x[5A%r0N*>";
/** The header version known. */
export const MDA_VERSION = 1;
/** raw_locn flag: this area's copy is not kept up to date. */
export const RAW_LOCN_IGNORED = 0x1;
/** Offset of the first raw_locn, and bytes per raw_locn. */
const RAW_LOCNS = 40;
const RAW_LOCN_SIZE = 24;
/** Largest metadata text read, in bytes. */
export const MAX_METADATA_BYTES = 4 * 1024 * 1024;

/** Where the committed text is, relative to the area's start. */
export interface TextLocation {
  /** The pieces of the text: one, or two when it wraps. */
  pieces: Array<{ offset: number; length: number }>;
  /** Text bytes, NUL included. */
  size: number;
  /** LVM2's CRC of the text. */
  checksum: number;
}

/** A metadata area header, checked. */
export interface MdaHeader {
  /** Byte offset of the area on the PV. */
  start: number;
  /** Bytes of the area. */
  size: number;
  /** Where the committed text is; undefined when the area is ignored. */
  text?: TextLocation;
}

/**
 * Parses and checks a metadata area header.
 *
 * @param bytes The area's first 512 bytes.
 * @param start Where the PV header says the area starts.
 * @param size Its size by the PV header.
 * @param which The area, for messages (`metadata area 1`).
 * @returns The header.
 * @throws {Refusal} On a wrong checksum, magic, version, start or size, an
 * uncommitted update, unknown flags, an empty area, or a text location
 * outside the area or larger than {@linkcode MAX_METADATA_BYTES}.
 *
 * @example Find the committed text of an area
 * ```ts
 * import assert from "node:assert";
 * import { lvmCrc } from "./label.ts";
 * import { MDA_MAGIC, parseMdaHeader } from "./mda.ts";
 * const h = new Uint8Array(512);
 * const v = new DataView(h.buffer);
 * h.set(new TextEncoder().encode(MDA_MAGIC), 4);
 * v.setUint32(20, 1, true);
 * v.setBigUint64(24, 4096n, true); // start
 * v.setBigUint64(32, 65536n, true); // size
 * v.setBigUint64(40, 65000n, true); // the text starts 536 bytes before the end ...
 * v.setBigUint64(48, 1000n, true); // ... and wraps
 * v.setUint32(56, 0x1234, true);
 * v.setUint32(0, lvmCrc(h.subarray(4)), true);
 * const mda = parseMdaHeader(h, 4096, 65536, "metadata area 1");
 * assert.deepStrictEqual(mda.text?.pieces, [{ offset: 65000, length: 536 }, { offset: 512, length: 464 }]);
 * ```
 */
export function parseMdaHeader(
  bytes: Uint8Array,
  start: number,
  size: number,
  which: string,
): MdaHeader {
  if (bytes.length < MDA_HEADER_SIZE) {
    throw new Refusal(`${which} header is truncated`);
  }
  const h = bytes.subarray(0, MDA_HEADER_SIZE);
  const view = new DataView(h.buffer, h.byteOffset, MDA_HEADER_SIZE);
  const crc = view.getUint32(0, true);
  const computed = lvmCrc(h.subarray(4));
  if (crc !== computed) {
    throw new Refusal(
      `${which} header CRC ${hex(crc)} does not match its contents (${
        hex(computed)
      })`,
    );
  }
  if (String.fromCharCode(...h.subarray(4, 20)) !== MDA_MAGIC) {
    throw new Refusal(`${which} header has no LVM2 magic`);
  }
  const version = view.getUint32(20, true);
  if (version !== MDA_VERSION) {
    throw new Refusal(`${which} header version ${version} is not 1`);
  }
  const hStart = u64(view, 24, `${which} start`);
  const hSize = u64(view, 32, `${which} size`);
  if (hStart !== start || hSize !== size) {
    throw new Refusal(
      `${which} header says ${hSize} bytes at byte ${hStart}, the PV header ${size} bytes at byte ${start}`,
    );
  }
  const slots: Array<
    { offset: number; size: number; checksum: number; flags: number }
  > = [];
  for (
    let at = RAW_LOCNS;
    at + RAW_LOCN_SIZE <= MDA_HEADER_SIZE;
    at += RAW_LOCN_SIZE
  ) {
    const offset = u64(view, at, `${which} text offset`);
    if (offset === 0) break;
    slots.push({
      offset,
      size: u64(view, at + 8, `${which} text size`),
      checksum: view.getUint32(at + 16, true),
      flags: view.getUint32(at + 20, true),
    });
  }
  if (slots.length === 0) {
    throw new Refusal(
      `${which} holds no metadata (the PV belongs to no volume group)`,
    );
  }
  if (slots.length > 1) {
    throw new Refusal(
      `${which} holds metadata that was written but not committed (an update did not finish)`,
    );
  }
  const loc = slots[0];
  if (loc.flags & ~RAW_LOCN_IGNORED) {
    throw new Refusal(`${which} text has unknown flags ${hex(loc.flags)}`);
  }
  if (loc.flags & RAW_LOCN_IGNORED) return { start, size };
  const buffer = size - MDA_HEADER_SIZE;
  if (loc.offset < MDA_HEADER_SIZE || loc.offset >= size) {
    throw new Refusal(
      `${which} text offset ${loc.offset} lies outside the area's buffer (${MDA_HEADER_SIZE}-${
        size - 1
      })`,
    );
  }
  if (loc.size === 0 || loc.size > buffer) {
    throw new Refusal(
      `${which} text size ${loc.size} does not fit the area's buffer of ${buffer} bytes`,
    );
  }
  if (loc.size > MAX_METADATA_BYTES) {
    throw new Refusal(
      `${which} text of ${loc.size} bytes is larger than ${MAX_METADATA_BYTES} bytes`,
    );
  }
  const first = Math.min(loc.size, size - loc.offset);
  const pieces = [{ offset: loc.offset, length: first }];
  if (first < loc.size) {
    pieces.push({ offset: MDA_HEADER_SIZE, length: loc.size - first });
  }
  return {
    start,
    size,
    text: { pieces, size: loc.size, checksum: loc.checksum },
  };
}
