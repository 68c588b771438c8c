// How the inspection tools open what they are given: a path, bytes or a
// caller's source, then the image and its chain through the reader's one
// walk (the same reference rules, loop detection and depth limit as
// openImage), for what the tool needs.

import { BytesSource, type RandomAccessSource } from "../io/source.ts";
import { openHostFile } from "../io/host_files.ts";
import { fileError } from "../io/os_errors.ts";
import type { HttpTransport } from "../io/http_source.ts";
import type { GuestImage } from "../reader/image.ts";
import type { OpenPurpose } from "../reader/image_type.ts";
import { openChain } from "../reader/chain.ts";
import type { ReferencePolicy } from "../reader/references.ts";
import type { ImageFormat } from "../reader/open.ts";
import type { ImageInput, OpenSource } from "./input.ts";

export type { ImageInput, OpenSource };

/** Opens the input as a source (paths through the runtime's file access). */
export async function sourceOf(input: ImageInput): Promise<RandomAccessSource> {
  if (typeof input === "string") {
    try {
      return await openHostFile(input);
    } catch (err) {
      if (err instanceof TypeError) throw err; // no file access: it says so
      throw fileError(`open image ${input}`, err);
    }
  }
  if (input instanceof Uint8Array) return new BytesSource(input);
  return input;
}

/** How a tool opens its image. */
export interface ToolOpenOptions {
  /** What the image is opened for. */
  purpose: OpenPurpose;
  /**
   * Follow backing files.
   * @default {true}
   */
  backing?: boolean;
  /** Format of the top image; probed when absent or `auto`. */
  format?: ImageFormat;
  /** Which backing and data files may be followed. */
  references?: ReferencePolicy;
  /** Opens related files by name. */
  openSource?: OpenSource;
  /** How the default opener fetches URLs. */
  http?: HttpTransport;
  /** The option that gives its format, for messages (default `-f`). */
  formatOption?: string;
  /**
   * Opened for `check` (QEMU's `BDRV_O_CHECK`).
   * @default {false}
   */
  check?: boolean;
}

/**
 * Table cache of each image a tool opens, in bytes: the tools walk the
 * guest disk in order, each table is needed while its range is walked
 * (twice by `compare`: for the status and for the read), so a few tables
 * per image do; more only holds the tables already passed, and grows the
 * process by the cache's size for each image opened.
 */
const TOOL_CACHE_BYTES = 4 * 1024 * 1024;

/**
 * Opens a tool's input and its chain. Closing the image closes what was
 * opened here (a path, the bytes' wrapper, backing and data files), never
 * a source the caller gave.
 */
export async function openForTool(
  input: ImageInput,
  options: ToolOpenOptions,
): Promise<GuestImage> {
  const source = await sourceOf(input);
  const owned = typeof input === "string" || input instanceof Uint8Array;
  return await openChain(
    source,
    typeof input === "string" ? input : undefined,
    owned,
    { cacheBytes: TOOL_CACHE_BYTES, ...options },
  );
}
