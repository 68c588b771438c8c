/**
 * Zeros: the fast all-zero test for cluster buffers, and the run of zero
 * bytes that stands for them in a stream of guest bytes.
 *
 * @module
 */

/**
 * Whether every byte of `bytes` is zero. Reads 64 bytes per step through
 * an `Int32Array` (several GB/s on one core; see bench/), bytewise only up
 * to the first 4-byte boundary and in the last few bytes, so views at any
 * offset are fast.
 *
 * @param bytes The bytes to test.
 * @returns True when all bytes are zero (also for an empty array).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isZero } from "./zeros.ts";
 * const cluster = new Uint8Array(65536);
 * assert.strictEqual(isZero(cluster), true);
 * cluster[65535] = 1;
 * assert.strictEqual(isZero(cluster), false);
 * ```
 */
export function isZero(bytes: Uint8Array): boolean {
  const length = bytes.byteLength;
  // Bytewise up to a 4-byte boundary, then 64 bytes per step, then the tail.
  let i = Math.min(length, (4 - (bytes.byteOffset & 3)) & 3);
  for (let b = 0; b < i; b++) if (bytes[b] !== 0) return false;
  if (length - i >= 64) {
    const words = new Int32Array(
      bytes.buffer,
      bytes.byteOffset + i,
      (length - i) >>> 2,
    );
    const n = words.length & ~15;
    for (let w = 0; w < n; w += 16) {
      if (
        (words[w] | words[w + 1] | words[w + 2] | words[w + 3] | words[w + 4] |
          words[w + 5] | words[w + 6] | words[w + 7] | words[w + 8] |
          words[w + 9] | words[w + 10] | words[w + 11] | words[w + 12] |
          words[w + 13] | words[w + 14] | words[w + 15]) !== 0
      ) {
        return false;
      }
    }
    i += n * 4;
  }
  for (; i < length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * What the chunker accepts besides bytes: a run of zero bytes that need not
 * be materialized (a hole in a sparse source, or free space found by the
 * free-space map of `--sparsify`).
 *
 * @example A 1 GiB hole costs nothing to convert
 * ```ts
 * import assert from "node:assert";
 * import { convert } from "../convert.ts";
 * import { writesToBytes } from "../writer/qcow2_writer.ts";
 * import type { HostWrite } from "../writer/records.ts";
 * import type { ZeroBytes } from "./zeros.ts";
 * const hole: ZeroBytes = { zeros: 1 << 30 };
 * const { readable, writable } = new TransformStream<HostWrite, HostWrite>();
 * const bytes = writesToBytes(readable);
 * const summary = await convert(ReadableStream.from([hole]), writable);
 * assert.strictEqual(summary.virtualSize, 1 << 30);
 * assert.ok((await bytes).length < 1 << 20);
 * ```
 */
export interface ZeroBytes {
  /** Number of zero bytes. */
  zeros: number;
}
