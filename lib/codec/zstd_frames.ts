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
  if (isSkippableMagic(magic)) {
    if (at + 8 > bytes.length) return "truncated skippable frame";
    const length = 8 + view.getUint32(at + 4, true);
    if (at + length > bytes.length) return "truncated skippable frame";
    return { length, skippable: true };
  }
  if (magic !== ZSTD_MAGIC) return `bad frame magic ${hex(magic)}`;
  if (at + 5 > bytes.length) return "truncated frame header";
  const header = frameHeader(bytes[at + 4]);
  if (header.reserved) return "reserved bit set in frame header";
  let pos = at + 5 + header.fieldBytes;
  for (;;) {
    if (pos + 3 > bytes.length) return "truncated block header";
    const block = blockHeader(
      bytes[pos] | (bytes[pos + 1] << 8) | (bytes[pos + 2] << 16),
    );
    if (block.type === RESERVED_BLOCK) return "reserved block type";
    pos += 3 + block.contentBytes;
    if (pos > bytes.length) return "truncated block";
    if (block.last) break;
  }
  pos += header.checksumBytes;
  if (pos > bytes.length) return "truncated frame checksum";
  return { length: pos - at, skippable: false };
}

/** Whether a frame's magic (read little-endian) is a skippable frame's. */
function isSkippableMagic(magic: number): boolean {
  return ((magic & SKIPPABLE_MASK) >>> 0) === SKIPPABLE_MAGIC;
}

/** Block type 3 is reserved: a stream holding one is corrupt. */
const RESERVED_BLOCK = 3;

/**
 * What a frame header descriptor byte says: bits 7-6 the content size
 * field's code (bytes 0, 2, 4, 8; code 0 is 1 byte for a single segment),
 * bit 5 single segment (no window byte), bit 3 reserved, bit 2 a 4-byte
 * checksum after the last block, bits 1-0 the dictionary id field's code
 * (bytes 0, 1, 2, 4).
 */
function frameHeader(fhd: number): {
  fieldBytes: number;
  checksumBytes: number;
  reserved: boolean;
} {
  const single = ((fhd >> 5) & 1) === 1;
  const contentSize = [single ? 1 : 0, 2, 4, 8][fhd >> 6];
  const dictionaryId = [0, 1, 2, 4][fhd & 3];
  return {
    fieldBytes: (single ? 0 : 1) + dictionaryId + contentSize,
    checksumBytes: (fhd & 4) !== 0 ? 4 : 0,
    reserved: ((fhd >> 3) & 1) === 1,
  };
}

/**
 * A block header (3 bytes, little-endian): bit 0 last block, bits 2-1 the
 * type (0 raw, 1 RLE: one byte of content, 2 compressed, 3 reserved),
 * bits 23-3 the size.
 */
function blockHeader(h: number): {
  last: boolean;
  type: number;
  contentBytes: number;
} {
  const type = (h >> 1) & 3;
  return { last: (h & 1) === 1, type, contentBytes: type === 1 ? 1 : h >>> 3 };
}

/** What a {@linkcode ZstdFrameFollower} waits for next. */
type Expect = "magic" | "skippable-size" | "descriptor" | "block-header";

/**
 * Follows the frames of a zstd stream as it arrives in chunks, from their
 * headers alone, and takes skippable frames out. A decoder that ends a
 * stream cut inside a frame, or stops at a skippable frame, as if the
 * stream were whole (Deno's node:zlib one does both) is paired with it:
 * feed it the chunks, give the decoder what {@linkcode push} returns, and
 * ask {@linkcode inside} and {@linkcode fault} when the decoder ends.
 *
 * @example Tell a cut stream from a whole one
 * ```ts
 * import assert from "node:assert";
 * import { ZstdFrameFollower } from "./zstd_frames.ts";
 * // A frame of one raw last block holding "hi" (no checksum).
 * const frame = new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x20, 2, 0x11, 0, 0, 104, 105]);
 * const skippable = new Uint8Array([0x50, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, 7]);
 * const whole = new ZstdFrameFollower();
 * const kept = whole.push(new Uint8Array([...skippable, ...frame]));
 * assert.deepStrictEqual(kept.flatMap((c) => [...c]), [...frame]);
 * assert.strictEqual(whole.inside, false);
 * const cut = new ZstdFrameFollower();
 * cut.push(frame.subarray(0, 9));
 * assert.strictEqual(cut.inside, true);
 * ```
 */
export class ZstdFrameFollower {
  /** Bytes seen. */
  offset = 0;
  /** Why the stream's headers cannot be followed, if they cannot. */
  fault: string | undefined;
  #expect: Expect = "magic";
  /** Bytes of the field being gathered. */
  #field: number[] = [];
  /** Bytes to pass over before the next field. */
  #skip = 0;
  /** Whether the bytes passed over are a skippable frame's (dropped). */
  #dropping = false;
  /** Checksum bytes due after the current frame's last block. */
  #checksum = 0;

  /** Whether the bytes so far end inside a frame. */
  get inside(): boolean {
    return this.#expect !== "magic" || this.#field.length > 0 ||
      this.#skip > 0;
  }

  /**
   * Follows the headers in the next chunk.
   *
   * @param chunk The stream's next bytes.
   * @returns The chunk's bytes without those of skippable frames.
   */
  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    // The run of `chunk` to pass on that is not yet in `out`.
    let runFrom = 0;
    let runTo = 0;
    const flush = () => {
      if (runTo > runFrom) out.push(chunk.subarray(runFrom, runTo));
    };
    const keep = (from: number, to: number) => {
      if (from !== runTo) {
        flush();
        runFrom = from;
      }
      runTo = to;
    };
    let i = 0;
    while (i < chunk.length && this.fault === undefined) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - i);
        if (!this.#dropping) keep(i, i + n);
        this.#skip -= n;
        i += n;
        this.offset += n;
        continue;
      }
      const state = this.#expect;
      if (state === "descriptor" || state === "block-header") keep(i, i + 1);
      this.#field.push(chunk[i++]);
      this.offset++;
      // A magic is held back until it is known not to be a skippable one.
      const magic = state === "magic" && this.#field.length === 4
        ? new Uint8Array(this.#field)
        : undefined;
      this.#take();
      if (magic && this.#expect === "descriptor") {
        flush();
        out.push(magic);
        runFrom = runTo = i;
      }
    }
    flush();
    return out;
  }

  /** Acts on the field gathered so far, when it is complete. */
  #take(): void {
    const f = this.#field;
    const u32 = () => (f[0] | f[1] << 8 | f[2] << 16 | f[3] << 24) >>> 0;
    switch (this.#expect) {
      case "magic": {
        if (f.length < 4) return;
        const magic = u32();
        if (magic === ZSTD_MAGIC) this.#expect = "descriptor";
        else if (isSkippableMagic(magic)) this.#expect = "skippable-size";
        else {
          this.fault = `bad frame magic ${hex(magic)} at compressed offset ${
            this.offset - 4
          }`;
        }
        break;
      }
      case "skippable-size": {
        if (f.length < 4) return;
        this.#skip = u32();
        this.#dropping = true;
        this.#expect = "magic";
        break;
      }
      case "descriptor": {
        const header = frameHeader(f[0]);
        this.#skip = header.fieldBytes;
        this.#checksum = header.checksumBytes;
        this.#dropping = false;
        this.#expect = "block-header";
        break;
      }
      case "block-header": {
        if (f.length < 3) return;
        const block = blockHeader(f[0] | f[1] << 8 | f[2] << 16);
        if (block.type === RESERVED_BLOCK) {
          this.fault = `reserved block type at compressed offset ${
            this.offset - 3
          }`;
          break;
        }
        this.#skip = block.contentBytes;
        this.#dropping = false;
        if (block.last) {
          this.#skip += this.#checksum;
          this.#expect = "magic";
        }
        break;
      }
    }
    this.#field = [];
  }
}
