/**
 * Expanding an image, or a raw stream, to raw bytes: into a sparse file
 * or device, or into a byte stream.
 *
 * @module
 */

import type { ImageSink } from "../io/sink.ts";
import { isZero, type ZeroBytes } from "../bytes/zeros.ts";
import type { GuestImage } from "./image.ts";
import {
  type ReadImageOptions,
  readSegments,
  type Segment,
  segmentsReadable,
} from "./segments.ts";

/**
 * Options of {@linkcode expandToFile} and {@linkcode expandToStream}.
 *
 * @example Write zeros too, and follow the progress
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { expandToFile } from "./expand.ts";
 * await using image = await openImage(new Uint8Array(8192));
 * let done = 0;
 * const sink = { writeAt: () => Promise.resolve(), commit: () => Promise.resolve(), abort: () => Promise.resolve() };
 * const written = await expandToFile(image, sink, { holes: false, onProgress: (n) => done = n });
 * assert.strictEqual(written, 8192);
 * assert.strictEqual(done, 8192);
 * ```
 */
export interface ExpandOptions extends ReadImageOptions {
  /** Called with the number of guest bytes done. */
  onProgress?: (guestBytes: number) => void;
  /**
   * Leave zero ranges and zero-filled blocks unwritten, as holes. Right for
   * a new file, or for a target known to read as zeros; a device, or a file
   * written in place, may hold old bytes there.
   * @default {true, false when the sink is a device}
   */
  holes?: boolean;
}

/**
 * What is expanded: an opened image, or a raw byte stream whose zero
 * ranges may come as `{ zeros: n }` (the forward pipeline's input).
 *
 * @example A stream with a 1 MiB hole to a sparse file
 * ```ts
 * import assert from "node:assert";
 * import { expandToFile } from "./expand.ts";
 * import { OutputFile } from "../host/output_file.ts";
 * const dir = await Deno.makeTempDir();
 * const raw = ReadableStream.from([new Uint8Array([1]), { zeros: 1 << 20 }]);
 * assert.strictEqual(await expandToFile(raw, await OutputFile.create(`${dir}/disk.raw`)), 1);
 * assert.strictEqual((await Deno.stat(`${dir}/disk.raw`)).size, 1 + (1 << 20));
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export type ExpandSource = GuestImage | ReadableStream<Uint8Array | ZeroBytes>;

/** Granularity at which written data is checked for zeros to leave holes. */
const HOLE_GRANULE = 64 * 1024;

/** Largest piece of zeros written at once. */
const ZERO_PIECE = 4 * 1024 * 1024;

/**
 * The source's bytes in order as segments, holes as `data: null`; runs of
 * data stored in a local file are copied file to file into `output` when
 * it can (`copied`).
 */
async function* segmentsOf(
  source: ExpandSource,
  options: ReadImageOptions,
  output?: ImageSink,
): AsyncGenerator<Segment> {
  if (!(source instanceof ReadableStream)) {
    const copyFrom = output?.copyFrom?.bind(output);
    yield* readSegments(source, options, copyFrom);
    return;
  }
  let offset = 0;
  for await (const chunk of source) {
    const bytes = chunk instanceof Uint8Array;
    const length = bytes ? chunk.length : chunk.zeros;
    yield { offset, length, data: bytes ? chunk : null };
    offset += length;
  }
}

/** Writes a data segment, each run of non-zero blocks at once. */
async function writeData(
  output: ImageSink,
  s: Segment & { data: Uint8Array },
  holes: boolean,
): Promise<number> {
  if (!holes) {
    await output.writeAt(s.offset, s.data);
    return s.length;
  }
  let written = 0;
  let run = -1; // start of the current run of non-zero blocks
  for (let at = 0; at < s.length; at += HOLE_GRANULE) {
    const end = Math.min(s.length, at + HOLE_GRANULE);
    const hole = isZero(s.data.subarray(at, end));
    if (!hole && run < 0) run = at;
    if ((hole || end === s.length) && run >= 0) {
      const stop = hole ? at : end;
      await output.writeAt(s.offset + run, s.data.subarray(run, stop));
      written += stop - run;
      run = -1;
    }
  }
  return written;
}

/** Writes `length` zero bytes at `offset`, in pieces. */
async function writeZeros(
  output: ImageSink,
  offset: number,
  length: number,
): Promise<void> {
  const zeros = new Uint8Array(Math.min(length, ZERO_PIECE));
  for (let at = 0; at < length; at += zeros.length) {
    await output.writeAt(
      offset + at,
      zeros.subarray(0, Math.min(zeros.length, length - at)),
    );
  }
}

/**
 * Writes an image's guest bytes, or a raw byte stream, into an
 * {@linkcode ImageSink} (an `OutputFile`, for example): zero and
 * unallocated ranges, and zero-filled data blocks, become holes, so a
 * 4 TiB image with three written clusters expands in moments and takes
 * kilobytes. Data stored uncompressed in a local file goes file to file
 * in the kernel where the output can copy it (`ImageSink.copyFrom`:
 * `OutputFile` with `--allow-ffi` on Linux), several copies in flight;
 * such data is written whole, zero-filled blocks included. The output is committed with the virtual size (or the
 * stream's length) when complete; on error it is aborted.
 *
 * @param source An opened image, or a raw byte stream.
 * @param output The output, such as an `OutputFile` (devices get explicit
 * zeros).
 * @param options Pool, chunk size, progress, holes.
 * @returns Number of bytes actually written (not holes).
 *
 * @example Expand a qcow2 image made in memory
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { openImage } from "./open.ts";
 * import { expandToFile } from "./expand.ts";
 * import { OutputFile } from "../host/output_file.ts";
 * const dir = await Deno.makeTempDir();
 * await using image = await openImage(await convertToBytes(new Uint8Array(5000).fill(4)));
 * await expandToFile(image, await OutputFile.create(`${dir}/disk.raw`));
 * assert.strictEqual((await Deno.readFile(`${dir}/disk.raw`))[4999], 4);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function expandToFile(
  source: ExpandSource,
  output: ImageSink,
  options: ExpandOptions = {},
): Promise<number> {
  const holes = options.holes ?? !output.isDevice;
  let written = 0;
  let end = 0;
  // The sink is done with each write's bytes once it resolves (the
  // contract of ImageSink.writeAt), so read buffers can be used again.
  const reading = { reuseBuffers: true, ...options };
  try {
    // Copies leave the source's holes out: only where holes read as zeros.
    const into = holes ? output : undefined;
    for await (const s of segmentsOf(source, reading, into)) {
      if (s.copied) {
        written += s.length;
      } else if (s.data) {
        written += await writeData(output, { ...s, data: s.data }, holes);
      } else if (!holes) {
        await writeZeros(output, s.offset, s.length);
        written += s.length;
      }
      end = s.offset + s.length;
      options.onProgress?.(end);
    }
    await output.commit(
      source instanceof ReadableStream ? end : source.virtualSize,
    );
  } catch (err) {
    await output.abort();
    throw err;
  }
  return written;
}

/**
 * Writes an image's guest bytes, or a raw byte stream, into a byte stream
 * (standard output, a pipe), zeros included, and closes it; on error the
 * stream is aborted.
 *
 * @param source An opened image, or a raw byte stream.
 * @param output Where the bytes go.
 * @param options Pool, chunk size, progress (`holes` does not apply).
 * @returns Number of bytes written.
 *
 * @example Expand a stream with a hole into bytes
 * ```ts
 * import assert from "node:assert";
 * import { expandToStream } from "./expand.ts";
 * const parts: Uint8Array[] = [];
 * const n = await expandToStream(
 *   ReadableStream.from([new Uint8Array([1, 2]), { zeros: 3 }]),
 *   new WritableStream({ write: (c) => void parts.push(c.slice()) }),
 * );
 * assert.strictEqual(n, 5);
 * assert.deepStrictEqual(parts.flatMap((p) => [...p]), [1, 2, 0, 0, 0]);
 * ```
 */
export async function expandToStream(
  source: ExpandSource,
  output: WritableStream<Uint8Array>,
  options: Omit<ExpandOptions, "holes"> = {},
): Promise<number> {
  let end = 0;
  await segmentsReadable(segmentsOf(source, options), ZERO_PIECE, (s) => {
    end = s.offset + s.length;
    options.onProgress?.(end);
  }).pipeTo(output);
  return end;
}
