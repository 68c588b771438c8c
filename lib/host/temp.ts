// Temporary files and directories: the ones still in use (removed on a
// signal), and spool directories, their creation errors worded like the
// other file errors.

import { fileError } from "../io/os_errors.ts";

/**
 * Creates a fresh directory named `prefix...` in `parent`, or in the
 * system's temporary directory (TMPDIR on Unix), registered for
 * {@linkcode removeTemporaryFiles} until {@linkcode removeTempDir} removes
 * it. Synchronous, so that it is registered in the same turn of the event
 * loop: no signal handler runs between the two.
 */
export function makeTempDirIn(prefix: string, parent?: string): string {
  try {
    const dir = Deno.makeTempDirSync({ prefix, dir: parent });
    trackTemporary(dir);
    return dir;
  } catch (err) {
    throw fileError(
      `create a temporary directory in ${
        parent ?? "the system's temporary directory (TMPDIR)"
      }`,
      err,
    );
  }
}

/**
 * Removes a temporary directory made by {@linkcode makeTempDirIn} and what
 * it holds. A failure is ignored: the directory holds nothing of the
 * user's, and the error being reported matters more.
 */
export async function removeTempDir(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  untrackTemporary(dir);
}

/** Temporary files and spool directories still in use. */
const live = new Set<string>();

/** Registers a temporary file or directory for {@linkcode removeTemporaryFiles}. */
export function trackTemporary(path: string): void {
  live.add(path);
}

/** Unregisters a temporary file or directory, once removed or renamed. */
export function untrackTemporary(path: string): void {
  live.delete(path);
}

/** Whether a temporary file or directory is registered. */
export function isTemporaryTracked(path: string): boolean {
  return live.has(path);
}

/**
 * Removes every registered temporary file and directory, synchronously:
 * the CLI calls it on a signal, just before it exits.
 */
export function removeTemporaryFiles(): void {
  for (const path of live) {
    try {
      Deno.removeSync(path, { recursive: true });
    } catch {
      // already gone
    }
  }
  live.clear();
}
