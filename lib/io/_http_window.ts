// The read window behind HttpSource: once reads run forward through a
// resource, the next pieces of it are fetched ahead, several at a time.
//
// Why: object stores and CDNs cap each connection's bandwidth, and every
// request waits a round trip before its first byte. One request at a time
// (or a few large ones, as the reader's own read-ahead asks for) leaves
// most of what several connections could carry unused; pieces of a few
// MiB in flight together, each on a connection of its own (a runtime's
// fetch opens another connection to an origin when its open ones are
// busy), add the connections' bandwidths up.
//
// Budget. At most WINDOW_PIECES pieces of WINDOW_PIECE bytes are held,
// fetched or in flight, and none is fetched ahead while WINDOW_PIECES
// requests are out (pieces dropped by a jump included): a fixed amount of
// memory and of requests, whatever the size of the resource. Only the
// pieces a read needs go out beyond that; the caller bounds its reads. The window covers the pieces from WINDOW_BEHIND before the
// furthest piece read; reads may come a little out of order (an image
// written out of order stores guest-ordered clusters so). A read before
// the window, or far beyond it, is not the window's: the caller reads it
// with a request of its own, and a read far beyond it starts the window
// over once reads run forward again from there.
//
// Delivery. A read resolves when the pieces holding it have come, in
// whatever order they come: the caller awaits its reads in its own order.
// A piece that fails fails only the reads that need it, with the error of
// its request (naming the URL and the range); a piece nobody reads fails
// silently.

/** Bytes of one piece: one Range request. */
export const WINDOW_PIECE = 4 * 1024 * 1024;
/** Pieces held at most: the window's memory, and its requests in flight. */
export const WINDOW_PIECES = 8;
/** Pieces kept before the furthest piece read, for reads out of order. */
export const WINDOW_BEHIND = 1;
/**
 * Bytes read forward, one read after the other, before the window opens:
 * a few reads (headers, tables, a cluster here and there) fetch nothing
 * more than they ask for.
 */
export const WINDOW_STREAK = 1024 * 1024;
/** A read starting at most this far from where the last ended continues a streak. */
const STREAK_GAP = 256 * 1024;

/** Fetches `length` bytes at `offset`, all of them (fewer only past the end). */
export type FetchRange = (
  offset: number,
  length: number,
) => Promise<Uint8Array>;

/**
 * Pieces of a resource fetched ahead of forward reads, within a fixed
 * budget. {@linkcode ReadWindow.read} answers a read from the pieces, or
 * returns undefined for a read that is not the window's.
 */
export class ReadWindow {
  readonly #size: number;
  readonly #fetch: FetchRange;
  /** Where piece 0 starts; undefined while the window is closed. */
  #origin: number | undefined;
  /** The furthest piece read. */
  #furthest = 0;
  readonly #pieces = new Map<number, Promise<Uint8Array>>();
  /** Requests out, for pieces held or dropped. */
  #inFlight = 0;
  /** End of the last read seen outside the window, and the streak's bytes. */
  #streakEnd = -1;
  #streakBytes = 0;

  /**
   * @param size The resource's size in bytes.
   * @param fetch Fetches a range (one request, checked by the caller).
   */
  constructor(size: number, fetch: FetchRange) {
    this.#size = size;
    this.#fetch = fetch;
  }

  /** Pieces held now, fetched or in flight. */
  get held(): number {
    return this.#pieces.size;
  }

  /**
   * The bytes `[offset, offset + length)` from the window's pieces
   * (fetching the pieces they need, and the next ones), or undefined when
   * the read is not the window's.
   */
  read(offset: number, length: number): Promise<Uint8Array> | undefined {
    const origin = this.#origin;
    if (origin !== undefined) {
      if (offset < origin) return undefined;
      const first = Math.floor((offset - origin) / WINDOW_PIECE);
      const last = Math.floor((offset + length - 1 - origin) / WINDOW_PIECE);
      const low = this.#furthest - WINDOW_BEHIND;
      if (first >= low && first <= low + WINDOW_PIECES) {
        return this.#answer(offset, length, first, last);
      }
      if (first < low) return undefined;
      // Far ahead: the reads jumped, the window closes until they run on.
      this.#close();
    }
    this.#streakBytes = Math.abs(offset - this.#streakEnd) <= STREAK_GAP
      ? this.#streakBytes + length
      : length;
    this.#streakEnd = offset + length;
    if (this.#streakBytes < WINDOW_STREAK) return undefined;
    this.#origin = offset;
    this.#furthest = 0;
    return this.#answer(
      offset,
      length,
      0,
      Math.floor((length - 1) / WINDOW_PIECE),
    );
  }

  /** Drops every piece; requests still out finish unread. */
  clear(): void {
    this.#close();
  }

  /** Pieces in flight or held, to wait for them once they are aborted. */
  pending(): Promise<unknown>[] {
    return [...this.#pieces.values()];
  }

  #close(): void {
    this.#origin = undefined;
    this.#pieces.clear();
    this.#streakBytes = 0;
  }

  /** Answers a read of pieces `first` to `last`, moving the window on. */
  async #answer(
    offset: number,
    length: number,
    first: number,
    last: number,
  ): Promise<Uint8Array> {
    if (last > this.#furthest) this.#furthest = last;
    const low = Math.max(0, this.#furthest - WINDOW_BEHIND);
    for (const k of this.#pieces.keys()) {
      if (k < low) this.#pieces.delete(k);
    }
    // The pieces of this read first, then the ones after them.
    const wanted: Promise<Uint8Array>[] = [];
    for (let k = first; k <= last; k++) wanted.push(this.#piece(k)!);
    for (let k = low; k < low + WINDOW_PIECES; k++) this.#piece(k, true);
    const origin = this.#origin!;
    if (wanted.length === 1) {
      const bytes = await wanted[0];
      const at = offset - origin - first * WINDOW_PIECE;
      return bytes.subarray(at, at + length);
    }
    const out = new Uint8Array(length);
    let have = 0;
    for (let i = 0; i < wanted.length; i++) {
      const bytes = await wanted[i];
      const pieceStart = origin + (first + i) * WINDOW_PIECE;
      const from = Math.max(offset, pieceStart) - pieceStart;
      const part = bytes.subarray(from, from + length - have);
      out.set(part, have);
      have += part.length;
    }
    return out.subarray(0, have);
  }

  /**
   * Piece `k`, fetched when it is not held yet (none past the end); one
   * fetched `ahead` of the reads waits while WINDOW_PIECES requests are out.
   */
  #piece(k: number, ahead = false): Promise<Uint8Array> | undefined {
    const held = this.#pieces.get(k);
    if (held) return held;
    if (ahead && this.#inFlight >= WINDOW_PIECES) return undefined;
    const start = this.#origin! + k * WINDOW_PIECE;
    const length = Math.min(WINDOW_PIECE, this.#size - start);
    if (length <= 0) return Promise.resolve(new Uint8Array(0));
    const piece = this.#fetch(start, length);
    this.#inFlight++;
    // Reported to the reads that await it; one nobody reads fails unseen.
    const done = () => void this.#inFlight--;
    piece.then(done, done);
    this.#pieces.set(k, piece);
    return piece;
  }
}
