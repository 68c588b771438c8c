/**
 * NTFS multi-sector records (MFT records, $LogFile restart pages), MFT
 * record headers, attribute records and their data runs: pure functions
 * over bytes, every offset and length checked against the record.
 *
 * ```text
 * multi-sector record header:
 *  0x00 magic ("FILE", "RSTR", ...)  0x04 update sequence array offset (u16)
 *  0x06 update sequence array entries (u16): 1 + one per 512-byte stride
 * The last two bytes of every 512-byte stride hold the update sequence
 * number (the array's first entry) on disk; the array keeps what they were.
 *
 * MFT record header (after the above):
 *  0x10 sequence number (u16)   0x14 first attribute offset (u16)
 *  0x16 flags (u16: 1 in use, 2 directory)   0x18 bytes in use (u32)
 *  0x1c bytes allocated (u32)   0x20 base record reference (u64, 0 in a base record)
 *  0x2c record number (u32, NTFS 3.1 headers whose array starts at 0x30)
 *
 * attribute record:
 *  0x00 type (u32; 0xffffffff ends the list)   0x04 length (u32)
 *  0x08 non-resident (u8)   0x09 name length (u8, UTF-16 units)
 *  0x0a name offset (u16)   0x0c flags (u16: 1 compressed, 0x4000 encrypted, 0x8000 sparse)
 *  resident:      0x10 value length (u32)   0x14 value offset (u16)
 *  non-resident:  0x10 lowest VCN (s64)   0x18 highest VCN (s64)
 *                 0x20 mapping pairs offset (u16)   0x28 allocated size (s64)
 *                 0x30 data size (s64)   0x38 initialized size (s64)
 *
 * mapping pairs (data runs): a header byte (low nibble: bytes of the
 * length, high nibble: bytes of the signed LCN delta; no delta: a sparse
 * run), the length, the delta; a zero header byte ends them.
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import type { NtfsBoot } from "./boot.ts";

/** The stride of the update sequence fixups, whatever the sector size. */
export const FIXUP_STRIDE = 512;
/** `FILE`: an MFT record. */
export const MAGIC_FILE = 0x454c4946;

/** MFT record flag: the record is in use (a file, or part of one). */
export const RECORD_IN_USE = 0x0001;

/** Attribute types read here. */
export const ATTR = {
  STANDARD_INFORMATION: 0x10,
  ATTRIBUTE_LIST: 0x20,
  FILE_NAME: 0x30,
  VOLUME_INFORMATION: 0x70,
  DATA: 0x80,
  END: 0xffffffff,
} as const;

/** Attribute flags. */
export const ATTR_COMPRESSED = 0x0001;
export const ATTR_ENCRYPTED = 0x4000;
export const ATTR_SPARSE = 0x8000;

/** Smallest resident and non-resident attribute headers. */
const RESIDENT_HEADER = 0x18;
const NON_RESIDENT_HEADER = 0x40;

/**
 * Checks and undoes the update sequence fixups of a multi-sector record in
 * place: each 512-byte stride must end with the update sequence number.
 *
 * @param rec The record's bytes (its whole size), changed in place.
 * @param what The record, for the refusal (`MFT record 42`).
 * @throws {Refusal} When the array does not fit or a stride does not end
 * with the number (a torn write).
 *
 * @example A stride that does not end with the number
 * ```ts
 * import assert from "node:assert";
 * import { applyFixups } from "./record.ts";
 * const rec = new Uint8Array(1024);
 * const v = new DataView(rec.buffer);
 * v.setUint16(4, 0x30, true); // array at 0x30
 * v.setUint16(6, 3, true); // number + 2 strides
 * v.setUint16(0x30, 7, true); // update sequence number 7
 * v.setUint16(510, 7, true);
 * v.setUint16(1022, 8, true);
 * assert.throws(() => applyFixups(rec, "MFT record 9"), /MFT record 9: bytes 1022-1023 .* not the update sequence number 0x7/);
 * ```
 */
export function applyFixups(rec: Uint8Array, what: string): void {
  const view = new DataView(rec.buffer, rec.byteOffset, rec.length);
  const usaOfs = view.getUint16(4, true);
  const usaCount = view.getUint16(6, true);
  const strides = rec.length / FIXUP_STRIDE;
  if (usaCount !== strides + 1) {
    throw new Refusal(
      `${what}: update sequence array has ${usaCount} entries, the record's ${rec.length} bytes need ${
        strides + 1
      }`,
    );
  }
  if (usaOfs < 8 || usaOfs % 2 !== 0 || usaOfs + 2 * usaCount > 510) {
    throw new Refusal(
      `${what}: update sequence array at byte ${usaOfs} (${usaCount} entries) does not fit the first 510 bytes`,
    );
  }
  const usn = view.getUint16(usaOfs, true);
  for (let i = 0; i < strides; i++) {
    const at = i * FIXUP_STRIDE + FIXUP_STRIDE - 2;
    const found = view.getUint16(at, true);
    if (found !== usn) {
      throw new Refusal(
        `${what}: bytes ${at}-${at + 1} hold ${
          hex(found)
        }, not the update sequence number ${hex(usn)} (a torn write)`,
      );
    }
    view.setUint16(at, view.getUint16(usaOfs + 2 * (i + 1), true), true);
  }
}

/** An MFT record's header, checked. */
export interface MftRecordHeader {
  /** `flags`. */
  flags: number;
  /** `sequence_number`. */
  sequence: number;
  /** Offset of the first attribute. */
  attrsOffset: number;
  /** `bytes_in_use`. */
  bytesInUse: number;
  /** Record number of the base record (0 for a base record). */
  base: number;
}

/**
 * Parses an MFT record's header after its fixups, checking its offsets
 * and sizes against the record size and, in use, its number against `number`.
 *
 * @param rec The record with fixups undone.
 * @param number The record's number (its position in the MFT).
 * @returns The header.
 * @throws {Refusal} When a field is out of range.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { parseRecordHeader } from "./record.ts";
 * const rec = new Uint8Array(1024);
 * const v = new DataView(rec.buffer);
 * v.setUint32(0, 0x454c4946, true); // FILE
 * v.setUint16(4, 0x30, true);
 * v.setUint16(6, 3, true);
 * v.setUint16(0x14, 0x38, true); // attributes at 0x38
 * v.setUint16(0x16, 1, true); // in use
 * v.setUint32(0x18, 0x40, true); // bytes in use
 * v.setUint32(0x1c, 1024, true);
 * v.setUint32(0x2c, 5, true);
 * assert.strictEqual(parseRecordHeader(rec, 5).attrsOffset, 0x38);
 * assert.throws(() => parseRecordHeader(rec, 6), /MFT record 6 \(in use\) says it is record 5/);
 * ```
 */
export function parseRecordHeader(
  rec: Uint8Array,
  number: number,
): MftRecordHeader {
  const view = new DataView(rec.buffer, rec.byteOffset, rec.length);
  const what = `MFT record ${number}`;
  const usaOfs = view.getUint16(4, true);
  const usaEnd = usaOfs + 2 * view.getUint16(6, true);
  const attrsOffset = view.getUint16(0x14, true);
  const bytesInUse = view.getUint32(0x18, true);
  const allocated = view.getUint32(0x1c, true);
  if (allocated !== rec.length) {
    throw new Refusal(
      `${what} says it has ${allocated} bytes, the boot sector says ${rec.length}`,
    );
  }
  if (bytesInUse > rec.length || bytesInUse % 8 !== 0) {
    throw new Refusal(
      `${what} uses ${bytesInUse} bytes, not a multiple of 8 up to ${rec.length}`,
    );
  }
  if (
    attrsOffset % 8 !== 0 || attrsOffset < usaEnd ||
    attrsOffset + 8 > bytesInUse
  ) {
    throw new Refusal(
      `${what} has its first attribute at byte ${attrsOffset}, outside bytes ${usaEnd}-${
        bytesInUse - 8
      }`,
    );
  }
  const flags = view.getUint16(0x16, true);
  // NTFS 3.1 headers (array at 0x30) carry the record's own number; mkntfs
  // leaves it 0 in records it formats but does not use.
  if (usaOfs >= 0x30 && flags & RECORD_IN_USE) {
    const self = view.getUint32(0x2c, true);
    if (self !== number % 0x1_0000_0000) {
      throw new Refusal(`${what} (in use) says it is record ${self}`);
    }
  }
  const baseRef = view.getBigUint64(0x20, true) & 0xffff_ffff_ffffn;
  return {
    flags,
    sequence: view.getUint16(0x10, true),
    attrsOffset,
    bytesInUse,
    base: Number(baseRef),
  };
}

/** One attribute record, checked to lie inside its MFT record. */
export interface Attribute {
  /** Attribute type. */
  type: number;
  /** Offset of the attribute in the record. */
  offset: number;
  /** Its length. */
  length: number;
  /** The name (empty for the unnamed attribute). */
  name: string;
  /** `flags` (compressed, encrypted, sparse). */
  flags: number;
  /** Resident: where the value is in the record. */
  resident?: { offset: number; length: number };
  /** Non-resident: VCNs, sizes and where the mapping pairs are. */
  nonResident?: NonResident;
}

/** The non-resident part of an attribute header. */
export interface NonResident {
  lowestVcn: number;
  /** -1 for an attribute with no clusters. */
  highestVcn: number;
  /** Offset of the mapping pairs in the record, and their end. */
  pairsOffset: number;
  pairsEnd: number;
  /** Sizes in bytes (meaningful where `lowestVcn` is 0). */
  allocatedSize: number;
  dataSize: number;
  initializedSize: number;
}

/** A signed 64-bit field that must be a safe integer (without BigInt: it is read for every attribute). */
function s64(view: DataView, at: number, what: string): number {
  const hi = view.getInt32(at + 4, true);
  if (hi >= 0x20_0000 || hi < -0x20_0000) {
    throw new Refusal(`${what} ${view.getBigInt64(at, true)} is out of range`);
  }
  return hi * 0x1_0000_0000 + view.getUint32(at, true);
}

/**
 * The attributes of an MFT record, in order, each checked to lie inside
 * the bytes in use, up to the end marker.
 *
 * @param rec The record with fixups undone.
 * @param header Its header.
 * @param number The record's number, for refusals.
 * @returns The attributes.
 * @throws {Refusal} When an attribute overruns the record, has a bad
 * length, or the end marker is missing.
 *
 * @example A record with one resident attribute
 * ```ts
 * import assert from "node:assert";
 * import { attributes } from "./record.ts";
 * const rec = new Uint8Array(1024);
 * const v = new DataView(rec.buffer);
 * v.setUint32(0x38, 0x10, true); // $STANDARD_INFORMATION
 * v.setUint32(0x3c, 0x60, true); // length
 * v.setUint32(0x48, 0x48, true); // value length
 * v.setUint16(0x4c, 0x18, true); // value offset
 * v.setUint32(0x98, 0xffffffff, true);
 * const header = { flags: 1, sequence: 1, attrsOffset: 0x38, bytesInUse: 0xa0, base: 0 };
 * const [si] = attributes(rec, header, 7);
 * assert.deepStrictEqual(si.resident, { offset: 0x50, length: 0x48 });
 * ```
 */
export function attributes(
  rec: Uint8Array,
  header: MftRecordHeader,
  number: number,
): Attribute[] {
  const view = new DataView(rec.buffer, rec.byteOffset, rec.length);
  const end = header.bytesInUse;
  const out: Attribute[] = [];
  let at = header.attrsOffset;
  for (;;) {
    const what = `MFT record ${number}, attribute at byte ${at}`;
    if (at + 4 > end) {
      throw new Refusal(`${what}: no end marker before byte ${end}`);
    }
    const type = view.getUint32(at, true);
    if (type === ATTR.END) return out;
    if (at + RESIDENT_HEADER > end) {
      throw new Refusal(`${what}: header overruns the bytes in use (${end})`);
    }
    const length = view.getUint32(at + 4, true);
    const nonRes = rec[at + 8];
    const min = nonRes ? NON_RESIDENT_HEADER : RESIDENT_HEADER;
    if (length < min || length % 8 !== 0 || at + length > end) {
      throw new Refusal(
        `${what} (type ${
          hex(type)
        }): length ${length} is not a multiple of 8 from ${min} within the bytes in use (${end})`,
      );
    }
    if (nonRes > 1) {
      throw new Refusal(`${what}: non-resident flag ${nonRes} is not 0 or 1`);
    }
    const nameLength = rec[at + 9];
    const nameOffset = view.getUint16(at + 0x0a, true);
    if (nameLength > 0 && nameOffset + 2 * nameLength > length) {
      throw new Refusal(`${what}: name overruns the attribute`);
    }
    let name = "";
    for (let i = 0; i < nameLength; i++) {
      name += String.fromCharCode(
        view.getUint16(at + nameOffset + 2 * i, true),
      );
    }
    const attr: Attribute = {
      type,
      offset: at,
      length,
      name,
      flags: view.getUint16(at + 0x0c, true),
    };
    if (nonRes) {
      const lowestVcn = s64(view, at + 0x10, `${what}: lowest VCN`);
      const highestVcn = s64(view, at + 0x18, `${what}: highest VCN`);
      const pairs = view.getUint16(at + 0x20, true);
      if (pairs < NON_RESIDENT_HEADER || pairs >= length) {
        throw new Refusal(
          `${what}: mapping pairs at byte ${pairs} lie outside the attribute (${length} bytes)`,
        );
      }
      const nr: NonResident = {
        lowestVcn,
        highestVcn,
        pairsOffset: at + pairs,
        pairsEnd: at + length,
        allocatedSize: s64(view, at + 0x28, `${what}: allocated size`),
        dataSize: s64(view, at + 0x30, `${what}: data size`),
        initializedSize: s64(view, at + 0x38, `${what}: initialized size`),
      };
      if (lowestVcn < 0 || highestVcn < lowestVcn - 1) {
        throw new Refusal(
          `${what}: VCNs ${lowestVcn}-${highestVcn} are out of order`,
        );
      }
      if (
        lowestVcn === 0 &&
        (nr.allocatedSize < 0 || nr.dataSize < 0 || nr.initializedSize < 0 ||
          nr.dataSize > nr.allocatedSize ||
          nr.initializedSize > nr.dataSize)
      ) {
        throw new Refusal(
          `${what}: sizes (allocated ${nr.allocatedSize}, data ${nr.dataSize}, initialized ${nr.initializedSize}) are inconsistent`,
        );
      }
      attr.nonResident = nr;
    } else {
      const valueLength = view.getUint32(at + 0x10, true);
      const valueOffset = view.getUint16(at + 0x14, true);
      if (valueOffset + valueLength > length) {
        throw new Refusal(
          `${what}: value (${valueLength} bytes at ${valueOffset}) overruns the attribute (${length} bytes)`,
        );
      }
      attr.resident = { offset: at + valueOffset, length: valueLength };
    }
    out.push(attr);
    at += length;
  }
}

/** A run of clusters: VCNs `[vcn, vcn + length)` at LCN `lcn`, or sparse (`lcn` -1). */
export interface Run {
  vcn: number;
  lcn: number;
  length: number;
}

/**
 * Reads a signed little-endian integer of `n` bytes (1 to 8): exact, as a
 * number, up to 6 bytes; longer ones must fit in a safe integer, else
 * `undefined`.
 */
function readSigned(
  rec: Uint8Array,
  at: number,
  n: number,
): number | undefined {
  if (n <= 6) {
    let v = 0;
    for (let i = n - 1; i >= 0; i--) v = v * 256 + rec[at + i];
    return rec[at + n - 1] & 0x80 ? v - 256 ** n : v;
  }
  let v = 0n;
  for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(rec[at + i]);
  if (rec[at + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ||
      v < BigInt(Number.MIN_SAFE_INTEGER)
    ? undefined
    : Number(v);
}

/**
 * Decodes a non-resident attribute's data runs, checking that every run
 * has a positive length and lies inside the volume's clusters, and that
 * the runs cover exactly the attribute's VCNs, which (in the first part
 * of an attribute) its allocated size must hold. Each run is handed to
 * `visit` as it is decoded (nothing is allocated per run: the MFT walk
 * decodes every run of every record).
 *
 * @param rec The record with fixups undone.
 * @param nr The attribute's non-resident header.
 * @param clusters Clusters in the volume.
 * @param clusterSize Bytes per cluster.
 * @param what The attribute, for refusals.
 * @param visit Called with each run's first VCN, LCN (-1: sparse) and length.
 * @throws {Refusal} For a run out of range, of zero length, or runs that
 * do not add up to the VCNs (runs before the bad one have been visited).
 *
 * @example Count the clusters an attribute occupies
 * ```ts
 * import assert from "node:assert";
 * import { forEachRun } from "./record.ts";
 * const rec = Uint8Array.of(0x11, 4, 10, 0x01, 2, 0x11, 1, 0xfe, 0); // 4 at LCN 10, 2 sparse, 1 at LCN 8
 * const nr = { lowestVcn: 0, highestVcn: 6, pairsOffset: 0, pairsEnd: 9,
 *   allocatedSize: 7 * 4096, dataSize: 7 * 4096, initializedSize: 7 * 4096 };
 * let used = 0;
 * forEachRun(rec, nr, 100, 4096, "x", (_vcn, lcn, length) => {
 *   if (lcn >= 0) used += length;
 * });
 * assert.strictEqual(used, 5);
 * ```
 */
export function forEachRun(
  rec: Uint8Array,
  nr: NonResident,
  clusters: number,
  clusterSize: number,
  what: string,
  visit: (vcn: number, lcn: number, length: number) => void,
): void {
  const end = nr.highestVcn + 1;
  if (nr.lowestVcn === 0 && end * clusterSize > nr.allocatedSize) {
    throw new Refusal(
      `${what}: VCNs 0-${nr.highestVcn} (${
        end * clusterSize
      } bytes) exceed the allocated size ${nr.allocatedSize}`,
    );
  }
  const pairsEnd = nr.pairsEnd;
  let vcn = nr.lowestVcn;
  let lcn = 0;
  let at = nr.pairsOffset;
  for (;;) {
    if (at >= pairsEnd) {
      throw new Refusal(`${what}: data runs have no end marker`);
    }
    const head = rec[at];
    if (head === 0) break;
    const lenBytes = head & 0x0f;
    const offBytes = head >> 4;
    if (lenBytes === 0 || lenBytes > 8 || offBytes > 8) {
      throw new Refusal(
        `${what}: data run header ${hex(head)} at byte ${at} is not valid`,
      );
    }
    if (at + 1 + lenBytes + offBytes > pairsEnd) {
      throw new Refusal(
        `${what}: data run at byte ${at} overruns the attribute`,
      );
    }
    const length = readSigned(rec, at + 1, lenBytes);
    if (length === undefined || length <= 0 || length > end - vcn) {
      throw new Refusal(
        `${what}: data run at VCN ${vcn} has length ${
          length ?? "(over 2^53)"
        }, not in [1, ${end - vcn}] (the VCNs left)`,
      );
    }
    if (offBytes === 0) {
      visit(vcn, -1, length);
    } else {
      const delta = readSigned(rec, at + 1 + lenBytes, offBytes);
      const next = delta === undefined ? NaN : lcn + delta;
      if (!(next >= 0 && next + length <= clusters)) {
        throw new Refusal(
          `${what}: data run at VCN ${vcn}: LCNs ${
            Number.isNaN(next) ? "(over 2^53)" : `${next}-${next + length - 1}`
          } lie outside the volume's ${clusters} clusters`,
        );
      }
      lcn = next;
      visit(vcn, lcn, length);
    }
    vcn += length;
    at += 1 + lenBytes + offBytes;
  }
  if (vcn !== end) {
    throw new Refusal(
      `${what}: data runs cover VCNs ${nr.lowestVcn}-${
        vcn - 1
      }, the attribute says ${nr.lowestVcn}-${nr.highestVcn}`,
    );
  }
}

/**
 * Decodes a non-resident attribute's data runs into a list, with the
 * checks of {@linkcode forEachRun}.
 *
 * @param rec The record with fixups undone.
 * @param nr The attribute's non-resident header.
 * @param clusters Clusters in the volume.
 * @param clusterSize Bytes per cluster.
 * @param what The attribute, for refusals.
 * @returns The runs in VCN order (sparse runs have `lcn` -1).
 * @throws {Refusal} For a run out of range, of zero length, or runs that
 * do not add up to the VCNs.
 *
 * @example Two runs, the second sparse
 * ```ts
 * import assert from "node:assert";
 * import { decodeRuns } from "./record.ts";
 * const rec = Uint8Array.of(0x11, 4, 10, 0x01, 2, 0);
 * const nr = { lowestVcn: 0, highestVcn: 5, pairsOffset: 0, pairsEnd: 6,
 *   allocatedSize: 6 * 4096, dataSize: 6 * 4096, initializedSize: 6 * 4096 };
 * assert.deepStrictEqual(decodeRuns(rec, nr, 100, 4096, "x"), [
 *   { vcn: 0, lcn: 10, length: 4 },
 *   { vcn: 4, lcn: -1, length: 2 },
 * ]);
 * assert.throws(() => decodeRuns(rec, nr, 12, 4096, "x"), /LCNs 10-13 lie outside the volume's 12 clusters/);
 * ```
 */
export function decodeRuns(
  rec: Uint8Array,
  nr: NonResident,
  clusters: number,
  clusterSize: number,
  what: string,
): Run[] {
  const runs: Run[] = [];
  forEachRun(rec, nr, clusters, clusterSize, what, (vcn, lcn, length) => {
    runs.push({ vcn, lcn, length });
  });
  return runs;
}

/** An MFT record, fixups undone, with its header and attributes. */
export interface MftRecord {
  /** Its number: its position in the MFT. */
  number: number;
  /** Its bytes, fixups undone. */
  bytes: Uint8Array;
  /** Its header. */
  header: MftRecordHeader;
  /** Its attributes (none read for a record not in use). */
  attrs: Attribute[];
}

/**
 * Parses one record's bytes: fixups, header, and (in use) attributes.
 *
 * @param bytes The record as read (changed in place by the fixups).
 * @param number Its number.
 * @returns The record, or undefined when it was never written (all-zero magic).
 * @throws {Refusal} For any other magic, a torn write or a bad header.
 *
 * @example A record a driver marked torn, and one never written
 * ```ts
 * import assert from "node:assert";
 * import { parseRecord } from "./record.ts";
 * assert.strictEqual(parseRecord(new Uint8Array(1024), 30), undefined);
 * const baad = new Uint8Array(1024);
 * baad.set(new TextEncoder().encode("BAAD"));
 * assert.throws(() => parseRecord(baad, 30), /MFT record 30 has magic "BAAD", not "FILE"/);
 * ```
 */
export function parseRecord(
  bytes: Uint8Array,
  number: number,
): MftRecord | undefined {
  const magic = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(
    0,
    true,
  );
  if (magic === 0) return undefined;
  if (magic !== MAGIC_FILE) {
    const text = String.fromCharCode(...bytes.subarray(0, 4));
    throw new Refusal(
      `MFT record ${number} has magic "${text}", not "FILE" (a torn or damaged record)`,
    );
  }
  applyFixups(bytes, `MFT record ${number}`);
  const header = parseRecordHeader(bytes, number);
  const attrs = header.flags & RECORD_IN_USE
    ? attributes(bytes, header, number)
    : [];
  return { number, bytes, header, attrs };
}

/**
 * The attributes of `type` named `name` in a record, in record order.
 *
 * @param rec The record.
 * @param type The attribute type ({@linkcode ATTR}).
 * @param name The name (the unnamed attribute by default).
 * @returns The attributes.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { ATTR, find, type MftRecord } from "./record.ts";
 * const attrs = [{ type: ATTR.DATA, name: "" }, { type: ATTR.DATA, name: "$Bad" }];
 * const rec = { attrs } as MftRecord;
 * assert.deepStrictEqual(find(rec, ATTR.DATA, "$Bad"), [attrs[1]]);
 * ```
 */
export function find(
  rec: MftRecord,
  type: number,
  name = "",
): Attribute[] {
  return rec.attrs.filter((a) => a.type === type && a.name === name);
}

/**
 * Decodes the data runs of a record's non-resident attribute against the
 * volume's geometry ({@linkcode decodeRuns}).
 *
 * @param rec The record.
 * @param attr One of its non-resident attributes.
 * @param boot The volume's geometry.
 * @param what The attribute, for refusals.
 * @returns The runs.
 * @throws {Refusal} When a run is out of range (see {@linkcode decodeRuns}).
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { type Attribute, type MftRecord, runsOf } from "./record.ts";
 * import type { NtfsBoot } from "./boot.ts";
 * const rec = { bytes: Uint8Array.of(0x21, 8, 0x00, 0x10, 0) } as MftRecord;
 * const attr = { nonResident: { lowestVcn: 0, highestVcn: 7, pairsOffset: 0, pairsEnd: 5,
 *   allocatedSize: 8 * 4096, dataSize: 8 * 4096, initializedSize: 8 * 4096 } } as Attribute;
 * const boot = { clusters: 8192, clusterSize: 4096 } as NtfsBoot;
 * assert.deepStrictEqual(runsOf(rec, attr, boot, "$DATA"), [{ vcn: 0, lcn: 4096, length: 8 }]);
 * ```
 */
export function runsOf(
  rec: MftRecord,
  attr: Attribute,
  boot: NtfsBoot,
  what: string,
): Run[] {
  return decodeRuns(
    rec.bytes,
    attr.nonResident!,
    boot.clusters,
    boot.clusterSize,
    what,
  );
}

/** One attribute list entry: which record holds which part of which attribute. */
export interface ListEntry {
  /** Attribute type. */
  type: number;
  /** Attribute name. */
  name: string;
  /** First VCN of the part (-1 when out of range). */
  lowestVcn: number;
  /** The record holding it. */
  record: number;
}

/**
 * Parses an attribute list value: entries of type (u32), length (u16),
 * name length (u8), name offset (u8), lowest VCN (u64), MFT reference
 * (u64, the record number in its low 48 bits), instance (u16), name.
 *
 * @param value The list's bytes.
 * @param what The list, for refusals.
 * @returns The entries.
 * @throws {Refusal} When an entry overruns the list.
 *
 * @example An entry whose length runs past the list
 * ```ts
 * import assert from "node:assert";
 * import { parseAttributeList } from "./record.ts";
 * const list = new Uint8Array(0x20);
 * const v = new DataView(list.buffer);
 * v.setUint32(0, 0x80, true); // $DATA
 * v.setUint16(4, 0x20, true);
 * v.setUint32(0x10, 17, true); // in record 17
 * assert.deepStrictEqual(parseAttributeList(list, "list"), [{ type: 0x80, name: "", lowestVcn: 0, record: 17 }]);
 * v.setUint16(4, 0x28, true);
 * assert.throws(() => parseAttributeList(list, "list"), /list: entry at byte 0 has length 40, outside the list/);
 * ```
 */
export function parseAttributeList(
  value: Uint8Array,
  what: string,
): ListEntry[] {
  const view = new DataView(value.buffer, value.byteOffset, value.length);
  const out: ListEntry[] = [];
  for (let at = 0; at < value.length;) {
    if (at + 0x1a > value.length) {
      throw new Refusal(`${what}: entry at byte ${at} overruns the list`);
    }
    const length = view.getUint16(at + 4, true);
    const nameLength = value[at + 6];
    const nameOffset = value[at + 7];
    if (
      length < 0x1a || at + length > value.length ||
      (nameLength > 0 && nameOffset + 2 * nameLength > length)
    ) {
      throw new Refusal(
        `${what}: entry at byte ${at} has length ${length}, outside the list`,
      );
    }
    let name = "";
    for (let i = 0; i < nameLength; i++) {
      name += String.fromCharCode(
        view.getUint16(at + nameOffset + 2 * i, true),
      );
    }
    const vcn = view.getBigUint64(at + 8, true);
    out.push({
      type: view.getUint32(at, true),
      name,
      lowestVcn: vcn > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(vcn),
      record: Number(view.getBigUint64(at + 0x10, true) & 0xffff_ffff_ffffn),
    });
    at += length;
  }
  return out;
}
