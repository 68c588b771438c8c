/**
 * The streamable layout of `Qcow2PackStream`: qcow2 written front to back
 * as one byte stream, metadata first (header, refcount table, refcount
 * blocks, L1 table, L2 tables), then the data in guest order. This is the
 * layout a pipe (stdout, an HTTP upload body) needs, and one our reader can
 * expand from a pipe in one pass.
 *
 * The packer places the data region as a file of its own (no backfilling,
 * so it stays in guest order); the data waits in a spool, and the cluster
 * mappings in a second one, until the input ends. Then the metadata's size
 * is known and the region lands right after it: the refcount blocks and the
 * L2 tables are built from the mappings, moved by that offset, each encoded
 * once.
 *
 * @module
 */

import { doneWith } from "../bytes/recycle.ts";
import { InternalError } from "../format/errors.ts";
import { l1SizeFor } from "../format/geometry.ts";
import { encodeRefcountTableEntry } from "../format/refcount.ts";
import {
  headerCluster,
  l1Table,
  L2Tables,
  type MappingRecord,
  refcountSizing,
} from "./_metadata.ts";
import { HostAllocator } from "./_host_allocator.ts";
import type { PackSettings } from "./_options.ts";
import { ClusterPacker, type PlacedRecord } from "./_packer.ts";
import type { PackSummary, SpoolStore } from "./pack_stream.ts";
import type { ClusterRecord, HostWrite } from "./records.ts";

/**
 * Parks the input as it comes ({@linkcode MetadataFirstLayout.accept}),
 * then gives the whole file in order ({@linkcode MetadataFirstLayout.writes}).
 */
export class MetadataFirstLayout {
  #settings: PackSettings;
  #region: HostAllocator;
  #packer: ClusterPacker;
  #spools: Promise<Spools>;
  /** Indices of the L2 tables that hold entries, ascending. */
  #tables: number[] = [];
  #inputSize = -1;
  #mapped = 0;

  /**
   * Starts creating the spools.
   *
   * @param settings The pack stage's settings.
   * @param spool Creates an empty spool (called twice).
   */
  constructor(settings: PackSettings, spool: () => Promise<SpoolStore>) {
    this.#settings = settings;
    this.#region = new HostAllocator({ ...settings, backfill: false });
    this.#packer = new ClusterPacker(this.#region);
    this.#spools = createSpools(spool, settings.clusterSize);
    this.#spools.catch(() => {});
  }

  /**
   * Places one record and parks its data and mappings: data into the data
   * spool (the region's offset o at o - clusterSize: its cluster 0 stands
   * for a header it does not have), mappings into the log.
   *
   * @param record The next cluster record.
   * @returns When parked.
   * @throws {RangeError} For a record that breaks the records' contract
   * (see `ClusterPacker.place`).
   */
  async accept(record: ClusterRecord): Promise<void> {
    const spools = await this.#spools;
    const placed: PlacedRecord[] = [];
    this.#packer.place(record, (p) => placed.push(p));
    for (const p of placed) await this.#park(p, spools);
  }

  async #park(record: PlacedRecord, spools: Spools): Promise<void> {
    const cs = this.#settings.clusterSize;
    const tables = this.#tables;
    if (record.kind === "write") {
      await spools.data.writeAt(record.offset - cs, record.data);
      doneWith(record.data); // written: buffers may go round
      return;
    }
    if (record.kind === "end") {
      this.#inputSize = record.size;
      return;
    }
    await spools.mappings.add(record);
    if (L2Tables.writes(record, this.#settings.backingFile !== undefined)) {
      const entries = cs / 8;
      const last = Math.floor((record.index + record.count - 1) / entries);
      let t = Math.floor(record.index / entries);
      if (tables.length > 0 && t <= tables.at(-1)!) t = tables.at(-1)! + 1;
      for (; t <= last; t++) tables.push(t);
    }
    this.#mapped += record.count * cs;
    this.#settings.onProgress?.(this.#mapped);
    // The region's refcounts are counted again once it is placed.
    this.#region.takeFinalBlocks();
  }

  /**
   * The whole image once the input has ended, as writes back to back from
   * offset 0: the metadata, then the parked data.
   *
   * @returns The writes; the generator's return value is the summary.
   * @throws {RangeError} When the input ended without an end record.
   */
  async *writes(): AsyncGenerator<HostWrite, PackSummary> {
    this.#packer.checkEnded();
    const spools = await this.#spools;
    await spools.mappings.flush();
    const collected: Collected = {
      inputSize: this.#inputSize,
      tables: this.#tables,
      dataClusters: this.#region.end / this.#settings.clusterSize - 1,
    };
    let offset = 0;
    const parts = emit(collected, this.#settings, spools);
    try {
      for (;;) {
        const next = await parts.next();
        if (next.done) return next.value;
        yield { offset, data: next.value };
        offset += next.value.length;
      }
    } finally {
      // Stopped early (the reader cancelled): stop reading the spools too.
      await parts.return(undefined as never);
    }
  }

  /**
   * Deletes the spools.
   *
   * @returns When deleted.
   */
  async close(): Promise<void> {
    const s = await this.#spools.catch(() => undefined);
    await s?.data.close();
    await s?.mappings.spool.close();
  }
}

/** The data region, and the mappings of guest clusters into it. */
interface Spools {
  data: SpoolStore;
  mappings: MappingLog;
}

async function createSpools(
  spool: () => Promise<SpoolStore>,
  clusterSize: number,
): Promise<Spools> {
  const data = await spool();
  try {
    const mappings = new MappingLog(await spool(), clusterSize);
    return { data, mappings };
  } catch (err) {
    await data.close();
    throw err;
  }
}

/** What the input came to, once it has ended. */
interface Collected {
  inputSize: number;
  /** Indices of the L2 tables that hold entries, ascending. */
  tables: number[];
  /** Clusters of the data region. */
  dataClusters: number;
}

/** Where everything goes once the input has ended. */
interface Placement {
  virtualSize: number;
  l1Size: number;
  reftableClusters: number;
  blocks: number;
  /** Clusters before the data region. */
  metaClusters: number;
  blocksOffset: number;
  l1Offset: number;
  tablesOffset: number;
  /** What to add to a region offset to get a file offset. */
  shift: number;
}

function place(
  c: Collected,
  clusterSize: number,
  blockEntries: number,
): Placement {
  const cs = clusterSize;
  const virtualSize = Math.ceil(c.inputSize / 512) * 512;
  const l1Size = l1SizeFor(virtualSize, Math.log2(cs), false);
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const { blocks, tableClusters } = refcountSizing(
    1 + l1Clusters + c.tables.length + c.dataClusters,
    blockEntries,
    cs,
  );
  const blocksOffset = (1 + tableClusters) * cs;
  const l1Offset = blocksOffset + blocks * cs;
  const tablesOffset = l1Offset + l1Clusters * cs;
  const metaClusters = tablesOffset / cs + c.tables.length;
  return {
    virtualSize,
    l1Size,
    reftableClusters: tableClusters,
    blocks,
    metaClusters,
    blocksOffset,
    l1Offset,
    tablesOffset,
    shift: (metaClusters - 1) * cs,
  };
}

/** Produces the image bytes: the metadata, then the spooled data. */
async function* emit(
  c: Collected,
  settings: PackSettings,
  spools: Spools,
): AsyncGenerator<Uint8Array, PackSummary> {
  const cs = settings.clusterSize;
  const refcounts = new HostAllocator({ ...settings, backfill: false });
  const p = place(c, cs, refcounts.blockEntries);
  yield headerCluster({
    virtualSize: p.virtualSize,
    clusterSize: cs,
    refcountOrder: refcounts.refcountOrder,
    compression: settings.compressionType,
    l1Size: p.l1Size,
    l1TableOffset: p.l1Size > 0 ? p.l1Offset : 0,
    refcountTableOffset: cs,
    refcountTableClusters: p.reftableClusters,
    backingFile: settings.backingFile,
    compat: settings.compat,
    lazyRefcounts: settings.lazyRefcounts,
  });
  const reftable = new Uint8Array(p.reftableClusters * cs);
  for (let j = 0; j < p.blocks; j++) {
    encodeRefcountTableEntry(reftable, j, p.blocksOffset + j * cs);
  }
  yield reftable;
  yield* refcountBlocks(refcounts, p, c, spools.mappings);
  if (p.l1Size > 0) {
    const l2Offsets: number[] = [];
    c.tables.forEach((t, k) => l2Offsets[t] = p.tablesOffset + k * cs);
    yield l1Table(p.l1Size, cs, l2Offsets);
  }
  const l2 = new L2Tables(cs, settings.backingFile !== undefined);
  yield* l2Tables(l2, c.tables, p.shift, spools.mappings);
  const dataBytes = c.dataClusters * cs;
  yield* await spools.data.readable(0, dataBytes);
  return {
    inputSize: c.inputSize,
    virtualSize: p.virtualSize,
    fileSize: (p.metaClusters + c.dataClusters) * cs,
    dataClusters: l2.counts.data,
    compressedClusters: l2.counts.compressed,
    zeroClusters: l2.counts.zero,
    backingClusters: l2.counts.backing,
    l2Tables: c.tables.length,
    refcountBlocks: p.blocks,
    spoolBytes: dataBytes + spools.mappings.bytes,
  };
}

/** The refcount blocks of the whole file: metadata, then the region moved into place. */
async function* refcountBlocks(
  refcounts: HostAllocator,
  p: Placement,
  c: Collected,
  mappings: MappingLog,
): AsyncGenerator<Uint8Array> {
  const cs = refcounts.clusterSize;
  let next = 0;
  const take = function* (all: boolean) {
    for (const { index, block } of refcounts.takeFinalBlocks(all)) {
      if (index !== next++) {
        throw new InternalError(
          `Cannot write the refcount blocks: block ${index} is out of order`,
        );
      }
      yield block;
    }
  };
  refcounts.allocClusters(p.metaClusters - 1); // the header's is counted
  for await (const record of mappings.records(p.shift)) {
    if (record.kind === "normal") {
      refcounts.addReferences(record.hostOffset, record.count * cs);
    } else if (record.kind === "compressed") {
      record.hostOffsets.forEach((offset, i) =>
        refcounts.addReferences(offset, record.sectors[i] * 512)
      );
    }
    yield* take(false);
  }
  const end = (p.metaClusters + c.dataClusters) * cs;
  if (refcounts.end !== end) {
    throw new InternalError(
      `Cannot write the refcount blocks: the data region ends at ${refcounts.end}, not ${end}`,
    );
  }
  yield* take(true);
  if (next !== p.blocks) {
    throw new InternalError(
      `Cannot write the refcount blocks: ${next} written, ${p.blocks} placed`,
    );
  }
}

/** The L2 tables, in order, from the mappings moved into place. */
async function* l2Tables(
  l2: L2Tables,
  tables: number[],
  shift: number,
  mappings: MappingLog,
): AsyncGenerator<Uint8Array> {
  let k = 0;
  const take = function* (limit: number) {
    for (const { index, table } of l2.takeBelow(limit)) {
      if (index !== tables[k++]) {
        throw new InternalError(
          `Cannot write the L2 tables: table ${index} was not placed`,
        );
      }
      yield table;
    }
  };
  const entries = mappings.clusterSize / 8;
  for await (const record of mappings.records(shift)) {
    l2.map(record);
    yield* take(Math.floor((record.index + record.count) / entries));
  }
  yield* take(Infinity);
  if (k !== tables.length) {
    throw new InternalError(
      `Cannot write the L2 tables: ${k} written, ${tables.length} placed`,
    );
  }
}

const KINDS = ["normal", "compressed", "zero", "backing"] as const;

/**
 * Mapping records parked in a spool, in guest order, as pairs of float64:
 * `[index, count * 4 + kind]`, then for `normal` `[hostOffset, 0]` and for
 * `compressed` one `[hostOffset, sectors]` a cluster.
 */
class MappingLog {
  readonly spool: SpoolStore;
  readonly clusterSize: number;
  #pending: number[] = [];
  #bytes = 0;

  constructor(spool: SpoolStore, clusterSize: number) {
    this.spool = spool;
    this.clusterSize = clusterSize;
  }

  /** Bytes parked. */
  get bytes(): number {
    return this.#bytes + this.#pending.length * 8;
  }

  async add(r: MappingRecord): Promise<void> {
    const out = this.#pending;
    out.push(r.index, r.count * 4 + KINDS.indexOf(r.kind));
    if (r.kind === "normal") out.push(r.hostOffset, 0);
    if (r.kind === "compressed") {
      for (let i = 0; i < r.count; i++) {
        out.push(r.hostOffsets[i], r.sectors[i]);
      }
    }
    if (out.length >= 8192) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.#pending.length === 0) return;
    const bytes = new Uint8Array(Float64Array.from(this.#pending).buffer);
    this.#pending = [];
    await this.spool.writeAt(this.#bytes, bytes);
    this.#bytes += bytes.length;
  }

  /** Reads the records back, host offsets moved by `shift`. */
  async *records(shift: number): AsyncGenerator<MappingRecord> {
    let carry = new Uint8Array(0);
    let open: MappingRecord | undefined;
    for await (const chunk of await this.spool.readable(0, this.#bytes)) {
      const bytes = new Uint8Array(carry.length + chunk.length);
      bytes.set(carry);
      bytes.set(chunk, carry.length);
      const whole = bytes.length - (bytes.length % 16);
      carry = bytes.slice(whole);
      const units = new Float64Array(bytes.buffer, 0, whole / 8);
      const done: MappingRecord[] = [];
      for (let u = 0; u < units.length; u += 2) {
        const [a, b] = [units[u], units[u + 1]];
        if (open?.kind === "normal") {
          open.hostOffset = a + shift;
        } else if (open?.kind === "compressed") {
          open.hostOffsets.push(a + shift);
          open.sectors.push(b);
          if (open.hostOffsets.length < open.count) continue;
        } else {
          const kind = KINDS[b % 4];
          const base = { index: a, count: Math.floor(b / 4) };
          open = kind === "normal"
            ? { kind, ...base, hostOffset: 0 }
            : kind === "compressed"
            ? { kind, ...base, hostOffsets: [], sectors: [] }
            : { kind, ...base };
          if (kind === "normal" || kind === "compressed") continue;
        }
        done.push(open!);
        open = undefined;
      }
      yield* done;
    }
  }
}
