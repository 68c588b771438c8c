/**
 * Expanding an image to raw: to a sparse file, or to a byte stream.
 *
 * @module
 */

import type { ImageSink } from "../io/sink.ts";
import { isZero } from "../writer/is_zero.ts";
import type { GuestImage } from "./image.ts";
import { type ReadImageOptions, readSegments } from "./segments.ts";

/**
 * Options of {@linkcode expandToFile}.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { ExpandOptions } from "./expand.ts";
 * const o: ExpandOptions = { onProgress: (n) => void n };
 * assert.ok(o.onProgress);
 * ```
 */
export interface ExpandOptions extends ReadImageOptions {
  /** Called with the number of guest bytes done. */
  onProgress?: (guestBytes: number) => void;
}

/** Granularity at which written data is checked for zeros to leave holes. */
const HOLE_GRANULE = 64 * 1024;

/**
 * Writes an image's guest bytes into an {@linkcode ImageSink} (an
 * `OutputFile`, for example): zero and unallocated ranges, and zero-filled
 * data blocks, become holes, so a 4 TiB image with three written clusters
 * expands in moments and takes kilobytes. The output is committed with the
 * virtual size; on error it is not, and the caller aborts it.
 *
 * @param image An opened image.
 * @param output The output, such as an `OutputFile` (devices get explicit
 * zeros).
 * @param options Pool, chunk size, progress.
 * @returns Number of bytes actually written (data, not holes).
 *
 * @example Expand a qcow2 image made in memory
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { openImage } from "./open.ts";
 * import { expandToFile } from "./expand.ts";
 * import { OutputFile } from "../io/output_file.ts";
 * const dir = await Deno.makeTempDir();
 * await using image = await openImage(await convertToBytes(new Uint8Array(5000).fill(4)));
 * await expandToFile(image, await OutputFile.create(`${dir}/disk.raw`));
 * assert.strictEqual((await Deno.readFile(`${dir}/disk.raw`))[4999], 4);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function expandToFile(
  image: GuestImage,
  output: ImageSink,
  options: ExpandOptions = {},
): Promise<number> {
  let written = 0;
  const zeros = output.isDevice ? new Uint8Array(4 * 1024 * 1024) : undefined;
  for await (const s of readSegments(image, options)) {
    if (s.data) {
      // Write each run of non-zero blocks at once; zero blocks stay holes.
      let run = -1;
      const flush = async (end: number) => {
        await output.writeAt(s.offset + run, s.data!.subarray(run, end));
        written += end - run;
        run = -1;
      };
      for (let at = 0; at < s.length; at += HOLE_GRANULE) {
        const end = Math.min(s.length, at + HOLE_GRANULE);
        const hole = !zeros && isZero(s.data.subarray(at, end));
        if (!hole && run < 0) run = at;
        if (hole && run >= 0) await flush(at);
      }
      if (run >= 0) await flush(s.length);
    } else if (zeros) {
      for (let at = 0; at < s.length; at += zeros.length) {
        await output.writeAt(
          s.offset + at,
          zeros.subarray(0, Math.min(zeros.length, s.length - at)),
        );
      }
    }
    options.onProgress?.(s.offset + s.length);
  }
  await output.commit(image.virtualSize);
  return written;
}
