// Argument checks shared by the writer stages.
import {
  COMPRESSED_SECTOR_SIZE,
  DEFAULT_CLUSTER_SIZE,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
} from "../format/constants.ts";
import type { CompressionType } from "../codec/codecs.ts";
import type { ClusterRecord } from "./records.ts";
import type { Qcow2WriterOptions } from "./qcow2_writer.ts";
import type { BackingFileName, Qcow2PackStreamOptions } from "./pack_stream.ts";

/** The pack stage's options, checked, with their defaults. */
export interface PackSettings {
  clusterSize: number;
  refcountBits: number;
  compressionType: CompressionType;
  backingFile: BackingFileName | undefined;
  onProgress: ((guestBytes: number) => void) | undefined;
  compat: "v2" | "v3";
  lazyRefcounts: boolean;
}

/**
 * Checks the pack stage's options and settles their defaults.
 *
 * @throws {RangeError} For a bad cluster size, refcount width, compression
 * type or backing file name.
 */
export function packSettings(options: Qcow2PackStreamOptions): PackSettings {
  const clusterSize = checkClusterSize(
    options.clusterSize ?? DEFAULT_CLUSTER_SIZE,
  );
  const refcountBits = options.refcountBits ?? 16;
  refcountOrderOf(refcountBits);
  const compressionType = options.compressionType ?? "zlib";
  if (compressionType !== "zlib" && compressionType !== "zstd") {
    throw new RangeError(
      `Cannot pack qcow2: compression type "${compressionType}" is not zlib or zstd`,
    );
  }
  if (options.backingFile) checkBackingFile(options.backingFile);
  const compat = options.compat ?? "v3";
  const lazyRefcounts = options.lazyRefcounts ?? false;
  if (compat !== "v2" && compat !== "v3") {
    throw new RangeError(
      `Cannot pack qcow2: compat "${compat}" is not v2 or v3`,
    );
  }
  if (compat === "v2") {
    const wrong = [
      refcountBits !== 16 && `${refcountBits}-bit refcounts`,
      compressionType !== "zlib" && `${compressionType} compression`,
      lazyRefcounts && "lazy refcounts",
    ].filter((w) => w);
    if (wrong.length > 0) {
      throw new RangeError(
        `Cannot pack qcow2: version 2 (compat 0.10) has no ${
          wrong.join(", ")
        } (16-bit refcounts and zlib only)`,
      );
    }
  }
  return {
    clusterSize,
    refcountBits,
    compressionType,
    backingFile: options.backingFile,
    onProgress: options.onProgress,
    compat,
    lazyRefcounts,
  };
}

/** What both writers need settled before they build their stages. */
export interface WriterSettings {
  clusterSize: number;
  compression: "none" | "zlib" | "zstd";
}

/**
 * Checks the options both writers take and settles their defaults.
 *
 * @throws {RangeError} For an unknown compression, a level without
 * compression, a backing image without its name, a bad backing name, a bad
 * cluster size or refcount width.
 */
export function writerSettings(options: Qcow2WriterOptions): WriterSettings {
  const compression = options.compression ?? "none";
  if (
    compression !== "none" && compression !== "zlib" && compression !== "zstd"
  ) {
    throw new RangeError(
      `Cannot write qcow2: compression "${compression}" is not none, zlib or zstd`,
    );
  }
  if (compression === "none" && options.level !== undefined) {
    throw new RangeError(
      "Cannot write qcow2: a compression level needs compression zlib or zstd",
    );
  }
  if (options.backingImage && !options.backingFile) {
    throw new RangeError(
      "Cannot write qcow2: a backing image to compare with needs backingFile (its name and format)",
    );
  }
  const { clusterSize } = packSettings(options);
  return { clusterSize, compression };
}

/** QEMU's limit on a backing file name (1023 bytes and a NUL). */
const MAX_BACKING_NAME = 1023;

/** Throws RangeError unless QEMU would take the name and format. */
export function checkBackingFile(backing: BackingFileName): void {
  const bytes = new TextEncoder().encode(backing.name).length;
  if (bytes < 1 || bytes > MAX_BACKING_NAME || backing.name.includes("\0")) {
    throw new RangeError(
      `Cannot name backing file "${backing.name}": a name is 1 to ${MAX_BACKING_NAME} bytes without NUL (it has ${bytes})`,
    );
  }
  if (backing.format !== "qcow2" && backing.format !== "raw") {
    throw new RangeError(
      `Cannot name backing file "${backing.name}": format "${backing.format}" is not qcow2 or raw`,
    );
  }
}

/** Returns the cluster size if it is a power of two in [512, 2 MiB]; throws RangeError otherwise. */
export function checkClusterSize(size: number): number {
  const bits = Math.log2(size);
  if (
    !Number.isInteger(bits) || bits < MIN_CLUSTER_BITS ||
    bits > MAX_CLUSTER_BITS
  ) {
    throw new RangeError(
      `Cannot use cluster size ${size}: must be a power of two in [${
        2 ** MIN_CLUSTER_BITS
      }, ${2 ** MAX_CLUSTER_BITS}]`,
    );
  }
  return size;
}

/** Returns refcount_order for a refcount width in bits (1..64, power of two); throws RangeError otherwise. */
export function refcountOrderOf(bits: number): number {
  const order = Math.log2(bits);
  if (!Number.isInteger(order) || order < 0 || order > 6) {
    throw new RangeError(
      `Cannot use refcount width ${bits}: must be 1, 2, 4, 8, 16, 32 or 64 bits`,
    );
  }
  return order;
}

/**
 * Checks that a record's bytes fit its cluster count at this stage's
 * cluster size: two stages wired with different cluster sizes would
 * otherwise map bytes to the wrong clusters without a word.
 *
 * @throws {RangeError} Naming the stage, the record and both sizes.
 */
export function checkRecord(
  record: ClusterRecord,
  clusterSize: number,
  stage: string,
): void {
  const mismatch = (what: string) =>
    new RangeError(
      `Cannot ${stage}: ${what} at cluster size ${clusterSize}; the stage before uses another cluster size`,
    );
  if (record.kind === "data") {
    if (record.data.length !== record.count * clusterSize) {
      throw mismatch(
        `a data record of ${record.count} cluster(s) at index ${record.index} holds ${record.data.length} bytes, not ${
          record.count * clusterSize
        }`,
      );
    }
  } else if (record.kind === "compressed") {
    const { lengths, offsets } = record;
    const total = lengths.reduce((n, l) => n + l, 0);
    const tooLong = lengths.find((l) => l >= clusterSize);
    const laidOut = offsets
      ? offsets.length === lengths.length &&
        offsets.every((at, i) =>
          at % COMPRESSED_SECTOR_SIZE === 0 &&
          at + lengths[i] <= (offsets[i + 1] ?? record.data.length)
        )
      : total === record.data.length;
    if (lengths.length !== record.count || !laidOut || tooLong !== undefined) {
      throw mismatch(
        `a compressed record of ${record.count} cluster(s) at index ${record.index} has ${record.lengths.length} payload(s) of ${total} bytes${
          tooLong === undefined ? "" : `, one of ${tooLong} bytes`
        }`,
      );
    }
  }
}
