/**
 * The one place where a downloaded disk's containers are taken off: gzip,
 * xz and zstd compression and a tar archive of one disk, each told by its
 * magic, each read forward as a stream (a file, a pipe, an HTTP body) in
 * one pass and bounded memory. The CLI's `convert` and the library's
 * {@linkcode openImageStream} both come through here.
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";
import { PROBE_BYTES } from "../../format/probe.ts";
import type { ZeroBytes } from "../../bytes/zeros.ts";
import { type Packing, PACKING_TITLES, packingOf, TAR_BLOCK } from "./magic.ts";
import { decompressStream } from "./decompress.ts";
import { openTarDisk } from "./tar.ts";

/** Bytes looked at to tell the containers and the disk's format. */
const HEAD_BYTES = Math.max(PROBE_BYTES, TAR_BLOCK);
/** Most containers taken off one disk (`.tar.gz` is two). */
const MAX_LAYERS = 4;
/** Largest zero chunk made where bytes must be real. */
const ZERO_CHUNK = 1 << 20;

/**
 * Options of {@linkcode unpackStream}.
 *
 * @example Name the member to read
 * ```ts
 * import type { UnpackOptions } from "./unpack.ts";
 * const options: UnpackOptions = { disk: "disk.raw", name: "image.tar.gz" };
 * ```
 */
export interface UnpackOptions {
  /** The tar member to read; default: the only disk in the archive. */
  disk?: string;
  /** What the stream is called in messages. @default {"the stream"} */
  name?: string;
}

/**
 * A disk with its containers taken off.
 *
 * @example Say what a download was
 * ```ts
 * import assert from "node:assert";
 * import { unpackStream, type Unpacked } from "./unpack.ts";
 * const gz = new Response(new Uint8Array(4096)).body!.pipeThrough(new CompressionStream("gzip"));
 * const unpacked: Unpacked = await unpackStream(gz, { name: "disk.raw.gz" });
 * assert.deepStrictEqual(unpacked.layers, ["gzip"]);
 * await unpacked.stream.cancel();
 * ```
 */
export interface Unpacked {
  /** The disk's bytes (zero runs where a sparse tar member has holes). */
  stream: ReadableStream<Uint8Array | ZeroBytes>;
  /** The disk's first bytes (up to 2048), to probe its format. */
  head: Uint8Array;
  /** The containers taken off, outermost first (empty for a bare disk). */
  layers: Packing[];
  /** The tar member read, when there was an archive. */
  member?: string;
  /** The disk's size when the archive says it, else undefined. */
  size?: number;
}

/**
 * Takes a disk's containers off, as it streams: decompresses gzip, xz and
 * zstd and picks the disk out of a tar archive (the only one, or the one
 * named), as many layers deep as they come (`.tar.gz`, `.raw.xz`).
 * A stream with none of them comes back as it is.
 *
 * @param stream The bytes.
 * @param options The tar member to read, and the stream's name.
 * @returns The disk's stream, its first bytes and what was taken off.
 * @throws {Qcow2Error} For a bzip2 stream (not read), a malformed archive,
 * or an archive without the disk asked for; corrupt compressed data fails
 * the returned stream when it is reached.
 *
 * @example Convert an xz-compressed raw disk
 * ```ts
 * import assert from "node:assert";
 * import { convert, openImage, unpackStream } from "../../../mod.ts";
 * import { writesToBytes } from "../../writer/qcow2_writer.ts";
 * const dir = await Deno.makeTempDir();
 * await Deno.writeFile(`${dir}/disk.raw`, new Uint8Array(1 << 20).fill(5));
 * await new Deno.Command("xz", { args: [`${dir}/disk.raw`] }).output();
 * const file = await Deno.open(`${dir}/disk.raw.xz`);
 * const disk = await unpackStream(file.readable, { name: "disk.raw.xz" });
 * assert.deepStrictEqual(disk.layers, ["xz"]);
 * const { readable, writable } = new TransformStream();
 * const [summary, qcow2] = await Promise.all([
 *   convert(disk.stream, writable),
 *   writesToBytes(readable),
 * ]);
 * assert.strictEqual(summary.virtualSize, 1 << 20);
 * await using image = await openImage(qcow2);
 * assert.strictEqual((await image.readAt(12345, 1))[0], 5);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function unpackStream(
  stream: ReadableStream<Uint8Array>,
  options: UnpackOptions = {},
): Promise<Unpacked> {
  const name = options.name ?? "the stream";
  const layers: Packing[] = [];
  let current: ReadableStream<Uint8Array | ZeroBytes> = stream;
  let member: string | undefined;
  let size: number | undefined;
  for (;;) {
    const peeked = await peek(current, HEAD_BYTES);
    const packing = packingOf(peeked.head);
    const within = layers.length === 0
      ? name
      : `${name} (inside ${layers.map((l) => PACKING_TITLES[l]).join(", ")})`;
    if (packing === undefined) {
      if (options.disk !== undefined && member === undefined) {
        await peeked.stream.cancel();
        throw new Qcow2Error(
          "BAD_MAGIC",
          `Cannot read disk "${options.disk}": ${within} is not a tar archive (--disk picks a member of one)`,
          { offset: 0 },
        );
      }
      return { stream: peeked.stream, head: peeked.head, layers, member, size };
    }
    if (
      packing === "bzip2" || layers.length >= MAX_LAYERS ||
      (packing === "tar" && layers.includes("tar"))
    ) {
      await peeked.stream.cancel();
      throw new Qcow2Error(
        packing === "bzip2" ? "UNSUPPORTED_FORMAT" : "UNSUPPORTED_FEATURE",
        packing === "bzip2"
          ? `Cannot open image: ${within} is bzip2-compressed; qcow2pipe decompresses gzip, xz and zstd (bunzip2 -c it into qcow2pipe convert -)`
          : `Cannot open image: ${within} is ${
            PACKING_TITLES[packing]
          } again; qcow2pipe takes off at most ${MAX_LAYERS} containers and one tar archive`,
        { offset: 0 },
      );
    }
    layers.push(packing);
    const bytes = bytesOnly(peeked.stream);
    if (packing === "tar") {
      const disk = await openTarDisk(bytes, {
        disk: options.disk,
        name: within,
      });
      member = disk.member;
      size = disk.size;
      current = disk.stream;
    } else {
      current = decompressStream(packing, bytes, within);
      size = undefined;
    }
  }
}

/**
 * Reads the first `length` bytes of a stream (zero runs made into bytes)
 * and gives back a stream of all of it.
 */
async function peek(
  stream: ReadableStream<Uint8Array | ZeroBytes>,
  length: number,
): Promise<{
  head: Uint8Array;
  stream: ReadableStream<Uint8Array | ZeroBytes>;
}> {
  const reader = stream.getReader();
  const front: (Uint8Array | ZeroBytes)[] = [];
  const head = new Uint8Array(length);
  let have = 0;
  try {
    while (have < length) {
      const { value, done } = await reader.read();
      if (done) break;
      if (value instanceof Uint8Array) {
        head.set(value.subarray(0, length - have), have);
        have += Math.min(value.length, length - have);
      } else {
        have += Math.min(value.zeros, length - have);
      }
      front.push(value);
    }
  } catch (err) {
    await reader.cancel(err).catch(() => {});
    throw err;
  }
  const all = new ReadableStream<Uint8Array | ZeroBytes>({
    async pull(controller) {
      const next = front.shift();
      if (next) {
        controller.enqueue(next);
        return;
      }
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
  return { head: head.slice(0, have), stream: all };
}

/**
 * A stream of bytes only: zero runs become zero-filled chunks (for the
 * readers that take bytes, such as a qcow2 stream or a decompressor).
 *
 * @param stream Bytes and zero runs.
 * @returns The same bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { bytesOnly } from "./unpack.ts";
 * const bytes = await new Response(bytesOnly(ReadableStream.from([{ zeros: 3 }]))).arrayBuffer();
 * assert.strictEqual(bytes.byteLength, 3);
 * ```
 */
export function bytesOnly(
  stream: ReadableStream<Uint8Array | ZeroBytes>,
): ReadableStream<Uint8Array> {
  const reader = stream.getReader();
  let zeros = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (zeros === 0) {
        const { value, done } = await reader.read();
        if (done) {
          controller.close();
          return;
        }
        if (value instanceof Uint8Array) {
          if (value.length === 0) continue;
          controller.enqueue(value);
          return;
        }
        zeros = value.zeros;
      }
      const n = Math.min(zeros, ZERO_CHUNK);
      zeros -= n;
      controller.enqueue(new Uint8Array(n));
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}
