/**
 * Decompressing a stream as it is read, with maintained decoders: gzip and
 * zstd through `node:zlib` (which stops inflating while its output waits:
 * memory stays bounded whatever the ratio), xz through `xz-decompress`
 * (xz-embedded in WebAssembly, reading input as its output is pulled).
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";

/** The compressions decompressed here. */
export type Compression = "gzip" | "xz" | "zstd";

/** Output chunk of the node:zlib decoders, in bytes (fewer, larger chunks: a lower peak). */
const ZLIB_CHUNK = 256 * 1024;

type NodeZlib = typeof import("node:zlib");
type NodeStream = typeof import("node:stream");
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

  constructor(input: ReadableStream<Uint8Array>) {
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
          controller.enqueue(next.value);
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
  const tracked = new Tracked(input);
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
          if (done) controller.close();
          else if (value.length === 0) continue;
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
  const zlib: NodeZlib = await load(
    compression,
    async () => {
      const m = await import("node:zlib");
      return (m.default ?? m) as NodeZlib;
    },
  );
  const { Duplex }: NodeStream = await load(
    compression,
    async () => {
      const m = await import("node:stream");
      return (m.default ?? m) as NodeStream;
    },
  );
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
  const pair = Duplex.toWeb(decoder) as unknown as ReadableWritablePair<
    Uint8Array,
    Uint8Array
  >;
  return input.pipeThrough(pair);
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
