// libc through FFI for the calls Deno does not have: lseek(2) SEEK_DATA /
// SEEK_HOLE (lib/host/_holes.ts), copy_file_range(2)
// (lib/host/_copy_range.ts) and pread(2) (several reads of a raw source in
// flight, lib/host/file_stream.ts); the last two `nonblocking`, so that
// each runs on a thread of Deno's blocking pool, beside the main thread.
// The one place libc is loaded, once for the process.
//
// Deno's files expose no descriptor, so a file is opened a second time by
// path, and the descriptor used only when it is the very file Deno opened:
// its device and inode are read from the descriptor itself (statx on
// Linux, fstat on macOS), never through /proc/self/fd, which Deno lets a
// program stat only with every permission. Linux and macOS only, and only
// with FFI granted: elsewhere the callers use Deno's own reads and writes,
// and know no holes.

import type { FileIdentity } from "../io/source.ts";

/** What a file opened twice must be: device and inode, as Deno gives them. */
export type WantedFile = Pick<FileIdentity, "dev" | "ino">;

/** open(2) flags: read only. */
export const O_RDONLY = 0;
/** open(2) flags: write only. */
export const O_WRONLY = 1;

/** The system's numbers for the calls' arguments. */
interface Numbers {
  /** The library to load. */
  readonly path: string;
  /** open(2): close the descriptor in a child process. */
  readonly cloexec: number;
  /** lseek(2) whence: the next data at or after the offset. */
  readonly seekData: number;
  /** lseek(2) whence: the next hole at or after the offset. */
  readonly seekHole: number;
  /** The thread's errno, by the name libc exports its address. */
  readonly errnoLocation: string;
}

const LINUX: Numbers = {
  path: "libc.so.6",
  cloexec: 0o2000000,
  seekData: 3,
  seekHole: 4,
  errnoLocation: "__errno_location",
};

const DARWIN: Numbers = {
  path: "libSystem.dylib",
  cloexec: 0x1000000,
  seekData: 4,
  seekHole: 3,
  errnoLocation: "__error",
};

/** errno: no data at or after the offset (lseek SEEK_DATA past the last). */
const ENXIO = 6;

// statx(2) on Linux (glibc 2.28 and later): one struct layout on every
// architecture, unlike struct stat. The descriptor itself is asked: an
// empty path with AT_EMPTY_PATH.
const AT_EMPTY_PATH = 0x1000;
/** Fields asked: the file type (STATX_TYPE) and the inode (STATX_INO). */
const STATX_TYPE_INO = 0x0001 | 0x0100;
/** struct statx is 256 bytes; the offsets of the fields read. */
const STATX_SIZE = 256;
const STATX_MASK = 0; // u32: which fields the kernel filled
const STATX_MODE = 28; // u16: type and permissions
const STATX_INO = 32; // u64
const STATX_DEV_MAJOR = 136; // u32
const STATX_DEV_MINOR = 140; // u32

// fstat(2) on macOS, the 64-bit-inode struct stat (`fstat$INODE64` on
// x86_64, plain `fstat` on arm64): dev_t (i32) at 0, mode_t (u16) at 4,
// ino_t (u64) at 8; 144 bytes in all.
const DARWIN_STAT_SIZE = 144;
const DARWIN_STAT_DEV = 0;
const DARWIN_STAT_MODE = 4;
const DARWIN_STAT_INO = 8;

/** st_mode: the type bits, and the type of a regular file. */
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

function symbolsFor(os: "linux" | "darwin", numbers: Numbers) {
  return {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
    errno: {
      name: numbers.errnoLocation,
      parameters: [],
      result: "pointer",
    },
    pread: {
      parameters: ["i32", "buffer", "usize", "i64"],
      result: "isize",
      nonblocking: true,
    },
    // Optional: copy_file_range and statx are Linux's (absent from macOS's
    // libSystem), fstat is read on macOS only.
    copy_file_range: {
      parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
      result: "isize",
      nonblocking: true,
      optional: true,
    },
    statx: {
      parameters: ["i32", "buffer", "i32", "u32", "buffer"],
      result: "i32",
      optional: true,
    },
    fstat: {
      name: os === "darwin" && Deno.build.arch === "x86_64"
        ? "fstat$INODE64"
        : "fstat",
      parameters: ["i32", "buffer"],
      result: "i32",
      optional: true,
    },
  } as const;
}

type Symbols = Deno.DynamicLibrary<
  ReturnType<typeof symbolsFor>
>["symbols"];

/** libc's calls, with the system's numbers filled in. */
export interface Libc {
  /**
   * Opens `path` (close-on-exec) when it is the file `want`, a regular
   * file: the descriptor, or undefined when it could not be opened or is
   * another file (the name was replaced after Deno opened it).
   */
  openChecked(
    path: string,
    flags: number,
    want: WantedFile,
  ): number | undefined;
  /** Closes a descriptor. */
  close(fd: number): void;
  /**
   * lseek(2) to the next data (`"data"`) or hole (`"hole"`) at or after
   * `offset`: where it is, `"enxio"` when there is no more data, or
   * undefined when the call failed otherwise. Called on this thread, so
   * that errno is this thread's.
   */
  seek(
    fd: number,
    offset: number,
    to: "data" | "hole",
  ): number | "enxio" | undefined;
  /**
   * pread(2) on a thread of Deno's blocking pool: bytes read (0 at the
   * end of the file), or -1 (errno is that thread's, not read).
   */
  pread(fd: number, into: Uint8Array, at: number): Promise<number>;
  /**
   * copy_file_range(2) on a thread of Deno's blocking pool, offsets passed
   * by pointer and advanced by the kernel: bytes copied (0 at the end of
   * the source), or -1. Absent where libc has no such call (macOS).
   */
  copyFileRange?(
    fdIn: number,
    offIn: BigInt64Array,
    fdOut: number,
    offOut: BigInt64Array,
    length: number,
  ): Promise<number>;
}

let loaded: Libc | null | undefined;

/**
 * libc, loaded once for the process (it stays loaded anyway), or null
 * where there is none to call: another system than Linux or macOS, or FFI
 * not granted. Asked first, so that running without --allow-ffi neither
 * prompts nor throws: what it serves is an optimization.
 */
export function loadLibc(): Libc | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  const os = Deno.build.os;
  if (os !== "linux" && os !== "darwin") return loaded;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return loaded;
  }
  const numbers = os === "linux" ? LINUX : DARWIN;
  try {
    const symbols = Deno.dlopen(numbers.path, symbolsFor(os, numbers)).symbols;
    const identify = os === "linux"
      ? statxIdentity(symbols)
      : darwinIdentity(symbols);
    if (identify) loaded = bind(symbols, numbers, identify);
  } catch {
    loaded = null;
  }
  return loaded;
}

/** A descriptor's device and inode as Deno gives them, and whether it is a regular file. */
type Identify = (
  fd: number,
) => { dev: number; ino: number; regular: boolean } | undefined;

/**
 * Device numbers as the C library composes them from major and minor
 * (glibc's makedev, which Deno's `dev` is: 254:0 is 65024).
 */
function makedev(major: number, minor: number): number {
  const ma = BigInt(major), mi = BigInt(minor);
  return Number(
    ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) |
      ((mi & 0xffffff00n) << 12n) | (mi & 0xffn),
  );
}

function statxIdentity(symbols: Symbols): Identify | undefined {
  const statx = symbols.statx;
  if (!statx) return undefined;
  const empty = new Uint8Array(1); // "" as a C string
  return (fd) => {
    const buf = new Uint8Array(STATX_SIZE);
    if (statx(fd, empty, AT_EMPTY_PATH, STATX_TYPE_INO, buf) !== 0) {
      return undefined;
    }
    const view = new DataView(buf.buffer);
    const mask = view.getUint32(STATX_MASK, true);
    if ((mask & STATX_TYPE_INO) !== STATX_TYPE_INO) return undefined;
    return {
      dev: makedev(
        view.getUint32(STATX_DEV_MAJOR, true),
        view.getUint32(STATX_DEV_MINOR, true),
      ),
      ino: Number(view.getBigUint64(STATX_INO, true)),
      regular: (view.getUint16(STATX_MODE, true) & S_IFMT) === S_IFREG,
    };
  };
}

function darwinIdentity(symbols: Symbols): Identify | undefined {
  const fstat = symbols.fstat;
  if (!fstat) return undefined;
  return (fd) => {
    const buf = new Uint8Array(DARWIN_STAT_SIZE);
    if (fstat(fd, buf) !== 0) return undefined;
    const view = new DataView(buf.buffer);
    return {
      dev: view.getUint32(DARWIN_STAT_DEV, true),
      ino: Number(view.getBigUint64(DARWIN_STAT_INO, true)),
      regular: (view.getUint16(DARWIN_STAT_MODE, true) & S_IFMT) === S_IFREG,
    };
  };
}

function bind(symbols: Symbols, numbers: Numbers, identify: Identify): Libc {
  const errno = () => {
    const p = symbols.errno();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  };
  const copy = symbols.copy_file_range;
  return {
    openChecked(path, flags, want) {
      if (path.includes("\0")) return undefined;
      const fd = symbols.open(
        new TextEncoder().encode(path + "\0"),
        flags | numbers.cloexec,
      );
      if (fd < 0) return undefined;
      const found = identify(fd);
      if (
        found?.regular && found.dev === want.dev && found.ino === want.ino
      ) {
        return fd;
      }
      symbols.close(fd);
      return undefined;
    },
    close(fd) {
      symbols.close(fd);
    },
    seek(fd, offset, to) {
      const whence = to === "data" ? numbers.seekData : numbers.seekHole;
      const r = Number(symbols.lseek(fd, BigInt(offset), whence));
      if (r >= 0) return r;
      return errno() === ENXIO ? "enxio" : undefined;
    },
    async pread(fd, into, at) {
      return Number(
        await symbols.pread(fd, into, BigInt(into.length), BigInt(at)),
      );
    },
    copyFileRange: copy
      ? async (fdIn, offIn, fdOut, offOut, length) =>
        Number(await copy(fdIn, offIn, fdOut, offOut, BigInt(length), 0))
      : undefined,
  };
}
