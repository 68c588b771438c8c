/**
 * `mapImage()`: which guest ranges of an image (and its backing chain) are
 * allocated, zero or data, and where they live, exactly as
 * `qemu-img map --output=json` (QEMU 7.2) reports and merges them.
 *
 * @module
 */

import type { ReferencePolicy } from "../reader/references.ts";
import type { ImageFormat } from "../reader/open.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { type ImageInput, openForTool, type OpenSource } from "./_open.ts";
import { type StatusRun, statusRuns } from "./_status.ts";

/**
 * One range of the map: the fields of `qemu-img map --output=json`, plus
 * the file holding `offset` and whether the range is compressed (QEMU 7.2
 * reports neither in JSON).
 *
 * @example The map of a sparse image
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { type MapEntry, mapImage } from "./map.ts";
 * const raw = new Uint8Array(4 << 16);
 * raw[0] = 1;
 * const entries: MapEntry[] = await mapImage(await convertToBytes(raw, { workers: 1 }));
 * assert.deepStrictEqual(entries.map((e) => e.data), [true, false]);
 * ```
 */
export interface MapEntry {
  /** Guest offset. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** Image of the backing chain that answers (0 is the top image). */
  depth: number;
  /** Allocated in that image (a zero or data cluster, or raw bytes). */
  present: boolean;
  /** Reads as zeros. */
  zero: boolean;
  /** Holds data. */
  data: boolean;
  /** Host offset of `start`, when QEMU reports one (not for compressed or encrypted clusters). */
  offset?: number;
  /** File holding `offset` (the image, its data file, or a backing file). */
  file?: string;
  /** The range is made of compressed clusters. */
  compressed?: boolean;
}

/**
 * Options of {@linkcode mapImage}.
 *
 * @example Map only the second cluster
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { mapImage, type MapImageOptions } from "./map.ts";
 * const options: MapImageOptions = { start: 65536, length: 65536 };
 * const qcow2 = await convertToBytes(new Uint8Array(4 << 16).fill(1), { workers: 1 });
 * const [entry] = await mapImage(qcow2, options);
 * assert.strictEqual(entry.start, 65536);
 * ```
 */
export interface MapImageOptions {
  /**
   * Guest offset to start at (`qemu-img map --start-offset`).
   * @default {0}
   */
  start?: number;
  /**
   * Bytes to map at most (`--max-length`).
   * @default {the rest of the disk}
   */
  length?: number;
  /**
   * Format of the image; probed when absent or `auto`.
   * @default {"auto"}
   */
  format?: ImageFormat;
  /**
   * Which backing and data files may be followed (see `openImage`).
   * @default {"auto"}
   */
  references?: ReferencePolicy;
  /** Opens backing and data files by name; default: local files and http(s) URLs held to their origin (`openByName`). */
  openSource?: OpenSource;
  /** How the default opener fetches URLs (idle timeout, retries...). */
  http?: HttpTransport;
  /**
   * Ask the file system where local files have holes (QEMU does, through
   * SEEK_DATA/SEEK_HOLE, for raw files and for qcow2 images with
   * preallocated metadata; needs FFI). Without it, file bytes are data.
   * @default {true}
   */
  holes?: boolean;
}

function mergeable(a: MapEntry, b: StatusRun): boolean {
  if (a.length === 0) return false;
  if (
    a.zero !== b.zero || a.data !== b.data || a.depth !== b.depth ||
    a.present !== b.present ||
    (a.offset === undefined) !== (b.offset === undefined) ||
    a.file !== b.file
  ) {
    return false;
  }
  return a.offset === undefined || a.offset + a.length === b.offset;
}

function toEntry(run: StatusRun): MapEntry {
  const e: MapEntry = {
    start: run.start,
    length: run.length,
    depth: run.depth,
    present: run.present,
    zero: run.zero,
    data: run.data,
  };
  if (run.offset !== undefined) {
    e.offset = run.offset;
    e.file = run.file;
  }
  if (run.compressed) e.compressed = true;
  return e;
}

/**
 * The map of an image as an async sequence of merged entries, in guest
 * order; memory stays bounded whatever the image size.
 *
 * @param input A path, a source or the image bytes (qcow2 or raw).
 * @param options Range, how to open related files, hole detection.
 * @returns The entries, as `qemu-img map --output=json` lists them.
 * @throws {Qcow2Error} When the image cannot be opened or its tables are
 * corrupt (where QEMU fails with "Could not read file metadata").
 *
 * @example List the entries of a small image
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { mapImageEntries } from "@qcow2pipe/qcow2pipe/tools";
 * const raw = new Uint8Array(3 * 65536);
 * raw.fill(1, 65536, 131072);
 * const entries = [];
 * for await (const e of mapImageEntries(await convertToBytes(raw))) entries.push(e);
 * assert.deepStrictEqual(entries.map((e) => [e.start, e.data]), [[0, false], [65536, true], [131072, false]]);
 * ```
 */
export async function* mapImageEntries(
  input: ImageInput,
  options: MapImageOptions = {},
): AsyncGenerator<MapEntry> {
  const image = await openForTool(input, {
    purpose: "inspect",
    format: options.format,
    references: options.references,
    openSource: options.openSource,
    http: options.http,
  });
  const holes = options.holes ?? true;
  try {
    const size = image.virtualSize;
    const start = options.start ?? 0;
    if (!Number.isSafeInteger(start) || start < 0) {
      throw new RangeError(
        `Cannot map image: start ${start} is out of range [0, 2^53)`,
      );
    }
    if (
      options.length !== undefined &&
      (!Number.isSafeInteger(options.length) || options.length < 0)
    ) {
      throw new RangeError(
        `Cannot map image: length ${options.length} is out of range [0, 2^53)`,
      );
    }
    const end = options.length === undefined
      ? size
      : Math.min(size, start + options.length);
    let curr: MapEntry = {
      start,
      length: 0,
      depth: 0,
      present: false,
      zero: false,
      data: false,
    };
    if (start < end) {
      for await (
        const run of statusRuns(image, start, end - start, { holes })
      ) {
        if (mergeable(curr, run)) {
          curr.length += run.length;
          if (!run.compressed) delete curr.compressed;
          continue;
        }
        if (curr.length > 0) yield curr;
        curr = toEntry(run);
      }
    }
    yield curr;
  } finally {
    await image.close();
  }
}

/**
 * The map of an image as an array; see {@linkcode mapImageEntries}.
 *
 * @param input A path, a source or the image bytes (qcow2 or raw).
 * @param options Range, how to open related files, hole detection.
 * @returns The entries, as `qemu-img map --output=json` lists them.
 * @throws {Qcow2Error} When the image cannot be opened or its tables are
 * corrupt.
 *
 * @example An empty qcow2 image is one unallocated range
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { mapImage } from "@qcow2pipe/qcow2pipe/tools";
 * const map = await mapImage(await convertToBytes(new Uint8Array(1 << 20)));
 * assert.deepStrictEqual(map, [
 *   { start: 0, length: 1 << 20, depth: 0, present: false, zero: true, data: false },
 * ]);
 * ```
 */
export async function mapImage(
  input: ImageInput,
  options: MapImageOptions = {},
): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  for await (const e of mapImageEntries(input, options)) out.push(e);
  return out;
}
