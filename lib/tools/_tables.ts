// Reading the snapshot table and the bitmap directory of an image, as QEMU
// reads them when it opens one.

import { hex, Qcow2Error } from "../format/errors.ts";
import type { Qcow2Header } from "../format/header.ts";
import {
  parseSnapshotTable,
  SNAPSHOT_FIXED_LENGTH,
  type SnapshotEntry,
  snapshotEntryLength,
} from "../format/snapshot.ts";
import { type BitmapEntry, parseBitmapDirectory } from "../format/bitmaps.ts";
import { AUTOCLEAR } from "../format/constants.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { readPadded } from "./_layers.ts";

/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE. */
const MAX_SNAPSHOTS_SIZE = 1024 * 65536;

/** The snapshot table and the bytes it spans (QEMU's snapshots_size). */
export interface SnapshotTable {
  entries: SnapshotEntry[];
  /** From the table offset to the end of the last entry (unpadded). */
  size: number;
}

/**
 * Reads the snapshot table entry by entry.
 *
 * @throws {Qcow2Error} When an entry is malformed or the table too large.
 */
export async function readSnapshotTable(
  source: RandomAccessSource,
  header: Qcow2Header,
): Promise<SnapshotTable> {
  if (header.nbSnapshots === 0) return { entries: [], size: 0 };
  const start = header.snapshotsOffset;
  const parts: Uint8Array[] = [];
  let at = start;
  let end = start;
  for (let i = 0; i < header.nbSnapshots; i++) {
    const fixed = await readPadded(source, at, SNAPSHOT_FIXED_LENGTH);
    const fv = new DataView(fixed.buffer, fixed.byteOffset, fixed.byteLength);
    const used = SNAPSHOT_FIXED_LENGTH + fv.getUint32(36) + fv.getUint16(12) +
      fv.getUint16(14);
    const length = snapshotEntryLength(fixed, 0);
    if (at + used - start > MAX_SNAPSHOTS_SIZE) {
      throw new Qcow2Error(
        "BAD_SNAPSHOT",
        `Cannot read snapshot table at ${
          hex(start)
        }: it is larger than QEMU's limit of ${MAX_SNAPSHOTS_SIZE} bytes`,
        { offset: start, field: "snapshots_offset" },
      );
    }
    const entry = new Uint8Array(length);
    entry.set(await readPadded(source, at, Math.min(used, length)));
    parts.push(entry);
    end = at + used;
    at += length;
  }
  const table = new Uint8Array(at - start);
  let pos = 0;
  for (const p of parts) {
    table.set(p, pos);
    pos += p.length;
  }
  return {
    entries: parseSnapshotTable(table, header.nbSnapshots, start),
    size: end - start,
  };
}

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

/**
 * Reads and parses the bitmap directory.
 *
 * @throws {Qcow2Error} When the directory is malformed.
 */
export async function readBitmapDirectory(
  source: RandomAccessSource,
  dir: BitmapDirectoryInfo,
): Promise<BitmapEntry[]> {
  const bytes = await readPadded(source, dir.offset, dir.size);
  return parseBitmapDirectory(bytes, dir.count, dir.offset);
}
