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
} from "../../format/snapshot.ts";
import { MAX_SNAPSHOT_EXTRA_DATA } from "../../format/constants.ts";
import { alignUp, concatBytes } from "../../bytes/binary.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { readPadded } from "../read.ts";
import { readExact } from "../_bounds.ts";

/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE. */
const MAX_SNAPSHOTS_SIZE = 1024 * 65536;
/** QEMU's bound on the bytes the table spans on disk (a C int). */
const INT_MAX = 2 ** 31 - 1;

/** The snapshot table and the bytes it spans (QEMU's snapshots_size). */
export interface SnapshotTable {
  entries: SnapshotEntry[];
  /** From the table offset to the end of the last entry (unpadded). */
  size: number;
  /**
   * The entries' bytes, each padded to 8 (with `repair`, extra data past
   * QEMU's limit cut off and its size field lowered to the limit).
   */
  bytes: Uint8Array;
  /** With `repair`: what was discarded, in QEMU's lines. */
  discarded: {
    /** `Discarding ...` lines, in order. */
    messages: string[];
    /** Entries dropped off the end (the table was too big). */
    overhanging: number;
    /** Entries whose extra data was cut to QEMU's limit. */
    extraDropped: number;
  };
}

/** How {@linkcode readSnapshotTable} reads. */
export interface ReadSnapshotsOptions {
  /**
   * Zero-fill what lies past the end of the file instead of refusing it.
   * @default {false}
   */
  inspection?: boolean;
  /**
   * Repair as QEMU's `check -r all` reads (qcow2_do_read_snapshots()):
   * extra data past the limit is cut off, and entries from the first that
   * takes the table past its size limit are dropped, instead of refusing.
   * @default {false}
   */
  repair?: boolean;
  /**
   * Entries to read.
   * @default {header.nbSnapshots}
   */
  count?: number;
}

/**
 * Reads the snapshot table entry by entry (each length is known only from
 * its fixed part), with QEMU's limits in its order: an entry's extra data,
 * then the size of the table so far.
 *
 * @throws {Qcow2Error} When an entry is malformed or the table too large.
 */
export async function readSnapshotTable(
  source: RandomAccessSource,
  header: Qcow2Header,
  options: ReadSnapshotsOptions = {},
): Promise<SnapshotTable> {
  const { inspection = false, repair = false } = options;
  const count = options.count ?? header.nbSnapshots;
  const discarded = {
    messages: [] as string[],
    overhanging: 0,
    extraDropped: 0,
  };
  if (count === 0) {
    return { entries: [], size: 0, bytes: new Uint8Array(0), discarded };
  }
  const read = (at: number, length: number, what: string) =>
    inspection
      ? readPadded(source, at, length)
      : readExact(source, at, length, what);
  const start = header.snapshotsOffset;
  const parts: Uint8Array[] = [];
  let at = start;
  let end = start;
  let tableLength = 0;
  for (let i = 0; i < count; i++) {
    const fixed = await read(at, SNAPSHOT_FIXED_LENGTH, `snapshot ${i} header`);
    const fv = new DataView(fixed.buffer, fixed.byteOffset, fixed.byteLength);
    const extraSize = fv.getUint32(36);
    const names = fv.getUint16(12) + fv.getUint16(14);
    let kept = extraSize;
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      if (!repair) {
        throw new Qcow2Error(
          "BAD_SNAPSHOT",
          `Cannot open image: snapshot ${i} extra_data_size ${extraSize} is out of range [0, ${MAX_SNAPSHOT_EXTRA_DATA}]`,
          {
            offset: at + 36,
            field: "extra_data_size",
            qemu: {
              reason: `Too much extra metadata in snapshot table entry ${i}`,
              hint:
                "You can force-remove this extra metadata with qemu-img check -r all",
            },
          },
        );
      }
      discarded.messages.push(
        `Discarding too much extra metadata in snapshot table entry ${i} (${extraSize} > ${MAX_SNAPSHOT_EXTRA_DATA})`,
      );
      discarded.extraDropped++;
      kept = MAX_SNAPSHOT_EXTRA_DATA;
    }
    const used = SNAPSHOT_FIXED_LENGTH + extraSize + names;
    tableLength = alignUp(tableLength, 8) + SNAPSHOT_FIXED_LENGTH + kept +
      names;
    if (tableLength > MAX_SNAPSHOTS_SIZE || at + used - start > INT_MAX) {
      const over = count - i;
      if (!repair) {
        throw new Qcow2Error(
          "BAD_SNAPSHOT",
          `Cannot open image: snapshot table at ${
            hex(start)
          } is larger than QEMU's limit of ${MAX_SNAPSHOTS_SIZE} bytes`,
          {
            offset: start,
            field: "snapshots_offset",
            qemu: {
              reason: "Snapshot table is too big",
              hint:
                `You can force-remove all ${over} overhanging snapshots with qemu-img check -r all`,
            },
          },
        );
      }
      discarded.messages.push(
        `Discarding ${over} overhanging snapshots (snapshot table is too big)`,
      );
      discarded.overhanging += over;
      break;
    }
    // QEMU pads entries to 8 bytes only between them: the last entry (often
    // the last bytes of the file) has no padding, so read just its bytes.
    const entry = new Uint8Array(
      alignUp(SNAPSHOT_FIXED_LENGTH + kept + names, 8),
    );
    if (kept === extraSize) {
      entry.set(await read(at, used, `snapshot ${i}`));
    } else {
      const head = SNAPSHOT_FIXED_LENGTH + kept;
      entry.set(await read(at, head, `snapshot ${i}`));
      new DataView(entry.buffer).setUint32(36, kept);
      const tail = at + SNAPSHOT_FIXED_LENGTH + extraSize;
      entry.set(await read(tail, names, `snapshot ${i} ID and name`), head);
    }
    parts.push(entry);
    end = at + used;
    at = alignUp(at + used, 8);
  }
  const bytes = concatBytes(parts);
  return {
    entries: parseSnapshotTable(bytes, parts.length, start),
    size: end - start,
    bytes,
    discarded,
  };
}
