// File access by path, which only some runtimes have. The runtime-neutral
// code (reader, writer, tools over sources and bytes) never calls a
// runtime's file API: it asks here, and the runtime's file module
// (lib/host/file_source.ts, for Deno) installs itself when it is imported.
// mod.ts imports it; core.ts, the runtime-neutral entry, does not, so there
// a path is refused with one line instead of reaching for `Deno`.

import { IoError } from "../format/errors.ts";
import type { FileIdentity, RandomAccessSource } from "./source.ts";

/** Data/hole queries on one open file. */
export interface HoleProbe {
  /**
   * `lseek(fd, offset, SEEK_DATA)` then `SEEK_HOLE`, as QEMU's
   * find_allocation(): `{ data, hole }` with `data > offset` when `offset`
   * is in a hole, `"enxio"` for a trailing hole or past the end, or
   * `undefined` when nothing could be learned.
   */
  find(offset: number): { data: number; hole: number } | "enxio" | undefined;
  /** Releases the file. */
  close(): void;
}

/**
 * Where a local name leads, as the OS resolves it: the answer of
 * {@linkcode HostFiles.locate}.
 */
export interface Located {
  /**
   * The real path: every component resolved in order as the OS resolves
   * it, symbolic links included (`..` after a link goes to the parent of
   * the link's target), no link left in it. Undefined when the name does
   * not lead to an existing file.
   */
  path: string | undefined;
  /**
   * Whether `path` lies inside the real path of the directory. For a name
   * that leads nowhere: whether its deepest existing ancestor is that
   * directory or lies inside it (so a missing file outside is reported as
   * outside, never as missing).
   */
  inside: boolean;
  /** Why the name leads nowhere (the OS error), when `path` is undefined. */
  error?: unknown;
}

/** What a runtime's file module provides. */
export interface HostFiles {
  /**
   * Opens a file for reading: `path` is opened, `name` (default: `path`)
   * is what the source is called in messages and reports.
   */
  open(
    path: string,
    name?: string,
  ): Promise<RandomAccessSource & AsyncDisposable>;
  /** The canonical path (symlinks resolved), to recognise a file met twice. */
  realPath(path: string): Promise<string>;
  /**
   * Which file a source opened by {@linkcode HostFiles.open} reads (device
   * and inode of its open descriptor); undefined for any other source or
   * where the system has no inode numbers.
   */
  identity(source: RandomAccessSource): FileIdentity | undefined;
  /**
   * Which file a local name leads to now (device and inode, links
   * followed), without opening it; undefined when it leads nowhere or the
   * system has no inode numbers.
   */
  identityAt(path: string): Promise<FileIdentity | undefined>;
  /**
   * Where the local name `target` leads and whether that lies inside
   * directory `dir` (`""` is the working directory), decided on the file
   * system, never on the name's text.
   */
  locate(dir: string, target: string): Promise<Located>;
  /**
   * Whether a source opened by {@linkcode HostFiles.open} is the file that
   * the real path `path` names now (same device and inode, and `path`
   * still has no link in it); undefined for any other source.
   */
  isOpenedAt(
    source: RandomAccessSource,
    path: string,
  ): Promise<boolean | undefined>;
  /**
   * The path a source opened by {@linkcode HostFiles.open} reads (which
   * its name may not be); undefined for any other source.
   */
  pathOf(source: RandomAccessSource): string | undefined;
  /**
   * Bytes a source opened by {@linkcode HostFiles.open} occupies on disk;
   * undefined for any other source or when unknown.
   */
  allocatedSize(source: RandomAccessSource): Promise<number | undefined>;
  /**
   * Where a source opened by {@linkcode HostFiles.open} has data and holes;
   * undefined for any other source or when the system cannot tell.
   */
  holeProbe(source: object): HoleProbe | undefined;
}

let installed: HostFiles | undefined;

/** Called once by the runtime's file module. */
export function installHostFiles(files: HostFiles): void {
  installed = files;
}

/** The runtime's file access, if its file module was loaded. */
export function hostFiles(): HostFiles | undefined {
  return installed;
}

/**
 * Opens a file by path through the runtime's file module, calling it
 * `name` (default: the path) in messages.
 *
 * @throws {TypeError} When no file module was loaded (core.ts alone, as in a
 * browser or Node): the caller passes a source or the bytes instead.
 */
export function openHostFile(
  path: string,
  name?: string,
): Promise<RandomAccessSource & AsyncDisposable> {
  if (!installed) {
    return Promise.reject(
      new TypeError(
        `Cannot open "${path}": no file access is loaded (in Deno import mod.ts; elsewhere pass a RandomAccessSource such as BlobSource, or the bytes)`,
      ),
    );
  }
  return installed.open(path, name);
}

/**
 * Whether an error says that a file does not exist (Deno, Node, or an
 * IoError such as `FileSource.open` throws).
 */
export function isNotFound(err: unknown): boolean {
  if (err instanceof IoError) return err.code === "NOT_FOUND";
  const e = err as { name?: string; code?: string } | null;
  return e?.name === "NotFound" || e?.code === "ENOENT";
}

/** Whether an error says that access to a file was refused (Deno, Node, IoError). */
export function isPermissionDenied(err: unknown): boolean {
  if (err instanceof IoError) return err.code === "PERMISSION";
  const e = err as { name?: string; code?: string } | null;
  return e?.name === "PermissionDenied" || e?.code === "EACCES" ||
    e?.code === "EPERM";
}
