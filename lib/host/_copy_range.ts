// Copying file ranges in the kernel, through Linux's copy_file_range(2):
// the bytes go from one file to the other without being read into this
// process (page cache to page cache on ext4; on XFS and btrfs the extents
// may even be shared). Called through FFI (lib/host/_libc.ts), each call
// on a thread of Deno's blocking pool, so several are in flight beside
// the main thread. Without FFI (no permission, not
// Linux, no libc), or when a call fails for any reason (EXDEV across file
// systems on older kernels, EINVAL for a device, ENOSYS), there is no
// copy and the caller reads and writes instead: errno is not read (it
// belongs to the pool's thread), and the read/write path reports a real
// failure with its own message. The output range is one that reads as
// zeros (a new file): the source's holes (lseek SEEK_DATA/SEEK_HOLE) are
// skipped, never copied as zeros, which would allocate them (a qcow2 image
// preallocated with metadata only is all holes).

import type { HoleProbe } from "../io/host_files.ts";
import { loadLibc, O_RDONLY, O_WRONLY, type WantedFile } from "./_libc.ts";

/** Most bytes asked of one call (Linux copies at most about 2 GiB a call). */
const MOST_PER_CALL = 1 << 30;

/** Two open files between which ranges are copied in the kernel. */
export interface RangeCopier {
  /**
   * Copies `length` bytes at `from` in the source to `to` in the output,
   * the source's holes left out (the output range reads as zeros). Resolves
   * false when they could not all be copied (the caller then writes the
   * range itself); never rejects.
   */
  copy(from: number, to: number, length: number): Promise<boolean>;
  /** Waits for the copies in flight, then closes both descriptors. */
  close(): Promise<void>;
}

/**
 * A copier from the local file at `source` to the one at `output`, or
 * undefined when there can be none (no FFI, not Linux, either path not
 * the file its identity names, or either not a regular file).
 *
 * @param source The source's path and identity (as its descriptor gave),
 * and where it has holes when that is known; the probe is closed with the
 * copier (or at once, when there is none).
 * @param output The output's path and identity (as its descriptor gave).
 */
export function openRangeCopier(
  source: {
    path: string;
    identity: WantedFile;
    holes?: HoleProbe;
  },
  output: { path: string; identity: WantedFile },
): RangeCopier | undefined {
  const copier = openCopier(source, output, source.holes);
  if (!copier) source.holes?.close();
  return copier;
}

function openCopier(
  source: { path: string; identity: WantedFile },
  output: { path: string; identity: WantedFile },
  holes: HoleProbe | undefined,
): RangeCopier | undefined {
  const lib = loadLibc();
  const copyFileRange = lib?.copyFileRange;
  if (!lib || !copyFileRange) return undefined;
  const fdIn = lib.openChecked(source.path, O_RDONLY, source.identity);
  if (fdIn === undefined) return undefined;
  const fdOut = lib.openChecked(output.path, O_WRONLY, output.identity);
  if (fdOut === undefined) {
    lib.close(fdIn);
    return undefined;
  }
  const inFlight = new Set<Promise<boolean>>();
  let closed = false;
  const copyData = async (
    from: number,
    to: number,
    length: number,
  ): Promise<boolean> => {
    // The offsets are passed by pointer and advanced by the kernel.
    const offIn = new BigInt64Array([BigInt(from)]);
    const offOut = new BigInt64Array([BigInt(to)]);
    let left = length;
    while (left > 0) {
      if (closed) return false;
      const n = await copyFileRange(
        fdIn,
        offIn,
        fdOut,
        offOut,
        Math.min(left, MOST_PER_CALL),
      );
      // -1: failed (errno is the pool thread's); 0: the source ended.
      if (n <= 0) return false;
      left -= n;
    }
    return true;
  };
  // Each run of data in the range is copied; holes are left. A probe that
  // cannot tell says nothing, and the rest is copied whole.
  const copyAll = async (
    from: number,
    to: number,
    length: number,
  ): Promise<boolean> => {
    const end = from + length;
    for (let at = from; at < end;) {
      const found = holes?.find(at);
      if (found === "enxio") return true; // a hole to the end of the file
      const data = found ? Math.min(found.data, end) : at;
      const hole = found ? Math.min(found.hole, end) : end;
      if (
        hole > data && !await copyData(data, to + (data - from), hole - data)
      ) {
        return false;
      }
      at = Math.max(hole, data);
    }
    return true;
  };
  return {
    copy(from, to, length) {
      if (closed) return Promise.resolve(false);
      const job = copyAll(from, to, length).catch(() => false);
      inFlight.add(job);
      job.finally(() => inFlight.delete(job));
      return job;
    },
    async close() {
      if (closed) return;
      closed = true;
      // A descriptor closed under a running call could be reused by the
      // next open, and the call would write into that file.
      await Promise.all(inFlight);
      holes?.close();
      lib.close(fdIn);
      lib.close(fdOut);
    },
  };
}
