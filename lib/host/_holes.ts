// Where a local file has data and where it has holes, through lseek(2)
// SEEK_DATA / SEEK_HOLE (Deno has no such seek mode, so libc is called
// through FFI, lib/host/_libc.ts). QEMU's file driver answers block status
// queries this way, which decides what `qemu-img map` and `qemu-img
// compare` report for raw files and for preallocated qcow2 images. Without
// FFI (no permission, no libc) there is no information, and QEMU's answer
// for that case applies: everything is data. The probe reads the holes of
// the file it is given by identity, never of whatever the name leads to
// now: were the name replaced after the file was opened, another file's
// holes would be mapped and the data there read as zeros.

import type { HoleProbe } from "../io/host_files.ts";
import { loadLibc, O_RDONLY, type WantedFile } from "./_libc.ts";

/**
 * A probe of the holes of the file at `path`, or undefined when it cannot
 * be probed: no FFI, a URL, not a regular file, or `path` is no longer the
 * file `want` (device and inode of the descriptor the caller opened).
 */
export function openHoleProbe(
  path: string,
  want: WantedFile,
): HoleProbe | undefined {
  const libc = loadLibc();
  if (!libc || /^[a-z][a-z0-9+.-]*:\/\//i.test(path)) return undefined;
  const fd = libc.openChecked(path, O_RDONLY, want);
  if (fd === undefined) return undefined;
  let open = true;
  return {
    find(offset) {
      if (!open) return undefined; // the number may be another file's now
      const data = libc.seek(fd, offset, "data");
      if (typeof data !== "number") return data;
      if (data < offset) return undefined;
      if (data > offset) return { data, hole: offset };
      const hole = libc.seek(fd, offset, "hole");
      if (typeof hole !== "number") return hole;
      if (hole <= offset) return undefined;
      return { data: offset, hole };
    },
    close() {
      if (!open) return;
      open = false;
      libc.close(fd);
    },
  };
}
