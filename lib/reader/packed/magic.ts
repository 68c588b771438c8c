/**
 * The outer containers a downloaded disk comes in, told by their magic
 * (never by a file name): gzip, xz, zstd and bzip2 compression, and tar
 * archives.
 *
 * @module
 */

/**
 * A container around a disk: a compression (`gzip`, `xz`, `zstd`, `bzip2`)
 * or a `tar` archive.
 */
export type Packing = "gzip" | "xz" | "zstd" | "bzip2" | "tar";

import { ZSTD_MAGIC, zstdFrameAt } from "../../codec/zstd_frames.ts";

/** gzip (RFC 1952): ID1 ID2 and CM = 8 (deflate). */
const GZIP_MAGIC = [0x1f, 0x8b, 0x08];
/** xz: the stream header's magic bytes, `\xFD7zXZ\0`. */
const XZ_MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
/** bzip2: `BZh` and a block size digit 1-9. */
const BZIP2_MAGIC = [0x42, 0x5a, 0x68];
/** Where a POSIX (`ustar\0`) or GNU (`ustar `) tar header says what it is. */
export const TAR_MAGIC_OFFSET = 257;
/** Bytes of a tar header block. */
export const TAR_BLOCK = 512;

function startsWith(head: Uint8Array, magic: number[]): boolean {
  return head.length >= magic.length && magic.every((b, i) => head[i] === b);
}

/**
 * Whether a tar header block's checksum (bytes 148-155, octal) is the sum
 * of its bytes with the checksum field read as spaces (unsigned, or signed
 * as some old tars wrote it).
 *
 * @param block A 512-byte header block.
 * @returns Whether it checks out.
 */
export function tarChecksumOk(block: Uint8Array): boolean {
  const stored = tarNumber(block, 148, 8);
  if (stored === undefined) return false;
  let unsigned = 8 * 0x20;
  let signed = 8 * 0x20;
  for (let i = 0; i < TAR_BLOCK; i++) {
    if (i >= 148 && i < 156) continue;
    unsigned += block[i];
    signed += block[i] << 24 >> 24;
  }
  return stored === unsigned || stored === signed;
}

/**
 * A numeric field of a tar header: octal digits, after optional leading
 * spaces and up to a space or NUL (an all-NUL field is 0), or GNU's
 * base-256 (first byte 0x80, big-endian). Undefined when it is neither, is
 * negative (base-256 0xff) or larger than a safe integer.
 *
 * @param block A header block.
 * @param offset Where the field starts.
 * @param length Its length.
 * @returns The value, or undefined.
 */
export function tarNumber(
  block: Uint8Array,
  offset: number,
  length: number,
): number | undefined {
  const field = block.subarray(offset, offset + length);
  if (field[0] === 0x80) {
    let value = 0;
    for (let i = 1; i < field.length; i++) value = value * 256 + field[i];
    return Number.isSafeInteger(value) ? value : undefined;
  }
  let i = 0;
  while (i < field.length && field[i] === 0x20) i++;
  let value = 0;
  let digits = 0;
  for (; i < field.length; i++) {
    const c = field[i];
    if (c === 0 || c === 0x20) break;
    if (c < 0x30 || c > 0x37) return undefined;
    value = value * 8 + (c - 0x30);
    digits++;
  }
  for (; i < field.length; i++) {
    if (field[i] !== 0 && field[i] !== 0x20) return undefined;
  }
  if (digits === 0 && field.some((c) => c !== 0)) return undefined;
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * Whether `head` starts with a zstd frame, or with a skippable frame
 * (pzstd starts its output with one) followed by a zstd frame: both must
 * be in `head`, so that a disk is not taken for zstd on four bytes that
 * are not zstd's own magic.
 */
function startsZstd(head: Uint8Array): boolean {
  const frame = zstdFrameAt(head, 0);
  if (typeof frame !== "string" && frame.skippable) {
    return head.length >= frame.length + 4 &&
      new DataView(head.buffer, head.byteOffset + frame.length, 4)
          .getUint32(0, true) === ZSTD_MAGIC;
  }
  return head.length >= 4 &&
    new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) ===
      ZSTD_MAGIC;
}

/**
 * Which container the first bytes of a stream are, if any.
 *
 * @param head The first bytes (512 or more to see a tar header).
 * @returns The container, or undefined for anything else (a disk image).
 *
 * @example Tell an xz download from a disk
 * ```ts
 * import assert from "node:assert";
 * import { packingOf } from "./magic.ts";
 * const xz = new Uint8Array([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 0, 4]);
 * assert.strictEqual(packingOf(xz), "xz");
 * assert.strictEqual(packingOf(new Uint8Array(512)), undefined);
 * ```
 */
export function packingOf(head: Uint8Array): Packing | undefined {
  if (startsWith(head, GZIP_MAGIC)) return "gzip";
  if (startsWith(head, XZ_MAGIC)) return "xz";
  if (startsZstd(head)) return "zstd";
  if (
    startsWith(head, BZIP2_MAGIC) && head.length > 3 && head[3] >= 0x31 &&
    head[3] <= 0x39
  ) return "bzip2";
  if (head.length >= TAR_BLOCK) {
    const block = head.subarray(0, TAR_BLOCK);
    const magic = String.fromCharCode(
      ...block.subarray(TAR_MAGIC_OFFSET, TAR_MAGIC_OFFSET + 6),
    );
    if (
      (magic === "ustar\0" || magic === "ustar ") && tarChecksumOk(block)
    ) return "tar";
  }
  return undefined;
}

/** How each container is called in messages. */
export const PACKING_TITLES: Readonly<Record<Packing, string>> = {
  gzip: "gzip-compressed",
  xz: "xz-compressed",
  zstd: "zstd-compressed",
  bzip2: "bzip2-compressed",
  tar: "a tar archive",
};
