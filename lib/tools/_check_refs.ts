// The reference walk of the checker: QEMU 7.2's calculate_refcounts()
// (qcow2-refcount.c) and qcow2_check_bitmaps_refcounts() (qcow2-bitmap.c).
// Every structure that references host clusters adds one reference per
// cluster it touches to a compact in-memory table; problems found on the
// way are counted and described with QEMU's own messages.

import type { Qcow2Header } from "../format/header.ts";
import type { Geometry } from "../format/geometry.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { SnapshotEntry } from "../format/snapshot.ts";
import { ENTRY, INCOMPAT, MAX_L1_BYTES } from "../format/constants.ts";
import { hex } from "../format/errors.ts";
import { decodeL1Entry } from "../format/l1.ts";
import type { L2Entry } from "../format/l2.ts";
import { l2EntryAt } from "../reader/qcow2/mapping.ts";
import {
  decodeBitmapTableEntry,
  parseBitmapDirectory,
} from "../format/bitmaps.ts";
import type { StoredRefcounts } from "../reader/qcow2/refcounts.ts";
import { readPadded } from "../reader/read.ts";
import { zeroUnits } from "../bytes/zeros.ts";
import { qcow2VirtualSize } from "../format/geometry.ts";
import { RefcountMap } from "./_refmap.ts";
import {
  type BitmapDirectoryInfo,
  bitmapEntryProblem,
} from "../reader/qcow2/bitmaps.ts";

/**
 * `%lx` of the raw u64 table entry at byte `at` (QEMU prints entries as
 * stored), optionally with bit 63 (COPIED) cleared.
 */
export function entryHex(
  table: Uint8Array,
  at: number,
  clearCopied = false,
): string {
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  let raw = view.getBigUint64(at);
  if (clearCopied) raw &= ~(1n << 63n);
  return hex(raw, "bare");
}

/** `%lx` of a number. */
function hexOf(n: number): string {
  return hex(n, "bare");
}

/** C's `%#lx`: `0x` prefix except for zero. */
function altHex(n: number): string {
  return hex(n, "c-alt");
}

/** Counters of a check, as QEMU's BdrvCheckResult. */
export interface CheckCounters {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** Corruptions the walk repaired itself (a refcount block past the end). */
  corruptionsFixed: number;
}

/** What the reference walk needs to know about the image. */
export interface WalkInput {
  source: RandomAccessSource;
  header: Qcow2Header;
  geometry: Geometry;
  snapshots: SnapshotEntry[];
  snapshotsSize: number;
  stored: StoredRefcounts;
  bitmaps: BitmapDirectoryInfo | undefined;
  /**
   * With -r all: grows the file to `end` bytes (zeros), so that a refcount
   * block past the end of the file lies inside it, as QEMU repairs it.
   * Absent when checking only.
   */
  grow?: (end: number) => Promise<void>;
  /** Most clusters the file may grow to (the check's memory limit). */
  maxClusters?: number;
  /**
   * With -r all: writes a repaired L2 entry at a host offset and makes it
   * durable (QEMU's fix_l2_entry_by_zero()). Absent when checking only.
   */
  writeEntry?: (offset: number, bytes: Uint8Array) => Promise<void>;
}

/** Thrown when QEMU's check would stop with an error (exit status 1). */
export class CheckFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CheckFailure";
  }
}

/**
 * Most list items kept of the L2 walks (about 8 bytes each); past them,
 * the snapshots' walks read the tables again.
 */
const WALKED_ITEMS = 4 << 20;

/** The reference walk over one image. */
export class ReferenceWalk {
  readonly refs: RefcountMap;
  readonly counters: CheckCounters = {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
    corruptionsFixed: 0,
  };
  readonly messages: string[];
  /**
   * Whether the refcount structures themselves are broken (a refcount
   * table entry or block QEMU cannot use): only a rebuild repairs them.
   */
  rebuild = false;
  readonly #in: WalkInput;
  readonly #cs: number;
  #fileLength: number;
  readonly #dataFile: boolean;
  /**
   * What walking each L2 table did, kept for the snapshots' walks: their
   * L1 tables share most L2 tables with the active one, and walking a
   * table again does the same again (QEMU walks it once per L1). Each
   * entry is a list of `inc(offset, size)` pairs and error messages, in
   * order; undefined when there are no snapshots.
   */
  readonly #walked: Map<number, (number | string)[]> | undefined;
  /** Room left in `#walked`, in list items. */
  #walkedRoom = WALKED_ITEMS;
  /** The list of the L2 table being walked, while one is being recorded. */
  #recording: (number | string)[] | undefined;
  /** The L2 table being walked (one buffer, reused table after table). */
  #table: Uint8Array | undefined;
  /** An entry of the table being walked was repaired: not to be replayed. */
  #repaired = false;

  constructor(
    input: WalkInput,
    clusters: number,
    max: number,
    messages: string[],
  ) {
    this.#in = input;
    this.#cs = input.geometry.clusterSize;
    this.#fileLength = input.source.size;
    this.#dataFile =
      (input.header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n;
    this.refs = new RefcountMap(clusters, max);
    this.messages = messages;
    this.#walked = input.snapshots.length > 0 ? new Map() : undefined;
  }

  #error(message: string): void {
    this.#recording?.push(message);
    this.messages.push(message);
    this.counters.corruptions++;
  }

  /** qcow2_inc_refcounts_imrt(): one reference per cluster of a byte range. */
  inc(offset: number, size: number): void {
    const recording = this.#recording;
    if (recording === undefined) return this.#inc(offset, size);
    // What inc() finds (the end of the file, an overflow) depends on the
    // counts so far: a replay calls it again rather than copying that.
    recording.push(offset, size);
    this.#recording = undefined;
    try {
      this.#inc(offset, size);
    } finally {
      this.#recording = recording;
    }
  }

  #inc(offset: number, size: number): void {
    if (size <= 0) return;
    const cs = this.#cs;
    if (offset + size - this.#fileLength >= cs) {
      this.#error(
        `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${
          hexOf(offset)
        } size 0x${hexOf(size)}`,
      );
      return;
    }
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + size - 1) / cs);
    for (let k = first; k <= last; k++) {
      if (!this.refs.increment(k)) {
        this.#error(`ERROR: overflow cluster offset=0x${hexOf(k * cs)}`);
        this.messages.push(
          "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
        );
      }
    }
  }

  /** calculate_refcounts(): everything but the refcount blocks' own check. */
  async calculate(): Promise<void> {
    const { header, snapshots } = this.#in;
    this.inc(0, this.#cs);
    await this.#l1(header.l1TableOffset, header.l1Size, true);
    if (this.#dataFile && snapshots.length > 0) {
      this.#error(
        `ERROR ${snapshots.length} snapshots in image with data file`,
      );
    }
    for (const sn of snapshots) {
      if (sn.l1TableOffset % this.#cs !== 0) {
        this.#error(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${
            altHex(sn.l1TableOffset)
          }: L1 table is not cluster aligned; snapshot table entry corrupted`,
        );
        continue;
      }
      if (sn.l1Size > MAX_L1_BYTES / 8) {
        this.#error(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${
            altHex(sn.l1Size)
          }: L1 table is too large; snapshot table entry corrupted`,
        );
        continue;
      }
      await this.#l1(sn.l1TableOffset, sn.l1Size, false);
    }
    this.inc(header.snapshotsOffset, this.#in.snapshotsSize);
    this.inc(
      header.refcountTableOffset,
      header.refcountTableClusters * this.#cs,
    );
    for (const ext of header.extensions) {
      if (ext.kind === "crypto-header" && ext.length > 0) {
        this.inc(ext.offset, ext.length);
      }
    }
    await this.#bitmaps();
    await this.#refblocks();
  }

  /** check_refcounts_l1(). */
  async #l1(offset: number, size: number, active: boolean): Promise<void> {
    if (size === 0) return;
    this.inc(offset, size * 8);
    const table = await readPadded(this.#in.source, offset, size * 8);
    for (let i = 0; i < size; i++) {
      const empty = zeroUnits(table, 8, i, size - i);
      if (empty > 0) {
        i += empty - 1; // entries of zeros reference nothing
        continue;
      }
      const entry = decodeL1Entry(table, i);
      if (entry.reserved) {
        this.#error(
          `ERROR found L1 entry with reserved bits set: ${
            entryHex(table, i * 8)
          }`,
        );
      }
      if (entry.l2Offset === 0 && !entry.copied && !entry.reserved) continue;
      this.inc(entry.l2Offset, this.#cs);
      if (entry.l2Offset % this.#cs !== 0) {
        this.#error(
          `ERROR l2_offset=${
            hexOf(entry.l2Offset)
          }: Table is not cluster aligned; L1 entry corrupted`,
        );
      }
      await this.#l2(entry.l2Offset, active);
    }
  }

  /** check_refcounts_l2(), or what it did to this table the first time. */
  async #l2(l2Offset: number, active: boolean): Promise<void> {
    const walked = this.#walked?.get(l2Offset);
    if (walked && !active) {
      for (let k = 0; k < walked.length;) {
        const item = walked[k++];
        if (typeof item === "string") this.#error(item);
        else this.#inc(item, walked[k++] as number);
      }
      return;
    }
    const record = this.#walked !== undefined && this.#walkedRoom > 0 &&
      !this.#walked.has(l2Offset);
    this.#recording = record ? [] : undefined;
    this.#repaired = false;
    try {
      await this.#walkL2(l2Offset, active);
    } finally {
      // A repaired table reads differently now: walked again, not replayed.
      if (record && !this.#repaired) {
        this.#walkedRoom -= this.#recording!.length + 1;
        this.#walked!.set(l2Offset, this.#recording!);
      }
      this.#recording = undefined;
    }
  }

  async #walkL2(l2Offset: number, active: boolean): Promise<void> {
    const { clusterBits, l2Entries, extendedL2, l2EntrySize } =
      this.#in.geometry;
    const layout = { clusterBits, extendedL2, dataFile: this.#dataFile };
    const size = l2Entries * l2EntrySize;
    this.#table ??= new Uint8Array(size);
    // Nothing keeps the table past this walk: one buffer serves them all.
    const table = await readPadded(
      this.#in.source,
      l2Offset,
      size,
      this.#table,
    );
    const c = this.counters;
    let nextContiguous = 0;
    for (let i = 0; i < l2Entries; i++) {
      const empty = zeroUnits(table, l2EntrySize, i, l2Entries - i);
      if (empty > 0) {
        i += empty - 1; // entries of zeros: unallocated, no problem
        continue;
      }
      const entry = l2EntryAt(table, i, layout);
      if (entry.undecodable) {
        // A compressed offset past 2^53: far past the end of any file.
        this.#error(
          `ERROR compressed cluster ${i}: ${entry.undecodable.message}`,
        );
        if (active) {
          c.allocatedClusters++;
          c.compressedClusters++;
          c.fragmentedClusters++;
        }
        continue;
      }
      if (entry.reserved) {
        this.#error(
          `ERROR found l2 entry with reserved bits set: ${
            entryHex(table, i * l2EntrySize)
          }`,
        );
      }
      switch (entry.type) {
        case "compressed":
          this.#compressed(entry, table, i, l2EntrySize, active);
          break;
        case "zero-alloc":
        case "normal": {
          const fixed = await this.#allocated(entry, table, i, l2Offset);
          if (fixed === "overlap") return; // QEMU stops walking this table
          if (fixed) break; // the entry is a zero one now: nothing to count
          if (active) {
            c.allocatedClusters++;
            if (nextContiguous !== 0 && entry.hostOffset !== nextContiguous) {
              c.fragmentedClusters++;
            }
            nextContiguous = entry.hostOffset + this.#cs;
          }
          if (!this.#dataFile) this.inc(entry.hostOffset, this.#cs);
          break;
        }
        case "unallocated":
          if (entry.allocMask !== 0) {
            this.#error(
              "ERROR: Unallocated cluster has non-zero subcluster allocation map",
            );
          }
          break;
      }
    }
  }

  /** A compressed L2 entry: flags, data file, bitmap, then its sectors. */
  #compressed(
    entry: L2Entry,
    table: Uint8Array,
    i: number,
    entrySize: number,
    active: boolean,
  ): void {
    const coffset = entry.hostOffset;
    // QEMU prints the entry with the copied flag it has just cleared.
    const shown = entryHex(table, i * entrySize, entry.copied);
    if (entry.copied) {
      this.#error(
        `ERROR: coffset=0x${
          hexOf(coffset)
        }: copied flag must never be set for compressed clusters`,
      );
    }
    if (this.#dataFile) {
      this.#error(
        `ERROR compressed cluster ${i} with data file, entry=0x${shown}`,
      );
      return;
    }
    if (entry.zeroMask !== 0 || entry.allocMask !== 0) {
      this.#error(
        `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${shown}`,
      );
      return;
    }
    this.inc(coffset, entry.compressed!.sectors * 512 - (coffset % 512));
    if (active) {
      this.counters.allocatedClusters++;
      this.counters.compressedClusters++;
      this.counters.fragmentedClusters++;
    }
  }

  /**
   * A normal or preallocated zero entry: its bitmap and alignment. With
   * -r all, an unaligned entry holding no data is made a zero entry.
   *
   * @returns Whether the entry was repaired (it references nothing now),
   * or `overlap` when the repair would write over other metadata.
   */
  async #allocated(
    entry: L2Entry,
    table: Uint8Array,
    i: number,
    l2Offset: number,
  ): Promise<boolean | "overlap"> {
    const offset = entry.hostOffset;
    if ((entry.zeroMask & entry.allocMask) !== 0) {
      this.#error(
        `ERROR offset=${
          hexOf(offset)
        }: Allocated cluster has corrupted subcluster allocation bitmap`,
      );
    }
    if (offset % this.#cs === 0) return false;
    const { extendedL2 } = this.#in.geometry;
    const containsData = extendedL2
      ? entry.allocMask !== 0
      : entry.type === "normal";
    const write = this.#in.writeEntry;
    const what = `offset=${hexOf(offset)}: ${
      containsData ? "Data" : "Preallocated"
    } cluster is not properly aligned; L2 entry corrupted.`;
    if (containsData || write === undefined) {
      this.#error(`ERROR ${what}`);
      return false;
    }
    this.#error(`Repairing ${what}`);
    return await this.#zeroEntry(table, i, l2Offset, write);
  }

  /**
   * fix_l2_entry_by_zero(): the entry becomes a zero entry (with
   * subclusters, every allocated subcluster reads as zeros), written back
   * at once. Its cluster is then only leaked, which the repair frees.
   */
  async #zeroEntry(
    table: Uint8Array,
    i: number,
    l2Offset: number,
    write: (offset: number, bytes: Uint8Array) => Promise<void>,
  ): Promise<boolean | "overlap"> {
    const { extendedL2, l2EntrySize } = this.#in.geometry;
    const at = i * l2EntrySize;
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    if (extendedL2) {
      // Bitmap: zero flags in the high word, allocation flags in the low.
      view.setUint32(
        at + 8,
        (view.getUint32(at + 8) | view.getUint32(at + 12)) >>> 0,
      );
      view.setUint32(at + 12, 0);
      view.setBigUint64(at, 0n);
    } else {
      view.setBigUint64(at, BigInt(ENTRY.ZERO_LO)); // zeros, no cluster
    }
    if (this.#overlapsMetadata(l2Offset)) {
      this.messages.push("ERROR: Overlap check failed");
      this.counters.checkErrors++;
      return "overlap";
    }
    this.#repaired = true;
    await write(l2Offset + at, table.slice(at, at + l2EntrySize));
    this.counters.corruptions--;
    this.counters.corruptionsFixed++;
    return true;
  }

  /**
   * Whether the L2 table at `l2Offset` shares a cluster with the header,
   * the active L1 table, the refcount table or the snapshot table (the
   * metadata QEMU's overlap check keeps an L2 entry's write away from).
   */
  #overlapsMetadata(l2Offset: number): boolean {
    const { header, snapshotsSize } = this.#in;
    const cs = this.#cs;
    const start = Math.floor(l2Offset / cs) * cs;
    const end = start + cs;
    const hits = (offset: number, size: number) =>
      size > 0 && offset < end && start < offset + size;
    return hits(0, cs) || hits(header.l1TableOffset, header.l1Size * 8) ||
      hits(header.refcountTableOffset, header.refcountTableClusters * cs) ||
      hits(header.snapshotsOffset, snapshotsSize);
  }

  /** qcow2_check_bitmaps_refcounts(). */
  async #bitmaps(): Promise<void> {
    const dir = this.#in.bitmaps;
    if (!dir) return;
    this.inc(dir.offset, dir.size);
    const bytes = await readPadded(this.#in.source, dir.offset, dir.size);
    let entries;
    try {
      entries = parseBitmapDirectory(bytes, dir.count, dir.offset);
    } catch (err) {
      this.counters.corruptions++;
      throw new CheckFailure(`Cannot check bitmaps: ${(err as Error).message}`);
    }
    const cs = this.#cs;
    // QEMU's bitmap_list_load() refuses entries that break its constraints
    // before any table is read: a table's size is bounded by the disk.
    const { header } = this.#in;
    for (const bm of entries) {
      const problem = bitmapEntryProblem(
        bm,
        cs,
        qcow2VirtualSize(header.size),
      );
      if (problem !== undefined) {
        this.counters.corruptions++;
        throw new CheckFailure(`Cannot check bitmaps: ${problem}`);
      }
    }
    for (const bm of entries) {
      this.inc(bm.tableOffset, bm.tableSize * 8);
      const table = await readPadded(
        this.#in.source,
        bm.tableOffset,
        bm.tableSize * 8,
      );
      for (let i = 0; i < bm.tableSize; i++) {
        const { offset, reserved } = decodeBitmapTableEntry(table, i);
        // check_table_entry(): reserved bits, alignment.
        if (reserved || offset % cs !== 0) {
          this.counters.corruptions++;
          continue;
        }
        if (offset !== 0) this.inc(offset, cs);
      }
    }
  }

  /**
   * A refcount block past the end of the file: an error, or with -r all
   * the file grown to hold it (zeros) and the block counted, as QEMU
   * repairs it; when the file cannot grow that far, a rebuild instead.
   */
  async #outside(i: number, offset: number): Promise<void> {
    const grow = this.#in.grow;
    this.counters.corruptions++;
    this.messages.push(
      `${grow ? "Repairing" : "ERROR"} refcount block ${i} is outside image`,
    );
    if (!grow) return;
    const cs = this.#cs;
    const clusters = offset / cs + 1;
    if (clusters > (this.#in.maxClusters ?? 2 ** 31 - 1)) {
      this.rebuild = true;
      this.messages.push("ERROR could not resize image: File too large");
      return;
    }
    await grow(offset + cs);
    this.#fileLength = Math.max(this.#fileLength, offset + cs);
    this.refs.extend(clusters);
    this.counters.corruptions--;
    this.counters.corruptionsFixed++;
    this.inc(offset, cs);
  }

  /** check_refblocks(): each refcount block referenced once, inside the file. */
  async #refblocks(): Promise<void> {
    const stored = this.#in.stored;
    const cs = this.#cs;
    for (let i = 0; i < stored.size; i++) {
      const low = stored.tableLow[i];
      const offset = stored.blockOffset(i);
      if ((low & 0x1ff) !== 0) {
        this.#error(`ERROR refcount table entry ${i} has reserved bits set`);
        this.rebuild = true;
        continue;
      }
      if (offset % cs !== 0) {
        this.#error(
          `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`,
        );
        this.rebuild = true;
        continue;
      }
      const cluster = Math.floor(offset / cs);
      if (cluster >= this.refs.size) {
        await this.#outside(i, offset);
        continue;
      }
      if (offset !== 0) {
        this.inc(offset, cs);
        const n = this.refs.get(cluster);
        if (n !== 1) {
          this.#error(`ERROR refcount block ${i} refcount=${n}`);
          this.rebuild = true;
        }
      }
    }
  }
}
