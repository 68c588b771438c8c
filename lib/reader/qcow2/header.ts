/**
 * Reading the header of a qcow2 image: the one place the reader and the
 * tools read one, for reading or for inspection.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import {
  hasQcow2Magic,
  parseHeader,
  type Qcow2Header,
} from "../../format/header.ts";
import { assertReadable, validateHeader } from "../../format/validate.ts";
import { MAX_CLUSTER_BITS, MIN_CLUSTER_BITS } from "../../format/constants.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { readPadded } from "../read.ts";

/** Options of {@linkcode readHeader}. */
export interface ReadHeaderOptions {
  /**
   * Read the header as QEMU does to inspect an image read-only (`info`,
   * `check`, `map`): the corrupt bit and encryption are accepted, and a
   * header cluster cut short by the end of the file reads as zero-filled.
   * @default {false}
   */
  inspection?: boolean;
  /**
   * Opened for `check` (QEMU's `BDRV_O_CHECK`): the snapshot table's
   * offset and count are left for the check, which repairs them.
   * @default {false}
   */
  check?: boolean;
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
 * import { readHeader } from "./header.ts";
 * import { convertToBytes } from "../../writer/qcow2_writer.ts";
 * import { BytesSource } from "../../io/source.ts";
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
  validateHeader(header, { check: options.check });
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
