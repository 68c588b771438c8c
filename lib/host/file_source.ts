/**
 * Local files as random-access sources, through Deno's file API. Importing
 * this module also gives the runtime-neutral code (the reader, the tools)
 * file access by path; `mod.ts` imports it, `core.ts` does not.
 *
 * @module
 */

import { IoError } from "../format/errors.ts";
import { fileError } from "../io/os_errors.ts";
import { installHostFiles } from "../io/host_files.ts";
import { setPoisoning } from "../bytes/recycle.ts";
import { openHoleProbe } from "./_holes.ts";
import { identityOf } from "../io/identity.ts";
import type { FileIdentity, RandomAccessSource } from "../io/source.ts";

// The platform's path separator, as node:path's `sep` (not imported: the
// first node: module a run loads starts Deno's Node compatibility layer,
// and `info` needs nothing else from it).
const sep = Deno.build.os === "windows" ? "\\" : "/";

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
  #writable = false;
  /** What the file is called in messages and reports (default: its path). */
  readonly name: string;
  /** The path the file was opened from. */
  readonly path: string;
  /**
   * The file this source reads, from the open descriptor (`fstat`): what
   * an output is compared with so that it never overwrites an input, and
   * what a reference is checked against after it is opened. Undefined
   * where the system has no inode numbers (Windows).
   */
  readonly identity: FileIdentity | undefined;

  private constructor(
    file: Deno.FsFile,
    size: number,
    path: string,
    name: string,
    identity: FileIdentity | undefined,
  ) {
    this.#file = file;
    this.#size = size;
    this.path = path;
    this.name = name;
    this.identity = identity;
  }

  /**
   * Opens a file for reading.
   *
   * @param path File path.
   * @param name Name for messages and for resolving the names an image
   * gives (default: the path).
   * @param options `write: true` opens a regular file for reading and
   * writing in place ({@linkcode FileSource.writeAt}), as `check -r` needs.
   * @returns The source.
   * @throws {IoError} `NOT_FOUND` when the file does not exist,
   * `NOT_A_FILE` when `path` is a directory (or, for writing, not a
   * regular file), `PERMISSION` when it may not be read (`Cannot open
   * disk.raw: no such file`), with the OS error as `cause`.
   */
  static async open(
    path: string,
    name: string = path,
    options: { write?: boolean } = {},
  ): Promise<FileSource> {
    const write = options.write ?? false;
    const file = await Deno.open(path, { read: true, write }).catch((err) => {
      throw fileError(`open ${name}`, err);
    });
    try {
      const info = await file.stat();
      if (info.isDirectory) {
        throw new IoError(
          "NOT_A_FILE",
          `Cannot open ${name}: it is a directory`,
        );
      }
      if (write && !info.isFile) {
        throw new IoError(
          "NOT_A_FILE",
          `Cannot open ${name} for writing: it is not a regular file`,
        );
      }
      let size = info.size;
      if (!info.isFile) {
        // Block devices report size 0 in stat; find the end by seeking.
        size = await file.seek(0, Deno.SeekMode.End);
      }
      const source = new FileSource(
        file,
        size,
        path,
        name,
        identityOf(info, name),
      );
      source.#writable = write;
      return source;
    } catch (err) {
      file.close();
      throw err instanceof IoError ? err : fileError(`open ${name}`, err);
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
   * @throws {IoError} When the file cannot be read (`Cannot read disk.raw at
   * offset 0: ...`), with the OS error as `cause`.
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
   * @throws {IoError} When the file cannot be read, with the OS error as
   * `cause`.
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

  /**
   * Writes bytes at an offset of a file opened with `write: true`; the
   * size grows when the write ends past it.
   *
   * @param offset Start offset.
   * @param data The bytes.
   * @throws {IoError} When the file cannot be written, with the OS error
   * as `cause`.
   * @throws {TypeError} When the file was opened read-only.
   */
  writeAt(offset: number, data: Uint8Array): Promise<void> {
    if (!this.#writable) {
      return Promise.reject(
        new TypeError(`Cannot write ${this.name}: it was opened read-only`),
      );
    }
    try {
      this.#file.seekSync(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < data.length) {
        done += this.#file.writeSync(data.subarray(done));
      }
      this.#size = Math.max(this.#size, offset + data.length);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(
        fileError(`write ${this.name} at offset ${offset}`, err),
      );
    }
  }

  /**
   * Makes what was written durable (`fdatasync`).
   *
   * @throws {IoError} When the file cannot be synced, with the OS error as
   * `cause`.
   */
  async sync(): Promise<void> {
    if (!this.#writable) return;
    await this.#file.syncData().catch((err) => {
      throw fileError(`sync ${this.name}`, err);
    });
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

/** Whether real path `path` lies strictly inside real directory `root`. */
function isWithin(root: string, path: string): boolean {
  return path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/**
 * Where `target` leads: `Deno.realPath` of the name exactly as given
 * (realpath(3) resolves each component in turn, a link before the `..`
 * after it; a text normalisation first would fold `link/..` away and
 * decide on another file). A name that leads nowhere is placed by its
 * deepest existing ancestor.
 */
async function locate(dir: string, target: string) {
  let root: string;
  try {
    root = await Deno.realPath(dir === "" ? "." : dir);
  } catch (error) {
    return { path: undefined, inside: false, error };
  }
  try {
    const path = await Deno.realPath(target);
    return { path, inside: isWithin(root, path) };
  } catch (error) {
    const absolute = target.startsWith("/") || target.startsWith(sep);
    const parts = target.split(sep === "/" ? "/" : /[\\/]/)
      .filter((p) => p !== "");
    for (let keep = parts.length - 1; keep >= 0; keep--) {
      const prefix = (absolute ? sep : "") + parts.slice(0, keep).join(sep);
      let ancestor: string;
      try {
        ancestor = await Deno.realPath(prefix === "" ? "." : prefix);
      } catch {
        continue;
      }
      return {
        path: undefined,
        inside: ancestor === root || isWithin(root, ancestor),
        error,
      };
    }
    return { path: undefined, inside: false, error };
  }
}

// The debug mode of buffer recycling (lib/bytes/recycle.ts), asked for with
// QCOW2PIPE_POISON=1 (`deno task test` sets it). Read here because this is
// where Deno's side of the library is loaded; only where Deno already
// allows it, so that a missing `--allow-env` neither prompts nor throws.
if (
  Deno.permissions.querySync({ name: "env", variable: "QCOW2PIPE_POISON" })
      .state === "granted" && Deno.env.get("QCOW2PIPE_POISON") === "1"
) {
  setPoisoning(true);
}

installHostFiles({
  open: (path, name) => FileSource.open(path, name),
  realPath: (path) => Deno.realPath(path),
  identity: (source) =>
    source instanceof FileSource ? source.identity : undefined,
  async identityAt(path) {
    try {
      return identityOf(await Deno.stat(path), path);
    } catch {
      return undefined;
    }
  },
  locate,
  pathOf: (source) => source instanceof FileSource ? source.path : undefined,
  async isOpenedAt(source, path) {
    const opened = source instanceof FileSource ? source.identity : undefined;
    if (opened === undefined) return undefined;
    try {
      const [now, real] = await Promise.all([
        Deno.stat(path),
        Deno.realPath(path),
      ]);
      return real === path && now.dev === opened.dev &&
        now.ino === opened.ino;
    } catch {
      return false;
    }
  },
  holeProbe(source) {
    if (!(source instanceof FileSource) || !source.identity) return undefined;
    return openHoleProbe(source.path, source.identity);
  },
  async allocatedSize(source) {
    if (!(source instanceof FileSource)) return undefined;
    try {
      const st = await Deno.stat(source.path);
      return st.blocks === null ? undefined : st.blocks * 512;
    } catch {
      return undefined;
    }
  },
});
