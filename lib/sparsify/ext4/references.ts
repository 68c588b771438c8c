/**
 * The cross-check of the block bitmaps against the inodes: every block a
 * possibly-live inode references must be marked in use. References are
 * gathered in a buffer of fixed size; when it fills (and at the end) they
 * are sorted and checked against the bitmaps of the groups they touch, so
 * that memory stays within a fixed budget whatever the filesystem's size,
 * and each bitmap block is read at most once per flush.
 *
 * The total of referenced blocks is bounded too: in a filesystem without
 * shared blocks, the blocks of files (data, extent tree and indirect
 * blocks) are at most the blocks there are, and attribute blocks at most
 * one per inode. A walk past that bound is a tree that points into itself
 * over and over, and is refused before it can take long.
 *
 * @module
 */

import { InternalError } from "../../format/errors.ts";
import { Refusal } from "../_region.ts";
import type { GroupBitmaps } from "./bitmaps.ts";
import type { Ext4Superblock } from "./superblock.ts";

/** What an inode uses a block for. */
export const REF = {
  /** File or directory data (an extent, or blocks an indirect map lists). */
  DATA: 0,
  /** An extent tree block (index or leaf) below the inode's root. */
  EXTENT_TREE: 1,
  /** An indirect, double or triple indirect block. */
  INDIRECT: 2,
  /** The extended-attribute block (`i_file_acl`). */
  XATTR: 3,
} as const;

/** One of {@linkcode REF}. */
export type RefKind = typeof REF[keyof typeof REF];

const KIND_NAMES = [
  "data",
  "an extent tree block",
  "an indirect block",
  "its extended-attribute block",
];

/** References held before they are checked (3.4 MiB of buffers with the slack). */
export const REFERENCE_BUFFER = 1 << 17;
/** Room past a full buffer: the references one inode or one tree block adds before the walker flushes. */
const SLACK = 1 << 15;

/**
 * Gathers block references and checks them against the bitmaps. `add`
 * never reads; the walker awaits `flush` whenever `full` says so.
 */
export class ReferenceCheck {
  readonly #sb: Ext4Superblock;
  readonly #bitmaps: GroupBitmaps;
  readonly #starts = new Float64Array(REFERENCE_BUFFER + SLACK);
  readonly #counts = new Float64Array(REFERENCE_BUFFER + SLACK);
  readonly #inodes = new Uint32Array(REFERENCE_BUFFER + SLACK);
  readonly #kinds = new Uint8Array(REFERENCE_BUFFER + SLACK);
  #n = 0;
  #total = 0;
  readonly #limit: number;

  /** Blocks referenced so far. */
  get total(): number {
    return this.#total;
  }

  /**
   * @param sb The superblock.
   * @param bitmaps The checked bitmaps (read `once`).
   */
  constructor(sb: Ext4Superblock, bitmaps: GroupBitmaps) {
    this.#sb = sb;
    this.#bitmaps = bitmaps;
    this.#limit = sb.blocksCount + sb.inodesCount;
  }

  /** Whether the buffer is full and {@linkcode ReferenceCheck.flush} is due. */
  get full(): boolean {
    return this.#n >= REFERENCE_BUFFER;
  }

  /**
   * Records that inode `inode` uses blocks `[start, start + count)`,
   * after checking that they lie inside the filesystem. A reference that
   * continues the previous one of the same inode and kind extends it.
   *
   * @throws {Refusal} For blocks outside the filesystem, or more
   * references than the filesystem can hold.
   */
  add(start: number, count: number, inode: number, kind: RefKind): void {
    const sb = this.#sb;
    if (
      !Number.isSafeInteger(start) || start < sb.firstDataBlock ||
      start + count > sb.blocksCount
    ) {
      throw new Refusal(
        `inode ${inode} uses ${
          count === 1
            ? `block ${start}`
            : `blocks ${start}-${start + count - 1}`
        } as ${
          KIND_NAMES[kind]
        }, outside the filesystem (blocks ${sb.firstDataBlock}-${
          sb.blocksCount - 1
        })`,
      );
    }
    this.#total += count;
    if (this.#total > this.#limit) {
      throw new Refusal(
        `inodes reference more than ${this.#limit} blocks (the ${sb.blocksCount} blocks and one attribute block per inode): blocks shared between files, or a tree that points into itself`,
      );
    }
    const last = this.#n - 1;
    if (
      last >= 0 && this.#inodes[last] === inode && this.#kinds[last] === kind &&
      this.#starts[last] + this.#counts[last] === start
    ) {
      this.#counts[last] += count;
      return;
    }
    if (this.#n === this.#starts.length) {
      throw new InternalError(
        "Cannot map free space: the reference buffer overflowed",
      );
    }
    this.#starts[this.#n] = start;
    this.#counts[this.#n] = count;
    this.#inodes[this.#n] = inode;
    this.#kinds[this.#n] = kind;
    this.#n++;
  }

  /**
   * Checks the references gathered so far against the bitmaps, in block
   * order, and empties the buffer.
   *
   * @throws {Refusal} For a referenced block the bitmap marks free.
   */
  async flush(): Promise<void> {
    const n = this.#n;
    const starts = this.#starts;
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => starts[a] - starts[b]);
    const sb = this.#sb;
    let group = -1;
    let bits: Uint8Array = new Uint8Array(0);
    let checkedTo = -1; // blocks below this are known in use
    for (let k = 0; k < n; k++) {
      const i = order[k];
      const end = starts[i] + this.#counts[i];
      for (let b = Math.max(starts[i], checkedTo); b < end;) {
        const g = Math.floor((b - sb.firstDataBlock) / sb.blocksPerGroup);
        if (g !== group) {
          bits = (await this.#bitmaps.get(g)).bits;
          group = g;
        }
        const first = sb.firstDataBlock + g * sb.blocksPerGroup;
        const stop = Math.min(end, first + sb.blocksPerGroup) - first;
        const free = firstClear(bits, b - first, stop);
        if (free >= 0) {
          throw new Refusal(
            `inode ${this.#inodes[i]} uses block ${first + free} as ${
              KIND_NAMES[this.#kinds[i]]
            }, which the block bitmap of group ${g} marks free`,
          );
        }
        b = first + stop;
      }
      checkedTo = Math.max(checkedTo, end);
    }
    this.#n = 0;
  }
}

/** The first clear bit in `[from, to)`, or -1. */
function firstClear(bits: Uint8Array, from: number, to: number): number {
  let i = from;
  while (i < to && (i & 7) !== 0) {
    if (!(bits[i >> 3] & (1 << (i & 7)))) return i;
    i++;
  }
  while (i + 8 <= to && bits[i >> 3] === 0xff) i += 8;
  for (; i < to; i++) {
    if (!(bits[i >> 3] & (1 << (i & 7)))) return i;
  }
  return -1;
}
