// Where `qcow2pipe convert` writes: raw bytes or qcow2, to a file, a
// stream (standard output, a FIFO, a character device, what /dev/stdout or
// /proc/self/fd/N leads to), or (with -n) an existing file or device in
// place. The library writes the files (under a temporary name, put in
// place when complete, removed on failure) and refuses to write onto an
// input; this only chooses the call.
import type { CodecPool } from "../codec/pool.ts";
import type { FileIdentity } from "../io/source.ts";
import type { GuestImage } from "../reader/image.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import { expandToStream } from "../reader/expand.ts";
import { imageChunks } from "../reader/segments.ts";
import type { PackSummary } from "../writer/pack_stream.ts";
import type { StreamableQcow2Writer } from "../writer/streamable.ts";
import { writeIntoQcow2, type WriteIntoSummary } from "../writer/write_into.ts";
import { FileSource } from "../host/file_source.ts";
import { assertNotInput } from "../io/identity.ts";
import { expandToPath } from "../reader/expand_to_path.ts";
import { openStreamOutput, standardOutput } from "../host/stream_output.ts";
import type { ConvertSettings } from "./_convert_settings.ts";
import type { Progress } from "./progress.ts";

/** The guest bytes to write: an opened image or a raw stream. */
export type RawSource = GuestImage | ReadableStream<Uint8Array | ZeroBytes>;

/**
 * Where DST's bytes go: a stream, written in order (standard output for
 * `-`, or a DST that is a stream), or a path written at offsets (a file
 * created or replaced, a block device, or with -n the existing target).
 */
export type Target = { stream: WritableStream<Uint8Array> } | {
  path: string;
};

/**
 * Opens DST when it is a stream (a FIFO waits here for its reader); any
 * DST that is one of `inputs`, or a terminal (`/dev/tty`, as `-` is when
 * standard output is one), is refused before a byte is written.
 */
export async function openTarget(
  s: Pick<ConvertSettings, "dst" | "inPlace">,
  inputs: FileIdentity[],
): Promise<Target> {
  if (s.dst === "-") return { stream: standardOutput({ inputs }) };
  if (s.inPlace) return { path: s.dst };
  const stream = await openStreamOutput(s.dst, {
    inputs,
    refuseTerminal: true,
  });
  return stream ? { stream } : { path: s.dst };
}

/**
 * Writes raw bytes to DST: a sparse file, a stream (zeros included), or
 * (-n) the existing target in place.
 *
 * @returns The number of guest bytes.
 */
export async function writeRaw(
  source: RawSource,
  sourceLength: number | undefined,
  s: Pick<
    ConvertSettings,
    | "noClobber"
    | "sync"
    | "inPlace"
    | "targetIsZero"
    | "sparseSize"
    | "preallocation"
  >,
  options: {
    pool: CodecPool;
    progress: Progress;
    target: Target;
    inputs: FileIdentity[];
  },
): Promise<number> {
  let size = 0;
  const onProgress = (n: number) => {
    size = n;
    options.progress.update(n);
  };
  const { target } = options;
  if ("stream" in target) {
    await expandToStream(source, target.stream, {
      pool: options.pool,
      onProgress,
    });
  } else {
    await expandToPath(source, target.path, {
      pool: options.pool,
      onProgress,
      noClobber: s.noClobber,
      sync: s.sync,
      inPlace: s.inPlace,
      // -S 0 writes zeros; -n writes them unless the target reads as zeros.
      holes: s.inPlace
        ? s.targetIsZero && s.sparseSize !== 0
        : s.sparseSize === 0 || s.preallocation === "full" ||
            s.preallocation === "falloc"
        ? false
        : undefined,
      sourceLength,
      inputs: options.inputs,
    });
  }
  return size;
}

/** qcow2 in the streamable layout, to a stream or to a file. */
export async function writeStreamable(
  source: RawSource,
  target: Target,
  outputOptions: { noClobber: boolean; sync: boolean; inputs: FileIdentity[] },
  options: ConstructorParameters<typeof StreamableQcow2Writer>[0] & object,
): Promise<PackSummary> {
  const stream = source instanceof ReadableStream
    ? source
    : imageChunks(source, { pool: options.pool, recycle: true });
  // The streamable layout's writer (and its spool) loads only for it.
  const { StreamableQcow2Writer } = await import("../writer/streamable.ts");
  await using writer = new StreamableQcow2Writer(options);
  const bytes = stream.pipeThrough(writer);
  if ("stream" in target) {
    await bytes.pipeTo(target.stream);
  } else {
    await expandToPath(bytes, target.path, outputOptions);
  }
  return await writer.summary;
}

/**
 * -n into an existing qcow2 image: guest data written into it in place
 * (DST may be none of the inputs).
 */
export async function writeIntoImage(
  source: RawSource,
  s: Pick<ConvertSettings, "dst" | "sparseSize" | "targetIsZero">,
  inputs: FileIdentity[],
  onProgress: (guestBytes: number) => void,
): Promise<WriteIntoSummary> {
  await using file = await FileSource.open(s.dst, s.dst, { write: true });
  assertNotInput(await Deno.stat(s.dst), s.dst, inputs);
  return await writeIntoQcow2(source, file, {
    sparseSize: s.sparseSize,
    targetIsZero: s.targetIsZero,
    onProgress,
  });
}
