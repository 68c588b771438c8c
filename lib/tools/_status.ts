// Block status as QEMU 7.2 computes it (qcow2_co_block_status(), the
// generic bdrv_co_block_status() and qemu-img's get_block_status()): for
// each guest range, the chain depth that answers, whether it is allocated
// ("present"), reads as zeros, holds data, and where (host offset, file).
// `qemu-img map` prints these runs merged; `qemu-img compare` decides from
// them which ranges to read.

import { hex, Qcow2Error } from "../format/errors.ts";
import { decodeL1Entry } from "../format/l1.ts";
import {
  decodeL2Entry,
  type L2Entry,
  type L2Layout,
  type SubclusterType,
  subclusterType,
} from "../format/l2.ts";
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

interface RawRun {
  start: number;
  length: number;
  type: Exclude<SubclusterType, "invalid">;
  /** Host offset of `start` (offset-carrying types). */
  host?: number;
}

function corrupt(layer: Qcow2Layer, what: string): Qcow2Error {
  return new Qcow2Error(
    "CORRUPT",
    `Cannot read block status of ${layer.name}: ${what}`,
  );
}

/** Types whose runs carry a host offset. */
function carriesOffset(type: SubclusterType): boolean {
  return type === "normal" || type === "zero-alloc" ||
    type === "unallocated-alloc";
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
  const layout = {
    clusterBits: layer.geometry.clusterBits,
    extendedL2,
    dataFile,
  };
  const span = cs * l2Entries;
  let pos = start;
  let run: RawRun | undefined;
  while (pos < end) {
    const l1Index = Math.floor(pos / span);
    const tableEnd = Math.min(end, (l1Index + 1) * span);
    if (run) yield run; // runs never cross an L2 table
    run = undefined;
    const l2Offset = l1Index < layer.header.l1Size
      ? decodeL1Entry(layer.l1, l1Index).l2Offset
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
    while (pos < tableEnd) {
      const c = Math.floor(pos / cs);
      const index = c % l2Entries;
      const clusterStart = c * cs;
      const clusterEnd = Math.min(tableEnd, clusterStart + cs);
      const where = `(L2 offset: ${hex(l2Offset)}, L2 index: ${hex(index)})`;
      const entry = decodeStatusEntry(table, index, layout);
      if (entry.type === "compressed") {
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
      const typeOf = (sc: number) => subclusterType(entry, sc, extendedL2);
      const firstSc = extendedL2
        ? Math.floor((pos - clusterStart) / subclusterSize)
        : 0;
      const firstType = typeOf(firstSc);
      if (firstType === "invalid") {
        throw corrupt(layer, `Invalid cluster entry found ${where}`);
      }
      const withOffset = carriesOffset(firstType);
      const hostCluster = entry.hostOffset;
      if (withOffset) {
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
      const host = withOffset ? hostCluster + (pos - clusterStart) : undefined;
      const continues = run !== undefined && run.type === firstType &&
        pos === clusterStart &&
        (!withOffset || run.host! + run.length === host);
      if (continues) {
        run!.length += scEnd - pos;
      } else {
        if (run) yield run;
        run = { start: pos, length: scEnd - pos, type: firstType };
        if (withOffset) run.host = host;
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

/**
 * An L2 entry for block status: a compressed entry whose offset is past
 * what a number holds is still a compressed cluster here (its offset is
 * never reported).
 */
function decodeStatusEntry(
  table: Uint8Array,
  index: number,
  layout: L2Layout,
): L2Entry {
  try {
    return decodeL2Entry(table, index, layout);
  } catch (err) {
    if (!(err instanceof Qcow2Error) || err.code !== "OUT_OF_RANGE") throw err;
    return {
      type: "compressed",
      hostOffset: 0,
      copied: false,
      reserved: false,
      allocMask: 0,
      zeroMask: 0,
    };
  }
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
          const st = await Deno.stat(layer.source.path);
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
        ? this.#probe(layer.source.path)
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
    const size = layer.dataFilePath === undefined
      ? layer.source.size
      : await this.#fileSize(layer.dataFilePath) ?? 0;
    const probe = this.#probe(
      layer.dataFilePath ??
        (layer.source instanceof FileSource ? layer.source.path : layer.name),
    );
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
