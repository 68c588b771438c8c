// What the partition-table and filesystem modules read through, and how
// they say no. Private to lib/sparsify.

/**
 * A reason to leave a partition (or the whole disk) exactly as it is: the
 * metadata is damaged, unusual or out of reach. The message is the reason,
 * a phrase such as `not cleanly unmounted (s_state 0x0000)`.
 */
export class Refusal extends Error {
  /** What the region holds, when the refusing module knows (`ext3`). */
  found?: string;

  /**
   * Creates the refusal.
   *
   * @param reason Why the region is left as it is.
   * @param options What the region holds.
   */
  constructor(reason: string, options: { found?: string } = {}) {
    super(reason);
    this.name = "Refusal";
    this.found = options.found;
  }
}

/**
 * Disk bytes for the analysis. `read` returns fewer bytes than asked only
 * at the end of the disk, and throws a {@linkcode Refusal} when the bytes
 * cannot be had (a stream that has already passed them).
 */
export interface DiskReader {
  /** Disk size in bytes, when known (a pipe may not say). */
  readonly size: number | undefined;
  /**
   * Reads `length` bytes at `offset`. `once` says the bytes are used only
   * while the analysis runs (inode tables, tree blocks): a stream need not
   * keep them for listing the free ranges.
   */
  read(offset: number, length: number, once?: boolean): Promise<Uint8Array>;
  /**
   * Reads `into.length` bytes at `offset` into a buffer the caller reuses
   * (read `once`), when the disk can; returns the bytes read.
   */
  readInto?(offset: number, into: Uint8Array): Promise<number>;
}

/** Hexadecimal for messages (`0x1f`): the format module's one formatter. */
export { hex } from "../format/errors.ts";

/**
 * A partition (or a whole bare disk) seen from its first byte: reads are
 * relative to the region and must lie inside it and be complete, or the
 * region is refused as truncated.
 */
export class RegionReader {
  readonly #disk: DiskReader;
  /** Offset of the region on the disk. */
  readonly offset: number;
  /** Length of the region, when known. */
  readonly length: number | undefined;

  /**
   * Views part of a disk.
   *
   * @param disk The disk.
   * @param offset Where the region starts.
   * @param length Its length, when known.
   */
  constructor(disk: DiskReader, offset: number, length: number | undefined) {
    this.#disk = disk;
    this.offset = offset;
    this.length = length;
  }

  /**
   * Reads exactly `length` bytes at region offset `at`.
   *
   * @param at Offset inside the region.
   * @param length Bytes wanted.
   * @param what What is read, for the refusal message (`block bitmap of group 3`).
   * @param once Whether the bytes are needed only during the analysis
   * (see {@linkcode DiskReader.read}).
   * @returns The bytes.
   * @throws {Refusal} When the bytes lie past the end of the region or the disk.
   */
  async read(
    at: number,
    length: number,
    what: string,
    once = false,
  ): Promise<Uint8Array> {
    this.#check(at, length, what);
    const bytes = await this.#disk.read(this.offset + at, length, once);
    if (bytes.length < length) throw this.#short(at, what);
    return bytes;
  }

  /**
   * Reads exactly `into.length` bytes at region offset `at` into a buffer
   * the caller reuses, for bytes needed only during the analysis.
   *
   * @param at Offset inside the region.
   * @param into Where the bytes go.
   * @param what What is read, for the refusal message.
   * @returns `into`.
   * @throws {Refusal} When the bytes lie past the end of the region or the disk.
   */
  async readInto(
    at: number,
    into: Uint8Array,
    what: string,
  ): Promise<Uint8Array> {
    if (!this.#disk.readInto) {
      into.set(await this.read(at, into.length, what, true));
      return into;
    }
    this.#check(at, into.length, what);
    const n = await this.#disk.readInto(this.offset + at, into);
    if (n < into.length) throw this.#short(at, what);
    return into;
  }

  #check(at: number, length: number, what: string): void {
    if (!Number.isSafeInteger(at) || at < 0) {
      throw new Refusal(`${what} at byte ${at} is out of range`);
    }
    if (this.length !== undefined && at + length > this.length) {
      throw new Refusal(
        `${what} at byte ${at} lies past the end of the region (${this.length} bytes): truncated`,
      );
    }
  }

  #short(at: number, what: string): Refusal {
    return new Refusal(
      `${what} at byte ${at} lies past the end of the disk: truncated`,
    );
  }

  /**
   * Reads up to `length` bytes from the start of the region (fewer when the
   * region or the disk is shorter): the bytes signatures are looked for in.
   *
   * @param length Bytes wanted.
   * @returns The bytes there are.
   */
  async head(length: number): Promise<Uint8Array> {
    const want = this.length === undefined
      ? length
      : Math.min(length, this.length);
    return await this.#disk.read(this.offset, want);
  }
}

/** A partition as a table describes it. */
export interface Partition {
  /** Number as Linux gives it: 1-4 primary (or GPT entry + 1), 5+ logical. */
  number: number;
  /** Disk offset in bytes. */
  offset: number;
  /** Length in bytes. */
  length: number;
  /** The type as the table names it. */
  type: string;
  /**
   * What the table's type declares: `swap` for Linux swap (MBR 0x82, GPT
   * 0657FD6D-A4AB-43C4-84E5-0933C84B4F4F), `other` for any other type.
   * Absent on a bare disk, where there is no type to consult.
   */
  typeKind?: "swap" | "other";
}

/** What a partition table reader finds. */
export interface TableLayout {
  /** The partitions, in table order. */
  partitions: Partition[];
  /** Byte ranges holding the table itself, which no partition may cover. */
  table: Array<{ offset: number; length: number }>;
  /** Why some partitions could not be listed (their bytes are copied as they are). */
  incomplete?: string;
}
