/**
 * Reading the snapshot table of a qcow2 image entry by entry, for reading
 * (strict: a table cut short by the end of the file is an error) and for
 * inspection (the missing bytes read as zeros, as QEMU reads them).
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { Qcow2Header } from "../../format/header.ts";
import {
  parseSnapshotTable,
  SNAPSHOT_FIXED_LENGTH,
  type SnapshotEntry,
  snapshotEntryLength,
} from "../../format/snapshot.ts";
import { concatBytes } from "../../bytes/binary.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { readPadded } from "../read.ts";
import { readExact } from "../_bounds.ts";

/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE. */
const MAX_SNAPSHOTS_SIZE = 1024 * 65536;

/** The snapshot table and the bytes it spans (QEMU's snapshots_size). */
export interface SnapshotTable {
  entries: SnapshotEntry[];
  /** From the table offset to the end of the last entry (unpadded). */
  size: number;
}

/**
 * Reads the snapshot table entry by entry (each length is known only from
 * its fixed part).
 *
 * @param inspection Zero-fill what lies past the end of the file instead
 * of refusing it.
 * @throws {Qcow2Error} When an entry is malformed or the table too large.
 */
export async function readSnapshotTable(
  source: RandomAccessSource,
  header: Qcow2Header,
  inspection = false,
): Promise<SnapshotTable> {
  if (header.nbSnapshots === 0) return { entries: [], size: 0 };
  const read = (at: number, length: number, what: string) =>
    inspection
      ? readPadded(source, at, length)
      : readExact(source, at, length, what);
  const start = header.snapshotsOffset;
  const parts: Uint8Array[] = [];
  let at = start;
  let end = start;
  for (let i = 0; i < header.nbSnapshots; i++) {
    const fixed = await read(at, SNAPSHOT_FIXED_LENGTH, `snapshot ${i} header`);
    const fv = new DataView(fixed.buffer, fixed.byteOffset, fixed.byteLength);
    const used = SNAPSHOT_FIXED_LENGTH + fv.getUint32(36) + fv.getUint16(12) +
      fv.getUint16(14);
    const length = snapshotEntryLength(fixed, 0);
    if (at + used - start > MAX_SNAPSHOTS_SIZE) {
      throw new Qcow2Error(
        "BAD_SNAPSHOT",
        `Cannot open image: snapshot table at ${
          hex(start)
        } is larger than QEMU's limit of ${MAX_SNAPSHOTS_SIZE} bytes`,
        { offset: start, field: "snapshots_offset" },
      );
    }
    // QEMU pads entries to 8 bytes only between them: the last entry (often
    // the last bytes of the file) has no padding, so read just its bytes.
    const entry = new Uint8Array(length);
    entry.set(await read(at, Math.min(used, length), `snapshot ${i}`));
    parts.push(entry);
    end = at + used;
    at += length;
  }
  return {
    entries: parseSnapshotTable(concatBytes(parts), header.nbSnapshots, start),
    size: end - start,
  };
}
