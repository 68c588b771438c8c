// Where `qcow2pipe convert` writes raw bytes and streamable qcow2: a sparse
// file, standard output, or (with -n) an existing file or device written
// in place.
import {
  type CodecPool,
  type GuestImage,
  imageChunks,
  isZero,
  OutputFile,
  type OutputFileOptions,
  readSegments,
  StreamableQcow2Writer,
  type StreamableSummary,
  type ZeroBytes,
} from "../../mod.ts";
import type { Progress } from "./progress.ts";
import { stdoutSink } from "./_args.ts";
import { UsageError } from "./_util.ts";

const ZERO_PIECE = 4 * 1024 * 1024;

/** Writes `length` zero bytes at `offset`, in pieces of at most 4 MiB. */
async function writeZeros(
  output: OutputFile,
  offset: number,
  length: number,
  zeros: Uint8Array,
): Promise<void> {
  for (let at = 0; at < length; at += zeros.length) {
    await output.writeAt(
      offset + at,
      zeros.subarray(0, Math.min(zeros.length, length - at)),
    );
  }
}

/** Writes a raw byte stream to a sparse file or stdout. */
export async function writeRawStream(
  raw: ReadableStream<Uint8Array | ZeroBytes>,
  dst: string,
  outputOptions: OutputFileOptions,
  progress: Progress,
): Promise<number> {
  if (dst === "-") {
    const zeros = new Uint8Array(1 << 20);
    const out = stdoutSink().getWriter();
    let done = 0;
    try {
      for await (const chunk of raw) {
        if (chunk instanceof Uint8Array) {
          await out.write(chunk);
          done += chunk.length;
        } else {
          for (let left = chunk.zeros; left > 0; left -= zeros.length) {
            await out.write(zeros.subarray(0, Math.min(left, zeros.length)));
          }
          done += chunk.zeros;
        }
        progress.update(done);
      }
    } finally {
      out.releaseLock();
    }
    return done;
  }
  const output = await OutputFile.create(dst, outputOptions);
  try {
    const zeros = new Uint8Array(ZERO_PIECE);
    let at = 0;
    for await (const chunk of raw) {
      if (chunk instanceof Uint8Array) {
        if (!isZero(chunk) || output.isDevice) await output.writeAt(at, chunk);
        at += chunk.length;
      } else {
        if (output.isDevice) await writeZeros(output, at, chunk.zeros, zeros);
        at += chunk.zeros;
      }
      progress.update(at);
    }
    await output.commit(at);
    return at;
  } catch (err) {
    await output.abort();
    throw err;
  }
}

/** What `convert -n` writes into. */
export interface IntoOptions {
  /** `--target-is-zero`: the target reads as zeros; zeros are not written. */
  targetIsZero: boolean;
  /** Flush the target before returning. */
  sync: boolean;
  pool: CodecPool;
  progress: Progress;
}

/**
 * `convert -n`: writes the guest bytes into an existing raw file or
 * device, in place. Zero ranges are written as zeros (the target may hold
 * anything) unless `targetIsZero`; bytes past the input are left as they
 * are. The target must be at least as large as the input, as qemu-img
 * requires.
 */
export async function writeInto(
  source: GuestImage | ReadableStream<Uint8Array | ZeroBytes>,
  total: number | undefined,
  dst: string,
  options: IntoOptions,
): Promise<number> {
  const { output, size } = await OutputFile.openInPlace(dst, {
    sync: options.sync,
  });
  const tooSmall = (needed: number) =>
    new UsageError(
      `Cannot convert: DST ${dst} (${size} bytes) is smaller than the input (${needed} bytes); -n does not grow it`,
    );
  try {
    if (total !== undefined && total > size) throw tooSmall(total);
    const zeros = options.targetIsZero ? undefined : new Uint8Array(ZERO_PIECE);
    let at = 0;
    const chunks = source instanceof ReadableStream
      ? source
      : readSegments(source, { pool: options.pool });
    for await (const chunk of chunks) {
      const bytes = chunk instanceof Uint8Array
        ? chunk
        : "zeros" in chunk
        ? undefined
        : chunk.data;
      const length = chunk instanceof Uint8Array
        ? chunk.length
        : "zeros" in chunk
        ? chunk.zeros
        : chunk.length;
      if (at + length > size) throw tooSmall(at + length);
      if (bytes && !(options.targetIsZero && isZero(bytes))) {
        await output.writeAt(at, bytes);
      } else if (!bytes && zeros) {
        await writeZeros(output, at, length, zeros);
      }
      at += length;
      options.progress.update(at);
    }
    await output.commit();
    return at;
  } catch (err) {
    await output.abort();
    throw err;
  }
}

/** qcow2 in the streamable layout, to stdout or to a file. */
export async function writeStreamable(
  source: GuestImage | ReadableStream<Uint8Array | ZeroBytes>,
  dst: string,
  outputOptions: OutputFileOptions,
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
    const output = await OutputFile.create(dst, outputOptions);
    try {
      let at = 0;
      for await (const chunk of bytes) {
        await output.writeAt(at, chunk);
        at += chunk.length;
      }
      await output.commit(at);
    } catch (err) {
      await output.abort();
      throw err;
    }
  }
  return await writer.summary;
}
