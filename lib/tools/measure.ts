/**
 * `measureImage()`: how large a new image would be, as `qemu-img measure`
 * (QEMU 7.2) reports it: the bytes a conversion of a source (or a blank
 * image of a given size) needs at least (`required`) and the bytes it
 * takes once every cluster is allocated (`fully-allocated`), for a qcow2
 * or raw output with the given cluster size, refcount width and L2 entry
 * width.
 *
 * For qcow2 output the sizes are QEMU's estimate, not what a converter
 * writes: every L2 table and refcount block a fully allocated image needs
 * is counted in both, and `required` adds one whole cluster for each
 * cluster of the source that holds data (zero and unallocated ranges count
 * nothing, unless the output names a backing file, when every cluster
 * counts).
 *
 * @module
 */

import {
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFCOUNT_ORDER,
  MIN_CLUSTER_BITS,
  MIN_EXTENDED_L2_CLUSTER_BITS,
} from "../format/constants.ts";
import { SECTOR_SIZE } from "../format/geometry.ts";
import { refcountMetadataClusters } from "../format/refcount.ts";
import type { ImageFormat } from "../reader/open.ts";
import type { ReferencePolicy } from "../reader/references.ts";
import type { HttpTransport } from "../io/http_source.ts";
import type { ImageInput, OpenSource } from "./_open.ts";
import { imageInfo } from "./info.ts";
import { mapImageEntries } from "./map.ts";
import { qemuJson } from "./_qemu_text.ts";

/** Bytes of an L1 entry, a refcount table entry and a plain L2 entry. */
const ENTRY_BYTES = 8;
/** Bytes of an extended L2 entry (entry and subcluster bitmap). */
const EXTENDED_ENTRY_BYTES = 16;
/** The largest virtual size QEMU takes (INT64_MAX), as the message says it. */
const MAX_SIZE_TEXT = "9223372036854775807";

/**
 * What the new image would be: its format and the creation options that
 * change its size (`qemu-img measure -O FMT -o ...`).
 *
 * @example A qcow2 output with 4 KiB clusters and 8-bit refcounts
 * ```ts
 * import assert from "node:assert";
 * import { measureImage, type MeasureOptions } from "@qcow2pipe/qcow2pipe/tools";
 * const options: MeasureOptions = { outputFormat: "qcow2", clusterSize: 4096, refcountBits: 8, size: 1 << 30 };
 * const m = await measureImage(undefined, options);
 * assert.strictEqual(m.fullyAllocated > 1 << 30, true);
 * ```
 */
export interface MeasureOptions {
  /**
   * Format of the new image (`-O`).
   * @default {"raw"}
   */
  outputFormat?: "qcow2" | "raw";
  /**
   * Virtual size in bytes of a blank image (`--size`); only without a
   * source. Rounded up to whole 512-byte sectors, as QEMU does.
   */
  size?: number;
  /**
   * qcow2 cluster size in bytes, a power of two in [512, 2 MiB].
   * @default {65536}
   */
  clusterSize?: number;
  /**
   * qcow2 refcount width in bits, a power of two in [1, 64].
   * @default {16}
   */
  refcountBits?: number;
  /**
   * qcow2 extended L2 entries (cluster size 16 KiB or more).
   * @default {false}
   */
  extendedL2?: boolean;
  /**
   * qcow2 version: `v2` (compat=0.10) has 16-bit refcounts only and no
   * bitmaps.
   * @default {"v3"}
   */
  compat?: "v2" | "v3";
  /**
   * The output names a backing file: every cluster counts as required.
   * @default {false}
   */
  backing?: boolean;
  /**
   * qcow2 preallocation: `falloc` and `full` make every cluster required.
   * @default {"off"}
   */
  preallocation?: "off" | "metadata" | "falloc" | "full";
  /**
   * Format of the source; probed when absent or `auto`.
   * @default {"auto"}
   */
  format?: ImageFormat;
  /**
   * Which backing files of the source may be followed.
   * @default {"auto"}
   */
  references?: ReferencePolicy;
  /** Opens the source's backing files by name. */
  openSource?: OpenSource;
  /** How the default opener fetches URLs. */
  http?: HttpTransport;
}

/**
 * The sizes `qemu-img measure` reports, in bytes.
 *
 * @example Print the two sizes
 * ```ts
 * import assert from "node:assert";
 * import { measureImage, type MeasureResult } from "@qcow2pipe/qcow2pipe/tools";
 * const m: MeasureResult = await measureImage(undefined, { size: 1000 });
 * assert.deepStrictEqual([m.required, m.fullyAllocated], [1024, 1024]);
 * ```
 */
export interface MeasureResult {
  /** The least the new image takes for the source's data. */
  required: number;
  /** What the new image takes with every cluster allocated. */
  fullyAllocated: number;
  /**
   * What copying the source's persistent bitmaps would add: present only
   * when the source and the output both keep bitmaps (qcow2 version 3).
   */
  bitmaps?: number;
  /**
   * Not qemu-img's: the exact size of the file `qcow2pipe convert` writes
   * for the source with the options asked (`-c`, `--sparsify`), when a
   * caller measured it by converting (the CLI does, when asked).
   */
  converted?: number;
}

/** QEMU's `DIV_ROUND_UP` and `ROUND_UP`, on safe integers. */
function divUp(n: number, d: number): number {
  return Math.ceil(n / d);
}
function roundUp(n: number, d: number): number {
  return divUp(n, d) * d;
}

/**
 * Bytes of a qcow2 image of `virtualSize` with every cluster allocated:
 * the header cluster, every L2 table, the L1 table, the refcount blocks
 * and table that count all of them, and the data.
 */
function fullyAllocatedQcow2(
  virtualSize: number,
  clusterSize: number,
  refcountOrder: number,
  extendedL2: boolean,
): number {
  const data = roundUp(virtualSize, clusterSize);
  const l2Entry = extendedL2 ? EXTENDED_ENTRY_BYTES : ENTRY_BYTES;
  const l2Entries = roundUp(data / clusterSize, clusterSize / l2Entry);
  const l1Entries = roundUp(
    (l2Entries * l2Entry) / clusterSize,
    clusterSize / ENTRY_BYTES,
  );
  let meta = clusterSize + l2Entries * l2Entry + l1Entries * ENTRY_BYTES;
  const { blocks, table } = refcountMetadataClusters(
    (meta + data) / clusterSize,
    Math.log2(clusterSize),
    refcountOrder,
    false,
  );
  meta += (blocks + table) * clusterSize;
  return meta + data;
}

/** The qcow2 creation options, checked as QEMU checks them. */
function qcow2Settings(options: MeasureOptions) {
  const extendedL2 = options.extendedL2 ?? false;
  const clusterSize = options.clusterSize ?? 65536;
  const bits = Math.log2(clusterSize);
  if (
    !Number.isInteger(bits) || bits < MIN_CLUSTER_BITS ||
    bits > MAX_CLUSTER_BITS
  ) {
    throw new RangeError(
      `Cannot measure: Cluster size must be a power of two between ${
        2 ** MIN_CLUSTER_BITS
      } and ${2 ** MAX_CLUSTER_BITS / 1024}k (it is ${clusterSize})`,
    );
  }
  if (extendedL2 && bits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw new RangeError(
      `Cannot measure: Extended L2 entries are only supported with cluster sizes of at least ${
        2 ** MIN_EXTENDED_L2_CLUSTER_BITS
      } bytes`,
    );
  }
  const v3 = (options.compat ?? "v3") === "v3";
  const refcountBits = options.refcountBits ?? 16;
  const order = Math.log2(refcountBits);
  if (!Number.isInteger(order) || order < 0 || order > MAX_REFCOUNT_ORDER) {
    throw new RangeError(
      `Cannot measure: Refcount width must be a power of two and may not exceed ${
        2 ** MAX_REFCOUNT_ORDER
      } bits (it is ${refcountBits})`,
    );
  }
  if (!v3 && refcountBits !== 16) {
    throw new RangeError(
      "Cannot measure: Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
    );
  }
  if (!v3 && extendedL2) {
    throw new RangeError(
      "Cannot measure: Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
    );
  }
  return { clusterSize, refcountOrder: order, extendedL2, v3 };
}

/**
 * Bytes of the clusters of the source that hold data (and so must be
 * written): each cluster with data counted once, whole.
 */
async function dataClusterBytes(
  input: ImageInput,
  options: MeasureOptions,
  clusterSize: number,
): Promise<number> {
  let required = 0;
  /** The end of the last cluster counted: a range starting before it continues it. */
  let counted = 0;
  for await (
    const e of mapImageEntries(input, {
      format: options.format,
      references: options.references,
      openSource: options.openSource,
      http: options.http,
    })
  ) {
    if (e.zero || !e.data) continue;
    const from = Math.max(
      counted,
      Math.floor(e.start / clusterSize) * clusterSize,
    );
    const to = roundUp(e.start + e.length, clusterSize);
    if (to > from) required += to - from;
    counted = Math.max(counted, to);
  }
  return required;
}

/**
 * Bytes the persistent bitmaps of the source would take in a new qcow2
 * image of `clusterSize`: every bitmap fully allocated, its table, and the
 * bitmap directory.
 */
function bitmapBytes(
  bitmaps: { name: string; granularity: number }[],
  virtualSize: number,
  clusterSize: number,
): number {
  let total = 0;
  let directory = 0;
  const encoder = new TextEncoder();
  for (const b of bitmaps) {
    const bytes = divUp(divUp(virtualSize, b.granularity), 8);
    const clusters = divUp(bytes, clusterSize);
    total += clusters * clusterSize + roundUp(clusters * 8, clusterSize);
    // A directory entry: 24 bytes, the name, padded to 8.
    directory += roundUp(24 + encoder.encode(b.name).length, 8);
  }
  return total + roundUp(directory, clusterSize);
}

/**
 * Measures what a new image needs, as `qemu-img measure` does: from a
 * source image (its size and which of its clusters hold data, through its
 * backing chain), or for a blank image of `options.size` bytes.
 *
 * @param input The source (a path, a source or image bytes), or
 * undefined to measure a blank image of `options.size`.
 * @param options The output's format and creation options.
 * @returns The required and fully allocated sizes (and the bitmaps' when
 * both sides keep bitmaps).
 * @throws {RangeError} For options QEMU refuses (worded as qemu-img words
 * them), for both or neither of a source and a size, and for a size
 * beyond the output format's limits.
 * @throws {Qcow2Error} When the source cannot be opened or read.
 *
 * @example Measure a 1 GiB blank qcow2 image
 * ```ts
 * import assert from "node:assert";
 * import { measureImage } from "@qcow2pipe/qcow2pipe/tools";
 * const m = await measureImage(undefined, { outputFormat: "qcow2", size: 2 ** 30 });
 * assert.deepStrictEqual(m, { required: 393216, fullyAllocated: 1074135040 });
 * ```
 */
export async function measureImage(
  input: ImageInput | undefined,
  options: MeasureOptions = {},
): Promise<MeasureResult> {
  if ((input === undefined) === (options.size === undefined)) {
    throw new RangeError(
      input === undefined
        ? "Cannot measure: Either --size N or one filename must be specified."
        : "Cannot measure: --size N cannot be used together with a filename.",
    );
  }
  if (
    options.size !== undefined &&
    (!Number.isSafeInteger(options.size) || options.size < 0)
  ) {
    throw new RangeError(
      `Cannot measure: Invalid image size specified. Must be between 0 and ${MAX_SIZE_TEXT}.`,
    );
  }
  const qcow2 = (options.outputFormat ?? "raw") === "qcow2";
  const settings = qcow2 ? qcow2Settings(options) : undefined;
  const sizeOption = roundUp(options.size ?? 0, SECTOR_SIZE);
  if (settings) {
    const { clusterSize, extendedL2 } = settings;
    const l2Entry = extendedL2 ? EXTENDED_ENTRY_BYTES : ENTRY_BYTES;
    const l2Tables = divUp(
      Math.floor(sizeOption / clusterSize),
      clusterSize / l2Entry,
    );
    if (l2Tables * ENTRY_BYTES > MAX_L1_BYTES) {
      throw new RangeError(
        "Cannot measure: The image size is too large (try using a larger cluster size)",
      );
    }
  }
  if (input === undefined) {
    if (!settings) return { required: sizeOption, fullyAllocated: sizeOption };
    const virtual = roundUp(sizeOption, settings.clusterSize);
    const full = fullyAllocatedQcow2(
      virtual,
      settings.clusterSize,
      settings.refcountOrder,
      settings.extendedL2,
    );
    const prealloc = options.preallocation === "falloc" ||
      options.preallocation === "full";
    return {
      required: full - virtual + (prealloc ? virtual : 0),
      fullyAllocated: full,
    };
  }
  const info = await imageInfo(input, {
    format: options.format,
    references: options.references,
    openSource: options.openSource,
    http: options.http,
    allocatedSize: () => Promise.resolve(undefined),
  });
  if (!settings) {
    return { required: info.virtualSize, fullyAllocated: info.virtualSize };
  }
  const { clusterSize, refcountOrder, extendedL2, v3 } = settings;
  const virtual = roundUp(info.virtualSize, clusterSize);
  const everything = options.backing === true ||
    options.preallocation === "falloc" || options.preallocation === "full";
  const required = everything
    ? virtual
    : await dataClusterBytes(input, options, clusterSize);
  const full = fullyAllocatedQcow2(
    virtual,
    clusterSize,
    refcountOrder,
    extendedL2,
  );
  const result: MeasureResult = {
    required: full - virtual + required,
    fullyAllocated: full,
  };
  if (v3 && info.qcow2?.compat === "1.1") {
    result.bitmaps = bitmapBytes(
      info.qcow2.bitmaps ?? [],
      info.virtualSize,
      clusterSize,
    );
  }
  return result;
}

/**
 * The text `qemu-img measure` prints for a result (human form).
 *
 * @param result What {@linkcode measureImage} returned.
 * @returns `required size: N`, `fully allocated size: N` and, when
 * measured, `bitmaps size: N` (and ours, `converted size: N`), each on its
 * line.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatMeasure, measureImage } from "@qcow2pipe/qcow2pipe/tools";
 * const text = formatMeasure(await measureImage(undefined, { size: 4096 }));
 * assert.strictEqual(text, "required size: 4096\nfully allocated size: 4096\n");
 * ```
 */
export function formatMeasure(result: MeasureResult): string {
  let out = `required size: ${result.required}\n` +
    `fully allocated size: ${result.fullyAllocated}\n`;
  if (result.bitmaps !== undefined) {
    out += `bitmaps size: ${result.bitmaps}\n`;
  }
  if (result.converted !== undefined) {
    out += `converted size: ${result.converted}\n`;
  }
  return out;
}

/**
 * The text of `qemu-img measure --output=json` (without the final
 * newline): QEMU's key names and key order.
 *
 * @param result What {@linkcode measureImage} returned.
 * @returns QEMU's pretty JSON.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatMeasureJson } from "@qcow2pipe/qcow2pipe/tools";
 * const text = formatMeasureJson({ required: 512, fullyAllocated: 1024 });
 * assert.deepStrictEqual(JSON.parse(text), { required: 512, "fully-allocated": 1024 });
 * ```
 */
export function formatMeasureJson(result: MeasureResult): string {
  // Keys in QAPI schema order (BlockMeasureInfo); printing reorders them.
  const o: { [key: string]: number } = {
    required: result.required,
    "fully-allocated": result.fullyAllocated,
  };
  if (result.bitmaps !== undefined) o.bitmaps = result.bitmaps;
  if (result.converted !== undefined) o.converted = result.converted;
  return qemuJson(o);
}
