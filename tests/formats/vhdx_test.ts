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
import { assertCheckAsQemu } from "./_oracle.ts";
import { checkImage } from "../../lib/tools/check.ts";
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

        // (c) info, whole (text and JSON), and check.
        const info = await runCli(["info", image]);
        assert.strictEqual(info.code, 0, info.stderr);
        const theirInfo = await qemuImg("info", image);
        assert.deepStrictEqual(
          infoLines(text(info.stdout)),
          infoLines(theirInfo),
        );
        assert.strictEqual(infoLines(text(info.stdout)).length, 4);
        assert.strictEqual(text(info.stdout), theirInfo);
        const json = await runCli(["info", "--output=json", image]);
        assert.strictEqual(
          text(json.stdout),
          await qemuImg("info", "--output=json", image),
        );
        assert.strictEqual(await assertCheckAsQemu(image), 0);

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
  "VHDX check: BAT entries past the end of the file and over the log or a region, as qemu-img check reports them (and info refuses the image)",
  async (t) => {
    await using dir = await tempDir();
    const raw = await sourceRaw(dir.path);
    const clean = join(dir.path, "clean.vhdx");
    await qemuImg("convert", "-O", "vhdx", "-o", "block_size=1M", raw, clean);
    const good = await Deno.readFile(clean);
    const view = new DataView(good.buffer);
    // Region table 1: each entry's GUID, file offset and length.
    const regions = new Map<string, number>();
    for (let i = 0; i < view.getUint32(192 * 1024 + 8, true); i++) {
      const at = 192 * 1024 + 16 + 32 * i;
      regions.set(
        view.getUint32(at, true).toString(16),
        Number(view.getBigUint64(at + 16, true)),
      );
    }
    const bat = regions.get("2dc27766")!;
    const metadata = regions.get("8b7ca206")!;
    const log = Number(view.getBigUint64(64 * 1024 + 72, true));
    const entry = (i: number) => view.getBigUint64(bat + 8 * i, true);
    // Blocks 0 to 4 hold data (FULLY_PRESENT, state 6).
    for (let i = 0; i < 5; i++) assert.strictEqual(entry(i) & 7n, 6n);
    const fileMiB = good.length / MiB;
    const present = (mib: number) => (BigInt(mib) << 20n) | 6n;
    const withEntries = (values: [number, bigint][]) => {
      const out = good.slice();
      const v = new DataView(out.buffer);
      for (const [i, e] of values) v.setBigUint64(bat + 8 * i, e, true);
      return out;
    };
    const cases: [string, Uint8Array, number][] = [
      ["start past the end", withEntries([[1, present(fileMiB + 10)]]), 2],
      [
        "over the metadata region",
        withEntries([[2, present(metadata / MiB)]]),
        2,
      ],
      ["over the log", withEntries([[0, present(log / MiB)]]), 2],
      [
        "several",
        withEntries([
          [0, present(fileMiB + 3)],
          [1, present(log / MiB)],
          [2, present(fileMiB + 5)],
        ]),
        2,
      ],
      // The last block's end past the end of the file.
      ["truncated", good.subarray(0, good.length - 300_000), 2],
      ["truncated before blocks", good.subarray(0, 9 * MiB), 2],
      ["clean", good, 0],
    ];
    for (const [name, bytes, status] of cases) {
      await t.step(name, async () => {
        const path = join(dir.path, `${name}.vhdx`);
        await Deno.writeFile(path, bytes);
        assert.strictEqual(await assertCheckAsQemu(path), status);
        if (status === 0) return;
        // qemu-img info refuses such an image, as we do.
        await assert.rejects(qemuImg("info", path));
        assertOneLineError(
          await runCli(["info", path]),
          /Cannot open image .*(past the end|overlaps)/,
        );
      });
    }
    await t.step(
      "every chunk_ratio + 1-th present entry is taken for a sector bitmap, as QEMU counts them",
      async () => {
        // 256 MiB blocks: a chunk ratio of 16. A fixed image of 17 blocks
        // (a sparse file of 4.25 GiB), its first 16 entries and the 18th
        // (block 16) made present: QEMU skips the overlap test of the
        // 17th present entry, here over the metadata region.
        const big = join(dir.path, "chunks.vhdx");
        await qemuImg(
          "create",
          "-q",
          "-f",
          "vhdx",
          "-o",
          "subformat=fixed,block_size=256M",
          big,
          "4352M",
        );
        using file = await Deno.open(big, { read: true, write: true });
        const head = new Uint8Array(256 * 1024);
        await file.read(head);
        const v = new DataView(head.buffer);
        const region = (guid: number) => {
          for (let i = 0; i < v.getUint32(192 * 1024 + 8, true); i++) {
            const at = 192 * 1024 + 16 + 32 * i;
            if (v.getUint32(at, true) === guid) {
              return Number(v.getBigUint64(at + 16, true));
            }
          }
          throw new Error(`no region ${guid.toString(16)}`);
        };
        const batAt = region(0x2dc27766);
        const entries = new Uint8Array(18 * 8);
        const e = new DataView(entries.buffer);
        for (let i = 0; i < 16; i++) {
          e.setBigUint64(8 * i, (4n << 20n) | 6n, true);
        }
        e.setBigUint64(17 * 8, BigInt(region(0x8b7ca206)) | 6n, true);
        await file.seek(batAt, Deno.SeekMode.Start);
        await file.write(entries);
        assert.strictEqual(await assertCheckAsQemu(big), 0);
      },
    );
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
  "VHDX: has_parent without a locator, blocks only a differencing image may hold, and blocks outside the file are refused in one line",
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
    const { bat } = regions(good);

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
      // The check opens what a read refuses (blocks past the end): it
      // reports them, or refuses the rest in one line.
      try {
        const r = await checkImage(new BytesSource(bytes, "t.vhdx"), {
          format: "vhdx",
        });
        assert.ok([0, 2].includes(r.exitCode), `${what}: check ${r.exitCode}`);
      } catch (err) {
        assert.ok(err instanceof Qcow2Error, `${what}: ${err}`);
        assert.doesNotMatch(err.message, /\n/, what);
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

// ---------------------------------------------------------------------------
// Differencing images: qemu-img cannot make them (QEMU does not read them),
// so a test turns a dynamic image made by qemu-img into the child of
// another, as Hyper-V lays one out: has_parent, a parent locator, the BAT
// with a sector bitmap entry per chunk, a PARTIALLY_PRESENT block.

const LOCATOR_TYPE = [
  0xb7,
  0xef,
  0x4a,
  0xb0,
  0x9e,
  0xd1,
  0x81,
  0x4a,
  0xb7,
  0x89,
  0x25,
  0xb8,
  0xe9,
  0x44,
  0x59,
  0x13,
];
const PARENT_LOCATOR_GUID = [
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
];

/** Equal bytes, or the first offset where they differ (no diff of megabytes). */
function assertBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  assert.strictEqual(got.length, want.length, `${what}: length`);
  const at = got.findIndex((b, i) => b !== want[i]);
  assert.strictEqual(at, -1, `${what}: first difference at ${at}`);
}

/** A GUID's text from its 16 bytes (mixed-endian, as VHDX stores it). */
function guidText(b: Uint8Array): string {
  const v = view(b);
  const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
  const tail = [...b.subarray(8, 16)].map((x) => h(x, 2)).join("");
  return `${h(v.getUint32(0, true), 8)}-${h(v.getUint16(4, true), 4)}-${
    h(v.getUint16(6, true), 4)
  }-${tail.slice(0, 4)}-${tail.slice(4)}`;
}

/** A parent locator item with these keys and values. */
function locator(entries: [string, string][]): Uint8Array {
  const out = new Uint8Array(4096);
  out.set(LOCATOR_TYPE, 0);
  const v = view(out);
  v.setUint16(18, entries.length, true);
  let at = 20 + entries.length * 12;
  const put = (text: string): [number, number] => {
    const start = at;
    for (const ch of text) {
      v.setUint16(at, ch.charCodeAt(0), true);
      at += 2;
    }
    return [start, at - start];
  };
  entries.forEach(([k, val], i) => {
    const [ko, kl] = put(k);
    const [vo, vl] = put(val);
    v.setUint32(20 + i * 12, ko, true);
    v.setUint32(20 + i * 12 + 4, vo, true);
    v.setUint16(20 + i * 12 + 8, kl, true);
    v.setUint16(20 + i * 12 + 10, vl, true);
  });
  return out;
}

/**
 * parent.vhdx and child.vhdx (1 MiB blocks, 3 MiB): the child holds block 0
 * whole, block 1 partly (its first 1024 sectors but sector 100), and leaves
 * block 2 to the parent. Returns the bytes the child must read as.
 */
async function makeDifferencing(
  dir: string,
  relativePath = ".\\parent.vhdx",
  parentDir = dir,
): Promise<{ child: string; parent: string; expected: Uint8Array }> {
  const parent = join(parentDir, "parent.vhdx");
  await Deno.writeFile(parent, await smallImage(dir));
  const child = join(dir, "child.vhdx");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "vhdx",
    "-o",
    "block_size=1M",
    child,
    "3M",
  );
  await qemuIo(child, ["write -P 0x77 512k 1M"], "vhdx");
  const parentRaw = join(dir, "parent.raw");
  const childRaw = join(dir, "child-own.raw");
  await qemuImg("convert", "-O", "raw", parent, parentRaw);
  await qemuImg("convert", "-O", "raw", child, childRaw);
  const p = await Deno.readFile(parentRaw);
  const c = await Deno.readFile(childRaw);
  const expected = p.slice();
  expected.set(c.subarray(0, MiB), 0);
  for (let s = 0; s < 1024; s++) {
    if (s === 100) continue;
    const at = MiB + s * 512;
    expected.set(c.subarray(at, at + 512), at);
  }

  const pb = await Deno.readFile(parent);
  const ph = HEADER_OFFSETS[currentHeader(pb)];
  const linkage = `{${guidText(pb.subarray(ph + 32, ph + 48))}}`;

  const bytes = await Deno.readFile(child);
  const v = view(bytes);
  v.setUint32(fileParameters(bytes) + 4, 2, true); // has_parent
  const { metadata, bat } = regions(bytes);
  v.setBigUint64(bat + 16, 0n, true); // block 2 NOT_PRESENT: the parent's
  const count = v.getUint16(metadata + 10, true);
  const e = metadata + 32 + count * 32;
  bytes.set(PARENT_LOCATOR_GUID, e);
  v.setUint32(e + 16, 512 * 1024, true);
  v.setUint32(e + 20, 4096, true);
  v.setUint16(metadata + 10, count + 1, true);
  bytes.set(
    locator([["parent_linkage", linkage], ["relative_path", relativePath]]),
    metadata + 512 * 1024,
  );
  // Block 1 PARTIALLY_PRESENT; the chunk's sector bitmap appended.
  v.setUint32(bat + 8, (v.getUint32(bat + 8, true) & ~7) | 7, true);
  const bitmapAt = Math.ceil(bytes.length / MiB) * MiB;
  const bitmap = new Uint8Array(MiB);
  for (let s = 0; s < 1024; s++) {
    if (s === 100) continue;
    const bit = 2048 + s; // block 1 of the chunk, 2048 sectors a block
    bitmap[bit >> 3] |= 1 << (bit & 7);
  }
  v.setUint32(bat + 4096 * 8, bitmapAt % 2 ** 32 | 6, true);
  v.setUint32(bat + 4096 * 8 + 4, Math.floor(bitmapAt / 2 ** 32), true);
  const out = new Uint8Array(bitmapAt + MiB);
  out.set(bytes);
  out.set(bitmap, bitmapAt);
  await Deno.writeFile(child, out);
  return { child, parent, expected };
}

qemuTest(
  "a VHDX differencing image reads its own sectors and its parent's, the parent followed through the gate by relative_path and checked by parent_linkage",
  async () => {
    await using dir = await tempDir();
    const { child, expected } = await makeDifferencing(dir.path);
    await using image = await openImage(child);
    assert.strictEqual(image.backing?.format, "vhdx");
    assertBytes(await image.readAt(0, image.virtualSize), expected, "readAt");
    assert.deepStrictEqual(
      await image.readAt(MiB + 100 * 512 - 3, 520),
      expected.subarray(MiB + 100 * 512 - 3, MiB + 101 * 512 + 5),
    );
    const out = join(dir.path, "child.raw");
    const r = await runCli(["convert", "-O", "raw", child, out]);
    assert.strictEqual(r.code, 0, r.stderr);
    assertBytes(await Deno.readFile(out), expected, "convert -O raw");
    const q = join(dir.path, "child.qcow2");
    const rq = await runCli(["convert", "-O", "qcow2", child, q]);
    assert.strictEqual(rq.code, 0, rq.stderr);
    await qemuCompareIdentical(out, q, ["raw", "qcow2"]);
    await qemuCheckClean(q);
    const info = await runCli(["info", child]);
    assert.match(text(info.stdout), /^backing file: \.\/parent\.vhdx/m);
    // 7-Zip follows the parent too (qemu-img does not read such images).
    await withTool(SEVEN_ZIP, async () => {
      assert.deepStrictEqual(await sevenZipExtract(child, dir.path), {
        size: expected.length,
        sha256: await sha256(expected),
      });
    });

    // Another parent than the one it was made from.
    const bytes = await Deno.readFile(child);
    const at = new TextDecoder("utf-16le").decode(bytes).indexOf("{");
    bytes[at * 2 + 2] ^= 1;
    const wrong = join(dir.path, "wrong.vhdx");
    await Deno.writeFile(wrong, bytes);
    assertOneLineError(
      await runCli(["convert", "-O", "raw", wrong, join(dir.path, "w.raw")]),
      /parent_linkage \{.*\} the image names/,
    );
  },
);

qemuTest(
  "a probed VHDX differencing image may not lead outside its directory; with -f vhdx it may",
  async () => {
    await using dir = await tempDir();
    await Deno.mkdir(join(dir.path, "base"));
    await Deno.mkdir(join(dir.path, "vm"));
    const { child, expected } = await makeDifferencing(
      join(dir.path, "vm"),
      "..\\base\\parent.vhdx",
      join(dir.path, "base"),
    );
    const out = join(dir.path, "out.raw");
    assertOneLineError(
      await runCli(["convert", "-O", "raw", child, out]),
      /Cannot open backing file "..\/base\/parent.vhdx": it is outside the directory of/,
    );
    const r = await runCli(["convert", "-f", "vhdx", "-O", "raw", child, out]);
    assert.strictEqual(r.code, 0, r.stderr);
    assertBytes(await Deno.readFile(out), expected, "convert -O raw");
  },
);

qemuTest(
  "hostile VHDX differencing images (locator, BAT, sector bitmap mutated) fail with one-line Qcow2Errors in bounded time",
  async () => {
    await using dir = await tempDir();
    const { child, parent } = await makeDifferencing(dir.path);
    const good = await Deno.readFile(child);
    const parentBytes = await Deno.readFile(parent);
    const { bat, metadata } = regions(good);
    const bitmapAt = good.length - MiB;
    const targets = [
      [metadata + 512 * 1024, 200], // the parent locator
      [metadata, 32 + 7 * 32], // the metadata table
      [bat, 32], // payload entries
      [bat + 4096 * 8, 8], // the sector bitmap entry
      [bitmapAt + 256, 128], // block 1's bits
    ];
    const rand = prng(77);
    const codes = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const bytes = good.slice();
      const [start, span] = targets[Math.floor(rand() * targets.length)];
      for (let k = 1 + Math.floor(rand() * 3); k > 0; k--) {
        const at = start + Math.floor(rand() * span);
        if (rand() < 0.5) bytes[at] = Math.floor(rand() * 256);
        else {
          view(bytes).setUint32(
            at & ~3,
            [0, 7, 0xffffffff, 0x7fff, Math.floor(rand() * 2 ** 32)][
              Math.floor(rand() * 5)
            ],
            true,
          );
        }
      }
      const started = performance.now();
      try {
        await using image = await openImage(
          new BytesSource(bytes, "/fuzz/child.vhdx"),
          {
            format: "vhdx",
            openSource: (name) =>
              name === "/fuzz/./parent.vhdx"
                ? Promise.resolve(new BytesSource(parentBytes, name))
                : Promise.reject(new Deno.errors.NotFound(name)),
          },
        );
        await image.readAt(0, image.virtualSize);
        codes.add("read");
      } catch (err) {
        assert.ok(err instanceof Qcow2Error, `mutation ${i}: ${err}`);
        assert.doesNotMatch(err.message, /\n/);
        assert.match(err.message, /^Cannot /);
        codes.add(err.code);
      }
      assert.ok(performance.now() - started < 5000, `mutation ${i}: too slow`);
    }
    assert.ok(codes.size > 2, [...codes].join(" "));
  },
);
