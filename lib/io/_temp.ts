// Temporary directories for spools, their creation errors worded like the
// other file errors.

import { fileError } from "./_errors.ts";

/**
 * Creates a fresh directory named `prefix...` in `parent`, or in the
 * system's temporary directory (TMPDIR on Unix).
 */
export async function makeTempDirIn(
  prefix: string,
  parent?: string,
): Promise<string> {
  try {
    return await Deno.makeTempDir({ prefix, dir: parent });
  } catch (err) {
    throw fileError(
      `create a temporary directory in ${
        parent ?? "the system's temporary directory (TMPDIR)"
      }`,
      err,
    );
  }
}
