// Block status of the bytes of a local file, as QEMU's file-posix driver
// answers it: data and holes as the file system reports them (SEEK_DATA /
// SEEK_HOLE, asked through the runtime's file module), for raw images and
// the data clusters of preallocated qcow2 images.

import { type HostFiles, hostFiles } from "../io/host_files.ts";
import type { RandomAccessSource } from "../io/source.ts";

/** Data/hole queries on one open file (see `HostFiles.holeProbe`). */
export type HoleProbe = NonNullable<ReturnType<HostFiles["holeProbe"]>>;

/**
 * The hole probe of one source, opened on first use and closed with the
 * image that holds it; none for a source that is not a local file, or
 * where the system cannot tell.
 */
export class SourceHoles {
  readonly #source: RandomAccessSource;
  #probe: HoleProbe | undefined | null = null;

  constructor(source: RandomAccessSource) {
    this.#source = source;
  }

  /** The probe, or undefined when there is none. */
  get probe(): HoleProbe | undefined {
    if (this.#probe === null) {
      this.#probe = hostFiles()?.holeProbe(this.#source);
    }
    return this.#probe;
  }

  /** Releases the probe. */
  close(): void {
    this.#probe?.close();
    this.#probe = null;
  }
}

/**
 * Bytes a source occupies on disk, when it is a local file and the system
 * tells (QEMU's `bdrv_get_allocated_file_size()`); undefined otherwise.
 */
export function allocatedSize(
  source: RandomAccessSource,
): Promise<number | undefined> {
  return hostFiles()?.allocatedSize(source) ?? Promise.resolve(undefined);
}

/**
 * Block status of a byte range of a file, as QEMU's file-posix driver and
 * the generic block layer answer it (request alignment 1).
 */
export interface FileStatus {
  /** Reads as zeros (a hole, or past the end). */
  zero: boolean;
  /** Bytes with this status from the offset (0 past the end). */
  length: number;
  /** The range reaches the end of the file. */
  eof: boolean;
}

/**
 * QEMU's status of `[offset, offset + length)` of a file of `size` bytes
 * (its block-layer size: rounded up to 512).
 */
export function fileStatus(
  probe: HoleProbe | undefined,
  size: number,
  offset: number,
  length: number,
): FileStatus {
  if (offset >= size) return { zero: false, length: 0, eof: true };
  const bytes = Math.min(length, size - offset);
  let zero = false;
  let n = bytes;
  const found = probe?.find(offset);
  if (found === "enxio") {
    zero = true;
  } else if (found !== undefined) {
    if (found.data === offset) n = found.hole - offset;
    else {
      zero = true;
      n = found.data - offset;
    }
  }
  n = Math.min(n, bytes);
  return { zero, length: n, eof: offset + n === size };
}
