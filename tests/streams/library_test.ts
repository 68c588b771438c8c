import assert from "node:assert";
import { join } from "node:path";
import {
  fetchStream,
  HttpSource,
  RangeNotSupportedError,
} from "../../lib/io/http_source.ts";
import { StreamableQcow2Writer } from "../../lib/writer/streamable.ts";
import { openImageStream } from "../../lib/reader/stream_open.ts";
import {
  convertToBytes,
  Qcow2Writer,
  type Qcow2WriterOptions,
} from "../../lib/writer/qcow2_writer.ts";
import { openImage } from "../../lib/reader/open.ts";
import { imageReadable } from "../../lib/reader/segments.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuIo,
  qemuTest,
  tempDir,
} from "../_qemu.ts";
import { serveFiles } from "./_server.ts";

/** A deterministic mixed disk: text, noise, zero runs, an odd length. */
function sampleDisk(size: number, seed = 1): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed;
  const rand = () =>
    (x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 4294967296;
  for (let at = 0; at < size; at += 65536) {
    const kind = Math.floor(rand() * 4);
    const end = Math.min(size, at + 65536);
    if (kind === 0) continue; // zeros
    for (let i = at; i < end; i++) {
      out[i] = kind === 1
        ? Math.floor(rand() * 256)
        : kind === 2
        ? 97 + (i % 26)
        : (i >> 7) & 0xff;
    }
  }
  return out;
}

/** The bytes as a pipe delivers them: 64 KiB at a time. */
function piped(bytes: Uint8Array): ReadableStream<Uint8Array> {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += 65536) {
    chunks.push(bytes.slice(at, at + 65536));
  }
  return ReadableStream.from(chunks);
}

async function bytesOf(
  stream: ReadableStream<Uint8Array>,
): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

Deno.test("HttpSource.open() opens with one request for 1 MiB and fetches only what is read", async () => {
  const body = sampleDisk(2_400_000);
  await using server = serveFiles({
    "disk.raw": body,
    "small.raw": body.slice(0, 3000),
  });
  await using src = await HttpSource.open(server.url("disk.raw"));
  assert.strictEqual(src.size, body.length);
  // Reads inside the first 1 MiB (format, header, tables) need no request.
  for (const [offset, length] of [[0, 1], [0, 4], [0, 512], [0, 1048576]]) {
    assert.deepStrictEqual(
      await src.read(offset, length),
      body.subarray(offset, offset + length),
    );
  }
  assert.deepStrictEqual(server.requests, ["GET disk.raw bytes=0-1048575"]);
  assert.deepStrictEqual(
    await src.read(1_723_457, 1000),
    body.subarray(1_723_457, 1_724_457),
  );
  assert.deepStrictEqual(
    await src.read(body.length - 10, 100),
    body.subarray(body.length - 10),
  );
  assert.deepStrictEqual(server.requests, [
    "GET disk.raw bytes=0-1048575",
    "GET disk.raw bytes=1723457-1724456",
    "GET disk.raw bytes=2399990-2399999",
  ]);
  assert.strictEqual(server.bytesSent, 1048576 + 1000 + 10);
  // A resource smaller than that is read whole by the first request.
  await using small = await HttpSource.open(server.url("small.raw"));
  assert.deepStrictEqual(await small.read(0, 5000), body.subarray(0, 3000));
  assert.strictEqual(server.requests.at(-1), "GET small.raw bytes=0-1048575");
});

Deno.test("HttpSource: reads asked for together go out merged when they are close", async () => {
  const body = sampleDisk(4_000_000);
  await using server = serveFiles({ "disk.raw": body });
  await using src = await HttpSource.open(server.url("disk.raw"));
  const asked: [number, number][] = [
    [1_600_000, 1000],
    [1_700_000, 5000], // 99 KB after the first: merged
    [1_650_000, 10], // inside the gap, asked out of order: merged
    [3_000_000, 100], // far: a request of its own
  ];
  const got = await Promise.all(asked.map(([o, n]) => src.read(o, n)));
  asked.forEach(([o, n], i) => {
    assert.deepStrictEqual(got[i], body.subarray(o, o + n));
  });
  assert.deepStrictEqual(server.requests.slice(1), [
    "GET disk.raw bytes=1600000-1704999",
    "GET disk.raw bytes=3000000-3000099",
  ]);
  // Reads merged into one request are views of its response, not copies.
  assert.strictEqual(got[0].buffer, got[1].buffer);
  assert.notStrictEqual(got[0].buffer, got[3].buffer);
  // Reads one after another are not held back for each other.
  assert.deepStrictEqual(
    await src.read(1_800_000, 10),
    body.subarray(1_800_000, 1_800_010),
  );
  assert.deepStrictEqual(
    await src.read(1_801_000, 10),
    body.subarray(1_801_000, 1_801_010),
  );
  assert.deepStrictEqual(server.requests.slice(3), [
    "GET disk.raw bytes=1800000-1800009",
    "GET disk.raw bytes=1801000-1801009",
  ]);
});

Deno.test("HttpSource.open() refuses a server that ignores Range", async () => {
  await using server = serveFiles({ "disk.raw": new Uint8Array(1000) }, {
    ranges: false,
  });
  await assert.rejects(
    () => HttpSource.open(server.url("disk.raw")),
    RangeNotSupportedError,
  );
});

Deno.test("HttpSource.openOrStream() streams the first response of a server without Range support", async () => {
  const body = sampleDisk(300_000);
  await using server = serveFiles({ "disk.raw": body }, { ranges: false });
  const opened = await HttpSource.openOrStream(server.url("disk.raw"));
  assert.ok(!(opened instanceof HttpSource));
  assert.strictEqual(opened.size, body.length);
  assert.deepStrictEqual(await bytesOf(opened.body), body);
  assert.deepStrictEqual(server.requests, ["GET disk.raw bytes=0-1048575"]);
  // With Range support, the same call gives random access.
  await using ranged = serveFiles({ "disk.raw": body });
  const source = await HttpSource.openOrStream(ranged.url("disk.raw"));
  assert.ok(source instanceof HttpSource);
  assert.strictEqual(source.size, body.length);
});

Deno.test("HttpSource.open() reports a 404 in one line, with a colon after the URL", async () => {
  await using server = serveFiles({});
  await assert.rejects(
    () => HttpSource.open(server.url("missing.qcow2")),
    (err: Error) =>
      /^Cannot fetch http:\/\/127\.0\.0\.1:\d+\/missing\.qcow2: the server answered 404 Not Found$/
        .test(err.message),
  );
  await assert.rejects(
    () => fetchStream(server.url("missing.raw")),
    (err: Error) =>
      /^Cannot fetch http:\/\/127\.0\.0\.1:\d+\/missing\.raw: the server answered 404 Not Found$/
        .test(err.message),
  );
});

Deno.test("fetchStream() fails when the server cuts the transfer and cannot resume it", async () => {
  await using server = serveFiles({
    "disk.raw": new Uint8Array(500_000).fill(1),
  }, { failAfter: 200_000, ranges: false });
  const { body } = await fetchStream(server.url("disk.raw"), {
    retryDelays: [1],
  });
  await assert.rejects(() => bytesOf(body), (err: Error) => {
    assert.match(
      err.message,
      /^Cannot read http:\/\/127\.0\.0\.1:\d+\/disk\.raw: the transfer broke after 200000 bytes, and the server answered 200 to a Range request for the rest: it cannot resume$/,
    );
    return true;
  });
  assert.deepStrictEqual(server.requests, [
    "GET disk.raw",
    "GET disk.raw bytes=200000-",
  ]);
});

Deno.test("openImage() reads a qcow2 image over HTTP ranges, fetching a fraction of it", async () => {
  const raw = sampleDisk(8 << 20);
  raw.fill(0, 3 << 20); // mostly zeros after the first 3 MiB
  raw.set(sampleDisk(70_000, 7), 6 << 20);
  const qcow2 = await convertToBytes(raw, { compression: "zstd", workers: 1 });
  await using server = serveFiles({ "disk.qcow2": qcow2 });
  await using image = await openImage(
    await HttpSource.open(server.url("disk.qcow2")),
  );
  assert.deepStrictEqual(
    await image.readAt((6 << 20) + 5, 60_000),
    raw.subarray((6 << 20) + 5, (6 << 20) + 60_005),
  );
  assert.ok(
    server.bytesSent < qcow2.length,
    `fetched ${server.bytesSent} of ${qcow2.length} bytes`,
  );
  await using pool = new CodecPool({ workers: 2 });
  assert.deepStrictEqual(await bytesOf(imageReadable(image, { pool })), raw);
});

Deno.test("StreamableQcow2Writer() output opens in one pass from a stream", async () => {
  const raw = sampleDisk(3_000_001);
  for (const compression of ["none", "zlib", "zstd"] as const) {
    await using writer = new StreamableQcow2Writer({
      compression,
      workers: 1,
      clusterSize: 4096,
    });
    const qcow2 = await bytesOf(ReadableStream.from([raw]).pipeThrough(writer));
    const summary = await writer.summary;
    assert.strictEqual(summary.fileSize, qcow2.length);
    assert.ok(
      summary.spoolBytes <= qcow2.length,
      "the spool is never larger than the output",
    );
    await using opened = await openImageStream(piped(qcow2));
    assert.strictEqual(opened.onePass, true, compression);
    assert.ok(
      opened.spoolBytes < qcow2.length / 2,
      `spooled ${opened.spoolBytes} of ${qcow2.length}`,
    );
    const back = await bytesOf(imageReadable(opened.image));
    assert.deepStrictEqual(back.subarray(0, raw.length), raw);
    assert.ok(back.subarray(raw.length).every((b) => b === 0));
  }
});

Deno.test("StreamableQcow2Writer() refuses the options Qcow2Writer refuses", () => {
  for (
    const [options, message] of [
      [{ compression: "none", level: 5 }, /a compression level needs/],
      [{ level: 5 }, /a compression level needs/],
      [{ compression: "lz4" }, /"lz4" is not none, zlib or zstd/],
      [{ clusterSize: 1000 }, /cluster size 1000/],
      [{ refcountBits: 3 }, /refcount width 3/],
    ] as const
  ) {
    for (const Writer of [Qcow2Writer, StreamableQcow2Writer]) {
      assert.throws(
        () => new Writer(options as Qcow2WriterOptions),
        (err: Error) => err instanceof RangeError && message.test(err.message),
        `${Writer.name} ${JSON.stringify(options)}`,
      );
    }
  }
});

Deno.test("StreamableQcow2Writer() keeps every spool file in spoolDir", async () => {
  await using dir = await tempDir();
  const spoolDir = join(dir.path, "spools");
  await Deno.mkdir(spoolDir);
  const raw = sampleDisk(1_000_000);
  const writer = new StreamableQcow2Writer({ spoolDir, clusterSize: 4096 });
  const qcow2 = await bytesOf(ReadableStream.from([raw]).pipeThrough(writer));
  const summary = await writer.summary;
  const spools = await Array.fromAsync(Deno.readDir(spoolDir));
  assert.strictEqual(spools.length, 2, "the data region and the mappings");
  let spooled = 0;
  for (const entry of spools) {
    assert.match(entry.name, /^qcow2pipe-spool-/);
    for await (const file of Deno.readDir(join(spoolDir, entry.name))) {
      spooled += (await Deno.stat(join(spoolDir, entry.name, file.name))).size;
    }
  }
  assert.strictEqual(spooled, summary.spoolBytes);
  await writer.close();
  assert.deepStrictEqual(await Array.fromAsync(Deno.readDir(spoolDir)), []);
  await using image = await openImage(qcow2);
  assert.deepStrictEqual(await image.readAt(0, raw.length), raw);
});

Deno.test("openImageStream() spools an image whose metadata follows its data", async () => {
  const raw = sampleDisk(2_000_000);
  const qcow2 = await convertToBytes(raw, { compression: "zlib", workers: 1 }); // L1/L2 at the end
  await using opened = await openImageStream(ReadableStream.from([qcow2]));
  assert.strictEqual(opened.onePass, false);
  assert.strictEqual(opened.spoolBytes, qcow2.length);
  assert.deepStrictEqual(
    (await bytesOf(imageReadable(opened.image))).subarray(0, raw.length),
    raw,
  );
});

Deno.test("openImageStream() takes raw bytes too", async () => {
  const raw = sampleDisk(100_000);
  await using opened = await openImageStream(
    ReadableStream.from([raw.slice(0, 7), raw.slice(7)]),
  );
  assert.strictEqual(opened.image.format, "raw");
  // A raw disk is whole sectors: the tail of the last one reads as zeros.
  const disk = new Uint8Array(Math.ceil(raw.length / 512) * 512);
  disk.set(raw);
  assert.deepStrictEqual(await bytesOf(imageReadable(opened.image)), disk);
});

qemuTest(
  "StreamableQcow2Writer() images pass qemu-img check and compare",
  async () => {
    await using dir = await tempDir();
    const raw = sampleDisk(5_000_000 + 333);
    const rawPath = join(dir.path, "disk.raw");
    await Deno.writeFile(rawPath, raw);
    for (
      const [compression, clusterSize, refcountBits] of [
        ["none", 65536, 16],
        ["zstd", 65536, 16],
        ["zlib", 512, 1],
        ["zstd", 2097152, 64],
        ["zlib", 16384, 2],
      ] as const
    ) {
      await using writer = new StreamableQcow2Writer({
        compression,
        clusterSize,
        refcountBits,
        workers: 2,
      });
      const path = join(dir.path, `s-${compression}-${clusterSize}.qcow2`);
      await Deno.writeFile(
        path,
        await bytesOf(ReadableStream.from([raw]).pipeThrough(writer)),
      );
      await qemuCheckClean(path);
      await qemuCompareIdentical(rawPath, path);
    }
  },
);

qemuTest(
  "openImageStream() decodes a QEMU image with preallocated metadata in one pass",
  async () => {
    await using dir = await tempDir();
    const path = join(dir.path, "pre.qcow2");
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "preallocation=metadata",
      path,
      "8M",
    );
    await qemuIo(path, [
      "write -P 0x61 0 100k",
      "write -P 0x62 3M 64k",
      "write -z 5M 64k",
    ]);
    const ref = join(dir.path, "ref.raw");
    await qemuImg("convert", "-O", "raw", path, ref);
    const file = await Deno.open(path);
    await using opened = await openImageStream(file.readable);
    assert.strictEqual(opened.onePass, true);
    assert.deepStrictEqual(
      await bytesOf(imageReadable(opened.image)),
      await Deno.readFile(ref),
    );
  },
);

qemuTest(
  "openImageStream() spools an image qemu-img convert wrote and reads it right",
  async () => {
    await using dir = await tempDir();
    const rawPath = join(dir.path, "in.raw");
    await Deno.writeFile(rawPath, sampleDisk(3_000_000));
    const path = join(dir.path, "c.qcow2");
    await qemuImg("convert", "-c", "-O", "qcow2", rawPath, path);
    const file = await Deno.open(path);
    await using opened = await openImageStream(file.readable);
    const back = await bytesOf(imageReadable(opened.image));
    const ref = join(dir.path, "ref.raw");
    await qemuImg("convert", "-O", "raw", path, ref);
    assert.deepStrictEqual(back, await Deno.readFile(ref));
  },
);
