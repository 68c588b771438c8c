// Buffers that go round on the forward path (lib/bytes/recycle.ts): the raw
// file's chunks and the compression jobs are used again once the sink has
// written what came after them, and the image is still what QEMU reads.
import assert from "node:assert";
import { join } from "node:path";
import {
  BufferPool,
  doneWith,
  POISON_BYTE,
  Recycler,
  setPoisoning,
} from "../../lib/bytes/recycle.ts";
import { sparseFileChunks } from "../../lib/host/file_stream.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { convert } from "../../lib/convert.ts";
import { HostAllocator } from "../../lib/writer/_host_allocator.ts";
import { ClusterPacker, type PlacedRecord } from "../../lib/writer/_packer.ts";
import type { ClusterRecord } from "../../lib/writer/records.ts";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuTest,
  tempDir,
} from "../_qemu.ts";
import { mixedBytes } from "./_helpers.ts";

Deno.test("Recycler: buffers come back only once a later one is done with, oldest first", () => {
  const recycler = new Recycler(4096);
  const [a, b, c] = [recycler.take(), recycler.take(), recycler.take()];
  assert.strictEqual(new Set([a.buffer, b.buffer, c.buffer]).size, 3);
  doneWith(b.subarray(100, 200)); // done with a, not yet with b
  const d = recycler.take();
  assert.strictEqual(d.buffer, a.buffer, "a is used again");
  const e = recycler.take();
  assert.ok(
    ![b.buffer, c.buffer, d.buffer].includes(e.buffer),
    "nothing else is free",
  );
  doneWith(new Uint8Array(4096)); // not a recycler's: ignored
  const taken = Array.from({ length: 50 }, () => recycler.take());
  assert.strictEqual(
    new Set(taken.map((t) => t.buffer)).size,
    50,
    "without doneWith every buffer is new",
  );
});

Deno.test("Recycler and BufferPool poison a buffer when it is free again, not before (debug mode)", () => {
  const was = setPoisoning(true);
  try {
    const recycler = new Recycler(4096);
    const [a, b, c] = [recycler.take(), recycler.take(), recycler.take()];
    for (const view of [a, b, c]) view.fill(1);
    doneWith(a); // nothing was lent before a
    assert.ok(a.every((x) => x === 1), "a is still lent");
    doneWith(b);
    assert.ok(a.every((x) => x === POISON_BYTE), "a is free: poisoned");
    assert.ok(b.every((x) => x === 1), "b is still lent");
    recycler.giveBack(c);
    assert.ok(c.every((x) => x === POISON_BYTE), "c given back: poisoned");

    const pool = new BufferPool();
    const d = pool.take(100_000).fill(2);
    const view = d.subarray(10, 20);
    pool.put(d);
    assert.ok(view.every((x) => x === POISON_BYTE), "put back: poisoned");
    assert.strictEqual(pool.take(100_000), d, "and used again");

    setPoisoning(false);
    const e = pool.take(100).fill(3);
    pool.put(e);
    assert.ok(e.every((x) => x === 3), "off: left as it was");
  } finally {
    setPoisoning(was);
  }
});

Deno.test("BufferPool lends a free buffer of up to four times the size class asked for before it makes one, never a larger one", () => {
  const pool = new BufferPool();
  const [quarter, eighth] = [pool.take(256 << 10), pool.take(512 << 10)];
  pool.put(eighth);
  const small = pool.take(64 << 10);
  assert.notStrictEqual(small, eighth, "eight times the size: not lent");
  assert.strictEqual(small.length, 64 << 10);
  pool.put(quarter);
  assert.strictEqual(pool.take(40_000), quarter, "four times: lent");
  assert.strictEqual(pool.take(300_000), eighth, "the next class up: lent");
  assert.strictEqual(pool.take(300_000).length, 512 << 10, "none free: made");
});

Deno.test("QCOW2PIPE_POISON=1 turns poisoning on where Deno's file module is loaded and env access is allowed", async () => {
  await using dir = await tempDir();
  const script = join(dir.path, "poisoning.ts");
  const lib = new URL("../../lib/", import.meta.url);
  await Deno.writeTextFile(
    script,
    `import "${new URL("host/file_source.ts", lib)}";
import { setPoisoning } from "${new URL("bytes/recycle.ts", lib)}";
console.log(setPoisoning(false));
`,
  );
  const run = async (env: string | undefined, flags: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--no-lock", ...flags, script],
      env: env === undefined ? {} : { QCOW2PIPE_POISON: env },
      clearEnv: true,
      stdin: "null",
    }).output();
    assert.strictEqual(out.code, 0, new TextDecoder().decode(out.stderr));
    return new TextDecoder().decode(out.stdout).trim();
  };
  assert.strictEqual(await run("1", ["-A"]), "true");
  assert.strictEqual(await run(undefined, ["-A"]), "false");
  assert.strictEqual(await run("0", ["-A"]), "false");
  assert.strictEqual(await run("1", ["-R", "--allow-ffi"]), "false");
});

Deno.test("ClusterPacker writes runs of laid-out payloads straight from the record, and copies others", () => {
  const cs = 4096;
  const data = new Uint8Array(4 * 512); // the last padding included
  data.fill(1, 0, 300); // payload 0: 300 bytes, padding to 512
  data.fill(2, 512, 512 + 700); // payload 1: 700 bytes, padding to 1536
  data.fill(3, 1536, 1636); // payload 2: 100 bytes
  const laidOut: ClusterRecord = {
    kind: "compressed",
    index: 0,
    count: 3,
    data,
    lengths: [300, 700, 100],
    offsets: [0, 512, 1536],
  };
  const packed: ClusterRecord = {
    kind: "compressed",
    index: 3,
    count: 2,
    data: new Uint8Array([...new Uint8Array(10).fill(4), 5, 5]),
    lengths: [10, 2],
  };
  const packer = new ClusterPacker(new HostAllocator({ clusterSize: cs }));
  const out: PlacedRecord[] = [];
  for (const r of [laidOut, packed]) packer.place(r, (p) => out.push(p));
  const writes = out.filter((r) => r.kind === "write");
  assert.strictEqual(writes.length, 2);
  const [first, second] = writes;
  assert.strictEqual(first.data.buffer, data.buffer, "no copy");
  assert.deepStrictEqual(first.data, data.subarray(0, 2048));
  assert.strictEqual(first.offset + 2048, second.offset, "back to back");
  assert.notStrictEqual(second.data.buffer, packed.data.buffer, "a copy");
  const expected = new Uint8Array(1024);
  expected.fill(4, 0, 10);
  expected.fill(5, 512, 514);
  assert.deepStrictEqual(second.data, expected);
});

/** A raw file of `bytes` with a hole before and after the data at `holeAt`. */
async function sparseRaw(path: string, bytes: Uint8Array, holeAt: number) {
  using file = await Deno.open(path, { write: true, create: true });
  await file.write(bytes.subarray(0, holeAt));
  await file.seek(holeAt + (2 << 20), Deno.SeekMode.Start);
  await file.write(bytes.subarray(holeAt));
  await file.truncate(holeAt + (2 << 20) + bytes.length - holeAt + (1 << 20));
}

for (const compression of ["none", "zlib", "zstd"] as const) {
  for (const [clusterSize, chunkSize] of [[65536, 100_000], [4096, 65536]]) {
    qemuTest(
      `convert: a raw file read in chunks that go round (${compression}, ${clusterSize}-byte clusters, ${chunkSize}-byte chunks) is what QEMU reads`,
      async () => {
        await using dir = await tempDir();
        const raw = join(dir.path, "disk.raw");
        const out = join(dir.path, "disk.qcow2");
        await sparseRaw(raw, mixedBytes(6 << 20, 17), 3 << 20);
        const buffers = new Set<ArrayBufferLike>();
        let chunks = 0;
        const seen = new TransformStream<
          Uint8Array | { zeros: number },
          Uint8Array | { zeros: number }
        >({
          transform(chunk, controller) {
            if (chunk instanceof Uint8Array) {
              buffers.add(chunk.buffer);
              chunks++;
            }
            controller.enqueue(chunk);
          },
        });
        await convert(
          sparseFileChunks(raw, chunkSize, { recycle: true }).pipeThrough(seen),
          await OutputFile.create(out),
          { compression, clusterSize, workers: 2 },
        );
        await qemuCheckClean(out);
        await qemuCompareIdentical(raw, out);
        assert.ok(chunks > 40, `${chunks} chunks`);
        assert.ok(
          buffers.size < chunks / 4,
          `${buffers.size} buffers for ${chunks} chunks`,
        );
      },
    );
  }
}

Deno.test("sparseFileChunks: zeros written in the file go on as holes, their buffers used again at once", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "zeros.raw");
  const cs = 65536;
  const file = new Uint8Array(6 * cs);
  file.fill(1, 0, cs);
  file.fill(2, 5 * cs); // four chunks of written zeros between
  await Deno.writeFile(path, file);
  const chunks = await Array.fromAsync(
    sparseFileChunks(path, cs, { recycle: true }),
  );
  assert.deepStrictEqual(
    chunks.map((c) => c instanceof Uint8Array ? c[0] : c.zeros),
    [1, cs, cs, cs, cs, 2],
  );
  const [first, last] = [chunks[0], chunks[5]] as Uint8Array[];
  assert.ok(last.every((b) => b === 2), "the last chunk's own bytes");
  assert.ok(first.every((b) => b === 1), "the first chunk is not reused");
  assert.notStrictEqual(first.buffer, last.buffer);
});
