/**
 * Output files that appear under their name only when complete: writes go
 * to a temporary file beside the destination, renamed over it at the end
 * (or, to keep a file that appeared meanwhile, linked to its name). An
 * output is never one of the files being read.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";
import { IoError } from "../format/errors.ts";
import { fileError, fileReason, ioCode, ioReason } from "../io/os_errors.ts";
import { trackTemporary, untrackTemporary } from "./temp.ts";
import { inspectDestination, temporaryName } from "./_destination.ts";
import { assertNotInput } from "../io/identity.ts";
import type { FileIdentity, RandomAccessSource } from "../io/source.ts";
import { hostFiles } from "../io/host_files.ts";
import { openRangeCopier, type RangeCopier } from "./_copy_range.ts";

/**
 * Options of {@linkcode OutputFile.create}.
 *
 * @example Keep a file that appears while the output is written
 * ```ts
 * import assert from "node:assert";
 * import { IoError } from "../format/errors.ts";
 * import { OutputFile } from "./output_file.ts";
 * const dir = await Deno.makeTempDir();
 * const out = await OutputFile.create(`${dir}/disk.raw`, { noClobber: true });
 * await out.writeAt(0, new Uint8Array([1]));
 * await Deno.writeFile(`${dir}/disk.raw`, new Uint8Array([2])); // someone else's
 * await assert.rejects(out.commit(), (e) => e instanceof IoError && e.code === "EXISTS");
 * assert.deepStrictEqual(await Deno.readFile(`${dir}/disk.raw`), new Uint8Array([2]));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface OutputFileOptions {
  /**
   * Keep an existing regular file at the destination: refuse it at the
   * start, and commit by linking the finished file to the name, which
   * fails, leaving it as it is, when a file appeared there meanwhile.
   * Without it an existing file is replaced (renamed over) by the
   * complete output only, as `qemu-img convert` replaces it. Devices and
   * streams are written either way, as the shell's `noclobber` writes
   * them.
   * @default {false}
   */
  noClobber?: boolean;
  /**
   * Flush the data to the device (`fdatasync`) before renaming it into
   * place, so the file survives a power failure complete or not at all.
   * Off by default, as in `qemu-img convert`.
   * @default {false}
   */
  sync?: boolean;
  /**
   * The files being read (the `identity` of each `FileSource` among an
   * image's `sources()`): the destination is refused when it is one of them,
   * compared by device and inode (hard links, symbolic links and
   * `/proc/self/fd/N` names of an input included), before anything is
   * written.
   * @default {[]}
   */
  inputs?: Iterable<FileIdentity>;
}

/**
 * The IoError (`EXISTS`) for a destination that `noClobber` keeps: found at
 * the start, or appeared while the output was written (the output is then
 * discarded).
 */
function outputExists(path: string, appeared = false): IoError {
  return new IoError(
    "EXISTS",
    appeared
      ? `Cannot write ${path}: a file appeared there while the output was written; it is kept and the output discarded (no-clobber)`
      : `Cannot write ${path}: the file exists and is kept (no-clobber)`,
  );
}

const COALESCE_BYTES = 2 * 1024 * 1024;
// Writes at least this long go out as they are: copying them into the
// coalescing buffer costs more than the system call it saves.
const DIRECT_BYTES = 64 * 1024;

/** Tries for a fresh temporary name before giving up. */
const TEMP_ATTEMPTS = 8;

/** Opens a device or file that exists, to write into it. */
async function openExisting(path: string, what: string): Promise<Deno.FsFile> {
  // Never `truncate`: nothing may change before the descriptor is known
  // not to be an input.
  return await Deno.open(path, { write: true }).catch((err) => {
    throw fileError(what, err);
  });
}

/**
 * The descriptor's own stat (`fstat`), refused when it is an input: the
 * file actually opened is what counts, whatever the name led to.
 */
async function checkOpened(
  file: Deno.FsFile,
  path: string,
  what: string,
  inputs: Iterable<FileIdentity>,
): Promise<Deno.FileInfo> {
  try {
    const info = await file.stat().catch((err) => {
      throw fileError(what, err);
    });
    assertNotInput(info, path, inputs);
    return info;
  } catch (err) {
    file.close();
    throw err;
  }
}

/** How an {@linkcode OutputFile} was opened. */
interface Opened {
  path: string;
  writingPath: string;
  file: Deno.FsFile;
  isDevice: boolean;
  inPlace: boolean;
  sync: boolean;
  /** Where the temporary file goes at commit (the real path of DST). */
  target: string;
  noClobber: boolean;
}

/**
 * A file written at arbitrary offsets, under a temporary name until
 * {@linkcode OutputFile.commit}. Sequential writes are coalesced into
 * large ones; skipped ranges stay holes (sparse). A block device is
 * written in place. Streams (a FIFO, a character device, a socket, or
 * what a name in /dev or /proc leads to, such as `/dev/stdout`) cannot be
 * written at offsets and are refused: `expandToPath` writes raw bytes to
 * them in order. A destination that is one of the `inputs` is refused
 * before anything is written.
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
  /** Whether the destination is a block device written in place. */
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
  #target: string;
  #noClobber: boolean;
  /** Per source: its copier, or null once it cannot (or failed to) copy. */
  #copiers = new Map<RandomAccessSource, RangeCopier | null>();
  /** Every copier opened, closed before the file is. */
  #opened: RangeCopier[] = [];

  private constructor(opened: Opened) {
    this.path = opened.path;
    this.writingPath = opened.writingPath;
    this.#file = opened.file;
    this.isDevice = opened.isDevice;
    this.inPlace = opened.inPlace;
    this.#sync = opened.sync;
    this.#target = opened.target;
    this.#noClobber = opened.noClobber;
    this.#buf = new Uint8Array(COALESCE_BYTES);
  }

  /**
   * Creates the temporary file beside `path` (beside the file it links
   * to, when it is a symbolic link to one), or opens a block device.
   *
   * @param path The destination.
   * @param options Whether to keep an existing file; the inputs.
   * @returns The output.
   * @throws {IoError} `EXISTS` when `path` exists and `noClobber` is set;
   * `NOT_A_FILE` for a directory or a stream; `NOT_FOUND` for a symbolic
   * link to nothing or a missing name in /dev; `OTHER` when `path` is one
   * of the inputs; the OS's code when the temporary file cannot be
   * created (its error as `cause`).
   */
  static async create(
    path: string,
    options: OutputFileOptions = {},
  ): Promise<OutputFile> {
    const inputs = [...options.inputs ?? []];
    const sync = options.sync ?? false;
    const noClobber = options.noClobber ?? false;
    const dest = await inspectDestination(path);
    if (dest.kind === "stream") {
      throw new IoError(
        "NOT_A_FILE",
        `Cannot write ${path}: it is ${dest.what}, written as a stream, in order, not at offsets`,
      );
    }
    if (dest.kind === "device") {
      const what = `write ${path}`;
      const file = await openExisting(path, what);
      const info = await checkOpened(file, path, what, inputs);
      if (!info.isBlockDevice) {
        file.close();
        throw new IoError(
          "CHANGED",
          `Cannot ${what}: it changed while being opened`,
        );
      }
      return new OutputFile({
        path,
        writingPath: path,
        file,
        isDevice: true,
        inPlace: true,
        sync,
        target: path,
        noClobber,
      });
    }
    if (dest.kind === "file") {
      assertNotInput(dest.info, path, inputs);
      if (noClobber) throw outputExists(path);
    }
    const target = dest.kind === "file" ? dest.target : path;
    const { temp, file } = createTemporary(path, target);
    return new OutputFile({
      path,
      writingPath: temp,
      file,
      isDevice: false,
      inPlace: false,
      sync,
      target,
      noClobber,
    });
  }

  /**
   * Opens an existing file or block device to write into it in place
   * (`qemu-img convert -n`): nothing is created, truncated or renamed;
   * bytes not written keep what they held. The opened descriptor is
   * compared with the inputs before anything is written.
   *
   * @param path The existing destination.
   * @param options `sync` flushes it at {@linkcode OutputFile.commit};
   * `inputs` are refused.
   * @returns The output and the destination's size in bytes.
   * @throws {IoError} When it does not exist (`NOT_FOUND`), is a directory
   * or a stream (`NOT_A_FILE`), is one of the inputs (`OTHER`), or cannot
   * be opened for writing (the OS error as `cause`).
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
    options: Pick<OutputFileOptions, "sync" | "inputs"> = {},
  ): Promise<{ output: OutputFile; size: number }> {
    const what = `write into ${path}`;
    const dest = await inspectDestination(path, what);
    if (dest.kind === "absent") {
      throw new IoError("NOT_FOUND", `Cannot ${what}: no such file`);
    }
    if (dest.kind === "stream" && !dest.info.isFile) {
      throw new IoError(
        "NOT_A_FILE",
        `Cannot ${what}: it is ${dest.what}, which cannot be written at offsets (a file or a block device can)`,
      );
    }
    const file = await openExisting(path, what);
    const info = await checkOpened(file, path, what, options.inputs ?? []);
    if (!info.isFile && !info.isBlockDevice) {
      file.close();
      throw new IoError(
        "NOT_A_FILE",
        `Cannot ${what}: it is not a file or a block device`,
      );
    }
    try {
      // A block device's size is where its end is, not what stat says.
      const size = await file.seek(0, Deno.SeekMode.End);
      await file.seek(0, Deno.SeekMode.Start);
      return {
        output: new OutputFile({
          path,
          writingPath: path,
          file,
          isDevice: !!info.isBlockDevice,
          inPlace: true,
          sync: options.sync ?? false,
          target: path,
          noClobber: false,
        }),
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
   * Copies a range of a local file opened with `FileSource` into the
   * output in the kernel (Linux's `copy_file_range`, through FFI), the
   * bytes never read into memory. The range must read as zeros before (a
   * new file): the source's holes are left out, holes in the output too. Several copies may be in flight, each
   * running on its own thread. Resolves false, and copies nothing more
   * from that source, where it cannot: no `--allow-ffi`, not Linux,
   * another kind of source, a device, or a call that failed (files on two
   * file systems with an older kernel); the caller then writes the range
   * with {@linkcode OutputFile.writeAt}.
   *
   * @param source Where the bytes are.
   * @param sourceOffset Where they start in the source.
   * @param offset Where they go in the output.
   * @param length How many.
   * @returns Whether all of them were copied.
   *
   * @example Copy the middle of a file
   * ```ts
   * import assert from "node:assert";
   * import { FileSource } from "./file_source.ts";
   * import { OutputFile } from "./output_file.ts";
   * const dir = await Deno.makeTempDir();
   * await Deno.writeFile(`${dir}/in`, new Uint8Array([1, 2, 3, 4]));
   * await using source = await FileSource.open(`${dir}/in`);
   * const out = await OutputFile.create(`${dir}/out`);
   * if (!await out.copyFrom(source, 1, 0, 2)) { // without FFI: written
   *   await out.writeAt(0, await source.read(1, 2));
   * }
   * await out.commit();
   * assert.deepStrictEqual(await Deno.readFile(`${dir}/out`), new Uint8Array([2, 3]));
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  async copyFrom(
    source: RandomAccessSource,
    sourceOffset: number,
    offset: number,
    length: number,
  ): Promise<boolean> {
    if (this.isDevice || this.#done) return false;
    let copier = this.#copiers.get(source);
    if (copier === undefined) {
      copier = this.#openCopier(source) ?? null;
      this.#copiers.set(source, copier);
      if (copier) this.#opened.push(copier);
    }
    if (!copier) return false;
    const copied = await copier.copy(sourceOffset, offset, length);
    if (!copied) this.#copiers.set(source, null);
    return copied;
  }

  #openCopier(source: RandomAccessSource): RangeCopier | undefined {
    const files = hostFiles();
    const path = files?.pathOf(source);
    const identity = files?.identity(source);
    if (path === undefined || identity === undefined) return undefined;
    let info: Deno.FileInfo;
    try {
      info = this.#file.statSync();
    } catch {
      return undefined;
    }
    if (info.ino === null) return undefined;
    return openRangeCopier(
      { path, identity, holes: files!.holeProbe(source) },
      { path: this.writingPath, identity: { dev: info.dev, ino: info.ino } },
    );
  }

  /** Waits for the copies in flight and closes their descriptors. */
  async #closeCopiers(): Promise<void> {
    const opened = this.#opened;
    this.#opened = [];
    this.#copiers.clear();
    await Promise.all(opened.map((c) => c.close()));
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
      throw new IoError(
        ioCode(err),
        `Cannot write ${this.path} at offset ${offset + done}: ${
          ioReason(err)
        }`,
        { cause: err },
      );
    }
    this.#pos = offset + data.length;
  }

  /**
   * Flushes, sets the final size (holes at the end stay holes), and puts
   * the temporary file in place: renamed over the destination, or with
   * `noClobber` linked to its name (which fails if a file appeared there)
   * and then unlinked. On failure the temporary file is removed.
   *
   * @param size Final file size in bytes; omit to keep what was written.
   * @throws {IoError} `EXISTS` with `noClobber`, when a file appeared at
   * the destination meanwhile (it is kept); with the OS's code when the
   * file cannot be flushed, truncated or renamed.
   */
  async commit(size?: number): Promise<void> {
    await this.#closeCopiers();
    this.#flush();
    try {
      if (size !== undefined && !this.inPlace) {
        await this.#file.truncate(size);
      }
      if (this.#sync) await this.#file.syncData();
    } catch (err) {
      throw new IoError(
        ioCode(err),
        `Cannot finish ${this.path}: ${ioReason(err)}`,
        { cause: err },
      );
    }
    this.#file.close();
    this.#done = true;
    if (this.inPlace) return;
    try {
      if (this.#noClobber) await this.#linkIntoPlace();
      else await this.#renameIntoPlace();
    } finally {
      untrackTemporary(this.writingPath);
    }
  }

  async #renameIntoPlace(): Promise<void> {
    try {
      await Deno.rename(this.writingPath, this.#target);
    } catch (err) {
      await Deno.remove(this.writingPath).catch(() => {});
      throw fileError(`rename ${this.writingPath} to ${this.path}`, err);
    }
  }

  // link(2) never replaces: the name is taken only if nothing holds it.
  async #linkIntoPlace(): Promise<void> {
    try {
      await Deno.link(this.writingPath, this.#target);
    } catch (err) {
      await Deno.remove(this.writingPath).catch(() => {});
      if (err instanceof Deno.errors.AlreadyExists) {
        throw outputExists(this.path, true);
      }
      throw fileError(`link ${this.writingPath} to ${this.path}`, err);
    }
    // The output is in place; a temporary name left behind would be only
    // a second name for it.
    await Deno.remove(this.writingPath).catch(() => {});
  }

  /** Closes and removes the temporary file. Safe to call more than once. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.#closeCopiers();
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

/**
 * Whether Deno allows writing `path` itself (`--allow-write=path`): then a
 * refusal of its temporary name is the directory's, and said so.
 */
function writableByName(path: string): boolean {
  return Deno.permissions.querySync({ name: "write", path }).state ===
    "granted";
}

/**
 * Creates the temporary file beside `target` (named after it), registered
 * for removal on a signal.
 */
function createTemporary(
  path: string,
  target: string,
): { temp: string; file: Deno.FsFile } {
  const dir = dirname(target);
  for (let attempt = 1;; attempt++) {
    const random = crypto.randomUUID().slice(0, 8);
    const temp = join(dir, temporaryName(basename(target), random));
    // Listed before it exists: a signal that arrives while the file is
    // being created still finds it (removing a missing file is harmless).
    trackTemporary(temp);
    try {
      // Created and registered in one turn of the event loop: a signal
      // handler cannot run between the two and miss the file.
      const file = Deno.openSync(temp, {
        write: true,
        createNew: true,
        mode: 0o644,
      });
      return { temp, file };
    } catch (err) {
      untrackTemporary(temp);
      if (
        err instanceof Deno.errors.AlreadyExists && attempt < TEMP_ATTEMPTS
      ) continue;
      const reason = err instanceof Deno.errors.NotFound
        ? `directory ${dir} does not exist`
        : err instanceof Deno.errors.PermissionDenied
        ? `no permission to create files in ${dir}`
        : err instanceof Deno.errors.NotCapable && writableByName(target)
        ? `it is written under a temporary name in ${dir} and then renamed, so Deno must allow writing in the directory (--allow-write=${dir}), not only to the file`
        : fileReason(err);
      throw new IoError(ioCode(err), `Cannot write ${path}: ${reason}`, {
        cause: err,
      });
    }
  }
}
