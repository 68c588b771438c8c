/**
 * Snapshot table entries (internal snapshots).
 *
 * ```text
 *  0 l1_table_offset (u64)   8 l1_size (u32)   12 id_str_size (u16)
 * 14 name_size (u16)   16 date_sec (u32)   20 date_nsec (u32)
 * 24 vm_clock_nsec (u64)   32 vm_state_size (u32)   36 extra_data_size (u32)
 * 40 extra data: 0 vm_state_size_large (u64), 8 disk_size (u64),
 *    16 icount (u64, QEMU 5.2+)
 * then id string, name string, padding to a multiple of 8
 * ```
 *
 * @module
 */

import { MAX_SNAPSHOT_EXTRA_DATA } from "./constants.ts";
import { hex, Qcow2Error } from "./errors.ts";
import {
  alignUp,
  decodeText,
  encodeText,
  viewOf,
  writeU64,
} from "../bytes/binary.ts";
import { readU64 } from "./_bytes.ts";

/** Length of the fixed part of a snapshot table entry. *
 * @example Where an entry's extra data starts
 * ```ts
 * import assert from "node:assert";
 * import { serializeSnapshotEntry, SNAPSHOT_FIXED_LENGTH } from "./snapshot.ts";
 * const bytes = serializeSnapshotEntry({
 *   l1TableOffset: 0x40000, l1Size: 1, id: "1", name: "s", dateSec: 0, dateNsec: 0,
 *   vmClockNsec: 0n, vmStateSize: 0, vmStateSize32: 0, diskSize: 512, icount: undefined,
 *   extraData: new Uint8Array(16),
 * });
 * const extra = new DataView(bytes.buffer).getUint32(36); // extra_data_size
 * assert.strictEqual(extra, 16);
 * assert.strictEqual(new DataView(bytes.buffer).getBigUint64(SNAPSHOT_FIXED_LENGTH + 8), 512n); // disk_size
 * ```
 */
export const SNAPSHOT_FIXED_LENGTH = 40;

/**
 * A decoded snapshot table entry. The ID and the name end at their first
 * NUL byte, if any: QEMU holds them as C strings.
 *
 * @example An entry through the table codec
 * ```ts
 * import assert from "node:assert";
 * import { parseSnapshotTable, serializeSnapshotEntry, type SnapshotEntry } from "./snapshot.ts";
 * const entry: SnapshotEntry = {
 *   l1TableOffset: 0x40000, l1Size: 1, id: "1", name: "before upgrade",
 *   dateSec: 1_700_000_000, dateNsec: 0, vmClockNsec: 0n, vmStateSize: 0,
 *   vmStateSize32: 0, diskSize: 1 << 20, icount: undefined, extraData: new Uint8Array(16),
 * };
 * const [back] = parseSnapshotTable(serializeSnapshotEntry(entry), 1);
 * assert.strictEqual(back.name, "before upgrade");
 * assert.strictEqual(back.diskSize, 1 << 20);
 * ```
 */
export interface SnapshotEntry {
  /** Host offset of the snapshot's L1 table. */
  l1TableOffset: number;
  /** Entries in the snapshot's L1 table. */
  l1Size: number;
  /** Unique ID string. */
  id: string;
  /** Name. */
  name: string;
  /** Seconds since the epoch when taken. */
  dateSec: number;
  /** Nanosecond part of the date. */
  dateNsec: number;
  /** Guest run time in nanoseconds. */
  vmClockNsec: bigint;
  /** VM state size: the 64-bit extra field when present, else the u32. */
  vmStateSize: number;
  /** The u32 vm_state_size field as stored. */
  vmStateSize32: number;
  /** Virtual disk size at the snapshot, when the extra data holds it. */
  diskSize: number | undefined;
  /** Instruction count (QEMU record/replay), when present; -1 means none. */
  icount: bigint | undefined;
  /** The whole extra data, kept for serialization. */
  extraData: Uint8Array;
}

const ACTION = "parse snapshot table";

/**
 * Total length of the entry whose fixed part starts at `bytes[at]`
 * (fixed part, extra data, id, name, padding).
 *
 * @param bytes Buffer holding at least the 40-byte fixed part at `at`.
 * @param at Offset of the entry in `bytes`.
 * @returns The entry length in bytes, a multiple of 8.
 *
 * @example Length of a bare entry
 * ```ts
 * import assert from "node:assert";
 * import { snapshotEntryLength } from "./snapshot.ts";
 * const fixed = new Uint8Array(40);
 * fixed[13] = 1; // id "x"
 * assert(snapshotEntryLength(fixed, 0) === 48);
 * ```
 */
export function snapshotEntryLength(bytes: Uint8Array, at: number): number {
  const view = viewOf(bytes);
  const idSize = view.getUint16(at + 12);
  const nameSize = view.getUint16(at + 14);
  const extraSize = view.getUint32(at + 36);
  return alignUp(SNAPSHOT_FIXED_LENGTH + extraSize + idSize + nameSize, 8);
}

/**
 * Parses `count` snapshot entries from the table bytes.
 *
 * @param bytes The snapshot table (at least the whole table).
 * @param count Number of entries (`nb_snapshots`).
 * @param base Host offset of `bytes[0]`, for error messages.
 * @returns The entries in table order.
 * @throws {Qcow2Error} `BAD_SNAPSHOT` when an entry is truncated or its extra
 * data exceeds QEMU's 1024-byte limit.
 *
 * @example Round trip
 * ```ts
 * import assert from "node:assert";
 * import { parseSnapshotTable, serializeSnapshotEntry } from "./snapshot.ts";
 * const bytes = serializeSnapshotEntry({
 *   l1TableOffset: 0x50000, l1Size: 1, id: "1", name: "base", dateSec: 0,
 *   dateNsec: 0, vmClockNsec: 0n, vmStateSize: 0, vmStateSize32: 0,
 *   diskSize: 1 << 20, icount: undefined, extraData: new Uint8Array(16),
 * });
 * assert(parseSnapshotTable(bytes, 1)[0].name === "base");
 * ```
 */
export function parseSnapshotTable(
  bytes: Uint8Array,
  count: number,
  base = 0,
): SnapshotEntry[] {
  const out: SnapshotEntry[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + SNAPSHOT_FIXED_LENGTH > bytes.length) {
      throw truncated(i, base + at);
    }
    const length = snapshotEntryLength(bytes, at);
    const view = viewOf(bytes);
    const extraSize = view.getUint32(at + 36);
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new Qcow2Error(
        "BAD_SNAPSHOT",
        `Cannot ${ACTION}: snapshot ${i} extra_data_size ${extraSize} is out of range [0, ${MAX_SNAPSHOT_EXTRA_DATA}]`,
        { offset: base + at + 36, field: "extra_data_size" },
      );
    }
    const idSize = view.getUint16(at + 12);
    const nameSize = view.getUint16(at + 14);
    if (
      at + SNAPSHOT_FIXED_LENGTH + extraSize + idSize + nameSize > bytes.length
    ) {
      throw truncated(i, base + at);
    }
    const extraAt = at + SNAPSHOT_FIXED_LENGTH;
    const extraData = bytes.slice(extraAt, extraAt + extraSize);
    const extra = viewOf(extraData);
    const u64 = (v: DataView, o: number, field: string, b: number) =>
      readU64(v, o, field, ACTION, b);
    const vmStateSize32 = view.getUint32(at + 32);
    const idAt = extraAt + extraSize;
    out.push({
      l1TableOffset: u64(view, at, "l1_table_offset", base),
      l1Size: view.getUint32(at + 8),
      id: decodeText(cString(bytes.subarray(idAt, idAt + idSize))),
      name: decodeText(
        cString(bytes.subarray(idAt + idSize, idAt + idSize + nameSize)),
      ),
      dateSec: view.getUint32(at + 16),
      dateNsec: view.getUint32(at + 20),
      vmClockNsec: view.getBigUint64(at + 24),
      vmStateSize: extraSize >= 8
        ? u64(extra, 0, "vm_state_size_large", base + extraAt)
        : vmStateSize32,
      vmStateSize32,
      diskSize: extraSize >= 16
        ? u64(extra, 8, "disk_size", base + extraAt)
        : undefined,
      icount: extraSize >= 24 ? extra.getBigInt64(16) : undefined,
      extraData,
    });
    at += length;
  }
  return out;
}

function truncated(index: number, offset: number): Qcow2Error {
  return new Qcow2Error(
    "BAD_SNAPSHOT",
    `Cannot ${ACTION}: snapshot ${index} at ${hex(offset)} is truncated`,
    { offset },
  );
}

/**
 * Serializes one snapshot entry. The known extra fields
 * (`vmStateSize`, `diskSize`, `icount`) are written into `extraData`
 * where it is long enough.
 *
 * @param entry The entry.
 * @returns The entry bytes, padded to a multiple of 8.
 *
 * @example Serialized length
 * ```ts
 * import assert from "node:assert";
 * import { serializeSnapshotEntry } from "./snapshot.ts";
 * const bytes = serializeSnapshotEntry({
 *   l1TableOffset: 0, l1Size: 0, id: "1", name: "a", dateSec: 0, dateNsec: 0,
 *   vmClockNsec: 0n, vmStateSize: 0, vmStateSize32: 0, diskSize: undefined,
 *   icount: undefined, extraData: new Uint8Array(0),
 * });
 * assert(bytes.length === 48);
 * ```
 */
export function serializeSnapshotEntry(entry: SnapshotEntry): Uint8Array {
  const id = encodeText(entry.id);
  const name = encodeText(entry.name);
  const extra = entry.extraData.slice();
  const extraView = viewOf(extra);
  if (extra.length >= 8) writeU64(extraView, 0, entry.vmStateSize);
  if (extra.length >= 16 && entry.diskSize !== undefined) {
    writeU64(extraView, 8, entry.diskSize);
  }
  if (extra.length >= 24 && entry.icount !== undefined) {
    extraView.setBigInt64(16, entry.icount);
  }
  const out = new Uint8Array(
    alignUp(SNAPSHOT_FIXED_LENGTH + extra.length + id.length + name.length, 8),
  );
  const view = viewOf(out);
  writeU64(view, 0, entry.l1TableOffset);
  view.setUint32(8, entry.l1Size);
  view.setUint16(12, id.length);
  view.setUint16(14, name.length);
  view.setUint32(16, entry.dateSec);
  view.setUint32(20, entry.dateNsec);
  view.setBigUint64(24, entry.vmClockNsec);
  view.setUint32(32, entry.vmStateSize32);
  view.setUint32(36, extra.length);
  out.set(extra, SNAPSHOT_FIXED_LENGTH);
  out.set(id, SNAPSHOT_FIXED_LENGTH + extra.length);
  out.set(name, SNAPSHOT_FIXED_LENGTH + extra.length + id.length);
  return out;
}

/** Bytes of the extra data QEMU 7.2 knows (vm_state_size_large, disk_size, icount). */
const KNOWN_EXTRA_DATA = 24;

/**
 * The snapshot table entries as QEMU writes a table back
 * (qcow2_write_snapshots()): each with at least the 24 bytes of extra data
 * QEMU knows, the 64-bit VM state size, the disk size (`diskSize` where
 * the entry has none) and the instruction count (-1, none, where it has
 * none), unknown extra data kept after them, the ID and the name cut at
 * their first NUL byte (QEMU holds them as C strings).
 *
 * @param bytes The table's entries, each padded to 8 bytes.
 * @param count Number of entries.
 * @param diskSize The image's virtual size, in bytes, rounded down to
 * 512-byte sectors: the disk size of an entry that has none.
 * @returns The rewritten entries, each padded to 8 bytes but the last
 * (QEMU's table ends where the last name ends).
 * @throws {Qcow2Error} `BAD_SNAPSHOT` when an entry is truncated.
 *
 * @example A version 2 entry gains the extra data version 3 requires
 * ```ts
 * import assert from "node:assert";
 * import { completeSnapshotEntries, parseSnapshotTable, serializeSnapshotEntry } from "./snapshot.ts";
 * const v2 = serializeSnapshotEntry({
 *   l1TableOffset: 0x50000, l1Size: 1, id: "1", name: "base", dateSec: 0,
 *   dateNsec: 0, vmClockNsec: 0n, vmStateSize: 0, vmStateSize32: 0,
 *   diskSize: undefined, icount: undefined, extraData: new Uint8Array(0),
 * });
 * const [entry] = parseSnapshotTable(completeSnapshotEntries(v2, 1, 1 << 20), 1);
 * assert.strictEqual(entry.extraData.length, 24);
 * assert.strictEqual(entry.diskSize, 1 << 20);
 * assert.strictEqual(entry.icount, -1n);
 * ```
 */
export function completeSnapshotEntries(
  bytes: Uint8Array,
  count: number,
  diskSize: number,
): Uint8Array {
  const entries = parseSnapshotTable(bytes, count);
  const parts: Uint8Array[] = [];
  let at = 0;
  let size = 0;
  let padded = 0;
  const view = viewOf(bytes);
  for (const entry of entries) {
    const extraSize = view.getUint32(at + 36);
    const idAt = at + SNAPSHOT_FIXED_LENGTH + extraSize;
    const idSize = view.getUint16(at + 12);
    const nameSize = view.getUint16(at + 14);
    const id = cString(bytes.subarray(idAt, idAt + idSize));
    const name = cString(
      bytes.subarray(idAt + idSize, idAt + idSize + nameSize),
    );
    const extra = new Uint8Array(Math.max(KNOWN_EXTRA_DATA, extraSize));
    extra.set(entry.extraData.subarray(KNOWN_EXTRA_DATA), KNOWN_EXTRA_DATA);
    const length = SNAPSHOT_FIXED_LENGTH + extra.length + id.length +
      name.length;
    const out = new Uint8Array(alignUp(length, 8));
    out.set(bytes.subarray(at, at + SNAPSHOT_FIXED_LENGTH));
    const o = viewOf(out);
    // A VM state too large for the 32-bit field: 0 there, a disk-only
    // snapshot to older readers.
    o.setUint32(32, entry.vmStateSize <= 0xffffffff ? entry.vmStateSize : 0);
    o.setUint16(12, id.length);
    o.setUint16(14, name.length);
    o.setUint32(36, extra.length);
    const e = viewOf(extra);
    writeU64(e, 0, entry.vmStateSize);
    writeU64(e, 8, entry.diskSize ?? diskSize);
    e.setBigInt64(16, entry.icount ?? -1n);
    out.set(extra, SNAPSHOT_FIXED_LENGTH);
    out.set(id, SNAPSHOT_FIXED_LENGTH + extra.length);
    out.set(name, SNAPSHOT_FIXED_LENGTH + extra.length + id.length);
    parts.push(out);
    size = padded + length;
    padded += out.length;
    at += snapshotEntryLength(bytes, at);
  }
  const table = new Uint8Array(size);
  let to = 0;
  for (const p of parts) {
    table.set(p.subarray(0, Math.min(p.length, size - to)), to);
    to += p.length;
  }
  return table;
}

/** The bytes before the first NUL (all of them when there is none). */
function cString(bytes: Uint8Array): Uint8Array {
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul);
}
