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
// memory (see Memory below) and of requests, whatever the size of the
// resource. Only the pieces a read needs go out beyond that; the caller
// bounds its reads. The window covers the pieces from WINDOW_BEHIND before the
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
//
// Memory. The window owns its pieces: a read gets a copy of its bytes, in
// the caller's buffer when it gives one, never a view of a piece. So a
// piece's memory goes round: it is taken in blocks of WINDOW_BLOCK bytes
// as the piece's bytes come (a request waits a round trip for its first
// byte, and the pieces in flight are partly there), and given back once
// the piece is dropped, its request has ended and no read is copying from
// it. The blocks held, pieces in flight included, stay within
// WINDOW_MEMORY: beyond it, a piece that is not the next one read waits
// before its body is read on (the server's sending waits on TCP's flow
// control), so a consumer slower than the network does not have the
// window fill up with every piece. Expanding a 189 MB zstd image over a
// capped server (50 ms per request, 20 MB/s per connection), peak RSS
// was 229 MiB with a fresh 4 MiB buffer per piece, left to the collector.
// WINDOW_MEMORY is 8 MiB: with 16, a 293 MB image peaked 6 MiB higher
// (163 against 157 MiB), no faster, at 20 MB/s or at 5 MB/s per
// connection (where the network, not the consumer, sets the pace).

import { BufferPool } from "../bytes/recycle.ts";
import type { ByteTarget } from "./_http.ts";

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
/** Bytes of the blocks a piece's memory is taken in, as its bytes come. */
export const WINDOW_BLOCK = 512 * 1024;
/**
 * Bytes of blocks held before the pieces after the next one read wait for
 * some to be given back.
 */
export const WINDOW_MEMORY = 8 * 1024 * 1024;

/**
 * Fills `into` with the bytes at `offset`, all of them (fewer only past
 * the end): one request, checked by the caller. Nothing is written into
 * `into` once the promise has settled.
 */
export type FetchRange = (
  offset: number,
  into: ByteTarget,
) => Promise<unknown>;

/** A piece: its blocks, and who still needs them. */
interface Piece {
  /** Its bytes, in blocks taken as they come. */
  readonly blocks: Uint8Array[];
  /** Bytes of the piece (fewer than WINDOW_PIECE at the end). */
  readonly length: number;
  /** Settles when the request ends. */
  fetched: Promise<unknown>;
  settled: boolean;
  /** Reads copying from it. */
  readers: number;
  /** No longer in the window: the blocks go back once free. */
  dropped: boolean;
}

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
  readonly #pieces = new Map<number, Piece>();
  /** Requests out, for pieces held or dropped. */
  #inFlight = 0;
  /** Requests of dropped pieces still out, to wait for them at the end. */
  readonly #dropped = new Set<Promise<unknown>>();
  /** Blocks of pieces done with. */
  readonly #buffers = new BufferPool();
  /** Blocks taken and not given back. */
  #blocks = 0;
  /** Pieces waiting for a block, oldest first. */
  #waiting: { k: number; piece: Piece; take: () => void }[] = [];
  /** End of the last read seen outside the window, and the streak's bytes. */
  #streakEnd = -1;
  #streakBytes = 0;

  /**
   * @param size The resource's size in bytes.
   * @param fetch Fetches a range into a buffer (one request, checked by
   * the caller).
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
   * A copy of the bytes `[offset, offset + length)` from the window's
   * pieces (fetching the pieces they need, and the next ones), in `into`
   * when given (at least `length` bytes), or undefined when the read is
   * not the window's.
   */
  read(
    offset: number,
    length: number,
    into?: Uint8Array,
  ): Promise<Uint8Array> | undefined {
    const origin = this.#origin;
    if (origin !== undefined) {
      if (offset < origin) return undefined;
      const first = Math.floor((offset - origin) / WINDOW_PIECE);
      const last = Math.floor((offset + length - 1 - origin) / WINDOW_PIECE);
      const low = this.#furthest - WINDOW_BEHIND;
      if (first >= low && first <= low + WINDOW_PIECES) {
        return this.#answer(offset, length, first, last, into);
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
      into,
    );
  }

  /** Drops every piece; requests still out finish unread. */
  clear(): void {
    this.#close();
  }

  /** Requests still out, held or dropped, to wait for them once aborted. */
  pending(): Promise<unknown>[] {
    return [
      ...[...this.#pieces.values()].map((p) => p.fetched),
      ...this.#dropped,
    ];
  }

  #close(): void {
    this.#origin = undefined;
    for (const piece of this.#pieces.values()) this.#drop(piece);
    this.#pieces.clear();
    this.#streakBytes = 0;
  }

  /** Takes a piece out of the window: its blocks go back once free. */
  #drop(piece: Piece): void {
    piece.dropped = true;
    if (!piece.settled) this.#dropped.add(piece.fetched);
    this.#release(piece);
    this.#wake(); // a dropped piece reads its body on, to the end
  }

  /** Gives a dropped piece's blocks back once no request or read uses them. */
  #release(piece: Piece): void {
    if (piece.dropped && piece.settled && piece.readers === 0) {
      for (const block of piece.blocks) this.#buffers.put(block);
      this.#blocks -= piece.blocks.length;
      piece.blocks.length = 0;
      this.#wake();
    }
  }

  /**
   * Whether piece `k` may take a block now: within the budget, or it is
   * the next piece read (the reads wait for it), or it was dropped (its
   * request ends sooner).
   */
  #mayTake(k: number, piece: Piece): boolean {
    return this.#blocks < WINDOW_MEMORY / WINDOW_BLOCK ||
      k <= this.#furthest + 1 || piece.dropped;
  }

  /** Lets the waiting pieces that may take a block now take one. */
  #wake(): void {
    if (this.#waiting.length === 0) return;
    const still = [];
    for (const w of this.#waiting) {
      if (this.#mayTake(w.k, w.piece)) w.take();
      else still.push(w);
    }
    this.#waiting = still;
  }

  /** A new block for `piece` (number `k`), now or once it may take one. */
  #block(k: number, piece: Piece): Uint8Array | Promise<Uint8Array> {
    const take = () => {
      this.#blocks++;
      const block = this.#buffers.take(WINDOW_BLOCK);
      piece.blocks.push(block);
      return block;
    };
    if (this.#mayTake(k, piece)) return take();
    return new Promise((resolve) => {
      this.#waiting.push({ k, piece, take: () => resolve(take()) });
    });
  }

  /** Answers a read of pieces `first` to `last`, moving the window on. */
  async #answer(
    offset: number,
    length: number,
    first: number,
    last: number,
    into: Uint8Array | undefined,
  ): Promise<Uint8Array> {
    if (last > this.#furthest) {
      this.#furthest = last;
      this.#wake();
    }
    const low = Math.max(0, this.#furthest - WINDOW_BEHIND);
    for (const [k, piece] of this.#pieces) {
      if (k < low) {
        this.#pieces.delete(k);
        this.#drop(piece);
      }
    }
    // The pieces of this read first, then the ones after them; the read
    // holds its pieces' buffers until it has copied from them.
    const wanted: Piece[] = [];
    for (let k = first; k <= last; k++) {
      const piece = this.#piece(k)!;
      piece.readers++;
      wanted.push(piece);
    }
    for (let k = low; k < low + WINDOW_PIECES; k++) this.#piece(k, true);
    const origin = this.#origin!;
    const out = into?.subarray(0, length) ?? new Uint8Array(length);
    let have = 0;
    try {
      for (let i = 0; i < wanted.length; i++) {
        const piece = wanted[i];
        await piece.fetched;
        const pieceStart = origin + (first + i) * WINDOW_PIECE;
        let from = Math.max(offset, pieceStart) - pieceStart;
        const to = Math.min(piece.length, from + length - have);
        for (
          ;
          from < to;
          from = (Math.floor(from / WINDOW_BLOCK) + 1) * WINDOW_BLOCK
        ) {
          const block = piece.blocks[Math.floor(from / WINDOW_BLOCK)];
          const at = from % WINDOW_BLOCK;
          const part = block.subarray(
            at,
            Math.min(WINDOW_BLOCK, at + to - from),
          );
          out.set(part, have);
          have += part.length;
        }
      }
    } finally {
      for (const piece of wanted) {
        piece.readers--;
        this.#release(piece);
      }
    }
    return out.subarray(0, have);
  }

  /**
   * Piece `k`, fetched when it is not held yet (an empty one past the
   * end); one fetched `ahead` of the reads waits while WINDOW_PIECES
   * requests are out.
   */
  #piece(k: number, ahead = false): Piece | undefined {
    const held = this.#pieces.get(k);
    if (held) return held;
    if (ahead && this.#inFlight >= WINDOW_PIECES) return undefined;
    const start = this.#origin! + k * WINDOW_PIECE;
    const length = Math.max(0, Math.min(WINDOW_PIECE, this.#size - start));
    const blocks: Uint8Array[] = [];
    if (length === 0) {
      return {
        blocks,
        length,
        fetched: Promise.resolve(),
        settled: true,
        readers: 0,
        dropped: false,
      };
    }
    // The body is read in order: each block is taken when the bytes
    // reach it.
    const region = (at: number, max: number) => {
      const b = Math.floor(at / WINDOW_BLOCK);
      const from = at - b * WINDOW_BLOCK;
      const cut = (block: Uint8Array) =>
        block.subarray(from, Math.min(WINDOW_BLOCK, from + max));
      if (b < blocks.length) return cut(blocks[b]);
      const block = this.#block(k, piece);
      return block instanceof Uint8Array ? cut(block) : block.then(cut);
    };
    const piece: Piece = {
      blocks,
      length,
      fetched: Promise.resolve(), // the request's, below
      settled: false,
      readers: 0,
      dropped: false,
    };
    const fetched = this.#fetch(start, { length, region });
    piece.fetched = fetched;
    this.#inFlight++;
    // Reported to the reads that await it; one nobody reads fails unseen.
    const done = () => {
      this.#inFlight--;
      piece.settled = true;
      this.#dropped.delete(fetched);
      this.#release(piece);
    };
    fetched.then(done, done);
    this.#pieces.set(k, piece);
    return piece;
  }
}
