/**
 * `writeIntoQcow2()`: guest bytes written into an existing qcow2 image,
 * as `qemu-img convert -n` writes them: clusters the image owns alone are
 * overwritten in place, others are allocated where QEMU's allocator puts
 * them (first fit from the start of the file), L2 tables are added as
 * needed, and the refcounts follow. Zero clusters become zero entries
 * (version 3), unallocated entries (version 2 without a backing file), or
 * clusters of zeros (version 2 over a backing file).
 *
 * Order of writes, so that an interruption leaves at worst leaked
 * clusters (which `qemu-img check -r leaks` frees): data first; then the
 * refcounts of new clusters, the L2 table and its L1 entry; clusters an
 * entry no longer points at are freed only after that entry is on disk.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "../reader/image.ts";
import { imageChunks } from "../reader/segments.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import { Qcow2Error } from "../format/errors.ts";
import { parseHeader, type Qcow2Header } from "../format/header.ts";
import { COMPRESSED_SECTOR_SIZE, INCOMPAT } from "../format/constants.ts";
import { decodeL1Entry, encodeL1Entry } from "../format/l1.ts";
import { decodeL2Entry, encodeL2Entry, type L2Layout } from "../format/l2.ts";
import {
  decodeRefcountTableEntry,
  encodeRefcountTableEntry,
  getRefcount,
  refcountBlockEntries,
  setRefcount,
} from "../format/refcount.ts";
import { ClusterChunkStream } from "./chunk_stream.ts";
import { ZeroDetectStream } from "./zero_stream.ts";
import type { ClusterRecord } from "./records.ts";
import { QemuAllocator } from "./_qemu_allocator.ts";

/**
 * An image file open for reading and writing.
 *
 * @example An image held in memory
 * ```ts
 * import assert from "node:assert";
 * import type { WritableImageFile } from "./write_into.ts";
 * let bytes = new Uint8Array(8);
 * const file: WritableImageFile = {
 *   get size() { return bytes.length; },
 *   read: (at, n) => Promise.resolve(bytes.slice(at, at + n)),
 *   writeAt: (at, data) => {
 *     if (at + data.length > bytes.length) {
 *       const grown = new Uint8Array(at + data.length);
 *       grown.set(bytes);
 *       bytes = grown;
 *     }
 *     bytes.set(data, at);
 *     return Promise.resolve();
 *   },
 *   sync: () => Promise.resolve(),
 * };
 * await file.writeAt(8, new Uint8Array([1]));
 * assert.strictEqual(file.size, 9);
 * ```
 */
export interface WritableImageFile extends RandomAccessSource {
  /**
   * Writes bytes at an offset (the file grows when the write ends past
   * its size).
   */
  writeAt(offset: number, data: Uint8Array): Promise<void>;
  /** Makes what was written durable before anything that depends on it. */
  sync(): Promise<void>;
}

/** Options of {@linkcode writeIntoQcow2}. */
export interface WriteIntoOptions {
  /**
   * Zero detection granularity in bytes, as qemu-img's `-S` (0: zeros are
   * written as data).
   * @default {the image's cluster size}
   */
  sparseSize?: number;
  /**
   * The image reads as zeros where the input is zero (`--target-is-zero`):
   * zero clusters of the input are left as the image has them.
   * @default {false}
   */
  targetIsZero?: boolean;
  /** Called with the number of guest bytes written so far. */
  onProgress?: (guestBytes: number) => void;
}

/** What {@linkcode writeIntoQcow2} did. */
export interface WriteIntoSummary {
  /** Guest bytes of the input. */
  guestBytes: number;
  /** Data clusters and L2 tables allocated (refcount metadata aside). */
  allocatedClusters: number;
  /** Clusters freed (entries that no longer point at them). */
  freedClusters: number;
}

/**
 * Writes guest bytes into an existing qcow2 image, from guest offset 0,
 * as `qemu-img convert -n` does: the image keeps its size, format
 * version, backing file and whatever lies past the input's end.
 *
 * @param input The guest bytes: a raw stream (`{ zeros }` for holes) or
 * an opened image.
 * @param file The image, open for writing.
 * @param options Zero detection, `targetIsZero`, progress.
 * @returns What was allocated and freed.
 * @throws {Qcow2Error} When the file is not a qcow2 image this writes
 * into (encrypted, with internal snapshots, bitmaps, an external data
 * file, extended L2 entries, or marked dirty or corrupt), when its tables
 * point outside it, or when the input is larger than the image.
 *
 * @example Write into an image made by blankQcow2()
 * ```ts
 * import assert from "node:assert";
 * import { blankQcow2 } from "./blank_image.ts";
 * import { writeIntoQcow2, type WritableImageFile } from "./write_into.ts";
 * import { openImage } from "../reader/open.ts";
 * let bytes = blankQcow2({ size: 1 << 20 });
 * const file: WritableImageFile = {
 *   get size() { return bytes.length; },
 *   read: (at, n) => Promise.resolve(bytes.slice(at, at + n)),
 *   writeAt: (at, data) => {
 *     if (at + data.length > bytes.length) {
 *       const grown = new Uint8Array(at + data.length);
 *       grown.set(bytes);
 *       bytes = grown;
 *     }
 *     bytes.set(data, at);
 *     return Promise.resolve();
 *   },
 *   sync: () => Promise.resolve(),
 * };
 * const summary = await writeIntoQcow2(ReadableStream.from([new Uint8Array(65536).fill(7)]), file);
 * assert.strictEqual(summary.allocatedClusters, 2); // an L2 table and the data
 * await using image = await openImage(bytes);
 * assert.strictEqual((await image.readAt(0, 1))[0], 7);
 * ```
 */
export async function writeIntoQcow2(
  input: ReadableStream<Uint8Array | ZeroBytes> | GuestImage,
  file: WritableImageFile,
  options: WriteIntoOptions = {},
): Promise<WriteIntoSummary> {
  const image = await IntoImage.open(file);
  if (!(input instanceof ReadableStream) && input.virtualSize > image.size) {
    throw image.tooSmall(input.virtualSize);
  }
  const stream = input instanceof ReadableStream ? input : imageChunks(input);
  const cs = image.clusterSize;
  let guestBytes = 0;
  await stream
    .pipeThrough(new ClusterChunkStream({ clusterSize: cs }))
    .pipeThrough(
      new ZeroDetectStream({ clusterSize: cs, sparseSize: options.sparseSize }),
    )
    .pipeTo(
      new WritableStream<ClusterRecord>({
        async write(record) {
          if (record.kind === "end") {
            if (record.size > image.size) throw image.tooSmall(record.size);
            guestBytes = record.size;
            return;
          }
          if (record.kind === "data") await image.writeData(record);
          else if (record.kind === "zero" && !options.targetIsZero) {
            await image.writeZeros(record);
          }
          if ("count" in record) {
            options.onProgress?.((record.index + record.count) * cs);
          }
        },
      }),
    );
  await image.finish();
  return { guestBytes, ...image.counts };
}

/** One L2 table held while its clusters are written. */
interface HeldTable {
  index: number;
  offset: number;
  bytes: Uint8Array;
  /** Whether its L1 entry must be written (a new table). */
  newEntry: boolean;
}

/** The open image: its header, L1 table, refcounts and held L2 tables. */
class IntoImage {
  readonly counts = { allocatedClusters: 0, freedClusters: 0 };
  #file: WritableImageFile;
  #header: Qcow2Header;
  #cs: number;
  #order: number;
  #l1: Uint8Array;
  #alloc: QemuAllocator;
  /** The refcount table as on disk (block cluster by index). */
  #tableOnDisk: number[];
  #layout: L2Layout;
  #held: HeldTable | undefined;
  /** Clusters to free once the entries that pointed at them are on disk. */
  #release: number[] = [];

  private constructor(
    file: WritableImageFile,
    header: Qcow2Header,
    l1: Uint8Array,
    alloc: QemuAllocator,
  ) {
    this.#file = file;
    this.#header = header;
    this.#cs = 2 ** header.clusterBits;
    this.#order = header.refcountOrder;
    this.#l1 = l1;
    this.#alloc = alloc;
    this.#tableOnDisk = [...alloc.table];
    this.#layout = {
      clusterBits: header.clusterBits,
      extendedL2: false,
      dataFile: false,
    };
  }

  /** Reads the header, the L1 table and every refcount. */
  static async open(file: WritableImageFile): Promise<IntoImage> {
    const head = await file.read(0, 4096);
    let header = parseHeader(head);
    const cs = 2 ** header.clusterBits;
    if (cs > head.length) header = parseHeader(await file.read(0, cs));
    checkWritable(header, file);
    const l1 = await readTable(
      file,
      header.l1TableOffset,
      header.l1Size * 8,
      "L1 table",
    );
    const tableBytes = await readTable(
      file,
      header.refcountTableOffset,
      header.refcountTableClusters * cs,
      "refcount table",
    );
    const alloc = new QemuAllocator(header.clusterBits, header.refcountOrder);
    alloc.table = new Array(tableBytes.length / 8).fill(0);
    alloc.tableCluster = header.refcountTableOffset / cs;
    alloc.tableClusters = header.refcountTableClusters;
    const perBlock = refcountBlockEntries(
      header.clusterBits,
      header.refcountOrder,
    );
    for (let t = 0; t < alloc.table.length; t++) {
      const { blockOffset } = decodeRefcountTableEntry(tableBytes, t);
      if (blockOffset === 0) continue;
      const block = await readTable(file, blockOffset, cs, "refcount block");
      alloc.table[t] = blockOffset / cs;
      for (let i = 0; i < perBlock; i++) {
        const count = getRefcount(block, i, header.refcountOrder);
        if (count !== 0) alloc.refcounts[t * perBlock + i] = count;
      }
    }
    return new IntoImage(file, header, l1, alloc);
  }

  get clusterSize(): number {
    return this.#cs;
  }

  /** The image's virtual size. */
  get size(): number {
    return this.#header.size;
  }

  tooSmall(bytes: number): Qcow2Error {
    return new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot write into ${
        this.#file.name ?? "the image"
      }: the input (${bytes} bytes) is larger than the image (${this.#header.size} bytes)`,
    );
  }

  /** Writes data clusters: in place where the image owns them alone. */
  async writeData(
    record: Extract<ClusterRecord, { kind: "data" }>,
  ): Promise<void> {
    const cs = this.#cs;
    const perTable = cs / 8;
    let i = 0;
    while (i < record.count) {
      const index = record.index + i;
      const table = await this.#table(Math.floor(index / perTable));
      // The clusters of this record in this table.
      const stop = Math.min(
        record.count,
        (Math.floor(index / perTable) + 1) * perTable - record.index,
      );
      let j = i;
      while (j < stop) {
        const slot = (record.index + j) % perTable;
        const entry = decodeL2Entry(table.bytes, slot, this.#layout);
        const owned = entry.type === "normal" && entry.copied &&
          this.#alloc.refcount(entry.hostOffset / cs) === 1;
        // A run that is all owned, or all to allocate.
        let k = j + 1;
        while (k < stop) {
          const e = decodeL2Entry(
            table.bytes,
            (record.index + k) % perTable,
            this.#layout,
          );
          const o = e.type === "normal" && e.copied &&
            this.#alloc.refcount(e.hostOffset / cs) === 1;
          if (o !== owned) break;
          if (owned && e.hostOffset !== entry.hostOffset + (k - j) * cs) break;
          k++;
        }
        const data = record.data.subarray(j * cs, k * cs);
        if (owned) {
          await this.#file.writeAt(entry.hostOffset, data);
        } else {
          const start = this.#allocate(k - j);
          await this.#file.writeAt(start * cs, data);
          for (let n = j; n < k; n++) {
            const s = (record.index + n) % perTable;
            this.#dropEntry(table.bytes, s);
            encodeL2Entry(table.bytes, s, {
              type: "normal",
              hostOffset: (start + n - j) * cs,
              copied: true,
            }, this.#layout);
          }
        }
        j = k;
      }
      i = stop;
    }
  }

  /** Writes zero clusters as the image's version and backing allow. */
  async writeZeros(record: { index: number; count: number }): Promise<void> {
    const cs = this.#cs;
    const perTable = cs / 8;
    const v2 = this.#header.version < 3;
    if (v2 && this.#header.backingFile !== undefined) {
      // No zero entries: only clusters of zeros hide the backing file.
      const zeros = new Uint8Array(Math.min(record.count, perTable) * cs);
      for (let done = 0; done < record.count; done += perTable) {
        const count = Math.min(perTable, record.count - done);
        await this.writeData({
          kind: "data",
          index: record.index + done,
          count,
          data: zeros.subarray(0, count * cs),
        });
      }
      return;
    }
    for (let i = 0; i < record.count;) {
      const index = record.index + i;
      const t = Math.floor(index / perTable);
      const stop = Math.min(record.count, (t + 1) * perTable - record.index);
      if (v2 && this.#l1Entry(t) === 0 && this.#held?.index !== t) {
        // Unallocated already: it reads as zeros.
        i = stop;
        continue;
      }
      const table = await this.#table(t);
      for (let n = i; n < stop; n++) {
        const slot = (record.index + n) % perTable;
        const entry = decodeL2Entry(table.bytes, slot, this.#layout);
        if (!v2 && entry.type === "zero-plain") continue;
        this.#dropEntry(table.bytes, slot);
        encodeL2Entry(
          table.bytes,
          slot,
          v2 ? { type: "unallocated" } : { type: "zero-plain" },
          this.#layout,
        );
      }
      i = stop;
    }
  }

  /** Writes what is held, frees what was let go, and syncs. */
  async finish(): Promise<void> {
    await this.#flush();
    await this.#writeRefcounts();
    await this.#file.sync();
  }

  #l1Entry(t: number): number {
    return decodeL1Entry(this.#l1, t).l2Offset;
  }

  /** Frees (after the next flush) what an L2 entry points at. */
  #dropEntry(table: Uint8Array, slot: number): void {
    const entry = decodeL2Entry(table, slot, this.#layout);
    const cs = this.#cs;
    if (entry.type === "normal" || entry.type === "zero-alloc") {
      this.#release.push(entry.hostOffset / cs);
    } else if (entry.type === "compressed" && entry.compressed) {
      const { hostOffset, sectors } = entry.compressed;
      const first = Math.floor(hostOffset / cs);
      const last = Math.floor(
        (hostOffset + sectors * COMPRESSED_SECTOR_SIZE - 1) / cs,
      );
      for (let c = first; c <= last; c++) this.#release.push(c);
    }
  }

  #allocate(n: number): number {
    this.counts.allocatedClusters += n;
    return this.#alloc.allocate(n);
  }

  /** The L2 table `t`, held (the one held before is written first). */
  async #table(t: number): Promise<HeldTable> {
    if (this.#held?.index === t) return this.#held;
    await this.#flush();
    if (t >= this.#header.l1Size) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot write into ${
          this.#file.name ?? "the image"
        }: L2 table ${t} is past the L1 table's ${this.#header.l1Size} entries`,
      );
    }
    const cs = this.#cs;
    const { l2Offset, copied } = decodeL1Entry(this.#l1, t);
    if (l2Offset !== 0 && copied && this.#alloc.refcount(l2Offset / cs) === 1) {
      const bytes = await readTable(this.#file, l2Offset, cs, "L2 table");
      this.#held = { index: t, offset: l2Offset, bytes, newEntry: false };
    } else {
      // A new table, or a copy of one shared with another owner.
      const bytes = l2Offset === 0
        ? new Uint8Array(cs)
        : await readTable(this.#file, l2Offset, cs, "L2 table");
      if (l2Offset !== 0) this.#release.push(l2Offset / cs);
      const offset = this.#allocate(1) * cs;
      this.#held = { index: t, offset, bytes, newEntry: true };
    }
    return this.#held;
  }

  /**
   * Writes the held table: the refcounts of what it points at first, then
   * the table and its L1 entry; then lets go of what it no longer uses.
   */
  async #flush(): Promise<void> {
    const held = this.#held;
    if (!held) return;
    this.#held = undefined;
    await this.#writeRefcounts();
    await this.#file.writeAt(held.offset, held.bytes);
    if (held.newEntry) {
      encodeL1Entry(this.#l1, held.index, {
        l2Offset: held.offset,
        copied: true,
      });
      await this.#file.writeAt(
        this.#header.l1TableOffset + held.index * 8,
        this.#l1.subarray(held.index * 8, held.index * 8 + 8),
      );
    }
    for (const c of this.#release) this.#alloc.release(c);
    this.counts.freedClusters += this.#release.length;
    this.#release = [];
  }

  /** Writes the refcount blocks that changed, then the table and header. */
  async #writeRefcounts(): Promise<void> {
    const cs = this.#cs;
    const alloc = this.#alloc;
    const per = alloc.perBlock;
    for (const t of alloc.takeTouched()) {
      const block = new Uint8Array(cs);
      for (let i = 0; i < per; i++) {
        const count = alloc.refcounts[t * per + i];
        if (count) setRefcount(block, i, this.#order, count);
      }
      await this.#file.writeAt(alloc.table[t] * cs, block);
    }
    const changed = alloc.moved ||
      alloc.table.some((b, i) => b !== (this.#tableOnDisk[i] ?? 0));
    if (!changed) return;
    const bytes = new Uint8Array(alloc.tableClusters * cs);
    alloc.table.forEach((b, t) => {
      if (b !== 0) encodeRefcountTableEntry(bytes, t, b * cs);
    });
    await this.#file.writeAt(alloc.tableCluster * cs, bytes);
    if (alloc.moved) {
      // The new table is complete on disk before the header names it.
      await this.#file.sync();
      const fields = new Uint8Array(12);
      const view = new DataView(fields.buffer);
      view.setBigUint64(0, BigInt(alloc.tableCluster * cs));
      view.setUint32(8, alloc.tableClusters);
      await this.#file.writeAt(REFCOUNT_TABLE_FIELDS, fields);
      alloc.moved = false;
    }
    this.#tableOnDisk = [...alloc.table];
  }
}

/** Header offset of refcount_table_offset (then refcount_table_clusters). */
const REFCOUNT_TABLE_FIELDS = 48;

/** Refuses an image this does not write into. */
function checkWritable(header: Qcow2Header, file: WritableImageFile): void {
  const name = file.name ?? "the image";
  const refuse = (why: string) =>
    new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot write into ${name}: it ${why}`,
    );
  if (header.cryptMethod !== 0) throw refuse("is encrypted");
  if (header.nbSnapshots !== 0) {
    throw refuse(`has ${header.nbSnapshots} internal snapshot(s)`);
  }
  const incompat = header.incompatibleFeatures;
  if (incompat & INCOMPAT.DIRTY) {
    throw refuse("is marked dirty (run qemu-img check -r all first)");
  }
  if (incompat & INCOMPAT.CORRUPT) throw refuse("is marked corrupt");
  if (incompat & INCOMPAT.DATA_FILE) throw refuse("has an external data file");
  if (incompat & INCOMPAT.EXTENDED_L2) throw refuse("has extended L2 entries");
  if (incompat & ~(INCOMPAT.COMPRESSION_TYPE)) {
    throw refuse(
      `has unknown incompatible features 0x${incompat.toString(16)}`,
    );
  }
  if (header.extensions.some((e) => e.kind === "bitmaps")) {
    throw refuse("has persistent bitmaps");
  }
}

/** Reads a table that must lie whole inside the file, cluster-aligned. */
async function readTable(
  file: WritableImageFile,
  offset: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  if (length === 0) return new Uint8Array(0);
  if (offset + length > file.size || offset <= 0) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot write into ${
        file.name ?? "the image"
      }: its ${what} at ${offset} (${length} bytes) is outside the file (${file.size} bytes)`,
      { offset, field: what },
    );
  }
  return await file.read(offset, length);
}
