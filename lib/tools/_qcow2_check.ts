// The qcow2 check of QEMU 7.2 (qcow2_check_refcounts() in
// block/qcow2-refcount.c, and the end of qcow2_co_check_locked()), with
// its repairs: check and `check -r` run this one flow, the check with no
// fix and nothing to write to.
//
// Order of a repair, as QEMU makes it: references are counted; the stored
// refcounts are compared with the counts once without fixing (its lines
// are printed); then either the refcount structures are rebuilt (-r all,
// when a cluster in use has refcount 0 or a refcount block is unusable)
// or the comparison runs again, fixing what the mode allows (leaks with
// -r leaks, both directions with -r all); then the COPIED flags; last the
// dirty and corrupt bits are cleared when nothing is left broken.
//
// Crash safety: every change is written before what depends on it, with a
// sync between steps. A refcount is only ever raised to its reference
// count or lowered to it (never to 0 under a reference); a rebuilt
// structure goes to clusters nothing references and is entered into the
// header in one write, after it is on disk; the COPIED flags change only
// once the refcounts are right; the header bits are cleared last.

import type { CheckImageOptions, CheckResult } from "./check.ts";
import { geometryOf, qcow2VirtualSize } from "../format/geometry.ts";
import {
  getRefcount,
  refcountDecimal,
  refcountMax,
  setRefcount,
} from "../format/refcount.ts";
import { RefblockError, StoredRefcounts } from "../reader/qcow2/refcounts.ts";
import { bitmapDirectoryOf } from "../reader/qcow2/bitmaps.ts";
import { l2EntryAt } from "../reader/qcow2/mapping.ts";
import { readPadded } from "../reader/read.ts";
import type { SnapshotTable } from "../reader/qcow2/snapshots.ts";
import type { RefcountMap } from "./_refmap.ts";
import {
  fixSnapshotTable,
  readSnapshotsForCheck,
  SnapshotCheckFailure,
} from "./_snapshot_check.ts";
import { CheckFailure, entryHex, ReferenceWalk } from "./_check_refs.ts";
import { decodeL1Entry } from "../format/l1.ts";
import type { L2Entry, L2Layout } from "../format/l2.ts";
import { type Qcow2Header, serializeHeader } from "../format/header.ts";
import { ENTRY, INCOMPAT } from "../format/constants.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { rebuildRefcounts } from "./_rebuild.ts";
import { zeroUnits } from "../bytes/zeros.ts";

const INT_MAX = 2 ** 31 - 1;

/** QEMU's BDRV_FIX_LEAKS: lower refcounts above the references. */
export const FIX_LEAKS = 1;
/** QEMU's BDRV_FIX_ERRORS: raise refcounts, rebuild, fix COPIED flags. */
export const FIX_ERRORS = 2;

/** Where a repair writes: the image file, read through the same source. */
export interface RepairWriter {
  /** Writes bytes at an offset of the image file. */
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  /** Makes what was written durable before anything that depends on it. */
  sync(): Promise<void>;
}

/** What the check looks at, and how it may repair it. */
interface Run {
  source: RandomAccessSource;
  header: Qcow2Header;
  /** The snapshot table as the check reads it (repaired with -r all). */
  snapshots: SnapshotTable;
  result: CheckResult;
  options: CheckImageOptions;
  fix: number;
  writer: RepairWriter | undefined;
  signal: (err: RefblockError) => void;
}

/** The counters a later step of QEMU's flow restores. */
type Counters = Pick<
  CheckResult,
  "corruptions" | "leaks" | "checkErrors" | "corruptionsFixed" | "leaksFixed"
>;

function countersOf(r: CheckResult): Counters {
  return {
    corruptions: r.corruptions,
    leaks: r.leaks,
    checkErrors: r.checkErrors,
    corruptionsFixed: r.corruptionsFixed,
    leaksFixed: r.leaksFixed,
  };
}

/**
 * Checks (and with `fix`, repairs) a qcow2 image, filling `result`.
 *
 * @param fix FIX_LEAKS and FIX_ERRORS bits; 0 checks only.
 * @param writer Where repairs are written; required when `fix` is not 0.
 */
export async function checkQcow2(
  source: RandomAccessSource,
  header: Qcow2Header,
  result: CheckResult,
  options: CheckImageOptions,
  fix = 0,
  writer?: RepairWriter,
): Promise<void> {
  const geometry = geometryOf(header);
  result.totalClusters = Math.ceil(
    qcow2VirtualSize(header.size) / geometry.clusterSize,
  );
  // The snapshot part keeps its own counters (QEMU's snapshot_res), added
  // to the result once the refcount part is done.
  const snap = { corruptions: 0, checkErrors: 0, corruptionsFixed: 0 };
  const addSnap = () => {
    result.corruptions += snap.corruptions;
    result.checkErrors += snap.checkErrors;
    result.corruptionsFixed += snap.corruptionsFixed;
  };
  let read;
  try {
    read = await readSnapshotsForCheck(
      source,
      header,
      snap,
      result.messages,
      (fix & FIX_ERRORS) !== 0,
      writer,
    );
  } catch (err) {
    if (!(err instanceof SnapshotCheckFailure)) throw err;
    addSnap();
    fail(result, err.message);
    return;
  }
  const run: Run = {
    source,
    header: read.header,
    snapshots: read.table,
    result,
    options,
    fix,
    writer,
    signal: corruptionSignal(result),
  };
  const checked = await checkRefcounts(run);
  if (checked) {
    try {
      run.header = await fixSnapshotTable(
        run.header,
        run.snapshots,
        snap,
        result.messages,
        (fix & FIX_ERRORS) !== 0,
        writer,
        checked.stored,
        checked.refs,
      );
    } catch (err) {
      if (!(err instanceof SnapshotCheckFailure)) throw err;
      addSnap();
      fail(result, err.message);
      return;
    }
  }
  addSnap();
  if (!checked) return;
  if (fix && result.checkErrors === 0 && result.corruptions === 0) {
    await markCleanAndConsistent(run);
  }
  result.exitCode = result.checkErrors > 0
    ? 1
    : result.corruptions > 0
    ? 2
    : result.leaks > 0
    ? 3
    : 0;
}

/**
 * qcow2_check_refcounts(): references counted, refcounts compared (and
 * repaired), COPIED flags; undefined when the check stopped (the result
 * says why).
 */
async function checkRefcounts(
  run: Run,
): Promise<{ stored: StoredRefcounts; refs: RefcountMap } | undefined> {
  const { result, fix } = run;
  const geometry = geometryOf(run.header);
  const counted = await countReferences(run, run.header, fix);
  if (!counted) return undefined;
  let { walk, stored } = counted;
  const pre = countersOf(result);
  const first = await compareRefcounts(run, walk, stored, 0);
  let highest = first.highest;
  let refs = walk.refs;
  if ((first.rebuild || walk.rebuild) && fix & FIX_ERRORS) {
    const rebuilt = await rebuildAndRecount(run, walk);
    if (!rebuilt) return undefined;
    ({ stored, highest, refs } = rebuilt);
  } else if (fix) {
    if (first.rebuild || walk.rebuild) {
      result.messages.push("ERROR need to rebuild refcount structures");
      result.checkErrors++;
      fail(
        result,
        "Cannot repair image: its refcount structures must be rebuilt, which -r all does",
      );
      return undefined;
    }
    if (result.leaks || result.corruptions) {
      Object.assign(result, pre);
      highest = (await compareRefcounts(run, walk, stored, fix)).highest;
    }
  }
  await checkOflagCopied(run, stored);
  result.imageEndOffset = (highest + 1) * geometry.clusterSize;
  return { stored, refs };
}

/**
 * calculate_refcounts(): every reference counted into a walk, or undefined
 * when the check stopped (the result then says why).
 */
async function countReferences(
  run: Run,
  header: Qcow2Header,
  fix: number,
): Promise<{ walk: ReferenceWalk; stored: StoredRefcounts } | undefined> {
  const { source, result, options, snapshots } = run;
  const geometry = geometryOf(header);
  const clusters = Math.ceil(source.size / geometry.clusterSize);
  const limit = Math.min(options.maxClusters ?? INT_MAX, INT_MAX);
  if (clusters > limit) {
    result.checkErrors++;
    fail(
      result,
      `Cannot check image: the file has ${clusters} clusters, more than the limit of ${limit}`,
    );
    return undefined;
  }
  const stored = await StoredRefcounts.load(source, header);
  const walk = new ReferenceWalk(
    {
      source,
      header,
      geometry,
      snapshots: snapshots.entries,
      snapshotsSize: snapshots.size,
      stored,
      bitmaps: bitmapDirectoryOf(header),
      grow: fix & FIX_ERRORS ? (end) => growFile(run, end) : undefined,
      writeEntry: fix & FIX_ERRORS
        ? async (offset, bytes) => {
          await run.writer!.writeAt(offset, bytes);
          await run.writer!.sync();
        }
        : undefined,
      maxClusters: limit,
    },
    clusters,
    refcountMax(header.refcountOrder),
    result.messages,
  );
  try {
    await walk.calculate();
  } catch (err) {
    if (!(err instanceof CheckFailure)) throw err;
    addCounters(result, walk);
    fail(result, err.message);
    return undefined;
  }
  addCounters(result, walk);
  return { walk, stored };
}

/** Adds a walk's counters to the result (QEMU's res accumulates them). */
function addCounters(result: CheckResult, walk: ReferenceWalk): void {
  const c = walk.counters;
  result.corruptions += c.corruptions;
  result.leaks += c.leaks;
  result.checkErrors += c.checkErrors;
  result.allocatedClusters += c.allocatedClusters;
  result.fragmentedClusters += c.fragmentedClusters;
  result.compressedClusters += c.compressedClusters;
  result.corruptionsFixed += c.corruptionsFixed;
}

/** Grows the image file to `end` bytes (zeros), as a truncate would. */
async function growFile(run: Run, end: number): Promise<void> {
  const size = run.source.size;
  if (end <= size) return;
  await run.writer!.writeAt(end - 1, new Uint8Array(1));
  await run.writer!.sync();
}

/**
 * The rebuild branch of qcow2_check_refcounts(): new refcount structures
 * from the counts, the references counted again, and the old structures
 * (now leaked) freed. Undefined when the check stopped.
 */
async function rebuildAndRecount(
  run: Run,
  walk: ReferenceWalk,
): Promise<
  { stored: StoredRefcounts; highest: number; refs: RefcountMap } | undefined
> {
  const { result, header, writer } = run;
  result.messages.push("Rebuilding refcount structure");
  const old = countersOf(result);
  const table = await rebuildRefcounts(
    writer!,
    walk.refs,
    header.clusterBits,
    header.refcountOrder,
  );
  const rebuilt: Qcow2Header = {
    ...header,
    refcountTableOffset: table.offset,
    refcountTableClusters: table.clusters,
  };
  await writer!.sync();
  await writeHeader(writer!, header, rebuilt);
  await writer!.sync();
  run.header = rebuilt;
  result.corruptions = 0;
  result.leaks = 0;
  // The walk is repeated in full, as QEMU repeats it (its lines again);
  // its cluster statistics are the first walk's over again.
  const { allocatedClusters, fragmentedClusters, compressedClusters } = result;
  const counted = await countReferences(run, rebuilt, 0);
  if (!counted) return undefined;
  Object.assign(result, {
    allocatedClusters,
    fragmentedClusters,
    compressedClusters,
  });
  let highest = 0;
  let freshLeaks = 0;
  if (run.fix & FIX_LEAKS) {
    const saved = countersOf(result);
    Object.assign(result, {
      corruptions: 0,
      leaks: 0,
      checkErrors: 0,
      corruptionsFixed: 0,
      leaksFixed: 0,
    });
    const again = await compareRefcounts(
      run,
      counted.walk,
      counted.stored,
      FIX_LEAKS,
    );
    highest = again.highest;
    if (again.rebuild || counted.walk.rebuild) {
      result.messages.push("ERROR rebuilt refcount structure is still broken");
    }
    freshLeaks = result.leaks;
    Object.assign(result, saved);
  }
  if (result.corruptions < old.corruptions) {
    result.corruptionsFixed += old.corruptions - result.corruptions;
  }
  if (result.leaks < old.leaks) result.leaksFixed += old.leaks - result.leaks;
  result.leaks += freshLeaks;
  return { stored: counted.stored, highest, refs: counted.walk.refs };
}

/** Writes the bytes where two headers differ (one write: their fields). */
export async function writeHeader(
  writer: RepairWriter,
  before: Qcow2Header,
  after: Qcow2Header,
): Promise<void> {
  const a = serializeHeader(before);
  const b = serializeHeader(after);
  let first = 0;
  while (first < b.length && a[first] === b[first]) first++;
  if (first === b.length) return;
  let end = b.length;
  while (end > first && a[end - 1] === b[end - 1]) end--;
  await writer.writeAt(first, b.slice(first, end));
}

/** qcow2_mark_clean() and qcow2_mark_consistent(): the bits cleared last. */
async function markCleanAndConsistent(run: Run): Promise<void> {
  const { header, writer } = run;
  const bits = INCOMPAT.DIRTY | INCOMPAT.CORRUPT;
  if ((header.incompatibleFeatures & bits) === 0n) return;
  await writer!.sync();
  const clean = {
    ...header,
    incompatibleFeatures: header.incompatibleFeatures & ~bits,
  };
  await writeHeader(writer!, header, clean);
  await writer!.sync();
  run.header = clean;
}

/** QEMU's corruption event: reported once, later ones suppressed. */
function corruptionSignal(result: CheckResult): (err: RefblockError) => void {
  let signaled = false;
  return (err) => {
    if (!signaled) {
      result.messages.push(
        `qcow2: Image is corrupt: ${err.message}; further non-fatal corruption events will be suppressed`,
      );
    }
    signaled = true;
  };
}

/**
 * compare_refcounts(): stored against counted, cluster by cluster, fixing
 * what `fix` allows (each refcount block rewritten once, as it is done).
 *
 * @returns The highest cluster in use by either, and whether a cluster in
 * use has refcount 0 (only a rebuild can repair that).
 */
async function compareRefcounts(
  run: Run,
  walk: ReferenceWalk,
  stored: StoredRefcounts,
  fix: number,
): Promise<{ highest: number; rebuild: boolean }> {
  const { result } = run;
  let highest = 0;
  let rebuild = false;
  const n = walk.refs.size;
  const perBlock = stored.perBlock;
  const order = stored.order;
  for (let i = 0; i < n;) {
    const index = Math.floor(i / perBlock);
    const blockEnd = Math.min(n, (index + 1) * perBlock);
    let block: Uint8Array | null;
    try {
      block = await stored.block(index);
    } catch (err) {
      if (!(err instanceof RefblockError)) throw err;
      run.signal(err);
      for (; i < blockEnd; i++) {
        result.messages.push(
          `Can't get refcount for cluster ${i}: Input/output error`,
        );
        result.checkErrors++;
      }
      continue;
    }
    let edited: Uint8Array | undefined;
    for (; i < blockEnd; i++) {
      const slot = i % perBlock;
      const have = block === null ? 0 : getRefcount(block, slot, order);
      const want = walk.refs.get(i);
      if (have > 0 || want > 0) highest = i;
      if (have === want) continue;
      const fixing = have !== 0 &&
        (have > want ? fix & FIX_LEAKS : fix & FIX_ERRORS) !== 0;
      if (have === 0) rebuild = true;
      result.messages.push(
        `${
          fixing ? "Repairing" : have < want ? "ERROR" : "Leaked"
        } cluster ${i} refcount=${
          block === null ? 0 : refcountDecimal(block, slot, order)
        } reference=${want}`,
      );
      if (fixing) {
        edited ??= block!.slice();
        setRefcount(edited, slot, order, want);
        if (have > want) result.leaksFixed++;
        else result.corruptionsFixed++;
        continue;
      }
      if (have < want) result.corruptions++;
      else result.leaks++;
    }
    if (edited !== undefined) {
      await run.writer!.writeAt(stored.blockOffset(index), edited);
      stored.replace(index, edited);
      block = edited;
    }
  }
  if (fix) await run.writer!.sync();
  return { highest, rebuild };
}

/**
 * check_oflag_copied(): COPIED set exactly where the refcount is 1;
 * repaired with -r all, and with -r leaks when nothing else is left.
 */
async function checkOflagCopied(
  run: Run,
  stored: StoredRefcounts,
): Promise<void> {
  const { source, header, result, fix, writer } = run;
  const repair = (fix & FIX_ERRORS) !== 0 ||
    ((fix & FIX_LEAKS) !== 0 && !result.checkErrors && !result.corruptions &&
      !result.leaks);
  const word = repair ? "Repairing" : "ERROR";
  const geometry = geometryOf(header);
  const { clusterSize: cs, l2Entries, l2EntrySize, dataFile } = geometry;
  const layout: L2Layout = geometry;
  const l1 = await readPadded(source, header.l1TableOffset, header.l1Size * 8);
  // One buffer for every L2 table: nothing keeps a table past its loop.
  const size = l2Entries * l2EntrySize;
  const buffer = new Uint8Array(size);
  const refcountOf = async (offset: number): Promise<number | undefined> => {
    try {
      return await stored.get(Math.floor(offset / cs));
    } catch (err) {
      if (!(err instanceof RefblockError)) throw err;
      run.signal(err);
      return undefined;
    }
  };
  for (let i = 0; i < header.l1Size; i++) {
    const { l2Offset, copied } = decodeL1Entry(l1, i);
    if (l2Offset === 0) continue;
    const refcount = await refcountOf(l2Offset);
    if (refcount === undefined) continue;
    if ((refcount === 1) !== copied) {
      result.messages.push(
        `${word} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${
          entryHex(l1, i * 8)
        } refcount=${await stored.decimal(Math.floor(l2Offset / cs))}`,
      );
      if (repair) {
        setCopied(l1, i * 8, refcount === 1);
        await writer!.writeAt(
          header.l1TableOffset + i * 8,
          l1.slice(i * 8, i * 8 + 8),
        );
        result.corruptionsFixed++;
      } else result.corruptions++;
    }
    const table = await readPadded(source, l2Offset, size, buffer);
    let dirty = 0;
    for (let j = 0; j < l2Entries; j++) {
      const empty = zeroUnits(table, l2EntrySize, j, l2Entries - j);
      if (empty > 0) {
        j += empty - 1; // entries of zeros: unallocated, nothing to check
        continue;
      }
      const type = l2TypeOf(table, j, layout);
      if (type === undefined) continue; // compressed, unallocated, zero-plain
      const { hostOffset, copied } = type;
      const count = dataFile ? 1 : await refcountOf(hostOffset);
      if (count === undefined) continue;
      if ((count === 1) !== copied) {
        result.messages.push(
          `${word} OFLAG_COPIED data cluster: l2_entry=${
            entryHex(table, j * l2EntrySize)
          } refcount=${
            dataFile ? count : await stored.decimal(Math.floor(hostOffset / cs))
          }`,
        );
        if (repair) {
          setCopied(table, j * l2EntrySize, count === 1);
          dirty++;
        } else result.corruptions++;
      }
    }
    if (dirty > 0) {
      await writer!.writeAt(l2Offset, table);
      result.corruptionsFixed += dirty;
    }
  }
  if (fix) await writer!.sync();
}

/** Sets or clears the COPIED bit (bit 63) of the table entry at byte `at`. */
function setCopied(table: Uint8Array, at: number, copied: boolean): void {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const hi = view.getUint32(at);
  view.setUint32(
    at,
    (copied ? hi | ENTRY.COPIED_HI : hi & ~ENTRY.COPIED_HI) >>> 0,
  );
}

/**
 * An entry with a host cluster whose COPIED flag QEMU checks (normal and
 * preallocated zero clusters), or undefined.
 */
function l2TypeOf(
  table: Uint8Array,
  index: number,
  layout: L2Layout,
): L2Entry | undefined {
  const entry = l2EntryAt(table, index, layout);
  return entry.type === "normal" || entry.type === "zero-alloc"
    ? entry
    : undefined;
}

/** Marks the result failed (exit status 1) with a reason. */
export function fail(result: CheckResult, message: string): CheckResult {
  result.failure = message;
  result.exitCode = 1;
  return result;
}
