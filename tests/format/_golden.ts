// Helpers for the golden tests: read images that QEMU made and walk their
// metadata with the format functions (not a test file).
import assert from "node:assert";
import { qemuImg } from "../_qemu.ts";
import {
  type BitmapEntry,
  compressedRange,
  decodeBitmapTableEntry,
  decodeL1Entry,
  decodeL2Entry,
  decodeRefcountTableEntry,
  type Geometry,
  geometryOf,
  getRefcount,
  type L2Entry,
  parseBitmapDirectory,
  parseHeader,
  parseSnapshotTable,
  type Qcow2Header,
  type SnapshotEntry,
  snapshotEntryLength,
} from "../../lib/format/mod.ts";

/** The parts of `qemu-img info --output=json` the tests compare. */
export interface QemuInfo {
  "virtual-size": number;
  "cluster-size": number;
  "dirty-flag"?: boolean;
  "backing-filename"?: string;
  "backing-filename-format"?: string;
  "full-backing-filename"?: string;
  snapshots?: {
    id: string;
    name: string;
    "date-sec": number;
    "date-nsec": number;
    "vm-clock-sec": number;
    "vm-clock-nsec": number;
    "vm-state-size": number;
    icount?: number;
  }[];
  "format-specific": {
    type: string;
    data: {
      compat: string;
      "compression-type": string;
      "refcount-bits": number;
      "lazy-refcounts"?: boolean;
      "extended-l2"?: boolean;
      corrupt?: boolean;
      "data-file"?: string;
      "data-file-raw"?: boolean;
      bitmaps?: { name: string; granularity: number; flags: string[] }[];
    };
  };
}

/** One extent of `qemu-img map --output=json`. */
export interface MapExtent {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** `qemu-img info --output=json IMAGE`, parsed. */
export async function qemuInfo(path: string): Promise<QemuInfo> {
  return JSON.parse(await qemuImg("info", "--output=json", path));
}

/** `qemu-img map --output=json IMAGE`, parsed. */
export async function qemuMap(path: string): Promise<MapExtent[]> {
  return JSON.parse(await qemuImg("map", "--output=json", path));
}

/** The map extent covering guest offset `pos`. */
export function extentAt(map: MapExtent[], pos: number): MapExtent {
  const e = map.find((x) => x.start <= pos && pos < x.start + x.length);
  assert.ok(e, `qemu-img map has no extent at ${pos}`);
  return e;
}

/** A qcow2 image file read whole, with its parsed header. */
export interface Image {
  file: Uint8Array;
  header: Qcow2Header;
  geo: Geometry;
}

/** Reads an image and parses its header from the first cluster. */
export async function readImage(path: string): Promise<Image> {
  const file = await Deno.readFile(path);
  const clusterBits = new DataView(file.buffer).getUint32(20);
  const header = parseHeader(file.subarray(0, 2 ** clusterBits));
  return { file, header, geo: geometryOf(header) };
}

/** `length` bytes of the file at `offset`, which must lie inside it. */
export function bytesAt(img: Image, offset: number, length: number) {
  assert.ok(
    offset + length <= img.file.length,
    `range ${offset}+${length} is past the end of the file (${img.file.length})`,
  );
  return img.file.subarray(offset, offset + length);
}

/** The active L1 table. */
export function activeL1(img: Image): Uint8Array {
  return bytesAt(img, img.header.l1TableOffset, img.header.l1Size * 8);
}

/** The L2 entry mapping guest offset `guest`, or undefined without L2. */
export function l2EntryFor(
  img: Image,
  l1: Uint8Array,
  guest: number,
): L2Entry | undefined {
  const { clusterSize, l2Entries } = img.geo;
  const clusterIndex = Math.floor(guest / clusterSize);
  const l1Index = Math.floor(clusterIndex / l2Entries);
  const l1e = decodeL1Entry(l1, l1Index);
  assert.strictEqual(l1e.reserved, false);
  if (l1e.l2Offset === 0) return undefined;
  const l2 = bytesAt(img, l1e.l2Offset, clusterSize);
  return decodeL2Entry(l2, clusterIndex % l2Entries, img.geo);
}

/** The snapshot table entries. */
export function snapshots(img: Image): SnapshotEntry[] {
  const { nbSnapshots, snapshotsOffset } = img.header;
  if (nbSnapshots === 0) return [];
  return parseSnapshotTable(
    img.file.subarray(snapshotsOffset),
    nbSnapshots,
    snapshotsOffset,
  );
}

/**
 * Length in bytes of the snapshot table as QEMU sizes it: entries padded
 * to 8 bytes, except the last one.
 */
export function snapshotTableLength(img: Image): number {
  let at = 0;
  const table = img.file.subarray(img.header.snapshotsOffset);
  for (let i = 0; i < img.header.nbSnapshots; i++) {
    const view = new DataView(table.buffer, table.byteOffset + at);
    const unpadded = 40 + view.getUint32(36) + view.getUint16(12) +
      view.getUint16(14);
    if (i === img.header.nbSnapshots - 1) return at + unpadded;
    at += snapshotEntryLength(table, at);
  }
  return at;
}

/** The bitmap directory, from the bitmaps header extension. */
export function bitmapDirectory(img: Image): BitmapEntry[] {
  for (const ext of img.header.extensions) {
    if (ext.kind !== "bitmaps") continue;
    return parseBitmapDirectory(
      bytesAt(img, ext.directoryOffset, ext.directorySize),
      ext.nbBitmaps,
      ext.directoryOffset,
    );
  }
  return [];
}

/** Refcount of host cluster `index`, read through the refcount table. */
export function refcountOf(img: Image, index: number): number {
  const { clusterSize, refcountBlockEntries, refcountOrder } = img.geo;
  const table = bytesAt(
    img,
    img.header.refcountTableOffset,
    img.header.refcountTableClusters * clusterSize,
  );
  const tableIndex = Math.floor(index / refcountBlockEntries);
  if (tableIndex * 8 >= table.length) return 0;
  const e = decodeRefcountTableEntry(table, tableIndex);
  assert.strictEqual(e.reserved, false);
  if (e.blockOffset === 0) return 0;
  const block = bytesAt(img, e.blockOffset, clusterSize);
  return getRefcount(block, index % refcountBlockEntries, refcountOrder);
}

/**
 * The refcount every host cluster should have, computed the way
 * `qemu-img check` does from the header, the refcount table, the L1/L2
 * tables of the active image and of every snapshot, the snapshot table and
 * the bitmaps. Also checks that no table entry has reserved bits set.
 */
export function expectedRefcounts(img: Image): Map<number, number> {
  const { header, geo } = img;
  const cs = geo.clusterSize;
  const counts = new Map<number, number>();
  const addRange = (offset: number, length: number) => {
    if (length <= 0) return;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    for (let c = first; c <= last; c++) counts.set(c, (counts.get(c) ?? 0) + 1);
  };
  addRange(0, cs); // header
  addRange(header.refcountTableOffset, header.refcountTableClusters * cs);
  const reftable = bytesAt(
    img,
    header.refcountTableOffset,
    header.refcountTableClusters * cs,
  );
  for (let i = 0; i < reftable.length / 8; i++) {
    const e = decodeRefcountTableEntry(reftable, i);
    assert.strictEqual(e.reserved, false);
    if (e.blockOffset !== 0) addRange(e.blockOffset, cs);
  }
  const walkL1 = (offset: number, size: number) => {
    addRange(offset, size * 8);
    const l1 = bytesAt(img, offset, size * 8);
    for (let i = 0; i < size; i++) {
      const l1e = decodeL1Entry(l1, i);
      assert.strictEqual(l1e.reserved, false, `L1 entry ${i} reserved bits`);
      if (l1e.l2Offset === 0) continue;
      addRange(l1e.l2Offset, cs);
      const l2 = bytesAt(img, l1e.l2Offset, cs);
      for (let j = 0; j < geo.l2Entries; j++) {
        const e = decodeL2Entry(l2, j, geo);
        assert.strictEqual(e.reserved, false, `L2 entry ${j} reserved bits`);
        if (e.type === "compressed") {
          const r = compressedRange(e.compressed!);
          // qemu-img check counts from the start of the first sector.
          const start = r.offset - (r.offset % 512);
          addRange(start, r.offset + r.length - start);
        } else if (
          !geo.dataFile && (e.type === "normal" || e.type === "zero-alloc")
        ) {
          addRange(e.hostOffset, cs);
        }
      }
    }
  };
  walkL1(header.l1TableOffset, header.l1Size);
  if (header.nbSnapshots > 0) {
    addRange(header.snapshotsOffset, snapshotTableLength(img));
    for (const sn of snapshots(img)) walkL1(sn.l1TableOffset, sn.l1Size);
  }
  for (const ext of header.extensions) {
    if (ext.kind !== "bitmaps") continue;
    addRange(ext.directoryOffset, ext.directorySize);
    for (const bm of bitmapDirectory(img)) {
      addRange(bm.tableOffset, bm.tableSize * 8);
      const table = bytesAt(img, bm.tableOffset, bm.tableSize * 8);
      for (let i = 0; i < bm.tableSize; i++) {
        const e = decodeBitmapTableEntry(table, i);
        if (e.offset !== 0) addRange(e.offset, cs);
      }
    }
  }
  return counts;
}

/**
 * Asserts that every entry of every refcount block equals the refcount
 * computed by {@linkcode expectedRefcounts}, and that every referenced
 * cluster has a refcount block.
 */
export function checkRefcounts(img: Image): Map<number, number> {
  const expected = expectedRefcounts(img);
  const { clusterSize, refcountBlockEntries, refcountOrder } = img.geo;
  const reftable = bytesAt(
    img,
    img.header.refcountTableOffset,
    img.header.refcountTableClusters * clusterSize,
  );
  let checked = 0;
  for (let i = 0; i < reftable.length / 8; i++) {
    const { blockOffset } = decodeRefcountTableEntry(reftable, i);
    if (blockOffset === 0) continue;
    const block = bytesAt(img, blockOffset, clusterSize);
    for (let j = 0; j < refcountBlockEntries; j++) {
      const index = i * refcountBlockEntries + j;
      const got = getRefcount(block, j, refcountOrder);
      const want = expected.get(index) ?? 0;
      if (got !== want) {
        assert.fail(`host cluster ${index}: refcount ${got}, expected ${want}`);
      }
      if (want !== 0) checked++;
    }
  }
  assert.strictEqual(checked, expected.size, "clusters without refcount block");
  return expected;
}
