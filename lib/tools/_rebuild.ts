// rebuild_refcount_structure() of QEMU 7.2 (block/qcow2-refcount.c): new
// refcount blocks and a new refcount table written from the counted
// references, into clusters nothing references, placed where QEMU places
// them (so the repaired image ends where qemu-img's does). The caller
// enters the new table into the header once it is on disk.
//
// Placement: refcount blocks are visited in order; each block covering a
// cluster in use gets the first free cluster at or after the start of its
// range (it may fall in a later range, which is then visited too). The
// table then gets the first run of free clusters from the start of the
// file, and the blocks covering it are written again; if that needs a new
// block and the table grows, the table is placed again (the clusters first
// given to it are left for the check that follows to free).

import { encodeRefcountTableEntry, setRefcount } from "../format/refcount.ts";
import type { RefcountMap } from "./_refmap.ts";
import type { RepairWriter } from "./_qcow2_check.ts";

/** Bytes of a refcount table entry. */
const TABLE_ENTRY = 8;

/** The new refcount table: where it is and how many clusters it takes. */
export interface RebuiltTable {
  offset: number;
  clusters: number;
}

/**
 * Writes refcount blocks and a table for the counts in `refs` (which gains
 * the clusters they take).
 *
 * @returns Where the new refcount table is.
 */
export async function rebuildRefcounts(
  writer: RepairWriter,
  refs: RefcountMap,
  clusterBits: number,
  order: number,
): Promise<RebuiltTable> {
  const cs = 2 ** clusterBits;
  const perBlock = cs * 8 / 2 ** order;
  const state: Rebuild = { writer, refs, cs, perBlock, order, table: [] };
  let grown = await writeBlocks(state, 0, refs.size);
  let placed: RebuiltTable | undefined;
  do {
    // A table placed before it grew stays allocated: the check that
    // follows the rebuild frees it as a leak, as QEMU's does.
    const clusters = Math.ceil(state.table.length * TABLE_ENTRY / cs);
    const start = allocate(refs, clusters, { next: 0 });
    placed = { offset: start * cs, clusters };
    grown = await writeBlocks(state, start, start + clusters);
  } while (grown);
  const bytes = new Uint8Array(placed.clusters * cs);
  state.table.forEach((offset, i) => {
    if (offset) encodeRefcountTableEntry(bytes, i, offset);
  });
  await writer.writeAt(placed.offset, bytes);
  return placed;
}

interface Rebuild {
  writer: RepairWriter;
  refs: RefcountMap;
  cs: number;
  perBlock: number;
  order: number;
  /** Offsets of the new refcount blocks (0: none), whole clusters of entries. */
  table: number[];
}

/**
 * rebuild_refcounts_write_refblocks(): the blocks covering clusters in use
 * in [first, end), each allocated when new and written.
 *
 * @returns Whether the table had to grow.
 */
async function writeBlocks(
  s: Rebuild,
  first: number,
  end: number,
): Promise<boolean> {
  const { refs, cs, perBlock } = s;
  const hint = { next: 0 };
  let grown = false;
  for (let cluster = first; cluster < end; cluster++) {
    if (refs.get(cluster) === 0) continue;
    const index = Math.floor(cluster / perBlock);
    const blockStart = index * perBlock;
    let offset = s.table[index] ?? 0;
    if (offset === 0) {
      // Never into a range whose block is already written.
      hint.next = Math.max(hint.next, blockStart);
      const at = allocate(refs, 1, hint);
      if (at >= end) end = at + 1; // its own count must be written too
      if (s.table.length <= index) {
        const entries = Math.ceil((index + 1) * TABLE_ENTRY / cs) * cs /
          TABLE_ENTRY;
        while (s.table.length < entries) s.table.push(0);
        grown = true;
      }
      offset = at * cs;
      s.table[index] = offset;
    }
    await s.writer.writeAt(offset, blockOf(s, blockStart));
    cluster = blockStart + perBlock - 1;
  }
  return grown;
}

/** The refcount block for the clusters from `start`, from the counts. */
function blockOf(s: Rebuild, start: number): Uint8Array {
  const block = new Uint8Array(s.cs);
  const end = Math.min(start + s.perBlock, s.refs.size);
  for (let c = start; c < end; c++) {
    const n = s.refs.get(c);
    if (n !== 0) setRefcount(block, c - start, s.order, n);
  }
  return block;
}

/**
 * alloc_clusters_imrt(): the first run of `count` free clusters from
 * `hint.next` (which moves to the first free cluster seen), past the end
 * of the counts if need be; the clusters get refcount 1.
 *
 * @returns The first cluster of the run.
 */
function allocate(
  refs: RefcountMap,
  count: number,
  hint: { next: number },
): number {
  let cluster = hint.next;
  let run = 0;
  let firstGap = true;
  for (; cluster < refs.size && run < count; cluster++) {
    if (refs.get(cluster) === 0) {
      run++;
      if (firstGap) {
        hint.next = cluster;
        firstGap = false;
      }
    } else run = 0;
  }
  if (run < count) refs.extend(cluster + count - run);
  const start = cluster - run;
  for (let i = 0; i < count; i++) refs.set(start + i, 1);
  return start;
}
