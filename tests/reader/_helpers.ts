// Shared helpers for the reader interoperability tests (not a test file).
//
// The oracle is QEMU: every image is expanded with `qemu-img convert -O raw`
// and our reader must produce the same bytes through every path (stream with
// a worker pool, segments without a pool, random reads), and its extents
// must agree with `qemu-img map` on which ranges hold data.

import assert from "node:assert";
import { join } from "node:path";
import { openImage, type OpenImageOptions } from "../../lib/reader/open.ts";
import { imageReadable, readSegments } from "../../lib/reader/segments.ts";
import { expandToFile } from "../../lib/reader/expand.ts";
import type { ImageSink } from "../../lib/io/sink.ts";
import type { Extent, GuestImage } from "../../lib/reader/image.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { Qcow2Error, type Qcow2ErrorCode } from "../../lib/format/errors.ts";
import { parseHeader, type Qcow2Header } from "../../lib/format/header.ts";
import { qemuImg } from "../_qemu.ts";
import { prng } from "../../lib/_prng.ts";
export { prng };

export { qemuImg };

/**
 * Runs a command (in `cwd` when given) and returns stdout; throws with
 * stderr when it fails.
 */
export async function runIn(
  cwd: string | undefined,
  cmd: string,
  args: string[],
): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${
        dec.decode(out.stderr).trim()
      }`,
    );
  }
  return dec.decode(out.stdout);
}

/**
 * Deterministic bytes that compress somewhat but not trivially: runs of
 * words mixed with noise, so compressed clusters hold real deflate/zstd
 * streams and neighbouring clusters differ.
 */
export function mixedBytes(length: number, seed: number): Uint8Array {
  const rand = prng(seed);
  const out = new Uint8Array(length);
  const words = ["qcow2", "cluster", "refcount", "L2", "guest", "snapshot"];
  let i = 0;
  while (i < length) {
    const mode = rand();
    if (mode < 0.5) {
      const w = words[Math.floor(rand() * words.length)];
      for (let k = 0; k < w.length && i < length; k++) {
        out[i++] = w.charCodeAt(k);
      }
      if (i < length) out[i++] = 32;
    } else if (mode < 0.8) {
      const n = 1 + Math.floor(rand() * 64);
      for (let k = 0; k < n && i < length; k++) {
        out[i++] = Math.floor(rand() * 256);
      }
    } else {
      const n = 1 + Math.floor(rand() * 300);
      const b = Math.floor(rand() * 256);
      for (let k = 0; k < n && i < length; k++) out[i++] = b;
    }
  }
  return out;
}

/**
 * A raw file mixing compressible text, incompressible noise and zero runs,
 * in pieces of `piece` bytes; for `qemu-img convert -c`.
 */
export function mixedRaw(length: number, piece: number, seed: number) {
  const rand = prng(seed);
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += piece) {
    const n = Math.min(piece, length - at);
    const r = rand();
    if (r < 0.45) out.set(mixedBytes(n, seed + at), at);
    else if (r < 0.65) {
      for (let k = 0; k < n; k++) out[at + k] = Math.floor(rand() * 256);
    } else if (r < 0.8) out.fill(0x5a, at, at + n);
    // else zeros
  }
  return out;
}

/** Writes a pattern file for `qemu-io write -s` into `dir`. */
export async function patternFile(
  dir: string,
  seed: number,
  length = 12345,
): Promise<string> {
  const path = join(dir, `pattern-${seed}.bin`);
  await Deno.writeFile(path, mixedBytes(length, seed));
  return path;
}

/**
 * A generic mix of qemu-io writes for an image of `size` bytes with
 * `cs`-byte clusters: compressed writes (first, into fresh clusters),
 * full and partial cluster writes, unaligned offsets and lengths, zero
 * writes with and without unmap, discards, a partial overwrite of a
 * compressed cluster and an unaligned write at the end of the disk.
 */
export function scribble(
  size: number,
  cs: number,
  pattern: string,
  opts: { compress?: boolean } = {},
): string[] {
  const out: string[] = [];
  const at = (frac: number) => Math.floor(size * frac / cs) * cs;
  const add = (cmd: string, off: number, len: number) => {
    if (off < 0 || off >= size) return;
    len = Math.min(len, size - off);
    if (len > 0) out.push(`${cmd} ${off} ${len}`);
  };
  if (opts.compress) {
    const c = at(0.75);
    const whole = (n: number) =>
      c + n * cs <= size ? n * cs : Math.floor((size - c) / cs) * cs;
    if (whole(2) > 0) out.push(`write -q -c -s ${pattern} ${c} ${whole(2)}`);
    if (c + 3 * cs <= size) {
      out.push(`write -q -c -P 0x66 ${c + 2 * cs} ${cs}`);
    }
    const c2 = at(0.1);
    if (c2 + cs <= size && c2 + cs <= at(0.25)) {
      out.push(`write -q -c -s ${pattern} ${c2} ${cs}`);
    }
    // a partial overwrite of a compressed cluster (decompress, rewrite)
    add(`write -q -P 0x77`, c + cs + 100, 200);
  }
  const u = Math.min(cs, 65536);
  add(`write -q -s ${pattern}`, 0, 3 * u);
  add(`write -q -P 0x5a`, u + 123, 4567);
  add(`write -q -s ${pattern}`, at(0.25) + 777, u + 1001);
  add(`write -q -s ${pattern}`, at(0.4), 2 * cs);
  add(`write -q -z`, at(0.4), Math.max(512, cs / 2));
  add(`write -q -z -u`, at(0.4) + cs, cs);
  add(`write -q -P 0x11`, at(0.55), 2 * cs);
  add(`discard -q`, at(0.55), cs);
  add(`write -q -z`, at(0.6) + 513, 3000);
  add(`write -q -P 0x3c`, at(0.9) + 1, 999);
  add(`write -q -s ${pattern}`, size - 1234, 1234);
  return out;
}

/** Runs qemu-io commands in batches (one process per batch). */
export async function qemuIoAll(
  image: string,
  commands: string[],
  options: { format?: string; cwd?: string } = {},
): Promise<void> {
  for (let i = 0; i < commands.length; i += 40) {
    await runIn(options.cwd, "qemu-io", [
      "-f",
      options.format ?? "qcow2",
      ...commands.slice(i, i + 40).flatMap((c) => ["-c", c]),
      image,
    ]);
  }
}

let refCounter = 0;

/** What to expand with qemu-img. */
export interface QemuRawOptions {
  /** Snapshot name (`-l snapshot.name=`). */
  snapshotName?: string;
  /** Snapshot ID (`-l snapshot.id=`). */
  snapshotId?: string;
  /** The `-l ID_OR_NAME` form. */
  snapshotParam?: string;
  /** Working directory for qemu-img. */
  cwd?: string;
}

/** The guest bytes of an image as `qemu-img convert -O raw` writes them. */
export async function qemuRaw(
  image: string,
  dir: string,
  opts: QemuRawOptions = {},
): Promise<Uint8Array> {
  const out = join(dir, `ref-${refCounter++}-${crypto.randomUUID()}.raw`);
  const args = ["convert", "-O", "raw"];
  if (opts.snapshotName !== undefined) {
    args.push("-l", `snapshot.name=${opts.snapshotName}`);
  }
  if (opts.snapshotId !== undefined) {
    args.push("-l", `snapshot.id=${opts.snapshotId}`);
  }
  if (opts.snapshotParam !== undefined) args.push("-l", opts.snapshotParam);
  args.push(image, out);
  await runIn(opts.cwd, "qemu-img", args);
  try {
    return await Deno.readFile(out);
  } finally {
    await Deno.remove(out);
  }
}

/** One entry of `qemu-img map --output=json`. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** `qemu-img map --output=json IMAGE`. */
export async function qemuMap(
  image: string,
  cwd?: string,
): Promise<QemuMapEntry[]> {
  return JSON.parse(
    await runIn(cwd, "qemu-img", ["map", "--output=json", image]),
  );
}

/** The parsed header of an image file. */
export async function headerOf(path: string): Promise<Qcow2Header> {
  const file = await Deno.open(path);
  try {
    const buf = new Uint8Array(2 * 1024 * 1024);
    let n = 0;
    while (n < buf.length) {
      const r = await file.read(buf.subarray(n));
      if (r === null) break;
      n += r;
    }
    const head = buf.subarray(0, n);
    const cs = 2 ** new DataView(head.buffer).getUint32(20);
    return parseHeader(head.subarray(0, Math.min(n, cs)));
  } finally {
    file.close();
  }
}

/** Asserts two byte arrays are equal, naming the first differing offset. */
export function assertSameBytes(
  actual: Uint8Array,
  expected: Uint8Array,
  label: string,
): void {
  assert.strictEqual(
    actual.length,
    expected.length,
    `${label}: length ${actual.length}, expected ${expected.length}`,
  );
  const n = expected.length;
  // Compare 8 bytes at a time where possible.
  let i = 0;
  if (actual.byteOffset % 8 === 0 && expected.byteOffset % 8 === 0) {
    const a = new BigUint64Array(actual.buffer, actual.byteOffset, n >>> 3);
    const b = new BigUint64Array(expected.buffer, expected.byteOffset, n >>> 3);
    let w = 0;
    while (w < a.length && a[w] === b[w]) w++;
    i = w * 8;
  }
  while (i < n && actual[i] === expected[i]) i++;
  if (i < n) {
    const show = (x: Uint8Array) =>
      Array.from(x.subarray(i, Math.min(n, i + 16)))
        .map((v) => v.toString(16).padStart(2, "0")).join(" ");
    assert.fail(
      `${label}: first difference at byte ${i} (0x${i.toString(16)}): got [${
        show(actual)
      }], qemu-img has [${show(expected)}]`,
    );
  }
}

/** Expands an image through `imageReadable` (with a pool when given). */
export async function expandStream(
  image: GuestImage,
  pool?: CodecPool,
  chunkSize?: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(image.virtualSize);
  let at = 0;
  for await (const chunk of imageReadable(image, { pool, chunkSize })) {
    assert.ok(
      at + chunk.length <= out.length,
      `stream runs past the virtual size ${out.length}`,
    );
    out.set(chunk, at);
    at += chunk.length;
  }
  assert.strictEqual(at, out.length, "stream length");
  return out;
}

/**
 * Expands an image into memory through `expandToFile`, as `convert -O raw`
 * does: its read buffers go round (and are poisoned in debug mode when
 * they do), so a segment read after its buffer went back shows.
 */
export async function expandToMemory(
  image: GuestImage,
  options: { pool?: CodecPool; chunkSize?: number } = {},
): Promise<Uint8Array> {
  const out = new Uint8Array(image.virtualSize);
  const sink: ImageSink = {
    writeAt(offset, data) {
      out.set(data, offset);
      return Promise.resolve();
    },
    commit: () => Promise.resolve(),
    abort: () => Promise.resolve(),
  };
  await expandToFile(image, sink, options);
  return out;
}

/**
 * Expands an image through `readSegments`, checking the segments are in
 * order, contiguous and consistent.
 */
export async function expandSegments(
  image: GuestImage,
  options: { pool?: CodecPool; chunkSize?: number; maxInFlight?: number } = {},
): Promise<Uint8Array> {
  const out = new Uint8Array(image.virtualSize);
  let at = 0;
  for await (const s of readSegments(image, options)) {
    assert.strictEqual(s.offset, at, "segments are contiguous and in order");
    assert.ok(s.length > 0 || image.virtualSize === 0, "empty segment");
    if (s.data) {
      assert.strictEqual(s.data.length, s.length, "segment data length");
      if (options.chunkSize) {
        assert.ok(s.length <= options.chunkSize + 2 * 1024 * 1024);
      }
      out.set(s.data, s.offset);
    }
    at += s.length;
  }
  assert.strictEqual(at, out.length, "segments cover the disk");
  return out;
}

/** Lists all extents and checks they tile `[0, virtualSize)`. */
export async function tiledExtents(image: GuestImage): Promise<Extent[]> {
  const list: Extent[] = [];
  let at = 0;
  for await (const e of image.extents()) {
    assert.strictEqual(e.offset, at, `extent at ${e.offset}: gap or overlap`);
    assert.ok(e.length > 0, `extent at ${e.offset} is empty`);
    assert.ok(
      ["data", "compressed", "zero", "unallocated"].includes(e.kind),
      `extent kind ${e.kind}`,
    );
    if (e.kind === "data" || e.kind === "compressed") {
      assert.ok(
        e.hostOffset !== undefined && e.hostOffset >= 0,
        `${e.kind} extent at ${e.offset} has a host offset`,
      );
    } else {
      assert.strictEqual(e.hostOffset, undefined);
    }
    list.push(e);
    at += e.length;
  }
  assert.strictEqual(at, image.virtualSize, "extents cover the disk");
  return list;
}

/** Depths of the chain whose images are raw (qemu maps their holes). */
function rawDepths(image: GuestImage): Set<number> {
  const out = new Set<number>();
  let depth = 0;
  for (let img: GuestImage | undefined = image; img; img = img.backing) {
    if (img.format === "raw") out.add(depth);
    depth++;
  }
  return out;
}

/**
 * Checks our extents against `qemu-img map`: where a qcow2 layer answers,
 * ours is data/compressed exactly where qemu says `"data": true`, and at
 * the same depth when the range is present in some layer.
 */
export function compareWithMap(
  image: GuestImage,
  ours: Extent[],
  map: QemuMapEntry[],
): void {
  const raw = rawDepths(image);
  let j = 0;
  for (const e of ours) {
    const end = e.offset + e.length;
    while (j < map.length && map[j].start + map[j].length <= e.offset) j++;
    for (let k = j; k < map.length && map[k].start < end; k++) {
      const q = map[k];
      const where = `[${Math.max(e.offset, q.start)}, ${
        Math.min(end, q.start + q.length)
      })`;
      if (raw.has(e.depth)) continue;
      const ourData = e.kind === "data" || e.kind === "compressed";
      assert.strictEqual(
        ourData,
        q.data,
        `${where}: our extent is ${e.kind} (depth ${e.depth}), qemu-img map says data=${q.data} zero=${q.zero} depth=${q.depth}`,
      );
      if (e.kind !== "unallocated" && q.present) {
        assert.strictEqual(e.depth, q.depth, `${where}: depth`);
      }
      if (e.kind === "data" && q.offset !== undefined) {
        const at = Math.max(e.offset, q.start);
        assert.strictEqual(
          e.hostOffset! + (at - e.offset),
          q.offset + (at - q.start),
          `${where}: host offset`,
        );
      }
      if (e.kind === "zero") {
        assert.ok(q.zero, `${where}: we read zeros, qemu-img map says not`);
      }
    }
  }
}

/** Random reads at unaligned offsets, compared with the expected bytes. */
export async function spotCheckReadAt(
  image: GuestImage,
  expected: Uint8Array,
  seed: number,
  count = 24,
): Promise<void> {
  const rand = prng(seed);
  const size = expected.length;
  const probes: Array<[number, number]> = [[0, Math.min(size, 1)], [
    Math.max(0, size - 1),
    Math.min(size, 1),
  ], [0, 0]];
  for (let i = 0; i < count; i++) {
    const off = Math.floor(rand() * size);
    const maxLen = rand() < 0.3 ? 300_000 : 5000;
    const len = Math.min(size - off, 1 + Math.floor(rand() * maxLen));
    probes.push([off, len]);
  }
  for (const [off, len] of probes) {
    const got = await image.readAt(off, len);
    assertSameBytes(
      got,
      expected.subarray(off, off + len),
      `readAt(${off}, ${len})`,
    );
  }
  await assert.rejects(
    image.readAt(size, 1),
    RangeError,
    "reading past the virtual disk is a RangeError",
  );
}

/** What {@linkcode verifyImage} checks beyond the bytes. */
export interface VerifyOptions extends QemuRawOptions {
  /** Options for `openImage` (snapshot, ...). */
  open?: OpenImageOptions;
  /** Path given to `openImage` when it differs from the qemu path. */
  openPath?: string;
  /** Compare extents with `qemu-img map` (default: true). */
  map?: boolean;
  /** Seed of the random reads. */
  seed?: number;
  /** Chunk size for the segment path (default 64 KiB to stress grouping). */
  chunkSize?: number;
}

/** What {@linkcode verifyImage} found, for extra assertions. */
export interface Verified {
  expected: Uint8Array;
  extents: Extent[];
  format: string;
  virtualSize: number;
}

/**
 * The interoperability bar: our expansion of `path` equals qemu-img's raw
 * output byte for byte, through the pooled stream, the pool-less segments
 * and random reads; and the extents tile the disk and agree with
 * `qemu-img map`.
 */
export async function verifyImage(
  path: string,
  dir: string,
  options: VerifyOptions = {},
): Promise<Verified> {
  const snap = options.snapshotName ?? options.snapshotId ??
    options.snapshotParam;
  let expected: Uint8Array;
  let map: QemuMapEntry[] | undefined;
  if (snap === undefined) {
    expected = await qemuRaw(path, dir, options);
    map = options.map === false ? undefined : await qemuMap(path, options.cwd);
  } else {
    // `qemu-img convert -l` reads the snapshot's tables but keeps the
    // active disk size; reverting a copy with `qemu-img snapshot -a` gives
    // the snapshot's own size (what the guest saw) and a map of it.
    const viaLoad = await qemuRaw(path, dir, options);
    const copy = `${path}.revert-${refCounter++}`;
    await Deno.copyFile(path, copy);
    try {
      await runIn(options.cwd, "qemu-img", ["snapshot", "-a", snap, copy]);
      expected = await qemuRaw(copy, dir, { cwd: options.cwd });
      map = options.map === false
        ? undefined
        : await qemuMap(copy, options.cwd);
    } finally {
      await Deno.remove(copy);
    }
    const common = Math.min(viaLoad.length, expected.length);
    assertSameBytes(
      viaLoad.subarray(0, common),
      expected.subarray(0, common),
      `${path}: qemu-img convert -l ${snap} vs qemu-img snapshot -a ${snap}`,
    );
  }
  await using pool = new CodecPool({ workers: 2 });
  await using image = await openImage(options.openPath ?? path, options.open);
  assert.strictEqual(image.virtualSize, expected.length, "virtual size");

  assertSameBytes(
    await expandStream(image, pool),
    expected,
    `${path}: imageReadable with a 2-worker pool`,
  );
  assertSameBytes(
    await expandSegments(image, {
      chunkSize: options.chunkSize ?? 65536,
      maxInFlight: 3,
    }),
    expected,
    `${path}: readSegments without a pool`,
  );
  assertSameBytes(
    await expandToMemory(image, {
      pool,
      chunkSize: options.chunkSize ?? 65536,
    }),
    expected,
    `${path}: expandToFile, its read buffers going round`,
  );
  // A sub-range at unaligned bounds, through the pool.
  const size = expected.length;
  const from = Math.floor(size / 3) + 123 > size
    ? 0
    : Math.floor(size / 3) + 123;
  const span = Math.min(size - from, Math.floor(size / 3) + 4567);
  const part = new Uint8Array(span);
  let at = from;
  for await (
    const s of readSegments(image, { pool, offset: from, length: span })
  ) {
    assert.strictEqual(s.offset, at, "sub-range segments are contiguous");
    if (s.data) part.set(s.data, s.offset - from);
    at += s.length;
  }
  assert.strictEqual(at, from + span, "sub-range covered");
  assertSameBytes(
    part,
    expected.subarray(from, from + span),
    `${path}: readSegments of [${from}, ${from + span})`,
  );
  await spotCheckReadAt(image, expected, options.seed ?? 1);
  const extents = await tiledExtents(image);
  if (map) compareWithMap(image, extents, map);
  return {
    expected,
    extents,
    format: image.format,
    virtualSize: image.virtualSize,
  };
}

/** Total bytes of the extents of a kind. */
export function bytesOf(extents: Extent[], kind: Extent["kind"]): number {
  return extents.filter((e) => e.kind === kind).reduce(
    (n, e) => n + e.length,
    0,
  );
}

/** Asserts that `fn` rejects with a Qcow2Error of `code` naming `fragment`. */
export async function assertQcow2Rejects(
  fn: () => Promise<unknown>,
  code: Qcow2ErrorCode,
  fragment: string | RegExp,
): Promise<Qcow2Error> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(
    caught instanceof Qcow2Error,
    `expected a Qcow2Error ${code}, got ${
      caught === undefined ? "no error" : String(caught)
    }`,
  );
  assert.strictEqual(
    caught.code,
    code,
    `code of "${caught.message}"`,
  );
  assert.ok(!caught.message.includes("\n"), "one-line message");
  assert.match(caught.message, /^Cannot /);
  if (typeof fragment === "string") {
    assert.ok(
      caught.message.includes(fragment),
      `message "${caught.message}" should mention "${fragment}"`,
    );
  } else {
    assert.match(caught.message, fragment);
  }
  return caught;
}

/** Reads a big-endian u64 (as a number) from a file. */
export async function readU64At(path: string, offset: number): Promise<number> {
  const b = await readAtFile(path, offset, 8);
  return Number(new DataView(b.buffer).getBigUint64(0));
}

/** Reads bytes of a file. */
export async function readAtFile(
  path: string,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const file = await Deno.open(path);
  try {
    await file.seek(offset, Deno.SeekMode.Start);
    const out = new Uint8Array(length);
    let n = 0;
    while (n < length) {
      const r = await file.read(out.subarray(n));
      if (r === null) break;
      n += r;
    }
    return out.subarray(0, n);
  } finally {
    file.close();
  }
}

/** Overwrites bytes of a file in place. */
export async function patchFile(
  path: string,
  offset: number,
  bytes: Uint8Array,
): Promise<void> {
  const file = await Deno.open(path, { write: true });
  try {
    await file.seek(offset, Deno.SeekMode.Start);
    let n = 0;
    while (n < bytes.length) n += await file.write(bytes.subarray(n));
  } finally {
    file.close();
  }
}

/** Big-endian bytes of a u32. */
export function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0);
  return b;
}

/** Big-endian bytes of a u64. */
export function u64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v));
  return b;
}
