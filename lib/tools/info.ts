/**
 * `imageInfo()`: what `qemu-img info` reports about an image: format,
 * sizes, backing file, snapshots and the qcow2 specifics (features,
 * bitmaps, encryption), for qcow2 and raw images. Images the reader
 * refuses (encrypted, corrupt bit) still get their info, as in QEMU.
 *
 * @module
 */

import type { HttpTransport } from "../io/http_source.ts";
import { hostFiles } from "../io/host_files.ts";
import type { GuestImage, InfoValue, SnapshotInfo } from "../reader/image.ts";
import type { FormatName } from "../reader/formats.ts";
import type { Qcow2Info } from "../reader/qcow2/info.ts";
import {
  directoryOf,
  type ReferencePolicy,
  resolveName,
} from "../reader/references.ts";
import type { ImageFormat } from "../reader/open.ts";
import { type ImageInput, openForTool, type OpenSource } from "./_open.ts";

export type { LuksInfo, LuksSlotInfo } from "../format/luks.ts";
export type { InfoValue, SnapshotInfo } from "../reader/image.ts";
export type { BitmapInfo, Qcow2Info } from "../reader/qcow2/info.ts";

/**
 * What `qemu-img info` reports about one image.
 *
 * @example Tell raw from qcow2 and read the virtual size
 * ```ts
 * import assert from "node:assert";
 * import { imageInfo, type ImageInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const info: ImageInfo = await imageInfo(new Uint8Array(1000));
 * assert.strictEqual(info.format, "raw");
 * assert.strictEqual(info.virtualSize, 1024); // whole sectors, as QEMU says
 * ```
 */
export interface ImageInfo {
  /** The name the image was opened by. */
  filename: string;
  /** The format: `qcow2` or `raw`. */
  format: FormatName;
  /** Virtual size as QEMU sees it (whole 512-byte sectors). */
  virtualSize: number;
  /** Bytes allocated on disk (local files only). */
  actualSize?: number;
  /** The dirty bit (lazy refcounts not yet written back). */
  dirty: boolean;
  /** Cluster size (qcow2). */
  clusterSize?: number;
  /** Whether guest data is encrypted (present only when it is). */
  encrypted?: boolean;
  /** Backing file name as stored in the image. */
  backingFilename?: string;
  /** Backing file path relative to the working directory (QEMU's "actual path"). */
  fullBackingFilename?: string;
  /** Backing format, when the image names one. */
  backingFilenameFormat?: string;
  /** Internal snapshots. */
  snapshots: SnapshotInfo[];
  /** qcow2 specifics (of a qcow2 image): the format-specific section as fields. */
  qcow2?: Qcow2Info;
  /**
   * The format-specific section as QEMU's `format-specific` object: the
   * format's name and its data with QAPI key names, in schema order (what
   * "Format specific information" lists).
   */
  formatSpecific?: { type: string; data: { [key: string]: InfoValue } };
  /** The rest of the backing chain, top first (with `backingChain: true`). */
  chain?: ImageInfo[];
}

/**
 * Options of {@linkcode imageInfo}.
 *
 * @example Describe bytes as raw whatever they hold
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { imageInfo, type ImageInfoOptions } from "@qcow2pipe/qcow2pipe/tools";
 * const options: ImageInfoOptions = { format: "raw" };
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512)), options);
 * assert.strictEqual(info.format, "raw");
 * ```
 */
export interface ImageInfoOptions {
  /**
   * Also describe every image of the backing chain (`--backing-chain`).
   * @default {false}
   */
  backingChain?: boolean;
  /**
   * Format of the image; probed when absent or `auto`. A probed image's
   * backing chain is only followed inside its own directory.
   * @default {"auto"}
   */
  format?: ImageFormat;
  /**
   * Which backing files `backingChain` may follow.
   * @default {"auto"}
   */
  references?: ReferencePolicy;
  /** Opens backing files by name; default: local files and http(s) URLs held to their origin (`openByName`). */
  openSource?: OpenSource;
  /** How the default opener fetches URLs (idle timeout, retries...). */
  http?: HttpTransport;
  /**
   * Bytes a named file occupies on disk; default: blocks × 512 from the
   * file system for local files.
   */
  allocatedSize?: (name: string) => Promise<number | undefined>;
}

/**
 * Bytes the image's own files occupy on disk: its file and the files that
 * are part of it (a VMDK's extents, each counted as QEMU counts them), not
 * its backing chain's; undefined when one of them cannot say.
 */
async function allocatedOf(
  image: GuestImage,
  options: ImageInfoOptions,
): Promise<number | undefined> {
  const chain = new Set(image.backing?.sources() ?? []);
  const own = image.sources().filter((s) => !chain.has(s));
  let total = 0;
  for (const [i, s] of own.entries()) {
    const n = options.allocatedSize
      ? await options.allocatedSize(i === 0 ? image.name : s.name ?? "")
      : await hostFiles()?.allocatedSize(s);
    if (n === undefined) return undefined;
    total += n;
  }
  return total;
}

/** One image of the chain as `info` reports it. */
async function describe(
  image: GuestImage,
  options: ImageInfoOptions,
): Promise<ImageInfo> {
  const source = image.sources()[0];
  const allocated = await allocatedOf(image, options);
  const d = await image.describe();
  const info: ImageInfo = {
    filename: image.name,
    format: image.format as FormatName,
    virtualSize: d.virtualSize,
    dirty: d.dirty,
    snapshots: d.snapshots,
  };
  if (allocated !== undefined) info.actualSize = allocated;
  if (d.clusterSize !== undefined) info.clusterSize = d.clusterSize;
  if (d.encrypted) info.encrypted = true;
  if (d.backingFile !== undefined) {
    info.backingFilename = d.backingFile;
    // Over HTTP, against the URL that answered.
    info.fullBackingFilename = resolveName(
      directoryOf(source.url ?? image.name) ?? "",
      d.backingFile,
    );
    if (d.backingFormat !== undefined) {
      info.backingFilenameFormat = d.backingFormat;
    }
  }
  // The format's section, typed under its name (`qcow2`) and as QEMU's object.
  if (d.details !== undefined) {
    Object.assign(info, { [image.format]: d.details });
  }
  if (d.specific !== undefined) info.formatSpecific = d.specific;
  return info;
}

/**
 * Describes an image as `qemu-img info` does (QEMU 7.2): it opens only the
 * image itself (backing files are named, not opened, unless
 * `backingChain` is set).
 *
 * @param input A path, a source or the image bytes (qcow2 or raw).
 * @param options Backing chain, how to open files, allocated size.
 * @returns The description; {@linkcode imageInfoJson} gives QEMU's JSON.
 * @throws {Qcow2Error} When the image cannot be opened (unknown
 * incompatible features, invalid header) or a backing file is missing
 * with `backingChain`.
 *
 * @example Describe a qcow2 image in memory
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { imageInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(1 << 20), { compression: "zstd" }));
 * assert.strictEqual(info.virtualSize, 1 << 20);
 * assert.strictEqual(info.qcow2?.compressionType, "zstd");
 * ```
 */
export async function imageInfo(
  input: ImageInput,
  options: ImageInfoOptions = {},
): Promise<ImageInfo> {
  // qemu-img info opens the image alone; with --backing-chain, the chain.
  const image = await openForTool(input, {
    purpose: "describe",
    backing: options.backingChain ?? false,
    format: options.format,
    references: options.references,
    openSource: options.openSource,
    http: options.http,
  });
  try {
    const info = await describe(image, options);
    if (!options.backingChain) return info;
    info.chain = [];
    for (let b = image.backing; b !== undefined; b = b.backing) {
      info.chain.push(await describe(b, options));
    }
    return info;
  } finally {
    await image.close();
  }
}
