/**
 * Reads that may run past the end, as QEMU reads: the bytes past the end of
 * a source or of a guest disk read as zeros. For the tools and the writer,
 * which compare images of different sizes.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "./image.ts";
import { readThroughPlan } from "./_read.ts";

/**
 * Reads `length` bytes at `offset`, zero-filled past the end (as QEMU
 * reads). With `into` (at least `length` bytes, reused by a caller that
 * reads one table after another), the bytes land there where the source
 * reads into buffers: no fresh buffer to fault in for each table.
 */
export async function readPadded(
  source: RandomAccessSource,
  offset: number,
  length: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  if (into && source.readInto) {
    const target = into.subarray(0, length);
    const n = offset >= source.size ? 0 : await source.readInto(offset, target);
    target.fill(0, n);
    return target;
  }
  if (offset >= source.size || length === 0) return new Uint8Array(length);
  const bytes = await source.read(offset, length);
  if (bytes.length === length) return bytes;
  const out = new Uint8Array(length);
  out.set(bytes);
  return out;
}

/**
 * Reads guest bytes; past the end of the disk they read as zeros. With
 * `into` (at least `length` bytes, reused from one read to the next), the
 * bytes land there, read through the image's plan: a walk over a large
 * image leaves no fresh buffer per read for the garbage collector.
 */
export async function readPastEnd(
  image: GuestImage,
  offset: number,
  length: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const inside = Math.max(0, Math.min(length, image.virtualSize - offset));
  if (into) {
    const out = into.subarray(0, length);
    if (inside > 0) await readThroughPlan(image, offset, inside, out);
    out.fill(0, inside);
    return out;
  }
  if (inside === length) return await image.readAt(offset, length);
  const out = new Uint8Array(length);
  if (inside > 0) out.set(await image.readAt(offset, inside));
  return out;
}
