/**
 * Expanding to a path: a new sparse file that appears only when complete,
 * a device, or (as `qemu-img convert -n`) an existing file written in
 * place.
 *
 * @module
 */

import { IoError } from "../format/errors.ts";
import { OutputFile, type OutputFileOptions } from "../host/output_file.ts";
import { openStreamOutput } from "../host/stream_output.ts";
import { fileIdentities } from "../io/identity.ts";
import type { FileIdentity } from "../io/source.ts";
import type { ImageSink } from "../io/sink.ts";
import {
  type ExpandOptions,
  type ExpandSource,
  expandToFile,
  expandToStream,
} from "./expand.ts";

/**
 * Options of {@linkcode expandToPath}: reading, progress and holes, and
 * how the destination is written.
 *
 * @example Keep an existing file, reporting progress
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { expandToPath, type ExpandToPathOptions } from "./expand_to_path.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeFile(`${dir}/old.raw`, new Uint8Array([1, 2, 3]));
 * let done = 0;
 * const options: ExpandToPathOptions = { noClobber: true, onProgress: (n) => done = n };
 * await using image = await openImage(new Uint8Array(4096).fill(8));
 * await assert.rejects(expandToPath(image, `${dir}/old.raw`, options), /exists/);
 * await expandToPath(image, `${dir}/new.raw`, options);
 * assert.strictEqual(done, 4096);
 * assert.strictEqual((await Deno.stat(`${dir}/new.raw`)).size, 4096);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export interface ExpandToPathOptions extends ExpandOptions, OutputFileOptions {
  /**
   * Write into the existing file or device at the path, in place
   * (`qemu-img convert -n`): nothing is created, truncated or removed, and
   * bytes past the input keep what they held. Zero ranges are written as
   * zeros unless `holes` says the target reads as zeros. A target smaller
   * than the input is refused.
   * @default {false}
   */
  inPlace?: boolean;
  /**
   * The length of a stream source, when known: with `inPlace`, a target
   * smaller than it is refused before anything is written.
   */
  sourceLength?: number;
}

/**
 * Expands an image, or a raw byte stream, to a path with
 * {@linkcode expandToFile}. A new file is written under a temporary name
 * beside the path and put in place when complete, replacing an existing
 * file (`noClobber` keeps it); on any error it is removed and nothing
 * appears. A block device is written in place, zeros included. A stream
 * (a FIFO, a character device, `/dev/stdout`, `/proc/self/fd/N`) gets
 * the bytes in order with {@linkcode expandToStream}, zeros included.
 * The path is refused when it is a file the source reads (its image file,
 * data file or backing chain, or one of `inputs`), compared by device and
 * inode before anything is written.
 *
 * @param source An opened image, or a raw byte stream.
 * @param path The destination.
 * @param options Reading, progress, `noClobber`, `sync`, `inPlace`,
 * `inputs`.
 * @returns Number of bytes written (not holes).
 * @throws {OutputExistsError} When `path` exists, `noClobber` is given
 * and `inPlace` is not, or when a file appeared there meanwhile.
 * @throws {Error} When `path` is one of the files being read, a
 * directory, or (with `inPlace`) smaller than the source.
 *
 * @example Expand a qcow2 image to a sparse raw file
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { openImage } from "./open.ts";
 * import { expandToPath } from "./expand_to_path.ts";
 * const dir = await Deno.makeTempDir();
 * const raw = new Uint8Array(1 << 20);
 * raw.fill(3, 0, 65536);
 * await using image = await openImage(await convertToBytes(raw));
 * const written = await expandToPath(image, `${dir}/disk.raw`);
 * assert.strictEqual(written, 65536); // the rest is a hole
 * assert.deepStrictEqual(await Deno.readFile(`${dir}/disk.raw`), raw);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function expandToPath(
  source: ExpandSource,
  path: string,
  options: ExpandToPathOptions = {},
): Promise<number> {
  const inputs: FileIdentity[] = [
    ...source instanceof ReadableStream ? [] : fileIdentities(source.sources()),
    ...options.inputs ?? [],
  ];
  if (!options.inPlace) {
    const stream = await openStreamOutput(path, { inputs });
    if (stream) return await expandToStream(source, stream, options);
    return await expandToFile(
      source,
      await OutputFile.create(path, { ...options, inputs }),
      options,
    );
  }
  const { output, size } = await OutputFile.openInPlace(path, {
    sync: options.sync,
    inputs,
  });
  const sink = bounded(output, size);
  const length = source instanceof ReadableStream
    ? options.sourceLength
    : source.virtualSize;
  try {
    if (length !== undefined) sink.check(length);
  } catch (err) {
    await output.abort();
    throw err;
  }
  return await expandToFile(source, sink, { holes: false, ...options });
}

/** An in-place output that refuses to be written past its size. */
function bounded(
  output: OutputFile,
  size: number,
): ImageSink & { check(end: number): void } {
  const check = (end: number) => {
    if (end > size) {
      throw new IoError(
        "OTHER",
        `Cannot write into ${output.path}: it has ${size} bytes, fewer than the input's ${end} (it is not grown)`,
      );
    }
  };
  return {
    isDevice: output.isDevice,
    check,
    writeAt: (offset, data) => {
      check(offset + data.length);
      return output.writeAt(offset, data);
    },
    copyFrom: (source, sourceOffset, offset, length) => {
      check(offset + length);
      return output.copyFrom(source, sourceOffset, offset, length);
    },
    commit: (end) => {
      check(end);
      return output.commit();
    },
    abort: () => output.abort(),
  };
}
