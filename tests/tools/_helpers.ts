// Shared helpers for the tools tests (not a test file): building images
// with qemu-img/qemu-io, reading their tables, and breaking them on purpose.

import assert from "node:assert";
import {
  checkImage,
  type CheckResult,
  formatCheckJson,
  formatCheckResult,
  formatImageInfo,
  formatImageInfoJson,
  formatMapJson,
  imageInfo,
  mapImage,
} from "../../lib/tools/mod.ts";
import { join } from "node:path";
import { qemuImg, qemuIo, readAt, run, runStatus } from "../_qemu.ts";
import { mulberry32 } from "../../lib/_prng.ts";

export { qemuImg, qemuIo, run, runStatus };

/** The repository root (where cli.ts lives). */
export const ROOT = new URL("../../", import.meta.url).pathname;

export { readAt };

/** Overwrites bytes of a file in place. */
export async function patch(
  path: string,
  offset: number,
  bytes: Uint8Array,
): Promise<void> {
  using file = await Deno.open(path, { write: true });
  await file.seek(offset, Deno.SeekMode.Start);
  let n = 0;
  while (n < bytes.length) n += await file.write(bytes.subarray(n));
}

/** Big-endian u64 bytes. */
export function be64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v));
  return b;
}

/** Big-endian u16 bytes. */
export function be16(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v);
  return b;
}

/** A big-endian u64 of a file. */
export async function u64At(path: string, offset: number): Promise<bigint> {
  const b = await readAt(path, offset, 8);
  return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0);
}

/** The header fields the tests need. */
export interface Layout {
  clusterSize: number;
  refcountOrder: number;
  l1Offset: number;
  l1Size: number;
  reftableOffset: number;
  extendedL2: boolean;
}

/** Reads the layout fields of a qcow2 header. */
export async function layoutOf(path: string): Promise<Layout> {
  const h = await readAt(path, 0, 112);
  const v = new DataView(h.buffer, h.byteOffset, h.byteLength);
  const version = v.getUint32(4);
  return {
    clusterSize: 2 ** v.getUint32(20),
    refcountOrder: version === 3 ? v.getUint32(96) : 4,
    l1Offset: Number(v.getBigUint64(40)),
    l1Size: v.getUint32(36),
    reftableOffset: Number(v.getBigUint64(48)),
    extendedL2: version === 3 && (v.getBigUint64(72) & 16n) !== 0n,
  };
}

/** Host offset of the L2 table for guest offset `guest` (0 when none). */
export async function l2OffsetOf(path: string, guest: number): Promise<number> {
  const l = await layoutOf(path);
  const entries = l.clusterSize / (l.extendedL2 ? 16 : 8);
  const index = Math.floor(guest / (l.clusterSize * entries));
  return Number(
    await u64At(path, l.l1Offset + index * 8) & 0x00fffffffffffe00n,
  );
}

/** File offset of the L2 entry for guest offset `guest`. */
export async function l2EntryAt(path: string, guest: number): Promise<number> {
  const l = await layoutOf(path);
  const entries = l.clusterSize / (l.extendedL2 ? 16 : 8);
  const cluster = Math.floor(guest / l.clusterSize);
  const table = await l2OffsetOf(path, guest);
  return table + (cluster % entries) * (l.extendedL2 ? 16 : 8);
}

/** Host offset of the data cluster holding guest offset `guest`. */
export async function hostClusterOf(
  path: string,
  guest: number,
): Promise<number> {
  return Number(
    await u64At(path, await l2EntryAt(path, guest)) & 0x00fffffffffffe00n,
  );
}

/** Where the stored refcount of host cluster `cluster` lives: byte offset and bit shift. */
export async function refcountSlot(
  path: string,
  cluster: number,
): Promise<{ offset: number; bits: number; shift: number }> {
  const l = await layoutOf(path);
  const bits = 2 ** l.refcountOrder;
  const perBlock = l.clusterSize * 8 / bits;
  const block = Number(
    await u64At(path, l.reftableOffset + Math.floor(cluster / perBlock) * 8) &
      ~0x1ffn,
  );
  if (block === 0) throw new Error(`no refcount block for cluster ${cluster}`);
  const bit = (cluster % perBlock) * bits;
  return { offset: block + Math.floor(bit / 8), bits, shift: bit % 8 };
}

/** Sets the stored refcount of a host cluster (any refcount width). */
export async function setRefcount(
  path: string,
  cluster: number,
  value: number,
): Promise<void> {
  const s = await refcountSlot(path, cluster);
  if (s.bits >= 8) {
    const b = new Uint8Array(s.bits / 8);
    let v = BigInt(value);
    for (let i = b.length - 1; i >= 0; i--) {
      b[i] = Number(v & 0xffn);
      v >>= 8n;
    }
    await patch(path, s.offset, b);
    return;
  }
  const old = (await readAt(path, s.offset, 1))[0];
  const mask = ((1 << s.bits) - 1) << s.shift;
  await patch(
    path,
    s.offset,
    new Uint8Array([(old & ~mask) | ((value << s.shift) & mask)]),
  );
}

/** The stored refcount of a host cluster. */
export async function getRefcount(
  path: string,
  cluster: number,
): Promise<number> {
  const s = await refcountSlot(path, cluster);
  const b = await readAt(path, s.offset, Math.max(1, s.bits / 8));
  if (s.bits >= 8) {
    let v = 0n;
    for (const x of b) v = (v << 8n) | BigInt(x);
    return Number(v);
  }
  return (b[0] >> s.shift) & ((1 << s.bits) - 1);
}

/**
 * `deno run -A cli.ts ARGS...`, or with other permission `flags` (and no
 * prompt), in `cwd`.
 */
export async function cli(
  args: string[],
  opts: { cwd?: string; flags?: string[]; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const flags = opts.flags ? ["--no-prompt", ...opts.flags] : ["-A"];
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...flags, "--quiet", join(ROOT, "cli.ts"), ...args],
    cwd: opts.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...opts.env },
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** qemu-img run in `cwd`, with its status and outputs. */
export async function qemuIn(
  cwd: string,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("qemu-img", {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/**
 * Asserts an error is one line on stderr (`qcow2pipe: Cannot ...` unless
 * `start` says otherwise) matching `pattern`, no stack trace, and `stdout`
 * (nothing, unless given) on stdout.
 */
export function assertOneLineError(
  r: { stdout: string; stderr: string },
  pattern: RegExp,
  options: { stdout?: string; start?: RegExp } = {},
): void {
  assert.strictEqual(r.stdout, options.stdout ?? "");
  const lines = r.stderr.trimEnd().split("\n");
  assert.strictEqual(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], options.start ?? /^qcow2pipe: Cannot /);
  assert.match(lines[0], pattern);
  assert.ok(!/\bat \S+:\d+:\d+/.test(r.stderr), "no stack trace");
}

/** `qemu-img ARGS...` with its exit status and both outputs. */
export function qemuStatus(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runStatus("qemu-img", args);
}

// ---------------------------------------------------------------------------
// Comparisons with qemu-img: the oracle for every tool.

/** Asserts `info --json` and the human form equal qemu-img's, byte for byte. */
export async function assertInfoLikeQemu(
  path: string,
  options: { chain?: boolean; format?: "qcow2" } = {},
): Promise<void> {
  const chain = options.chain ?? false;
  const flags = [
    ...(chain ? ["--backing-chain"] : []),
    ...(options.format ? ["-f", options.format] : []),
  ];
  const info = await imageInfo(path, {
    backingChain: chain,
    format: options.format,
  });
  const json = await qemuImg("info", "--output=json", ...flags, path);
  assert.deepStrictEqual(
    JSON.parse(formatImageInfoJson(info, chain)),
    JSON.parse(json),
    `${path}: info JSON`,
  );
  assert.strictEqual(
    formatImageInfoJson(info, chain) + "\n",
    json,
    `${path}: info JSON text`,
  );
  assert.strictEqual(
    formatImageInfo(info, chain),
    await qemuImg("info", ...flags, path),
    `${path}: info human text`,
  );
}

/** Asserts our map equals `qemu-img map --output=json`, byte for byte. */
export async function assertMapLikeQemu(
  path: string,
  options: { format?: "qcow2" } = {},
): Promise<void> {
  const ours = formatMapJson(await mapImage(path, { format: options.format }));
  const flags = options.format ? ["-f", options.format] : [];
  assert.strictEqual(
    ours,
    await qemuImg("map", "--output=json", ...flags, path),
    `${path}: map`,
  );
}

/**
 * Asserts our check agrees with `qemu-img check`: exit status, summary,
 * each message (qemu-img's stderr lines), and the JSON form.
 */
export async function assertCheckLikeQemu(path: string): Promise<CheckResult> {
  const result = await checkImage(path);
  const q = await qemuStatus("check", path);
  assert.strictEqual(
    result.exitCode,
    q.code,
    `${path}: exit status (qemu-img: ${q.stderr})`,
  );
  // QEMU's warning about bitmaps it must ignore ends without a newline.
  const lines = q.stderr
    .replace(/^Some clusters may be leaked, .*? to fix\./m, "")
    .split("\n").filter((l) => l !== "" && !l.startsWith("qemu-img:"));
  assert.deepStrictEqual(result.messages, lines, `${path}: messages`);
  if (result.failure === undefined) {
    assert.strictEqual(formatCheckResult(result), q.stdout, `${path}: summary`);
    const j = await qemuStatus("check", "--output=json", path);
    assert.strictEqual(
      formatCheckJson(result) + "\n",
      j.stdout,
      `${path}: JSON`,
    );
  }
  return result;
}

/** Deterministic bytes: a mulberry32 stream, compressible in parts. */
export function pattern(length: number, seed: number): Uint8Array {
  const next = mulberry32(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 4) {
    let t = next();
    // Every other 4 KiB is text-like, so compression has something to do.
    if ((i >> 12) % 2 === 0) t = 0x61616161 + (t & 0x07070707);
    out[i] = t >>> 24;
    if (i + 1 < length) out[i + 1] = t >>> 16;
    if (i + 2 < length) out[i + 2] = t >>> 8;
    if (i + 3 < length) out[i + 3] = t;
  }
  return out;
}

/** Creates a qcow2 image with qemu-img and fills it with qemu-io commands. */
export async function makeImage(
  path: string,
  size: string,
  options: string[] = [],
  commands: string[] = [],
): Promise<string> {
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    ...options.flatMap((o) => ["-o", o]),
    path,
    size,
  );
  for (let i = 0; i < commands.length; i += 40) {
    await qemuIo(path, commands.slice(i, i + 40));
  }
  return path;
}

/**
 * A 4 MiB qcow2 image made by qemu-img/qemu-io with data (0-192k),
 * compressed (1M), zero (2M) and data (3M) clusters: the image the broken
 * and repair tests break on purpose.
 */
export function smallMixedImage(
  path: string,
  options: string[] = [],
): Promise<string> {
  return makeImage(path, "4M", options, [
    "write -q -P 1 0 192k",
    "write -q -c -P 2 1M 64k",
    "write -q -z 2M 64k",
    "write -q -P 3 3M 64k",
  ]);
}

/** qemu-io writes of every kind for an image of `size` bytes with `cs`-byte clusters. */
export function mixedWrites(
  size: number,
  cs: number,
  opts: { compress?: boolean; v2?: boolean } = {},
): string[] {
  const at = (f: number) => Math.floor(size * f / cs) * cs;
  const out = [
    `write -q -P 0x11 0 ${Math.min(3 * cs, size)}`,
    `write -q -P 0x22 ${at(0.3) + 123} 4567`,
    `write -q -P 0x33 ${at(0.5)} ${2 * cs}`,
    `write -q -z ${at(0.5)} ${cs}`,
    `discard -q ${at(0.7)} ${cs}`,
    `write -q -P 0x44 ${size - 1000} 1000`,
  ];
  if (!opts.v2) out.push(`write -q -z -u ${at(0.6)} ${2 * cs}`);
  if (opts.compress) {
    out.unshift(
      `write -q -c -P 0x55 ${at(0.8)} ${cs}`,
      `write -q -c -P 0x66 ${at(0.8) + cs} ${cs}`,
    );
  }
  return out;
}

/**
 * `qemu-img create` of an encrypted image. QEMU times PBKDF2 with the
 * thread CPU clock and fails ("Unable to get accurate CPU usage") when a
 * busy machine gives it a zero reading; try again then.
 */
export async function createEncrypted(
  path: string,
  format: "luks" | "aes",
): Promise<void> {
  const options = `encrypt.format=${format},encrypt.key-secret=s0` +
    (format === "luks" ? ",encrypt.iter-time=10" : "");
  const args = [
    "create",
    "-q",
    "-f",
    "qcow2",
    "--object",
    "secret,id=s0,data=pw",
    "-o",
    options,
    path,
    "4M",
  ];
  for (let attempt = 1;; attempt++) {
    const r = await runStatus("qemu-img", args);
    if (r.code === 0) return;
    if (attempt === 5 || !r.stderr.includes("accurate CPU usage")) {
      throw new Error(`qemu-img ${args.join(" ")} failed: ${r.stderr.trim()}`);
    }
  }
}
