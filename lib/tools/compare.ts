/**
 * `compareImages()`: whether two images (raw or qcow2, with backing
 * chains) hold the same guest content, and the first offset where they do
 * not, as `qemu-img compare` (QEMU 7.2) reports it.
 *
 * @module
 */

import { InternalError } from "../format/errors.ts";
import { isZero } from "../bytes/zeros.ts";
import type { ImageFormat } from "../reader/open.ts";
import type { ReferencePolicy } from "../reader/references.ts";
import type { GuestImage } from "../reader/image.ts";
import { type ImageInput, openForTool, type OpenSource } from "./_open.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { readPastEnd } from "../reader/read.ts";
import { type StatusRun, statusRuns } from "./_status.ts";

/**
 * What {@linkcode compareImages} found.
 *
 * @example Report where two images first differ
 * ```ts
 * import assert from "node:assert";
 * import { compareImages, type CompareResult, formatCompareResult } from "@qcow2pipe/qcow2pipe/tools";
 * const a = new Uint8Array(4096), b = new Uint8Array(4096).fill(1, 1024);
 * const result: CompareResult = await compareImages(a, b);
 * assert.strictEqual(formatCompareResult(result), "Content mismatch at offset 1024!\n");
 * ```
 */
export interface CompareResult {
  /** Same guest content (beyond the shorter image, the longer reads zeros). */
  identical: boolean;
  /**
   * First offset QEMU reports as different: the start of the first
   * 512-byte sector (counted from the start of the range being compared,
   * normally sector-aligned) where the content differs.
   */
  offset?: number;
  /** Virtual size of the first image (QEMU's: whole sectors). */
  sizeA: number;
  /** Virtual size of the second image. */
  sizeB: number;
}

/**
 * Options of {@linkcode compareImages}.
 *
 * @example Compare a raw disk with the same disk as qcow2, both formats given
 * ```ts
 * import assert from "node:assert";
 * import { compareImages, type CompareImagesOptions } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const raw = new Uint8Array(65536).fill(2);
 * const options: CompareImagesOptions = { formats: ["raw", "qcow2"], holes: false };
 * assert((await compareImages(raw, await convertToBytes(raw), options)).identical);
 * ```
 */
export interface CompareImagesOptions {
  /**
   * Formats of the first and second image; each is probed when absent or
   * `auto` (`qemu-img compare -f` and `-F`).
   * @default {["auto", "auto"]}
   */
  formats?: [ImageFormat?, ImageFormat?];
  /**
   * Which backing and data files may be followed (see `openImage`).
   * @default {"auto"}
   */
  references?: ReferencePolicy;
  /** Opens backing and data files by name; default: local files and http(s) URLs held to their origin (`openByName`). */
  openSource?: OpenSource;
  /** How the default opener fetches URLs (idle timeout, retries...). */
  http?: HttpTransport;
  /**
   * Ask the file system where local files have holes, as QEMU does (needs
   * FFI); ranges both images know to be zero are skipped without reading.
   * @default {true}
   */
  holes?: boolean;
}

/** QEMU's IO_BUF_SIZE: compare reads at most this much at once. */
const IO_BUF_SIZE = 2 * 1024 * 1024;
const SECTOR = 512;

/** Index of the first 512-byte sector (from the start) with a non-zero byte. */
function firstNonZeroSector(bytes: Uint8Array): number {
  if (isZero(bytes)) return -1;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0) return i - (i % SECTOR);
  }
  return -1;
}

/**
 * Index of the first 512-byte sector (from the start) where the buffers
 * differ: compared four bytes at a time where both views allow it.
 */
function firstDifferentSector(a: Uint8Array, b: Uint8Array): number {
  let i = 0;
  if (((a.byteOffset | b.byteOffset) & 3) === 0) {
    const n = a.length >>> 2;
    const wa = new Int32Array(a.buffer, a.byteOffset, n);
    const wb = new Int32Array(b.buffer, b.byteOffset, n);
    let w = 0;
    while (w < n && wa[w] === wb[w]) w++;
    i = w * 4;
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return i - (i % SECTOR);
  return -1;
}

/** Runs of a layer, consumed piecewise. */
class Cursor {
  #it: AsyncGenerator<StatusRun>;
  #run: StatusRun | undefined;
  constructor(it: AsyncGenerator<StatusRun>) {
    this.#it = it;
  }
  /** The run covering `offset` (runs are contiguous and in order). */
  async at(offset: number): Promise<StatusRun> {
    while (!this.#run || this.#run.start + this.#run.length <= offset) {
      const next = await this.#it.next();
      if (next.done) {
        throw new InternalError(
          `Cannot compare images: block status runs end before ${offset}`,
        );
      }
      this.#run = next.value;
    }
    return this.#run;
  }
}

const allocated = (r: StatusRun) => r.present || r.pastBacking === true;

/**
 * Compares the guest content of two images. Like `qemu-img compare`, it
 * skips ranges both images know to be zero, compares bytes where both
 * allocate the range, and checks the allocated side for zeros where only
 * one does; when the sizes differ, the rest of the longer image must read
 * as zeros.
 *
 * @param a First image: a path, a source or bytes (raw or qcow2).
 * @param b Second image.
 * @param options How to open related files, hole detection.
 * @returns Whether they are identical and where they first differ.
 * @throws {Qcow2Error} When an image cannot be opened or read.
 *
 * @example Raw and qcow2 with the same content
 * ```ts
 * import assert from "node:assert";
 * import { compareImages } from "@qcow2pipe/qcow2pipe/tools";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * const raw = new Uint8Array(1 << 20);
 * raw.fill(7, 1000, 5000);
 * const qcow2 = await convertToBytes(raw);
 * assert.strictEqual((await compareImages(raw, qcow2)).identical, true);
 * raw[4242] = 0;
 * assert.strictEqual((await compareImages(raw, qcow2)).offset, 4096);
 * ```
 */
export async function compareImages(
  a: ImageInput,
  b: ImageInput,
  options: CompareImagesOptions = {},
): Promise<CompareResult> {
  const images: GuestImage[] = [];
  const holes = { holes: options.holes ?? true };
  try {
    // Each input is opened once, to be read; its block status is asked of
    // the same opened images.
    for (const [i, input] of [a, b].entries()) {
      images.push(
        await openForTool(input, {
          purpose: "read",
          format: options.formats?.[i],
          // qemu-img compare gives the second image's format with -F.
          formatOption: i === 0 ? "-f" : "-F",
          references: options.references,
          openSource: options.openSource,
          http: options.http,
        }),
      );
    }
    const [ia, ib] = images;
    const result: CompareResult = {
      identical: true,
      sizeA: ia.virtualSize,
      sizeB: ib.virtualSize,
    };
    const common = Math.min(ia.virtualSize, ib.virtualSize);
    const differ = (offset: number) => {
      result.identical = false;
      result.offset = offset;
      return result;
    };
    // Every read lands in these two (a fresh buffer per read would pile
    // up as garbage over a large image, tens of MiB before a collection).
    const bufferA = new Uint8Array(IO_BUF_SIZE);
    const bufferB = new Uint8Array(IO_BUF_SIZE);
    const ca = new Cursor(statusRuns(ia, 0, common, holes));
    const cb = new Cursor(statusRuns(ib, 0, common, holes));
    for (let offset = 0; offset < common;) {
      const ra = await ca.at(offset);
      const rb = await cb.at(offset);
      let chunk = Math.min(ra.start + ra.length, rb.start + rb.length) - offset;
      if (ra.zero && rb.zero) {
        offset += chunk;
        continue;
      }
      const allocA = allocated(ra);
      if (allocA === allocated(rb)) {
        if (allocA) {
          chunk = Math.min(chunk, IO_BUF_SIZE);
          const i = firstDifferentSector(
            await readPastEnd(ia, offset, chunk, bufferA),
            await readPastEnd(ib, offset, chunk, bufferB),
          );
          if (i >= 0) return differ(offset + i);
        }
      } else {
        chunk = Math.min(chunk, IO_BUF_SIZE);
        const i = firstNonZeroSector(
          await readPastEnd(allocA ? ia : ib, offset, chunk, bufferA),
        );
        if (i >= 0) return differ(offset + i);
      }
      offset += chunk;
    }
    if (ia.virtualSize !== ib.virtualSize) {
      const image = ia.virtualSize > ib.virtualSize ? ia : ib;
      for await (
        const run of statusRuns(
          image,
          common,
          image.virtualSize - common,
          holes,
        )
      ) {
        if (!allocated(run)) continue;
        for (
          let at = run.start;
          at < run.start + run.length;
          at += IO_BUF_SIZE
        ) {
          const n = Math.min(IO_BUF_SIZE, run.start + run.length - at);
          const i = firstNonZeroSector(
            await readPastEnd(image, at, n, bufferA),
          );
          if (i >= 0) return differ(at + i);
        }
      }
    }
    return result;
  } finally {
    for (const image of images) await image.close();
  }
}
