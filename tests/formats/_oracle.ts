// The checks every image format read is held to (not a test file): qemu-img
// and 7-Zip as oracles for the guest bytes, `info`, `map` and a conversion
// to qcow2, and a seeded hostile-input loop over mutated copies.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuCompareIdentical, runStatus } from "../_qemu.ts";
import { SEVEN_ZIP, withTool } from "../_tools.ts";
import { runCli } from "../writer/_cli.ts";
import {
  assertSameBytes,
  expandSegments,
  prng,
  qemuMap,
  type QemuMapEntry,
  qemuRaw,
} from "../reader/_helpers.ts";
import { openImage } from "../../lib/reader/open.ts";
import { readSegments } from "../../lib/reader/segments.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { BytesSource } from "../../lib/io/source.ts";
import { Qcow2Error } from "../../lib/format/errors.ts";
import { imageInfo } from "../../lib/tools/info.ts";
import { mapImage } from "../../lib/tools/map.ts";
import { checkImage } from "../../lib/tools/check.ts";
import type { FormatName } from "../../lib/reader/formats.ts";

const decoder = new TextDecoder();

/** What to hold an image to. */
export interface OracleOptions {
  /** Its format, as qemu-img names it. */
  format: string;
  /** Whether 7-Zip reads it (no backing file). */
  sevenZip?: boolean;
  /** Working directory for relative backing names. */
  cwd?: string;
}

/** The ranges of a map as (start, length, kind) after merging like runs. */
function coverage(
  entries: QemuMapEntry[],
): { start: number; length: number; kind: string }[] {
  const out: { start: number; length: number; kind: string }[] = [];
  for (const e of entries) {
    const kind = `${e.data ? "data" : "-"}/${e.zero ? "zero" : "-"}/${
      e.present ? "present" : "-"
    }/${e.depth}`;
    const last = out.at(-1);
    if (last && last.kind === kind && last.start + last.length === e.start) {
      last.length += e.length;
    } else out.push({ start: e.start, length: e.length, kind });
  }
  return out;
}

/**
 * (a) `convert -O raw` and the library's expansion byte-identical to
 * `qemu-img convert -O raw`; (b) `convert -O qcow2` identical by `qemu-img
 * compare` and clean by `qemu-img check`; (c) `info` as qemu-img's (text
 * and JSON: format, virtual size, disk size, cluster size, backing file);
 * (d) `map --output=json` with qemu-img's data/zero coverage; (e) 7-Zip's
 * extraction (where it reads the format) with the same bytes.
 */
export async function holdToOracles(
  image: string,
  dir: string,
  options: OracleOptions,
): Promise<void> {
  const { format } = options;
  const reference = await qemuRaw(image, dir, { cwd: options.cwd });

  // (a) the CLI, probed and named, and the library through the pool.
  for (const args of [[], ["-f", format]]) {
    const out = join(dir, `ours-${crypto.randomUUID()}.raw`);
    const r = await runCli(["convert", ...args, "-O", "raw", image, out], {
      cwd: options.cwd,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assertSameBytes(
      await Deno.readFile(out),
      reference,
      `convert -O raw ${args}`,
    );
    await Deno.remove(out);
  }
  {
    await using opened = await openImage(image, {
      format: format as FormatName,
    });
    assert.strictEqual(opened.format, format);
    await using pool = new CodecPool({ workers: 2 });
    assertSameBytes(
      await expandSegments(opened, { pool, chunkSize: 1 << 20 }),
      reference,
      "readSegments with a pool",
    );
    // Random reads across block and cluster boundaries.
    const rand = prng(opened.virtualSize);
    for (let i = 0; i < 20; i++) {
      const at = Math.floor(rand() * opened.virtualSize);
      const n = Math.min(
        opened.virtualSize - at,
        1 + Math.floor(rand() * 200_000),
      );
      assertSameBytes(
        await opened.readAt(at, n),
        reference.subarray(at, at + n),
        `readAt(${at}, ${n})`,
      );
    }
  }

  // (b) to qcow2, judged by qemu-img.
  const qcow2 = join(dir, `ours-${crypto.randomUUID()}.qcow2`);
  const c = await runCli(["convert", "-O", "qcow2", image, qcow2], {
    cwd: options.cwd,
  });
  assert.strictEqual(c.code, 0, c.stderr);
  await qemuCompareIdentical(image, qcow2, [format, "qcow2"]);
  await qemuCheckClean(qcow2);
  // Our compare agrees.
  const same = await runCli(["compare", image, qcow2], { cwd: options.cwd });
  assert.strictEqual(same.code, 0, same.stderr);
  assert.strictEqual(decoder.decode(same.stdout), "Images are identical.\n");
  await Deno.remove(qcow2);

  // (c) info, text and JSON, alone and with the backing chain.
  for (
    const [json, flags] of [
      [false, []],
      [true, ["--output=json"]],
      [false, ["--backing-chain"]],
    ] as const
  ) {
    const ours = await runCli(["info", ...flags, image], { cwd: options.cwd });
    assert.strictEqual(ours.code, 0, ours.stderr);
    const theirs = await runStatus("qemu-img", ["info", ...flags, image]);
    const text = decoder.decode(ours.stdout);
    if (json) {
      assert.deepStrictEqual(JSON.parse(text), JSON.parse(theirs.stdout));
    } else {
      const lines = (s: string) =>
        s.split("\n").filter((l) =>
          /^(file format|virtual size|disk size|cluster_size|backing file):/
            .test(l)
        );
      assert.deepStrictEqual(lines(text), lines(theirs.stdout));
      assert.strictEqual(text, theirs.stdout);
    }
  }

  // (d) map: the same data and zero coverage.
  const ours = await runCli(["map", "--output=json", image], {
    cwd: options.cwd,
  });
  assert.strictEqual(ours.code, 0, ours.stderr);
  assert.deepStrictEqual(
    coverage(JSON.parse(decoder.decode(ours.stdout))),
    coverage(await qemuMap(image, options.cwd)),
  );

  // (f) check: QEMU's verdict on a clean image (or its refusal, 63).
  await assertCheckAsQemu(image, { cwd: options.cwd });

  // (e) 7-Zip, a second reader of the format.
  if (options.sevenZip) {
    await withTool(SEVEN_ZIP, async () => {
      const out = join(dir, `7z-${crypto.randomUUID()}`);
      const r = await runStatus("7zz", ["x", "-y", `-o${out}`, image]);
      assert.strictEqual(r.code, 0, r.stdout + r.stderr);
      const [file] = await Array.fromAsync(Deno.readDir(out));
      const bytes = await Deno.readFile(join(out, file.name));
      assertSameBytes(bytes, reference, "7zz x");
      await Deno.remove(out, { recursive: true });
    });
  }
}

/**
 * Asserts `check` (human and `--output=json`) says what `qemu-img check`
 * says of `image`: the same standard output and exit status, and the same
 * lines on standard error once each program's name is taken off. Where
 * qemu-img ends with `Check failed: E`, ours names the image first
 * (`Cannot check IMAGE: Check failed: E`).
 *
 * @returns qemu-img's exit status.
 */
export async function assertCheckAsQemu(
  image: string,
  options: { format?: string; cwd?: string } = {},
): Promise<number> {
  const flags = options.format ? ["-f", options.format] : [];
  const lines = (text: string, program: string) =>
    text.split("\n").filter((l) => l !== "").map((l) =>
      l.replace(`${program}: `, "").replace(
        /^Cannot check .*?: (Check failed: )/,
        "$1",
      )
    );
  let code = 0;
  for (const output of ["human", "json"]) {
    const args = ["check", `--output=${output}`, ...flags, image];
    const theirs = await runStatus("qemu-img", args);
    const ours = await runCli(args, { cwd: options.cwd });
    const what = `${
      args.join(" ")
    }\nqemu-img: ${theirs.stderr}\nours: ${ours.stderr}`;
    assert.strictEqual(ours.code, theirs.code, what);
    assert.strictEqual(decoder.decode(ours.stdout), theirs.stdout, what);
    assert.deepStrictEqual(
      lines(ours.stderr, "qcow2pipe"),
      lines(theirs.stderr, "qemu-img"),
      what,
    );
    code = theirs.code;
  }
  return code;
}

/**
 * `qemu-img convert -q ARGS... SRC DST`. qemu-img 7.2's `convert -c -O
 * qcow` writes the whole image and then exits 1 without a message (its
 * final empty compressed write is refused by the qcow driver): that run is
 * accepted when `qemu-img compare` finds DST identical to SRC.
 */
export async function qemuConvert(...args: string[]): Promise<void> {
  const r = await runStatus("qemu-img", ["convert", "-q", ...args]);
  if (r.code === 0) return;
  const [src, dst] = args.slice(-2);
  const toQcowCompressed = args.includes("-c") &&
    args[args.indexOf("-O") + 1] === "qcow";
  if (toQcowCompressed && r.stderr.trim() === "") {
    const same = await runStatus("qemu-img", [
      "compare",
      "-F",
      "qcow",
      src,
      dst,
    ]);
    if (same.code === 0) return;
  }
  throw new Error(`qemu-img convert ${args.join(" ")} failed: ${r.stderr}`);
}

/** A mutation of an image's bytes. */
export type Mutation = (bytes: Uint8Array, rand: () => number) => Uint8Array;

/** Writes a u32 (big or little endian) at a byte offset of a copy. */
export function setU32(
  bytes: Uint8Array,
  at: number,
  value: number,
  little: boolean,
): Uint8Array {
  const out = bytes.slice();
  if (at + 4 <= out.length) {
    new DataView(out.buffer).setUint32(at, value >>> 0, little);
  }
  return out;
}

/** Writes a u64 (big or little endian) at a byte offset of a copy. */
export function setU64(
  bytes: Uint8Array,
  at: number,
  value: bigint,
  little: boolean,
): Uint8Array {
  const out = bytes.slice();
  if (at + 8 <= out.length) {
    new DataView(out.buffer).setBigUint64(
      at,
      BigInt.asUintN(64, value),
      little,
    );
  }
  return out;
}

/** A value an attacker would try in a 32-bit field. */
export function nastyU32(rand: () => number): number {
  const picks = [
    0,
    1,
    0x1ff,
    0x200,
    0x7fffffff,
    0x80000000,
    0xfffffffe,
    0xffffffff,
    Math.floor(rand() * 2 ** 32),
    Math.floor(rand() * 4096),
  ];
  return picks[Math.floor(rand() * picks.length)];
}

/** A value an attacker would try in a 64-bit field. */
export function nastyU64(rand: () => number): bigint {
  const picks = [
    0n,
    1n,
    0x200n,
    2n ** 53n,
    2n ** 63n,
    2n ** 64n - 1n,
    BigInt(Math.floor(rand() * 2 ** 32)) << 20n,
    BigInt(Math.floor(rand() * 2 ** 24)),
  ];
  return picks[Math.floor(rand() * picks.length)];
}

/** What the hostile loop saw. */
export interface HostileSummary {
  opened: number;
  refused: number;
  codes: Set<string>;
}

const CASE_MS = 10_000;

async function withinTime<T>(what: string, work: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: still running after ${CASE_MS} ms`)),
      CASE_MS,
    );
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads every byte of an image without keeping them. */
async function readAll(bytes: Uint8Array, format: string): Promise<void> {
  await using image = await openImage(new BytesSource(bytes), {
    format: format as FormatName,
  });
  let at = 0;
  for await (const s of readSegments(image, { chunkSize: 1 << 20 })) {
    assert.strictEqual(s.offset, at);
    at += s.length;
  }
  assert.strictEqual(at, image.virtualSize);
}

/**
 * Runs `cases` seeded mutations of `base` through open + full read, `info`
 * and `map` (or through `operations` of each mutated image): each must
 * finish in bounded time and either succeed or throw a one-line
 * Qcow2Error starting "Cannot " (or a RangeError of ours), with memory
 * staying bounded.
 */
export async function hostileLoop(
  base: Uint8Array,
  format: string,
  mutations: Mutation[],
  cases: number,
  seed: number,
  operations?: (bytes: Uint8Array) => (() => Promise<unknown>)[],
): Promise<HostileSummary> {
  const summary: HostileSummary = { opened: 0, refused: 0, codes: new Set() };
  const startRss = Deno.memoryUsage().rss;
  for (let i = 0; i < cases; i++) {
    const rand = prng(seed * 1000 + i);
    let bytes = base;
    const rounds = 1 + Math.floor(rand() * 3);
    for (let k = 0; k < rounds; k++) {
      bytes = mutations[Math.floor(rand() * mutations.length)](bytes, rand);
    }
    const label = `case ${i} (seed ${seed})`;
    const ops: (() => Promise<unknown>)[] = operations?.(bytes) ?? [
      () => readAll(bytes, format),
      () => imageInfo(new BytesSource(bytes), { format: format as FormatName }),
      () => mapImage(new BytesSource(bytes), { format: format as FormatName }),
      () =>
        checkImage(new BytesSource(bytes), { format: format as FormatName }),
    ];
    for (const op of ops) {
      try {
        await withinTime(label, op());
        summary.opened++;
      } catch (err) {
        if (err instanceof Qcow2Error) {
          summary.refused++;
          summary.codes.add(err.code);
          assert.doesNotMatch(err.message, /\n/, `${label}: one line`);
          assert.match(err.message, /^Cannot /, `${label}: ${err.message}`);
        } else if (err instanceof RangeError) {
          assert.match(err.message, /^Cannot /, `${label}: ${err.message}`);
        } else {
          throw new Error(`${label}: ${(err as Error)?.stack ?? err}`);
        }
      }
    }
    const grown = Deno.memoryUsage().rss - startRss;
    assert.ok(grown < 512 * 1024 * 1024, `${label}: RSS grew by ${grown}`);
  }
  return summary;
}
