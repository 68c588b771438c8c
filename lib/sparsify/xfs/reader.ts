/**
 * What every XFS structure is read through: block addresses (AG number and
 * AG block, filesystem block numbers, disk addresses), a read budget that
 * bounds the time a hostile filesystem can take, and the free extents of
 * every AG, against which everything found in use is checked.
 *
 * @module
 */

import { Refusal, type RegionReader } from "../_region.ts";
import type { XfsSuperblock } from "./superblock.ts";

/**
 * Bytes of metadata read per byte of the filesystem, at most, plus a
 * constant: every block of a consistent filesystem is read at most once
 * (the AG header sectors and the superblock twice), so its size bounds a
 * hostile one's shared subtrees and directories.
 */
const READ_BUDGET_FACTOR = 1;
const READ_BUDGET_SLACK = 64 * 1024 * 1024;
/** Most free extents kept, all AGs together (8 bytes each). */
export const MAX_FREE_EXTENTS = 1 << 22;

/** The filesystem as the analysis reads it. */
export class XfsReader {
  readonly region: RegionReader;
  readonly sb: XfsSuperblock;
  /** Bytes read so far, and the most that may be. */
  spent = 0;
  readonly budget: number;
  /** Free extents per AG: AG block numbers of starts, and lengths, ascending. */
  readonly free: Array<{ starts: Uint32Array; lens: Uint32Array }> = [];
  #freeCount = 0;

  /**
   * Reads through `region` for `sb`.
   *
   * @param region The partition.
   * @param sb Its checked superblock.
   */
  constructor(region: RegionReader, sb: XfsSuperblock) {
    this.region = region;
    this.sb = sb;
    this.budget = READ_BUDGET_FACTOR * sb.dblocks * sb.blockSize +
      READ_BUDGET_SLACK;
  }

  /** Blocks in AG `agno` (the last may be short). */
  agLength(agno: number): number {
    const { sb } = this;
    return agno === sb.agcount - 1
      ? sb.dblocks - (sb.agcount - 1) * sb.agblocks
      : sb.agblocks;
  }

  /** Byte offset of AG block `agbno` of AG `agno`. */
  byteOf(agno: number, agbno: number): number {
    return (agno * this.sb.agblocks + agbno) * this.sb.blockSize;
  }

  /** Disk address (512-byte units) of an AG block, as v5 headers record it. */
  daddrOf(agno: number, agbno: number): number {
    return this.byteOf(agno, agbno) / 512;
  }

  /**
   * Splits a filesystem block number (`agno << agblklog | agbno`).
   *
   * @throws {Refusal} When it lies outside the filesystem.
   */
  splitFsb(fsb: number, what: string): [number, number] {
    const unit = 2 ** this.sb.agblklog;
    const agno = Math.floor(fsb / unit);
    const agbno = fsb % unit;
    if (agno >= this.sb.agcount || agbno >= this.agLength(agno)) {
      throw new Refusal(
        `${what}: block ${fsb} (AG ${agno} block ${agbno}) lies outside the filesystem`,
      );
    }
    return [agno, agbno];
  }

  /**
   * Reads `length` bytes at byte `at` of the filesystem, within the budget.
   *
   * @throws {Refusal} Past the budget or the region.
   */
  async read(at: number, length: number, what: string): Promise<Uint8Array> {
    this.spent += length;
    if (this.spent > this.budget) {
      throw new Refusal(
        `reading ${what} would take the metadata read past ${this.budget} bytes, more than the filesystem holds: its structures share blocks`,
      );
    }
    if (at + length > this.sb.dblocks * this.sb.blockSize) {
      throw new Refusal(`${what} at byte ${at} lies past the filesystem's end`);
    }
    return await this.region.read(at, length, what);
  }

  /**
   * Reads `count` blocks from AG block `agbno` of AG `agno`, a block at a
   * time: a block that a hostile filesystem makes the analysis read again
   * is then the same read, which a stream's read-ahead keeps once.
   */
  async readBlocks(
    agno: number,
    agbno: number,
    count: number,
    what: string,
  ): Promise<Uint8Array> {
    if (agbno + count > this.agLength(agno)) {
      throw new Refusal(
        `${what} at AG ${agno} block ${agbno} lies past the end of its AG`,
      );
    }
    const bs = this.sb.blockSize;
    if (count === 1) return await this.read(this.byteOf(agno, agbno), bs, what);
    const out = new Uint8Array(count * bs);
    for (let i = 0; i < count; i++) {
      out.set(await this.read(this.byteOf(agno, agbno + i), bs, what), i * bs);
    }
    return out;
  }

  /** Free extents that may still be kept. */
  get freeRoom(): number {
    return MAX_FREE_EXTENTS - this.#freeCount;
  }

  /**
   * Records AG `agno`'s free extents (ascending, not overlapping, checked
   * by the caller), within the memory budget.
   *
   * @throws {Refusal} Past {@linkcode MAX_FREE_EXTENTS}.
   */
  setFree(agno: number, starts: Uint32Array, lens: Uint32Array): void {
    this.#freeCount += starts.length;
    if (this.#freeCount > MAX_FREE_EXTENTS) {
      throw new Refusal(
        `free space is in more than ${MAX_FREE_EXTENTS} extents: more than the memory budget`,
      );
    }
    this.free[agno] = { starts, lens };
  }

  /**
   * Checks that blocks `[agbno, agbno + count)` of AG `agno`, found in use
   * by `what`, lie inside the AG and overlap no free extent.
   *
   * @throws {Refusal} Naming `what` and the free extent.
   */
  used(agno: number, agbno: number, count: number, what: string): void {
    if (
      !(agno >= 0 && agno < this.sb.agcount) || count < 1 ||
      agbno + count > this.agLength(agno)
    ) {
      throw new Refusal(
        `${what}: blocks ${agbno}-${
          agbno + count - 1
        } of AG ${agno} lie outside the AG`,
      );
    }
    const f = this.free[agno];
    if (!f) return;
    // The last free extent starting before the end of [agbno, agbno + count).
    let lo = 0;
    let hi = f.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (f.starts[mid] < agbno + count) lo = mid + 1;
      else hi = mid;
    }
    const k = lo - 1;
    if (k >= 0 && f.starts[k] + f.lens[k] > agbno) {
      throw new Refusal(
        `${what} uses blocks ${agbno}-${
          agbno + count - 1
        } of AG ${agno}, which the free-space btree calls free (extent ${
          f.starts[k]
        }+${f.lens[k]})`,
      );
    }
  }

  /** Checks an extent given by its first filesystem block number. */
  usedFsb(fsb: number, count: number, what: string): void {
    const [agno, agbno] = this.splitFsb(fsb, what);
    this.used(agno, agbno, count, what);
  }
}
