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
//
// A stage that breaks the order (or keeps a view past doneWith) reads
// bytes of a later chunk, which mostly look like data: nothing fails. So
// in debug mode (QCOW2PIPE_POISON=1, which `deno task test` sets) every
// buffer, a Recycler's or a BufferPool's, is filled with POISON_BYTE when
// it becomes free, before anyone may take it again: a late reader sees
// 0xDB everywhere, and the image or raw bytes it makes differ from QEMU's
// at once.

/** The byte freed buffers are filled with in debug mode. */
export const POISON_BYTE = 0xdb;

/**
 * Whether freed buffers are poisoned: off unless the runtime's file module
 * (lib/host/file_source.ts for Deno) finds QCOW2PIPE_POISON=1.
 */
let poisoning = false;

/**
 * Turns poisoning of freed buffers on or off.
 *
 * @param on Whether to poison.
 * @returns The setting before.
 */
export function setPoisoning(on: boolean): boolean {
  const was = poisoning;
  poisoning = on;
  return was;
}

/** Fills a freed buffer with POISON_BYTE in debug mode. */
function poison(buffer: ArrayBuffer | Uint8Array): void {
  // A buffer a transfer detached has no bytes left to poison.
  if (!poisoning || buffer.byteLength === 0) return;
  (buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer))
    .fill(POISON_BYTE);
}

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
    poison(buffer);
    this.#keep(buffer);
  }

  /** Every buffer lent before `buffer` may be used again. */
  releaseBefore(buffer: ArrayBuffer): void {
    const i = this.#lent.indexOf(buffer);
    if (i <= 0) return;
    for (const done of this.#lent.splice(0, i)) {
      owners.delete(done);
      poison(done);
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
 *
 * A class with none free lends one of the next two classes' (at most four
 * times the size) before a new buffer is made: the pool holds the
 * high-water mark of every class at once, and a reader whose pieces vary
 * in size (data clusters between compressed ones) left many free. Over
 * HTTP, expanding a 293 MB image of such data peaked 5 MiB lower (155
 * against 160 MiB); a larger buffer lent for a small piece is one the
 * large pieces then lack (any class: 160 MiB).
 */
export class BufferPool {
  #free = new Map<number, Uint8Array[]>();

  /** A buffer of at least `length` bytes. */
  take(length: number): Uint8Array {
    const size = Math.max(65536, 2 ** Math.ceil(Math.log2(length)));
    for (let lent = size; lent <= 4 * size; lent *= 2) {
      const free = this.#free.get(lent)?.pop();
      if (free) return free;
    }
    return new Uint8Array(size);
  }

  /** Gives a buffer back: no view of it may be read after this. */
  put(buffer: Uint8Array): void {
    poison(buffer);
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
