/**
 * What `qemu-img compare` prints: the result, and what its strict mode
 * (`-s`) prints instead when the sizes or the block status differ.
 *
 * @module
 */

import type { CompareResult } from "./compare.ts";

/**
 * What `qemu-img compare` prints for a result: `Images are identical.` or
 * `Content mismatch at offset N!`, after `Warning: Image size mismatch!`
 * when the sizes differ and the common part matched.
 *
 * @param result What {@linkcode compareImages} returned.
 * @returns QEMU's text, ending with a newline.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatCompareResult } from "./compare_text.ts";
 * assert.strictEqual(
 *   formatCompareResult({ identical: true, sizeA: 1024, sizeB: 512 }),
 *   "Warning: Image size mismatch!\nImages are identical.\n",
 * );
 * ```
 */
export function formatCompareResult(result: CompareResult): string {
  const common = Math.min(result.sizeA, result.sizeB);
  let text = "";
  if (
    result.sizeA !== result.sizeB &&
    (result.identical || result.offset! >= common)
  ) {
    text += "Warning: Image size mismatch!\n";
  }
  return text +
    (result.identical
      ? "Images are identical.\n"
      : `Content mismatch at offset ${result.offset}!\n`);
}

/**
 * What `qemu-img compare -s` prints when the two images differ in size.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { compareImages } from "./compare.ts";
 * import { STRICT_SIZE_MISMATCH } from "./compare_text.ts";
 * const result = await compareImages(new Uint8Array(1024), new Uint8Array(512));
 * const text = result.sizeA !== result.sizeB ? STRICT_SIZE_MISMATCH : "";
 * assert.strictEqual(text, "Strict mode: Image size mismatch!\n");
 * ```
 */
export const STRICT_SIZE_MISMATCH: string =
  "Strict mode: Image size mismatch!\n";

/**
 * What `qemu-img compare -s` prints when the block status of the images
 * (allocation, as `map --output=json` shows it) first differs at `offset`.
 *
 * @param offset The guest offset.
 * @returns QEMU's text, ending with a newline.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatStatusMismatch } from "./compare_text.ts";
 * assert.strictEqual(formatStatusMismatch(65536), "Strict mode: Offset 65536 block status mismatch!\n");
 * ```
 */
export function formatStatusMismatch(offset: number): string {
  return `Strict mode: Offset ${offset} block status mismatch!\n`;
}
