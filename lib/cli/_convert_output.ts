// Where `qcow2pipe convert` writes: raw bytes or qcow2, to a file, standard
// output, or (with -n) an existing file or device in place. The library
// writes the files (under a temporary name, renamed when complete, removed
// on failure); this only chooses the call.
import {
  type CodecPool,
  expandToStream,
  type GuestImage,
  imageChunks,
  StreamableQcow2Writer,
  type StreamableSummary,
  type ZeroBytes,
} from "../../mod.ts";
import { expandToPath } from "../reader/expand_to_path.ts";
import type { ConvertSettings } from "./_convert_settings.ts";
import type { Progress } from "./progress.ts";
import { stdoutSink } from "./_args.ts";

/** The guest bytes to write: an opened image or a raw stream. */
export type RawSource = GuestImage | ReadableStream<Uint8Array | ZeroBytes>;

/**
 * Writes raw bytes to DST: a sparse file, standard output, or (-n) the
 * existing target in place.
 *
 * @returns The number of guest bytes.
 */
export async function writeRaw(
  source: RawSource,
  sourceLength: number | undefined,
  s: Pick<
    ConvertSettings,
    "dst" | "force" | "sync" | "inPlace" | "targetIsZero"
  >,
  options: { pool: CodecPool; progress: Progress },
): Promise<number> {
  let size = 0;
  const onProgress = (n: number) => {
    size = n;
    options.progress.update(n);
  };
  if (s.dst === "-" && !s.inPlace) {
    await expandToStream(source, stdoutSink(), {
      pool: options.pool,
      onProgress,
    });
  } else {
    await expandToPath(source, s.dst, {
      pool: options.pool,
      onProgress,
      force: s.force,
      sync: s.sync,
      inPlace: s.inPlace,
      holes: s.inPlace ? s.targetIsZero : undefined,
      sourceLength,
    });
  }
  return size;
}

/** qcow2 in the streamable layout, to stdout or to a file. */
export async function writeStreamable(
  source: RawSource,
  dst: string,
  outputOptions: { force: boolean; sync: boolean },
  options: ConstructorParameters<typeof StreamableQcow2Writer>[0] & object,
): Promise<StreamableSummary> {
  const stream = source instanceof ReadableStream
    ? source
    : imageChunks(source, { pool: options.pool });
  await using writer = new StreamableQcow2Writer(options);
  const bytes = stream.pipeThrough(writer);
  if (dst === "-") {
    await bytes.pipeTo(stdoutSink());
  } else {
    await expandToPath(bytes, dst, outputOptions);
  }
  return await writer.summary;
}
