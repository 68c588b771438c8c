// Buffers that go round instead of being allocated for every chunk.
//
// A fresh buffer costs a page fault per 4 KiB when it is first written,
// and zeroing, and unmapping when it is collected: reading 512 MiB into
// fresh 4 MiB buffers took 1.4 s here, into the same ones 0.14 s. So the
// stages that make buffers (the raw file reader, the compression jobs,
// the decompression jobs) take them from a Recycler, and the one consumer
// that knows when bytes are finished with (a sink that has written them)
// says so with doneWith().
//
// The rule that makes this safe without counting views: a pipeline hands
// a recycler's buffers on in the order it took them, and every stage
// keeps that order. So once the last consumer has a view of buffer N, it
// is done with every buffer taken before N. Nothing is reused until a
// consumer says so: a pipeline whose end never calls doneWith allocates
// as before.

const owners = new WeakMap<ArrayBuffer, Recycler>();

/** Buffers of one size, handed out in order and reused once done with. */
export class Recycler {
  /** Bytes per buffer. */
  readonly size: number;
  #free: ArrayBuffer[] = [];
  /** Handed out and not yet known to be done with, oldest first. */
  #lent: ArrayBuffer[] = [];
  #most: number;

  /**
   * @param size Bytes per buffer.
   * @param keepBytes About how many bytes it may hold on to, free or lent
   * (at least 8 buffers): lent buffers beyond it are forgotten (left to the
   * garbage collector), so a pipeline that never calls doneWith keeps
   * nothing alive.
   */
  constructor(size: number, keepBytes = 32 * 1024 * 1024) {
    this.size = size;
    this.#most = Math.max(8, Math.floor(keepBytes / size));
  }

  /** A buffer of `size` bytes: one done with, or a new one. */
  take(): Uint8Array<ArrayBuffer> {
    const buffer = this.#free.pop() ?? new ArrayBuffer(this.size);
    owners.set(buffer, this);
    this.#lent.push(buffer);
    if (this.#lent.length > this.#most) owners.delete(this.#lent.shift()!);
    return new Uint8Array(buffer);
  }

  /**
   * A lent buffer came back from a worker as `now`: a transfer detaches
   * the old `ArrayBuffer` and gives the memory a new one.
   */
  moved(was: ArrayBuffer, now: ArrayBuffer): void {
    const i = this.#lent.lastIndexOf(was);
    owners.delete(was);
    if (i < 0) return;
    if (now.byteLength !== this.size) {
      this.#lent.splice(i, 1);
      return;
    }
    this.#lent[i] = now;
    owners.set(now, this);
  }

  /** A buffer taken and never handed on is free again at once. */
  giveBack(view: Uint8Array): void {
    const buffer = view.buffer as ArrayBuffer;
    const i = this.#lent.lastIndexOf(buffer);
    if (i < 0) return;
    this.#lent.splice(i, 1);
    owners.delete(buffer);
    this.#keep(buffer);
  }

  /** Every buffer lent before `buffer` may be used again. */
  releaseBefore(buffer: ArrayBuffer): void {
    const i = this.#lent.indexOf(buffer);
    if (i <= 0) return;
    for (const done of this.#lent.splice(0, i)) {
      owners.delete(done);
      this.#keep(done);
    }
  }

  /** Keeps a free buffer, unless a transfer that never came back emptied it. */
  #keep(buffer: ArrayBuffer): void {
    if (buffer.byteLength === this.size && this.#free.length < this.#most) {
      this.#free.push(buffer);
    }
  }
}

/**
 * Buffers by size class (powers of two from 64 KiB), for a holder that
 * knows when each is done with: what is put back is taken again, so a long
 * read allocates only as many as are out at once.
 */
export class BufferPool {
  #free = new Map<number, Uint8Array[]>();

  /** A buffer of at least `length` bytes. */
  take(length: number): Uint8Array {
    const size = Math.max(65536, 2 ** Math.ceil(Math.log2(length)));
    return this.#free.get(size)?.pop() ?? new Uint8Array(size);
  }

  /** Gives a buffer back. */
  put(buffer: Uint8Array): void {
    const list = this.#free.get(buffer.length);
    if (list) list.push(buffer);
    else this.#free.set(buffer.length, [buffer]);
  }
}

/**
 * The last consumer of a pipeline is done with `view`'s bytes and with
 * every buffer its recycler handed out before `view`'s: those may be used
 * again. A view of anything else is ignored.
 */
export function doneWith(view: Uint8Array): void {
  const buffer = view.buffer as ArrayBuffer;
  owners.get(buffer)?.releaseBefore(buffer);
}
