/**
 * `--sparsify`: find the free space of the filesystems on a raw disk and
 * let it read as zeros in the converted image, without a VM and without
 * changing the source.
 *
 * Partition tables: GPT (primary header and entry array, CRC32s checked)
 * and MBR (primary and logical partitions), or none (a bare filesystem).
 * Filesystems: ext2, ext3 and ext4 (free blocks by the block bitmaps, with
 * every checksum checked, every count cross-checked, and every block a
 * possibly-live inode uses required to be marked in use), btrfs on one
 * device (free space by the extent tree, checked against every tree and
 * file extent), XFS v4 and v5 (the free-space btrees, once every inode in
 * use and a clean log agree), FAT12/16/32 (free clusters by the FAT,
 * checked against every copy and a walk of the directory tree), NTFS (the
 * clusters `$Bitmap` marks free, checked against every MFT record) and
 * Linux swap (all but the header page; only in a partition typed swap, or
 * on a bare disk or in a logical volume). LVM2 physical volumes: the extents
 * no LV uses, and each linear LV read as a partition of its own (its
 * segments laid end to end). A region carrying the signatures of two
 * filesystems, any other content, and any filesystem whose metadata
 * disagrees with itself, are copied as they are; the
 * {@linkcode SparsifyReport} says what was found and why.
 *
 * - {@linkcode mapFreeSpace}: the map of a disk read at random
 * - {@linkcode freeSpaceChunks}: a disk read at random, free ranges never read
 * - {@linkcode FreeSpaceStream}: the stage for a byte stream (a pipe)
 *
 * @example Sparsify a disk image in a file
 * ```ts
 * import assert from "node:assert";
 * import { FileSource } from "../host/file_source.ts";
 * import { freeSpaceChunks } from "./mod.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(1 << 20)); // no table, no filesystem
 * await using disk = await FileSource.open(path);
 * const { readable, report } = await freeSpaceChunks(disk);
 * await readable.cancel();
 * assert.strictEqual(report.regions[0].status, "untouched");
 * await Deno.remove(path);
 * ```
 *
 * @module
 */

export * from "./report.ts";
export { type FreeSpaceMap, mapFreeSpace } from "./map.ts";
export * from "./chunks.ts";
export * from "./stream.ts";
