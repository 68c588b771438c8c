// What a destination path is, decided on what it resolves to (stat follows
// symbolic links) rather than on its name, and the name of the temporary
// file written beside it.

import { dirname, isAbsolute, join } from "node:path";
import { IoError } from "../format/errors.ts";
import { fileError } from "../io/os_errors.ts";

/**
 * A destination, as found before writing:
 *
 * - `absent`: nothing there; a new file is created.
 * - `file`: an existing regular file; `target` is its real path (symbolic
 *   links followed), beside which the temporary file goes.
 * - `device`: a block device, written in place at offsets.
 * - `stream`: written in order, never at offsets and never replaced: a
 *   FIFO, a character device, a socket, or anything reached through the
 *   file systems of /dev or /proc (`/dev/stdout`, `/proc/self/fd/N`).
 */
export type Destination =
  | { kind: "absent" }
  | { kind: "file"; info: Deno.FileInfo; target: string }
  | { kind: "device"; info: Deno.FileInfo }
  | { kind: "stream"; info: Deno.FileInfo; what: string };

/** Whether Deno may read `path` (no prompt when it may not). */
function readable(path: string): boolean {
  return Deno.permissions.querySync({ name: "read", path }).state ===
    "granted";
}

/**
 * The devices of the file systems at /dev and /proc, each only when it is
 * a file system of its own (devtmpfs or a tmpfs, procfs), not the root's.
 */
async function specialDevices(): Promise<Set<number>> {
  const devices = new Set<number>();
  if (!readable("/")) return devices;
  let root: Deno.FileInfo;
  try {
    root = await Deno.stat("/");
  } catch {
    return devices;
  }
  for (const dir of ["/dev", "/proc"]) {
    if (!readable(dir)) continue;
    try {
      const info = await Deno.stat(dir);
      if (info.dev !== root.dev) devices.add(info.dev);
    } catch {
      // not there
    }
  }
  return devices;
}

/** Whether directory `dir` (links followed) is on one of `devices`. */
async function onDevices(dir: string, devices: Set<number>): Promise<boolean> {
  if (devices.size === 0 || !readable(dir)) return false;
  try {
    return devices.has((await Deno.stat(dir)).dev);
  } catch {
    return false;
  }
}

/** Most symbolic links followed from one name, as Linux's MAXSYMLINKS. */
const MAX_LINKS = 40;

/**
 * Whether `path`, or a symbolic link on the way from it to what it names,
 * lies in a directory on /dev's or /proc's file system: a link to
 * `/dev/stdout` or `/proc/self/fd/1` is the descriptor, whatever file that
 * is.
 */
async function reachesDevices(
  path: string,
  devices: Set<number>,
): Promise<boolean> {
  let at = path;
  for (let hops = 0; hops <= MAX_LINKS; hops++) {
    if (await onDevices(dirname(at), devices)) return true;
    let target: string;
    try {
      target = await Deno.readLink(at);
    } catch {
      return false; // not a link (or gone): `at` is what the path names
    }
    at = isAbsolute(target) ? target : join(dirname(at), target);
  }
  return false; // a loop: stat says so
}

/** What kind of stream a file is, for messages. */
function streamKind(info: Deno.FileInfo): string | undefined {
  if (info.isFifo) return "a FIFO";
  if (info.isCharDevice) return "a character device";
  if (info.isSocket) return "a socket";
  return undefined;
}

/**
 * Finds out what `path` is. Refuses a directory, a symbolic link to
 * nothing, and a missing name on /dev's or /proc's file system (a
 * mistyped device, not a file to create).
 *
 * @param path The destination.
 * @param action What is refused, for messages (`write disk.raw`).
 * @throws {IoError} For those, and when `path` cannot be looked at.
 */
export async function inspectDestination(
  path: string,
  action = `write ${path}`,
): Promise<Destination> {
  const devices = await specialDevices();
  const special = await reachesDevices(path, devices);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw fileError(action, err);
    }
    const link = await Deno.readLink(path).catch(() => undefined);
    if (link !== undefined) {
      throw new IoError(
        "NOT_FOUND",
        `Cannot ${action}: it is a symbolic link to ${link}, which does not exist`,
      );
    }
    if (special) {
      throw new IoError(
        "NOT_FOUND",
        `Cannot ${action}: no such device (regular files are not created in /dev)`,
      );
    }
    return { kind: "absent" };
  }
  if (info.isDirectory) {
    throw new IoError("NOT_A_FILE", `Cannot ${action}: it is a directory`);
  }
  if (info.isBlockDevice) return { kind: "device", info };
  const what = streamKind(info);
  if (what) return { kind: "stream", info, what };
  if (!info.isFile) {
    throw new IoError(
      "NOT_A_FILE",
      `Cannot ${action}: it is not a file or a device`,
    );
  }
  const target = await Deno.realPath(path).catch(() => undefined);
  if (special || !target || await onDevices(dirname(target), devices)) {
    return {
      kind: "stream",
      info,
      what: "a file reached through /dev or /proc",
    };
  }
  return { kind: "file", info, target };
}

/** The longest file name (one path component) in bytes, as on Linux. */
const NAME_MAX = 255;

/**
 * The temporary name for a file named `base`: `.BASE.RANDOM.partial`, with
 * BASE cut short (at a character boundary) when the whole would pass
 * {@linkcode NAME_MAX} bytes. The random part keeps it unique.
 */
export function temporaryName(base: string, random: string): string {
  const room = NAME_MAX - `..${random}.partial`.length;
  const bytes = new TextEncoder().encode(base);
  if (bytes.length <= room) return `.${base}.${random}.partial`;
  let cut = room;
  while (cut > 0 && (bytes[cut] & 0xc0) === 0x80) cut--; // continuation
  const short = new TextDecoder().decode(bytes.subarray(0, cut));
  return `.${short}.${random}.partial`;
}
