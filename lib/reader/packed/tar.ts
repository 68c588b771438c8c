/**
 * The one disk inside a tar archive, read forward from a stream: POSIX
 * ustar, GNU and pax headers (long names, pax `path` and `size`), and the
 * sparse members GNU tar writes with `-S` (old GNU `S` entries, as in
 * Google Compute Engine's `disk.raw` tarballs, and pax sparse format 1.0),
 * whose holes come out as zero runs. Nothing is extracted: the member's
 * bytes go to the caller, the others are skipped. Every header is checked
 * (checksum, numeric fields) and no allocation follows a size the archive
 * gives: bodies are streamed, metadata entries and sparse maps are capped.
 *
 * @module
 */

import { Qcow2Error, type Qcow2ErrorCode } from "../../format/errors.ts";
import type { ZeroBytes } from "../../bytes/zeros.ts";
import { BytesReader } from "./bytes_reader.ts";
import { TAR_BLOCK, tarChecksumOk, tarNumber } from "./magic.ts";

/** Most entries read before the disk is found or the archive ends. */
export const MAX_TAR_ENTRIES = 100_000;
/** Largest pax header or GNU long name body read, in bytes. */
export const MAX_TAR_META = 1 << 20;
/** Most regions in a sparse member's map. */
export const MAX_SPARSE_REGIONS = 1 << 20;
/** Largest piece of a body handed on at once, in bytes. */
const PIECE = 1 << 20;

/** Options of {@linkcode openTarDisk}. */
export interface TarDiskOptions {
  /** The member to read; default: the only disk in the archive. */
  disk?: string;
  /** What the archive is called, for messages. */
  name: string;
}

/** The disk found in an archive. */
export interface TarDisk {
  /** Its name in the archive. */
  member: string;
  /** Its size in bytes (a sparse member's full size). */
  size: number;
  /** Its bytes; a sparse member's holes are zero runs. */
  stream: ReadableStream<Uint8Array | ZeroBytes>;
}

/** One data region of a sparse member: where it goes and how long it is. */
interface Region {
  offset: number;
  length: number;
}

/** A member header, with the pax and GNU entries before it applied. */
interface Entry {
  name: string;
  /** `file`, `sparse` (old GNU), or the raw type flag of anything else. */
  kind: "file" | "sparse" | "other";
  /** Bytes it takes in the archive (padded to 512 when skipped). */
  stored: number;
  /** Bytes of the file. */
  size: number;
  /** Old GNU sparse map (kind `sparse`). */
  regions?: Region[];
  /** pax sparse format 1.0: the map is at the start of the data. */
  paxSparse?: boolean;
  /** Where its header was, in the archive. */
  at: number;
}

/**
 * A member name for a message: quoted, as it is (whoever shows the message
 * shows it with `printable()` of lib/format/errors.ts), its first 200
 * characters only.
 */
export function quoteName(name: string): string {
  const short = name.length > 200 ? `${name.slice(0, 200)}...` : name;
  return `"${short}"`;
}

/** Names that OVA packages hold beside their disks. */
const NOT_A_DISK = /\.(ovf|mf|cert)$/i;

/** A name as a user would type it: without leading `./`. */
function plainName(name: string): string {
  let n = name;
  while (n.startsWith("./")) n = n.slice(2);
  return n;
}

/** Reads member headers forward, applying pax and GNU long-name entries. */
class TarWalker {
  readonly input: BytesReader;
  readonly name: string;
  entries = 0;

  constructor(input: BytesReader, name: string) {
    this.input = input;
    this.name = name;
  }

  fail(
    code: Qcow2ErrorCode,
    reason: string,
    offset = this.input.position,
  ): Qcow2Error {
    return new Qcow2Error(
      code,
      `Cannot read tar archive ${this.name}: ${reason} (at offset ${offset})`,
      { offset },
    );
  }

  /** The next member, or undefined at the end of the archive. */
  async next(): Promise<Entry | undefined> {
    let longName: string | undefined;
    let pax: Map<string, string> | undefined;
    for (;;) {
      if (++this.entries > MAX_TAR_ENTRIES) {
        throw this.fail(
          "OUT_OF_RANGE",
          `more than ${MAX_TAR_ENTRIES} entries before the disk`,
        );
      }
      const at = this.input.position;
      const block = await this.input.exactly(TAR_BLOCK);
      if (block.length === 0) return undefined;
      if (block.length < TAR_BLOCK) {
        throw this.fail("TRUNCATED", "it ends inside a header", at);
      }
      if (block.every((b) => b === 0)) return undefined;
      if (!tarChecksumOk(block)) {
        throw this.fail("CORRUPT", "a header's checksum does not match", at);
      }
      const flag = String.fromCharCode(block[156]);
      const size = this.number(block, 124, 12, "size", at);
      if (flag === "x" || flag === "g" || flag === "L" || flag === "K") {
        const body = await this.meta(size, at);
        if (flag === "L") longName = cString(body);
        if (flag === "x") {
          pax = parsePax(body, (r) => this.fail("CORRUPT", r, at));
        }
        continue;
      }
      const entry: Entry = {
        name: longName ?? pax?.get("path") ?? headerName(block),
        kind: flag === "0" || flag === "\0" || flag === "7"
          ? "file"
          : flag === "S"
          ? "sparse"
          : "other",
        stored: flag === "1" || flag === "2" ? 0 : size,
        size,
        at,
      };
      const paxSize = pax?.get("size");
      if (paxSize !== undefined && entry.kind !== "other") {
        entry.stored = entry.size = this.decimal(paxSize, "pax size", at);
      }
      if (entry.kind === "sparse") await this.oldGnuSparse(block, entry);
      else if (
        pax && [...pax.keys()].some((k) => k.startsWith("GNU.sparse."))
      ) {
        this.paxSparse(pax, entry);
      }
      return entry;
    }
  }

  /** A numeric header field, or a one-line error naming it. */
  number(
    block: Uint8Array,
    offset: number,
    length: number,
    field: string,
    at: number,
  ): number {
    const value = tarNumber(block, offset, length);
    if (value === undefined) {
      const text = String.fromCharCode(
        ...block.subarray(offset, offset + length),
      );
      throw this.fail(
        "CORRUPT",
        `the ${field} field "${text}" is not a number`,
        at,
      );
    }
    return value;
  }

  decimal(text: string, field: string, at: number): number {
    const value = /^\d{1,16}$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(value)) {
      throw this.fail(
        "CORRUPT",
        `the ${field} "${text.slice(0, 40)}" is not a number`,
        at,
      );
    }
    return value;
  }

  /** The body of a metadata entry, capped, and its padding. */
  async meta(size: number, at: number): Promise<Uint8Array> {
    if (size > MAX_TAR_META) {
      throw this.fail(
        "OUT_OF_RANGE",
        `a metadata entry of ${size} bytes is larger than ${MAX_TAR_META}`,
        at,
      );
    }
    const body = await this.input.exactly(size);
    if (body.length < size) {
      throw this.fail("TRUNCATED", "it ends inside a metadata entry", at);
    }
    await this.skipPadding(size);
    return body;
  }

  async skipPadding(size: number): Promise<void> {
    await this.input.skip(-size & (TAR_BLOCK - 1));
  }

  /** Reads an old GNU sparse map: the header's four, then extension blocks. */
  async oldGnuSparse(block: Uint8Array, entry: Entry): Promise<void> {
    const regions: Region[] = [];
    const take = (b: Uint8Array, offset: number, count: number, at: number) => {
      for (let i = 0; i < count; i++) {
        const o = offset + i * 24;
        if (b[o] === 0) return;
        if (regions.length >= MAX_SPARSE_REGIONS) {
          throw this.fail(
            "OUT_OF_RANGE",
            `the sparse map of ${
              quoteName(entry.name)
            } has more than ${MAX_SPARSE_REGIONS} regions`,
            at,
          );
        }
        regions.push({
          offset: this.number(b, o, 12, "sparse offset", at),
          length: this.number(b, o + 12, 12, "sparse numbytes", at),
        });
      }
    };
    take(block, 386, 4, entry.at);
    entry.size = this.number(block, 483, 12, "realsize", entry.at);
    let extended = block[482] !== 0;
    while (extended) {
      const at = this.input.position;
      const ext = await this.input.exactly(TAR_BLOCK);
      if (ext.length < TAR_BLOCK) {
        throw this.fail("TRUNCATED", "it ends inside a sparse map", at);
      }
      take(ext, 0, 21, at);
      extended = ext[504] !== 0;
    }
    entry.regions = this.checkRegions(regions, entry);
  }

  /** pax sparse members: format 1.0 is read, the older ones refused. */
  paxSparse(pax: Map<string, string>, entry: Entry): void {
    const version = `${pax.get("GNU.sparse.major") ?? "0"}.${
      pax.get("GNU.sparse.minor") ?? "0"
    }`;
    if (version !== "1.0") {
      throw this.fail(
        "UNSUPPORTED_FEATURE",
        `the sparse member ${
          quoteName(entry.name)
        } is in pax sparse format ${version}, which is not read (1.0 and old GNU are)`,
        entry.at,
      );
    }
    const name = pax.get("GNU.sparse.name");
    if (name !== undefined) entry.name = name;
    const real = pax.get("GNU.sparse.realsize") ?? pax.get("GNU.sparse.size");
    if (real === undefined) {
      throw this.fail(
        "CORRUPT",
        `the sparse member ${quoteName(entry.name)} has no GNU.sparse.realsize`,
        entry.at,
      );
    }
    entry.size = this.decimal(real, "GNU.sparse.realsize", entry.at);
    entry.kind = "sparse";
    entry.paxSparse = true;
  }

  /** Reads the map at the start of a pax 1.0 sparse member's data. */
  async paxSparseMap(entry: Entry): Promise<void> {
    const start = this.input.position;
    const numbers: number[] = [];
    let line = "";
    let wanted = -1;
    while (wanted < 0 || numbers.length < 1 + 2 * wanted) {
      const b = await this.input.exactly(1);
      if (b.length === 0) {
        throw this.fail("TRUNCATED", "it ends inside a sparse map", start);
      }
      if (b[0] !== 0x0a) {
        if (line.length >= 20) {
          throw this.fail("CORRUPT", "a sparse map number is too long", start);
        }
        line += String.fromCharCode(b[0]);
        continue;
      }
      numbers.push(this.decimal(line, "sparse map entry", start));
      line = "";
      if (numbers.length === 1) {
        wanted = numbers[0];
        if (wanted > MAX_SPARSE_REGIONS) {
          throw this.fail(
            "OUT_OF_RANGE",
            `the sparse map of ${
              quoteName(entry.name)
            } has ${wanted} regions, more than ${MAX_SPARSE_REGIONS}`,
            start,
          );
        }
      }
    }
    const used = this.input.position - start;
    const mapBytes = used + (-used & (TAR_BLOCK - 1));
    if (mapBytes > entry.stored) {
      throw this.fail(
        "CORRUPT",
        "a sparse map is longer than its member",
        start,
      );
    }
    await this.input.skip(mapBytes - used);
    entry.stored -= mapBytes;
    const regions: Region[] = [];
    for (let i = 0; i < wanted; i++) {
      regions.push({ offset: numbers[1 + 2 * i], length: numbers[2 + 2 * i] });
    }
    entry.regions = this.checkRegions(regions, entry);
  }

  /** Regions in order, inside the file, adding up to the data stored. */
  checkRegions(regions: Region[], entry: Entry): Region[] {
    let end = 0;
    let total = 0;
    for (const r of regions) {
      if (r.offset < end || r.offset + r.length > entry.size) {
        throw this.fail(
          "CORRUPT",
          `the sparse map of ${
            quoteName(entry.name)
          } has a region [${r.offset}, +${r.length}) out of order or past its size ${entry.size}`,
          entry.at,
        );
      }
      end = r.offset + r.length;
      total += r.length;
    }
    if (total !== entry.stored) {
      throw this.fail(
        "CORRUPT",
        `the sparse map of ${
          quoteName(entry.name)
        } maps ${total} bytes, but ${entry.stored} are stored`,
        entry.at,
      );
    }
    return regions;
  }

  /** Skips a member's body and padding. */
  async skipBody(entry: Entry): Promise<void> {
    const skipped = await this.input.skip(entry.stored);
    if (skipped < entry.stored) throw this.truncated(entry, skipped);
    await this.skipPadding(entry.stored);
  }

  truncated(entry: Entry, got: number): Qcow2Error {
    return this.fail(
      "TRUNCATED",
      `it ends inside ${
        quoteName(entry.name)
      }, after ${got} of its ${entry.stored} bytes`,
    );
  }
}

/** A NUL-terminated string of a header field or body. */
function cString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** The name in a header: ustar's prefix and name. */
function headerName(block: Uint8Array): string {
  const name = cString(block.subarray(0, 100));
  const ustar = cString(block.subarray(257, 263)) === "ustar";
  const prefix = ustar ? cString(block.subarray(345, 500)) : "";
  return prefix ? `${prefix}/${name}` : name;
}

/** pax records, `LENGTH key=value\n`, each checked. */
function parsePax(
  body: Uint8Array,
  fail: (reason: string) => Qcow2Error,
): Map<string, string> {
  const records = new Map<string, string>();
  const decoder = new TextDecoder();
  let at = 0;
  while (at < body.length && body[at] !== 0) {
    const space = body.indexOf(0x20, at);
    const digits = space < 0 ? "" : decoder.decode(body.subarray(at, space));
    const length = /^\d{1,7}$/.test(digits) ? Number(digits) : 0;
    const end = at + length;
    if (length <= space - at || end > body.length || body[end - 1] !== 0x0a) {
      throw fail(`a pax record at byte ${at} of its header is malformed`);
    }
    const record = decoder.decode(body.subarray(space + 1, end - 1));
    const eq = record.indexOf("=");
    if (eq <= 0) {
      throw fail(`a pax record at byte ${at} of its header has no key`);
    }
    records.set(record.slice(0, eq), record.slice(eq + 1));
    at = end;
  }
  return records;
}

/**
 * Finds the disk in a tar stream: the member named `disk`, or else the only
 * regular file (OVF descriptors, manifests and certificates are not disks).
 * Members before it are skipped as they stream by; without `disk`, the
 * rest of the archive is read after the disk to make sure it is the only
 * one, and the stream fails if it is not.
 *
 * @param input The archive.
 * @param options The member to read and the archive's name.
 * @returns The disk's name, size and bytes.
 * @throws {Qcow2Error} When a header is malformed, the archive holds no
 * such disk, or it ends early.
 *
 * @example Read the disk in a one-file archive
 * ```ts
 * import assert from "node:assert";
 * import { openTarDisk } from "./tar.ts";
 * const header = new Uint8Array(512);
 * const put = (at: number, text: string) => header.set(new TextEncoder().encode(text), at);
 * put(0, "disk.raw"); put(100, "0000644"); put(124, "00000001000"); put(156, "0");
 * put(257, "ustar\u000000"); put(148, "        ");
 * const sum = header.reduce((a, b) => a + b, 0);
 * put(148, sum.toString(8).padStart(6, "0") + "\u0000 ");
 * const tar = new Uint8Array(512 + 512 + 1024);
 * tar.set(header);
 * tar.fill(7, 512, 1024);
 * const disk = await openTarDisk(ReadableStream.from([tar]), { name: "disk.tar" });
 * assert.strictEqual(disk.member, "disk.raw");
 * const bytes = new Uint8Array(await new Response(disk.stream as ReadableStream<Uint8Array>).arrayBuffer());
 * assert.strictEqual(bytes.length, 512);
 * assert.strictEqual(bytes[511], 7);
 * ```
 */
export async function openTarDisk(
  input: ReadableStream<Uint8Array>,
  options: TarDiskOptions,
): Promise<TarDisk> {
  const reader = new BytesReader(input);
  const walker = new TarWalker(reader, options.name);
  const wanted = options.disk === undefined
    ? undefined
    : plainName(options.disk);
  const seen: string[] = [];
  const isDisk = (e: Entry) =>
    wanted === undefined
      ? e.kind !== "other" && e.size > 0 && !NOT_A_DISK.test(e.name)
      : e.kind !== "other" && plainName(e.name) === wanted;
  let entry: Entry | undefined;
  try {
    for (;;) {
      entry = await walker.next();
      if (!entry) {
        const members = seen.length === 0
          ? "it holds no file"
          : `it holds ${listNames(seen)}`;
        throw walker.fail(
          "CORRUPT",
          wanted === undefined
            ? `no disk in it (${members})`
            : `no member named ${quoteName(wanted)} (${members})`,
        );
      }
      if (entry.kind !== "other" && seen.length < 11) seen.push(entry.name);
      if (isDisk(entry)) break;
      await walker.skipBody(entry);
    }
    if (entry.paxSparse) await walker.paxSparseMap(entry);
  } catch (err) {
    await reader.cancel(err);
    throw err;
  }
  const disk = entry;
  return {
    member: disk.name,
    size: disk.size,
    stream: bodyStream(walker, disk, async () => {
      if (wanted !== undefined) {
        await reader.cancel();
        return;
      }
      await walker.skipPadding(disk.stored);
      for (;;) {
        const other = await walker.next();
        if (!other) return;
        if (isDisk(other)) {
          throw walker.fail(
            "UNSUPPORTED_FEATURE",
            `it holds more than one disk (${quoteName(disk.name)}, ${
              quoteName(other.name)
            }): name one with --disk NAME`,
            other.at,
          );
        }
        await walker.skipBody(other);
      }
    }),
  };
}

/** "a", "a, b" ... with at most ten names. */
function listNames(names: string[]): string {
  const shown = names.slice(0, 10).map(quoteName).join(", ");
  return names.length > 10 ? `${shown}, ...` : shown;
}

/** A member's bytes (holes as zero runs), then `after` before it closes. */
function bodyStream(
  walker: TarWalker,
  entry: Entry,
  after: () => Promise<void>,
): ReadableStream<Uint8Array | ZeroBytes> {
  const regions = entry.regions ?? [{ offset: 0, length: entry.size }];
  let index = 0;
  let position = 0; // in the file
  let inRegion = 0; // bytes of the current region given
  let stored = 0; // bytes of the body read
  const reader = walker.input;
  return new ReadableStream<Uint8Array | ZeroBytes>({
    async pull(controller) {
      try {
        for (;;) {
          if (index >= regions.length) {
            if (position < entry.size) {
              controller.enqueue({ zeros: entry.size - position });
              position = entry.size;
              return;
            }
            await after();
            controller.close();
            return;
          }
          const region = regions[index];
          if (position < region.offset) {
            controller.enqueue({ zeros: region.offset - position });
            position = region.offset;
            return;
          }
          if (inRegion === region.length) {
            index++;
            inRegion = 0;
            continue;
          }
          const piece = await reader.some(
            Math.min(region.length - inRegion, PIECE),
          );
          if (piece.length === 0) throw walker.truncated(entry, stored);
          inRegion += piece.length;
          stored += piece.length;
          position += piece.length;
          controller.enqueue(piece);
          return;
        }
      } catch (err) {
        await reader.cancel(err);
        throw err;
      }
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}
