// Where the forward pipeline's bytes go and come from: OutputFile (a
// temporary file beside DST, renamed on commit, removed on abort, holes
// for skipped ranges, devices written in place), fileChunks, and convert()
// with a failing source, a plain sink and an opened raw image.

import assert from "node:assert";
import { join } from "node:path";
import { OutputFile } from "../../lib/host/output_file.ts";
import { IoError } from "../../lib/format/errors.ts";
import { isTemporaryTracked } from "../../lib/host/temp.ts";
import { fileChunks } from "../../lib/host/file_stream.ts";
import { convert } from "../../lib/convert.ts";
import { writesToBytes } from "../../lib/writer/qcow2_writer.ts";
import type { HostWrite } from "../../lib/writer/records.ts";
import { openImage } from "../../lib/reader/open.ts";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertGuestBytes,
  listDir,
  MiB,
  mixedBytes,
  prng,
  randomBytes,
  readBack,
  verifyImage,
} from "./_helpers.ts";

Deno.test("OutputFile: a temporary file beside DST, renamed on commit", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "disk.qcow2");
  const out = await OutputFile.create(dst);
  assert.strictEqual(out.path, dst);
  assert.strictEqual(out.isDevice, false);
  assert.match(out.writingPath, /\/\.disk\.qcow2\.[0-9a-f]{8}\.partial$/);
  assert.ok(isTemporaryTracked(out.writingPath));
  assert.deepStrictEqual(await listDir(dir.path), [
    out.writingPath.split("/").at(-1)!,
  ]);
  await out.writeAt(0, new Uint8Array([1, 2, 3]));
  await out.commit();
  assert.ok(!isTemporaryTracked(out.writingPath));
  assert.deepStrictEqual(await listDir(dir.path), ["disk.qcow2"]);
  assert.deepStrictEqual(await Deno.readFile(dst), new Uint8Array([1, 2, 3]));
});

Deno.test("OutputFile: abort removes the temporary file (twice is fine); an existing DST is replaced only at commit", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "disk.qcow2");
  const out = await OutputFile.create(dst);
  await out.writeAt(0, new Uint8Array(100));
  await out.abort();
  await out.abort();
  assert.ok(!isTemporaryTracked(out.writingPath));
  assert.deepStrictEqual(await listDir(dir.path), []);

  await Deno.writeFile(dst, new Uint8Array([9]));
  await assert.rejects(
    OutputFile.create(dst, { noClobber: true }),
    (e) => e instanceof IoError && e.code === "EXISTS",
  );
  assert.deepStrictEqual(await listDir(dir.path), ["disk.qcow2"]);
  const replacing = await OutputFile.create(dst);
  assert.deepStrictEqual(
    await Deno.readFile(dst),
    new Uint8Array([9]),
    "DST untouched until commit",
  );
  await replacing.writeAt(0, new Uint8Array([7, 7]));
  await replacing.commit();
  assert.deepStrictEqual(await Deno.readFile(dst), new Uint8Array([7, 7]));
  // a directory is never replaced
  await Deno.mkdir(join(dir.path, "sub"));
  await assert.rejects(OutputFile.create(join(dir.path, "sub")), /directory/);
});

Deno.test("OutputFile: writes at any offset, in any order, coalesced or not, with holes", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "out.bin");
  const out = await OutputFile.create(dst);
  const size = 40 * MiB;
  const expected = new Uint8Array(size);
  const rand = prng(3);
  // sequential small writes (coalesced), big writes, backwards writes
  let at = 1000;
  for (let i = 0; i < 200; i++) {
    const data = randomBytes(1 + Math.floor(rand() * 70_000), i);
    await out.writeAt(at, data);
    expected.set(data, at);
    at += data.length;
  }
  const big = randomBytes(5 * MiB, 1000);
  await out.writeAt(30 * MiB, big);
  expected.set(big, 30 * MiB);
  for (let i = 0; i < 50; i++) {
    const off = Math.floor(rand() * (size - 5000));
    const data = randomBytes(1 + Math.floor(rand() * 4000), 2000 + i);
    await out.writeAt(off, data);
    expected.set(data, off);
  }
  await out.writeAt(0, new Uint8Array(0));
  await out.commit(size);
  const got = await Deno.readFile(dst);
  assert.strictEqual(got.length, size);
  assert.ok(got.every((b, i) => b === expected[i]), "file content");
});

Deno.test("OutputFile: a character device is a stream, refused for writes at offsets", async () => {
  await assert.rejects(
    OutputFile.create("/dev/null"),
    /^IoError: Cannot write \/dev\/null: it is a character device, written as a stream, in order, not at offsets$/m,
  );
  assert.ok((await Deno.stat("/dev/null")).isCharDevice);
});

Deno.test("fileChunks: fresh chunks of the requested size, the file closed at the end", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "in.bin");
  const data = randomBytes(1_000_003, 5);
  await Deno.writeFile(path, data);
  const file = await Deno.open(path);
  const chunks = await Array.fromAsync(fileChunks(file, 100_000));
  assert.deepStrictEqual(
    chunks.map((c) => c.length),
    [...new Array(10).fill(100_000), 3],
  );
  assert.strictEqual(new Set(chunks.map((c) => c.buffer)).size, 11);
  const joined = new Uint8Array(data.length);
  let at = 0;
  for (const c of chunks) {
    joined.set(c, at);
    at += c.length;
  }
  assert.deepStrictEqual(joined, data);
  assert.throws(
    () => file.readSync(new Uint8Array(1)),
    Deno.errors.BadResource,
  );
  // empty file: no chunks
  await Deno.writeFile(path, new Uint8Array(0));
  assert.deepStrictEqual(
    await Array.fromAsync(fileChunks(await Deno.open(path))),
    [],
  );
});

Deno.test("convert: a source that fails midway leaves nothing behind", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "out.qcow2");
  let n = 0;
  const failing = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (++n > 20) controller.error(new Error("disk read error"));
      else controller.enqueue(mixedBytes(MiB, n));
    },
  });
  await assert.rejects(
    convert(failing, await OutputFile.create(dst), {
      compression: "zstd",
      workers: 1,
    }),
    /disk read error/,
  );
  assert.deepStrictEqual(await listDir(dir.path), []);
});

Deno.test("convert: host writes into a plain sink give the same image as into a file", async () => {
  await using dir = await tempDir();
  const input = mixedBytes(2 * MiB + 99, 8, 30_000);
  const writes: HostWrite[] = [];
  const summary = await convert(
    ReadableStream.from([input.slice()]),
    new WritableStream<HostWrite>({
      write: (w) => {
        writes.push({ offset: w.offset, data: w.data.slice() });
      },
    }),
    { compression: "zlib", clusterSize: 4096, workers: 0 },
  );
  assert.strictEqual(writes.at(-1)!.offset, 0, "the header comes last");
  const fromSink = await writesToBytes(ReadableStream.from(writes));
  assert.strictEqual(fromSink.length, summary.fileSize);
  const path = join(dir.path, "file.qcow2");
  await convert(
    ReadableStream.from([input.slice()]),
    await OutputFile.create(path),
    {
      compression: "zlib",
      clusterSize: 4096,
      workers: 2,
    },
  );
  assert.deepStrictEqual(
    await Deno.readFile(path),
    fromSink,
    "deterministic whatever the worker count",
  );
  await using image = await openImage(fromSink);
  assertGuestBytes(await image.readAt(0, image.virtualSize), input);
});

qemuTest("convert: an opened raw image of odd length as input", async () => {
  await using dir = await tempDir();
  for (const size of [1, 1000, 65537, 3 * 65536 + 511]) {
    const src = join(dir.path, `odd-${size}.raw`);
    const input = mixedBytes(size, size, 3000);
    await Deno.writeFile(src, input);
    await using image = await openImage(src);
    assert.strictEqual(image.format, "raw");
    const dst = join(dir.path, `odd-${size}.qcow2`);
    await convert(image, await OutputFile.create(dst), {
      compression: "zstd",
      clusterSize: 4096,
      workers: 1,
    });
    await verifyImage(dir.path, dst, input, {
      compression: "zstd",
      clusterSize: 4096,
      refcountBits: 16,
    });
    assertGuestBytes(await readBack(dst), input);
  }
});
