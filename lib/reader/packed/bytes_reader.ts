/**
 * Reading a byte stream forward in pieces of a chosen size: whole header
 * blocks, or a body a chunk at a time, never buffering more than one of
 * the stream's chunks.
 *
 * @module
 */

/** A forward reader over a byte stream, counting where it is. */
export class BytesReader {
  /** Bytes taken from the stream so far. */
  position = 0;
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #rest: Uint8Array = new Uint8Array(0);
  #done = false;

  /** @param stream The bytes. */
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  /**
   * Up to `max` bytes: what is left of the last chunk, else the next one.
   * Empty at the end of the stream.
   */
  async some(max: number): Promise<Uint8Array> {
    while (this.#rest.length === 0 && !this.#done) {
      const { value, done } = await this.#reader.read();
      if (done) this.#done = true;
      else this.#rest = value;
    }
    const out = this.#rest.subarray(0, max);
    this.#rest = this.#rest.subarray(out.length);
    this.position += out.length;
    return out;
  }

  /**
   * Exactly `length` bytes (a small length: a header block), or fewer at
   * the end of the stream.
   */
  async exactly(length: number): Promise<Uint8Array> {
    const first = await this.some(length);
    if (first.length === length || first.length === 0) return first;
    const out = new Uint8Array(length);
    out.set(first);
    let have = first.length;
    while (have < length) {
      const part = await this.some(length - have);
      if (part.length === 0) return out.subarray(0, have);
      out.set(part, have);
      have += part.length;
    }
    return out;
  }

  /** Skips `length` bytes; returns how many there were. */
  async skip(length: number): Promise<number> {
    let left = length;
    while (left > 0) {
      const part = await this.some(Math.min(left, 1 << 20));
      if (part.length === 0) break;
      left -= part.length;
    }
    return length - left;
  }

  /** Stops reading the stream. */
  async cancel(reason?: unknown): Promise<void> {
    await this.#reader.cancel(reason).catch(() => {});
  }
}
