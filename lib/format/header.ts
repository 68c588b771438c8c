/**
 * The qcow2 header (versions 2 and 3): parse and serialize every field,
 * header extensions and the backing file name.
 *
 * Layout (big endian):
 * ```text
 *  0 magic  4 version  8 backing_file_offset  16 backing_file_size
 * 20 cluster_bits  24 size  32 crypt_method  36 l1_size  40 l1_table_offset
 * 48 refcount_table_offset  56 refcount_table_clusters  60 nb_snapshots
 * 64 snapshots_offset  -- v2 ends at 72 --
 * 72 incompatible_features  80 compatible_features  88 autoclear_features
 * 96 refcount_order  100 header_length  104 compression_type (optional)
 * ```
 *
 * @module
 */

import {
  COMPRESSION_TYPE,
  INCOMPAT,
  MAX_L1_INDEX,
  QCOW2_MAGIC,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from "./constants.ts";
import { hex, Qcow2Error } from "./errors.ts";
import {
  extensionType,
  type HeaderExtension,
  parseExtensions,
  serializeExtensions,
} from "./extensions.ts";
import { decodeText, encodeText, viewOf, writeU64 } from "../bytes/binary.ts";
import { readU64 } from "./_bytes.ts";

/**
 * Every field of a qcow2 header, plus its extensions and backing file name.
 * Offsets and sizes are numbers (checked to be safe integers); feature
 * bitmasks are bigints.
 *
 * @example Read a field
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader } from "./header.ts";
 * const h = defaultHeader({ size: 1 << 20 });
 * assert(h.clusterBits === 16);
 * ```
 */
export interface Qcow2Header {
  /** 2 or 3. */
  version: number;
  /** Host offset of the backing file name, 0 for none. */
  backingFileOffset: number;
  /** Length of the backing file name in bytes. */
  backingFileSize: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  /** 0 none, 1 AES, 2 LUKS. */
  cryptMethod: number;
  /** Number of entries in the active L1 table. */
  l1Size: number;
  /** Host offset of the active L1 table. */
  l1TableOffset: number;
  /** Host offset of the refcount table. */
  refcountTableOffset: number;
  /** Number of clusters the refcount table occupies. */
  refcountTableClusters: number;
  /** Number of internal snapshots. */
  nbSnapshots: number;
  /** Host offset of the snapshot table. */
  snapshotsOffset: number;
  /** Incompatible feature bits (v3; 0 for v2). */
  incompatibleFeatures: bigint;
  /** Compatible feature bits (v3; 0 for v2). */
  compatibleFeatures: bigint;
  /** Auto-clear feature bits (v3; 0 for v2). */
  autoclearFeatures: bigint;
  /** log2 of the refcount width in bits (4 for v2). */
  refcountOrder: number;
  /** Length of the header structure (72 for v2). */
  headerLength: number;
  /** 0 zlib, 1 zstd (0 when the field is absent). */
  compressionType: number;
  /**
   * Bytes of the header after `compression_type` up to `header_length`
   * (padding and fields this implementation does not know), kept so that
   * serializing reproduces them.
   */
  tail: Uint8Array;
  /** Header extensions in file order, end marker excluded. */
  extensions: HeaderExtension[];
  /** The backing file name, when `backingFileOffset` is not 0. */
  backingFile: string | undefined;
}

const ACTION = "parse header";

function outOfRange(
  field: string,
  value: number | bigint,
  range: string,
  offset: number,
  code: "OUT_OF_RANGE" | "TRUNCATED" = "OUT_OF_RANGE",
): Qcow2Error {
  return new Qcow2Error(
    code,
    `Cannot ${ACTION}: ${field} ${value} is out of range ${range}`,
    { offset, field },
  );
}

/**
 * Whether bytes start with the qcow2 magic (`QFI\xfb`): how every reader
 * and tool tells a qcow2 image from a raw one.
 *
 * @param head The first bytes of an image (at least 4 to match).
 * @returns Whether they are the magic.
 *
 * @example Probe the format of an image
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, hasQcow2Magic, serializeHeader } from "./header.ts";
 * assert(hasQcow2Magic(serializeHeader(defaultHeader({ size: 512 }))));
 * assert(!hasQcow2Magic(new Uint8Array(512)));
 * ```
 */
export function hasQcow2Magic(head: Uint8Array): boolean {
  return head.length >= 4 &&
    viewOf(head).getUint32(0) === QCOW2_MAGIC;
}

/**
 * The virtual size; past 2^53 refused, in QEMU's words when QEMU refuses it
 * too (an L1 index past a C int).
 */
function sizeOf(view: DataView): number {
  try {
    return readU64(view, 24, "size", ACTION);
  } catch (err) {
    const clusterBits = BigInt(Math.min(view.getUint32(20), 63));
    const perL1 = clusterBits + clusterBits - 3n;
    if (
      !(err instanceof Qcow2Error) ||
      (view.getBigUint64(24) >> perL1) <= BigInt(MAX_L1_INDEX)
    ) {
      throw err;
    }
    throw new Qcow2Error(err.code, err.message, {
      offset: err.offset,
      field: err.field,
      qemu: { reason: "Image is too big" },
    });
  }
}

/**
 * Parses a qcow2 header from the first bytes of an image: the fixed fields,
 * the extensions (up to the backing file name or the end of the first
 * cluster) and the backing file name. Only the structure is checked here;
 * {@linkcode validateHeader} checks the values against QEMU's limits.
 *
 * @param bytes The start of the image, ideally the whole first cluster.
 * @returns The decoded header.
 * @throws {Qcow2Error} `BAD_MAGIC`, `UNSUPPORTED_VERSION`, `TRUNCATED`,
 * `OUT_OF_RANGE` or `BAD_EXTENSION` when the bytes are not a header.
 *
 * @example Round-trip a header
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, parseHeader, serializeHeader } from "./header.ts";
 * const bytes = serializeHeader(defaultHeader({ size: 1 << 30 }));
 * assert(parseHeader(bytes).size === 1 << 30);
 * ```
 */
export function parseHeader(bytes: Uint8Array): Qcow2Header {
  if (bytes.length < V2_HEADER_LENGTH) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot ${ACTION}: image is ${bytes.length} bytes, shorter than the ${V2_HEADER_LENGTH}-byte header`,
      { offset: 0 },
    );
  }
  const view = viewOf(bytes);
  const magic = view.getUint32(0);
  if (magic !== QCOW2_MAGIC) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot ${ACTION}: magic ${hex(magic)} is not the qcow2 magic ${
        hex(QCOW2_MAGIC)
      }`,
      { offset: 0, field: "magic" },
    );
  }
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) {
    throw new Qcow2Error(
      "UNSUPPORTED_VERSION",
      `Cannot ${ACTION}: version ${version} is not supported (expected 2 or 3)`,
      { offset: 4, field: "version" },
    );
  }
  const u64 = (at: number, field: string) => readU64(view, at, field, ACTION);
  const header: Qcow2Header = {
    version,
    backingFileOffset: u64(8, "backing_file_offset"),
    backingFileSize: view.getUint32(16),
    clusterBits: view.getUint32(20),
    size: sizeOf(view),
    cryptMethod: view.getUint32(32),
    l1Size: view.getUint32(36),
    l1TableOffset: u64(40, "l1_table_offset"),
    refcountTableOffset: u64(48, "refcount_table_offset"),
    refcountTableClusters: view.getUint32(56),
    nbSnapshots: view.getUint32(60),
    snapshotsOffset: u64(64, "snapshots_offset"),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: COMPRESSION_TYPE.ZLIB,
    tail: new Uint8Array(0),
    extensions: [],
    backingFile: undefined,
  };
  if (version === 3) {
    if (bytes.length < V3_MIN_HEADER_LENGTH) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot ${ACTION}: image is ${bytes.length} bytes, shorter than the ${V3_MIN_HEADER_LENGTH}-byte v3 header`,
        { offset: 0 },
      );
    }
    header.incompatibleFeatures = view.getBigUint64(72);
    header.compatibleFeatures = view.getBigUint64(80);
    header.autoclearFeatures = view.getBigUint64(88);
    header.refcountOrder = view.getUint32(96);
    header.headerLength = view.getUint32(100);
    if (
      header.headerLength < V3_MIN_HEADER_LENGTH ||
      header.headerLength % 8 !== 0
    ) {
      throw outOfRange(
        "header_length",
        header.headerLength,
        `[${V3_MIN_HEADER_LENGTH}, cluster size], multiple of 8`,
        100,
      );
    }
    if (header.headerLength > bytes.length) {
      throw outOfRange(
        "header_length",
        header.headerLength,
        `[${V3_MIN_HEADER_LENGTH}, ${bytes.length}] (image length)`,
        100,
        "TRUNCATED",
      );
    }
    if (header.headerLength > V3_MIN_HEADER_LENGTH) {
      header.compressionType = bytes[104];
      header.tail = bytes.slice(105, header.headerLength);
    }
  }

  const extEnd = header.backingFileOffset !== 0
    ? Math.min(header.backingFileOffset, bytes.length)
    : bytes.length;
  header.extensions = parseExtensions(bytes, header.headerLength, extEnd);

  if (header.backingFileOffset !== 0) {
    const end = header.backingFileOffset + header.backingFileSize;
    if (end > bytes.length) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot ${ACTION}: backing file name at ${
          hex(header.backingFileOffset)
        } with length ${header.backingFileSize} ends past ${hex(bytes.length)}`,
        { offset: 8, field: "backing_file_offset" },
      );
    }
    header.backingFile = decodeText(
      bytes.subarray(header.backingFileOffset, end),
    );
  }
  return header;
}

/**
 * Serializes a header: the fixed fields, `tail`, the extensions with an end
 * marker, and the backing file name at `backingFileOffset`. The result is
 * as long as the last byte written; callers pad it to a cluster.
 *
 * @param header The header to encode.
 * @returns The encoded bytes.
 * @throws {RangeError} If the extensions overlap the backing file name.
 *
 * @example Serialize a v3 header
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, serializeHeader } from "./header.ts";
 * const bytes = serializeHeader(defaultHeader({ size: 4096 }));
 * assert(bytes[3] === 0xfb && bytes.length === 512);
 * ```
 */
export function serializeHeader(header: Qcow2Header): Uint8Array {
  const extensions = serializeExtensions(header.extensions);
  const extEnd = header.headerLength + extensions.length;
  const name =
    header.backingFile === undefined || header.backingFileOffset === 0
      ? undefined
      : encodeText(header.backingFile);
  if (name !== undefined && header.backingFileOffset < extEnd) {
    throw new RangeError(
      `Cannot serialize header: backing file name at ${header.backingFileOffset} overlaps the extensions ending at ${extEnd}`,
    );
  }
  const total = name === undefined
    ? extEnd
    : header.backingFileOffset + name.length;
  const out = new Uint8Array(total);
  const view = viewOf(out);
  view.setUint32(0, QCOW2_MAGIC);
  view.setUint32(4, header.version);
  writeU64(view, 8, header.backingFileOffset);
  view.setUint32(16, header.backingFileSize);
  view.setUint32(20, header.clusterBits);
  writeU64(view, 24, header.size);
  view.setUint32(32, header.cryptMethod);
  view.setUint32(36, header.l1Size);
  writeU64(view, 40, header.l1TableOffset);
  writeU64(view, 48, header.refcountTableOffset);
  view.setUint32(56, header.refcountTableClusters);
  view.setUint32(60, header.nbSnapshots);
  writeU64(view, 64, header.snapshotsOffset);
  if (header.version === 3) {
    view.setBigUint64(72, header.incompatibleFeatures);
    view.setBigUint64(80, header.compatibleFeatures);
    view.setBigUint64(88, header.autoclearFeatures);
    view.setUint32(96, header.refcountOrder);
    view.setUint32(100, header.headerLength);
    if (header.headerLength > V3_MIN_HEADER_LENGTH) {
      out[104] = header.compressionType;
      out.set(
        header.tail.subarray(0, header.headerLength - 105),
        105,
      );
    }
  }
  out.set(extensions, header.headerLength);
  if (name !== undefined) out.set(name, header.backingFileOffset);
  return out;
}

/** Fields a caller may set when building a new header. *
 * @example A header for 1 GiB at 4 KiB clusters, as bytes
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, type DefaultHeaderOptions, parseHeader, serializeHeader } from "./header.ts";
 * const options: DefaultHeaderOptions = { size: 2 ** 30, clusterBits: 12 };
 * const back = parseHeader(serializeHeader(defaultHeader(options)));
 * assert.strictEqual(back.size, 2 ** 30);
 * assert.strictEqual(back.clusterBits, 12);
 * ```
 */
export interface DefaultHeaderOptions {
  /** Virtual disk size in bytes. */
  size: number;
  /**
   * log2 of the cluster size.
   * @default {16} (64 KiB)
   */
  clusterBits?: number;
  /**
   * log2 of the refcount width.
   * @default {4} (16-bit refcounts)
   */
  refcountOrder?: number;
  /**
   * Compression type, 0 zlib or 1 zstd; zstd also sets the incompatible
   * feature bit.
   * @default {0}
   */
  compressionType?: number;
  /**
   * Whether to include a feature name table extension, as QEMU does.
   * @default {true}
   */
  featureTable?: boolean;
}

/**
 * The names QEMU writes into the feature name table of a new image.
 *
 * @example Look up a name
 * ```ts
 * import assert from "node:assert";
 * import { QEMU_FEATURE_NAMES } from "./header.ts";
 * assert(QEMU_FEATURE_NAMES[0].name === "dirty bit");
 * ```
 */
export const QEMU_FEATURE_NAMES: readonly FeatureNameEntry[] = [
  { type: 0, bit: 0, name: "dirty bit" },
  { type: 0, bit: 1, name: "corrupt bit" },
  { type: 0, bit: 2, name: "external data file" },
  { type: 0, bit: 3, name: "compression type" },
  { type: 0, bit: 4, name: "extended L2 entries" },
  { type: 1, bit: 0, name: "lazy refcounts" },
  { type: 2, bit: 0, name: "bitmaps" },
  { type: 2, bit: 1, name: "raw external data" },
];

/** Shape of {@linkcode QEMU_FEATURE_NAMES} entries. *
 * @example Name an incompatible feature bit as QEMU does
 * ```ts
 * import assert from "node:assert";
 * import { type FeatureNameEntry, QEMU_FEATURE_NAMES } from "./header.ts";
 * const name = (type: number, bit: number): string | undefined =>
 *   QEMU_FEATURE_NAMES.find((f: FeatureNameEntry) => f.type === type && f.bit === bit)?.name;
 * assert.strictEqual(name(0, 1), "corrupt bit");
 * ```
 */
export interface FeatureNameEntry {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  /** Bit number. */
  bit: number;
  /** Name. */
  name: string;
}

/**
 * A version 3 header with QEMU's defaults and no tables yet (all offsets
 * 0): the starting point for a writer.
 *
 * @param options Virtual size and the fields to change.
 * @returns A header to fill in.
 *
 * @example zstd header
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader } from "./header.ts";
 * const h = defaultHeader({ size: 1 << 20, compressionType: 1 });
 * assert(h.incompatibleFeatures === 8n);
 * ```
 */
export function defaultHeader(options: DefaultHeaderOptions): Qcow2Header {
  const compressionType = options.compressionType ?? COMPRESSION_TYPE.ZLIB;
  return {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: options.clusterBits ?? 16,
    size: options.size,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: compressionType === COMPRESSION_TYPE.ZLIB
      ? 0n
      : INCOMPAT.COMPRESSION_TYPE,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: options.refcountOrder ?? 4,
    headerLength: V3_HEADER_LENGTH,
    compressionType,
    tail: new Uint8Array(V3_HEADER_LENGTH - 105),
    extensions: options.featureTable === false
      ? []
      : [{ kind: "feature-table", features: QEMU_FEATURE_NAMES.slice() }],
    backingFile: undefined,
  };
}

/**
 * The backing format named by the header's backing format extension (the
 * last one, when an image has several, as QEMU reads them).
 *
 * @param header A parsed header.
 * @returns The format string, or undefined when the extension is absent.
 *
 * @example No backing format
 * ```ts
 * import assert from "node:assert";
 * import { backingFormat, defaultHeader } from "./header.ts";
 * assert(backingFormat(defaultHeader({ size: 0 })) === undefined);
 * ```
 */
export function backingFormat(header: Qcow2Header): string | undefined {
  // QEMU reads every extension in order, and a later backing format
  // extension replaces an earlier one: the last one wins.
  return header.extensions.findLast((ext) => ext.kind === "backing-format")
    ?.format;
}

/**
 * The external data file name from the header's data file extension.
 *
 * @param header A parsed header.
 * @returns The file name, or undefined when the extension is absent.
 *
 * @example No data file
 * ```ts
 * import assert from "node:assert";
 * import { dataFileName, defaultHeader } from "./header.ts";
 * assert(dataFileName(defaultHeader({ size: 0 })) === undefined);
 * ```
 */
export function dataFileName(header: Qcow2Header): string | undefined {
  for (const ext of header.extensions) {
    if (ext.kind === "data-file") return ext.name;
  }
  return undefined;
}

/**
 * Whether the header has an extension of the given type.
 *
 * @param header A parsed header.
 * @param type An extension type from `EXTENSION`.
 * @returns True when an extension of that type is present.
 *
 * @example Feature table present
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, hasExtension } from "./header.ts";
 * import { EXTENSION } from "./constants.ts";
 * assert(hasExtension(defaultHeader({ size: 0 }), EXTENSION.FEATURE_TABLE));
 * ```
 */
export function hasExtension(header: Qcow2Header, type: number): boolean {
  return header.extensions.some((ext) => extensionType(ext) === type);
}
