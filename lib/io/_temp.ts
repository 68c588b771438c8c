// Temporary directories for spools, their creation errors worded like the
// other file errors.

import { fileError } from "./_errors.ts";

/**
 * Creates a fresh directory named `prefix...` in `parent`, or in the
 * system's temporary directory (TMPDIR on Unix). Synchronous, so that the
 * caller can register it for removal on a signal in the same turn of the
 * event loop: no signal handler runs between the two.
 */
export function makeTempDirIn(prefix: string, parent?: string): string {
  try {
    return Deno.makeTempDirSync({ prefix, dir: parent });
  } catch (err) {
    throw fileError(
      `create a temporary directory in ${
        parent ?? "the system's temporary directory (TMPDIR)"
      }`,
      err,
    );
  }
}
