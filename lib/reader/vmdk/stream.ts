/**
 * A streamOptimized VMDK read forward, once, as its bytes arrive (a pipe,
 * an HTTP body without Range support, a disk inside an OVA): the header
 * and what precedes the grains come from a spooled prefix, then the
 * sector-aligned markers follow. A grain marker is `{ lba u64, size u32 }`
 * and `size` bytes of zlib data; a metadata marker (`size` 0) carries a
 * grain table, the grain directory or the footer; a zero sector ends the
 * stream.
 *
 * Two layouts are read. QEMU's: the grain directory and tables come
 * before the grains (spooled with the header), so each grain is checked
 * against them as it arrives, and the tables say which grain is due next
 * in guest order. VMware's: the header's gd_offset says "at the end", each
 * grain table follows its grains, then come the grain directory, the
 * footer and end-of-stream; the tables are checked against where the
 * grains were seen once the directory arrives.
 *
 * Grains are handed out in guest order. `qemu-img convert -W` writes them
 * out of order, a few MiB apart: grains that come early wait (QEMU's
 * layout: until the one due arrives; VMware's: until the stream is
 * {@linkcode REORDER_WINDOW} guest bytes past them), in at most
 * `2 * REORDER_WINDOW` bytes; a stream further out of order cannot be read
 * in one pass.
 *
 * @module
 */

import {
  hex,
  InternalError,
  Qcow2Error,
  type Qcow2ErrorCode,
} from "../../format/errors.ts";
import { sectorsFor } from "../../format/compressed.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type {
  BlockStatus,
  GuestImage,
  ImageDescription,
  InfoValue,
  PlanItem,
} from "../image.ts";
import { checkRange, readExact } from "../_bounds.ts";
import { PlannedImage } from "../_read.ts";
import {
  checkGrainData,
  FLAG_MARKER,
  FLAG_ZERO_GRAIN,
  gdEntries,
  GRAIN_MARKER_BYTES,
  GTE_ZEROED,
  MARKER_END_OF_STREAM,
  MARKER_FOOTER,
  MARKER_GRAIN_DIRECTORY,
  MARKER_GRAIN_TABLE,
  parseSparseHeader,
  SparseExtent,
  type SparseHeader,
  u32Entries,
} from "./sparse.ts";
import { DESC_SIZE, descriptorText, parseDescriptor } from "./descriptor.ts";

/**
 * How far (in guest bytes) a grain may arrive behind the furthest one seen
 * and still be put in order: `qemu-img convert -W` runs up to 16 writers
 * of 2 MiB each.
 */
export const REORDER_WINDOW = 32 * 1024 * 1024;

/** Largest grain read in one pass (a larger one is read from a spool). */
export const MAX_STREAM_GRAIN = 2 * 1024 * 1024;

/** Grain table cache of QEMU's layout, in bytes. */
const TABLE_CACHE_BYTES = 4 * 1024 * 1024;

/** Most bytes of the grain directory read at once. */
const GD_PIECE = 64 * 1024;

const SECTOR = 512;

/**
 * Bytes read forward: `read` asks only for offsets at or after what it
 * was last asked for (minus a little), and answers short at the end.
 */
export interface ForwardBytes {
  read(offset: number, length: number): Promise<Uint8Array>;
}

/**
 * What the first sectors of a stream say, when it can be read in one
 * pass; undefined when it must be read at random offsets (not
 * streamOptimized, a parent named, tables where a forward read cannot
 * find them, grains too large).
 *
 * @param prefix The stream's bytes up to where the grains start, at least
 * 512 of them.
 * @param name What to call the stream.
 * @returns The header, or undefined.
 * @throws {Qcow2Error} When the header or the descriptor is malformed.
 */
export async function streamOptimizedHeader(
  prefix: RandomAccessSource,
  name: string,
): Promise<SparseHeader | undefined> {
  const h = parseSparseHeader(
    await readExact(prefix, 0, SECTOR, `VMDK header of ${name}`),
    name,
  );
  if (
    !h.compressed || (h.flags & FLAG_MARKER) === 0 ||
    h.granularity * SECTOR > MAX_STREAM_GRAIN || h.grainOffset === 0 ||
    h.capacity === 0
  ) return undefined;
  const end = h.grainOffset * SECTOR;
  if (prefix.size < end) return undefined;
  const descAt = Math.max(SECTOR, h.descOffset * SECTOR);
  const text = await prefix.read(
    descAt,
    Math.max(0, Math.min(DESC_SIZE, end - descAt)),
  );
  const desc = parseDescriptor(descriptorText(text), name);
  if (desc.parentHint !== undefined) return undefined;
  if (!h.gdAtEnd) {
    // QEMU's layout: every table before the grains.
    const entries = gdEntries(h);
    const gdAt = h.gdOffset * SECTOR;
    if (gdAt + entries * 4 > end) return undefined;
    const gd = u32Entries(await prefix.read(gdAt, entries * 4), entries);
    if (gd.some((s) => s * SECTOR + h.gtes * 4 > end)) return undefined;
  }
  return h;
}

/** A grain as it arrived. */
interface Grain {
  /** Guest sector. */
  lba: number;
  /** Where its marker is in the stream. */
  at: number;
  /** Its zlib data. */
  data: Uint8Array;
}

/** What one image's `describe` says. */
interface StreamFacts {
  cid: number | undefined;
  parentCid: number | undefined;
}

/** What a {@linkcode StreamOptimizedImage} is built from. */
export interface StreamOptimizedInit {
  /** The header from {@linkcode streamOptimizedHeader}. */
  header: SparseHeader;
  /** The spooled prefix (header, descriptor, QEMU's tables). */
  prefix: RandomAccessSource;
  /** The stream from its start (the prefix included). */
  bytes: ForwardBytes;
  /** What to call the stream. */
  name: string;
  /** Called by `close`. */
  close: () => Promise<void>;
}

/**
 * A streamOptimized VMDK read once, in guest order, as its bytes arrive.
 * Open it with `openImageStream`.
 *
 * @example Convert a streamOptimized VMDK from a pipe
 * ```ts ignore
 * import { openImageStream } from "../stream_open.ts";
 * import { imageReadable } from "../segments.ts";
 * await using opened = await openImageStream(Deno.stdin.readable);
 * await imageReadable(opened.image).pipeTo(Deno.stdout.writable);
 * ```
 */
export class StreamOptimizedImage extends PlannedImage implements GuestImage {
  /** Always `vmdk`. */
  readonly format = "vmdk" as const;
  /** Capacity in bytes. */
  readonly virtualSize: number;
  /** Never one: a stream naming a parent is spooled. */
  readonly backing = undefined;
  readonly #init: StreamOptimizedInit;
  readonly #h: SparseHeader;
  readonly #grainSize: number;
  readonly #window: GrainWindow;
  readonly #markers: AsyncGenerator<Grain>;
  readonly #ledger = new GrainLedger();
  /** QEMU's layout: the tables before the grains. */
  #tables: SparseExtent | undefined;
  /** Grains arrived and not handed out, lowest guest sector first. */
  readonly #held = new MinHeap();
  #heldBytes = 0;
  /** The furthest guest sector seen, and the end of the last grain handed out. */
  #maxLba = -1;
  #emittedEnd = 0;
  #markersDone = false;
  /** The next grain in guest order, taken and not yet planned to its end. */
  #next: Grain | undefined;
  /** Where the plan got to. */
  #planned = 0;
  #facts: StreamFacts | undefined;

  /** @param init Header, prefix, stream and name. */
  constructor(init: StreamOptimizedInit) {
    super();
    this.#init = init;
    this.#h = init.header;
    this.virtualSize = init.header.capacity * SECTOR;
    this.#grainSize = init.header.granularity * SECTOR;
    this.#window = new GrainWindow(init.name);
    this.#markers = this.#readMarkers();
  }

  /** The stream's name. */
  get name(): string {
    return this.#init.name;
  }

  /**
   * The stream, as the grains are read from it.
   *
   * @returns One source.
   */
  sources(): RandomAccessSource[] {
    return [this.#window];
  }

  /**
   * Plans a read going forward from where the last one ended: the grains
   * as they come, what no grain holds as unallocated.
   *
   * @param offset Offset (not before the end of the last plan).
   * @param length Length.
   * @param depth Depth in the chain.
   * @returns The plan.
   * @throws {InternalError} When asked for a range already gone past.
   * @throws {Qcow2Error} When the stream is malformed.
   */
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    if (offset < this.#planned) {
      throw new InternalError(
        `Cannot read guest offset ${
          hex(offset)
        } of ${this.name}: a stream is read once, in order, and it is at ${
          hex(this.#planned)
        }`,
      );
    }
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      this.#next ??= await this.#nextGrain();
      const g = this.#next;
      const start = g ? g.lba * SECTOR : this.virtualSize;
      if (start > pos) {
        const to = Math.min(start, end);
        yield { offset: pos, length: to - pos, kind: "unallocated", depth };
        pos = to;
        continue;
      }
      const grainEnd = Math.min(start + this.#grainSize, this.virtualSize);
      const to = Math.min(grainEnd, end);
      yield this.#item(g!, pos, to - pos, depth);
      if (to === grainEnd) this.#next = undefined;
      pos = to;
    }
    this.#planned = end;
    // The end of the disk: read the rest of the stream, and check it.
    if (end === this.virtualSize && !this.#markersDone) {
      const extra = await this.#nextGrain();
      if (extra) throw this.#lateGrain(extra);
    }
  }

  /** The plan item of part of a grain; its data waits in the window. */
  #item(g: Grain, offset: number, length: number, depth: number): PlanItem {
    const start = g.lba * SECTOR;
    // The deflate stream after the 2-byte zlib header.
    const payload = g.at + GRAIN_MARKER_BYTES + 2;
    if (offset === start) this.#window.add(payload, g.data.subarray(2));
    return {
      offset,
      length,
      kind: "compressed",
      depth,
      hostOffset: g.at,
      file: this.name,
      source: this.#window,
      compressed: {
        descriptor: {
          hostOffset: payload,
          sectors: sectorsFor(payload, g.data.length - 2),
        },
        clusterOffset: start,
        clusterSize: Math.min(this.#grainSize, this.virtualSize - start),
        type: "zlib",
      },
    };
  }

  /** The next grain in guest order, or undefined once the stream ended. */
  async #nextGrain(): Promise<Grain | undefined> {
    if (!this.#h.gdAtEnd) return await this.#nextByTables();
    while (!this.#markersDone) {
      const top = this.#held.peek();
      if (
        top && (this.#heldBytes > 2 * REORDER_WINDOW ||
          (this.#maxLba - top.lba) * SECTOR >= REORDER_WINDOW)
      ) break;
      const next = await this.#markers.next();
      if (next.done) {
        this.#markersDone = true;
        break;
      }
      const g = next.value;
      if (g.lba * SECTOR < this.#emittedEnd) throw this.#lateGrain(g);
      this.#held.push(g);
      this.#heldBytes += g.data.length;
      this.#maxLba = Math.max(this.#maxLba, g.lba);
    }
    const g = this.#held.pop();
    if (!g) return undefined;
    this.#heldBytes -= g.data.length;
    const twin = this.#held.peek();
    if (twin?.lba === g.lba) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read ${this.name}: two grains for guest offset ${
          hex(g.lba * SECTOR)
        }, at ${hex(g.at)} and ${hex(twin.at)}`,
        { offset: Math.max(g.at, twin.at) },
      );
    }
    this.#emittedEnd = g.lba * SECTOR + this.#grainSize;
    return g;
  }

  /**
   * QEMU's layout: the tables (before the grains) say which grain comes
   * next in guest order and where; each grain is checked against them as
   * it arrives, and the ones that arrive before their turn wait.
   */
  async #nextByTables(): Promise<Grain | undefined> {
    const tables = this.#tables ??= await SparseExtent.open(
      this.#init.prefix,
      this.name,
      TABLE_CACHE_BYTES,
    );
    const want = await tables.nextAllocated(this.#emittedEnd);
    for (;;) {
      const top = this.#held.peek();
      if (top && top.lba * SECTOR === want?.offset) break;
      if (this.#heldBytes > 2 * REORDER_WINDOW) throw this.#missing(want!);
      const next = await this.#markers.next();
      if (next.done) {
        if (want) throw this.#missing(want, true);
        return undefined;
      }
      const g = next.value;
      const state = await tables.lookup(g.lba * SECTOR);
      if (state.kind !== "compressed" || state.hostOffset !== g.at) {
        throw new Qcow2Error(
          "CORRUPT",
          `Cannot read ${this.name}: the grain at ${
            hex(g.at)
          } is for guest offset ${
            hex(g.lba * SECTOR)
          }, which the grain tables place ${
            state.kind === "compressed"
              ? `at ${hex(state.hostOffset)}`
              : "nowhere (not allocated)"
          }`,
          { offset: g.at, field: "lba" },
        );
      }
      this.#held.push(g);
      this.#heldBytes += g.data.length;
    }
    const g = this.#held.pop()!;
    this.#heldBytes -= g.data.length;
    this.#emittedEnd = g.lba * SECTOR + this.#grainSize;
    return g;
  }

  /** The grain the tables name next did not come (in time). */
  #missing(
    want: { offset: number; hostOffset: number },
    ended = false,
  ): Qcow2Error {
    const what = `the grain of guest offset ${
      hex(want.offset)
    }, which the grain tables place at ${hex(want.hostOffset)}`;
    return ended
      ? new Qcow2Error(
        "TRUNCATED",
        `Cannot read ${this.name}: the stream ended before ${what}`,
        { offset: want.hostOffset },
      )
      : new Qcow2Error(
        "UNSUPPORTED_FEATURE",
        `Cannot read ${this.name} in one pass: ${what}, has not come within ${
          (2 * REORDER_WINDOW) >> 20
        } MiB of the grains after it: convert it from a file`,
        { offset: want.hostOffset },
      );
  }

  /** A grain that arrived after the guest range it belongs to was read. */
  #lateGrain(g: Grain): Qcow2Error {
    return new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot read ${this.name} in one pass: the grain of guest offset ${
        hex(g.lba * SECTOR)
      } (at ${hex(g.at)}) comes after the grains up to guest offset ${
        hex(this.#emittedEnd)
      }, out of order by more than ${
        REORDER_WINDOW >> 20
      } MiB: convert it from a file`,
      { offset: g.at, field: "lba" },
    );
  }

  /**
   * The markers from where the grains start: the grains yielded as they
   * come, the metadata checked, the tables checked against the grains at
   * the end.
   */
  async *#readMarkers(): AsyncGenerator<Grain> {
    const h = this.#h;
    const name = this.name;
    const bytes = this.#init.bytes;
    const gs = this.#grainSize;
    const gtSectors = Math.ceil(h.gtes * 4 / SECTOR);
    const tables = new Map<number, TableDigest>();
    /** Where the grain directory's entries are, once its marker is read. */
    let gdAt: number | undefined;
    let footer = false;
    let at = h.grainOffset * SECTOR;
    const fail = (
      offset: number,
      reason: string,
      code: Qcow2ErrorCode = "CORRUPT",
    ) =>
      new Qcow2Error(
        code,
        `Cannot read ${name}: ${reason}`,
        { offset },
      );
    const exact = async (offset: number, length: number, what: string) => {
      const b = await bytes.read(offset, length);
      if (b.length < length) {
        throw fail(
          offset + b.length,
          `the stream ends at ${hex(offset + b.length)}, inside ${what} at ${
            hex(offset)
          } (${length} bytes)`,
          "TRUNCATED",
        );
      }
      return b;
    };
    for (;;) {
      const head = await bytes.read(at, 16);
      if (head.length === 0 && (!h.gdAtEnd || footer)) break;
      if (head.length < 16) {
        throw fail(
          at + head.length,
          `the stream ends at ${hex(at + head.length)}, ${
            head.length > 0
              ? "inside a marker"
              : gdAt === undefined
              ? "before its grain directory and footer"
              : "before its footer"
          }`,
          "TRUNCATED",
        );
      }
      const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
      const value = v.getBigUint64(0, true);
      const size = v.getUint32(8, true);
      if (size !== 0) {
        if (gdAt !== undefined) {
          throw fail(
            at,
            `a grain marker at ${hex(at)} follows the grain directory`,
          );
        }
        if (
          value % BigInt(h.granularity) !== 0n || value >= BigInt(h.capacity)
        ) {
          throw fail(
            at,
            `the grain marker at ${
              hex(at)
            } names sector ${value}, not the start of a grain below the capacity (${h.capacity} sectors, ${h.granularity} per grain)`,
          );
        }
        const lba = Number(value);
        const where = `Cannot read guest offset ${
          hex(lba * SECTOR)
        }: compressed grain at ${hex(at)} of ${name}`;
        checkGrainData(
          size,
          head.subarray(GRAIN_MARKER_BYTES),
          gs,
          where,
          at + GRAIN_MARKER_BYTES,
        );
        const data = await exact(at + GRAIN_MARKER_BYTES, size, "a grain");
        if (h.gdAtEnd) this.#ledger.add(h, lba, at / SECTOR);
        yield { lba, at, data };
        at = Math.ceil((at + GRAIN_MARKER_BYTES + size) / SECTOR) * SECTOR;
        continue;
      }
      const type = v.getUint32(12, true);
      if (type === MARKER_END_OF_STREAM) {
        if (value !== 0n) {
          throw fail(
            at,
            `the end-of-stream marker at ${hex(at)} is not a zero sector`,
          );
        }
        if (h.gdAtEnd && !footer) {
          throw fail(
            at,
            `the stream ends at ${
              hex(at)
            } before its grain directory and footer`,
            "TRUNCATED",
          );
        }
        break;
      }
      if (!h.gdAtEnd) {
        throw fail(
          at,
          `a metadata marker (type ${type}) at ${
            hex(at)
          } in a stream whose grain directory is at its start`,
        );
      }
      const want = type === MARKER_GRAIN_TABLE
        ? gtSectors
        : type === MARKER_GRAIN_DIRECTORY
        ? Math.ceil(gdEntries(h) * 4 / SECTOR)
        : type === MARKER_FOOTER
        ? 1
        : -1;
      if (want < 0) throw fail(at, `unknown marker type ${type} at ${hex(at)}`);
      if (value !== BigInt(want)) {
        throw fail(
          at,
          `the ${MARKER_NAMES[type]} marker at ${
            hex(at)
          } says ${value} sectors, not ${want}`,
        );
      }
      const body = at + SECTOR;
      if (type === MARKER_GRAIN_TABLE) {
        if (gdAt !== undefined) {
          throw fail(
            at,
            `a grain table at ${hex(at)} follows the grain directory`,
          );
        }
        const regions = this.#ledger.regions;
        if (tables.size >= regions) {
          throw fail(
            at,
            `the grain table at ${
              hex(at)
            } is one more than the ${regions} grain table ranges the grains so far fall in`,
          );
        }
        const t = await exact(body, h.gtes * 4, "a grain table");
        tables.set(body / SECTOR, TableDigest.of(h, u32Entries(t, h.gtes)));
      } else if (type === MARKER_GRAIN_DIRECTORY) {
        if (gdAt !== undefined) {
          throw fail(at, `a second grain directory at ${hex(at)}`);
        }
        gdAt = body;
        const n = gdEntries(h);
        const verify = this.#ledger.verifier(h, name);
        for (let i = 0; i < n; i += GD_PIECE / 4) {
          const k = Math.min(GD_PIECE / 4, n - i);
          const part = u32Entries(
            await exact(body + i * 4, k * 4, "the grain directory"),
            k,
          );
          for (let j = 0; j < k; j++) {
            const sector = part[j];
            const digest = sector === 0 ? undefined : tables.get(sector);
            if (sector !== 0 && !digest) {
              throw fail(
                body + (i + j) * 4,
                `grain directory entry ${i + j} names a grain table at ${
                  hex(sector * SECTOR)
                }, where the stream held none`,
              );
            }
            verify(i + j, sector, digest);
          }
        }
        verify.end();
      } else {
        if (gdAt === undefined || footer) {
          throw fail(
            at,
            `the footer at ${
              hex(at)
            } is not the first one after the grain directory`,
          );
        }
        const f = parseSparseHeader(
          await exact(body, SECTOR, "the footer"),
          name,
          body,
        );
        if (
          f.gdAtEnd || f.gdOffset * SECTOR !== gdAt ||
          f.capacity !== h.capacity || f.granularity !== h.granularity ||
          f.gtes !== h.gtes
        ) {
          throw fail(
            body,
            `the footer at ${hex(body)} says gd_offset ${
              f.gdAtEnd ? "at the end" : hex(f.gdOffset * SECTOR)
            }, capacity ${f.capacity}, granularity ${f.granularity}, ${f.gtes} entries per table; the stream has its grain directory at ${
              hex(gdAt)
            } and a header saying ${h.capacity}, ${h.granularity}, ${h.gtes}`,
          );
        }
        footer = true;
      }
      at = body + want * SECTOR;
    }
  }

  /**
   * The image's own block status: grains as compressed data, the rest
   * unallocated; going forward, as `plan` does.
   *
   * @param offset Offset.
   * @param length Length.
   * @returns The runs.
   */
  async *blockStatus(
    offset: number,
    length: number,
  ): AsyncGenerator<BlockStatus> {
    for await (const item of this.plan(offset, length, 0)) {
      const data = item.kind === "compressed";
      const status: BlockStatus = {
        offset: item.offset,
        length: item.length,
        allocated: data,
        zero: false,
        data,
      };
      if (data) status.compressed = true;
      yield status;
    }
  }

  /**
   * What `qemu-img info` says of the image, from its header and
   * descriptor.
   *
   * @returns The description.
   */
  async describe(): Promise<ImageDescription> {
    const h = this.#h;
    if (!this.#facts) {
      const descAt = Math.max(SECTOR, h.descOffset * SECTOR);
      const text = await this.#init.prefix.read(
        descAt,
        Math.max(0, Math.min(DESC_SIZE, h.grainOffset * SECTOR - descAt)),
      );
      const desc = parseDescriptor(descriptorText(text), this.name);
      this.#facts = { cid: desc.cid, parentCid: desc.parentCid };
    }
    const data = { type: "vmdk", data: {} as Record<string, InfoValue> };
    if (this.#facts.cid !== undefined) data.data.cid = this.#facts.cid;
    if (this.#facts.parentCid !== undefined) {
      data.data["parent-cid"] = this.#facts.parentCid;
    }
    data.data["create-type"] = "streamOptimized";
    data.data.extents = [{
      compressed: true,
      "virtual-size": this.virtualSize,
      filename: this.name,
      "cluster-size": this.#grainSize,
      format: "",
    }];
    return {
      virtualSize: this.virtualSize,
      dirty: false,
      clusterSize: this.#grainSize,
      snapshots: [],
      specific: data,
    };
  }

  /**
   * Stops reading the stream.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    await this.#markers.return(undefined);
    await this.#init.close();
  }

  /** Same as {@linkcode StreamOptimizedImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

const MARKER_NAMES: Record<number, string> = {
  [MARKER_GRAIN_TABLE]: "grain table",
  [MARKER_GRAIN_DIRECTORY]: "grain directory",
  [MARKER_FOOTER]: "footer",
};

/** Mixes one grain table entry (its index, the grain's sector) into 32 bits. */
function mix(index: number, sector: number, seed: number): number {
  let x = Math.imul(index + 1, 0x9e3779b1) ^ Math.imul(sector, seed);
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * What a grain table maps, in a few numbers: how many grains, two sums of
 * their entries mixed with their index, and the first one's sector.
 */
class TableDigest {
  count = 0;
  a = 0;
  b = 0;
  first = 0;

  /** The digest of a grain table's entries (zeroed grains hold no grain). */
  static of(h: SparseHeader, entries: Uint32Array): TableDigest {
    const d = new TableDigest();
    const zeroed = (h.flags & FLAG_ZERO_GRAIN) !== 0;
    for (let j = 0; j < entries.length; j++) {
      const s = entries[j];
      if (s === 0 || (zeroed && s === GTE_ZEROED)) continue;
      d.add(j, s);
    }
    return d;
  }

  add(index: number, sector: number): void {
    if (this.count === 0 || sector < this.first) this.first = sector;
    this.count++;
    this.a = (this.a + mix(index, sector, 0x27d4eb2f)) >>> 0;
    this.b = (this.b + mix(index, sector, 0x165667b1)) >>> 0;
  }

  same(o: TableDigest): boolean {
    return this.count === o.count && this.a === o.a && this.b === o.b;
  }
}

/**
 * The grains as they arrived: a digest per grain table range they fall
 * in, to check the tables against at the end (the digests add up in any
 * order).
 */
class GrainLedger {
  readonly #digests = new Map<number, TableDigest>();

  /** Grain table ranges the grains fell in so far. */
  get regions(): number {
    return this.#digests.size;
  }

  add(h: SparseHeader, lba: number, sector: number): void {
    const grain = lba / h.granularity;
    const region = Math.floor(grain / h.gtes);
    let d = this.#digests.get(region);
    if (!d) this.#digests.set(region, d = new TableDigest());
    d.add(grain % h.gtes, sector);
  }

  /**
   * A check of the grain directory's entries, given in order, against the
   * grains; `end()` once all were given.
   */
  verifier(h: SparseHeader, name: string) {
    let checked = 0;
    const range = (t: number) => {
      const span = h.gtes * h.granularity * SECTOR;
      return `guest [${hex(t * span)}, ${
        hex(Math.min((t + 1) * span, h.capacity * SECTOR))
      })`;
    };
    const check = (t: number, sector: number, table?: TableDigest) => {
      const seen = this.#digests.get(t);
      if (seen) checked++;
      const mapped = table ?? new TableDigest();
      if (seen ? seen.same(mapped) : mapped.count === 0) return;
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot read ${name}: grain table ${t}${
          sector ? ` at ${hex(sector * SECTOR)}` : " (none)"
        } maps ${mapped.count} grains of ${range(t)}${
          mapped.count ? ` (the first at ${hex(mapped.first * SECTOR)})` : ""
        }, but the stream held ${seen?.count ?? 0} there${
          seen?.count ? ` (the first at ${hex(seen.first * SECTOR)})` : ""
        }`,
        { offset: sector * SECTOR, field: "grain table" },
      );
    };
    return Object.assign(check, {
      end: () => {
        if (checked === this.#digests.size) return;
        // Grains past the directory's last entry: not possible below the
        // capacity, checked all the same.
        for (const t of this.#digests.keys()) {
          if (t >= gdEntries(h)) check(t, 0);
        }
      },
    });
  }
}

/** Grains by guest sector, lowest first. */
class MinHeap {
  readonly #a: Grain[] = [];

  peek(): Grain | undefined {
    return this.#a[0];
  }

  push(g: Grain): void {
    const a = this.#a;
    a.push(g);
    for (let i = a.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (a[p].lba <= g.lba) break;
      [a[p], a[i]] = [a[i], a[p]];
      i = p;
    }
  }

  pop(): Grain | undefined {
    const a = this.#a;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      for (let i = 0;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && a[l].lba < a[m].lba) m = l;
        if (r < a.length && a[r].lba < a[m].lba) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i], a[m]];
        i = m;
      }
    }
    return top;
  }
}

/**
 * The data of the grains handed out and not yet read, at their offsets in
 * the stream: what the read-ahead reads (and decompresses) them from.
 *
 * A read covers the grains of one decompression job; grains of an
 * out-of-order stream may lie between them. The read-ahead reads a job as
 * soon as the plan hands out the grain that fills it, or the grain after
 * it: of the grains a read covers, only the last one handed out may not
 * be the read's own yet. So a covered grain goes at the next read unless
 * it is the last one handed out, and at a later read then.
 */
class GrainWindow implements RandomAccessSource {
  readonly size = Number.MAX_SAFE_INTEGER;
  readonly name: string;
  readonly #grains = new Map<number, { data: Uint8Array; covered: boolean }>();
  #newest = -1;

  constructor(name: string) {
    this.name = name;
  }

  add(at: number, data: Uint8Array): void {
    this.#grains.set(at, { data, covered: false });
    this.#newest = at;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    const end = offset + length;
    let found = false;
    for (const [at, grain] of this.#grains) {
      const { data } = grain;
      const from = Math.max(offset, at);
      const to = Math.min(end, at + data.length);
      if (from < to) {
        out.set(data.subarray(from - at, to - at), from - offset);
        found = true;
      }
      if (at >= offset && at + data.length <= end) grain.covered = true;
    }
    for (const [at, grain] of this.#grains) {
      if (grain.covered && at !== this.#newest) this.#grains.delete(at);
    }
    if (!found) {
      return Promise.reject(
        new InternalError(
          `Cannot read ${
            hex(offset)
          } of ${this.name}: no grain there is waiting to be read (a stream is read once, in order)`,
        ),
      );
    }
    return Promise.resolve(out);
  }

  close(): void {
    this.#grains.clear();
  }
}
