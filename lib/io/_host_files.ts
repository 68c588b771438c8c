// File access by path, which only some runtimes have. The runtime-neutral
// code (reader, writer, tools over sources and bytes) never calls a
// runtime's file API: it asks here, and the runtime's file module
// (lib/io/file_source.ts, for Deno) installs itself when it is imported.
// mod.ts imports it; core.ts, the runtime-neutral entry, does not, so there
// a path is refused with one line instead of reaching for `Deno`.

import type { FileIdentity, RandomAccessSource } from "./source.ts";
import type { HoleProbe } from "./_holes.ts";

/** What a runtime's file module provides. */
export interface HostFiles {
  /** Opens a file for reading. */
  open(path: string): Promise<RandomAccessSource & AsyncDisposable>;
  /** The canonical path (symlinks resolved), to recognise a file met twice. */
  realPath(path: string): Promise<string>;
  /**
   * Which file a source opened by {@linkcode HostFiles.open} reads (device
   * and inode of its open descriptor); undefined for any other source or
   * where the system has no inode numbers.
   */
  identity(source: RandomAccessSource): FileIdentity | undefined;
  /**
   * Whether the local path `target` lies inside directory `dir` (`""` is
   * the working directory), on the file system: symbolic links must not
   * lead out either.
   */
  contains(dir: string, target: string): Promise<boolean>;
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
 * Opens a file by path through the runtime's file module.
 *
 * @throws {TypeError} When no file module was loaded (core.ts alone, as in a
 * browser or Node): the caller passes a source or the bytes instead.
 */
export function openHostFile(
  path: string,
): Promise<RandomAccessSource & AsyncDisposable> {
  if (!installed) {
    return Promise.reject(
      new TypeError(
        `Cannot open "${path}": no file access is loaded (in Deno import mod.ts; elsewhere pass a RandomAccessSource such as BlobSource, or the bytes)`,
      ),
    );
  }
  return installed.open(path);
}

/** Whether an error says that a file does not exist (Deno or Node). */
export function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; code?: string } | null;
  return e?.name === "NotFound" || e?.code === "ENOENT";
}

/** Whether an error says that access to a file was refused (Deno or Node). */
export function isPermissionDenied(err: unknown): boolean {
  const e = err as { name?: string; code?: string } | null;
  return e?.name === "PermissionDenied" || e?.code === "EACCES" ||
    e?.code === "EPERM";
}
