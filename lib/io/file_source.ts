/**
 * Local files as random-access sources, through Deno's file API. Importing
 * this module also gives the runtime-neutral code (the reader, the tools)
 * file access by path; `mod.ts` imports it, `core.ts` does not.
 *
 * @module
 */

import { resolve, sep } from "node:path";
import { fileError } from "./_errors.ts";
import { installHostFiles } from "./_host_files.ts";
import { openHoleProber } from "./_holes.ts";
import { identityOf } from "./identity.ts";
import type { FileIdentity, RandomAccessSource } from "./source.ts";

/**
 * A {@linkcode RandomAccessSource} over a file opened read-only. Reads are
 * synchronous seek-then-read pairs (Deno files have no positional read; the
 * synchronous calls are several times faster than the async ones and keep
 * each pair atomic).
 *
 * @example Read the first bytes of a file
 * ```ts
 * import assert from "node:assert";
 * import { FileSource } from "./file_source.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([7, 8, 9]));
 * await using src = await FileSource.open(path);
 * assert.deepStrictEqual(await src.read(1, 5), new Uint8Array([8, 9]));
 * await Deno.remove(path);
 * ```
 */
export class FileSource implements RandomAccessSource, AsyncDisposable {
  #file: Deno.FsFile;
  #size: number;
  /** The path the file was opened from. */
  readonly name: string;
  /**
   * The file this source reads, from the open descriptor (`fstat`): what
   * an output is compared with so that it never overwrites an input.
   * Undefined where the system has no inode numbers (Windows).
   */
  readonly identity: FileIdentity | undefined;

  private constructor(
    file: Deno.FsFile,
    size: number,
    name: string,
    identity: FileIdentity | undefined,
  ) {
    this.#file = file;
    this.#size = size;
    this.name = name;
    this.identity = identity;
  }

  /**
   * Opens a file for reading.
   *
   * @param path File path.
   * @param name Name for messages and for resolving the names an image
   * gives (default: the path).
   * @returns The source.
   * @throws {Deno.errors.NotFound} When the file does not exist.
   * @throws {Deno.errors.IsADirectory} When `path` is a directory.
   */
  static async open(path: string, name: string = path): Promise<FileSource> {
    const file = await Deno.open(path, { read: true });
    try {
      const info = await file.stat();
      if (info.isDirectory) {
        throw new Deno.errors.IsADirectory(`Is a directory: ${path}`);
      }
      let size = info.size;
      if (!info.isFile) {
        // Block devices report size 0 in stat; find the end by seeking.
        size = await file.seek(0, Deno.SeekMode.End);
      }
      return new FileSource(file, size, name, identityOf(info, name));
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /** Size in bytes when opened. */
  get size(): number {
    return this.#size;
  }

  /**
   * Reads bytes at an offset.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns The bytes (shorter at the end of the file).
   */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(
      Math.max(0, Math.min(length, this.#size - offset)),
    );
    const done = await this.readInto(offset, out);
    return done === out.length ? out : out.subarray(0, done);
  }

  /**
   * Reads into a buffer the caller reuses: a fresh buffer costs a page
   * fault per 4 KiB on first touch, several times the copy itself.
   *
   * @param offset Start offset.
   * @param into Where the bytes go (`into.length` of them).
   * @returns The number of bytes read (fewer at the end of the file).
   */
  readInto(offset: number, into: Uint8Array): Promise<number> {
    try {
      return Promise.resolve(this.#readIntoNow(offset, into));
    } catch (err) {
      return Promise.reject(
        fileError(`read ${this.name} at offset ${offset}`, err),
      );
    }
  }

  #readIntoNow(offset: number, into: Uint8Array): number {
    const want = Math.max(0, Math.min(into.length, this.#size - offset));
    if (want === 0) return 0;
    this.#file.seekSync(offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < want) {
      const n = this.#file.readSync(into.subarray(done, want));
      if (n === null || n === 0) break;
      done += n;
    }
    return done;
  }

  /** Closes the file. */
  close(): void {
    try {
      this.#file.close();
    } catch {
      // already closed
    }
  }

  /** Closes the file. */
  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}

async function realPathOr(path: string): Promise<string> {
  try {
    return await Deno.realPath(path);
  } catch {
    return resolve(path);
  }
}

installHostFiles({
  open: (path) => FileSource.open(path),
  realPath: (path) => Deno.realPath(path),
  identity: (source) =>
    source instanceof FileSource ? source.identity : undefined,
  async contains(dir, target) {
    const root = resolve(dir === "" ? "." : dir);
    const lexical = resolve(target);
    if (!lexical.startsWith(root.endsWith(sep) ? root : root + sep)) {
      return false;
    }
    // Symbolic links must not lead out either.
    const realRoot = await realPathOr(root);
    const real = await realPathOr(lexical);
    return real.startsWith(realRoot.endsWith(sep) ? realRoot : realRoot + sep);
  },
  holeProbe(source) {
    if (!(source instanceof FileSource)) return undefined;
    const prober = openHoleProber();
    const probe = prober.open(source.name);
    if (!probe) {
      prober[Symbol.dispose]();
      return undefined;
    }
    return {
      find: (offset) => probe.find(offset),
      close() {
        probe.close();
        prober[Symbol.dispose]();
      },
    };
  },
  async allocatedSize(source) {
    if (!(source instanceof FileSource)) return undefined;
    try {
      const st = await Deno.stat(source.name);
      return st.blocks === null ? undefined : st.blocks * 512;
    } catch {
      return undefined;
    }
  },
});
