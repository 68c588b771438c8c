/**
 * Output files that appear under their name only when complete: writes go
 * to a temporary file beside the destination, renamed over it at the end.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { fileError, fileReason, ioReason } from "./_errors.ts";
import { trackTemporary, untrackTemporary } from "./_temp.ts";

/**
 * Options of {@linkcode OutputFile.create}.
 *
 * @example Replace an existing file
 * ```ts
 * import assert from "node:assert";
 * import { OutputFile } from "./output_file.ts";
 * const path = await Deno.makeTempFile();
 * const out = await OutputFile.create(path, { force: true });
 * await out.writeAt(0, new Uint8Array([1]));
 * await out.commit();
 * assert.deepStrictEqual(await Deno.readFile(path), new Uint8Array([1]));
 * await Deno.remove(path);
 * ```
 */
export interface OutputFileOptions {
  /**
   * Replace an existing destination.
   * @default {false}
   */
  force?: boolean;
  /**
   * Flush the data to the device (`fdatasync`) before renaming it into
   * place, so the file survives a power failure complete or not at all.
   * Off by default, as in `qemu-img convert`.
   * @default {false}
   */
  sync?: boolean;
}

/**
 * The destination exists and `force` was not given.
 *
 * @example An existing file is kept
 * ```ts
 * import assert from "node:assert";
 * import { OutputExistsError, OutputFile } from "./output_file.ts";
 * const path = await Deno.makeTempFile();
 * await assert.rejects(OutputFile.create(path), OutputExistsError);
 * await Deno.remove(path);
 * ```
 */
export class OutputExistsError extends Error {
  /**
   * Creates the error.
   *
   * @param path The destination.
   */
  constructor(path: string) {
    super(`Cannot write ${path}: the file exists (use --force to replace it)`);
    this.name = "OutputExistsError";
  }
}

const COALESCE_BYTES = 2 * 1024 * 1024;
// Writes at least this long go out as they are: copying them into the
// coalescing buffer costs more than the system call it saves.
const DIRECT_BYTES = 64 * 1024;

/**
 * Whether `dir` is on the file system of /dev (devtmpfs on Linux, devfs on
 * macOS), where a missing name is a mistyped device (`/dev/sdX`), not a
 * file to create. /dev/shm and other file systems mounted below /dev are
 * not, and neither is anything when /dev is no file system of its own.
 */
async function onDeviceFileSystem(dir: string): Promise<boolean> {
  const paths = [dir, "/dev", "/"];
  // Without read permission for these (a narrow --allow-read), no answer
  // rather than a permission prompt.
  const readable = (path: string) =>
    Deno.permissions.querySync({ name: "read", path }).state === "granted";
  if (!paths.every(readable)) return false;
  try {
    const [at, dev, root] = await Promise.all(paths.map((p) => Deno.stat(p)));
    return dev.dev !== root.dev && at.dev === dev.dev;
  } catch {
    return false;
  }
}

/**
 * A file written at arbitrary offsets, under a temporary name until
 * {@linkcode OutputFile.commit}. Sequential writes are coalesced into
 * large ones; skipped ranges stay holes (sparse). Block and character
 * devices (for example a disk, or `/dev/null`) are written in place.
 *
 * @example Write, then publish
 * ```ts
 * import assert from "node:assert";
 * import { OutputFile } from "./output_file.ts";
 * const dir = await Deno.makeTempDir();
 * const out = await OutputFile.create(`${dir}/disk.raw`);
 * await out.writeAt(4096, new Uint8Array([1]));
 * await out.commit(8192);
 * assert.strictEqual((await Deno.stat(`${dir}/disk.raw`)).size, 8192);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class OutputFile {
  /** The destination path. */
  readonly path: string;
  /** The path being written (the temporary file, or the device itself). */
  readonly writingPath: string;
  /** Whether the destination is a device written in place. */
  readonly isDevice: boolean;
  /**
   * Whether the destination itself is written (a device, or a file opened
   * with {@linkcode OutputFile.openInPlace}): no temporary file, nothing
   * renamed, truncated or removed.
   */
  readonly inPlace: boolean;
  #file: Deno.FsFile;
  #pos = 0; // file position after the last real write
  #buf: Uint8Array;
  #bufStart = 0;
  #bufLen = 0;
  #done = false;
  #sync: boolean;

  private constructor(
    path: string,
    writingPath: string,
    file: Deno.FsFile,
    isDevice: boolean,
    sync: boolean,
    inPlace = isDevice,
  ) {
    this.path = path;
    this.writingPath = writingPath;
    this.#file = file;
    this.isDevice = isDevice;
    this.inPlace = inPlace;
    this.#sync = sync;
    this.#buf = new Uint8Array(COALESCE_BYTES);
  }

  /**
   * Creates the temporary file beside `path`.
   *
   * @param path The destination.
   * @param options Whether to replace an existing destination.
   * @returns The output.
   * @throws {OutputExistsError} When `path` exists and `force` is false.
   */
  static async create(
    path: string,
    options: OutputFileOptions = {},
  ): Promise<OutputFile> {
    let info: Deno.FileInfo | undefined;
    try {
      info = await Deno.stat(path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) {
        throw fileError(`write ${path}`, err);
      }
    }
    if (info && (info.isBlockDevice || info.isCharDevice)) {
      let file: Deno.FsFile;
      try {
        file = await Deno.open(path, { write: true });
      } catch (err) {
        throw fileError(`write ${path}`, err);
      }
      return new OutputFile(path, path, file, true, options.sync ?? false);
    }
    if (info?.isDirectory) {
      throw new Error(`Cannot write ${path}: it is a directory`);
    }
    if (info && !options.force) throw new OutputExistsError(path);
    if (!info && await onDeviceFileSystem(dirname(path))) {
      throw new Error(
        `Cannot write ${path}: no such device (regular files are not created in /dev)`,
      );
    }
    const suffix = crypto.randomUUID().slice(0, 8);
    const temp = join(dirname(path), `.${basename(path)}.${suffix}.partial`);
    // Listed before it exists: a signal that arrives while the file is
    // being created still finds it (removing a missing file is harmless).
    trackTemporary(temp);
    let file: Deno.FsFile;
    try {
      // Created and registered in one turn of the event loop: a signal
      // handler cannot run between the two and miss the file.
      file = Deno.openSync(temp, {
        write: true,
        createNew: true,
        mode: 0o644,
      });
    } catch (err) {
      untrackTemporary(temp);
      const reason = err instanceof Deno.errors.NotFound
        ? `directory ${dirname(path)} does not exist`
        : err instanceof Deno.errors.PermissionDenied
        ? `no permission to create files in ${dirname(path)}`
        : fileReason(err);
      throw new Error(`Cannot write ${path}: ${reason}`, { cause: err });
    }
    return new OutputFile(path, temp, file, false, options.sync ?? false);
  }

  /**
   * Opens an existing file or device to write into it in place (`qemu-img
   * convert -n`): nothing is created, truncated or renamed; bytes not
   * written keep what they held.
   *
   * @param path The existing destination.
   * @param options `sync` flushes it at {@linkcode OutputFile.commit}.
   * @returns The output and the destination's size in bytes.
   * @throws {Error} When it does not exist, is a directory or cannot be
   * opened for writing.
   *
   * @example Overwrite the start of an existing file
   * ```ts
   * import assert from "node:assert";
   * import { OutputFile } from "./output_file.ts";
   * const path = await Deno.makeTempFile();
   * await Deno.writeFile(path, new Uint8Array([7, 7, 7, 7]));
   * const { output, size } = await OutputFile.openInPlace(path);
   * await output.writeAt(0, new Uint8Array([1, 2]));
   * await output.commit();
   * assert.strictEqual(size, 4);
   * assert.deepStrictEqual(await Deno.readFile(path), new Uint8Array([1, 2, 7, 7]));
   * await Deno.remove(path);
   * ```
   */
  static async openInPlace(
    path: string,
    options: Pick<OutputFileOptions, "sync"> = {},
  ): Promise<{ output: OutputFile; size: number }> {
    const what = `write into ${path}`;
    const info = await Deno.stat(path).catch((err) => {
      throw fileError(what, err);
    });
    if (info.isDirectory) {
      throw new Error(`Cannot ${what}: it is a directory`);
    }
    const file = await Deno.open(path, { write: true }).catch((err) => {
      throw fileError(what, err);
    });
    const device = !!(info.isBlockDevice || info.isCharDevice);
    try {
      // A block device's size is where its end is, not what stat says.
      const size = await file.seek(0, Deno.SeekMode.End);
      await file.seek(0, Deno.SeekMode.Start);
      return {
        output: new OutputFile(
          path,
          path,
          file,
          device,
          options.sync ?? false,
          true,
        ),
        size,
      };
    } catch (err) {
      file.close();
      throw fileError(what, err);
    }
  }

  /**
   * Writes bytes at an offset. Adjacent writes are merged.
   *
   * @param offset File offset.
   * @param data The bytes (not retained after the call resolves, unless
   * merged into the internal buffer as a copy).
   */
  writeAt(offset: number, data: Uint8Array): Promise<void> {
    try {
      this.#writeAt(offset, data);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #writeAt(offset: number, data: Uint8Array): void {
    if (data.length === 0) return;
    if (
      this.#bufLen > 0 && offset === this.#bufStart + this.#bufLen &&
      this.#bufLen + data.length <= this.#buf.length
    ) {
      this.#buf.set(data, this.#bufLen);
      this.#bufLen += data.length;
      return;
    }
    this.#flush();
    if (data.length >= DIRECT_BYTES) {
      this.#writeNow(offset, data);
      return;
    }
    this.#bufStart = offset;
    this.#buf.set(data, 0);
    this.#bufLen = data.length;
  }

  /**
   * Writes out what is buffered (so the file can be read back).
   *
   * @returns When the buffered bytes are written.
   */
  flush(): Promise<void> {
    try {
      this.#flush();
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #flush(): void {
    if (this.#bufLen === 0) return;
    const len = this.#bufLen;
    this.#bufLen = 0;
    this.#writeNow(this.#bufStart, this.#buf.subarray(0, len));
  }

  // Synchronous: several times faster than Deno's async writes for large
  // buffers, and the page cache takes them at once.
  #writeNow(offset: number, data: Uint8Array): void {
    let done = 0;
    try {
      if (offset !== this.#pos) {
        this.#file.seekSync(offset, Deno.SeekMode.Start);
      }
      while (done < data.length) {
        done += this.#file.writeSync(data.subarray(done));
      }
    } catch (err) {
      this.#pos = -1; // unknown: seek before the next write
      throw new Error(
        `Cannot write ${this.path} at offset ${offset + done}: ${
          ioReason(err)
        }`,
        { cause: err },
      );
    }
    this.#pos = offset + data.length;
  }

  /**
   * Flushes, sets the final size (holes at the end stay holes), and
   * renames the temporary file over the destination. When the rename
   * fails, the temporary file is removed.
   *
   * @param size Final file size in bytes; omit to keep what was written.
   */
  async commit(size?: number): Promise<void> {
    this.#flush();
    try {
      if (size !== undefined && !this.inPlace) {
        await this.#file.truncate(size);
      }
      if (this.#sync) await this.#file.syncData();
    } catch (err) {
      throw new Error(`Cannot finish ${this.path}: ${ioReason(err)}`, {
        cause: err,
      });
    }
    this.#file.close();
    this.#done = true;
    if (!this.inPlace) {
      try {
        await Deno.rename(this.writingPath, this.path);
      } catch (err) {
        await Deno.remove(this.writingPath).catch(() => {});
        throw fileError(`rename ${this.writingPath} to ${this.path}`, err);
      } finally {
        untrackTemporary(this.writingPath);
      }
    }
  }

  /** Closes and removes the temporary file. Safe to call more than once. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    try {
      this.#file.close();
    } catch {
      // already closed
    }
    if (!this.inPlace) {
      await Deno.remove(this.writingPath).catch(() => {});
      untrackTemporary(this.writingPath);
    }
  }
}
