// RangeChunks (lib/io/range_chunks.ts), what `--sparsify` streams the kept
// ranges of a raw file or an HTTP resource through: a file's chunks go
// round when asked to, zeros on disk become zero runs, an HTTP source is
// read in pieces fetched several at a time, and the bytes are the source's.
import assert from "node:assert";
import { join } from "node:path";
import { doneWith } from "../../lib/bytes/recycle.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { HttpSource } from "../../lib/io/http_source.ts";
import { RangeChunks } from "../../lib/io/range_chunks.ts";
import { WINDOW_PIECE } from "../../lib/io/_http_window.ts";
import { tempDir } from "../_qemu.ts";
import { serveFiles } from "./_server.ts";

const MiB = 1024 * 1024;

/** 8 MiB of bytes, the third MiB zeros. */
function disk(): Uint8Array {
  const bytes = new Uint8Array(8 * MiB).map((_, i) => (i * 7 + 3) % 251);
  bytes.fill(0, 2 * MiB, 3 * MiB);
  return bytes;
}

/** Reads `[from, to)` of `reader`, checking every chunk against `bytes`. */
async function readChecked(
  reader: RangeChunks,
  bytes: Uint8Array,
  from: number,
  to: number,
  after: (chunk: Uint8Array) => void = () => {},
): Promise<Array<Uint8Array | number>> {
  const out: Array<Uint8Array | number> = [];
  let at = from;
  for await (const c of reader.range(from, to)) {
    if (c instanceof Uint8Array) {
      assert.deepStrictEqual(c, bytes.subarray(at, at + c.length));
      at += c.length;
      out.push(c);
      after(c);
    } else {
      assert.ok(bytes.subarray(at, at + c.zeros).every((b) => b === 0));
      at += c.zeros;
      out.push(c.zeros);
    }
  }
  assert.strictEqual(at, to);
  return out;
}

Deno.test("RangeChunks with recycle reads a file into buffers that go round once written", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "disk.raw");
  const bytes = disk();
  await Deno.writeFile(path, bytes);
  await using file = await FileSource.open(path);

  using recycled = new RangeChunks(file, { chunkSize: MiB, recycle: true });
  // A sink that has written each chunk says so: the buffers go round.
  const chunks = await readChecked(recycled, bytes, 0, bytes.length, doneWith);
  assert.strictEqual(chunks.filter((c) => c === MiB).length, 1, "zeros");
  const data = chunks.filter((c) => c instanceof Uint8Array);
  assert.strictEqual(data.length, 7);
  assert.ok(
    new Set(data.map((c) => c.buffer)).size < data.length,
    "some buffer went round",
  );

  // Without recycle every chunk is fresh memory.
  using fresh = new RangeChunks(file, { chunkSize: MiB });
  const own = (await readChecked(fresh, bytes, 0, bytes.length, doneWith))
    .filter((c) => c instanceof Uint8Array);
  assert.strictEqual(new Set(own.map((c) => c.buffer)).size, own.length);
});

Deno.test("RangeChunks reads a range that runs past a shrunken source as zeros", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "disk.raw");
  const bytes = disk();
  await Deno.writeFile(path, bytes);
  await using file = await FileSource.open(path);
  using reader = new RangeChunks(file, { chunkSize: MiB, recycle: true });
  const tail = await readChecked(
    reader,
    new Uint8Array([...bytes, ...new Uint8Array(MiB)]),
    6 * MiB,
    9 * MiB,
  );
  assert.deepStrictEqual(tail.map((c) => typeof c === "number" ? -c : 1), [
    1,
    1,
    -MiB,
  ]);
});

Deno.test("RangeChunks reads an HTTP source in pieces fetched several at a time, for the same bytes", async () => {
  const bytes = new Uint8Array(32 * MiB).map((_, i) => (i * 13 + 1) % 253);
  await using server = serveFiles({ "disk.img": bytes }, { latency: 20 });
  await using http = await HttpSource.open(server.url("disk.img"));
  server.reset();
  using reader = new RangeChunks(http, { chunkSize: 4 * MiB });
  const chunks = await readChecked(reader, bytes, 0, bytes.length);
  assert.strictEqual(chunks.length, 8);
  // Reads that run forward open HttpSource's read window: pieces of
  // WINDOW_PIECE bytes, several in flight on connections of their own.
  assert.deepStrictEqual(
    server.requests,
    Array.from(
      { length: 8 },
      (_, i) =>
        `GET disk.img bytes=${i * WINDOW_PIECE}-${(i + 1) * WINDOW_PIECE - 1}`,
    ),
  );
  assert.ok(
    server.connections.maxConcurrent > 1,
    JSON.stringify(server.connections),
  );
});
