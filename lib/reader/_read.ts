// Reading plan items: shared by the image types and the segment stream.
import { hex, InternalError, Qcow2Error } from "../format/errors.ts";
import { compressedRange } from "../format/compressed.ts";
import {
  type ClusterCodec,
  type CompressionType,
  createCodec,
} from "../codec/codecs.ts";
import type { Extent, GuestImage, PlanItem } from "./image.ts";
import { readError } from "../io/os_errors.ts";

/** Guest bytes a plan could not map, told with the error that says why. */
export interface GuestRange {
  /** Guest offset. */
  offset: number;
  /** Bytes. */
  length: number;
}

/** Plan errors that cover a known guest range and nothing beyond it. */
const unreadableRanges = new WeakMap<Error, GuestRange>();

/**
 * Records that `err`, thrown while planning, is about `range` alone: a
 * salvaging read ({@linkcode ReadImageOptions.salvage}) reads those bytes
 * as zeros and plans on after them. An error without one still stops it.
 */
export function unreadable<E extends Error>(err: E, range: GuestRange): E {
  unreadableRanges.set(err, range);
  return err;
}

/** The guest range a plan error is about (it or an error it wraps). */
export function unreadableRange(err: unknown): GuestRange | undefined {
  for (let e = err; e instanceof Error; e = e.cause) {
    const range = unreadableRanges.get(e);
    if (range) return range;
  }
  return undefined;
}

/** The public part of a plan item. */
export function toExtent(item: PlanItem): Extent {
  const e: Extent = {
    offset: item.offset,
    length: item.length,
    kind: item.kind,
    depth: item.depth,
  };
  if (item.hostOffset !== undefined) e.hostOffset = item.hostOffset;
  if (item.file !== undefined) e.file = item.file;
  return e;
}

const codecs = new Map<CompressionType, Promise<ClusterCodec>>();
/** A main-thread codec for random reads (the stream path uses the pool). */
export function inlineCodec(type: CompressionType): Promise<ClusterCodec> {
  let codec = codecs.get(type);
  if (!codec) {
    codec = createCodec({ type });
    codecs.set(type, codec);
  }
  return codec;
}

/**
 * Reads the host bytes of a `data` item; past the end of the file reads
 * zeros. With `into` (at least `item.length` bytes) and a source that reads
 * into buffers, the bytes land there.
 */
export async function readDataItem(
  item: PlanItem,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const source = item.source!;
  let bytes: Uint8Array;
  try {
    if (into && source.readInto) {
      const target = into.subarray(0, item.length);
      const n = await source.readInto(item.hostOffset!, target);
      target.fill(0, n);
      return target;
    }
    bytes = await source.read(item.hostOffset!, item.length);
  } catch (err) {
    throw readError(
      `guest offset ${hex(item.offset)}: ${item.length} bytes at host offset ${
        hex(item.hostOffset!)
      } of ${source.name ?? "the image"}`,
      err,
    );
  }
  if (bytes.length === item.length) return bytes;
  const out = new Uint8Array(item.length);
  out.set(bytes);
  return out;
}

/** Reads the compressed payload of a `compressed` item (clamped at end of file). */
export async function readCompressedPayload(
  item: PlanItem,
): Promise<Uint8Array> {
  const { offset, length } = compressedRange(item.compressed!.descriptor);
  try {
    return await item.source!.read(offset, length);
  } catch (err) {
    throw readError(`compressed cluster at host offset ${hex(offset)}`, err);
  }
}

/** Adds where a decompression failed to a codec error. */
export function decompressError(item: PlanItem, err: unknown): Error {
  // A codec that failed (a crashed worker) says nothing about the image.
  if (err instanceof InternalError) return err;
  const c = item.compressed!;
  // Said of the file that holds the cluster (a backing file's, in a chain).
  const file = item.source?.name;
  const of = file === undefined || /^<.*>$/.test(file) ? "" : ` of ${file}`;
  const error = new Qcow2Error(
    "DECOMPRESS",
    `Cannot read guest offset ${
      hex(c.clusterOffset)
    }${of}: ${c.type} cluster at host offset ${
      hex(c.descriptor.hostOffset)
    } (${c.descriptor.sectors} sectors): ${
      (err as Error).message.replace(/^Cannot decompress cluster: /, "")
    }`,
    { offset: c.descriptor.hostOffset, cause: err },
  );
  return of ? attributed(error) : error;
}

/** Decompresses a compressed item's whole cluster on this thread. */
export async function readCompressedItem(item: PlanItem): Promise<Uint8Array> {
  const c = item.compressed!;
  const payload = await readCompressedPayload(item);
  const codec = await inlineCodec(c.type);
  let cluster: Uint8Array;
  try {
    cluster = codec.decompress(payload, c.clusterSize);
  } catch (err) {
    throw decompressError(item, err);
  }
  const from = item.offset - c.clusterOffset;
  return cluster.subarray(from, from + item.length);
}

/**
 * Reads `[offset, offset + length)` of an image by walking its plan; into
 * `into` (at least `length` bytes, a buffer the caller reuses) when given.
 */
export async function readThroughPlan(
  image: Pick<GuestImage, "plan">,
  offset: number,
  length: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const out = into ? into.subarray(0, length) : new Uint8Array(length);
  for await (const item of image.plan(offset, length, 0)) {
    const at = item.offset - offset;
    if (item.kind === "data") {
      // Read in place where the source can: no second buffer, no copy.
      const bytes = await readDataItem(item, out.subarray(at));
      if (bytes.buffer !== out.buffer) out.set(bytes, at);
    } else if (item.kind === "compressed") {
      out.set(await readCompressedItem(item), at);
    } else if (into) out.fill(0, at, at + item.length); // not fresh zeros
  }
  return out;
}

/** The extents of `[offset, offset + length)` of an image, from its plan. */
export async function* extentsOf(
  image: Pick<GuestImage, "plan" | "virtualSize">,
  offset: number,
  length: number | undefined,
): AsyncGenerator<Extent> {
  const items = image.plan(offset, length ?? image.virtualSize - offset, 0);
  for await (const item of items) yield toExtent(item);
}

/**
 * Errors that say which image or file they are about: an image further
 * down a chain named them, and the images above leave them so.
 */
const named = new WeakSet<Error>();

/** Records that an error names its image, and gives it back. */
function attributed<E extends Error>(err: E): E {
  named.add(err);
  return err;
}

/** Whether `text` names `name` as a word of its own (not inside another). */
function mentions(text: string, name: string): boolean {
  const escaped = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?:^|[\\s"'(])${escaped}(?:$|[\\s"'():,;])`).test(text);
}

/**
 * An error about an image, saying which: a format's reason worded without
 * the image's name gets it, so that a command reading two images
 * (compare), or an image and its backing files, tells which one failed.
 * `Cannot open image: REASON` becomes `Cannot open image NAME: REASON`;
 * any other action gets `of NAME` (`Cannot read snapshot 0 header of
 * NAME: REASON`, `Cannot read guest offset 0x0 of NAME: REASON`). An error
 * that names the image already, or names another file (a quoted name), or
 * of an image without a name, is left as it is.
 *
 * @param err What opening or reading the image threw.
 * @param name What the image is called (its path, URL or source name).
 * @returns The error to throw.
 */
export function aboutImage(err: unknown, name: string): unknown {
  // A placeholder (`<buffer>`, `<stream>`) says nothing a reader could use.
  if (
    !(err instanceof Qcow2Error) || named.has(err) || /^<.*>$/.test(name)
  ) return err;
  const m = /^Cannot ([^:"]*): /.exec(err.message);
  if (!m || mentions(err.message, name)) return err;
  const action = /\bimage$/.test(m[1])
    ? `${m[1]} ${name}`
    : `${m[1]} of ${name}`;
  return attributed(
    new Qcow2Error(
      err.code,
      `Cannot ${action}: ${err.message.slice(m[0].length)}`,
      { offset: err.offset, field: err.field, qemu: err.qemu, cause: err },
    ),
  );
}

/**
 * What every format's image answers from its plan: its reads and its
 * extents, their errors naming the image ({@linkcode aboutImage}). Each
 * image class extends it and gives `planRange()`, `name` and
 * `virtualSize`.
 */
export abstract class PlannedImage {
  /** The guest disk's size in bytes. */
  abstract readonly virtualSize: number;
  /** What the image is called in messages: its path, URL or source name. */
  abstract readonly name: string;

  /**
   * Plans reading `[offset, offset + length)`: the format's own walk.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth of this image in the chain.
   * @returns Plan items, in guest order.
   */
  protected abstract planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem>;

  /**
   * Plans reading `[offset, offset + length)`.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param depth Depth of this image in the chain.
   * @returns Plan items, in guest order.
   * @throws {Qcow2Error} When the image's tables are malformed, naming it.
   */
  async *plan(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    try {
      yield* this.planRange(offset, length, depth);
    } catch (err) {
      throw aboutImage(err, this.name);
    }
  }

  /**
   * Reads guest bytes by walking the plan (zeros where nothing is stored).
   *
   * @param offset Guest offset.
   * @param length Bytes wanted.
   * @returns The bytes.
   * @throws {Qcow2Error} When the image is malformed, naming it.
   */
  async readAt(offset: number, length: number): Promise<Uint8Array> {
    try {
      return await readThroughPlan(this, offset, length);
    } catch (err) {
      throw aboutImage(err, this.name);
    }
  }

  /**
   * Lists the extents of a range in order, from the plan.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover (the rest of the disk by default).
   * @returns The extents.
   */
  extents(offset = 0, length?: number): AsyncGenerator<Extent> {
    return extentsOf(this, offset, length);
  }
}

/** Plans a range of a backing image; beyond its end the guest reads zeros. */
export async function* planBacking(
  backing: GuestImage,
  offset: number,
  length: number,
  depth: number,
): AsyncGenerator<PlanItem> {
  const inside = Math.max(0, Math.min(length, backing.virtualSize - offset));
  if (inside > 0) yield* backing.plan(offset, inside, depth);
  if (inside < length) {
    yield {
      offset: offset + inside,
      length: length - inside,
      kind: "unallocated",
      depth,
    };
  }
}
