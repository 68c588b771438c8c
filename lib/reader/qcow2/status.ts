/**
 * The block status of a qcow2 image itself, as QEMU 7.2's
 * `qcow2_co_block_status()` reports it: the lookup's runs, with host
 * offsets where QEMU gives them, and the data clusters of an image with
 * preallocated metadata split by the holes of the file that holds them
 * (QEMU asks the file there). Whoever walks the chain (`map`, `compare`)
 * descends into the backing image where a run is not allocated.
 *
 * @module
 */

import type { Geometry } from "../../format/geometry.ts";
import type { Qcow2Header } from "../../format/header.ts";
import { rawVirtualSize } from "../../format/geometry.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type { BlockStatus, BlockStatusOptions } from "../image.ts";
import type { OpenedDataFile } from "../image_type.ts";
import { allocatedSize, fileStatus, SourceHoles } from "../_file_status.ts";
import type { Mapping, Qcow2Mapping } from "./mapping.ts";
import { RefblockError, StoredRefcounts } from "./refcounts.ts";

/** What the status of a qcow2 image is computed from. */
export interface Qcow2StatusInit {
  /** The image's name: the file of offsets without a data file. */
  name: string;
  /** The image file. */
  source: RandomAccessSource;
  /** The external data file, when there is one. */
  dataFile: OpenedDataFile | undefined;
  geometry: Geometry;
  header: Qcow2Header;
  /** Host offsets of encrypted images are not reported. */
  encrypted: boolean;
  /** The image's lookup. */
  mapping: Qcow2Mapping;
}

/** The block status of one qcow2 image, with what it learns on the way. */
export class Qcow2Status {
  readonly #in: Qcow2StatusInit;
  /** Holes of the file holding the data (the data file, or the image). */
  readonly #holes: SourceHoles;
  #preallocated: Promise<boolean> | undefined;

  constructor(init: Qcow2StatusInit) {
    this.#in = init;
    this.#holes = new SourceHoles(init.dataFile?.source ?? init.source);
  }

  /**
   * The runs of `[offset, offset + length)`, in order.
   *
   * @param offset Guest offset.
   * @param length Bytes to cover.
   * @param options Whether to ask the file system for holes.
   * @returns The runs.
   */
  async *runs(
    offset: number,
    length: number,
    options: BlockStatusOptions,
  ): AsyncGenerator<BlockStatus> {
    const file = this.#in.dataFile?.name ?? this.#in.name;
    for await (const m of this.#in.mapping.mappings(offset, length)) {
      const withOffset = m.hostOffset !== undefined && !this.#in.encrypted;
      const at = withOffset ? { hostOffset: m.hostOffset, file } : {};
      const run = { offset: m.offset, length: m.length };
      switch (m.type) {
        case "compressed":
          yield {
            ...run,
            allocated: true,
            zero: false,
            data: true,
            compressed: true,
          };
          continue;
        case "zero-plain":
        case "zero-alloc":
          yield { ...run, ...at, allocated: true, zero: true, data: false };
          continue;
        case "normal":
          if (withOffset && await this.#metadataPreallocated(options)) {
            yield* this.#splitByHoles(m, file);
          } else {
            yield { ...run, ...at, allocated: true, zero: false, data: true };
          }
          continue;
        default:
          yield { ...run, ...at, allocated: false, zero: true, data: false };
      }
    }
  }

  /** A run of data clusters, split by the holes of the file holding them. */
  async *#splitByHoles(m: Mapping, file: string): AsyncGenerator<BlockStatus> {
    const holder = this.#in.dataFile?.source ?? this.#in.source;
    const size = rawVirtualSize(holder.size);
    const probe = this.#holes.probe;
    let done = 0;
    while (done < m.length) {
      const host = m.hostOffset! + done;
      const st = fileStatus(probe, size, host, m.length - done);
      let n = m.length - done;
      let zero = false;
      if (st.eof && (st.length === 0 || st.zero)) zero = true;
      else {
        n = st.length;
        zero = st.zero;
      }
      yield {
        offset: m.offset + done,
        length: n,
        allocated: true,
        zero,
        data: true,
        hostOffset: host,
        file,
      };
      done += n;
    }
  }

  /**
   * QEMU's qcow2_detect_metadata_preallocation(): whether the file
   * allocates notably more clusters than it has refcounts for, in which
   * case QEMU asks the file where its data clusters have holes. Only local
   * files, and only when holes are asked for.
   */
  #metadataPreallocated(options: BlockStatusOptions): Promise<boolean> {
    if (!options.holes) return Promise.resolve(false);
    this.#preallocated ??= this.#detectPreallocation();
    return this.#preallocated;
  }

  async #detectPreallocation(): Promise<boolean> {
    const { source, header, geometry } = this.#in;
    const allocated = await allocatedSize(source);
    if (allocated === undefined) return false;
    const cs = geometry.clusterSize;
    const real = Math.floor(allocated / cs);
    const threshold = Math.max(Math.floor(real * 10 / 9), real + 2);
    const end = Math.ceil(source.size / cs);
    const refcounts = await StoredRefcounts.load(source, header);
    try {
      return await refcounts.countAllocated(end, threshold) >= threshold;
    } catch (err) {
      if (err instanceof RefblockError) return false;
      throw err;
    }
  }

  /** Releases the hole probe. */
  close(): void {
    this.#holes.close();
  }
}
