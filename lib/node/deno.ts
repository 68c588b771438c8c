/**
 * The part of the `Deno` namespace that lib/host and lib/cli use, on Node's
 * APIs (`node:fs`, `node:process`, `node:tty`, `node:child_process`), so
 * that the npm package runs the same host and CLI code as Deno does.
 *
 * The npm build (npm/build.ts) binds every free `Deno` of the bundle to
 * `denoOnNode` (esbuild's `inject`, through inject.ts): nothing is put on
 * `globalThis`, so a program that imports the package keeps its own
 * globals. What Node lacks is refused the way Deno refuses it without a
 * permission: FFI is "denied" (no `lseek(SEEK_DATA)` for holes in the
 * input, no `copy_file_range`), and holes in an output come from writing
 * nothing there, as under Deno.
 *
 * @module
 */

import * as fs from "node:fs";
import { execFile } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { Readable } from "node:stream";
import { isatty } from "node:tty";
import { getSystemErrorMap } from "node:util";

/** Deno's error classes for the OS errors that lib/ tells apart. */
const CLASSES = {
  NotFound: ["ENOENT"],
  PermissionDenied: ["EACCES", "EPERM"],
  AlreadyExists: ["EEXIST"],
  IsADirectory: ["EISDIR"],
  NotADirectory: ["ENOTDIR"],
  FilesystemLoop: ["ELOOP"],
  BrokenPipe: ["EPIPE"],
  Busy: ["EBUSY"],
  NotSupported: ["ENOTSUP", "EOPNOTSUPP"],
  Interrupted: ["EINTR"],
  WouldBlock: ["EAGAIN"],
  TimedOut: ["ETIMEDOUT"],
} as const;

type ErrorName = keyof typeof CLASSES;

/** An Error class, as Deno.errors holds them. */
type ErrorClass = new (message?: string, options?: ErrorOptions) => Error;

/** A class named like Deno's (os_errors.ts checks `constructor.name`). */
function errorClass(name: ErrorName): ErrorClass {
  const made = {
    [name]: class extends Error {
      override name = name;
    },
  }[name];
  Object.defineProperty(made, "name", { value: name });
  return made;
}

const errors = Object.fromEntries(
  Object.keys(CLASSES).map((name) => [name, errorClass(name as ErrorName)]),
) as Record<ErrorName, ErrorClass>;

const BY_CODE = new Map<string, ErrorClass>(
  Object.entries(CLASSES).flatMap(([name, codes]) =>
    codes.map((code) => [code, errors[name as ErrorName]] as const)
  ),
);

const SYSTEM_ERRORS = getSystemErrorMap();

/**
 * The C library's words (`strerror`, which Deno's messages quote) where
 * libuv's, which Node's map holds, are others.
 */
const STRERROR: Record<string, string> = {
  EEXIST: "File exists",
  EISDIR: "Is a directory",
  EXDEV: "Invalid cross-device link",
  EBUSY: "Device or resource busy",
  ELOOP: "Too many levels of symbolic links",
  ENAMETOOLONG: "File name too long",
  EIO: "Input/output error",
  ETXTBSY: "Text file busy",
};

/**
 * A Node system error as Deno words and classes it: `No such file or
 * directory (os error 2): open '/x'`.
 */
function denoError(err: unknown): unknown {
  const e = err as NodeJS.ErrnoException;
  if (!(err instanceof Error) || typeof e.code !== "string") return err;
  const Class = BY_CODE.get(e.code) ?? Error;
  const text = STRERROR[e.code] ??
    (e.errno !== undefined
      ? SYSTEM_ERRORS.get(e.errno)?.[1] ?? e.code
      : e.message);
  const what = e.syscall && e.path ? `: ${e.syscall} '${e.path}'` : "";
  const os = e.errno !== undefined ? ` (os error ${-e.errno})` : "";
  const made = new Class(
    `${text.charAt(0).toUpperCase()}${text.slice(1)}${os}${what}`,
    { cause: err },
  );
  return Object.assign(made, { code: e.code });
}

/** Runs `fn`, rethrowing a system error as Deno's. */
function sys<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw denoError(err);
  }
}

/** Awaits `promise`, rethrowing a system error as Deno's. */
async function sysAsync<T>(promise: Promise<T>): Promise<T> {
  try {
    return await promise;
  } catch (err) {
    throw denoError(err);
  }
}

/** Deno.FileInfo from a Node stat. */
function fileInfo(st: fs.Stats): Deno.FileInfo {
  return {
    isFile: st.isFile(),
    isDirectory: st.isDirectory(),
    isSymlink: st.isSymbolicLink(),
    size: st.size,
    mtime: st.mtime,
    atime: st.atime,
    birthtime: st.birthtime,
    ctime: st.ctime,
    dev: st.dev,
    ino: st.ino,
    mode: st.mode,
    nlink: st.nlink,
    uid: st.uid,
    gid: st.gid,
    rdev: st.rdev,
    blksize: st.blksize,
    blocks: st.blocks,
    isBlockDevice: st.isBlockDevice(),
    isCharDevice: st.isCharacterDevice(),
    isFifo: st.isFIFO(),
    isSocket: st.isSocket(),
  };
}

const SeekMode = { Start: 0, Current: 1, End: 2 } as const;

/**
 * A block device's size: stat says 0 and Node cannot seek to the end, so
 * Linux's sysfs is asked (512-byte sectors).
 */
function blockDeviceSize(st: fs.Stats): number {
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const text = sys(() =>
    fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, "utf8")
  );
  return Number(text.trim()) * 512;
}

/**
 * Deno.FsFile on a Node descriptor. Node has no `lseek`: the position is
 * kept here, and reads and writes of files and block devices are
 * positional (`pread`, `pwrite`); streams use the descriptor's own.
 */
class FsFile {
  #fd: number;
  #pos = 0;
  #positional: boolean;

  constructor(fd: number) {
    this.#fd = fd;
    const st = sys(() => fs.fstatSync(fd));
    this.#positional = st.isFile() || st.isBlockDevice();
  }

  #at(): number | null {
    return this.#positional ? this.#pos : null;
  }

  readSync(p: Uint8Array): number | null {
    if (p.length === 0) return 0;
    const n = sys(() => fs.readSync(this.#fd, p, 0, p.length, this.#at()));
    this.#pos += n;
    return n === 0 ? null : n;
  }

  read(p: Uint8Array): Promise<number | null> {
    if (p.length === 0) return Promise.resolve(0);
    return new Promise((resolve, reject) => {
      fs.read(this.#fd, p, 0, p.length, this.#at(), (err, n) => {
        if (err) return reject(denoError(err));
        this.#pos += n;
        resolve(n === 0 ? null : n);
      });
    });
  }

  writeSync(p: Uint8Array): number {
    const n = sys(() => fs.writeSync(this.#fd, p, 0, p.length, this.#at()));
    this.#pos += n;
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    return new Promise((resolve, reject) => {
      fs.write(this.#fd, p, 0, p.length, this.#at(), (err, n) => {
        if (err) return reject(denoError(err));
        this.#pos += n;
        resolve(n);
      });
    });
  }

  seekSync(offset: number | bigint, whence: Deno.SeekMode): number {
    const by = Number(offset);
    if (whence === SeekMode.Start) this.#pos = by;
    else if (whence === SeekMode.Current) this.#pos += by;
    else {
      const st = sys(() => fs.fstatSync(this.#fd));
      this.#pos = (st.isBlockDevice() ? blockDeviceSize(st) : st.size) + by;
    }
    return this.#pos;
  }

  seek(offset: number | bigint, whence: Deno.SeekMode): Promise<number> {
    try {
      return Promise.resolve(this.seekSync(offset, whence));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  statSync(): Deno.FileInfo {
    return fileInfo(sys(() => fs.fstatSync(this.#fd)));
  }

  async stat(): Promise<Deno.FileInfo> {
    const st = await sysAsync(
      new Promise<fs.Stats>((resolve, reject) =>
        fs.fstat(this.#fd, (err, s) => err ? reject(err) : resolve(s))
      ),
    );
    return fileInfo(st);
  }

  truncate(len = 0): Promise<void> {
    return sysAsync(
      new Promise<void>((resolve, reject) =>
        fs.ftruncate(this.#fd, len, (err) => err ? reject(err) : resolve())
      ),
    );
  }

  syncData(): Promise<void> {
    return sysAsync(
      new Promise<void>((resolve, reject) =>
        fs.fdatasync(this.#fd, (err) => err ? reject(err) : resolve())
      ),
    );
  }

  close(): void {
    if (this.#fd < 0) throw new Error("Bad resource ID");
    const fd = this.#fd;
    this.#fd = -1;
    sys(() => fs.closeSync(fd));
  }

  [Symbol.dispose](): void {
    if (this.#fd >= 0) this.close();
  }
}

/** Node's open(2) flags for Deno's open options. */
function openFlags(options: Deno.OpenOptions = { read: true }): number {
  const c = fs.constants;
  const write = options.write || options.append || options.create ||
    options.createNew || options.truncate;
  let flags = write ? (options.read ? c.O_RDWR : c.O_WRONLY) : c.O_RDONLY;
  if (options.append) flags |= c.O_APPEND;
  if (options.truncate) flags |= c.O_TRUNC;
  if (options.createNew) flags |= c.O_CREAT | c.O_EXCL;
  else if (options.create) flags |= c.O_CREAT;
  return flags;
}

function openSync(path: string | URL, options?: Deno.OpenOptions): FsFile {
  return new FsFile(
    sys(() => fs.openSync(path, openFlags(options), options?.mode ?? 0o666)),
  );
}

function open(
  path: string | URL,
  options?: Deno.OpenOptions,
): Promise<FsFile> {
  // The callback API gives the bare descriptor (a FileHandle would close
  // it when collected).
  return new Promise((resolve, reject) =>
    fs.open(path, openFlags(options), options?.mode ?? 0o666, (err, fd) => {
      if (err) return reject(denoError(err));
      try {
        resolve(new FsFile(fd));
      } catch (e) {
        fs.close(fd, () => {});
        reject(e);
      }
    })
  );
}

async function remove(
  path: string | URL,
  options: Deno.RemoveOptions = {},
): Promise<void> {
  if (options.recursive) {
    await sysAsync(fs.promises.rm(path, { recursive: true }));
    return;
  }
  const st = await sysAsync(fs.promises.lstat(path));
  await sysAsync(
    st.isDirectory() ? fs.promises.rmdir(path) : fs.promises.unlink(path),
  );
}

function removeSync(path: string | URL, options: Deno.RemoveOptions = {}) {
  if (options.recursive) return sys(() => fs.rmSync(path, { recursive: true }));
  const st = sys(() => fs.lstatSync(path));
  sys(() => st.isDirectory() ? fs.rmdirSync(path) : fs.unlinkSync(path));
}

function tempPrefix(options: Deno.MakeTempOptions = {}): string {
  return join(options.dir ?? tmpdir(), options.prefix ?? "");
}

/** Deno's stdin, stdout and stderr: what lib/cli does with them. */
function stdio(fd: 0 | 1 | 2) {
  // Looked up on first use: Node opening its stream for a pipe may make
  // the descriptor non-blocking, which writeSync should not meet needlessly.
  const stream = () => fd === 1 ? process.stdout : process.stderr;
  let readable: ReadableStream<Uint8Array> | undefined;
  let heard = false;
  return {
    rid: fd,
    isTerminal: () => isatty(fd),
    get readable(): ReadableStream<Uint8Array> {
      // Opened on first use: an unused process.stdin would keep Node alive.
      readable ??= Readable.toWeb(process.stdin) as ReadableStream<Uint8Array>;
      return readable;
    },
    writeSync(p: Uint8Array): number {
      let done = 0;
      while (done < p.length) {
        done += sys(() => fs.writeSync(fd, p, done, p.length - done));
      }
      return done;
    },
    write(p: Uint8Array): Promise<number> {
      // A failed write (EPIPE when the reader went away) rejects below; the
      // stream's 'error' event, unheard, would end Node with a stack trace.
      if (!heard) stream().on("error", () => {});
      heard = true;
      // Resolved once the bytes are handed over, so the caller may reuse them.
      return new Promise((resolve, reject) =>
        stream().write(
          p,
          (err) => err ? reject(denoError(err)) : resolve(p.length),
        )
      );
    },
  };
}

type Output = {
  code: number;
  success: boolean;
  stdout: Uint8Array;
  stderr: Uint8Array;
};

/** Deno.Command's `output()` on `execFile` (the demo's qemu-img calls). */
class Command {
  #cmd: string;
  #args: string[];
  constructor(cmd: string | URL, options: Deno.CommandOptions = {}) {
    this.#cmd = String(cmd);
    this.#args = options.args?.map(String) ?? [];
  }
  output(): Promise<Output> {
    return new Promise((resolve, reject) => {
      execFile(
        this.#cmd,
        this.#args,
        { encoding: "buffer" },
        (err, out, errOut) => {
          const status = (err as { code?: unknown } | null)?.code;
          if (err && typeof status !== "number") return reject(denoError(err));
          const code = typeof status === "number" ? status : 0;
          resolve({ code, success: code === 0, stdout: out, stderr: errOut });
        },
      );
    });
  }
}

/**
 * The Deno namespace's members that lib/host and lib/cli call, on Node.
 * Typed as Deno's where the signature is the same; FsFile implements the
 * methods lib/ calls (read, write, seek, stat, truncate, syncData, close).
 *
 * @example Files through Node's API, answered as Deno answers
 * ```ts
 * import assert from "node:assert";
 * import { denoOnNode as OnNode } from "./deno.ts";
 * const dir = await OnNode.makeTempDir({ prefix: "example-" });
 * using file = await OnNode.open(`${dir}/x`, { write: true, createNew: true });
 * await file.seek(4096, OnNode.SeekMode.Start);
 * file.writeSync(new Uint8Array([1]));
 * assert.strictEqual((await file.stat()).size, 4097);
 * await assert.rejects(OnNode.open(`${dir}/missing`), OnNode.errors.NotFound);
 * await OnNode.remove(dir, { recursive: true });
 * ```
 */
export const denoOnNode = {
  build: {
    os: process.platform === "win32" ? "windows" : process.platform,
    arch: process.arch === "arm64" ? "aarch64" : "x86_64",
  },
  args: process.argv.slice(2),
  errors,
  SeekMode,
  FsFile,
  open,
  openSync,
  stat: async (path: string | URL) =>
    fileInfo(await sysAsync(fs.promises.stat(path))),
  statSync: (path: string | URL) => fileInfo(sys(() => fs.statSync(path))),
  lstat: async (path: string | URL) =>
    fileInfo(await sysAsync(fs.promises.lstat(path))),
  realPath: (path: string | URL) => sysAsync(fs.promises.realpath(path)),
  realPathSync: (path: string | URL) => sys(() => fs.realpathSync(path)),
  readLink: (path: string | URL) => sysAsync(fs.promises.readlink(path)),
  rename: (from: string | URL, to: string | URL) =>
    sysAsync(fs.promises.rename(from, to)),
  link: (from: string, to: string) => sysAsync(fs.promises.link(from, to)),
  remove,
  removeSync,
  makeTempDir: (options?: Deno.MakeTempOptions) =>
    sysAsync(fs.promises.mkdtemp(tempPrefix(options))),
  makeTempDirSync: (options?: Deno.MakeTempOptions) =>
    sys(() => fs.mkdtempSync(tempPrefix(options))),
  readFile: async (path: string | URL) =>
    new Uint8Array(await sysAsync(fs.promises.readFile(path))),
  writeFile: (path: string | URL, data: Uint8Array) =>
    sysAsync(fs.promises.writeFile(path, data)),
  cwd: () => process.cwd(),
  execPath: () => process.execPath,
  stdin: stdio(0),
  stdout: stdio(1),
  stderr: stdio(2),
  consoleSize: () => ({
    columns: process.stderr.columns ?? process.stdout.columns ?? 80,
    rows: process.stderr.rows ?? process.stdout.rows ?? 24,
  }),
  exit: (code?: number): never => process.exit(code),
  env: {
    get: (key: string): string | undefined => process.env[key],
    has: (key: string): boolean => key in process.env,
  },
  permissions: {
    /** Everything a Node process may do is "granted"; FFI does not exist. */
    querySync: (desc: Deno.PermissionDescriptor) => ({
      state: desc.name === "ffi" ? "denied" : "granted",
    }),
  },
  addSignalListener: (signal: Deno.Signal, handler: () => void) => {
    process.on(signal, handler);
  },
  removeSignalListener: (signal: Deno.Signal, handler: () => void) => {
    process.off(signal, handler);
  },
  unrefTimer: (timer: unknown) => {
    (timer as { unref?: () => void } | undefined)?.unref?.();
  },
  Command,
};
