// A disk made of pieces of a region: an LVM2 logical volume is the
// extents its segments name, in LV order, wherever they lie on the PV.
// Reads of the view become reads of the pieces; the one mapping function
// (locate) serves reads and the translation of free ranges back to the
// region alike. Private to lib/sparsify.

import type { DiskReader, RegionReader } from "./_region.ts";

/** `length` bytes at `at` in the view are the region's bytes at `to`. */
export interface Piece {
  /** Offset in the view. */
  at: number;
  /** Bytes. */
  length: number;
  /** Offset in the region. */
  to: number;
}

/** Most pieces a view may have. */
export const MAX_PIECES = 65536;

/**
 * A view of a region made of pieces laid end to end from view offset 0:
 * a {@linkcode DiskReader} whose size is the pieces' total, for a
 * {@linkcode RegionReader} to read a filesystem through.
 */
export class PiecewiseDisk implements DiskReader {
  /** Bytes of the view. */
  readonly size: number;
  readonly #under: RegionReader;
  readonly #pieces: readonly Piece[];
  readonly #what: string;

  /**
   * Lays the pieces end to end.
   *
   * @param under The region the pieces are in.
   * @param pieces The pieces, by view offset: contiguous from 0, each
   * non-empty and inside the region.
   * @param what What the view is, for refusal messages (`LV vg0/root`).
   * @throws {RangeError} When the pieces do not tile the view or lie
   * outside the region.
   */
  constructor(under: RegionReader, pieces: readonly Piece[], what: string) {
    if (pieces.length === 0 || pieces.length > MAX_PIECES) {
      throw new RangeError(
        `Cannot map ${what}: ${pieces.length} pieces (1-${MAX_PIECES})`,
      );
    }
    let next = 0;
    for (const p of pieces) {
      const ok = p.at === next && Number.isSafeInteger(p.length) &&
        p.length > 0 && Number.isSafeInteger(p.to) && p.to >= 0 &&
        (under.length === undefined || p.to + p.length <= under.length);
      if (!ok) {
        throw new RangeError(
          `Cannot map ${what}: piece ${
            JSON.stringify(p)
          } does not follow at ${next} inside the region`,
        );
      }
      next += p.length;
    }
    this.size = next;
    this.#under = under;
    this.#pieces = pieces;
    this.#what = what;
  }

  /**
   * Where the view's bytes `[offset, offset + length)` are in the region:
   * one piece per region span, in view order, clipped to the range and to
   * the view's end.
   *
   * @param offset View offset.
   * @param length Bytes.
   * @returns The spans, as pieces.
   */
  *locate(offset: number, length: number): Generator<Piece> {
    const end = Math.min(offset + length, this.size);
    const ps = this.#pieces;
    // The last piece starting at or before `offset`.
    let lo = 0;
    let hi = ps.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (ps[mid].at <= offset) lo = mid;
      else hi = mid - 1;
    }
    for (let i = lo; i < ps.length && ps[i].at < end; i++) {
      const p = ps[i];
      const from = Math.max(offset, p.at);
      const to = Math.min(end, p.at + p.length);
      if (from < to) {
        yield { at: from, length: to - from, to: p.to + from - p.at };
      }
    }
  }

  /**
   * Reads view bytes: fewer than asked only at the end of the view.
   *
   * @param offset View offset.
   * @param length Bytes wanted.
   * @returns The bytes.
   * @throws {Refusal} When the region cannot give them.
   */
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (offset >= this.size || length <= 0) return new Uint8Array(0);
    const spans = [...this.locate(offset, length)];
    const read = (s: Piece) =>
      this.#under.read(
        s.to,
        s.length,
        `${this.#what} bytes ${s.at}-${s.at + s.length - 1}`,
      );
    if (spans.length === 1) return await read(spans[0]);
    const out = new Uint8Array(
      Math.min(offset + length, this.size) - offset,
    );
    for (const s of spans) out.set(await read(s), s.at - offset);
    return out;
  }
}
