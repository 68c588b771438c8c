/**
 * Finds the boundaries of zstd frames without decoding them, so that a
 * compressed cluster holding several frames can be decoded frame by frame
 * exactly as QEMU's streaming decoder does.
 *
 * @module
 */

import { hex } from "../format/errors.ts";

/** Magic number of a zstd frame (little endian on disk). */
export const ZSTD_MAGIC = 0xfd2fb528;
/** Skippable frames have magics 0x184D2A50 to 0x184D2A5F. */
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;

/**
 * A zstd frame found in a buffer.
 */
export interface ZstdFrame {
  /** Length of the whole frame in bytes. */
  length: number;
  /** Whether it is a skippable frame (no content). */
  skippable: boolean;
}

/**
 * Measures the zstd frame that starts at `bytes[at]` by walking its header
 * and block headers.
 *
 * @param bytes Buffer holding the frame.
 * @param at Where the frame starts.
 * @returns The frame's length and kind, or a string saying why the bytes
 * are not a complete frame.
 *
 * @example A skippable frame
 * ```ts
 * import assert from "node:assert";
 * import { zstdFrameAt } from "./zstd_frames.ts";
 * const frame = new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 9, 9]);
 * assert.deepStrictEqual(zstdFrameAt(frame, 0), { length: 10, skippable: true });
 * ```
 */
export function zstdFrameAt(bytes: Uint8Array, at: number): ZstdFrame | string {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (at + 4 > bytes.length) return "truncated frame magic";
  const magic = view.getUint32(at, true);
  if (((magic & SKIPPABLE_MASK) >>> 0) === SKIPPABLE_MAGIC) {
    if (at + 8 > bytes.length) return "truncated skippable frame";
    const length = 8 + view.getUint32(at + 4, true);
    if (at + length > bytes.length) return "truncated skippable frame";
    return { length, skippable: true };
  }
  if (magic !== ZSTD_MAGIC) return `bad frame magic ${hex(magic)}`;
  if (at + 5 > bytes.length) return "truncated frame header";
  const fhd = bytes[at + 4];
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictIdFlag = fhd & 3;
  if ((fhd >> 3) & 1) return "reserved bit set in frame header";
  const fcsSize = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
  const dictIdSize = [0, 1, 2, 4][dictIdFlag];
  let pos = at + 5 + (singleSegment ? 0 : 1) + dictIdSize + fcsSize;
  for (;;) {
    if (pos + 3 > bytes.length) return "truncated block header";
    const header = bytes[pos] | (bytes[pos + 1] << 8) | (bytes[pos + 2] << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) return "reserved block type";
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > bytes.length) return "truncated block";
    if (last) break;
  }
  if (checksum) pos += 4;
  if (pos > bytes.length) return "truncated frame checksum";
  return { length: pos - at, skippable: false };
}
