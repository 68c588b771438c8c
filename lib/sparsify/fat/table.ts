/**
 * The file allocation table: entry `n` says what follows cluster `n` in its
 * chain. Every copy of the FAT is read over the entries of existing
 * clusters and must be byte-identical to the first (Linux reads the first
 * copy; Windows the active one, which without mirroring may be another):
 * any difference leaves the volume as it is. The first copy is kept in
 * memory for the directory walk, within {@linkcode MAX_FAT_BYTES}; after
 * it, only the set of free clusters (one bit per cluster) is kept.
 *
 * ```text
 * entry values (FAT12 / FAT16 / FAT32, the top 4 bits of FAT32 ignored):
 *   0                       free
 *   1                       reserved, never in a chain
 *   2 .. clusters + 1       next cluster of the chain
 *   0xff7 / 0xfff7 / 0x0ffffff7   bad cluster
 *   >= 0xff8 / 0xfff8 / 0x0ffffff8 end of chain
 * FAT12 packs two entries in three bytes: entry n is the 16-bit word at
 * byte n + n/2, its low 12 bits for even n, its high 12 bits for odd n.
 * entry 1 of FAT16 / FAT32: bit 15 / 27 set = cleanly unmounted,
 * bit 14 / 26 set = no disk errors.
 * ```
 *
 * @module
 */

import { hex, Refusal, type RegionReader } from "../_region.ts";
import {
  fatBytesUsed,
  fatOffset,
  type FatType,
  type FatVolume,
  FIRST_CLUSTER,
} from "./boot.ts";

/** Most bytes of one FAT copy read (8 Mi FAT32 clusters, 32 GiB at 4 KiB). */
export const MAX_FAT_BYTES = 32 * 1024 * 1024;
/** Most bytes of all FAT copies read together. */
export const MAX_ALL_FATS_BYTES = 128 * 1024 * 1024;
/**
 * Bytes of FAT read at a time: a multiple of 3 and 4, so that no FAT12,
 * FAT16 or FAT32 entry straddles two windows.
 */
export const FAT_WINDOW_BYTES = 768 * 1024;

/** Entry values that end a chain, by FAT type. */
export const END_OF_CHAIN: Readonly<Record<FatType, number>> = {
  12: 0xff8,
  16: 0xfff8,
  32: 0x0ffffff8,
};
/** The bad-cluster mark, by FAT type. */
export const BAD_CLUSTER: Readonly<Record<FatType, number>> = {
  12: 0xff7,
  16: 0xfff7,
  32: 0x0ffffff7,
};
/** Entry 1 bits: clean shutdown and no hard errors (FAT16, FAT32). */
const CLEAN_BITS: Readonly<Record<FatType, [number, number]>> = {
  12: [0, 0],
  16: [0x8000, 0x4000],
  32: [0x08000000, 0x04000000],
};
/** FAT32 entries use the low 28 bits. */
const FAT32_MASK = 0x0fffffff;

/**
 * Entry `n` of a FAT whose bytes start at entry `base` (a multiple of 2).
 *
 * @param type FAT type.
 * @param bytes FAT bytes.
 * @param n Entry number.
 * @param base Entry number of the first byte (0 for a whole FAT).
 * @returns The entry, FAT32's top 4 bits cleared.
 *
 * @example Two FAT12 entries in three bytes
 * ```ts
 * import assert from "node:assert";
 * import { fatEntry } from "./table.ts";
 * const bytes = Uint8Array.of(0x03, 0x40, 0x00); // entry 0 = 0x003, entry 1 = 0x004
 * assert.deepStrictEqual([fatEntry(12, bytes, 0), fatEntry(12, bytes, 1)], [3, 4]);
 * ```
 */
export function fatEntry(
  type: FatType,
  bytes: Uint8Array,
  n: number,
  base = 0,
): number {
  const i = n - base;
  if (type === 32) {
    const at = 4 * i;
    return (bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 |
      bytes[at + 3] << 24) & FAT32_MASK;
  }
  if (type === 16) return bytes[2 * i] | bytes[2 * i + 1] << 8;
  const at = i + (i >> 1);
  const word = bytes[at] | bytes[at + 1] << 8;
  return i & 1 ? word >> 4 : word & 0xfff;
}

/** The first FAT copy, checked against the others, in memory. */
export interface FatTable {
  /** Entry of cluster `n` (0 .. clusters + 1). */
  entry(n: number): number;
  /** Free data clusters (entries 0 among clusters 2 .. clusters + 1). */
  readonly free: number;
  /** Bit `n` set: cluster `n` is free. */
  readonly freeBits: Uint8Array;
}

/** Windows the used part of one FAT copy is read in. */
export function fatWindowCount(vol: FatVolume): number {
  return Math.ceil(fatBytesUsed(vol) / FAT_WINDOW_BYTES);
}

/**
 * Reads window `w` of FAT copy `k`, as the analysis and the listing of
 * free ranges both read it (a stream serves the second from the first).
 */
export function readFatWindow(
  region: RegionReader,
  vol: FatVolume,
  k: number,
  w: number,
): Promise<Uint8Array> {
  const from = w * FAT_WINDOW_BYTES;
  const length = Math.min(FAT_WINDOW_BYTES, fatBytesUsed(vol) - from);
  const at = fatOffset(vol, k) + from;
  return region.read(
    at,
    length,
    `FAT ${k + 1} (bytes ${at}-${at + length - 1})`,
  );
}

/**
 * Reads the used part of every FAT copy, keeps the first in memory and
 * requires the others to be byte-identical; checks the clean-shutdown and
 * no-error bits of entry 1 (FAT16, FAT32) and counts free clusters.
 *
 * @param region The volume.
 * @param vol Its geometry.
 * @returns The first copy.
 * @throws {Refusal} When the FATs are too large to read within the memory
 * budget, differ, or say the volume is dirty or had I/O errors.
 */
export async function readFatTable(
  region: RegionReader,
  vol: FatVolume,
): Promise<FatTable> {
  const used = fatBytesUsed(vol);
  if (used > MAX_FAT_BYTES) {
    throw new Refusal(
      `FAT of ${used} bytes (${vol.clusters} clusters) is larger than the ${MAX_FAT_BYTES} bytes read of a FAT`,
    );
  }
  if (used * vol.fats > MAX_ALL_FATS_BYTES) {
    throw new Refusal(
      `${vol.fats} FATs of ${used} bytes are more than the ${MAX_ALL_FATS_BYTES} bytes of FAT compared`,
    );
  }
  const bytes = new Uint8Array(used);
  const windows = fatWindowCount(vol);
  for (let w = 0; w < windows; w++) {
    bytes.set(await readFatWindow(region, vol, 0, w), w * FAT_WINDOW_BYTES);
  }
  for (let k = 1; k < vol.fats; k++) {
    for (let w = 0; w < windows; w++) {
      const part = await readFatWindow(region, vol, k, w);
      const base = w * FAT_WINDOW_BYTES;
      for (let i = 0; i < part.length; i++) {
        if (part[i] !== bytes[base + i]) {
          throw new Refusal(
            `FAT ${k + 1} differs from FAT 1 at byte ${base + i} (${
              hex(part[i])
            } against ${hex(bytes[base + i])}, near the entry of cluster ${
              Math.floor((base + i) * 8 / vol.type)
            })`,
          );
        }
      }
    }
  }
  const entry = (n: number) => fatEntry(vol.type, bytes, n);
  const [clean, noErrors] = CLEAN_BITS[vol.type];
  const first = entry(1);
  if (clean && !(first & clean)) {
    throw new Refusal(
      `not cleanly unmounted (FAT entry 1 is ${hex(first)}, clean bit clear)`,
    );
  }
  if (noErrors && !(first & noErrors)) {
    throw new Refusal(
      `disk errors recorded (FAT entry 1 is ${hex(first)}, error bit clear)`,
    );
  }
  const end = vol.clusters + FIRST_CLUSTER;
  const freeBits = new Uint8Array(Math.ceil(end / 8));
  let free = 0;
  for (let n = FIRST_CLUSTER; n < end; n++) {
    if (entry(n) === 0) {
      free++;
      freeBits[n >> 3] |= 1 << (n & 7);
    }
  }
  return { entry, free, freeBits };
}
