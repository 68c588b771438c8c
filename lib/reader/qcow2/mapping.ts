/**
 * The one guest → host lookup of a qcow2 image, as QEMU's
 * `qcow2_get_host_offset()` and imago's `do_get_mapping()` are: from a
 * guest offset, the run of bytes that read one way (the subcluster type),
 * with where they are (host offset, compressed span). Reads (the read plan
 * and the stream decoder) and block status (`map`, `compare`) all ask it,
 * so they split, classify and refuse entries alike.
 *
 * What a malformed entry means, decided here for every caller:
 *
 * | entry                                   | lookup                | read    | block status          | check        |
 * | --------------------------------------- | --------------------- | ------- | --------------------- | ------------ |
 * | L2 table offset unaligned               | throws `UNALIGNED`    | fails   | fails                 | reports      |
 * | host cluster unaligned                  | throws `UNALIGNED`    | fails   | fails                 | reports      |
 * | subcluster bitmap contradicts itself    | throws `CORRUPT`      | fails   | fails                 | reports      |
 * | compressed, with an external data file  | throws `CORRUPT`      | fails   | fails                 | reports      |
 * | data file offset is not the guest's     | throws `CORRUPT`      | fails   | fails                 | reports      |
 * | compressed offset past 2^53             | compressed, no span   | fails   | compressed, no offset | reports      |
 *
 * The lookup fails where QEMU's does (its map and convert both fail
 * there); a compressed offset no number holds is far past the end of any
 * file, which only a read needs to know (QEMU's map reports the cluster
 * without looking at it). `check` walks the tables itself, as QEMU's does,
 * and reads entries with {@linkcode l2EntryAt}, so it reports each of
 * these instead of stopping. What else a read refuses (tables and clusters
 * past the end of the file, tables over other metadata) is the read
 * path's, as QEMU reads zeros there.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { Geometry } from "../../format/geometry.ts";
import {
  decodeL2Entry,
  type L2Entry,
  type L2Layout,
  type SubclusterType,
  subclusterType,
} from "../../format/l2.ts";
import type { CompressedDescriptor } from "../../format/compressed.ts";
import { decodeL1Entry } from "../../format/l1.ts";
import { zeroUnits } from "../../bytes/zeros.ts";

/** How a run of guest bytes reads: QEMU's subcluster types, `invalid` aside. */
export type MappingType = Exclude<SubclusterType, "invalid">;

/**
 * A run of guest bytes that reads one way: the answer of the lookup. A run
 * never crosses an L2 table; it ends where the type changes, where host
 * offsets stop following each other, and after one cluster when
 * compressed.
 */
export interface Mapping {
  /** Guest offset of the run's first byte. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** How the run reads. */
  type: MappingType;
  /**
   * `normal`, `zero-alloc`, `unallocated-alloc`: host offset of `offset`
   * (in the external data file when the image has one).
   */
  hostOffset?: number;
  /**
   * `compressed`: the compressed cluster's descriptor; undefined when its
   * host offset is past 2^53 (`undecodable` says why).
   */
  compressed?: CompressedDescriptor;
  /** `compressed` without a descriptor: why it has none. */
  undecodable?: Qcow2Error;
}

/** An L2 entry as {@linkcode l2EntryAt} reads it. */
export interface L2EntryRead extends L2Entry {
  /**
   * A compressed entry whose host offset is past 2^53: why its descriptor
   * could not be decoded (`compressed` is then undefined).
   */
  undecodable?: Qcow2Error;
}

/**
 * Reads entry `index` of an L2 table as every walk of the tables does:
 * `decodeL2Entry`, except that a compressed entry whose host offset is past
 * 2^53 is still a compressed entry, without a descriptor, and says why
 * (see the table above for what each caller makes of it).
 *
 * @param table The L2 table.
 * @param index The entry.
 * @param layout Cluster size and entry format.
 * @returns The entry.
 *
 * @example A compressed entry no file could hold
 * ```ts
 * import assert from "node:assert";
 * import { l2EntryAt } from "./mapping.ts";
 * const table = new Uint8Array(8);
 * new DataView(table.buffer).setBigUint64(0, (1n << 62n) | ((1n << 54n) - 1n));
 * const entry = l2EntryAt(table, 0, { clusterBits: 16, extendedL2: false, dataFile: false });
 * assert.strictEqual(entry.type, "compressed");
 * assert.strictEqual(entry.compressed, undefined);
 * assert.strictEqual(entry.undecodable?.code, "OUT_OF_RANGE");
 * ```
 */
export function l2EntryAt(
  table: Uint8Array,
  index: number,
  layout: L2Layout,
): L2EntryRead {
  try {
    return decodeL2Entry(table, index, layout);
  } catch (err) {
    // Only a compressed descriptor can fail to decode.
    if (!(err instanceof Qcow2Error) || err.code !== "OUT_OF_RANGE") throw err;
    const at = index * (layout.extendedL2 ? 16 : 8);
    const view = new DataView(table.buffer, table.byteOffset + at);
    return {
      type: "compressed",
      hostOffset: 0,
      copied: (view.getUint8(0) & 0x80) !== 0,
      reserved: false,
      allocMask: layout.extendedL2 ? view.getUint32(12) : 0,
      zeroMask: layout.extendedL2 ? view.getUint32(8) : 0,
      undecodable: err,
    };
  }
}

/** An L2 table and where it is, for messages. */
export interface L2Table {
  /** The table's bytes (one cluster). */
  bytes: Uint8Array;
  /** Its host offset. */
  offset: number;
}

/**
 * Loads the L2 table of L1 entry `l1Index`; how strictly is the image's (a
 * read refuses a table past the end of the file, an inspection reads
 * zeros there, as QEMU does). With `into` (one cluster), the loader may
 * copy the table there and return it: the caller keeps it across awaits
 * while a cache reuses its own buffers.
 */
export type L2TableLoader = (
  l1Index: number,
  l2Offset: number,
  into?: Uint8Array,
) => Promise<Uint8Array>;

/** Table copies kept for the next walks (one per walk in progress). */
const SPARE_SCRATCH = 4;

/** Types whose runs carry a host offset. */
function carriesOffset(type: MappingType): boolean {
  return type === "normal" || type === "zero-alloc" ||
    type === "unallocated-alloc";
}

/**
 * The lookup over one image's tables.
 *
 * @example The mapping of an image written by the forward pipeline
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../open.ts";
 * import { convertToBytes } from "../../writer/qcow2_writer.ts";
 * import type { Qcow2Image } from "./image.ts";
 * const raw = new Uint8Array(4 << 16);
 * raw.fill(1, 0, 2 << 16);
 * await using image = await openImage(await convertToBytes(raw, { workers: 1 })) as Qcow2Image;
 * const runs = await Array.fromAsync(image.mapping.mappings(0, image.virtualSize));
 * assert.deepStrictEqual(runs.map((m) => [m.type, m.length]), [["normal", 2 << 16], ["unallocated-plain", 2 << 16]]);
 * ```
 */
export class Qcow2Mapping {
  readonly #geometry: Geometry;
  readonly #layout: L2Layout;
  readonly #l1: () => Promise<Uint8Array>;
  readonly #load: L2TableLoader;
  /** Table copies of walks that ended, for the next walks. */
  readonly #scratch: Uint8Array[] = [];

  /**
   * @param geometry The image's table geometry.
   * @param l1 The L1 table in use (loaded on first use).
   * @param load How L2 tables are loaded (and cached).
   */
  constructor(
    geometry: Geometry,
    l1: () => Promise<Uint8Array>,
    load: L2TableLoader,
  ) {
    this.#geometry = geometry;
    this.#layout = {
      clusterBits: geometry.clusterBits,
      extendedL2: geometry.extendedL2,
      dataFile: geometry.dataFile,
    };
    this.#l1 = l1;
    this.#load = load;
  }

  /**
   * The runs covering `[offset, offset + length)`, in order, each one
   * lookup.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @returns The runs.
   * @throws {Qcow2Error} For a malformed entry (see the module's table).
   */
  async *mappings(offset: number, length: number): AsyncGenerator<Mapping> {
    const { clusterSize: cs, l2Entries } = this.#geometry;
    const span = cs * l2Entries;
    const l1 = await this.#l1();
    const end = offset + length;
    // This walk's copy of the table it is in (kept across its yields),
    // handed to the next walk when this one ends.
    let scratch: Uint8Array | undefined;
    try {
      for (let pos = offset; pos < end;) {
        const l1Index = Math.floor(pos / span);
        const tableEnd = Math.min(end, (l1Index + 1) * span);
        const l2Offset = l1Index < l1.length / 8 ? l2OffsetAt(l1, l1Index) : 0;
        if (l2Offset === 0) {
          yield {
            offset: pos,
            length: tableEnd - pos,
            type: "unallocated-plain",
          };
          pos = tableEnd;
          continue;
        }
        if (l2Offset % cs !== 0) {
          throw new Qcow2Error(
            "UNALIGNED",
            `Cannot read image: L2 table at ${
              hex(l2Offset)
            } (L1 entry ${l1Index}) is not aligned to the cluster size ${cs}`,
            { offset: l2Offset },
          );
        }
        scratch ??= this.#scratch.pop() ?? new Uint8Array(cs);
        const table = {
          bytes: await this.#load(l1Index, l2Offset, scratch),
          offset: l2Offset,
        };
        while (pos < tableEnd) {
          const run = this.#run(table, pos, tableEnd);
          yield run;
          pos += run.length;
        }
      }
    } finally {
      if (scratch && this.#scratch.length < SPARE_SCRATCH) {
        this.#scratch.push(scratch);
      }
    }
  }
  /** One lookup: the run at `pos`, ending by `end` (inside one L2 table). */
  #run(table: L2Table, pos: number, end: number): Mapping {
    const { clusterSize: cs, subclusterSize: scs, l2Entries, extendedL2 } =
      this.#geometry;
    const c = Math.floor(pos / cs);
    let index = c % l2Entries;
    const clusterStart = c * cs;
    const entry = l2EntryAt(table.bytes, index, this.#layout);
    if (entry.type === "compressed") {
      if (this.#layout.dataFile) {
        throw this.#corrupt(
          table,
          index,
          clusterStart,
          "is compressed, which an image with an external data file cannot be",
        );
      }
      const run: Mapping = {
        offset: pos,
        length: Math.min(end, clusterStart + cs) - pos,
        type: "compressed",
      };
      if (entry.compressed) run.compressed = entry.compressed;
      else run.undecodable = entry.undecodable;
      return run;
    }
    const sc = extendedL2 ? Math.floor((pos - clusterStart) / scs) : 0;
    const type = this.#typeOf(table, index, clusterStart, entry, sc);
    const withOffset = carriesOffset(type);
    if (withOffset) this.#checkHostCluster(table, index, clusterStart, entry);
    // The subclusters of this type from `sc`, then, while they reach the
    // end of their cluster, those of the next clusters (whose host
    // clusters must follow on).
    let runEnd = this.#rangeEnd(entry, type, sc, clusterStart);
    let cluster = clusterStart;
    let expected = entry.hostOffset + cs;
    while (runEnd === cluster + cs && runEnd < end) {
      if (type === "unallocated-plain") {
        // Entries of zero bytes read this way in every layout: a sparse
        // table is passed over without decoding them one by one.
        const skip = zeroUnits(
          table.bytes,
          this.#geometry.l2EntrySize,
          index + 1,
          Math.ceil((end - runEnd) / cs),
        );
        if (skip > 0) {
          index += skip;
          cluster += skip * cs;
          runEnd = cluster + cs;
          continue;
        }
      }
      index++;
      cluster += cs;
      const next = l2EntryAt(table.bytes, index, this.#layout);
      if (withOffset && next.hostOffset !== expected) break;
      if (next.type === "compressed") break;
      if (this.#typeOf(table, index, cluster, next, 0) !== type) break;
      runEnd = this.#rangeEnd(next, type, 0, cluster);
      expected += cs;
    }
    const run: Mapping = {
      offset: pos,
      length: Math.min(runEnd, end) - pos,
      type,
    };
    if (withOffset) run.hostOffset = entry.hostOffset + (pos - clusterStart);
    return run;
  }

  /** The type of subcluster `sc`, refusing a bitmap that contradicts itself. */
  #typeOf(
    table: L2Table,
    index: number,
    clusterStart: number,
    entry: L2Entry,
    sc: number,
  ): MappingType {
    const type = subclusterType(entry, sc, this.#geometry.extendedL2);
    if (type === "invalid") {
      throw this.#corrupt(
        table,
        index,
        clusterStart,
        `has an invalid subcluster bitmap (allocation ${
          hex(entry.allocMask >>> 0)
        }, zero ${hex(entry.zeroMask >>> 0)})`,
      );
    }
    return type;
  }

  /** Where the subclusters of `type` from `sc` on end in their cluster. */
  #rangeEnd(
    entry: L2Entry,
    type: MappingType,
    sc: number,
    clusterStart: number,
  ): number {
    const { clusterSize: cs, subclusterSize: scs, extendedL2 } = this.#geometry;
    if (!extendedL2) return clusterStart + cs;
    const count = cs / scs;
    let next = sc + 1;
    while (
      next < count && subclusterType(entry, next, true) === type
    ) next++;
    return clusterStart + next * scs;
  }

  /** Refuses a host cluster that is unaligned, or not where a data file needs it. */
  #checkHostCluster(
    table: L2Table,
    index: number,
    clusterStart: number,
    entry: L2Entry,
  ): void {
    const cs = this.#geometry.clusterSize;
    if (entry.hostOffset % cs !== 0) {
      throw new Qcow2Error(
        "UNALIGNED",
        `Cannot read image: guest cluster ${
          hex(clusterStart)
        } maps to host offset ${
          hex(entry.hostOffset)
        }, which is not aligned to the cluster size ${cs} (unaligned entry ${index} of the L2 table at ${
          hex(table.offset)
        })`,
        { offset: table.offset + index * this.#geometry.l2EntrySize },
      );
    }
    if (this.#layout.dataFile && entry.hostOffset !== clusterStart) {
      throw this.#corrupt(
        table,
        index,
        clusterStart,
        `maps to data file offset ${
          hex(entry.hostOffset)
        }; an external data file requires the same offset`,
      );
    }
  }

  #corrupt(
    table: L2Table,
    index: number,
    clusterStart: number,
    what: string,
  ): Qcow2Error {
    return new Qcow2Error(
      "CORRUPT",
      `Cannot read image: guest cluster ${
        hex(clusterStart)
      } ${what} (L2 table at ${hex(table.offset)}, entry ${index})`,
      { offset: table.offset + index * this.#geometry.l2EntrySize },
    );
  }
}

/** The L2 table offset of L1 entry `index` (reserved bits masked). */
function l2OffsetAt(l1: Uint8Array, index: number): number {
  return decodeL1Entry(l1, index).l2Offset;
}
