/**
 * `--sparsify`: find the free space of the filesystems on a raw disk and
 * let it read as zeros in the converted image, without a VM and without
 * changing the source.
 *
 * Partition tables: GPT (primary header and entry array, CRC32s checked)
 * and MBR (primary and logical partitions), or none (a bare filesystem).
 * Filesystems: ext2, ext3 and ext4 (free blocks by the block bitmaps, with
 * every checksum checked), Linux swap (all but the header page) and NTFS
 * (the clusters `$Bitmap` marks free, checked against every MFT record). Any
 * other content, and any filesystem that fails a check, is copied as it
 * is; the {@linkcode SparsifyReport} says what was found and why.
 *
 * - {@linkcode mapFreeSpace}: the map of a disk read at random
 * - {@linkcode freeSpaceChunks}: a disk read at random, free ranges never read
 * - {@linkcode FreeSpaceStream}: the stage for a byte stream (a pipe)
 *
 * @example Sparsify a disk image in a file
 * ```ts
 * import assert from "node:assert";
 * import { FileSource } from "../io/file_source.ts";
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
