/**
 * Checks a parsed header against the specification and QEMU's
 * implementation limits.
 *
 * @module
 */

import {
  AUTOCLEAR,
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  INCOMPAT,
  INCOMPAT_KNOWN,
  MAX_BACKING_FILE_NAME,
  MAX_BITMAPS,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_L1_INDEX,
  MAX_REFCOUNT_ORDER,
  MAX_REFTABLE_BYTES,
  MAX_SNAPSHOTS,
  MIN_CLUSTER_BITS,
  MIN_EXTENDED_L2_CLUSTER_BITS,
} from "./constants.ts";
import { hex, Qcow2Error } from "./errors.ts";
import type { Qcow2Header } from "./header.ts";
import { l1SizeFor } from "./geometry.ts";

const ACTION = "open image";

/** Byte offsets of header fields, for error locations. */
const FIELD_AT: Record<string, number> = {
  backing_file_offset: 8,
  backing_file_size: 16,
  cluster_bits: 20,
  size: 24,
  crypt_method: 32,
  l1_size: 36,
  l1_table_offset: 40,
  refcount_table_offset: 48,
  refcount_table_clusters: 56,
  nb_snapshots: 60,
  snapshots_offset: 64,
  incompatible_features: 72,
  compatible_features: 80,
  autoclear_features: 88,
  refcount_order: 96,
  header_length: 100,
  compression_type: 104,
};

function fail(
  code: "OUT_OF_RANGE" | "UNALIGNED" | "RESERVED_BITS" | "BAD_EXTENSION",
  field: string,
  reason: string,
  qemuReason?: string,
): never {
  throw new Qcow2Error(code, `Cannot ${ACTION}: ${field} ${reason}`, {
    offset: FIELD_AT[field],
    field,
    qemu: qemuReason === undefined ? undefined : { reason: qemuReason },
  });
}

function range(
  field: string,
  value: number,
  min: number,
  max: number,
  qemuReason?: string,
): void {
  if (value < min || value > max) {
    fail(
      "OUT_OF_RANGE",
      field,
      `${value} is out of range [${min}, ${max}]`,
      qemuReason,
    );
  }
}

function aligned(
  field: string,
  value: number,
  clusterSize: number,
  qemuReason?: string,
): void {
  if (value % clusterSize !== 0) {
    fail(
      "UNALIGNED",
      field,
      `${hex(value)} is not aligned to the cluster size ${clusterSize}`,
      qemuReason,
    );
  }
}

/**
 * Validates a header's values: every check QEMU makes when opening an
 * image, with the field, value and allowed range in the error. Whether the
 * image can be *read* (encryption, unknown features, corrupt bit) is
 * {@linkcode assertReadable}'s job.
 *
 * @param header A parsed header.
 * @param options `check`: the image is opened for `check` (QEMU's
 * `BDRV_O_CHECK`), which reads and repairs the snapshot table itself: its
 * offset and count are not checked here.
 * @throws {Qcow2Error} `OUT_OF_RANGE`, `UNALIGNED`, `RESERVED_BITS` or
 * `BAD_EXTENSION` naming the field.
 *
 * @example Reject 4 MiB clusters
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader } from "./header.ts";
 * import { validateHeader } from "./validate.ts";
 * const h = defaultHeader({ size: 0, clusterBits: 22 });
 * let message = "";
 * try { validateHeader(h); } catch (e) { message = (e as Error).message; }
 * assert(message === "Cannot open image: cluster_bits 22 is out of range [9, 21]");
 * ```
 */
export function validateHeader(
  header: Qcow2Header,
  options: { check?: boolean } = {},
): void {
  validateFields(header);
  validateFeatures(header);
  validateTables(header, options.check ?? false);
  validateBackingName(header);
  validateExtensions(header);
}

/** Widths and enumerations: cluster bits, header length, refcount order, crypt method. */
function validateFields(header: Qcow2Header): void {
  range("cluster_bits", header.clusterBits, MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
  const clusterSize = 2 ** header.clusterBits;
  if (header.version === 3) {
    range("header_length", header.headerLength, 104, clusterSize);
    range("refcount_order", header.refcountOrder, 0, MAX_REFCOUNT_ORDER);
  }
  range("crypt_method", header.cryptMethod, 0, CRYPT_METHOD.LUKS);
}

/** Feature bits that constrain other fields: extended L2, compression type, raw data file. */
function validateFeatures(header: Qcow2Header): void {
  const extendedL2 =
    (header.incompatibleFeatures & INCOMPAT.EXTENDED_L2) !== 0n;
  if (extendedL2 && header.clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    fail(
      "OUT_OF_RANGE",
      "cluster_bits",
      `${header.clusterBits} is out of range [${MIN_EXTENDED_L2_CLUSTER_BITS}, ${MAX_CLUSTER_BITS}] for extended L2 entries`,
    );
  }

  const hasCompressionBit =
    (header.incompatibleFeatures & INCOMPAT.COMPRESSION_TYPE) !== 0n;
  if (hasCompressionBit) {
    if (header.headerLength <= 104) {
      fail(
        "OUT_OF_RANGE",
        "header_length",
        `${header.headerLength} does not include compression_type, which the compression type feature bit requires`,
      );
    }
    if (header.compressionType === COMPRESSION_TYPE.ZLIB) {
      fail(
        "OUT_OF_RANGE",
        "compression_type",
        "0 (zlib) contradicts the compression type feature bit, which requires a non-zlib type",
      );
    }
  } else if (header.compressionType !== COMPRESSION_TYPE.ZLIB) {
    fail(
      "OUT_OF_RANGE",
      "compression_type",
      `${header.compressionType} requires the compression type feature bit, which is clear`,
    );
  }
  range("compression_type", header.compressionType, 0, COMPRESSION_TYPE.ZSTD);

  if (
    (header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) !== 0n &&
    (header.incompatibleFeatures & INCOMPAT.DATA_FILE) === 0n
  ) {
    fail(
      "OUT_OF_RANGE",
      "autoclear_features",
      `${
        hex(header.autoclearFeatures)
      } sets raw external data without the external data file bit`,
    );
  }
}

/** The L1, refcount and snapshot tables: sizes within QEMU's limits, offsets aligned. */
function validateTables(header: Qcow2Header, check: boolean): void {
  const clusterSize = 2 ** header.clusterBits;
  const extendedL2 =
    (header.incompatibleFeatures & INCOMPAT.EXTENDED_L2) !== 0n;
  const maxL1 = MAX_L1_BYTES / 8;
  if (header.l1Size > maxL1) {
    fail(
      "OUT_OF_RANGE",
      "l1_size",
      `${header.l1Size} is out of range [0, ${maxL1}]`,
      "Active L1 table too large",
    );
  }
  const needed = l1SizeFor(header.size, header.clusterBits, extendedL2);
  // QEMU's checks, in its order: an L1 index past a C int, then an L1
  // table shorter than the virtual size needs.
  const qemuReason = needed > MAX_L1_INDEX
    ? "Image is too big"
    : "L1 table is too small";
  if (needed > maxL1) {
    fail(
      "OUT_OF_RANGE",
      "size",
      `${header.size} needs ${needed} L1 entries, more than QEMU's limit of ${maxL1} for ${clusterSize}-byte clusters`,
      qemuReason,
    );
  }
  if (header.l1Size < needed) {
    fail(
      "OUT_OF_RANGE",
      "l1_size",
      `${header.l1Size} is too small for virtual size ${header.size} (needs at least ${needed})`,
      qemuReason,
    );
  }
  aligned("l1_table_offset", header.l1TableOffset, clusterSize);

  const maxReftableClusters = Math.max(1, MAX_REFTABLE_BYTES / clusterSize);
  range(
    "refcount_table_clusters",
    header.refcountTableClusters,
    1,
    maxReftableClusters,
  );
  aligned("refcount_table_offset", header.refcountTableOffset, clusterSize);

  if (check) return;
  range(
    "nb_snapshots",
    header.nbSnapshots,
    0,
    MAX_SNAPSHOTS,
    "Snapshot table too large",
  );
  aligned(
    "snapshots_offset",
    header.snapshotsOffset,
    clusterSize,
    "Snapshot table offset invalid",
  );
}

/** The backing file name lies inside the first cluster, after the header. */
function validateBackingName(header: Qcow2Header): void {
  const clusterSize = 2 ** header.clusterBits;
  if (header.backingFileOffset !== 0) {
    range(
      "backing_file_offset",
      header.backingFileOffset,
      header.headerLength,
      clusterSize,
    );
    range(
      "backing_file_size",
      header.backingFileSize,
      0,
      Math.min(MAX_BACKING_FILE_NAME, clusterSize - header.backingFileOffset),
    );
  }
}

/** Header extensions: QEMU's limits on each kind. */
function validateExtensions(header: Qcow2Header): void {
  const clusterSize = 2 ** header.clusterBits;
  for (const ext of header.extensions) {
    switch (ext.kind) {
      case "backing-format":
        if (new TextEncoder().encode(ext.format).length >= 16) {
          fail(
            "BAD_EXTENSION",
            "backing format extension",
            `"${ext.format}" is longer than QEMU's 15-byte limit`,
          );
        }
        break;
      case "bitmaps":
        if (ext.nbBitmaps < 1 || ext.nbBitmaps > MAX_BITMAPS) {
          fail(
            "BAD_EXTENSION",
            "nb_bitmaps",
            `${ext.nbBitmaps} is out of range [1, ${MAX_BITMAPS}]`,
          );
        }
        if (ext.reserved !== 0) {
          fail(
            "BAD_EXTENSION",
            "bitmaps extension reserved field",
            `${ext.reserved} is not 0`,
          );
        }
        if (ext.directorySize > 1024 * MAX_BITMAPS) {
          fail(
            "BAD_EXTENSION",
            "bitmap_directory_size",
            `${ext.directorySize} is out of range [0, ${1024 * MAX_BITMAPS}]`,
          );
        }
        if (ext.directoryOffset % clusterSize !== 0) {
          fail(
            "BAD_EXTENSION",
            "bitmap_directory_offset",
            `${
              hex(ext.directoryOffset)
            } is not aligned to the cluster size ${clusterSize}`,
          );
        }
        break;
      case "crypto-header":
        if (header.cryptMethod !== CRYPT_METHOD.LUKS) {
          fail(
            "BAD_EXTENSION",
            "crypto header extension",
            `is present but crypt_method is ${header.cryptMethod}, not LUKS`,
          );
        }
        break;
    }
  }
}

/**
 * QEMU's words for unknown incompatible features: the names the (last)
 * feature name table gives them, in the table's order (read up to its
 * first nameless entry), then the bits left unnamed as one hexadecimal
 * mask.
 */
function unsupportedFeatureText(header: Qcow2Header, unknown: bigint): string {
  const parts: string[] = [];
  let mask = unknown;
  // QEMU keeps the last feature name table it reads.
  const last = header.extensions.findLast((e) => e.kind === "feature-table");
  const table = last?.kind === "feature-table" ? last.features : [];
  for (const f of table) {
    if (f.name === "") break;
    const bit = 1n << BigInt(f.bit);
    if (f.type === 0 && f.bit < 64 && (mask & bit) !== 0n) {
      parts.push(f.name.slice(0, 46));
      mask &= ~bit;
    }
  }
  if (mask !== 0n) {
    parts.push(`Unknown incompatible feature: ${mask.toString(16)}`);
  }
  return `Unsupported qcow2 feature(s): ${parts.join(", ")}`;
}

/**
 * Refuses images this implementation must not read: unknown incompatible
 * feature bits, the corrupt bit, and encryption.
 *
 * @param header A parsed header.
 * @param inspection Refuse only unknown features, as QEMU does when it
 * opens an image read-only for `info`, `check`, `map` (default false).
 * @throws {Qcow2Error} `UNSUPPORTED_FEATURE`, `CORRUPT` or `ENCRYPTED` with
 * the reason; for unknown features the name from the image's feature name
 * table when it has one.
 *
 * @example An encrypted image
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader } from "./header.ts";
 * import { assertReadable } from "./validate.ts";
 * const h = defaultHeader({ size: 0 });
 * h.cryptMethod = 2;
 * let code = "";
 * try { assertReadable(h); } catch (e) { code = (e as { code: string }).code; }
 * assert(code === "ENCRYPTED");
 * ```
 */
export function assertReadable(
  header: Qcow2Header,
  inspection = false,
): void {
  const unknown = header.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (unknown !== 0n) {
    const names: string[] = [];
    for (let bit = 0n; bit < 64n; bit++) {
      if ((unknown & (1n << bit)) === 0n) continue;
      const named = header.extensions.flatMap((e) =>
        e.kind === "feature-table" ? e.features : []
      ).find((f) => f.type === 0 && BigInt(f.bit) === bit);
      names.push(named ? `bit ${bit} "${named.name}"` : `bit ${bit}`);
    }
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot ${ACTION}: incompatible_features ${
        hex(header.incompatibleFeatures)
      } has unknown ${names.join(", ")}`,
      {
        offset: 72,
        field: "incompatible_features",
        qemu: { reason: unsupportedFeatureText(header, unknown) },
      },
    );
  }
  // Inspecting an image read-only, QEMU accepts the corrupt bit (it only
  // forbids writing) and encryption (it only hides the data).
  if (inspection) return;
  if ((header.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot ${ACTION}: the corrupt bit is set in incompatible_features (QEMU found the metadata inconsistent; repair it with qemu-img check -r all)`,
      { offset: 72, field: "incompatible_features" },
    );
  }
  if (header.cryptMethod !== CRYPT_METHOD.NONE) {
    const method = header.cryptMethod === CRYPT_METHOD.AES ? "AES" : "LUKS";
    throw new Qcow2Error(
      "ENCRYPTED",
      `Cannot ${ACTION}: the image is encrypted (crypt_method ${header.cryptMethod}, ${method}) and encryption is not supported`,
      { offset: 32, field: "crypt_method" },
    );
  }
}
