/**
 * The cluster allocation bitmap (`$Bitmap`'s data: bit `c` of byte
 * `c >> 3`, least significant first, set when cluster `c` is in use), with
 * free counts per block of 256 clusters so that asking whether a run of
 * any length touches a free cluster costs a bounded time.
 *
 * @module
 */

/** Runs up to this many clusters are scanned without the counts. */
const SCAN_LIMIT = 512;
/** Clusters per counted block. */
const BLOCK_SHIFT = 8;
const BLOCK_BYTES = (1 << BLOCK_SHIFT) / 8;

/** Zero bits in each byte value. */
const ZERO_BITS = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let i = 0; i < 8; i++) if (!(b & (1 << i))) n++;
  return n;
});

/** Free (zero) bits of `bits` in `[from, to)` (bit indexes). */
function zeroBits(bits: Uint8Array, from: number, to: number): number {
  let n = 0;
  let i = from;
  while (i < to && (i & 7) !== 0) {
    if (!(bits[i >> 3] & (1 << (i & 7)))) n++;
    i++;
  }
  for (; i + 8 <= to; i += 8) n += ZERO_BITS[bits[i >> 3]];
  for (; i < to; i++) if (!(bits[i >> 3] & (1 << (i & 7)))) n++;
  return n;
}

/**
 * The volume's cluster bitmap, held whole while the MFT is checked against
 * it.
 *
 * @example Ask whether a run touches a free cluster
 * ```ts
 * import assert from "node:assert";
 * import { ClusterBitmap } from "./bitmap.ts";
 * const bits = new Uint8Array(128).fill(0xff);
 * bits[100] = 0xfe; // cluster 800 free
 * const map = new ClusterBitmap(bits, 1000);
 * assert.strictEqual(map.free, 1 + 0); // bits 1000-1023 do not count
 * assert.strictEqual(map.firstFree(0, 1000), 800);
 * assert.strictEqual(map.firstFree(801, 1000), -1);
 * ```
 */
export class ClusterBitmap {
  /** Clusters the bitmap describes. */
  readonly clusters: number;
  /** Free clusters. */
  readonly free: number;
  readonly #bits: Uint8Array;
  readonly #prefix: Uint32Array;

  /**
   * Takes the bitmap bytes; bits past `clusters` are set (they describe no
   * cluster).
   *
   * @param bits At least `ceil(clusters / 8)` bytes (kept, and changed past `clusters`).
   * @param clusters Clusters in the volume.
   * @throws {RangeError} When the bytes are too few.
   */
  constructor(bits: Uint8Array, clusters: number) {
    if (bits.length * 8 < clusters) {
      throw new RangeError(
        `Cannot hold a cluster bitmap: ${bits.length} bytes for ${clusters} clusters`,
      );
    }
    this.clusters = clusters;
    this.#bits = bits;
    for (let i = clusters; i < bits.length * 8 && (i & 7) !== 0; i++) {
      bits[i >> 3] |= 1 << (i & 7);
    }
    bits.fill(0xff, Math.ceil(clusters / 8));
    const blocks = Math.ceil(clusters / (1 << BLOCK_SHIFT));
    this.#prefix = new Uint32Array(blocks + 1);
    let free = 0;
    for (let k = 0; k < blocks; k++) {
      this.#prefix[k] = free;
      const end = Math.min(bits.length, (k + 1) * BLOCK_BYTES);
      for (let i = k * BLOCK_BYTES; i < end; i++) free += ZERO_BITS[bits[i]];
    }
    this.#prefix[blocks] = free;
    this.free = free;
  }

  /** Free clusters before cluster `c`. */
  #before(c: number): number {
    const k = c >> BLOCK_SHIFT;
    return this.#prefix[k] + zeroBits(this.#bits, k << BLOCK_SHIFT, c);
  }

  /**
   * The first free cluster in `[from, to)`, or -1.
   *
   * @param from First cluster (inside the volume).
   * @param to End cluster (at most `clusters`).
   * @returns The cluster, or -1 when all are in use.
   */
  firstFree(from: number, to: number): number {
    // Short runs (most of them) are scanned a byte at a time; long ones
    // are first asked of the counts, so that a run of any length costs at
    // most a few hundred byte reads unless it does touch a free cluster.
    if (to - from > SCAN_LIMIT && this.#before(to) === this.#before(from)) {
      return -1;
    }
    const bits = this.#bits;
    for (let c = from; c < to;) {
      const byte = bits[c >> 3];
      if ((c & 7) === 0 && c + 8 <= to) {
        if (byte !== 0xff) {
          for (let i = 0; i < 8; i++) if (!(byte & (1 << i))) return c + i;
        }
        c += 8;
      } else {
        if (!(byte & (1 << (c & 7)))) return c;
        c++;
      }
    }
    return -1;
  }
}
