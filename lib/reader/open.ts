/**
 * Opening images: format detection from the magic, backing chains, external
 * data files and snapshots.
 *
 * @module
 */

import { hex, Qcow2Error } from "../format/errors.ts";
import {
  dataFileName,
  hasQcow2Magic,
  parseHeader,
  type Qcow2Header,
} from "../format/header.ts";
import { assertReadable, validateHeader } from "../format/validate.ts";
import {
  INCOMPAT,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
} from "../format/constants.ts";
import type { SnapshotEntry } from "../format/snapshot.ts";
import { BytesSource, type RandomAccessSource } from "../io/source.ts";
import { type HttpTransport, isHttpUrl } from "../io/http_source.ts";
import { fileError } from "../io/_errors.ts";
import type { GuestImage } from "./image.ts";
import { Qcow2Image } from "./qcow2_image.ts";
import { RawImage } from "./raw_image.ts";
import {
  backingReferrer,
  declaredBackingFormat,
  openByName,
  ReferenceGate,
  type ReferencePolicy,
  type Referrer,
  topReferrer,
} from "./references.ts";
import { detectFormat, readPadded } from "./_read.ts";
import { readSnapshotTable } from "./_snapshots.ts";

/**
 * An image format as a caller gives it: `qcow2` or `raw`, or `auto` to
 * detect it from the first bytes (probing). A probed image may only lead
 * to files in its own directory.
 *
 * @example Give the format of a raw disk whatever its guest wrote
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes, type ImageFormat, openImage } from "../../mod.ts";
 * const looksLikeQcow2 = await convertToBytes(new Uint8Array(4096).fill(9));
 * const format: ImageFormat = "raw";
 * await using image = await openImage(looksLikeQcow2, { format });
 * assert.strictEqual(image.virtualSize, looksLikeQcow2.length);
 * ```
 */
export type ImageFormat = "auto" | "qcow2" | "raw";

/**
 * Options of {@linkcode openImage}.
 *
 * @example Read a snapshot of an image whose format is known
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes, openImage } from "../../mod.ts";
 * const qcow2 = await convertToBytes(new Uint8Array(4096).fill(3));
 * await using image = await openImage(qcow2, { format: "qcow2", references: "none" });
 * assert.strictEqual((await image.readAt(0, 1))[0], 3);
 * ```
 */
export interface OpenImageOptions {
  /**
   * Format of the top image; `auto` detects it from the magic. Giving the
   * format also decides which files the image may lead to (see
   * `references`): a probed image is treated as untrusted.
   * @default {"auto"}
   */
  format?: ImageFormat;
  /**
   * Which backing and external data files may be followed. The default
   * follows QEMU's rules for an image whose format was given, and keeps a
   * probed image to files inside its own directory (its origin over HTTP).
   * @default {"auto"}
   */
  references?: ReferencePolicy;
  /**
   * The directory (a path, or a URL ending with `/`) the top image's
   * relative backing and data file names resolve against, and which a
   * probed image may not leave. Default: the directory of the image's own
   * path or URL; an image without a name (bytes, a stream) has none, so
   * its relative names are refused, and a probed one follows no file.
   */
  relativeTo?: string;
  /**
   * What to call the top image in messages (default: its path, URL or
   * source name). It does not decide where its names resolve.
   */
  name?: string;
  /** Read this internal snapshot (matched by ID first, then by name). */
  snapshot?: string;
  /**
   * Longest backing chain accepted (the top image not counted).
   * @default {256}
   */
  maxBackingDepth?: number;
  /**
   * L2 table cache budget per image, in bytes.
   * @default {33554432} (32 MiB)
   */
  cacheBytes?: number;
  /**
   * Opens backing and data files by the names the policy allows. The
   * default ({@linkcode openByName}) opens local files and http(s) URLs.
   * Where the runtime has file access, a file held to its directory is
   * passed as the real path that was checked, not as the image names it.
   * A URL it opens must be answered from the origin asked (judged on the
   * source's `url`).
   */
  openSource?: (name: string) => Promise<RandomAccessSource>;
  /**
   * How http(s) URLs are fetched: the image's own, when `input` is one,
   * and those of its backing and data files unless `openSource` is given
   * (idle timeout, retries, fetch, signal). To send headers, open the
   * image with `HttpSource.open` and pass the source.
   */
  http?: HttpTransport;
}

const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Opens a disk image (qcow2 or raw) with its backing chain and external
 * data file. Without `format`, the format is detected from the first bytes
 * and the image may only lead to files in its own directory.
 *
 * Who closes what (the one rule, for the reader and the tools alike):
 * closing the image closes what opening it opened (a file or URL opened
 * by name, the buffer's wrapper, backing and data files), never a
 * {@linkcode RandomAccessSource} the caller passed in; the caller closes
 * that, after the image.
 *
 * @param input A file path (with `mod.ts` loaded, in Deno), an http(s) URL,
 * a source, or the image bytes.
 * @param options Format, reference policy, snapshot, how to open related
 * files.
 * @returns The image; close it when done (`await using` works).
 * @throws {TypeError} For a path when no file access is loaded (`core.ts`
 * alone, as in a browser or Node).
 * @throws {Qcow2Error} When the image is malformed, unsupported, encrypted,
 * its backing chain is broken or loops, or it names a file the policy does
 * not allow (`UNTRUSTED_REFERENCE`).
 *
 * @example Open bytes in memory
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "./open.ts";
 * await using image = await openImage(new Uint8Array(512));
 * assert.strictEqual(image.virtualSize, 512);
 * ```
 */
export async function openImage(
  input: string | RandomAccessSource | Uint8Array,
  options: OpenImageOptions = {},
): Promise<GuestImage> {
  const source: RandomAccessSource = typeof input === "string"
    ? await openByName(input, input, options.http).catch((err) => {
      // An OS error is worded here; a URL's error and the refusal of a
      // path where no file access is loaded (TypeError) say it already.
      throw isHttpUrl(input) || err instanceof TypeError
        ? err
        : fileError(`open image ${input}`, err);
    })
    : input instanceof Uint8Array
    ? new BytesSource(input)
    : input;
  const owned = typeof input === "string" || input instanceof Uint8Array;
  try {
    const given = options.format !== undefined && options.format !== "auto";
    const format = given ? options.format! : await detectFormat(source);
    if (format === "raw") {
      if (options.snapshot !== undefined) {
        throw new RangeError(
          `Cannot open image: ${
            source.name ?? "raw image"
          } is raw and has no snapshots`,
        );
      }
      return new RawImage(source, owned);
    }
    const name = typeof input === "string" ? input : source.name ?? "<image>";
    // Over HTTP, names resolve against the URL that answered.
    const referrer = topReferrer(
      source.url ?? name,
      given,
      options.relativeTo,
      options.name ?? name,
    );
    const gate = new ReferenceGate({
      policy: options.references,
      maxDepth: options.maxBackingDepth,
      openSource: options.openSource,
      http: options.http,
    });
    await gate.start(name);
    return await openQcow2(source, owned, referrer, options, gate, 0);
  } catch (err) {
    if (owned) await source.close?.();
    throw err;
  }
}

async function openQcow2(
  source: RandomAccessSource,
  ownsSource: boolean,
  referrer: Referrer,
  options: OpenImageOptions,
  gate: ReferenceGate,
  depth: number,
): Promise<Qcow2Image> {
  const header = await readHeader(source);

  let dataFile: RandomAccessSource | undefined;
  let backing: GuestImage | undefined;
  try {
    if ((header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n) {
      const dataName = dataFileName(header);
      if (dataName === undefined) {
        throw new Qcow2Error(
          "UNSUPPORTED_FEATURE",
          "Cannot open image: the external data file bit is set but no data file name is stored",
          { field: "incompatible_features", offset: 72 },
        );
      }
      dataFile = await gate.open(await gate.dataFile(referrer, dataName));
    }

    if (header.backingFile !== undefined && header.backingFile !== "") {
      const declared = declaredBackingFormat(header, header.backingFile);
      const ref = await gate.backing(referrer, header.backingFile);
      const backingSource = await gate.open(ref);
      try {
        const format = declared ?? await detectFormat(backingSource);
        backing = format === "raw"
          ? new RawImage(backingSource, true)
          : await openQcow2(
            backingSource,
            true,
            backingReferrer(referrer, ref, declared, backingSource),
            options,
            gate,
            depth + 1,
          );
      } catch (err) {
        await backingSource.close?.();
        throw err;
      }
    }

    const snapshots = (await readSnapshotTable(source, header)).entries;
    let snapshot: SnapshotEntry | undefined;
    if (depth === 0 && options.snapshot !== undefined) {
      const want = options.snapshot;
      snapshot = snapshots.find((s) => s.id === want) ??
        snapshots.find((s) => s.name === want);
      if (!snapshot) {
        const names = snapshots.map((s) => `${s.id} "${s.name}"`).join(", ") ||
          "none";
        throw new Qcow2Error(
          "BAD_SNAPSHOT",
          `Cannot open snapshot "${want}": no snapshot has that ID or name (snapshots: ${names})`,
        );
      }
    }
    return await Qcow2Image.create({
      source,
      header,
      backing,
      dataFile,
      snapshot,
      snapshots,
      cacheBytes: options.cacheBytes ?? DEFAULT_CACHE_BYTES,
      ownsSource,
    });
  } catch (err) {
    await dataFile?.close?.();
    await backing?.close();
    throw err;
  }
}

/** Options of {@linkcode readHeader}. */
export interface ReadHeaderOptions {
  /**
   * Read the header as QEMU does to inspect an image read-only (`info`,
   * `check`, `map`): the corrupt bit and encryption are accepted, and a
   * header cluster cut short by the end of the file reads as zero-filled.
   * @default {false}
   */
  inspection?: boolean;
}

/**
 * Reads, parses and validates the header of a qcow2 source: the one place
 * the reader and the tools read a header.
 *
 * @param source The image file.
 * @param options Whether the image is only inspected.
 * @returns The header.
 * @throws {Qcow2Error} When the header is malformed, or the image cannot
 * be read (unknown features; unless inspecting, the corrupt bit and
 * encryption).
 *
 * @example Read the header of an image in memory
 * ```ts
 * import assert from "node:assert";
 * import { readHeader } from "./open.ts";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * import { BytesSource } from "../io/source.ts";
 * const qcow2 = await convertToBytes(new Uint8Array(3 << 20));
 * assert.strictEqual((await readHeader(new BytesSource(qcow2))).size, 3 << 20);
 * ```
 */
export async function readHeader(
  source: RandomAccessSource,
  options: ReadHeaderOptions = {},
): Promise<Qcow2Header> {
  const head = await source.read(0, 2 ** MIN_CLUSTER_BITS);
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const version = head.length >= 8 ? view.getUint32(4) : 0;
  if (
    head.length < 24 || !hasQcow2Magic(head) ||
    (version !== 2 && version !== 3)
  ) {
    parseHeader(head); // throws the precise error (truncated, magic, version)
  }
  const clusterBits = view.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    if (options.inspection) parseHeader(head); // a short header says so first
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image: cluster_bits ${clusterBits} is out of range [${MIN_CLUSTER_BITS}, ${MAX_CLUSTER_BITS}]`,
      { offset: 20, field: "cluster_bits" },
    );
  }
  // QEMU keeps the header, its extensions and the backing file name within
  // the first cluster.
  const clusterSize = 2 ** clusterBits;
  let header: Qcow2Header;
  if (options.inspection) {
    header = parseHeader(await readPadded(source, 0, clusterSize));
  } else {
    const first = clusterSize <= head.length
      ? head
      : await source.read(0, clusterSize);
    header = parseHeaderCluster(first, clusterSize);
  }
  validateHeader(header);
  assertReadable(header, options.inspection);
  return header;
}

/**
 * Parses the header from the first cluster. When the file ends inside that
 * cluster and the extensions run off its end, the file is truncated (the
 * same bytes parse once the cluster is whole): say so instead of blaming
 * the extension.
 */
function parseHeaderCluster(
  first: Uint8Array,
  clusterSize: number,
): Qcow2Header {
  try {
    return parseHeader(first);
  } catch (err) {
    if (
      first.length >= clusterSize || !(err instanceof Qcow2Error) ||
      err.code !== "BAD_EXTENSION"
    ) {
      throw err;
    }
    const whole = new Uint8Array(clusterSize);
    whole.set(first);
    try {
      parseHeader(whole);
    } catch {
      throw err;
    }
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: the file ends at ${
        hex(first.length)
      }, inside the header extensions of its ${clusterSize}-byte header cluster`,
      { offset: first.length, cause: err },
    );
  }
}
