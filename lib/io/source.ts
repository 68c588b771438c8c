/**
 * Random-access byte sources: what the reader opens images from.
 *
 * @module
 */

/**
 * Bytes that can be read at any offset: a file, a buffer, an HTTP resource.
 * Implement this to open images from anywhere.
 *
 * @example A source over a buffer
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "./source.ts";
 * const src = new BytesSource(new Uint8Array([1, 2, 3, 4]));
 * assert.deepStrictEqual(await src.read(1, 2), new Uint8Array([2, 3]));
 * ```
 */
export interface RandomAccessSource {
  /** Total size in bytes. */
  readonly size: number;
  /** A name for messages (a path or URL), when there is one. */
  readonly name?: string;
  /**
   * The URL that answered, when the bytes came over the network and a
   * redirect led elsewhere than `name`: the names an image gives resolve
   * against it, and its origin is the one the image may lead to.
   */
  readonly url?: string;
  /**
   * Reads `length` bytes at `offset`. Returns fewer only when the range runs
   * past the end of the source. The bytes may be a view into a buffer
   * shared with other reads (`HttpSource` answers reads merged into one
   * request so): copy them before transferring them to a worker.
   */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Reads into a buffer the caller owns (and may reuse): `into.length`
   * bytes at `offset`, fewer only past the end of the source. Optional: a
   * source whose reads land in fresh memory anyway leaves it out.
   *
   * @returns The number of bytes read.
   */
  readInto?(offset: number, into: Uint8Array): Promise<number>;
  /**
   * Whether a read costs a request over the network (`HttpSource`), even
   * where the source has `readInto`: readers then ask for more at once and
   * further ahead, as they do for a source without `readInto`.
   */
  readonly remote?: boolean;
  /**
   * Whether the source fetches ahead of reads that run forward on its own
   * (`HttpSource`'s read window): readers then keep fewer reads of their
   * own ahead, which would only hold memory while they wait.
   */
  readonly fetchesAhead?: boolean;
  /** Releases the source. */
  close?(): void | Promise<void>;
}

/**
 * Whether reads of `source` are requests over the network, to be asked
 * for together and ahead: a source that says so, or one without
 * `readInto` (whose reads land in fresh memory, as a remote one's do).
 *
 * @param source The source.
 * @returns True for a remote source.
 *
 * @example A buffer is read as a remote source, a file is not
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource, isRemote } from "./source.ts";
 * assert.strictEqual(isRemote(new BytesSource(new Uint8Array(4))), true);
 * const file = { size: 4, read: () => Promise.resolve(new Uint8Array(4)), readInto: () => Promise.resolve(4) };
 * assert.strictEqual(isRemote(file), false);
 * assert.strictEqual(isRemote({ ...file, remote: true }), true);
 * ```
 */
export function isRemote(source: RandomAccessSource): boolean {
  return source.remote === true || source.readInto === undefined;
}

/**
 * Which file a local source reads, as the system identifies it: the device
 * of its file system and its inode number (`st_dev`, `st_ino`), taken from
 * the open descriptor. Two names (hard links, symbolic links,
 * `/proc/self/fd/N`, bind mounts) are one file exactly when these agree.
 *
 * @example Two names of one file
 * ```ts
 * import assert from "node:assert";
 * import { FileSource } from "../../mod.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeFile(`${dir}/a`, new Uint8Array(4));
 * await Deno.link(`${dir}/a`, `${dir}/b`);
 * await using a = await FileSource.open(`${dir}/a`);
 * await using b = await FileSource.open(`${dir}/b`);
 * assert.strictEqual(a.identity!.ino, b.identity!.ino);
 * assert.strictEqual(a.identity!.dev, b.identity!.dev);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface FileIdentity {
  /** The device of the file system holding the file (`st_dev`). */
  readonly dev: number;
  /** The inode number (`st_ino`). */
  readonly ino: number;
  /**
   * For a block device, the device it is (`st_rdev`): two device nodes of
   * one disk are one file.
   */
  readonly rdev?: number;
  /** The name it was opened by, for messages. */
  readonly name: string;
}

/**
 * A {@linkcode RandomAccessSource} over a `Uint8Array`.
 *
 * @example Read past the end
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "./source.ts";
 * const src = new BytesSource(new Uint8Array(10));
 * assert.strictEqual((await src.read(8, 4)).length, 2);
 * ```
 */
export class BytesSource implements RandomAccessSource {
  #bytes: Uint8Array;
  /** Name for messages. */
  readonly name: string;

  /**
   * Wraps a buffer (not copied).
   *
   * @param bytes The bytes.
   * @param name A name for messages.
   */
  constructor(bytes: Uint8Array, name = "<buffer>") {
    this.#bytes = bytes;
    this.name = name;
  }

  /** Size in bytes. */
  get size(): number {
    return this.#bytes.length;
  }

  /**
   * Returns a view of the bytes at `offset`.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns A subarray (shorter at the end of the buffer).
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    const start = Math.min(offset, this.#bytes.length);
    return Promise.resolve(
      this.#bytes.subarray(start, Math.min(start + length, this.#bytes.length)),
    );
  }
}
