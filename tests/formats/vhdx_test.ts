// VHDX read as qemu-img reads it: fixed and dynamic images made by
// qemu-img convert/create and qemu-io, judged by qemu-img (raw bytes,
// compare, check, info, map) and by 7-Zip; the header choice, the log,
// differencing images and hostile bytes refused in one line.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuIo,
  qemuTest,
  tempDir,
} from "../_qemu.ts";
import { mixedRaw, qemuMap, type QemuMapEntry } from "../reader/_helpers.ts";
import { assertOneLineError, runCli } from "../writer/_cli.ts";
import { sevenZipExtract } from "../_readers.ts";
import { SEVEN_ZIP, withTool } from "../_tools.ts";
import { serveFiles } from "../streams/_server.ts";
import { openImage, Qcow2Error } from "../../mod.ts";
import { BytesSource } from "../../lib/io/source.ts";
import { crc32c } from "../../lib/bytes/crc.ts";
import { prng } from "../../lib/_prng.ts";

const MiB = 1 << 20;

/**
 * A raw disk of data, zero runs and a hole at the end, its size a multiple
 * of 4 KiB (or with `odd`, of 512 bytes) but not of the block size.
 */
async function sourceRaw(dir: string, odd = false): Promise<string> {
  const path = join(dir, odd ? "odd.raw" : "source.raw");
  await Deno.writeFile(path, mixedRaw(5 * MiB + 4096, 192 * 1024, 24));
  await Deno.truncate(path, 9 * MiB + (odd ? 3 * 512 : 3 * 4096));
  return path;
}

/** 7-Zip 26 refuses a VHDX whose virtual size is not a multiple of 4 KiB. */
const SEVEN_ZIP_SKIPS = new Set(["dynamic-odd-size"]);

/** The images each test judges: qemu-img's subformats and block sizes. */
async function makeImages(dir: string): Promise<Record<string, string>> {
  const raw = await sourceRaw(dir);
  const out: Record<string, string> = {};
  const convert = async (name: string, ...opts: string[]) => {
    out[name] = join(dir, `${name}.vhdx`);
    await qemuImg("convert", "-O", "vhdx", ...opts, raw, out[name]);
  };
  await convert("dynamic", "-o", "subformat=dynamic");
  await convert(
    "dynamic-1M",
    "-o",
    "subformat=dynamic,block_size=1M,block_state_zero=off",
  );
  await convert("fixed", "-o", "subformat=fixed");
  await convert("fixed-1M", "-o", "subformat=fixed,block_size=1M");
  out["dynamic-odd-size"] = join(dir, "odd.vhdx");
  await qemuImg(
    "convert",
    "-O",
    "vhdx",
    await sourceRaw(dir, true),
    out["dynamic-odd-size"],
  );
  // ZERO-state blocks: created with block_state_zero, then partly written.
  const zero = join(dir, "zero-blocks.vhdx");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "vhdx",
    "-o",
    "block_size=1M,block_state_zero=on",
    zero,
    "7M",
  );
  await qemuIo(zero, [
    "write -P 0x11 0 4k",
    "write -P 0x22 1536k 700k",
    "write -P 0x33 6143k 1k",
  ], "vhdx");
  out["zero-blocks"] = zero;
  return out;
}

/** Merges adjacent entries that read alike, for a coverage comparison. */
function coverage(entries: QemuMapEntry[]): string[] {
  const runs: { start: number; end: number; key: string }[] = [];
  for (const e of entries) {
    const key = `present=${e.present} zero=${e.zero} data=${e.data}`;
    const last = runs.at(-1);
    if (last && last.key === key && last.end === e.start) {
      last.end += e.length;
    } else runs.push({ start: e.start, end: e.start + e.length, key });
  }
  return runs.map((r) => `${r.start}-${r.end} ${r.key}`);
}

/** The lines of `info` both tools must print alike. */
function infoLines(text: string): string[] {
  return text.split("\n").filter((l) =>
    /^(file format|virtual size|disk size|cluster_size):/.test(l)
  );
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

async function sha256(bytes: Uint8Array): Promise<string> {
  return [
    ...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes.slice())),
  ]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

qemuTest(
  "VHDX fixed and dynamic images read as qemu-img reads them: raw bytes, qcow2 compared and checked, info, map and 7-Zip",
  async (t) => {
    await using dir = await tempDir();
    const images = await makeImages(dir.path);
    for (const [name, image] of Object.entries(images)) {
      await t.step(name, async () => {
        const theirs = join(dir.path, `${name}.qemu.raw`);
        await qemuImg("convert", "-O", "raw", image, theirs);
        const expected = await Deno.readFile(theirs);

        // (a) raw, byte for byte.
        const ours = join(dir.path, `${name}.ours.raw`);
        const r = await runCli(["convert", "-O", "raw", image, ours]);
        assert.strictEqual(r.code, 0, r.stderr);
        assert.ok(
          expected.length > 0 &&
            (await sha256(await Deno.readFile(ours))) ===
              (await sha256(expected)),
          `${name}: raw output differs from qemu-img's`,
        );

        // (b) qcow2, judged by qemu-img.
        const qcow2 = join(dir.path, `${name}.qcow2`);
        const q = await runCli(["convert", "-O", "qcow2", image, qcow2]);
        assert.strictEqual(q.code, 0, q.stderr);
        await qemuCompareIdentical(image, qcow2, ["vhdx", "qcow2"]);
        await qemuCheckClean(qcow2);

        // (c) info.
        const info = await runCli(["info", image]);
        assert.strictEqual(info.code, 0, info.stderr);
        assert.deepStrictEqual(
          infoLines(text(info.stdout)),
          infoLines(await qemuImg("info", image)),
        );
        assert.strictEqual(infoLines(text(info.stdout)).length, 4);

        // (d) map: data and zero coverage.
        const map = await runCli(["map", "--output=json", image]);
        assert.strictEqual(map.code, 0, map.stderr);
        assert.deepStrictEqual(
          coverage(JSON.parse(text(map.stdout))),
          coverage(await qemuMap(image)),
        );

        // The library reads the same bytes at random offsets.
        await using opened = await openImage(image);
        assert.strictEqual(opened.format, "vhdx");
        assert.strictEqual(opened.virtualSize, expected.length);
        const rand = prng(name.length);
        for (let i = 0; i < 20; i++) {
          const at = Math.floor(rand() * expected.length);
          const n = Math.min(
            expected.length - at,
            1 + Math.floor(rand() * 3 * MiB),
          );
          assert.deepStrictEqual(
            await opened.readAt(at, n),
            expected.subarray(at, at + n),
            `${name}: readAt(${at}, ${n})`,
          );
        }

        // (e) 7-Zip reads the same disk.
        if (SEVEN_ZIP_SKIPS.has(name)) return;
        await withTool(SEVEN_ZIP, async () => {
          const got = await sevenZipExtract(image, dir.path);
          assert.deepStrictEqual(got, {
            size: expected.length,
            sha256: await sha256(expected),
          }, `7-Zip: ${name}`);
        });
      });
    }
  },
);

qemuTest(
  "a VHDX image from standard input is spooled and read, not copied as raw bytes",
  async () => {
    await using dir = await tempDir();
    const raw = await sourceRaw(dir.path);
    const image = join(dir.path, "d.vhdx");
    await qemuImg("convert", "-O", "vhdx", raw, image);
    const out = join(dir.path, "out.raw");
    const r = await runCli(["convert", "-O", "raw", "-", out], {
      stdinFile: image,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, /standard input is vhdx: spooled it whole/);
    await qemuCompareIdentical(raw, out, ["raw", "raw"]);
  },
);

qemuTest(
  "a VHDX image over HTTP is read with Range requests, or spooled without them",
  async () => {
    await using dir = await tempDir();
    const raw = await sourceRaw(dir.path);
    const image = join(dir.path, "d.vhdx");
    await qemuImg("convert", "-O", "vhdx", raw, image);
    for (const ranges of [true, false]) {
      await using server = serveFiles(
        { "d.vhdx": await Deno.readFile(image) },
        { ranges },
      );
      const out = join(dir.path, `http-${ranges}.raw`);
      const r = await runCli([
        "convert",
        "-O",
        "raw",
        server.url("d.vhdx"),
        out,
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      await qemuCompareIdentical(raw, out, ["raw", "raw"]);
      if (!ranges) assert.match(r.stderr, /is vhdx: spooled it whole/);
    }
  },
);

// ---------------------------------------------------------------------------
// Structures, as a test edits them (offsets from the VHDX specification).

const HEADER_OFFSETS = [64 * 1024, 128 * 1024];
const REGION_TABLE = 192 * 1024;

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Recomputes the CRC-32C at `at + 4` over `[at, at + size)`. */
function fixChecksum(bytes: Uint8Array, at: number, size: number): void {
  view(bytes).setUint32(at + 4, 0, true);
  view(bytes).setUint32(at + 4, crc32c(bytes.subarray(at, at + size)), true);
}

function fixHeaders(bytes: Uint8Array): void {
  for (const h of HEADER_OFFSETS) fixChecksum(bytes, h, 4096);
  fixChecksum(bytes, REGION_TABLE, 65536);
}

/** The file offsets of the BAT and metadata regions. */
function regions(bytes: Uint8Array): { bat: number; metadata: number } {
  const v = view(bytes);
  const out = { bat: 0, metadata: 0 };
  const count = v.getUint32(REGION_TABLE + 8, true);
  for (let i = 0; i < count; i++) {
    const e = REGION_TABLE + 16 + i * 32;
    const offset = Number(v.getBigUint64(e + 16, true));
    if (v.getUint32(e, true) === 0x2dc27766) out.bat = offset;
    if (v.getUint32(e, true) === 0x8b7ca206) out.metadata = offset;
  }
  return out;
}

/** The file offset of the metadata item whose GUID starts with `first` (default: file parameters). */
function fileParameters(bytes: Uint8Array, first = 0xcaa16737): number {
  const { metadata } = regions(bytes);
  const v = view(bytes);
  const count = v.getUint16(metadata + 10, true);
  for (let i = 0; i < count; i++) {
    const e = metadata + 32 + i * 32;
    if (v.getUint32(e, true) === first) {
      return metadata + v.getUint32(e + 16, true);
    }
  }
  throw new Error(`no metadata item ${first.toString(16)}`);
}

/** The index of the current header: the one with the higher sequence number. */
function currentHeader(bytes: Uint8Array): number {
  const v = view(bytes);
  return v.getBigUint64(HEADER_OFFSETS[0] + 8, true) >=
      v.getBigUint64(HEADER_OFFSETS[1] + 8, true)
    ? 0
    : 1;
}

async function smallImage(dir: string): Promise<Uint8Array> {
  const path = join(dir, "small.vhdx");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "vhdx",
    "-o",
    "block_size=1M",
    path,
    "3M",
  );
  await qemuIo(
    path,
    ["write -P 0x5a 0 1536k", "write -P 0x6b 2560k 4k"],
    "vhdx",
  );
  return await Deno.readFile(path);
}

/** Opens bytes as a probed image and reads all of it. */
async function readAll(bytes: Uint8Array): Promise<Uint8Array> {
  await using image = await openImage(new BytesSource(bytes, "t.vhdx"));
  return await image.readAt(0, image.virtualSize);
}

async function rejectsWith(
  bytes: Uint8Array,
  code: string,
  pattern: RegExp,
): Promise<void> {
  await assert.rejects(readAll(bytes), (err) => {
    assert.ok(err instanceof Qcow2Error, String(err));
    assert.strictEqual(err.code, code, err.message);
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, /\n/);
    return true;
  });
}

/** Puts a log entry of `guid` at the start of the current header's log. */
function writeLogEntry(bytes: Uint8Array, header: number, guid: Uint8Array) {
  const v = view(bytes);
  const h = HEADER_OFFSETS[header];
  bytes.set(guid, h + 48);
  const logOffset = Number(v.getBigUint64(h + 72, true));
  bytes.set(new TextEncoder().encode("loge"), logOffset);
  v.setUint32(logOffset + 8, 4096, true);
  bytes.set(guid, logOffset + 32);
}

qemuTest(
  "VHDX headers: the valid one with the higher sequence number is current; none valid, or two equal sequence numbers that differ, is refused",
  async () => {
    await using dir = await tempDir();
    const good = await smallImage(dir.path);
    const expected = await readAll(good);
    const cur = currentHeader(good);
    const other = 1 - cur;
    const guid = new Uint8Array(16).fill(0xab);

    // The current header with a damaged checksum: the other one is read.
    const damaged = good.slice();
    damaged[HEADER_OFFSETS[cur] + 100] ^= 1;
    assert.deepStrictEqual(await readAll(damaged), expected);

    // Both damaged.
    damaged[HEADER_OFFSETS[other] + 100] ^= 1;
    await rejectsWith(damaged, "CORRUPT", /no valid VHDX header/);

    // A dirty log named by the older header does not count; by the newer, it does.
    const stale = good.slice();
    writeLogEntry(stale, other, guid);
    fixHeaders(stale);
    assert.deepStrictEqual(await readAll(stale), expected);
    const dirty = good.slice();
    writeLogEntry(dirty, cur, guid);
    fixHeaders(dirty);
    await rejectsWith(
      dirty,
      "UNSUPPORTED_FEATURE",
      /the VHDX log at 0x[0-9a-f]+ holds an entry of log abababab-.*not closed cleanly/,
    );

    // A log GUID with no entry of that log: closed cleanly after all.
    const named = good.slice();
    named.set(guid, HEADER_OFFSETS[cur] + 48);
    fixHeaders(named);
    assert.deepStrictEqual(await readAll(named), expected);

    // Equal sequence numbers, different headers.
    const equal = good.slice();
    const v = view(equal);
    v.setBigUint64(
      HEADER_OFFSETS[other] + 8,
      v.getBigUint64(HEADER_OFFSETS[cur] + 8, true),
      true,
    );
    fixHeaders(equal);
    await rejectsWith(equal, "CORRUPT", /both VHDX headers have sequence/);
  },
);

qemuTest(
  "VHDX differencing images and blocks only they may hold are refused in one line",
  async () => {
    await using dir = await tempDir();
    const good = await smallImage(dir.path);
    const params = fileParameters(good);

    const parent = good.slice();
    view(parent).setUint32(params + 4, 2, true); // has_parent
    await rejectsWith(
      parent,
      "CORRUPT",
      /has a parent but there is no parent locator/,
    );

    // Add a parent locator item to the metadata table.
    const { metadata, bat } = regions(good);
    const v = view(parent);
    const count = v.getUint16(metadata + 10, true);
    const e = metadata + 32 + count * 32;
    parent.set(
      [
        0x2d,
        0x5f,
        0xd3,
        0xa8,
        0x0b,
        0xb3,
        0x4d,
        0x45,
        0xab,
        0xf7,
        0xd3,
        0xd8,
        0x48,
        0x34,
        0xab,
        0x0c,
      ],
      e,
    );
    v.setUint32(e + 16, 65536 * 2, true);
    v.setUint32(e + 20, 4096, true);
    v.setUint16(metadata + 10, count + 1, true);
    await rejectsWith(
      parent,
      "UNSUPPORTED_FEATURE",
      /differencing images \(has_parent\) are not supported/,
    );
    const child = join(dir.path, "child.vhdx");
    await Deno.writeFile(child, parent);
    const r = await runCli(["info", child]);
    assertOneLineError(
      r,
      /differencing images \(has_parent\) are not supported/,
    );

    // PARTIALLY_PRESENT in an image without a parent.
    const partial = good.slice();
    const entry = view(partial).getUint32(bat, true);
    view(partial).setUint32(bat, (entry & ~7) | 7, true);
    await rejectsWith(
      partial,
      "CORRUPT",
      /BAT entry 0 at 0x[0-9a-f]+ .* PARTIALLY_PRESENT/,
    );

    // A block past the end of the file.
    const past = good.slice();
    view(past).setUint32(bat + 4, 0x100, true);
    await rejectsWith(
      past,
      "TRUNCATED",
      /BAT entry 0 puts block 0 at 0x[0-9a-f]+, past the end of the file/,
    );

    // A 64 TiB disk whose BAT region claims 4 GiB at 1 TiB: refused before
    // anything is read there.
    const huge = good.slice();
    view(huge).setBigUint64(fileParameters(huge, 0x2fa54224), 64n << 40n, true);
    const hv = view(huge);
    for (let i = 0; i < hv.getUint32(REGION_TABLE + 8, true); i++) {
      const e = REGION_TABLE + 16 + i * 32;
      if (hv.getUint32(e, true) === 0x2dc27766) {
        hv.setBigUint64(e + 16, 1n << 40n, true);
        hv.setUint32(e + 24, 0xfff00000, true);
      }
    }
    fixHeaders(huge);
    await rejectsWith(
      huge,
      "TRUNCATED",
      /the BAT at 0x[0-9a-f]+ with 67125247 entries ends past the end of the file/,
    );

    // A block over the BAT.
    const over = good.slice();
    view(over).setUint32(bat, (bat / 1048576) * 1048576 | 6, true);
    await rejectsWith(
      over,
      "CORRUPT",
      /block 0 \(BAT entry 0\) .* overlaps the BAT region/,
    );
  },
);

qemuTest(
  "hostile VHDX images (truncated, mutated with checksums fixed) fail with one-line Qcow2Errors in bounded time",
  async () => {
    await using dir = await tempDir();
    const good = await smallImage(dir.path);
    const { bat, metadata } = regions(good);
    const params = fileParameters(good);
    const targets = [
      ...HEADER_OFFSETS.map((h) => [h, 80]),
      [REGION_TABLE, 16 + 3 * 32],
      [metadata, 32 + 6 * 32],
      [params, 8],
      [metadata + 65536, 64 * 1024],
      [bat, 32],
    ];
    const rand = prng(2024);
    const outcomes = new Map<string, number>();
    const judge = async (bytes: Uint8Array, what: string) => {
      const started = performance.now();
      try {
        await readAll(bytes);
        outcomes.set("read", (outcomes.get("read") ?? 0) + 1);
      } catch (err) {
        assert.ok(err instanceof Qcow2Error, `${what}: ${err}`);
        assert.doesNotMatch(err.message, /\n/, what);
        assert.match(err.message, /^Cannot /, what);
        outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
      }
      assert.ok(performance.now() - started < 5000, `${what}: too slow`);
    };
    for (
      const cut of [
        0,
        7,
        8,
        65536 + 100,
        200 * 1024,
        1 * MiB,
        2 * MiB + 5,
        good.length - 1,
      ]
    ) {
      await judge(good.subarray(0, cut), `truncated to ${cut}`);
    }
    for (let i = 0; i < 200; i++) {
      const bytes = good.slice();
      const [start, span] = targets[Math.floor(rand() * targets.length)];
      const edits = 1 + Math.floor(rand() * 4);
      for (let k = 0; k < edits; k++) {
        const at = start + Math.floor(rand() * span);
        const kind = rand();
        if (kind < 0.4) bytes[at] = Math.floor(rand() * 256);
        else if (kind < 0.7) {
          view(bytes).setUint32(at & ~3, Math.floor(rand() * 2 ** 32), true);
        } else {view(bytes).setUint32(
            at & ~3,
            [0, 1, 0xffffffff, 0x80000000, 2047, 2048][Math.floor(rand() * 6)],
            true,
          );}
      }
      fixHeaders(bytes);
      await judge(bytes, `mutation ${i}`);
    }
    // Most mutations are caught; some leave an image that still reads.
    assert.ok(outcomes.size > 3, JSON.stringify([...outcomes]));

    // Through the CLI: one line, no stack trace.
    const bad = good.slice();
    view(bad).setUint32(params, 3 * 1024 * 1024, true);
    const path = join(dir.path, "bad.vhdx");
    await Deno.writeFile(path, bad);
    for (
      const args of [["info", path], ["map", path], [
        "convert",
        "-O",
        "raw",
        path,
        join(dir.path, "o.raw"),
      ]]
    ) {
      assertOneLineError(
        await runCli(args),
        /Cannot open image .*bad\.vhdx: block_size 3145728 at 0x[0-9a-f]+ is not a power of two/,
      );
    }
  },
);
