// The free-space map as a stage of the forward pipeline: from a file, from
// a pipe, over HTTP with Range requests, through convert() and the CLI.
// The oracle for what must read as zeros is dumpe2fs and the swap layout,
// and qemu-img judges the images.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuCompareIdentical, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { HttpSource } from "../../lib/io/http_source.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { openImage } from "../../lib/reader/open.ts";
import { convert } from "../../lib/convert.ts";
import { fileChunks } from "../../lib/host/file_stream.ts";
import { freeSpaceChunks } from "../../lib/sparsify/chunks.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { FreeSpaceStream } from "../../lib/sparsify/stream.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import type { ZeroBytes } from "../../lib/bytes/zeros.ts";
import { formatBytes } from "../../lib/cli/_util.ts";
import {
  buildDisk,
  diskTest,
  merge,
  MiB,
  mkfs,
  sh,
  within,
  zeroed,
} from "./_disks.ts";

const TOOLS = ["sfdisk", "mke2fs", "debugfs", "dumpe2fs", "mkswap"];

/**
 * Checks a stage's output against `expected` (the disk with its free
 * ranges zeroed): data chunks are its bytes, zero runs are zeros in it.
 * Returns the zero runs, merged.
 */
async function zeroRuns(
  chunks: AsyncIterable<Uint8Array | ZeroBytes>,
  expected: Uint8Array,
): Promise<FreeRange[]> {
  const runs: FreeRange[] = [];
  let at = 0;
  for await (const c of chunks) {
    if (c instanceof Uint8Array) {
      assert.deepStrictEqual(c, expected.subarray(at, at + c.length));
      at += c.length;
    } else {
      assert.ok(
        expected.subarray(at, at + c.zeros).every((b) => b === 0),
        `zero run at ${at} over bytes that are not free`,
      );
      runs.push({ offset: at, length: c.zeros });
      at += c.zeros;
    }
  }
  assert.strictEqual(at, expected.length);
  return merge(runs);
}

/** The disk as it must read once sparsified. */
async function expectedOf(
  dir: string,
  built: { path: string; free: FreeRange[] },
): Promise<Uint8Array> {
  const path = join(dir, "expected.raw");
  await zeroed(built.path, path, built.free);
  return await Deno.readFile(path);
}

for (const label of ["gpt", "dos"] as const) {
  diskTest(
    `FreeSpaceStream drops from a stream what freeSpaceChunks drops from a file (${label})`,
    { tools: TOOLS },
    async () => {
      await using dir = await tempDir();
      const built = await buildDisk(dir.path, label);
      const expected = await expectedOf(dir.path, built);
      await using src = await FileSource.open(built.path);
      const random = await freeSpaceChunks(src);
      const fromFile = await zeroRuns(random.readable, expected);
      // The dos disk's second EBR is 66 MiB in: a read-ahead that reaches it.
      const stage = new FreeSpaceStream({
        size: expected.length,
        readAhead: 128 * MiB,
      });
      const fromPipe = await zeroRuns(
        fileChunks(await Deno.open(built.path), 1234567).pipeThrough(stage),
        expected,
      );
      // Every free range of dumpe2fs and the swap layout reads as zeros both
      // ways (the file's holes add more zero runs from the file).
      assert.ok(within(built.free, fromFile), "free ranges are zero runs");
      assert.ok(within(built.free, fromPipe), "free ranges are zero runs");
      const report = await stage.report;
      assert.deepStrictEqual(report, random.report);
      assert.deepStrictEqual(
        report.regions.map((r) => [r.found, r.status]),
        [["ext4", "mapped"], ["swap", "mapped"], ["unknown", "untouched"]],
      );
      assert.strictEqual(
        report.freeBytes,
        built.free.reduce((n, r) => n + r.length, 0),
      );
    },
  );
}

diskTest(
  "FreeSpaceStream maps the logical partitions whose EBRs it can reach",
  { tools: TOOLS },
  async () => {
    await using dir = await tempDir();
    const built = await buildDisk(dir.path, "dos");
    const expected = await expectedOf(dir.path, built);
    const stage = new FreeSpaceStream();
    await zeroRuns(
      fileChunks(await Deno.open(built.path)).pipeThrough(stage),
      expected,
    );
    const report = await stage.report;
    assert.deepStrictEqual(
      report.regions.map((r) => [r.partition, r.found, r.status]),
      [[1, "ext4", "mapped"], [5, "swap", "mapped"]],
    );
    assert.match(
      report.tableIncomplete!,
      /^logical partitions from the EBR at sector 135168 on were not read: metadata at byte 69206016 lies more than 67108864 bytes past byte 0 of the stream/,
    );
  },
);

diskTest(
  "FreeSpaceStream leaves a filesystem whose metadata lies past its read-ahead as it is",
  { tools: ["mke2fs"] },
  async () => {
    await using dir = await tempDir();
    const image = join(dir.path, "fs.img");
    // 1 KiB blocks without flex_bg: group 1's bitmap is 8 MiB in.
    await mkfs(image, 32 * MiB, ["-t", "ext4", "-b", "1024", "-O", "^flex_bg"]);
    const disk = await Deno.readFile(image);
    const stage = new FreeSpaceStream({ readAhead: 1 * MiB });
    const out = await zeroRuns(
      ReadableStream.from([disk]).pipeThrough(stage),
      disk,
    );
    assert.deepStrictEqual(out, []);
    const [region] = (await stage.report).regions;
    assert.strictEqual(region.status, "untouched");
    assert.match(
      region.reason!,
      /^metadata at byte \d+ lies more than 1048576 bytes past byte 0 of the stream \(the read-ahead limit\)/,
    );
    // With the default read-ahead the same filesystem is mapped.
    const wide = new FreeSpaceStream();
    await zeroRuns(ReadableStream.from([disk]).pipeThrough(wide), disk);
    assert.strictEqual((await wide.report).regions[0].status, "mapped");
  },
);

diskTest(
  "freeSpaceChunks over HTTP reads the metadata and the used ranges, not the free ones",
  { tools: TOOLS },
  async () => {
    await using dir = await tempDir();
    const built = await buildDisk(dir.path, "gpt");
    const disk = await Deno.readFile(built.path);
    const expected = await expectedOf(dir.path, built);
    const requests: FreeRange[] = [];
    await using server = Deno.serve({ port: 0, onListen() {} }, (req) => {
      const m = /bytes=(\d+)-(\d+)/.exec(req.headers.get("range") ?? "")!;
      const a = Number(m[1]);
      const b = Math.min(Number(m[2]), disk.length - 1);
      requests.push({ offset: a, length: b - a + 1 });
      return new Response(disk.slice(a, b + 1), {
        status: 206,
        headers: { "content-range": `bytes ${a}-${b}/${disk.length}` },
      });
    });
    // Not fetching ahead of forward reads, which would run into the free
    // space (the CLI opens the source so for --sparsify).
    await using http = await HttpSource.open(
      `http://localhost:${server.addr.port}/disk.img`,
      { fetchAhead: false },
    );
    const { readable, report } = await freeSpaceChunks(http);
    const runs = await zeroRuns(readable, expected);
    assert.ok(within(built.free, runs));
    const fetched = requests.reduce((n, r) => n + r.length, 0);
    // Everything but the free space, plus the metadata read twice (once to
    // map, once as data): the inode tables, which the analysis reads whole,
    // and 2 MiB for the rest. Well under the disk.
    const sb = new DataView(disk.buffer, built.parts[0].offset + 1024, 1024);
    const inodeTables = sb.getUint32(0x00, true) * sb.getUint16(0x58, true);
    assert.ok(
      fetched <= disk.length - report.freeBytes + inodeTables + 2 * MiB,
      `fetched ${fetched} of ${disk.length}, ${report.freeBytes} free, ${inodeTables} of inode tables`,
    );
    // Free bytes fetched: only the first 64 KiB a partition is probed with.
    let freeFetched = 0;
    for (const q of requests) {
      for (const f of built.free) {
        const lo = Math.max(q.offset, f.offset);
        const hi = Math.min(q.offset + q.length, f.offset + f.length);
        if (hi > lo) freeFetched += hi - lo;
      }
    }
    assert.ok(freeFetched <= 3 * 65608, `free bytes fetched: ${freeFetched}`);
  },
);

diskTest(
  "convert() with sparsify writes the disk with its free space as zeros and reports it",
  { tools: [...TOOLS, "qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const built = await buildDisk(dir.path, "gpt");
    const expected = join(dir.path, "expected.raw");
    await zeroed(built.path, expected, built.free);

    // An opened image (random reads), then a stream.
    await using image = await openImage(built.path);
    const a = join(dir.path, "a.qcow2");
    const fromImage = await convert(image, await OutputFile.create(a), {
      compression: "zstd",
      workers: 1,
      sparsify: true,
    });
    const b = join(dir.path, "b.qcow2");
    const fromStream = await convert(
      fileChunks(await Deno.open(built.path)),
      await OutputFile.create(b),
      { compression: "zlib", workers: 1, sparsify: true },
    );
    for (const out of [a, b]) {
      await qemuCheckClean(out);
      await qemuCompareIdentical(expected, out);
    }
    assert.deepStrictEqual(fromImage.sparsify, fromStream.sparsify);
    assert.strictEqual(
      fromImage.sparsify!.freeBytes,
      built.free.reduce((n, r) => n + r.length, 0),
    );
    const plain = await convert(
      image,
      await OutputFile.create(join(dir.path, "c.qcow2")),
      {
        compression: "zstd",
        workers: 1,
      },
    );
    assert.strictEqual(plain.sparsify, undefined);
    assert.ok(fromImage.fileSize < plain.fileSize / 2);
  },
);

diskTest(
  "convert --sparsify from a file, a pipe and to raw gives the same disk; -q is quiet",
  { tools: [...TOOLS, "qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const built = await buildDisk(dir.path, "dos");
    const expected = join(dir.path, "expected.raw");
    await zeroed(built.path, expected, built.free);
    const file = join(dir.path, "file.qcow2");
    const r1 = await runCli([
      "convert",
      "--verbose",
      "--sparsify",
      "--compress",
      "zstd",
      built.path,
      file,
    ]);
    assert.strictEqual(r1.code, 0, r1.stderr);
    const r1Lines = r1.stderr.trimEnd().split("\n");
    // The report, then the summary line of every conversion.
    assert.match(r1Lines.pop()!, /^qcow2pipe: wrote /);
    assert.deepStrictEqual(
      r1Lines.map((l) => l.replace(/\(.*?\)/g, "()")),
      [
        "qcow2pipe: sparsify: MBR, 3 partitions",
        "qcow2pipe: sparsify: partition 1 (): ext4 (): " + free(built, 0) +
        " free, dropped",
        "qcow2pipe: sparsify: partition 5 (): swap (): 16.0 MiB free, dropped",
        "qcow2pipe: sparsify: partition 6 (): unknown left as it is: no filesystem that --sparsify handles was found",
        `qcow2pipe: sparsify: ${free(built)} dropped as free space`,
      ],
    );
    assert.match(
      r1.stderr,
      /partition 5 \(Linux swap, 16\.0 MiB at 50\.0 MiB\): swap \(4 KiB pages, UUID [0-9a-f-]{36}, label "old-swap"\)/,
    );
    const pipe = join(dir.path, "pipe.qcow2");
    const r2 = await runCli(
      ["convert", "-q", "--sparsify", "-O", "qcow2", "-", pipe],
      { stdin: await Deno.readFile(built.path) },
    );
    assert.strictEqual(r2.code, 0, r2.stderr);
    assert.strictEqual(r2.stderr, "");
    const raw = join(dir.path, "out.raw");
    const r3 = await runCli(["convert", "-q", "--sparsify", built.path, raw]);
    assert.strictEqual(r3.code, 0, r3.stderr);
    for (const out of [file, pipe]) {
      await qemuCheckClean(out);
      await qemuCompareIdentical(expected, out);
    }
    assert.deepStrictEqual(
      await Deno.readFile(raw),
      await Deno.readFile(expected),
    );
    // The raw output is sparse where the free space was.
    const st = await Deno.stat(raw);
    assert.ok(
      (st.blocks ?? 0) * 512 < st.size - 40 * MiB,
      `raw output allocates ${(st.blocks ?? 0) * 512}`,
    );
  },
);

/** The CLI's wording of the bytes dropped, for partition `i` or all. */
function free(
  built: { free: FreeRange[]; parts: FreeRange[] },
  i?: number,
): string {
  const inside = (r: FreeRange) =>
    i === undefined ||
    (r.offset >= built.parts[i].offset &&
      r.offset < built.parts[i].offset + built.parts[i].length);
  return formatBytes(
    built.free.filter(inside).reduce((n, r) => n + r.length, 0),
  );
}

diskTest(
  "mapFreeSpace() reads a bare swap area made by mkswap",
  { tools: ["mkswap"] },
  async () => {
    await using dir = await tempDir();
    const path = join(dir.path, "swap.img");
    await Deno.writeFile(path, new Uint8Array(8 * MiB).fill(1));
    await sh("mkswap", [
      "-q",
      "-L",
      "scratch",
      "-U",
      "2c5f6a0e-1b7d-4c1e-9f8a-0123456789ab",
      path,
    ]);
    await using src = await FileSource.open(path);
    const { report } = await mapFreeSpace(src);
    assert.deepStrictEqual(report.regions, [{
      partition: 0,
      offset: 0,
      length: 8 * MiB,
      found: "swap",
      detail:
        '4 KiB pages, UUID 2c5f6a0e-1b7d-4c1e-9f8a-0123456789ab, label "scratch"',
      status: "mapped",
      freeBytes: 8 * MiB - 4096,
    }]);
  },
);

Deno.test("FreeSpaceStream() refuses a read-ahead below 1 MiB and a negative size", () => {
  assert.throws(
    () => new FreeSpaceStream({ readAhead: 65536 }),
    {
      name: "RangeError",
      message:
        "Cannot map free space: readAhead 65536 is out of range [1048576, 2^53)",
    },
  );
  assert.throws(
    () => new FreeSpaceStream({ size: -1 }),
    {
      name: "RangeError",
      message: "Cannot map free space: size -1 is not a non-negative integer",
    },
  );
});
