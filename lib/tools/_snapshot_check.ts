// The snapshot table in the qcow2 check of QEMU 7.2
// (qcow2_check_read_snapshot_table(), qcow2_check_fix_snapshot_table() and
// qcow2_write_snapshots() in block/qcow2-snapshot.c), with its repairs:
//
// - read first, before the references are counted: with -r all, snapshots
//   past QEMU's count limit or past its size limit are dropped off the end
//   (the header's count written at once: this only leaks clusters, which
//   the refcount repair then frees), and extra data past QEMU's limit is
//   cut off; entries of a version 3 image with less than 16 bytes of extra
//   data are incomplete;
// - rewritten last, once the refcounts are right, when an entry was cut
//   or is incomplete: the new table goes to clusters nothing references,
//   their refcounts raised first; then the table is written, then the
//   header points to it (one write), then the old table's clusters are
//   freed. A cut at any point leaves at worst a leak.

import { MAX_SNAPSHOTS } from "../format/constants.ts";
import { Qcow2Error } from "../format/errors.ts";
import type { Qcow2Header } from "../format/header.ts";
import { getRefcount, setRefcount } from "../format/refcount.ts";
import { completeSnapshotEntries } from "../format/snapshot.ts";
import type { RandomAccessSource } from "../io/source.ts";
import {
  readSnapshotTable,
  type SnapshotTable,
} from "../reader/qcow2/snapshots.ts";
import {
  RefblockError,
  type StoredRefcounts,
} from "../reader/qcow2/refcounts.ts";
import type { RefcountMap } from "./_refmap.ts";
import type { RepairWriter } from "./_qcow2_check.ts";

/** Bytes of extra data a version 3 entry must have (VM state and disk size). */
const V3_EXTRA_DATA = 16;

/** QEMU's QCOW_MAX_SNAPSHOTS_SIZE: the most bytes a rewritten table takes. */
const MAX_TABLE_BYTES = 1024 * 65536;

/** The counters of the snapshot part of a check (QEMU's snapshot_res). */
export interface SnapshotCounters {
  corruptions: number;
  checkErrors: number;
  corruptionsFixed: number;
}

/** Why the snapshot part stopped the check: `Check failed: <strerror>`. */
export class SnapshotCheckFailure extends Error {
  constructor(readonly strerror: string) {
    super(`Check failed: ${strerror}`);
    this.name = "SnapshotCheckFailure";
  }
}

/**
 * qcow2_check_read_snapshot_table() (`repair`: with -r all): the table as the rest of the check
 * sees it, and the header (its snapshot count lowered on disk when
 * snapshots were dropped).
 *
 * @throws {SnapshotCheckFailure} When the table cannot be read (its lines
 * are in `messages`).
 */
export async function readSnapshotsForCheck(
  source: RandomAccessSource,
  header: Qcow2Header,
  counters: SnapshotCounters,
  messages: string[],
  repair: boolean,
  writer: RepairWriter | undefined,
): Promise<{ table: SnapshotTable; header: Qcow2Header }> {
  let count = header.nbSnapshots;
  let reduced = 0;
  if (count > MAX_SNAPSHOTS && repair) {
    messages.push(`Discarding ${count - MAX_SNAPSHOTS} overhanging snapshots`);
    reduced += count - MAX_SNAPSHOTS;
    count = MAX_SNAPSHOTS;
  }
  // qcow2_validate_table() of the count and the offset.
  const cs = 2 ** header.clusterBits;
  if (count > MAX_SNAPSHOTS || header.snapshotsOffset % cs !== 0) {
    counters.checkErrors++;
    const tooLarge = count > MAX_SNAPSHOTS;
    messages.push(
      `qcow2pipe: ERROR snapshot table ${
        tooLarge ? "too large" : "offset invalid"
      }`,
    );
    if (tooLarge) {
      messages.push(
        `You can force-remove all ${
          count - MAX_SNAPSHOTS
        } overhanging snapshots with qemu-img check -r all`,
      );
    }
    throw new SnapshotCheckFailure(
      tooLarge ? "File too large" : "Invalid argument",
    );
  }
  let table: SnapshotTable;
  try {
    table = await readSnapshotTable(source, header, {
      inspection: true,
      repair,
      count,
    });
  } catch (err) {
    if (!(err instanceof Qcow2Error)) throw err;
    counters.checkErrors++;
    const words = err.qemu !== undefined && "reason" in err.qemu
      ? err.qemu
      : { reason: err.message, hint: undefined };
    messages.push(
      `qcow2pipe: ERROR failed to read the snapshot table: ${words.reason}`,
    );
    if (words.hint !== undefined) messages.push(words.hint);
    throw new SnapshotCheckFailure(
      err.field === "extra_data_size" || err.field === "snapshots_offset"
        ? "File too large"
        : "Invalid argument",
    );
  }
  messages.push(...table.discarded.messages);
  reduced += table.discarded.overhanging;
  counters.corruptions += reduced + table.discarded.extraDropped;
  let now = header;
  if (reduced > 0) {
    // The count on disk first: the refcount check counts what it says.
    now = { ...header, nbSnapshots: table.entries.length };
    const count = new Uint8Array(4);
    new DataView(count.buffer).setUint32(0, now.nbSnapshots);
    await writer!.writeAt(60, count);
    await writer!.sync();
    counters.corruptionsFixed += reduced;
    counters.corruptions -= reduced;
  }
  if (header.version >= 3) {
    table.entries.forEach((entry, i) => {
      if (entry.extraData.length >= V3_EXTRA_DATA) return;
      counters.corruptions++;
      messages.push(
        `${
          repair ? "Repairing" : "ERROR"
        } snapshot table entry ${i} is incomplete`,
      );
    });
  }
  return { table, header: now };
}

/**
 * qcow2_check_fix_snapshot_table() and qcow2_write_snapshots(): with
 * -r all (`repair`), a table with entries cut or incomplete is written anew.
 *
 * @returns The header pointing to the new table (the same one when
 * nothing was written).
 * @throws {SnapshotCheckFailure} When the table cannot be written.
 */
export async function fixSnapshotTable(
  header: Qcow2Header,
  table: SnapshotTable,
  counters: SnapshotCounters,
  messages: string[],
  repair: boolean,
  writer: RepairWriter | undefined,
  stored: StoredRefcounts,
  refs: RefcountMap,
): Promise<Qcow2Header> {
  if (counters.corruptions === 0 || !repair) return header;
  const failed = (strerror: string): never => {
    counters.checkErrors++;
    messages.push(`ERROR failed to update snapshot table: ${strerror}`);
    throw new SnapshotCheckFailure(strerror);
  };
  const diskSize = Math.floor(header.size / 512) * 512;
  const bytes = completeSnapshotEntries(
    table.bytes,
    table.entries.length,
    diskSize,
  );
  if (bytes.length > MAX_TABLE_BYTES) failed("File too large");
  const cs = 2 ** header.clusterBits;
  const clusters = Math.ceil(bytes.length / cs);
  const first = await freeRun(stored, refs, clusters);
  if (first === undefined) failed("No space left on device");
  // Refcounts first, then the table, then the header, then the old table
  // freed: each step durable before the next.
  await addRefcounts(writer!, stored, first!, first! + clusters, +1);
  await writer!.writeAt(first! * cs, bytes);
  await writer!.sync();
  const now: Qcow2Header = {
    ...header,
    nbSnapshots: table.entries.length,
    snapshotsOffset: first! * cs,
  };
  const pointer = new Uint8Array(12);
  const view = new DataView(pointer.buffer);
  view.setUint32(0, now.nbSnapshots);
  view.setBigUint64(4, BigInt(now.snapshotsOffset));
  await writer!.writeAt(60, pointer);
  await writer!.sync();
  if (table.size > 0) {
    const start = Math.floor(header.snapshotsOffset / cs);
    const end = Math.floor((header.snapshotsOffset + table.size - 1) / cs) + 1;
    await addRefcounts(writer!, stored, start, end, -1);
  }
  counters.corruptionsFixed += counters.corruptions;
  counters.corruptions = 0;
  return now;
}

/**
 * The first run of `count` clusters that nothing references and whose
 * stored refcount is 0, inside the refcount blocks the image has (a run
 * that would need a new refcount block is not taken).
 */
async function freeRun(
  stored: StoredRefcounts,
  refs: RefcountMap,
  count: number,
): Promise<number | undefined> {
  const per = stored.perBlock;
  let run = 0;
  for (let index = 0; index < stored.size; index++) {
    let block: Uint8Array | null;
    try {
      block = await stored.block(index);
    } catch (err) {
      if (!(err instanceof RefblockError)) throw err;
      block = null;
    }
    if (block === null) {
      run = 0;
      continue;
    }
    for (let slot = 0; slot < per; slot++) {
      const cluster = index * per + slot;
      const free = getRefcount(block, slot, stored.order) === 0 &&
        (cluster >= refs.size || refs.get(cluster) === 0);
      run = free ? run + 1 : 0;
      if (run === count) return cluster - count + 1;
    }
  }
  return undefined;
}

/** Adds `delta` to the stored refcounts of clusters [start, end) (never below 0). */
async function addRefcounts(
  writer: RepairWriter,
  stored: StoredRefcounts,
  start: number,
  end: number,
  delta: number,
): Promise<void> {
  const per = stored.perBlock;
  for (let c = start; c < end;) {
    const index = Math.floor(c / per);
    const blockEnd = Math.min(end, (index + 1) * per);
    let block: Uint8Array | null = null;
    try {
      block = await stored.block(index);
    } catch (err) {
      if (!(err instanceof RefblockError)) throw err;
    }
    if (block !== null) {
      const edited = block.slice();
      for (let k = c; k < blockEnd; k++) {
        const n = getRefcount(edited, k - index * per, stored.order);
        setRefcount(
          edited,
          k - index * per,
          stored.order,
          Math.max(0, n + delta),
        );
      }
      await writer.writeAt(stored.blockOffset(index), edited);
      stored.replace(index, edited);
    }
    c = blockEnd;
  }
  await writer.sync();
}
