/**
 * What a disk image format implements to be read: one {@linkcode ImageType}
 * per format, registered by name in `formats.ts`. Opening, `info`, `map`
 * and `compare` dispatch through it, so a new format is one folder that
 * implements it and one line in the registry.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "./image.ts";

/**
 * What an image is opened for, which decides how strictly its metadata is
 * read and which files it leads to:
 *
 * - `read`: its guest bytes are read (`openImage`, convert, compare):
 *   metadata that cannot be read right is refused at open where it can
 *   be; backing and data files are opened
 * - `inspect`: a read-only inspection as QEMU makes it (`map`):
 *   the header as QEMU inspects it (the corrupt bit and encryption are
 *   accepted), tables as QEMU reads them (zero-filled past the end of the
 *   file); backing and data files are opened
 * - `describe`: `info` and `check`: the image's own metadata, its header
 *   as QEMU inspects it; no data file is followed (a VMDK's extents are:
 *   they are part of the image), backing files only when the chain is
 *   described (`info --backing-chain`)
 */
export type OpenPurpose = "read" | "inspect" | "describe";

/**
 * An external data file as the walk let it be followed: its name and,
 * unless the image is only described, the opened file.
 */
export interface OpenedDataFile {
  /** The name resolved as QEMU resolves it (what qemu-img prints). */
  name: string;
  /** The file, opened; undefined when the image is only described. */
  source: RandomAccessSource | undefined;
}

/**
 * What an {@linkcode ImageType} is given to open one image of a chain: what
 * the image is opened for, what to call it, and the chain walk, which
 * alone follows the files the image names (through the reference gate, with
 * its trust rule, loop detection and depth limit).
 */
export interface OpenContext {
  /** What the image is opened for. */
  readonly purpose: OpenPurpose;
  /** What to call the image in messages and reports. */
  readonly name: string;
  /** Its depth in the chain: 0 is the top image. */
  readonly depth: number;
  /** Whether closing the image closes its source (only when the walk opened it). */
  readonly ownsSource: boolean;
  /** The internal snapshot to read instead of the active state (top image only). */
  readonly snapshot: string | undefined;
  /** Cache budget for the image's tables, in bytes. */
  readonly cacheBytes: number;
  /**
   * Opened for `check` (QEMU's `BDRV_O_CHECK`): table entries that would
   * refuse the image at open (a VHDX block past the end of the file) are
   * left for the format's check to report.
   * @default {false}
   */
  readonly check?: boolean;
  /**
   * Opens the backing image the image names, of the format it names (or,
   * when it names none, the format its first bytes show).
   *
   * @param stored The name stored in the image.
   * @param format The backing format the image names, if any.
   * @returns The backing image (closed with the image), or undefined when
   * the walk does not follow backing files (`info` without
   * `--backing-chain`).
   * @throws {Qcow2Error} When the file may not be followed, cannot be
   * opened or read, or the chain loops or is too deep.
   */
  backing(
    stored: string,
    format: string | undefined,
  ): Promise<GuestImage | undefined>;
  /**
   * Decides, and unless the image is only described opens, the external
   * data file the image names.
   *
   * @param stored The name stored in the image.
   * @param always Open it even when the image is only described: the file
   * is part of the image itself, as a VMDK extent is (QEMU opens those for
   * `info` and `check` too).
   * @returns The data file; its source is closed with the image.
   * @throws {Qcow2Error} When the file may not be followed or cannot be
   * opened.
   */
  dataFile(stored: string, always?: boolean): Promise<OpenedDataFile>;
}

/**
 * A disk image format the reader opens: its name as qemu-img gives it
 * (`-f`, `backing_fmt`, and what `probeFormat` answers for its signature)
 * and how to open a file of it. What the tools need of an image (its block
 * status, its `info` section) is asked of the opened {@linkcode GuestImage}.
 */
export interface ImageType {
  /** The format's name: `qcow2`, `raw`. */
  readonly name: string;
  /**
   * Opens an image of this format from its file.
   *
   * @param source The image file.
   * @param context What it is opened for; the walk that follows its files.
   * @returns The image.
   * @throws {Qcow2Error} When the image is malformed or unsupported.
   */
  open(source: RandomAccessSource, context: OpenContext): Promise<GuestImage>;
}
