/**
 * The one walk down a backing chain, for the reader and the tools alike:
 * the top image's format is given or probed, each image is opened by its
 * {@linkcode ImageType}, and every file an image names is followed here,
 * through one {@linkcode ReferenceGate} (the trust rule, loop detection on
 * the files actually opened, the depth limit) and nowhere else.
 *
 * @module
 */

import { Qcow2Error } from "../format/errors.ts";
import { aboutImage } from "./_read.ts";
import type { HttpTransport } from "../io/http_source.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { GuestImage } from "./image.ts";
import type { OpenContext, OpenedDataFile, OpenPurpose } from "./image_type.ts";
import {
  detectFormat,
  type FormatName,
  imageType,
  isReadFormat,
  readFormatsText,
} from "./formats.ts";
import {
  backingReferrer,
  ReferenceGate,
  type ReferencePolicy,
  type Referrer,
  topReferrer,
} from "./references.ts";

/** How {@linkcode openChain} opens an image and its chain. */
export interface ChainOptions {
  /** What the images are opened for. */
  purpose: OpenPurpose;
  /**
   * Follow backing files (`info` follows them only for `--backing-chain`).
   * @default {true}
   */
  backing?: boolean;
  /** Format of the top image; probed when absent or `auto`. */
  format?: string;
  /** Which backing and data files may be followed. */
  references?: ReferencePolicy;
  /** The directory the top image's relative names resolve against. */
  relativeTo?: string;
  /** What to call the top image in reference messages. */
  label?: string;
  /**
   * The option that gives the top image's format, named in the hint of a
   * refusal to follow a file.
   * @default {"-f"}
   */
  formatOption?: string;
  /** The internal snapshot of the top image to read. */
  snapshot?: string;
  /** Longest backing chain accepted (the top image not counted). */
  maxBackingDepth?: number;
  /** Table cache budget per image, in bytes. */
  cacheBytes?: number;
  /**
   * Opened for `check`: entries that would refuse an image at open are
   * left for the format's check (see {@linkcode OpenContext.check}).
   * @default {false}
   */
  check?: boolean;
  /** Opens backing and data files by the name the gate allows. */
  openSource?: (path: string) => Promise<RandomAccessSource>;
  /** How the default opener fetches URLs. */
  http?: HttpTransport;
}

const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Opens an image from its file, with its backing chain and data files.
 * On failure nothing it opened is left open; `source` is closed only when
 * `owned`.
 *
 * @param source The top image's file.
 * @param place The path or URL it was opened by (undefined for a source
 * or bytes the caller gave): what it is called, where its names resolve.
 * @param owned Whether closing the image closes `source`.
 * @param options What it is opened for, its format, the reference rules.
 * @returns The top image.
 * @throws {RangeError} For a format that is not read.
 * @throws {Qcow2Error} When an image is malformed or unsupported, a file
 * it names may not be followed or cannot be opened, or the chain loops or
 * is too deep.
 *
 * @example Describe an image without following its backing file
 * ```ts
 * import assert from "node:assert";
 * import { openChain } from "./chain.ts";
 * import { BytesSource } from "../io/source.ts";
 * import { convertToBytes } from "../writer/qcow2_writer.ts";
 * const overlay = await convertToBytes(new Uint8Array(512), {
 *   backingFile: { name: "/nowhere/base.raw", format: "raw" },
 * });
 * const source = new BytesSource(overlay);
 * await using image = await openChain(source, undefined, false, { purpose: "describe", backing: false });
 * assert.strictEqual((await image.describe()).backingFile, "/nowhere/base.raw");
 * assert.strictEqual(image.backing, undefined);
 * ```
 */
export async function openChain(
  source: RandomAccessSource,
  place: string | undefined,
  owned: boolean,
  options: ChainOptions,
): Promise<GuestImage> {
  const name = place ?? source.name ?? "<image>";
  const given = options.format !== undefined && options.format !== "auto";
  if (given && !isReadFormat(options.format!)) {
    throw new RangeError(
      `Cannot open image: format "${options.format}" is not ${
        readFormatsText("or")
      }`,
    );
  }
  try {
    const format = given
      ? options.format as FormatName
      : await detectFormat(source);
    const gate = new ReferenceGate({
      policy: options.references,
      maxDepth: options.maxBackingDepth,
      openSource: options.openSource,
      http: options.http,
    });
    await gate.start(source, place ?? source.name);
    // Over HTTP, names resolve against the URL that answered.
    const referrer = {
      ...topReferrer(
        source.url ?? name,
        given,
        options.relativeTo,
        options.label ?? name,
      ),
      format,
      ...(options.formatOption === undefined
        ? {}
        : { formatOption: options.formatOption }),
    };
    const walk = new ChainWalk(gate, options);
    return await (await imageType(format)).open(
      source,
      walk.context(referrer, name, 0, owned, options.snapshot),
    );
  } catch (err) {
    if (owned) await source.close?.();
    throw aboutImage(err, options.label ?? name);
  }
}

/** One walk: the gate, and the contexts it gives each image. */
class ChainWalk {
  readonly #gate: ReferenceGate;
  readonly #options: ChainOptions;

  constructor(gate: ReferenceGate, options: ChainOptions) {
    this.#gate = gate;
    this.#options = options;
  }

  /** The context of one image of the chain. */
  context(
    referrer: Referrer,
    name: string,
    depth: number,
    ownsSource: boolean,
    snapshot: string | undefined,
  ): OpenContext {
    const { purpose } = this.#options;
    return {
      purpose,
      name,
      depth,
      ownsSource,
      snapshot,
      cacheBytes: this.#options.cacheBytes ?? DEFAULT_CACHE_BYTES,
      check: this.#options.check ?? false,
      backing: (stored, format) =>
        this.#backing(referrer, depth, stored, format),
      dataFile: (stored, always) => this.#dataFile(referrer, stored, always),
    };
  }

  async #backing(
    referrer: Referrer,
    depth: number,
    stored: string,
    declared: string | undefined,
  ): Promise<GuestImage | undefined> {
    if (this.#options.backing === false) return undefined;
    if (declared !== undefined && !isReadFormat(declared)) {
      throw new Qcow2Error(
        "BACKING",
        `Cannot open backing file "${stored}": backing format "${declared}" is not supported (${
          readFormatsText("or", "qcow2")
        })`,
      );
    }
    const ref = await this.#gate.backing(referrer, stored);
    const source = await this.#gate.open(ref);
    try {
      const format = (declared as FormatName | undefined) ??
        await detectFormat(source);
      return await (await imageType(format)).open(
        source,
        this.context(
          backingReferrer(referrer, ref, declared, source),
          ref.name,
          depth + 1,
          true,
          undefined,
        ),
      );
    } catch (err) {
      await source.close?.();
      throw aboutImage(err, ref.name);
    }
  }

  async #dataFile(
    referrer: Referrer,
    stored: string,
    always = false,
  ): Promise<OpenedDataFile> {
    const ref = await this.#gate.dataFile(referrer, stored);
    const source = this.#options.purpose === "describe" && !always
      ? undefined
      : await this.#gate.open(ref);
    return { name: ref.name, source };
  }
}
