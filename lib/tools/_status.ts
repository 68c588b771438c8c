// Block status as QEMU 7.2 computes it (qcow2_co_block_status(), the
// generic bdrv_co_block_status() and qemu-img's get_block_status()): for
// each guest range, the chain depth that answers, whether it is allocated
// ("present"), reads as zeros, holds data, and where (host offset, file).
// `qemu-img map` prints these runs merged; `qemu-img compare` decides from
// them which ranges to read.

import { hex, Qcow2Error } from "../format/errors.ts";
import { FileSource } from "../io/file_source.ts";
import {
  fileStatus,
  type HoleProbe,
  type HoleProber,
  openHoleProber,
} from "../io/_holes.ts";
import { type Layer, type Qcow2Layer, RefblockError } from "./_layers.ts";
import { readPadded } from "../reader/_read.ts";
import { rawVirtualSize } from "../format/geometry.ts";
import type { MapEntry } from "./map.ts";

/**
 * One run of guest bytes with one block status: a map entry (field by field
 * what QEMU's block status reports), plus what `compare` needs.
 */
export interface StatusRun extends MapEntry {
  /**
   * Unallocated past the end of a shorter backing image: zeros that
   * bdrv_block_status_above() (used by `qemu-img compare`) calls allocated.
   */
  pastBacking?: boolean;
}

/** QEMU's subcluster types. */
type SubclusterType =
  | "normal"
  | "compressed"
  | "zero-plain"
  | "zero-alloc"
  | "unallocated-plain"
  | "unallocated-alloc";

interface RawRun {
  start: number;
  length: number;
  type: SubclusterType;
  /** Host offset of `start` (offset-carrying types). */
  host?: number;
}

const L1_OFFSET_HI = 0x00ffffff;
const OFFSET_LO = 0xfffffe00;

function corrupt(layer: Qcow2Layer, what: string): Qcow2Error {
  return new Qcow2Error(
    "CORRUPT",
    `Cannot read block status of ${layer.name}: ${what}`,
  );
}

/**
 * The runs of one qcow2 image over `[start, end)`, split as
 * qcow2_get_host_offset() splits them: at L2 table boundaries, at type
 * changes, where host offsets stop being contiguous, and one cluster at a
 * time for compressed clusters.
 */
async function* qcow2Runs(
  layer: Qcow2Layer,
  start: number,
  end: number,
): AsyncGenerator<RawRun> {
  const { clusterSize: cs, l2Entries, extendedL2, subclusterSize, dataFile } =
    layer.geometry;
  const entrySize = extendedL2 ? 16 : 8;
  const span = cs * l2Entries;
  const l1View = new DataView(
    layer.l1.buffer,
    layer.l1.byteOffset,
    layer.l1.byteLength,
  );
  let pos = start;
  let run: RawRun | undefined;
  while (pos < end) {
    const l1Index = Math.floor(pos / span);
    const tableEnd = Math.min(end, (l1Index + 1) * span);
    if (run) yield run; // runs never cross an L2 table
    run = undefined;
    const l2Offset = l1Index < layer.header.l1Size
      ? (l1View.getUint32(l1Index * 8) & L1_OFFSET_HI) * 0x1_0000_0000 +
        ((l1View.getUint32(l1Index * 8 + 4) & OFFSET_LO) >>> 0)
      : 0;
    if (l2Offset === 0) {
      yield { start: pos, length: tableEnd - pos, type: "unallocated-plain" };
      pos = tableEnd;
      continue;
    }
    if (l2Offset % cs !== 0) {
      throw corrupt(
        layer,
        `L2 table offset ${hex(l2Offset)} unaligned (L1 index: ${
          hex(l1Index)
        })`,
      );
    }
    const table = await readPadded(layer.source, l2Offset, cs);
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    while (pos < tableEnd) {
      const c = Math.floor(pos / cs);
      const index = c % l2Entries;
      const at = index * entrySize;
      const hi = view.getUint32(at);
      const lo = view.getUint32(at + 4);
      const zeroBits = extendedL2 ? view.getUint32(at + 8) : 0;
      const allocBits = extendedL2 ? view.getUint32(at + 12) : 0;
      const clusterStart = c * cs;
      const clusterEnd = Math.min(tableEnd, clusterStart + cs);
      const hostCluster = (hi & L1_OFFSET_HI) * 0x1_0000_0000 +
        ((lo & OFFSET_LO) >>> 0);
      const where = `(L2 offset: ${hex(l2Offset)}, L2 index: ${hex(index)})`;
      if ((hi & 0x40000000) !== 0) {
        if (dataFile) {
          throw corrupt(
            layer,
            `Compressed cluster entry found in image with external data file ${where}`,
          );
        }
        if (run) yield run;
        run = undefined;
        yield { start: pos, length: clusterEnd - pos, type: "compressed" };
        pos = clusterEnd;
        continue;
      }
      // QEMU's qcow2_get_cluster_type().
      const copied = (hi & 0x80000000) !== 0;
      let clusterType: "zero-plain" | "zero-alloc" | "normal" | "unallocated";
      if ((lo & 1) !== 0 && !extendedL2) {
        clusterType = hostCluster !== 0 ? "zero-alloc" : "zero-plain";
      } else if (hostCluster === 0 && !(dataFile && copied)) {
        clusterType = "unallocated";
      } else {
        clusterType = "normal";
      }
      const typeOf = (sc: number): SubclusterType | "invalid" => {
        if (!extendedL2) {
          return clusterType === "unallocated"
            ? "unallocated-plain"
            : clusterType;
        }
        const bit = 2 ** sc;
        const has = (mask: number) => Math.floor(mask / bit) % 2 === 1;
        if (clusterType === "normal") {
          if ((zeroBits & allocBits) !== 0) return "invalid";
          if (has(zeroBits)) return "zero-alloc";
          return has(allocBits) ? "normal" : "unallocated-alloc";
        }
        if (allocBits !== 0) return "invalid";
        return has(zeroBits) ? "zero-plain" : "unallocated-plain";
      };
      const firstSc = extendedL2
        ? Math.floor((pos - clusterStart) / subclusterSize)
        : 0;
      const firstType = typeOf(firstSc);
      if (firstType === "invalid") {
        throw corrupt(layer, `Invalid cluster entry found ${where}`);
      }
      const carriesOffset = firstType === "normal" ||
        firstType === "zero-alloc" ||
        firstType === "unallocated-alloc";
      if (carriesOffset) {
        if (hostCluster % cs !== 0) {
          throw corrupt(
            layer,
            `Cluster allocation offset ${hex(hostCluster)} unaligned ${where}`,
          );
        }
        if (dataFile && hostCluster !== clusterStart) {
          throw corrupt(
            layer,
            `External data file host cluster offset ${
              hex(hostCluster)
            } does not match guest cluster offset: ${
              hex(clusterStart)
            }, L2 index: ${hex(index)})`,
          );
        }
      }
      // Walk the subclusters of this cluster with the same type.
      let scEnd = clusterEnd;
      if (extendedL2) {
        const lastSc = Math.ceil((clusterEnd - clusterStart) / subclusterSize);
        let sc = firstSc + 1;
        while (sc < lastSc && typeOf(sc) === firstType) sc++;
        scEnd = Math.min(clusterEnd, clusterStart + sc * subclusterSize);
      }
      const host = carriesOffset
        ? hostCluster + (pos - clusterStart)
        : undefined;
      const continues = run !== undefined && run.type === firstType &&
        pos === clusterStart &&
        (!carriesOffset || run.host! + run.length === host);
      if (continues) {
        run!.length += scEnd - pos;
      } else {
        if (run) yield run;
        run = { start: pos, length: scEnd - pos, type: firstType };
        if (carriesOffset) run.host = host;
      }
      if (scEnd < clusterStart + cs) {
        // A type change inside the cluster (or the end) ends the run.
        yield run!;
        run = undefined;
      }
      pos = scEnd;
    }
  }
  if (run) yield run;
}

/** Shared state of one status walk: hole probes and cached heuristics. */
export class StatusWalker implements Disposable {
  readonly #prober: HoleProber | undefined;
  readonly #probes = new Map<string, HoleProbe | undefined>();
  readonly #prealloc = new Map<Qcow2Layer, Promise<boolean>>();
  readonly #sizes = new Map<string, Promise<number | undefined>>();

  /**
   * @param holes Whether to ask the file system where local files have
   * holes (QEMU does; needs FFI). Without it every byte of a file is data.
   */
  constructor(holes = true) {
    this.#prober = holes ? openHoleProber() : undefined;
  }

  #probe(name: string): HoleProbe | undefined {
    if (!this.#probes.has(name)) {
      this.#probes.set(name, this.#prober?.open(name));
    }
    return this.#probes.get(name);
  }

  #fileSize(name: string): Promise<number | undefined> {
    let size = this.#sizes.get(name);
    if (!size) {
      size = Deno.stat(name).then((s) => s.size, () => undefined);
      this.#sizes.set(name, size);
    }
    return size;
  }

  /** QEMU's qcow2_detect_metadata_preallocation() for a layer. */
  #metadataPreallocated(layer: Qcow2Layer): Promise<boolean> {
    let result = this.#prealloc.get(layer);
    if (!result) {
      result = (async () => {
        if (
          !(layer.source instanceof FileSource) || this.#prober === undefined
        ) return false;
        let allocated: number;
        try {
          const st = await Deno.stat(layer.name);
          if (st.blocks === null) return false;
          allocated = st.blocks * 512;
        } catch {
          return false;
        }
        const cs = layer.geometry.clusterSize;
        const real = Math.floor(allocated / cs);
        const threshold = Math.max(Math.floor(real * 10 / 9), real + 2);
        const end = Math.ceil(layer.source.size / cs);
        try {
          return await layer.refcounts.countAllocated(end, threshold) >=
            threshold;
        } catch (err) {
          if (err instanceof RefblockError) return false;
          throw err;
        }
      })();
      this.#prealloc.set(layer, result);
    }
    return result;
  }

  /**
   * The status runs of `[start, start + length)` of a chain, deepest
   * answers resolved, in order (not merged).
   */
  async *runs(
    layer: Layer,
    start: number,
    length: number,
    depth = 0,
  ): AsyncGenerator<StatusRun> {
    const end = start + length;
    if (layer.format === "raw") {
      const probe = layer.source instanceof FileSource
        ? this.#probe(layer.name)
        : undefined;
      let pos = start;
      while (pos < end) {
        const st = fileStatus(probe, layer.virtualSize, pos, end - pos);
        if (st.length === 0) break;
        yield {
          start: pos,
          length: st.length,
          depth,
          present: true,
          zero: st.zero,
          data: !st.zero,
          offset: pos,
          file: layer.name,
        };
        pos += st.length;
      }
      return;
    }
    const offsetFile = layer.dataFileName ?? layer.name;
    for await (const r of qcow2Runs(layer, start, end)) {
      const withOffset = r.host !== undefined && !layer.encrypted;
      const base = {
        depth,
        ...(withOffset ? { offset: r.host, file: offsetFile } : {}),
      };
      switch (r.type) {
        case "compressed":
          yield {
            start: r.start,
            length: r.length,
            depth,
            present: true,
            zero: false,
            data: true,
            compressed: true,
          };
          continue;
        case "zero-plain":
        case "zero-alloc":
          yield {
            start: r.start,
            length: r.length,
            ...base,
            present: true,
            zero: true,
            data: false,
          };
          continue;
        case "normal":
          yield* this.#normal(layer, r, withOffset, depth);
          continue;
      }
      // Unallocated here: the backing image answers, or zeros.
      const backing = layer.backing;
      const inside = backing
        ? Math.max(0, Math.min(r.length, backing.virtualSize - r.start))
        : 0;
      if (inside > 0) yield* this.runs(backing!, r.start, inside, depth + 1);
      if (inside < r.length) {
        const from = r.start + inside;
        const run: StatusRun = {
          start: from,
          length: r.length - inside,
          depth,
          present: false,
          zero: true,
          data: false,
        };
        if (backing) run.pastBacking = true;
        if (withOffset) {
          run.offset = r.host! + inside;
          run.file = offsetFile;
        }
        yield run;
      }
    }
  }

  /** A run of data clusters, split by holes of the file when QEMU recurses. */
  async *#normal(
    layer: Qcow2Layer,
    r: RawRun,
    withOffset: boolean,
    depth: number,
  ): AsyncGenerator<StatusRun> {
    const file = layer.dataFileName ?? layer.name;
    if (!withOffset || !(await this.#metadataPreallocated(layer))) {
      const run: StatusRun = {
        start: r.start,
        length: r.length,
        depth,
        present: true,
        zero: false,
        data: true,
      };
      if (withOffset) {
        run.offset = r.host;
        run.file = file;
      }
      yield run;
      return;
    }
    const size = layer.dataFileName === undefined
      ? layer.source.size
      : await this.#fileSize(layer.dataFileName) ?? 0;
    const probe = this.#probe(file);
    let done = 0;
    while (done < r.length) {
      const host = r.host! + done;
      const st = fileStatus(probe, rawVirtualSize(size), host, r.length - done);
      let n = r.length - done;
      let zero = false;
      if (st.eof && (st.length === 0 || st.zero)) zero = true;
      else {
        n = st.length;
        zero = st.zero;
      }
      yield {
        start: r.start + done,
        length: n,
        depth,
        present: true,
        zero,
        data: true,
        offset: host,
        file,
      };
      done += n;
    }
  }

  /** Closes hole probes and libc. */
  [Symbol.dispose](): void {
    for (const p of this.#probes.values()) p?.close();
    this.#probes.clear();
    this.#prober?.[Symbol.dispose]();
  }
}
