// Reading the bitmap directory of an image, as QEMU reads it when it opens
// one.

import { hex, Qcow2Error } from "../format/errors.ts";
import type { Qcow2Header } from "../format/header.ts";
import {
  BITMAP_FLAGS,
  type BitmapEntry,
  parseBitmapDirectory,
} from "../format/bitmaps.ts";
import { AUTOCLEAR } from "../format/constants.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { readPadded } from "../reader/_read.ts";
import { qcow2VirtualSize } from "../format/geometry.ts";

/** Where the bitmap directory is, when QEMU takes the bitmaps into account. */
export interface BitmapDirectoryInfo {
  offset: number;
  size: number;
  count: number;
}

/**
 * The bitmaps extension, when present and its autoclear bit is set (QEMU
 * ignores the bitmaps of an image whose bit was cleared by a program that
 * does not know them).
 */
export function bitmapDirectoryOf(
  header: Qcow2Header,
): BitmapDirectoryInfo | undefined {
  if ((header.autoclearFeatures & AUTOCLEAR.BITMAPS) === 0n) return undefined;
  for (const ext of header.extensions) {
    if (ext.kind === "bitmaps") {
      return {
        offset: ext.directoryOffset,
        size: ext.directorySize,
        count: ext.nbBitmaps,
      };
    }
  }
  return undefined;
}

/** QEMU's constraints on bitmap directory entries (qcow2-bitmap.c, BME_*). */
const BME_MAX_TABLE_SIZE = 0x8000000;
const BME_MAX_PHYS_SIZE = 0x20000000;
const BME_MIN_GRANULARITY_BITS = 9;
const BME_MAX_GRANULARITY_BITS = 31;
const BME_MAX_NAME_SIZE = 1023;

/**
 * Why a bitmap directory entry breaks QEMU's constraints (its
 * check_dir_entry(); QEMU then refuses to open the image), or undefined.
 * Checked before a bitmap table is read: its size is bounded by the
 * virtual disk, never taken from the entry alone.
 *
 * @param entry The entry.
 * @param clusterSize The image's cluster size.
 * @param virtualSize The virtual size QEMU sees (whole sectors).
 */
export function bitmapEntryProblem(
  entry: BitmapEntry,
  clusterSize: number,
  virtualSize: number,
): string | undefined {
  const what = `bitmap "${entry.name}"`;
  if (entry.extraData.length !== 0) {
    return `${what} has ${entry.extraData.length} bytes of extra data, which QEMU does not support`;
  }
  if (entry.tableSize === 0 || entry.tableSize > BME_MAX_TABLE_SIZE) {
    return `${what} bitmap_table_size ${entry.tableSize} is out of range [1, ${BME_MAX_TABLE_SIZE}]`;
  }
  if (entry.tableOffset === 0 || entry.tableOffset % clusterSize !== 0) {
    return `${what} bitmap_table_offset ${
      hex(entry.tableOffset)
    } is not a non-zero multiple of the cluster size ${clusterSize}`;
  }
  if (
    entry.granularityBits < BME_MIN_GRANULARITY_BITS ||
    entry.granularityBits > BME_MAX_GRANULARITY_BITS
  ) {
    return `${what} granularity_bits ${entry.granularityBits} is out of range [${BME_MIN_GRANULARITY_BITS}, ${BME_MAX_GRANULARITY_BITS}]`;
  }
  if ((entry.flags & ~(BITMAP_FLAGS.IN_USE | BITMAP_FLAGS.AUTO)) !== 0) {
    return `${what} flags ${hex(entry.flags >>> 0)} has reserved bits set`;
  }
  if (new TextEncoder().encode(entry.name).length > BME_MAX_NAME_SIZE) {
    return `${what} name is longer than ${BME_MAX_NAME_SIZE} bytes`;
  }
  if (entry.type !== 1) {
    return `${what} type ${entry.type} is not 1 (dirty tracking bitmap)`;
  }
  const phys = entry.tableSize * clusterSize;
  if (phys > BME_MAX_PHYS_SIZE) {
    return `${what} bitmap_table_size ${entry.tableSize} means ${phys} bytes of bitmap data, more than QEMU's limit of ${BME_MAX_PHYS_SIZE}`;
  }
  if (
    (entry.flags & BITMAP_FLAGS.IN_USE) === 0 &&
    virtualSize > phys * 8 * 2 ** entry.granularityBits
  ) {
    return `${what} bitmap_table_size ${entry.tableSize} is too small for virtual size ${virtualSize} at granularity ${
      2 ** entry.granularityBits
    }`;
  }
  return undefined;
}

/**
 * Reads and parses the bitmap directory, and checks its entries against
 * QEMU's constraints.
 *
 * @throws {Qcow2Error} When the directory is malformed or an entry breaks
 * the constraints (QEMU does not open such an image).
 */
export async function readBitmapDirectory(
  source: RandomAccessSource,
  dir: BitmapDirectoryInfo,
  header: Qcow2Header,
): Promise<BitmapEntry[]> {
  const bytes = await readPadded(source, dir.offset, dir.size);
  const entries = parseBitmapDirectory(bytes, dir.count, dir.offset);
  for (const entry of entries) {
    const problem = bitmapEntryProblem(
      entry,
      2 ** header.clusterBits,
      qcow2VirtualSize(header.size),
    );
    if (problem !== undefined) {
      throw new Qcow2Error(
        "BAD_EXTENSION",
        `Cannot open image: ${problem}`,
        { offset: dir.offset, field: "bitmap_directory_offset" },
      );
    }
  }
  return entries;
}
