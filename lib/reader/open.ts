/**
 * Opening images: format detection from the magic, backing chains, external
 * data files and snapshots.
 *
 * @module
 */

import { BytesSource, type RandomAccessSource } from "../io/source.ts";
import { type HttpTransport, isHttpUrl } from "../io/http_source.ts";
import { fileError } from "../io/os_errors.ts";
import type { GuestImage } from "./image.ts";
import { openByName, type ReferencePolicy } from "./references.ts";
import { openChain } from "./chain.ts";
import type { FormatName } from "./formats.ts";

/**
 * An image format as a caller gives it: one the reader opens (`qcow2`,
 * `raw`), or `auto` to detect it from the first bytes (probing). A probed image may only lead
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
export type ImageFormat = "auto" | FormatName;

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
   * @default {256} (`MAX_BACKING_DEPTH`, the limit of every command)
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
  return await openChain(
    source,
    typeof input === "string" ? input : undefined,
    owned,
    {
      purpose: "read",
      format: options.format,
      references: options.references,
      relativeTo: options.relativeTo,
      label: options.name,
      snapshot: options.snapshot,
      maxBackingDepth: options.maxBackingDepth,
      cacheBytes: options.cacheBytes,
      openSource: options.openSource,
      http: options.http,
    },
  );
}
