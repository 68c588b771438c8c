/**
 * `imageInfo()`: what `qemu-img info` reports about an image: format,
 * sizes, backing file, snapshots and the qcow2 specifics (features,
 * bitmaps, encryption), for qcow2 and raw images. Images the reader
 * refuses (encrypted, corrupt bit) still get their info, as in QEMU.
 *
 * @module
 */

import {
  AUTOCLEAR,
  COMPAT,
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  INCOMPAT,
} from "../format/constants.ts";
import { Qcow2Error } from "../format/errors.ts";
import { backingFormat, dataFileName } from "../format/header.ts";
import { BITMAP_FLAGS } from "../format/bitmaps.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { hostFiles } from "../io/_host_files.ts";
import { type ImageInput, type OpenSource, withSource } from "./_layers.ts";
import { detectFormat, readPadded } from "../reader/_read.ts";
import { qcow2VirtualSize, rawVirtualSize } from "../format/geometry.ts";
import { readSnapshotTable } from "../reader/_snapshots.ts";
import { bitmapDirectoryOf, readBitmapDirectory } from "./_tables.ts";
import {
  backingReferrer,
  directoryOf,
  ReferenceGate,
  type ReferencePolicy,
  resolveName,
  topReferrer,
} from "../reader/references.ts";
import { type ImageFormat, readHeader } from "../reader/open.ts";
import { LUKS_HEADER_LENGTH, type LuksInfo, parseLuksHeader } from "./_luks.ts";

export type { LuksInfo, LuksSlotInfo } from "./_luks.ts";

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
 * A persistent dirty bitmap.
 *
 * @example The bitmaps of an image (ours has none)
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { type BitmapInfo, imageInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { workers: 1 }));
 * const bitmaps: BitmapInfo[] = info.qcow2?.bitmaps ?? [];
 * assert.strictEqual(bitmaps.length, 0);
 * ```
 */
export interface BitmapInfo {
  /** Name. */
  name: string;
  /** Bytes of guest disk per bit. */
  granularity: number;
  /** `in-use` (not saved cleanly) and `auto` (enabled), in that order. */
  flags: ("in-use" | "auto")[];
}

/**
 * The qcow2 part of {@linkcode ImageInfo}.
 *
 * @example What kind of qcow2 an image is
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { imageInfo, type Qcow2Info } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { compression: "zstd", workers: 1 }));
 * const q: Qcow2Info = info.qcow2!;
 * assert.deepStrictEqual([q.compat, q.compressionType, q.refcountBits], ["1.1", "zstd", 16]);
 * ```
 */
export interface Qcow2Info {
  /** `0.10` (version 2) or `1.1` (version 3). */
  compat: "0.10" | "1.1";
  /** Compression type of compressed clusters. */
  compressionType: "zlib" | "zstd";
  /** Refcount width in bits. */
  refcountBits: number;
  /** Version 3: lazy refcounts enabled. */
  lazyRefcounts?: boolean;
  /** Version 3: the corrupt bit. */
  corrupt?: boolean;
  /** Version 3: extended L2 entries (subclusters). */
  extendedL2?: boolean;
  /** External data file name, as stored. */
  dataFile?: string;
  /** With a data file: whether it is a valid raw image. */
  dataFileRaw?: boolean;
  /** Persistent bitmaps (version 3, when there are any). */
  bitmaps?: BitmapInfo[];
  /** Encryption: `aes` or `luks`, with the LUKS header's public fields. */
  encrypt?: { format: "aes" } | ({ format: "luks" } & LuksInfo);
}

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
  /** `qcow2` or `raw`. */
  format: "qcow2" | "raw";
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
  /** qcow2 specifics. */
  qcow2?: Qcow2Info;
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

async function describe(
  source: RandomAccessSource,
  name: string,
  format: string | undefined,
  options: ImageInfoOptions,
): Promise<ImageInfo> {
  const allocated = options.allocatedSize
    ? await options.allocatedSize(name)
    : await hostFiles()?.allocatedSize(source);
  const qcow2 = (format ?? await detectFormat(source)) === "qcow2";
  if (!qcow2) {
    const info: ImageInfo = {
      filename: name,
      format: "raw",
      virtualSize: rawVirtualSize(source.size),
      dirty: false,
      snapshots: [],
    };
    if (allocated !== undefined) info.actualSize = allocated;
    return info;
  }
  const header = await readHeader(source, { inspection: true });
  const v3 = header.version === 3;
  const info: ImageInfo = {
    filename: name,
    format: "qcow2",
    virtualSize: qcow2VirtualSize(header.size),
    dirty: (header.incompatibleFeatures & INCOMPAT.DIRTY) !== 0n,
    clusterSize: 2 ** header.clusterBits,
    snapshots: [],
  };
  if (allocated !== undefined) info.actualSize = allocated;
  if (header.cryptMethod !== CRYPT_METHOD.NONE) info.encrypted = true;
  if (header.backingFile) {
    info.backingFilename = header.backingFile;
    // Over HTTP, against the URL that answered.
    info.fullBackingFilename = resolveName(
      directoryOf(source.url ?? name) ?? "",
      header.backingFile,
    );
    const fmt = backingFormat(header);
    if (fmt !== undefined) info.backingFilenameFormat = fmt;
  }
  const table = await readSnapshotTable(source, header, true);
  info.snapshots = table.entries.map((s) => {
    const snap: SnapshotInfo = {
      id: s.id,
      name: s.name,
      vmStateSize: s.vmStateSize,
      dateSec: s.dateSec,
      dateNsec: s.dateNsec,
      vmClockNsec: s.vmClockNsec,
    };
    if (s.icount !== undefined && s.icount !== -1n) snap.icount = s.icount;
    return snap;
  });
  const q: Qcow2Info = {
    compat: v3 ? "1.1" : "0.10",
    compressionType: header.compressionType === COMPRESSION_TYPE.ZSTD
      ? "zstd"
      : "zlib",
    refcountBits: 2 ** header.refcountOrder,
  };
  if (v3) {
    q.lazyRefcounts =
      (header.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n;
    q.corrupt = (header.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n;
    q.extendedL2 = (header.incompatibleFeatures & INCOMPAT.EXTENDED_L2) !== 0n;
    const data = dataFileName(header);
    if (data !== undefined) q.dataFile = data;
    if ((header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n) {
      q.dataFileRaw =
        (header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) !== 0n;
    }
    const dir = bitmapDirectoryOf(header);
    if (dir) {
      q.bitmaps = (await readBitmapDirectory(source, dir, header)).map((b) => {
        const flags: BitmapInfo["flags"] = [];
        if (b.flags & BITMAP_FLAGS.IN_USE) flags.push("in-use");
        if (b.flags & BITMAP_FLAGS.AUTO) flags.push("auto");
        return { name: b.name, granularity: 2 ** b.granularityBits, flags };
      });
    }
  }
  if (header.cryptMethod === CRYPT_METHOD.AES) q.encrypt = { format: "aes" };
  if (header.cryptMethod === CRYPT_METHOD.LUKS) {
    const ext = header.extensions.find((e) => e.kind === "crypto-header");
    if (!ext || ext.kind !== "crypto-header") {
      throw new Qcow2Error(
        "BAD_EXTENSION",
        "Cannot open image: it is LUKS encrypted but has no crypto header extension",
      );
    }
    const luks = parseLuksHeader(
      await readPadded(
        source,
        ext.offset,
        Math.max(ext.length, LUKS_HEADER_LENGTH),
      ),
    );
    q.encrypt = { format: "luks", ...luks };
  }
  info.qcow2 = q;
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
  const given = options.format !== undefined && options.format !== "auto"
    ? options.format
    : undefined;
  let name = "";
  let answered: string | undefined;
  const info = await withSource(input, (source, opened) => {
    name = opened;
    answered = source.url;
    return describe(source, name, given, options);
  });
  if (!options.backingChain) return info;
  info.chain = [];
  const gate = new ReferenceGate({
    policy: options.references,
    openSource: options.openSource,
    http: options.http,
  });
  await gate.start(name);
  let referrer = topReferrer(
    answered ?? name,
    given !== undefined,
    undefined,
    name,
  );
  for (let at: ImageInfo = info; at.backingFilename !== undefined;) {
    const ref = await gate.backing(referrer, at.backingFilename);
    const src = await gate.open(ref);
    try {
      const fmt = at.backingFilenameFormat;
      const next = await describe(
        src,
        ref.name,
        fmt === "raw" || fmt === "qcow2" ? fmt : undefined,
        options,
      );
      info.chain.push(next);
      referrer = backingReferrer(referrer, ref, fmt, src);
      at = next;
    } finally {
      await src.close?.();
    }
  }
  return info;
}
