/**
 * Opening an image that arrives as a byte stream (a pipe, an HTTP body
 * without Range support). Two layouts are decoded in one pass, with only
 * the metadata before the data spooled: a qcow2 image whose L1 and L2
 * tables all come before its data, with the data in guest order (the
 * streamable layout), and a streamOptimized VMDK (see `vmdk/stream.ts`).
 * Any other image is spooled whole to a temporary file and read from
 * there.
 *
 * @module
 */

import { hex, InternalError } from "../format/errors.ts";
import { decodeL1Entry } from "../format/l1.ts";
import { PROBE_BYTES, probeFormat } from "../format/probe.ts";
import { dataFileName, type Qcow2Header } from "../format/header.ts";
import { compressedRange } from "../format/compressed.ts";
import { geometryOf } from "../format/geometry.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { FileSource } from "../host/file_source.ts";
import { OutputFile } from "../host/output_file.ts";
import { join } from "node:path";
import type { GuestImage } from "./image.ts";
import { openImage, type OpenImageOptions } from "./open.ts";
import { readableFormat } from "./formats.ts";
import { readHeader } from "./qcow2/header.ts";
import { Qcow2Image } from "./qcow2/image.ts";
import { makeTempDirIn, removeTempDir } from "../host/temp.ts";
import { ReferenceGate, topReferrer } from "./references.ts";
import { bytesOnly, unpackStream } from "./packed/unpack.ts";
import { VMDK4_MAGIC } from "./vmdk/sparse.ts";
import { streamOptimizedHeader, StreamOptimizedImage } from "./vmdk/stream.ts";

/**
 * Options of {@linkcode openImageStream}.
 *
 * @example Spool a standard-layout image in a directory of your choice
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { openImageStream, type OpenStreamOptions } from "./stream_open.ts";
 * const spoolDir = await Deno.makeTempDir();
 * const options: OpenStreamOptions = { spoolDir, format: "qcow2" };
 * const qcow2 = await convertToBytes(new Uint8Array(65536).fill(4), { workers: 1 });
 * await using opened = await openImageStream(ReadableStream.from([qcow2]), options);
 * assert.ok(opened.spoolPath.startsWith(spoolDir));
 * assert.deepStrictEqual(await opened.image.readAt(0, 2), new Uint8Array([4, 4]));
 * ```
 */
export interface OpenStreamOptions extends OpenImageOptions {
  /** Directory for spool files. @default {the system temporary directory} */
  spoolDir?: string;
  /**
   * The member of a tar archive to read (default: the only disk in it).
   * Unless `format` is `raw`, a gzip-, xz- or zstd-compressed stream or a
   * tar archive is unpacked as it is read (see `unpackStream`).
   */
  disk?: string;
}

/**
 * An image opened from a stream.
 *
 * @example Say how a piped image was read
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { openImageStream, type StreamedImage } from "./stream_open.ts";
 * const qcow2 = await convertToBytes(new Uint8Array(1 << 20).fill(1), { workers: 1 });
 * await using opened: StreamedImage = await openImageStream(ReadableStream.from([qcow2]));
 * // The standard layout writes L2 tables after the data they map: the image
 * // waits whole in the spool before it is read (the streamable one does not).
 * assert.strictEqual(opened.onePass, false);
 * assert.strictEqual(opened.spoolBytes, qcow2.length);
 * ```
 */
export interface StreamedImage extends AsyncDisposable {
  /**
   * The image. In one-pass mode it must be read once, in order (for
   * example with `readSegments` or `imageReadable`).
   */
  image: GuestImage;
  /** Whether the image is decoded in one pass (else it was spooled whole). */
  onePass: boolean;
  /** Bytes written to the spool file. */
  spoolBytes: number;
  /** The spool file (deleted by `close`). */
  spoolPath: string;
  /** Closes the image and deletes the spool. */
  close(): Promise<void>;
}

/** What a stream's source is called: a name with no directory. */
const STREAM_NAME = "<stream>";

/** How far behind the last read a compressed cluster may start (shared sectors). */
const LOOKBACK = 4096;

/** Reads a stream forward, copying what it reads into a spool while asked to. */
class StreamCursor {
  position = 0;
  done = false;
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #chunks: { at: number; bytes: Uint8Array }[] = [];

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  async #next(): Promise<Uint8Array | undefined> {
    if (this.done) return undefined;
    const { value, done } = await this.#reader.read();
    if (done) {
      this.done = true;
      return undefined;
    }
    return value;
  }

  /** Copies the stream into `spool` until `end` (or the end of the stream). */
  async spoolTo(spool: OutputFile, end: number): Promise<void> {
    while (this.position < end) {
      const chunk = await this.#next();
      if (!chunk) return;
      await spool.writeAt(this.position, chunk);
      this.position += chunk.length;
    }
  }

  /** Reads `[offset, offset + length)` going forward; shorter at the end of the stream. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const oldest = this.#chunks[0]?.at ?? this.position;
    if (offset < oldest) {
      // The layout was found streamable: reads only go forward.
      throw new InternalError(
        `Cannot read ${
          hex(offset)
        } from the stream: it has already gone past (now at ${
          hex(this.position)
        })`,
      );
    }
    while (this.position < offset + length) {
      const chunk = await this.#next();
      if (!chunk) break;
      this.#chunks.push({ at: this.position, bytes: chunk });
      this.position += chunk.length;
      // Keep only what the current request and the lookback need.
      while (
        this.#chunks.length > 1 &&
        this.#chunks[0].at + this.#chunks[0].bytes.length <= offset - LOOKBACK
      ) {
        this.#chunks.shift();
      }
    }
    const end = Math.min(offset + length, this.position);
    const out = new Uint8Array(Math.max(0, end - offset));
    for (const { at, bytes } of this.#chunks) {
      const from = Math.max(offset, at);
      const to = Math.min(end, at + bytes.length);
      if (from < to) out.set(bytes.subarray(from - at, to - at), from - offset);
    }
    while (
      this.#chunks.length > 1 &&
      this.#chunks[0].at + this.#chunks[0].bytes.length <= end - LOOKBACK
    ) {
      this.#chunks.shift();
    }
    return out;
  }

  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

/** The spooled prefix from its file, the rest from the stream. */
class ForwardSource implements RandomAccessSource {
  readonly size = Number.MAX_SAFE_INTEGER;
  readonly name: string;
  #prefix: FileSource;
  #split: number;
  #cursor: StreamCursor;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    prefix: FileSource,
    split: number,
    cursor: StreamCursor,
    name: string,
  ) {
    this.#prefix = prefix;
    this.#split = split;
    this.#cursor = cursor;
    this.name = name;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const job = this.#queue.then(async () => {
      const split = this.#split;
      if (offset + length <= split) {
        return await this.#prefix.read(offset, length);
      }
      if (offset >= split) return await this.#cursor.read(offset, length);
      // Straddles the end of what was spooled.
      const head = await this.#prefix.read(offset, split - offset);
      const tail = await this.#cursor.read(split, offset + length - split);
      const out = new Uint8Array(head.length + tail.length);
      out.set(head);
      out.set(tail, head.length);
      return out;
    });
    this.#queue = job.catch(() => {});
    return job;
  }

  async close(): Promise<void> {
    this.#prefix.close();
    await this.#cursor.cancel();
  }
}

/**
 * Opens an image from a byte stream. The streamable qcow2 layout (all
 * L1/L2 tables before the data, data in guest order) and a streamOptimized
 * VMDK are decoded in one pass with only the metadata spooled; anything
 * else is spooled whole.
 *
 * @param stream The image bytes (compressed or in a tar archive, too).
 * @param options Spool directory, tar member, snapshot, and `openImage`
 * options.
 * @returns The image and how it was opened; close it to delete the spool.
 * @throws {Qcow2Error} When the image is malformed.
 *
 * @example Decode a streamable image in one pass
 * ```ts
 * import assert from "node:assert";
 * import { StreamableQcow2Writer } from "../writer/streamable.ts";
 * import { openImageStream } from "./stream_open.ts";
 * import { imageReadable } from "./segments.ts";
 * await using writer = new StreamableQcow2Writer();
 * const qcow2 = ReadableStream.from([new Uint8Array(300_000).fill(6)]).pipeThrough(writer);
 * await using opened = await openImageStream(qcow2);
 * assert.ok(opened.onePass);
 * const raw = new Uint8Array(await new Response(imageReadable(opened.image)).arrayBuffer());
 * assert.strictEqual(raw[299_999], 6);
 * ```
 */
export async function openImageStream(
  stream: ReadableStream<Uint8Array>,
  options: OpenStreamOptions = {},
): Promise<StreamedImage> {
  const bytes = options.format === "raw" ? stream : bytesOnly(
    (await unpackStream(stream, { disk: options.disk, name: options.name }))
      .stream,
  );
  const spool = await StreamSpool.create(bytes, options.spoolDir);
  try {
    await spool.spoolTo(PROBE_BYTES);
    const head = await (await spool.prefix()).read(0, PROBE_BYTES);
    const format = options.format === "raw"
      ? "raw"
      : options.format !== undefined && options.format !== "auto"
      ? options.format
      : readableFormat(probeFormat(head), STREAM_NAME);
    if (format === "vmdk") {
      const vmdk = await streamOptimized(spool, head, options);
      if (vmdk) return vmdk;
    }
    return format === "qcow2" && await metadataComesFirst(spool, options)
      ? await openOnePass(spool, options)
      : await openSpooled(spool, options);
  } catch (err) {
    await spool.cleanup();
    throw err;
  }
}

/**
 * The stream's bytes so far in a file of their own, in a temporary
 * directory; `prefix()` reads what has been spooled.
 */
class StreamSpool {
  readonly cursor: StreamCursor;
  readonly file: OutputFile;
  readonly #dir: string;
  #prefix: FileSource | undefined;

  private constructor(cursor: StreamCursor, file: OutputFile, dir: string) {
    this.cursor = cursor;
    this.file = file;
    this.#dir = dir;
  }

  static async create(
    stream: ReadableStream<Uint8Array>,
    spoolDir: string | undefined,
  ): Promise<StreamSpool> {
    const dir = makeTempDirIn("qcow2pipe-stream-", spoolDir);
    const file = await OutputFile.create(join(dir, "stream"));
    return new StreamSpool(new StreamCursor(stream), file, dir);
  }

  /** Spools the stream up to `end` (or its end). */
  async spoolTo(end: number): Promise<void> {
    await this.cursor.spoolTo(this.file, end);
  }

  /** A source over everything spooled so far. */
  async prefix(): Promise<FileSource> {
    await this.file.flush();
    this.#prefix?.close();
    this.#prefix = await FileSource.open(this.file.writingPath);
    return this.#prefix;
  }

  /** Stops reading the stream and deletes the spool. */
  async cleanup(): Promise<void> {
    this.#prefix?.close();
    await this.cursor.cancel();
    await this.file.abort();
    await removeTempDir(this.#dir);
  }
}

/**
 * Opens a streamOptimized VMDK to be decoded in one pass: spools what
 * comes before its grains (the header, the descriptor, and in QEMU's
 * layout the tables), and reads the grains from the stream as they come.
 * Undefined for any other VMDK (a descriptor file, a sparse file that is
 * not streamOptimized or names a parent): it is spooled whole.
 */
async function streamOptimized(
  spool: StreamSpool,
  head: Uint8Array,
  options: OpenStreamOptions,
): Promise<StreamedImage | undefined> {
  if (
    options.snapshot !== undefined || head.length < 512 ||
    new DataView(head.buffer, head.byteOffset).getUint32(0) !== VMDK4_MAGIC
  ) return undefined;
  const name = options.name ?? STREAM_NAME;
  // Where the grains start (u64 sectors at byte 64), as far as it can be
  // spooled; the header itself is checked by streamOptimizedHeader.
  const grainOffset = new DataView(head.buffer, head.byteOffset)
    .getBigUint64(64, true);
  if (grainOffset * 512n > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
  await spool.spoolTo(Number(grainOffset) * 512);
  const prefix = await spool.prefix();
  const header = await streamOptimizedHeader(prefix, name);
  if (!header) return undefined;
  const split = spool.cursor.position;
  const forward = new ForwardSource(prefix, split, spool.cursor, STREAM_NAME);
  const image = new StreamOptimizedImage({
    header,
    prefix,
    bytes: forward,
    name,
    close: () => forward.close(),
  });
  return opened(
    image,
    true,
    split,
    spool.file.writingPath,
    () => spool.cleanup(),
  );
}

/**
 * Spools the stream's metadata and says whether the qcow2 image can be
 * decoded in one pass: no references and no snapshot asked for, and its
 * L1 and L2 tables all come before its data, with the data in guest
 * order.
 */
async function metadataComesFirst(
  spool: StreamSpool,
  options: OpenStreamOptions,
): Promise<boolean> {
  // The first cluster holds the header, its extensions and the backing
  // file name; its cluster size is in bytes 20-23.
  const first = await (await spool.prefix()).read(20, 4);
  const clusterBits = first.length === 4
    ? new DataView(first.buffer, first.byteOffset).getUint32(0)
    : 16;
  await spool.spoolTo(2 ** Math.min(Math.max(clusterBits, 9), 21));
  const header = await readHeader(await spool.prefix());
  const references = header.backingFile !== undefined ||
    geometryOf(header).dataFile;
  if (references) await decideEarly(header, options);
  if (references || options.snapshot) return false;
  const l1End = header.l1TableOffset + header.l1Size * 8;
  await spool.spoolTo(l1End);
  const l1 = header.l1Size > 0
    ? await (await spool.prefix()).read(header.l1TableOffset, header.l1Size * 8)
    : new Uint8Array(0);
  if (l1.length !== header.l1Size * 8) return false;
  let metaEnd = l1End;
  for (let i = 0; i < header.l1Size; i++) {
    const { l2Offset } = decodeL1Entry(l1, i);
    if (l2Offset !== 0) {
      metaEnd = Math.max(metaEnd, l2Offset + 2 ** header.clusterBits);
    }
  }
  await spool.spoolTo(metaEnd);
  return await dataFollowsInOrder(await spool.prefix(), header, metaEnd);
}

/**
 * Opens an image whose metadata is spooled: what was read so far comes
 * from the spool file, the rest from the stream as the reads go forward.
 */
async function openOnePass(
  spool: StreamSpool,
  options: OpenStreamOptions,
): Promise<StreamedImage> {
  const src = await spool.prefix();
  const header = await readHeader(src);
  const split = spool.cursor.position;
  const forward = new ForwardSource(src, split, spool.cursor, STREAM_NAME);
  const image = await Qcow2Image.create({
    source: forward,
    header,
    backing: undefined,
    dataFile: undefined,
    snapshot: undefined,
    snapshots: [],
    cacheBytes: options.cacheBytes ?? SCAN_CACHE_BYTES,
    ownsSource: true,
  });
  return opened(
    image,
    true,
    split,
    spool.file.writingPath,
    () => spool.cleanup(),
  );
}

/** Spools the rest of the stream and opens the copy, read at random offsets. */
async function openSpooled(
  spool: StreamSpool,
  options: OpenStreamOptions,
): Promise<StreamedImage> {
  await spool.spoolTo(Infinity);
  await spool.file.flush();
  // Named as the stream, not the spool file: the names the image gives
  // resolve against `relativeTo`, never inside the spool directory.
  const spooled = await FileSource.open(spool.file.writingPath, STREAM_NAME);
  let image: GuestImage;
  try {
    image = await openImage(spooled, options);
  } catch (err) {
    spooled.close();
    throw err;
  }
  const path = spool.file.writingPath;
  return opened(image, false, spool.cursor.position, path, async () => {
    spooled.close();
    await spool.cleanup();
  });
}

/**
 * Asks the gate about the files the header names before the stream is
 * spooled whole, so that a refused reference (a probed stream names any)
 * stops the run at its first cluster. What is allowed is decided again,
 * and opened, when the spooled image is opened.
 */
async function decideEarly(
  header: Qcow2Header,
  options: OpenStreamOptions,
): Promise<void> {
  const given = options.format !== undefined && options.format !== "auto";
  const referrer = topReferrer(
    STREAM_NAME,
    given,
    options.relativeTo,
    options.name,
  );
  const gate = new ReferenceGate({ policy: options.references });
  const data = dataFileName(header);
  if (geometryOf(header).dataFile && data !== undefined) {
    await gate.dataFile(referrer, data);
  }
  if (header.backingFile) await gate.backing(referrer, header.backingFile);
}

function opened(
  image: GuestImage,
  onePass: boolean,
  spoolBytes: number,
  spoolPath: string,
  cleanup: () => Promise<void>,
): StreamedImage {
  const close = async () => {
    await image.close();
    await cleanup();
  };
  return {
    image,
    onePass,
    spoolBytes,
    spoolPath,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** L2 cache of the images decoded here, in bytes. */
const SCAN_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Whether every data and compressed cluster lies at or after `metaEnd` and
 * the reads in guest order only go forward (compressed clusters may share
 * their first sector with the previous one): asked of the image's own
 * lookup over the spooled metadata, as the one-pass read will ask it.
 *
 * @throws {Qcow2Error} When the tables are malformed (as the read would).
 */
async function dataFollowsInOrder(
  prefix: RandomAccessSource,
  header: Qcow2Header,
  metaEnd: number,
): Promise<boolean> {
  const image = await Qcow2Image.create({
    source: prefix,
    header,
    backing: undefined,
    dataFile: undefined,
    snapshot: undefined,
    snapshots: [],
    cacheBytes: SCAN_CACHE_BYTES,
  });
  let lastEnd = metaEnd;
  for await (const m of image.mapping.mappings(0, image.virtualSize)) {
    let start: number, end: number;
    if (m.type === "normal") {
      start = m.hostOffset!;
      end = start + m.length;
    } else if (m.type === "compressed") {
      // A span no number holds cannot be read in order, or at all.
      if (m.compressed === undefined) return false;
      const r = compressedRange(m.compressed);
      start = r.offset;
      end = r.offset + r.length;
    } else {
      continue;
    }
    if (start < lastEnd - (m.type === "compressed" ? 512 : 0)) return false;
    lastEnd = Math.max(lastEnd, end);
  }
  return true;
}
