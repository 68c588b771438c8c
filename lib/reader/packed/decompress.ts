/**
 * Decompressing a stream as it is read, with maintained decoders: gzip and
 * zstd through `node:zlib` (which stops inflating while its output waits:
 * memory stays bounded whatever the ratio), xz through `xz-decompress`
 * (xz-embedded in WebAssembly, reading input as its output is pulled).
 *
 * @module
 */

import { loadNodeZlib, type NodeZlib } from "../../codec/node_zlib.ts";
import { Qcow2Error } from "../../format/errors.ts";
import { ZstdFrameFollower } from "../../codec/zstd_frames.ts";

/** The compressions decompressed here. */
export type Compression = "gzip" | "xz" | "zstd";

/** Output chunk of the node:zlib decoders, in bytes (fewer, larger chunks: a lower peak). */
const ZLIB_CHUNK = 256 * 1024;

type XzModule = typeof import("npm:xz-decompress@0.2.3");

/** Loads a node: module, or says which runtime lacks it. */
async function load<T>(
  what: Compression,
  loader: () => Promise<T>,
): Promise<T> {
  try {
    return await loader();
  } catch (err) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot decompress ${what}: this runtime has no decoder for it (${
        (err as Error).message
      })`,
      { cause: err },
    );
  }
}

/**
 * The input, remembering whether reading it failed: a decoder's error that
 * came from its input is the input's error (an IoError), not corrupt data.
 */
class Tracked {
  failure: { error: unknown } | undefined;
  consumed = 0;
  readonly stream: ReadableStream<Uint8Array>;

  constructor(
    input: ReadableStream<Uint8Array>,
    filter?: (chunk: Uint8Array) => Uint8Array[],
  ) {
    const reader = input.getReader();
    this.stream = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        let next: ReadableStreamReadResult<Uint8Array>;
        try {
          next = await reader.read();
        } catch (error) {
          this.failure = { error };
          throw error;
        }
        if (next.done) controller.close();
        else {
          this.consumed += next.value.length;
          for (const part of filter ? filter(next.value) : [next.value]) {
            controller.enqueue(part);
          }
        }
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
  }
}

/**
 * Decompresses a stream as it is read.
 *
 * @param compression The compression (from its magic).
 * @param input The compressed bytes.
 * @param name What the input is called, for messages.
 * @returns The decompressed bytes; reading fails with a
 * {@linkcode Qcow2Error} (`CORRUPT`) naming the input and the compressed
 * offset when the data is corrupt or truncated, or with the input's own
 * error when reading it fails.
 *
 * @example Inflate a gzip stream
 * ```ts
 * import assert from "node:assert";
 * import { decompressStream } from "./decompress.ts";
 * const gz = new Response("hello").body!.pipeThrough(new CompressionStream("gzip"));
 * const out = decompressStream("gzip", gz, "hello.gz");
 * assert.strictEqual(await new Response(out).text(), "hello");
 * ```
 */
export function decompressStream(
  compression: Compression,
  input: ReadableStream<Uint8Array>,
  name: string,
): ReadableStream<Uint8Array> {
  // Deno's zstd decoder ends a stream cut inside a frame, or at a
  // skippable frame, as if it were whole: the frames are followed beside
  // it, and skippable ones taken out.
  const frames = compression === "zstd" ? new ZstdFrameFollower() : undefined;
  const tracked = new Tracked(input, frames && ((c) => frames.push(c)));
  let inner: ReadableStreamDefaultReader<Uint8Array> | undefined;
  const open = async () => {
    const stream = compression === "xz"
      ? await xzStream(tracked.stream)
      : await zlibStream(compression, tracked.stream);
    return stream.getReader();
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        inner ??= await open();
        for (;;) {
          // A pull that enqueues nothing is not called again: skip the
          // empty chunks a decoder gives.
          const { value, done } = await inner.read();
          if (done) {
            if (frames?.inside || frames?.fault) {
              throw new Qcow2Error(
                "CORRUPT",
                `Cannot decompress ${name}: its zstd data is corrupt or truncated (${
                  frames.fault ?? "it ends inside a frame"
                }; near compressed offset ${tracked.consumed})`,
                { offset: tracked.consumed },
              );
            }
            controller.close();
          } else if (value.length === 0) continue;
          else controller.enqueue(value);
          return;
        }
      } catch (err) {
        if (tracked.failure) throw tracked.failure.error;
        if (err instanceof Qcow2Error) throw err;
        throw new Qcow2Error(
          "CORRUPT",
          `Cannot decompress ${name}: its ${compression} data is corrupt or truncated (${
            oneLine(err)
          }; near compressed offset ${tracked.consumed})`,
          { offset: tracked.consumed, cause: err },
        );
      }
    },
    async cancel(reason) {
      if (inner) await inner.cancel(reason).catch(() => {});
      else await tracked.stream.cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
}

/** An error's message on one line. */
function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return text.replace(/\s+/g, " ").trim().slice(0, 200);
}

/** gzip (every member) or zstd (every frame) through node:zlib. */
async function zlibStream(
  compression: "gzip" | "zstd",
  input: ReadableStream<Uint8Array>,
): Promise<ReadableStream<Uint8Array>> {
  const zlib: NodeZlib = await load(compression, async () => {
    const loaded = await loadNodeZlib();
    if (!loaded) throw new Error("node:zlib is not available");
    return loaded;
  });
  if (
    compression === "zstd" && typeof zlib.createZstdDecompress !== "function"
  ) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      "Cannot decompress zstd: this runtime's node:zlib has no zstd",
    );
  }
  const decoder = compression === "gzip"
    ? zlib.createGunzip({ chunkSize: ZLIB_CHUNK })
    : zlib.createZstdDecompress({ chunkSize: ZLIB_CHUNK });
  return pumped(input, decoder);
}

type NodeTransform = ReturnType<NodeZlib["createGunzip"]>;

/**
 * A node:zlib decoder read in paused mode: it inflates while its output is
 * read and waits while it is not (its readable buffer full), so memory
 * stays bounded whatever the ratio; input is written one chunk at a time.
 */
function pumped(
  input: ReadableStream<Uint8Array>,
  decoder: NodeTransform,
): ReadableStream<Uint8Array> {
  const reader = input.getReader();
  let failure: { error: unknown } | undefined;
  let ended = false;
  let writing = false;
  let inputDone = false;
  let events = 0;
  let wake: (() => void) | undefined;
  const signal = () => {
    events++;
    const w = wake;
    wake = undefined;
    w?.();
  };
  decoder.on("readable", signal);
  decoder.on("drain", () => {
    writing = false;
    signal();
  });
  decoder.on("end", () => {
    ended = true;
    signal();
  });
  decoder.on("error", (error: unknown) => {
    failure ??= { error };
    signal();
  });
  // Deno's zstd decoder (2.9) throws the error it has just emitted once
  // more, uncaught, a tick later: here it is already the stream's error,
  // so that second throw is kept from ending the process.
  const target = globalThis as unknown as Partial<EventTarget>;
  const swallow = (event: Event) => {
    const error = (event as ErrorEvent).error ??
      (event as PromiseRejectionEvent).reason;
    if (
      error === failure?.error ||
      (error instanceof Error && error.message.startsWith("Zstd decompress"))
    ) {
      failure ??= { error };
      event.preventDefault();
      signal();
    }
  };
  target.addEventListener?.("error", swallow);
  target.addEventListener?.("unhandledrejection", swallow);
  const release = () =>
    setTimeout(() => {
      target.removeEventListener?.("error", swallow);
      target.removeEventListener?.("unhandledrejection", swallow);
    }, 1000);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (failure) {
          release();
          throw failure.error;
        }
        const seen = events;
        const chunk = decoder.read() as Uint8Array | null;
        if (chunk && chunk.length > 0) {
          controller.enqueue(
            new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length),
          );
          return;
        }
        if (ended) {
          release();
          controller.close();
          return;
        }
        if (!inputDone && !writing) {
          const { value, done } = await reader.read();
          if (done) {
            inputDone = true;
            decoder.end();
          } else {
            // No write callback: Deno's zstd throws a failure at it
            // uncaught. A full buffer waits for "drain".
            writing = !decoder.write(value);
          }
          continue;
        }
        if (events === seen) {
          await new Promise<void>((resolve) => wake = resolve);
        }
      }
    },
    async cancel(reason) {
      // A decoder that failed is done: destroying it again makes Deno's
      // zstd throw its error a second time, uncaught.
      if (!failure && !ended) decoder.destroy();
      release();
      await reader.cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
}

/** xz through xz-decompress, created when first read. */
async function xzStream(
  input: ReadableStream<Uint8Array>,
): Promise<ReadableStream<Uint8Array>> {
  const { XzReadableStream } = await load("xz", async () => {
    // Pinned inline (and in deno.lock), as the codecs pin theirs: the
    // package works when imported by path from outside this repository.
    // deno-lint-ignore no-import-prefix
    const m = await import("npm:xz-decompress@0.2.3");
    return (m.default ?? m) as XzModule;
  });
  return new XzReadableStream(input);
}
