// qcow2 metadata as both layouts of the pack stage build it: L2 tables from placed clusters,
// the L1 table, refcount sizing and the header cluster. The default layout
// (_finalizer.ts) puts them after the data, the streamable one
// (_metadata_first.ts) before it.
import { InternalError } from "../format/errors.ts";
import {
  COMPAT,
  COMPRESSION_TYPE,
  V2_HEADER_LENGTH,
} from "../format/constants.ts";
import {
  defaultHeader,
  type Qcow2Header,
  serializeHeader,
} from "../format/header.ts";
import { encodeL1Entry } from "../format/l1.ts";
import { encodeL2Entry, type L2Layout } from "../format/l2.ts";
import type { CompressionType } from "../codec/codecs.ts";
import type { BackingFileName } from "./pack_stream.ts";
import type { PlacedRecord } from "./_packer.ts";

/** The placed records that map guest clusters. */
export type MappingRecord = Extract<
  PlacedRecord,
  { kind: "normal" | "compressed" | "zero" | "backing" }
>;

/** Guest clusters by how they were stored. */
export interface MappingCounts {
  data: number;
  compressed: number;
  zero: number;
  backing: number;
}

/**
 * L2 tables filled from mapping records in guest order; each table is
 * encoded once, with final host offsets, and handed over once no later
 * record can touch it.
 */
export class L2Tables {
  readonly counts: MappingCounts = {
    data: 0,
    compressed: 0,
    zero: 0,
    backing: 0,
  };
  #cs: number;
  #entries: number;
  #layout: L2Layout;
  #backing: boolean;
  #tables = new Map<number, Uint8Array>();
  #doneBelow = 0; // tables with lower indices were handed over

  /**
   * @param clusterSize Cluster size in bytes.
   * @param backing Whether the image has a backing file: zero clusters then
   * become zero entries, so that they do not read from it.
   */
  constructor(clusterSize: number, backing: boolean) {
    this.#cs = clusterSize;
    this.#entries = clusterSize / 8;
    this.#layout = {
      clusterBits: Math.log2(clusterSize),
      extendedL2: false,
      dataFile: false,
    };
    this.#backing = backing;
  }

  /** Whether `record` puts entries into L2 tables (else it leaves them 0). */
  static writes(record: MappingRecord, backing: boolean): boolean {
    return record.kind === "normal" || record.kind === "compressed" ||
      (record.kind === "zero" && backing);
  }

  /** Encodes the entries of one record. */
  map(record: MappingRecord): void {
    const E = this.#entries;
    const entry = (i: number) => {
      const index = record.index + i;
      return [this.#table(index), index % E] as const;
    };
    switch (record.kind) {
      case "normal":
        for (let i = 0; i < record.count; i++) {
          encodeL2Entry(...entry(i), {
            type: "normal",
            hostOffset: record.hostOffset + i * this.#cs,
            copied: true,
          }, this.#layout);
        }
        this.counts.data += record.count;
        break;
      case "compressed":
        for (let i = 0; i < record.count; i++) {
          encodeL2Entry(...entry(i), {
            type: "compressed",
            hostOffset: record.hostOffsets[i],
            sectors: record.sectors[i],
          }, this.#layout);
        }
        this.counts.compressed += record.count;
        break;
      case "zero":
        // Over a backing file, unallocated would read the backing's bytes.
        if (this.#backing) {
          for (let i = 0; i < record.count; i++) {
            encodeL2Entry(...entry(i), { type: "zero-plain" }, this.#layout);
          }
        }
        this.counts.zero += record.count;
        break;
      case "backing":
        this.counts.backing += record.count;
        break;
    }
  }

  /**
   * Hands over the tables with index below `limit`, in order.
   *
   * @param limit First table index that may still change (Infinity: all).
   */
  *takeBelow(limit: number): Generator<{ index: number; table: Uint8Array }> {
    if (limit <= this.#doneBelow) return;
    for (const index of [...this.#tables.keys()].sort((a, b) => a - b)) {
      if (index >= limit) break;
      const table = this.#tables.get(index)!;
      this.#tables.delete(index);
      yield { index, table };
    }
    this.#doneBelow = limit;
  }

  #table(index: number): Uint8Array {
    const t = Math.floor(index / this.#entries);
    if (t < this.#doneBelow) {
      throw new InternalError(
        `Cannot map cluster ${index}: L2 table ${t} was already written (the cluster arrived late)`,
      );
    }
    let table = this.#tables.get(t);
    if (!table) {
      table = new Uint8Array(this.#cs);
      this.#tables.set(t, table);
    }
    return table;
  }
}

/**
 * The L1 table in whole clusters.
 *
 * @param l1Size Entries.
 * @param clusterSize Cluster size in bytes.
 * @param l2Offsets Host offset of each L2 table by L1 index (0 or
 * undefined: none).
 */
export function l1Table(
  l1Size: number,
  clusterSize: number,
  l2Offsets: ArrayLike<number | undefined>,
): Uint8Array {
  const bytes = new Uint8Array(
    Math.ceil((l1Size * 8) / clusterSize) * clusterSize,
  );
  for (let t = 0; t < l2Offsets.length; t++) {
    const l2Offset = l2Offsets[t];
    if (l2Offset) encodeL1Entry(bytes, t, { l2Offset, copied: true });
  }
  return bytes;
}

/**
 * The smallest refcount blocks and table that cover a file of `clusters`
 * clusters plus themselves (they count themselves).
 *
 * @param clusters Clusters other than the refcount blocks and table.
 * @param blockEntries Refcounts per block.
 * @param clusterSize Cluster size in bytes.
 * @returns Refcount blocks, and refcount table clusters.
 */
export function refcountSizing(
  clusters: number,
  blockEntries: number,
  clusterSize: number,
): { blocks: number; tableClusters: number } {
  let blocks = Math.ceil(clusters / blockEntries);
  for (;;) {
    const tableClusters = Math.ceil((blocks * 8) / clusterSize);
    const need = Math.ceil((clusters + blocks + tableClusters) / blockEntries);
    if (need <= blocks) return { blocks, tableClusters };
    blocks = need;
  }
}

/** Where the header points. */
export interface HeaderFields {
  virtualSize: number;
  clusterSize: number;
  refcountOrder: number;
  compression: CompressionType;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  backingFile?: BackingFileName;
  /** Include the feature name table (default: yes). */
  featureTable?: boolean;
  /**
   * The format version: `v2` (qemu-img's compat=0.10) has the 72-byte
   * header, no feature bits and no feature name table.
   */
  compat?: "v2" | "v3";
  /** Set the lazy refcounts compatible feature bit (v3). */
  lazyRefcounts?: boolean;
}

/**
 * The first cluster: header, extensions and backing file name.
 *
 * @throws {RangeError} When the backing file name does not fit.
 */
export function headerCluster(fields: HeaderFields): Uint8Array {
  const cs = fields.clusterSize;
  const header = defaultHeader({
    size: fields.virtualSize,
    clusterBits: Math.log2(cs),
    refcountOrder: fields.refcountOrder,
    compressionType: fields.compression === "zstd"
      ? COMPRESSION_TYPE.ZSTD
      : COMPRESSION_TYPE.ZLIB,
    featureTable: fields.featureTable,
  });
  header.l1Size = fields.l1Size;
  header.l1TableOffset = fields.l1TableOffset;
  header.refcountTableOffset = fields.refcountTableOffset;
  header.refcountTableClusters = fields.refcountTableClusters;
  if (fields.compat === "v2") {
    header.version = 2;
    header.headerLength = V2_HEADER_LENGTH;
    header.extensions = [];
  }
  if (fields.lazyRefcounts) header.compatibleFeatures |= COMPAT.LAZY_REFCOUNTS;
  if (fields.backingFile) nameBackingFile(header, fields.backingFile, cs);
  const cluster = new Uint8Array(cs);
  cluster.set(serializeHeader(header));
  return cluster;
}

/**
 * Puts the backing file's name and format into a header: the format as a
 * backing format extension, the name right after the extensions, as QEMU
 * lays them out in the first cluster.
 */
function nameBackingFile(
  header: Qcow2Header,
  backing: BackingFileName,
  clusterSize: number,
): void {
  header.extensions.unshift({ kind: "backing-format", format: backing.format });
  const name = new TextEncoder().encode(backing.name);
  const withoutName = serializeHeader(header).length;
  if (withoutName + name.length > clusterSize) {
    throw new RangeError(
      `Cannot name backing file "${backing.name}": the header, its extensions and the name need ${
        withoutName + name.length
      } bytes, more than the ${clusterSize}-byte first cluster`,
    );
  }
  header.backingFile = backing.name;
  header.backingFileOffset = withoutName;
  header.backingFileSize = name.length;
}
