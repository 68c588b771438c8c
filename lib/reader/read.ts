/**
 * Reads that may run past the end, as QEMU reads: the bytes past the end of
 * a source or of a guest disk read as zeros. For the tools and the writer,
 * which compare images of different sizes.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "./image.ts";

/** Reads `length` bytes at `offset`, zero-filled past the end (as QEMU reads). */
export async function readPadded(
  source: RandomAccessSource,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  if (offset >= source.size || length === 0) return new Uint8Array(length);
  const bytes = await source.read(offset, length);
  if (bytes.length === length) return bytes;
  const out = new Uint8Array(length);
  out.set(bytes);
  return out;
}

/** Reads guest bytes; past the end of the disk they read as zeros. */
export async function readPastEnd(
  image: GuestImage,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const inside = Math.max(0, Math.min(length, image.virtualSize - offset));
  if (inside === length) return await image.readAt(offset, length);
  const out = new Uint8Array(length);
  if (inside > 0) out.set(await image.readAt(offset, inside));
  return out;
}
