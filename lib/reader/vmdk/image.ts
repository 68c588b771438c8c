/**
 * A VMDK image as the guest sees it: its extents laid end to end (flat
 * extents read from their files, sparse extents through their grain
 * tables), and the parent image under what no extent allocates.
 *
 * @module
 */

import { hex } from "../../format/errors.ts";
import { sectorsFor } from "../../format/compressed.ts";
import { isRemote, type RandomAccessSource } from "../../io/source.ts";
import type {
  BlockStatus,
  BlockStatusOptions,
  FormatCheck,
  GuestImage,
  ImageDescription,
  InfoValue,
  PlanItem,
} from "../image.ts";
import { checkRange, readExact } from "../_bounds.ts";
import { PlannedImage } from "../_read.ts";
import { fileStatus, type SourceHoles } from "../_file_status.ts";
import { checkVmdk } from "./check.ts";
import {
  checkGrainData,
  FLAG_MARKER,
  GRAIN_MARKER_BYTES,
  type GrainState,
  type SparseExtent,
} from "./sparse.ts";

/** One extent of the image, placed in the guest. */
export type VmdkExtent =
  & {
    /** Guest byte offset where it starts. */
    start: number;
    /** Guest bytes it holds. */
    length: number;
    /** Its type as the descriptor names it (`SPARSE`, `FLAT`, `VMFS`). */
    type: string;
    /** Its file's name, resolved. */
    name: string;
  }
  & (
    | {
      kind: "flat";
      source: RandomAccessSource;
      /** Byte offset of the extent's data in its file. */
      fileOffset: number;
      holes: SourceHoles;
    }
    | { kind: "sparse"; sparse: SparseExtent }
  );

/** What a {@linkcode VmdkImage} is built from. */
export interface VmdkImageInit {
  /** The image file (the descriptor, or the monolithic sparse file). */
  source: RandomAccessSource;
  /** What to call it. */
  name: string;
  /** Whether closing the image closes `source`. */
  ownsSource: boolean;
  /** `createType`. */
  createType: string;
  cid: number | undefined;
  parentCid: number | undefined;
  /** The parent hint as stored. */
  parentHint: string | undefined;
  /** The extents, in guest order, end to end from 0. */
  extents: VmdkExtent[];
  /** Extent sources the image opened (closed with it). */
  owned: RandomAccessSource[];
  /** The parent image, opened. */
  backing: GuestImage | undefined;
}

/** Most bytes one read of a compressed grain's marker takes. */
const MARKER_PEEK = GRAIN_MARKER_BYTES + 2;
/**
 * Bytes read at once where a compressed grain's marker is wanted from a
 * remote source (`isRemote`: over HTTP): the grains of a streamOptimized
 * extent lie one after another, so one request serves the markers of the
 * next few dozen grains, where a request each (16 Ki of them per GiB of
 * 64 KiB grains, one after the other while the plan is made) is a round
 * trip each. A local file reads the marker alone: it answers at once, and
 * a window would copy every byte of the file once more.
 */
const MARKER_WINDOW = 1024 * 1024;

/**
 * An opened VMDK image. Open it with `openImage`.
 *
 * @example Read a monolithicSparse image qemu-img wrote
 * ```ts ignore
 * import { openImage } from "../open.ts";
 * await using image = await openImage("disk.vmdk");
 * console.log(image.format, image.virtualSize);
 * ```
 */
export class VmdkImage extends PlannedImage implements GuestImage {
  /** Always `vmdk`. */
  readonly format = "vmdk" as const;
  /** Virtual size: the extents' sizes added up. */
  readonly virtualSize: number;
  /** The parent image. */
  readonly backing: GuestImage | undefined;
  /** `createType` (for a sparse file, what its header says). */
  readonly createType: string;
  /** The descriptor's `CID`. */
  readonly cid: number | undefined;
  readonly #init: VmdkImageInit;
  /** The last bytes read for markers (see MARKER_WINDOW). */
  #window:
    | {
      source: RandomAccessSource;
      at: number;
      end: number;
      bytes: Promise<Uint8Array>;
    }
    | undefined;

  /**
   * Builds the image from its opened extents.
   *
   * @param init The image file, descriptor facts, extents and parent.
   */
  constructor(init: VmdkImageInit) {
    super();
    this.#init = init;
    this.backing = init.backing;
    this.createType = init.createType;
    this.cid = init.cid;
    const last = init.extents.at(-1);
    this.virtualSize = last ? last.start + last.length : 0;
  }

  /** The image's name. */
  get name(): string {
    return this.#init.name;
  }

  /**
   * The image file, its extent files, then the parent chain's.
   *
   * @returns The sources.
   */
  sources(): RandomAccessSource[] {
    return [
      this.#init.source,
      ...this.#init.owned.filter((s) => s !== this.#init.source),
      ...this.backing?.sources() ?? [],
    ];
  }

  /** The extents overlapping `[offset, end)`, with the overlap. */
  *#overlaps(offset: number, end: number) {
    for (const e of this.#init.extents) {
      const from = Math.max(offset, e.start);
      const to = Math.min(end, e.start + e.length);
      if (from < to) yield { e, from, to };
    }
  }

  /**
   * The runs of one sparse extent over `[from, to)` (guest offsets): one
   * per stretch of grains in the same state (data runs while the host
   * bytes follow on).
   */
  async *#grainRuns(
    e: VmdkExtent & { kind: "sparse" },
    from: number,
    to: number,
  ): AsyncGenerator<{ offset: number; length: number; state: GrainState }> {
    const gs = e.sparse.grainSize;
    let run: { offset: number; length: number; state: GrainState } | undefined;
    for (let pos = from; pos < to;) {
      const rel = pos - e.start;
      const inGrain = rel % gs;
      const g = await e.sparse.lookup(rel);
      // A grain table that is not allocated is skipped whole.
      const n = Math.min(
        g.kind === "unallocated" && g.span ? g.span : gs - inGrain,
        to - pos,
      );
      const state: GrainState = g.kind === "data"
        ? { kind: "data", hostOffset: g.hostOffset + inGrain }
        : g.kind === "unallocated"
        ? { kind: "unallocated" }
        : g;
      if (
        run && run.state.kind === state.kind && state.kind !== "compressed" &&
        (state.kind !== "data" ||
          (run.state as { hostOffset: number }).hostOffset + run.length ===
            state.hostOffset)
      ) {
        run.length += n;
      } else {
        if (run) yield run;
        run = { offset: pos, length: n, state };
      }
      pos += n;
    }
    if (run) yield run;
  }

  /**
   * Plans a read: data from extent files, compressed grains with what the
   * codec needs, zeroed grains, and the parent under unallocated grains.
   *
   * @param offset Offset.
   * @param length Length.
   * @param depth Depth in the chain.
   * @returns The plan.
   */
  protected async *planRange(
    offset: number,
    length: number,
    depth: number,
  ): AsyncGenerator<PlanItem> {
    checkRange(offset, length, this.virtualSize);
    for (const { e, from, to } of this.#overlaps(offset, offset + length)) {
      if (e.kind === "flat") {
        yield {
          offset: from,
          length: to - from,
          kind: "data",
          depth,
          hostOffset: e.fileOffset + (from - e.start),
          file: e.name,
          source: e.source,
        };
        continue;
      }
      for await (const run of this.#grainRuns(e, from, to)) {
        const { state } = run;
        if (state.kind === "data") {
          yield {
            offset: run.offset,
            length: run.length,
            kind: "data",
            depth,
            hostOffset: state.hostOffset,
            file: e.name,
            source: e.sparse.source,
          };
        } else if (state.kind === "compressed") {
          yield await this.#compressedItem(e, run, state.hostOffset, depth);
        } else if (state.kind === "zero") {
          yield { offset: run.offset, length: run.length, kind: "zero", depth };
        } else if (this.backing) {
          const inside = Math.max(
            0,
            Math.min(run.length, this.backing.virtualSize - run.offset),
          );
          if (inside > 0) {
            yield* this.backing.plan(run.offset, inside, depth + 1);
          }
          if (inside < run.length) {
            yield {
              offset: run.offset + inside,
              length: run.length - inside,
              kind: "unallocated",
              depth,
            };
          }
        } else {
          yield {
            offset: run.offset,
            length: run.length,
            kind: "unallocated",
            depth,
          };
        }
      }
    }
  }

  /**
   * `length` bytes at `at` of `source`: from a local file directly; from
   * a remote source out of the window of bytes last read there, or a new
   * window read from `at` (a short file gets readExact's error for the
   * bytes wanted).
   */
  async #peek(
    source: RandomAccessSource,
    at: number,
    length: number,
    what: string,
  ): Promise<Uint8Array> {
    if (!isRemote(source)) return readExact(source, at, length, what);
    let w = this.#window;
    if (!w || w.source !== source || at < w.at || at + length > w.end) {
      const end = Math.min(at + MARKER_WINDOW, source.size);
      if (end - at < length) return readExact(source, at, length, what);
      w = { source, at, end, bytes: readExact(source, at, end - at, what) };
      this.#window = w;
    }
    const bytes = await w.bytes;
    return bytes.subarray(at - w.at, at - w.at + length);
  }

  /** The plan item of part of a compressed grain: its marker read and checked. */
  async #compressedItem(
    e: VmdkExtent & { kind: "sparse" },
    run: { offset: number; length: number },
    host: number,
    depth: number,
  ): Promise<PlanItem> {
    const sparse = e.sparse;
    const gs = sparse.grainSize;
    const grainStart = run.offset - ((run.offset - e.start) % gs);
    const grainBytes = Math.min(gs, e.start + e.length - grainStart);
    const markers = (sparse.header.flags & FLAG_MARKER) !== 0;
    const head = await this.#peek(
      sparse.source,
      host,
      markers ? MARKER_PEEK : 2,
      `compressed grain of ${sparse.name}`,
    );
    const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const size = markers ? view.getUint32(8, true) : gs;
    const where = `Cannot read guest offset ${
      hex(grainStart)
    }: compressed grain at ${hex(host)} of ${sparse.name}`;
    const data = host + (markers ? GRAIN_MARKER_BYTES : 0);
    checkGrainData(size, head.subarray(data - host), gs, where, data);
    // The deflate stream after the 2-byte zlib header; the codec ignores
    // the Adler-32 trailer after it.
    const payload = data + 2;
    return {
      offset: run.offset,
      length: run.length,
      kind: "compressed",
      depth,
      hostOffset: host,
      file: sparse.name,
      source: sparse.source,
      compressed: {
        descriptor: {
          hostOffset: payload,
          sectors: sectorsFor(payload, size - 2),
        },
        clusterOffset: grainStart,
        clusterSize: grainBytes,
        type: "zlib",
      },
    };
  }

  /**
   * The image's own block status, as QEMU's vmdk driver reports it: data
   * grains with their offset, compressed grains without, zeroed grains as
   * zeros, unallocated grains as not allocated; flat extents as data that
   * the file's holes make zero too.
   *
   * @param offset Offset.
   * @param length Length.
   * @param options Whether to ask the file system for holes.
   * @returns The runs.
   */
  async *blockStatus(
    offset: number,
    length: number,
    options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    checkRange(offset, length, this.virtualSize);
    for (const { e, from, to } of this.#overlaps(offset, offset + length)) {
      if (e.kind === "flat") {
        const probe = options.holes ? e.holes.probe : undefined;
        const fileSize = Math.ceil(e.source.size / 512) * 512;
        for (let pos = from; pos < to;) {
          const host = e.fileOffset + (pos - e.start);
          const st = fileStatus(probe, fileSize, host, to - pos);
          const n = st.length === 0 ? to - pos : st.length;
          yield {
            offset: pos,
            length: n,
            allocated: true,
            zero: st.length === 0 || st.zero,
            data: true,
            hostOffset: host,
            file: e.name,
          };
          pos += n;
        }
        continue;
      }
      for await (const run of this.#grainRuns(e, from, to)) {
        const s = run.state;
        const status: BlockStatus = {
          offset: run.offset,
          length: run.length,
          allocated: s.kind !== "unallocated",
          zero: s.kind === "zero",
          data: s.kind === "data" || s.kind === "compressed",
        };
        if (s.kind === "data") {
          status.hostOffset = s.hostOffset;
          status.file = e.name;
        }
        if (s.kind === "compressed") status.compressed = true;
        yield status;
      }
    }
  }

  /**
   * What `qemu-img info` says of a VMDK image.
   *
   * @returns The description.
   */
  describe(): Promise<ImageDescription> {
    const init = this.#init;
    const first = init.extents[0];
    const extents: InfoValue[] = init.extents.map((e) => {
      const o: { [key: string]: InfoValue } = {};
      if (e.kind === "sparse" && e.sparse.header.compressed) {
        o.compressed = true;
      }
      o["virtual-size"] = e.length;
      o.filename = e.name;
      if (e.kind === "sparse") o["cluster-size"] = e.sparse.grainSize;
      o.format = e.type;
      return o;
    });
    const data: { [key: string]: InfoValue } = {};
    if (init.cid !== undefined) data.cid = init.cid;
    if (init.parentCid !== undefined) data["parent-cid"] = init.parentCid;
    data["create-type"] = init.createType;
    data.extents = extents;
    const d: ImageDescription = {
      virtualSize: this.virtualSize,
      dirty: false,
      snapshots: [],
      specific: { type: "vmdk", data },
    };
    // QEMU gives a cluster size when every extent is of the first's kind
    // (flat, or sparse with its compression and grain size) and that kind
    // is sparse.
    if (
      first?.kind === "sparse" && init.extents.every((e) => sameKind(first, e))
    ) d.clusterSize = first.sparse.grainSize;
    if (init.parentHint !== undefined) {
      d.backingFile = init.parentHint;
      d.backingFormat = "vmdk";
    }
    return Promise.resolve(d);
  }

  /**
   * QEMU's check of the extents (see {@linkcode checkVmdk}).
   *
   * @returns What it found.
   */
  check(): Promise<FormatCheck> {
    return checkVmdk(this.#init.extents);
  }

  /**
   * Closes the extent files, the parent chain, and the image file when
   * the image owns it.
   *
   * @returns When closed.
   */
  async close(): Promise<void> {
    const init = this.#init;
    for (const e of init.extents) if (e.kind === "flat") e.holes.close();
    for (const s of init.owned) if (s !== init.source) await s.close?.();
    await this.backing?.close();
    if (init.ownsSource) await init.source.close?.();
  }

  /** Same as {@linkcode VmdkImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Whether two extents are of one kind, as QEMU's `vmdk_get_info` asks. */
function sameKind(a: VmdkExtent, b: VmdkExtent): boolean {
  if (a.kind === "flat" || b.kind === "flat") return a.kind === b.kind;
  return a.sparse.header.compressed === b.sparse.header.compressed &&
    a.sparse.grainSize === b.sparse.grainSize;
}
