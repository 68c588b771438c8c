// libc through FFI for the calls Deno does not have, each `nonblocking`
// where it moves bytes so that it runs on a thread of Deno's blocking pool,
// beside the main thread: copy_file_range(2) (lib/host/_copy_range.ts)
// and pread(2) (several reads of a raw source in flight,
// lib/host/file_stream.ts). Deno's files expose no descriptor, so a file
// is opened a second time by path, and the descriptor used only when it
// is the very file meant (device and inode read through /proc/self/fd).
// Linux only, and only with FFI granted: elsewhere the callers use Deno's
// own reads and writes.

import type { FileIdentity } from "../io/source.ts";

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  copy_file_range: {
    parameters: ["i32", "buffer", "i32", "buffer", "usize", "u32"],
    result: "isize",
    nonblocking: true,
  },
  pread: {
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
} as const;

/** open(2) flags: read only. */
export const O_RDONLY = 0;
/** open(2) flags: write only. */
export const O_WRONLY = 1;
const O_CLOEXEC = 0o2000000;

/** The calls bound. */
export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>;

let libc: Libc | null | undefined;

/**
 * libc, loaded once for the process (it stays loaded anyway), or null
 * where there is none to call: another system than Linux, or FFI not
 * granted. Asked first, so that running without --allow-ffi neither
 * prompts nor throws: what it serves is an optimization.
 */
export function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  libc = null;
  if (
    Deno.build.os === "linux" &&
    Deno.permissions.querySync({ name: "ffi" }).state === "granted"
  ) {
    try {
      libc = Deno.dlopen("libc.so.6", SYMBOLS);
    } catch {
      libc = null;
    }
  }
  return libc;
}

/** Opens `path` with libc; the descriptor, only if it is the file `want`. */
export function openChecked(
  lib: Libc,
  path: string,
  flags: number,
  want: Pick<FileIdentity, "dev" | "ino">,
): number | undefined {
  if (path.includes("\0")) return undefined;
  const fd = lib.symbols.open(
    new TextEncoder().encode(path + "\0"),
    flags | O_CLOEXEC,
  );
  if (fd < 0) return undefined;
  try {
    const info = Deno.statSync(`/proc/self/fd/${fd}`);
    if (info.dev === want.dev && info.ino === want.ino && info.isFile) {
      return fd;
    }
  } catch {
    // no /proc, or no permission to read it: the file cannot be checked
  }
  lib.symbols.close(fd);
  return undefined;
}
