// Sameness of files, decided by device and inode (and, for block devices,
// the device itself), never by a name: hard links, symbolic links,
// /proc/self/fd/N and bind mounts all lead to one identity. Runtime-neutral:
// which file a source reads is asked of the runtime's file module.

import { IoError } from "../format/errors.ts";
import { hostFiles } from "./host_files.ts";
import type { FileIdentity, RandomAccessSource } from "./source.ts";

/**
 * Which local file a source reads (device and inode of its open
 * descriptor), when the runtime's file module opened it; undefined for
 * any other source (bytes, HTTP) or where there are no inode numbers.
 */
export function sourceIdentity(
  source: RandomAccessSource,
): FileIdentity | undefined {
  return hostFiles()?.identity(source);
}

/** The identities of the local files among `sources`. */
export function fileIdentities(
  sources: Iterable<RandomAccessSource>,
): FileIdentity[] {
  const out: FileIdentity[] = [];
  for (const source of sources) {
    const identity = sourceIdentity(source);
    if (identity) out.push(identity);
  }
  return out;
}

/** The fields of a stat(2) result that identify a file (Deno.FileInfo). */
export interface StatIdentity {
  dev: number;
  ino: number | null;
  rdev: number | null;
  isBlockDevice: boolean | null;
  isSocket: boolean | null;
}

/**
 * The identity in a stat result, or undefined where the system gives no
 * inode numbers (Windows), and for a socket: it holds no bytes to
 * overwrite, and one socket as both standard input and output (inetd) is
 * how it is used.
 */
export function identityOf(
  info: StatIdentity,
  name: string,
): FileIdentity | undefined {
  if (info.ino === null || info.isSocket) return undefined;
  return info.isBlockDevice && info.rdev !== null
    ? { dev: info.dev, ino: info.ino, rdev: info.rdev, name }
    : { dev: info.dev, ino: info.ino, name };
}

/** Whether two identities are one file (or two nodes of one block device). */
export function sameFile(a: FileIdentity, b: FileIdentity): boolean {
  if (a.dev === b.dev && a.ino === b.ino) return true;
  return a.rdev !== undefined && a.rdev === b.rdev;
}

/**
 * Refuses to write the file `info` describes (reached as `path`) when it
 * is one of `inputs`.
 *
 * @throws {IoError} `OTHER`, naming both, when it is.
 */
export function assertNotInput(
  info: StatIdentity,
  path: string,
  inputs: Iterable<FileIdentity>,
): void {
  const target = identityOf(info, path);
  if (!target) return;
  for (const input of inputs) {
    if (!sameFile(target, input)) continue;
    const same = input.name === path ? "" : ` ${input.name}`;
    throw new IoError(
      "OTHER",
      `Cannot write ${path}: it is the input${same} (device ${target.dev}, inode ${target.ino}); an input is never overwritten`,
    );
  }
}
