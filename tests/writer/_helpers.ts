// Shared helpers for the forward pipeline (raw -> qcow2) interoperability
// tests (not a test file).
//
// The oracle is QEMU: every image we write must pass `qemu-img check`
// without errors or leaks, read identically to its raw source in
// `qemu-img compare`, and carry the requested settings in `qemu-img info`.
// Our own reader must also give the input back byte for byte.

import assert from "node:assert";
import { join } from "node:path";
import {
  type QemuCheck,
  qemuCheckClean,
  qemuCompareIdentical,
  runStatus,
} from "../_qemu.ts";
import { openImage } from "../../lib/reader/open.ts";
import { imageReadable } from "../../lib/reader/segments.ts";
import type { ZeroBytes } from "../../lib/bytes/zeros.ts";
import { parseHeader } from "../../lib/format/header.ts";
import { decodeL1Entry } from "../../lib/format/l1.ts";
import { decodeL2Entry } from "../../lib/format/l2.ts";
import { compressedRange } from "../../lib/format/compressed.ts";
import {
  decodeRefcountTableEntry,
  getRefcount,
  refcountBlockEntries,
} from "../../lib/format/refcount.ts";
import { mulberry32, prng } from "../../lib/_prng.ts";
export { prng };

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Incompressible bytes from a seeded PRNG (32 bits per step). */
export function randomBytes(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  const next = mulberry32(seed);
  let i = 0;
  while (i < length) {
    let t = next();
    for (let k = 0; k < 4 && i < length; k++, t >>>= 8) out[i++] = t & 0xff;
  }
  return out;
}

const WORDS = [
  "qcow2",
  "cluster",
  "refcount",
  "L2",
  "guest",
  "snapshot",
  "the",
  "block",
  "driver",
  "compressed",
  "sector",
  "image",
  "offset",
  "table",
];

/** Text-like bytes: words from a small vocabulary with spaces and newlines. */
export function textBytes(length: number, seed: number): Uint8Array {
  const rand = prng(seed);
  const out = new Uint8Array(length);
  let i = 0;
  while (i < length) {
    const w = WORDS[Math.floor(rand() * WORDS.length)];
    for (let k = 0; k < w.length && i < length; k++) out[i++] = w.charCodeAt(k);
    if (i < length) out[i++] = rand() < 0.1 ? 10 : 32;
  }
  return out;
}

/**
 * Mixed content in pieces of random length (1 byte to `maxPiece`): text,
 * incompressible noise, zero runs and runs of one byte, so that clusters
 * are zero, compressible, incompressible, or a mix.
 */
export function mixedBytes(
  length: number,
  seed: number,
  maxPiece = 48 * KiB,
): Uint8Array {
  const rand = prng(seed);
  const out = new Uint8Array(length);
  let at = 0;
  while (at < length) {
    const n = Math.min(length - at, 1 + Math.floor(rand() * maxPiece));
    const r = rand();
    if (r < 0.4) out.set(textBytes(n, seed + at), at);
    else if (r < 0.65) out.set(randomBytes(n, seed ^ at), at);
    else if (r < 0.8) out.fill(1 + Math.floor(rand() * 255), at, at + n);
    // else: zeros
    at += n;
  }
  return out;
}

/** Long runs of a single byte value (some of them zero). */
export function runBytes(
  length: number,
  seed: number,
  run = 100_000,
): Uint8Array {
  const rand = prng(seed);
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += run) {
    out.fill(rand() < 0.2 ? 0 : Math.floor(rand() * 256), at, at + run);
  }
  return out;
}

/** An input as it is delivered to the pipeline, and the bytes it stands for. */
export interface Input {
  /** The bytes the input stands for (holes materialized). */
  bytes: Uint8Array;
  /** The chunks to feed (fresh copies per call). */
  chunks(): (Uint8Array | ZeroBytes)[];
}

/** Cuts `bytes` into chunks of `size` bytes (the last one shorter). */
export function chunked(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += size) {
    out.push(bytes.slice(at, Math.min(bytes.length, at + size)));
  }
  return out;
}

/** An input of plain bytes fed in chunks of `chunkSize` (or in one piece). */
export function bytesInput(bytes: Uint8Array, chunkSize?: number): Input {
  return {
    bytes,
    chunks: () =>
      chunkSize === undefined
        ? (bytes.length === 0 ? [] : [bytes.slice()])
        : chunked(bytes, chunkSize),
  };
}

/**
 * An input made of data pieces and `{ zeros: n }` holes of unaligned
 * lengths, some holes adjacent to each other, some data pieces zero too.
 */
export function holesInput(seed: number, pieces: number): Input {
  const rand = prng(seed);
  const parts: (Uint8Array | ZeroBytes)[] = [];
  let total = 0;
  for (let p = 0; p < pieces; p++) {
    const r = rand();
    if (r < 0.45) {
      const n = Math.floor(rand() * 3 * MiB) + 1; // often spans clusters
      parts.push({ zeros: n });
      total += n;
    } else {
      const n = Math.floor(rand() * 300 * KiB) + 1;
      const data = rand() < 0.5 ? textBytes(n, seed + p) : randomBytes(n, p);
      parts.push(data);
      total += n;
    }
  }
  parts.push({ zeros: 0 }, { zeros: 777 }, new Uint8Array([1, 2, 3]));
  total += 780;
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    if (p instanceof Uint8Array) {
      bytes.set(p, at);
      at += p.length;
    } else at += p.zeros;
  }
  return {
    bytes,
    chunks: () =>
      parts.map((p) => p instanceof Uint8Array ? p.slice() : { ...p }),
  };
}

/** A stream over chunks. */
export function streamOf<T>(chunks: T[]): ReadableStream<T> {
  return ReadableStream.from(chunks);
}

/** Reads the whole guest view of an image with our reader. */
export async function readBack(path: string): Promise<Uint8Array> {
  await using image = await openImage(path);
  const out = new Uint8Array(image.virtualSize);
  let at = 0;
  for await (const chunk of imageReadable(image, { chunkSize: 1 * MiB })) {
    out.set(chunk, at);
    at += chunk.length;
  }
  assert.strictEqual(at, image.virtualSize, "reader returned every byte");
  return out;
}

/** First index where two byte arrays differ, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Asserts that `image` holds `expected`, then only zeros. */
export function assertGuestBytes(image: Uint8Array, expected: Uint8Array) {
  const head = image.subarray(0, expected.length);
  const at = firstDifference(head, expected);
  assert.strictEqual(at, -1, `guest bytes differ at offset ${at}`);
  for (let i = expected.length; i < image.length; i++) {
    if (image[i] !== 0) assert.fail(`padding byte ${i} is ${image[i]}`);
  }
}

/** `qemu-img info --output=json` for a qcow2 image, parsed. */
export interface QemuInfo {
  "virtual-size": number;
  "cluster-size": number;
  format: string;
  "backing-filename"?: string;
  "format-specific": {
    type: string;
    data: {
      compat: string;
      "compression-type": string;
      "refcount-bits": number;
      corrupt?: boolean;
      "extended-l2"?: boolean;
    };
  };
}

/** Runs `qemu-img info --output=json`. */
export async function qemuInfo(path: string): Promise<QemuInfo> {
  const r = await runStatus("qemu-img", [
    "info",
    "--output=json",
    "-f",
    "qcow2",
    path,
  ]);
  assert.strictEqual(r.code, 0, `qemu-img info failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** What a converted image must show. */
export interface Expected {
  compression: "none" | "zlib" | "zstd";
  clusterSize: number;
  refcountBits: number;
}

/**
 * The full interoperability check of an image we wrote from `input`:
 * qemu-img check (clean), compare against the raw file (identical), info
 * (settings), and our reader (byte for byte). `raw` is the source written
 * to disk (created here when absent).
 */
export async function verifyImage(
  dir: string,
  image: string,
  input: Uint8Array,
  expected: Expected,
): Promise<{ check: QemuCheck; info: QemuInfo }> {
  const raw = join(dir, "source.raw");
  await Deno.writeFile(raw, input);
  const check = await qemuCheckClean(image);
  await qemuCompareIdentical(raw, image);
  const info = await qemuInfo(image);
  assert.strictEqual(info.format, "qcow2");
  assert.strictEqual(info["cluster-size"], expected.clusterSize);
  assert.strictEqual(info["virtual-size"], Math.ceil(input.length / 512) * 512);
  assert.strictEqual(info["format-specific"].data.compat, "1.1");
  assert.strictEqual(
    info["format-specific"].data["refcount-bits"],
    expected.refcountBits,
  );
  assert.strictEqual(
    info["format-specific"].data["compression-type"],
    expected.compression === "zstd" ? "zstd" : "zlib",
  );
  assert.strictEqual(info["format-specific"].data.corrupt, false);
  assertGuestBytes(await readBack(image), input);
  return { check, info };
}

/** Names in a directory. */
export async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

/** Whether a path exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** What auditRefcounts found. */
export interface Audit {
  clusterSize: number;
  /** Stored refcount per host cluster, up to the end of the file. */
  stored: number[];
  /** Compressed payloads starting or ending in each host cluster. */
  payloads: Map<number, number>;
  /** Payloads that touch two host clusters. */
  crossing: number;
  refcountBits: number;
}

/**
 * Reads every refcount of an image with the lib/format functions and
 * asserts that each equals the references QEMU's check would count: one for
 * the header, each L1, refcount table and refcount block cluster, each L2
 * table, each normal cluster, and one per compressed payload for every host
 * cluster its sector range touches. Entries past the end of the file must
 * be 0.
 */
export function auditRefcounts(image: Uint8Array): Audit {
  const header = parseHeader(image.subarray(0, 4096));
  const cs = 2 ** header.clusterBits;
  // our files end on a cluster boundary; QEMU's may end inside the last one
  const clusters = Math.ceil(image.length / cs);
  const expected = new Array<number>(clusters).fill(0);
  const ref = (offset: number, length: number) => {
    for (
      let c = Math.floor(offset / cs);
      c < Math.ceil((offset + length) / cs);
      c++
    ) {
      assert.ok(c < clusters, `reference to cluster ${c} past the file end`);
      expected[c]++;
    }
  };
  ref(0, cs); // header
  ref(header.l1TableOffset, header.l1Size * 8);
  ref(header.refcountTableOffset, header.refcountTableClusters * cs);
  const reftable = image.subarray(
    header.refcountTableOffset,
    header.refcountTableOffset + header.refcountTableClusters * cs,
  );
  const blockOffsets: number[] = [];
  for (let i = 0; i < reftable.length / 8; i++) {
    const e = decodeRefcountTableEntry(reftable, i);
    assert.strictEqual(e.reserved, false);
    blockOffsets.push(e.blockOffset);
    if (e.blockOffset) ref(e.blockOffset, cs);
  }
  const layout = {
    clusterBits: header.clusterBits,
    extendedL2: false,
    dataFile: false,
  };
  const l1 = image.subarray(
    header.l1TableOffset,
    header.l1TableOffset + header.l1Size * 8,
  );
  const payloads = new Map<number, number>();
  let crossing = 0;
  for (let i = 0; i < header.l1Size; i++) {
    const { l2Offset, reserved } = decodeL1Entry(l1, i);
    assert.strictEqual(reserved, false);
    if (!l2Offset) continue;
    ref(l2Offset, cs);
    const l2 = image.subarray(l2Offset, l2Offset + cs);
    for (let j = 0; j < cs / 8; j++) {
      const e = decodeL2Entry(l2, j, layout);
      if (e.type === "normal") {
        ref(e.hostOffset, cs);
      } else if (e.type === "compressed") {
        const { offset, length } = compressedRange(e.compressed!);
        ref(offset, length);
        const first = Math.floor(offset / cs);
        const last = Math.floor((offset + length - 1) / cs);
        if (last !== first) crossing++;
        for (let c = first; c <= last; c++) {
          payloads.set(c, (payloads.get(c) ?? 0) + 1);
        }
      }
    }
  }
  const order = header.refcountOrder;
  const perBlock = refcountBlockEntries(header.clusterBits, order);
  const stored: number[] = [];
  for (let b = 0; b < blockOffsets.length; b++) {
    if (blockOffsets[b] === 0) {
      // no block: every cluster it would cover must be past the file end
      assert.ok(b * perBlock >= clusters, `refcount block ${b} missing`);
      continue;
    }
    const block = image.subarray(blockOffsets[b], blockOffsets[b] + cs);
    for (let e = 0; e < perBlock; e++) {
      const c = b * perBlock + e;
      const value = getRefcount(block, e, order);
      if (c < clusters) stored[c] = value;
      else if (value !== 0) assert.fail(`refcount of cluster ${c} past EOF`);
    }
  }
  assert.ok(stored.length >= clusters, "refcount blocks cover the file");
  for (let c = 0; c < clusters; c++) {
    assert.strictEqual(
      stored[c],
      expected[c],
      `refcount of host cluster ${c} (offset ${c * cs})`,
    );
  }
  return {
    clusterSize: cs,
    stored: stored.slice(0, clusters),
    payloads,
    crossing,
    refcountBits: 1 << order,
  };
}
