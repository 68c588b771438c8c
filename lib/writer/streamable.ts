/**
 * qcow2 written front to back as one byte stream, metadata first: header,
 * refcount table, refcount blocks, L1 table, L2 tables, then the data in
 * guest order. This is the layout a pipe (stdout, an HTTP upload body) needs,
 * and one our reader can expand from a pipe in one pass.
 *
 * The stages are `Qcow2Writer`'s, with `Qcow2PackStream` in its streamable
 * layout: the data and the cluster mappings wait in spool files until the
 * input ends.
 *
 * @module
 */

import type { CodecPool } from "../codec/pool.ts";
import { Spool } from "../io/spool.ts";
import { writerStages } from "./_stages.ts";
import type { PackSummary, Qcow2PackStream } from "./pack_stream.ts";
import type { Qcow2WriterOptions } from "./qcow2_writer.ts";
import type { HostWrite, ZeroBytes } from "./records.ts";

/**
 * Options of {@linkcode StreamableQcow2Writer}: `Qcow2Writer`'s, and where
 * the spool files go.
 *
 * @example Spool into a directory of your own
 * ```ts
 * import assert from "node:assert";
 * import { StreamableQcow2Writer } from "./streamable.ts";
 * const spoolDir = await Deno.makeTempDir();
 * await using writer = new StreamableQcow2Writer({ spoolDir, clusterSize: 4096 });
 * const out = ReadableStream.from([new Uint8Array(8192).fill(1)]).pipeThrough(writer);
 * await new Response(out).arrayBuffer();
 * assert.strictEqual((await Array.fromAsync(Deno.readDir(spoolDir))).length, 2);
 * await writer.close(); // deletes the spool files
 * assert.strictEqual((await Array.fromAsync(Deno.readDir(spoolDir))).length, 0);
 * await Deno.remove(spoolDir);
 * ```
 */
export interface StreamableWriterOptions extends Qcow2WriterOptions {
  /** Directory for the spool files. @default {the system temporary directory} */
  spoolDir?: string;
}

/**
 * Raw bytes in, a complete qcow2 v3 image out as one ordered byte stream
 * (metadata first), for writing to a pipe or uploading. The output starts
 * once the input has ended; until then data waits in a spool file. With
 * `backingFile` (and `backingImage`) it writes a delta image.
 *
 * @example Stream a qcow2 image into memory and open it
 * ```ts
 * import assert from "node:assert";
 * import { StreamableQcow2Writer } from "./streamable.ts";
 * import { openImage } from "../reader/open.ts";
 * await using writer = new StreamableQcow2Writer({ compression: "zlib", workers: 1 });
 * const out = ReadableStream.from([new Uint8Array(100_000).fill(8)]).pipeThrough(writer);
 * const bytes = new Uint8Array(await new Response(out).arrayBuffer());
 * await using image = await openImage(bytes);
 * assert.strictEqual((await image.readAt(99_999, 1))[0], 8);
 * ```
 */
export class StreamableQcow2Writer
  implements
    TransformStream<Uint8Array | ZeroBytes, Uint8Array>,
    AsyncDisposable {
  #writable: WritableStream<Uint8Array | ZeroBytes>;
  #readable: ReadableStream<Uint8Array>;
  #ownPool: CodecPool | undefined;
  #pack: Qcow2PackStream;

  /**
   * Builds the stages.
   *
   * @param options Cluster size, compression, refcount width, workers,
   * backing file, spool directory.
   * @throws {RangeError} For invalid options.
   */
  constructor(options: StreamableWriterOptions = {}) {
    const stages = writerStages(options, {
      spool: () => Spool.create(options.spoolDir),
    });
    this.#ownPool = stages.ownPool;
    this.#pack = stages.pack;
    this.#writable = stages.writable;
    this.#readable = fileBytes(stages.readable);
  }

  /** Raw bytes in. */
  get writable(): WritableStream<Uint8Array | ZeroBytes> {
    return this.#writable;
  }

  /** The qcow2 image's bytes, in order. */
  get readable(): ReadableStream<Uint8Array> {
    return this.#readable;
  }

  /** Resolves once the whole image has been read from `readable`. */
  get summary(): Promise<PackSummary> {
    return this.#pack.summary;
  }

  /**
   * Stops the workers this writer started and deletes the spool files.
   *
   * @returns When done.
   */
  async close(): Promise<void> {
    await this.#ownPool?.close();
    await this.#pack.close();
  }

  /** Same as {@linkcode StreamableQcow2Writer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** The bytes of writes that come back to back from offset 0. */
function fileBytes(
  writes: ReadableStream<HostWrite>,
): ReadableStream<Uint8Array> {
  const reader = writes.getReader();
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) {
        controller.close();
        return;
      }
      if (value.offset !== offset) {
        const err = new Error(
          `Internal error: a streamable write at ${value.offset} does not follow the one ending at ${offset}`,
        );
        await reader.cancel(err);
        throw err;
      }
      offset += value.data.length;
      controller.enqueue(value.data);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}
