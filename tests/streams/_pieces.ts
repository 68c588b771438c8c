// Filling the read window's pieces in its unit tests, as a request's body
// would: region by region, each taken when the bytes reach it.

import type { ByteTarget } from "../../lib/io/_http.ts";
import { ReadWindow } from "../../lib/io/_http_window.ts";

/**
 * Fills a piece fetched at `offset` with `byte(at)` for each byte at `at`;
 * `seen` collects the buffers the window gave.
 */
export async function fillPiece(
  into: ByteTarget,
  offset: number,
  byte: (at: number) => number,
  seen?: Set<ArrayBufferLike>,
): Promise<void> {
  for (let at = 0; at < into.length;) {
    const region = await into.region(at, into.length - at);
    seen?.add(region.buffer);
    for (let i = 0; i < region.length; i++) region[i] = byte(offset + at + i);
    at += region.length;
  }
}

/**
 * A window over `size` bytes whose requests are answered only when the
 * test calls the functions in `answers` (in the order they went out),
 * each piece filled with `byte(at)`.
 */
export function deferredWindow(
  size: number,
  byte: (at: number) => number,
): { window: ReadWindow; answers: (() => void)[] } {
  const answers: (() => void)[] = [];
  const window = new ReadWindow(
    size,
    (offset, into) =>
      new Promise((resolve) => {
        answers.push(() => resolve(fillPiece(into, offset, byte)));
      }),
  );
  return { window, answers };
}
