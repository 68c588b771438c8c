// Where a local file has data and where it has holes, through lseek(2)
// SEEK_DATA / SEEK_HOLE (Deno has no such seek mode, so libc is called
// through FFI). QEMU's file driver answers block status queries this way,
// which decides what `qemu-img map` and `qemu-img compare` report for raw
// files and for preallocated qcow2 images. Without FFI (no permission, no
// libc) there is no information, and QEMU's answer for that case applies:
// everything is data.

import type { HoleProbe } from "../io/host_files.ts";

/** Opens hole probes for local files; dispose to release libc. */
export interface HoleProber extends Disposable {
  /** A probe for the file at `path`, or undefined when it cannot be probed. */
  open(path: string): HoleProbe | undefined;
}

const ENXIO = 6;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

/**
 * A prober backed by libc, or one that knows nothing when FFI is not
 * available (other systems, no `--allow-ffi`).
 */
export function openHoleProber(): HoleProber {
  const os = Deno.build.os;
  const lib = os === "linux"
    ? "libc.so.6"
    : os === "darwin"
    ? "libSystem.dylib"
    : undefined;
  const seekData = os === "darwin" ? 4 : 3;
  const seekHole = os === "darwin" ? 3 : 4;
  let dl:
    | Deno.DynamicLibrary<
      typeof SYMBOLS & {
        errno: { parameters: []; result: "pointer" };
      }
    >
    | undefined;
  // Asked first, so that running without --allow-ffi neither prompts nor
  // throws: holes are an optimization.
  const allowed = Deno.permissions.querySync({ name: "ffi" }).state ===
    "granted";
  if (lib !== undefined && allowed) {
    try {
      dl = Deno.dlopen(lib, {
        ...SYMBOLS,
        errno: {
          name: os === "darwin" ? "__error" : "__errno_location",
          parameters: [],
          result: "pointer",
        },
      });
    } catch {
      dl = undefined;
    }
  }
  const errno = () => {
    const p = dl!.symbols.errno();
    return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  };
  return {
    open(path: string): HoleProbe | undefined {
      if (!dl || path.includes("\0") || /^[a-z][a-z0-9+.-]*:\/\//i.test(path)) {
        return undefined;
      }
      const fd = dl.symbols.open(new TextEncoder().encode(path + "\0"), 0);
      if (fd < 0) return undefined;
      const seek = (
        offset: number,
        whence: number,
      ): number | "enxio" | undefined => {
        const r = Number(dl!.symbols.lseek(fd, BigInt(offset), whence));
        if (r >= 0) return r;
        return errno() === ENXIO ? "enxio" : undefined;
      };
      return {
        find(offset) {
          const data = seek(offset, seekData);
          if (typeof data !== "number") return data;
          if (data < offset) return undefined;
          if (data > offset) return { data, hole: offset };
          const hole = seek(offset, seekHole);
          if (typeof hole !== "number") return hole;
          if (hole <= offset) return undefined;
          return { data: offset, hole };
        },
        close() {
          dl!.symbols.close(fd);
        },
      };
    },
    [Symbol.dispose]() {
      dl?.close();
      dl = undefined;
    },
  };
}
