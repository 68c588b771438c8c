/**
 * What every opened image offers the reverse pipeline: its size, random
 * reads, and a map of extents.
 *
 * @module
 */

import type { CompressedDescriptor } from "../format/compressed.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { CompressionType } from "../codec/codecs.ts";

/**
 * How a guest range reads.
 *
 * - `data`: bytes stored in a file (`hostOffset` says where)
 * - `compressed`: part of a compressed cluster
 * - `zero`: the image says it reads as zeros
 * - `unallocated`: no image in the chain holds it; reads as zeros
 *
 * @example Count the unallocated extents of a sparse image
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import type { ExtentKind } from "./image.ts";
 * const raw = new Uint8Array(4 << 16);
 * raw[0] = 1;
 * await using image = await openImage(await convertToBytes(raw, { workers: 1 }));
 * const kinds: ExtentKind[] = [];
 * for await (const e of image.extents()) kinds.push(e.kind);
 * assert.deepStrictEqual(kinds, ["data", "unallocated"]);
 * ```
 */
export type ExtentKind = "data" | "compressed" | "zero" | "unallocated";

/**
 * A guest range with one way of reading, as {@linkcode GuestImage.extents}
 * reports it.
 *
 * @example Where the data of a qcow2 image is stored
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import type { Extent } from "./image.ts";
 * await using image = await openImage(await convertToBytes(new Uint8Array(65536).fill(1), { workers: 1 }));
 * const [first]: Extent[] = await Array.fromAsync(image.extents());
 * assert.strictEqual(first.kind, "data");
 * assert.strictEqual(first.hostOffset! % 65536, 0);
 * ```
 */
export interface Extent {
  /** Guest offset. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** How it reads. */
  kind: ExtentKind;
  /** Which image of the backing chain answers: 0 is the top image. */
  depth: number;
  /**
   * `data`: host offset of the extent's first byte; `compressed`: host
   * offset of the compressed data. Absent otherwise.
   */
  hostOffset?: number;
  /** Name of the file holding the bytes (`data`, `compressed`). */
  file?: string;
}

/**
 * A read plan item: an extent plus what is needed to read it. Internal to
 * the reader; {@linkcode GuestImage.extents} exposes the {@linkcode Extent}
 * part.
 */
export interface PlanItem extends Extent {
  /** Where `data` and `compressed` bytes live. */
  source?: RandomAccessSource;
  /** `compressed`: everything needed to decompress the whole cluster. */
  compressed?: {
    descriptor: CompressedDescriptor;
    /** Guest offset where the cluster starts. */
    clusterOffset: number;
    clusterSize: number;
    type: CompressionType;
  };
}

/**
 * A run of guest bytes: `data` holds them, or is `null` when they are all
 * zeros (a hole).
 *
 * @example Count the bytes an expansion would write
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { readSegments, type Segment } from "./segments.ts";
 * const raw = new Uint8Array(1 << 20);
 * raw.fill(1, 0, 4096);
 * await using image = await openImage(raw);
 * const segments: Segment[] = await Array.fromAsync(readSegments(image));
 * assert.strictEqual(segments.reduce((n, s) => n + s.length, 0), 1 << 20);
 * ```
 */
export interface Segment {
  /** Guest offset. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** The bytes, or null for zeros (or for bytes already `copied`). */
  data: Uint8Array | null;
  /**
   * The bytes were copied into the output already, file to file, by the
   * `copy` function given to `readSegments()`; `data` is null.
   */
  copied?: true;
}

/**
 * One run of an image's own block status: how the image itself (not its
 * backing chain) answers for a guest range, as a QEMU block driver's
 * `bdrv_co_block_status` does. `qemu-img map` and `compare` build on it,
 * descending into the backing image where a run is not allocated. Internal
 * to the reader and the tools.
 */
export interface BlockStatus {
  /** Guest offset. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** Whether this image answers for the range (else its backing image does, or zeros). */
  allocated: boolean;
  /** Reads as zeros. */
  zero: boolean;
  /** Holds data. */
  data: boolean;
  /** Host offset of `offset` in `file`, when the format reports one. */
  hostOffset?: number;
  /** Name of the file holding `hostOffset` (the image or its data file). */
  file?: string;
  /** The range is made of compressed clusters. */
  compressed?: boolean;
}

/** Options of {@linkcode GuestImage.blockStatus}. */
export interface BlockStatusOptions {
  /**
   * Ask the file system where local files have holes, as QEMU does
   * (SEEK_DATA / SEEK_HOLE); without it every byte of a file is data.
   */
  holes: boolean;
}

/**
 * A value of QEMU's format-specific information (a QAPI object's JSON).
 *
 * @example The compat level of a qcow2 image, as `info --output=json` has it
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { imageInfo, type InfoValue } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { workers: 1 }));
 * const compat: InfoValue | undefined = info.formatSpecific?.data.compat;
 * assert.strictEqual(compat, "1.1");
 * ```
 */
export type InfoValue =
  | string
  | number
  | boolean
  | InfoValue[]
  | { [key: string]: InfoValue };

/**
 * An internal snapshot as `qemu-img info` lists it.
 *
 * @example List the snapshots of an image (ours has none)
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { imageInfo, type SnapshotInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { workers: 1 }));
 * const names = info.snapshots.map((s: SnapshotInfo) => `${s.id} ${s.name}`);
 * assert.deepStrictEqual(names, []);
 * ```
 */
export interface SnapshotInfo {
  /** Unique ID. */
  id: string;
  /** Name (tag). */
  name: string;
  /** Bytes of saved VM state. */
  vmStateSize: number;
  /** When it was taken: seconds since the epoch. */
  dateSec: number;
  /** Nanosecond part of the date. */
  dateNsec: number;
  /** Guest run time in nanoseconds. */
  vmClockNsec: bigint;
  /** Instruction count (record/replay), when recorded. */
  icount?: bigint;
}

/**
 * What a format's own consistency check found (QEMU's `bdrv_co_check` of
 * the VDI, VMDK and VHDX drivers): a neutral result that `checkImage`
 * turns into `qemu-img check`'s summary and exit status. Internal to the
 * reader and the tools.
 */
export interface FormatCheck {
  /** Problems counted as corruptions. */
  corruptions: number;
  /** The line QEMU prints on standard error for each problem, in order. */
  messages: string[];
  /**
   * Set when the check stopped before the end, as QEMU's does with an
   * error: the `strerror()` text qemu-img prints after "Check failed: "
   * (`Invalid argument`).
   */
  failure?: string;
}

/**
 * What an image says of itself for `qemu-img info` (QEMU's `bdrv_get_info`
 * and `bdrv_get_specific_info`): the generic fields, and the format's own
 * section. Internal to the reader and the tools.
 */
export interface ImageDescription {
  /** Virtual size as QEMU sees it (whole 512-byte sectors). */
  virtualSize: number;
  /** The dirty bit (lazy refcounts not yet written back). */
  dirty: boolean;
  /** Cluster size, for formats that have one. */
  clusterSize?: number;
  /** Whether guest data is encrypted (present only when it is). */
  encrypted?: boolean;
  /** Backing file name as stored in the image. */
  backingFile?: string;
  /** Backing format, when the image names one. */
  backingFormat?: string;
  /** Internal snapshots. */
  snapshots: SnapshotInfo[];
  /**
   * QEMU's `format-specific` object: the format's name and its data, with
   * QAPI key names in schema order (what `info` prints under "Format
   * specific information").
   */
  specific?: { type: string; data: { [key: string]: InfoValue } };
  /** The same section as typed fields, for the library's callers. */
  details?: unknown;
}

/**
 * An opened disk image (qcow2 or raw) as the guest sees it.
 *
 * @example Read from a raw image in memory
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * import { BytesSource } from "../io/source.ts";
 * await using image = await openImage(new BytesSource(new Uint8Array(1024).fill(5)));
 * assert.strictEqual(image.format, "raw");
 * assert.deepStrictEqual(await image.readAt(10, 2), new Uint8Array([5, 5]));
 * ```
 */
export interface GuestImage extends AsyncDisposable {
  /** The image's format, as qemu-img names it: `qcow2` or `raw`. */
  readonly format: string;
  /** Virtual disk size in bytes. */
  readonly virtualSize: number;
  /** Name of the image (path or URL) for messages. */
  readonly name: string;
  /** The backing image, if any. */
  readonly backing: GuestImage | undefined;
  /**
   * Reads guest bytes.
   *
   * @throws {RangeError} When the range is outside the virtual disk.
   * @throws {Qcow2Error} When the image is corrupt.
   */
  readAt(offset: number, length: number): Promise<Uint8Array>;
  /** Lists the extents covering `[offset, offset + length)`, in order. */
  extents(offset?: number, length?: number): AsyncGenerator<Extent>;
  /**
   * Like `extents`, with what is needed to read each one: the hook the
   * segment reader uses, not part of the public API.
   *
   * @ignore
   */
  plan(offset: number, length: number, depth: number): AsyncGenerator<PlanItem>;
  /**
   * This image's own block status over `[offset, offset + length)`, in
   * order: the hook `map` and `compare` use, not part of the public API.
   *
   * @ignore
   */
  blockStatus(
    offset: number,
    length: number,
    options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus>;
  /**
   * What `info` says of this image: the hook the tools use, not part of
   * the public API.
   *
   * @ignore
   */
  describe(): Promise<ImageDescription>;
  /**
   * The format's own consistency check, where QEMU 7.2 has one (VDI, VMDK,
   * VHDX; qcow2's is `checkImage` itself): the hook `check` uses, not part
   * of the public API. Formats without one leave it out (`qemu-img check`
   * says "This image format does not support checks").
   *
   * @ignore
   */
  check?(): Promise<FormatCheck>;
  /**
   * Every source this image reads: its own file, its external data file,
   * then its backing chain's, top image first. Whoever writes a file
   * compares it with these, so that no input is overwritten.
   *
   * @returns The sources, in that order.
   *
   * @example The files a qcow2 overlay reads
   * ```ts
   * import assert from "node:assert";
   * import { convertToBytes, openImage } from "../../mod.ts";
   * const dir = await Deno.makeTempDir();
   * await Deno.writeFile(`${dir}/base.raw`, new Uint8Array(65536));
   * const overlay = await convertToBytes(new Uint8Array(65536), {
   *   backingFile: { name: "base.raw", format: "raw" },
   * });
   * await Deno.writeFile(`${dir}/top.qcow2`, overlay);
   * await using image = await openImage(`${dir}/top.qcow2`, { format: "qcow2" });
   * const names = image.sources().map((s) => s.name);
   * assert.deepStrictEqual(names, [`${dir}/top.qcow2`, `${dir}/base.raw`]);
   * await Deno.remove(dir, { recursive: true });
   * ```
   */
  sources(): RandomAccessSource[];
  /** Closes the image and its backing chain. */
  close(): Promise<void>;
}
