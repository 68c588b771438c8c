// The first two forward stages alone: ClusterChunkStream (bytes and
// `{ zeros }` holes into runs of whole clusters) and ZeroDetectStream
// (zero clusters split out of data runs).

import assert from "node:assert";
import { isZero } from "../../lib/bytes/zeros.ts";
import { ClusterChunkStream } from "../../lib/writer/chunk_stream.ts";
import { ZeroDetectStream } from "../../lib/writer/zero_stream.ts";
import { CompressStream } from "../../lib/writer/compress_stream.ts";
import { Qcow2PackStream } from "../../lib/writer/pack_stream.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import type { ZeroBytes } from "../../lib/bytes/zeros.ts";
import type { ClusterRecord } from "../../lib/writer/records.ts";
import { chunked, mixedBytes, prng, randomBytes } from "./_helpers.ts";

type Chunk = Uint8Array | ZeroBytes;

function chunk(
  chunks: Chunk[],
  clusterSize: number,
  maxRunBytes?: number,
): Promise<ClusterRecord[]> {
  return Array.fromAsync(
    ReadableStream.from(chunks).pipeThrough(
      new ClusterChunkStream({ clusterSize, maxRunBytes }),
    ),
  );
}

/** Checks the record invariants and rebuilds the bytes they stand for. */
function rebuild(records: ClusterRecord[], cs: number): Uint8Array {
  const end = records.at(-1);
  assert.ok(end && end.kind === "end", "the last record is the end record");
  assert.strictEqual(
    records.filter((r) => r.kind === "end").length,
    1,
    "one end record",
  );
  let next = 0;
  const parts: [number, Uint8Array][] = [];
  for (const r of records.slice(0, -1)) {
    assert.notStrictEqual(r.kind, "end");
    if (r.kind === "end") continue;
    assert.strictEqual(r.index, next, "runs are contiguous, in order");
    assert.ok(Number.isInteger(r.count) && r.count >= 1, "count >= 1");
    if (r.kind === "data") {
      assert.strictEqual(r.data.length, r.count * cs, "whole clusters");
      parts.push([r.index * cs, r.data]);
    }
    next += r.count;
  }
  assert.strictEqual(next, Math.ceil(end.size / cs), "every cluster covered");
  const out = new Uint8Array(next * cs);
  for (const [at, data] of parts) out.set(data, at);
  for (let i = end.size; i < out.length; i++) {
    if (out[i] !== 0) assert.fail(`padding byte ${i} is ${out[i]}`);
  }
  return out.subarray(0, end.size);
}

Deno.test("ClusterChunkStream: whole clusters, a padded last cluster and the end size", async () => {
  const input = mixedBytes(3 * 4096 + 100, 1, 500);
  input[input.length - 1] = 0xee;
  const records = await chunk([input], 4096);
  assert.deepStrictEqual(
    records.map((r) =>
      r.kind === "end" ? [r.kind, r.size] : [r.kind, r.index, r.count]
    ),
    [["data", 0, 3], ["data", 3, 1], ["end", 3 * 4096 + 100]],
  );
  const last = records[1] as Extract<ClusterRecord, { kind: "data" }>;
  assert.strictEqual(last.data.length, 4096);
  assert.deepStrictEqual(last.data.subarray(0, 100), input.subarray(3 * 4096));
  assert.ok(last.data.subarray(100).every((b) => b === 0), "zero padding");
  assert.deepStrictEqual(rebuild(records, 4096), input);
});

Deno.test("ClusterChunkStream: empty input is just the end record", async () => {
  assert.deepStrictEqual(await chunk([], 512), [{ kind: "end", size: 0 }]);
  assert.deepStrictEqual(
    await chunk([new Uint8Array(0), { zeros: 0 }, new Uint8Array(0)], 65536),
    [{ kind: "end", size: 0 }],
  );
});

Deno.test("ClusterChunkStream: one byte, and input in 1-byte and 7-byte chunks", async () => {
  assert.deepStrictEqual(
    (await chunk([new Uint8Array([9])], 512)).map((r) => r.kind),
    ["data", "end"],
  );
  const input = mixedBytes(65537, 2, 2000);
  for (const size of [1, 7, 100003]) {
    for (const cs of [512, 4096, 65536]) {
      const records = await chunk(chunked(input, size), cs);
      assert.deepStrictEqual(rebuild(records, cs), input, `${size}/${cs}`);
      assert.deepStrictEqual(records.at(-1), { kind: "end", size: 65537 });
    }
  }
});

Deno.test("ClusterChunkStream: aligned parts of a chunk are views, not copies", async () => {
  const input = randomBytes(5 * 512 + 10, 3);
  const records = await chunk([input], 512);
  const first = records[0] as Extract<ClusterRecord, { kind: "data" }>;
  assert.strictEqual(first.count, 5);
  assert.strictEqual(first.data.buffer, input.buffer, "a view of the input");
  assert.strictEqual(first.data.byteOffset, 0);
  const tail = records[1] as Extract<ClusterRecord, { kind: "data" }>;
  assert.notStrictEqual(tail.data.buffer, input.buffer, "the padded copy");
});

Deno.test("ClusterChunkStream: runs are split at maxRunBytes", async () => {
  const input = randomBytes(10 * 512, 4);
  const records = await chunk([input], 512, 3 * 512 + 100);
  assert.deepStrictEqual(
    records.slice(0, -1).map((r) => r.kind === "end" ? 0 : r.count),
    [3, 3, 3, 1],
  );
  assert.deepStrictEqual(rebuild(records, 512), input);
  // the default is 4 MiB
  const big = await chunk([new Uint8Array(9 * 1024 * 1024)], 65536);
  assert.deepStrictEqual(
    big.slice(0, -1).map((r) => r.kind === "end" ? 0 : r.count),
    [64, 64, 16],
  );
});

Deno.test("ClusterChunkStream: { zeros } chunks become zero runs and merge with partial clusters", async () => {
  const a = new Uint8Array(100).fill(1);
  const b = new Uint8Array(10).fill(2);
  const records = await chunk([a, { zeros: 1000 }, b], 512);
  // cluster 0: 100 data bytes + 412 zeros; 588 zeros left: one zero
  // cluster and 76 zeros pending; cluster 2: 76 zeros, then 10 bytes of b
  assert.deepStrictEqual(
    records.map((r) =>
      r.kind === "end" ? [r.kind, r.size] : [r.kind, r.index, r.count]
    ),
    [["data", 0, 1], ["zero", 1, 1], ["data", 2, 1], ["end", 1110]],
  );
  const c2 = records[2] as Extract<ClusterRecord, { kind: "data" }>;
  assert.ok(c2.data.subarray(0, 76).every((x) => x === 0));
  assert.deepStrictEqual(c2.data.subarray(76, 86), b);
  assert.ok(c2.data.subarray(86).every((x) => x === 0));

  // a hole that ends inside a cluster followed by the end of input
  assert.deepStrictEqual(
    (await chunk([{ zeros: 3 * 512 + 1 }], 512)).map((r) =>
      r.kind === "end" ? r.size : [r.kind, r.index, r.count]
    ),
    [["zero", 0, 3], ["data", 3, 1], 3 * 512 + 1],
  );
  // holes that together fill one cluster: the pending cluster is emitted
  // as (zero) data, which ZeroDetectStream turns into a zero run
  const holes = await chunk(
    [{ zeros: 100 }, { zeros: 412 }, { zeros: 512 }],
    512,
  );
  assert.deepStrictEqual(
    holes.map((r) => r.kind === "end" ? r.size : [r.kind, r.index, r.count]),
    [["data", 0, 1], ["zero", 1, 1], 1024],
  );
  // a huge hole is never materialized
  const huge = await chunk([{ zeros: 2 ** 42 }, new Uint8Array([7])], 65536);
  assert.deepStrictEqual(
    huge.map((r) => r.kind === "end" ? r.size : [r.kind, r.index, r.count]),
    [["zero", 0, 2 ** 26], ["data", 2 ** 26, 1], 2 ** 42 + 1],
  );
});

Deno.test("ClusterChunkStream: random chunkings with holes rebuild the input", async () => {
  const rand = prng(99);
  for (let round = 0; round < 30; round++) {
    const cs = [512, 4096, 65536][round % 3];
    const chunks: Chunk[] = [];
    const pieces: Uint8Array[] = [];
    const n = 1 + Math.floor(rand() * 40);
    for (let i = 0; i < n; i++) {
      const len = Math.floor(rand() * (rand() < 0.5 ? 50 : 3 * cs));
      if (rand() < 0.3) {
        chunks.push({ zeros: len });
        pieces.push(new Uint8Array(len));
      } else {
        const data = randomBytes(len, round * 1000 + i);
        chunks.push(data.slice());
        pieces.push(data);
      }
    }
    const total = pieces.reduce((s, p) => s + p.length, 0);
    const expected = new Uint8Array(total);
    let at = 0;
    for (const p of pieces) {
      expected.set(p, at);
      at += p.length;
    }
    const records = await chunk(chunks, cs, cs * (1 + Math.floor(rand() * 4)));
    assert.deepStrictEqual(rebuild(records, cs), expected, `round ${round}`);
  }
});

Deno.test("ClusterChunkStream: invalid options and hole lengths are rejected", async () => {
  assert.throws(
    () => new ClusterChunkStream({ clusterSize: 1000 }),
    RangeError,
  );
  assert.throws(() => new ClusterChunkStream({ clusterSize: 256 }), RangeError);
  assert.throws(
    () => new ClusterChunkStream({ clusterSize: 4 * 1024 * 1024 }),
    RangeError,
  );
  assert.throws(
    () => new ClusterChunkStream({ clusterSize: 4096, maxRunBytes: 4095 }),
    RangeError,
  );
  for (const zeros of [-1, 1.5, NaN, 2 ** 53]) {
    await assert.rejects(chunk([{ zeros }], 512), RangeError, `zeros ${zeros}`);
  }
});

function detect(records: ClusterRecord[], cs: number) {
  return Array.fromAsync(
    ReadableStream.from(records).pipeThrough(
      new ZeroDetectStream({ clusterSize: cs }),
    ),
  );
}

Deno.test("ZeroDetectStream: splits data runs into zero and data runs", async () => {
  const cs = 4096;
  // clusters: Z D D Z Z D Z (the last data cluster nonzero in its last byte)
  const layout = [0, 1, 1, 0, 0, 1, 0];
  const data = new Uint8Array(layout.length * cs);
  layout.forEach((d, i) => {
    if (d) data.fill(i + 1, i * cs + cs - 1, (i + 1) * cs);
  });
  const out = await detect([{ kind: "data", index: 10, count: 7, data }], cs);
  assert.deepStrictEqual(
    out.map((r) => r.kind === "end" ? r.kind : [r.kind, r.index, r.count]),
    [
      ["zero", 10, 1],
      ["data", 11, 2],
      ["zero", 13, 2],
      ["data", 15, 1],
      ["zero", 16, 1],
    ],
  );
  const d1 = out[1] as Extract<ClusterRecord, { kind: "data" }>;
  assert.strictEqual(d1.data.buffer, data.buffer, "data runs are views");
  assert.deepStrictEqual(d1.data, data.subarray(cs, 3 * cs));
  const d2 = out[3] as Extract<ClusterRecord, { kind: "data" }>;
  assert.deepStrictEqual(d2.data, data.subarray(5 * cs, 6 * cs));
});

Deno.test("ZeroDetectStream: all-zero and all-data runs stay whole; other records pass through", async () => {
  const cs = 512;
  const zero = new Uint8Array(8 * cs);
  const full = randomBytes(8 * cs, 5);
  const passing: ClusterRecord[] = [
    { kind: "zero", index: 16, count: 100 },
    {
      kind: "compressed",
      index: 116,
      count: 1,
      data: new Uint8Array(3),
      lengths: [3],
    },
    { kind: "end", size: 117 * cs },
  ];
  const out = await detect([
    { kind: "data", index: 0, count: 8, data: zero },
    { kind: "data", index: 8, count: 8, data: full },
    ...passing,
  ], cs);
  assert.deepStrictEqual(out, [
    { kind: "zero", index: 0, count: 8 },
    { kind: "data", index: 8, count: 8, data: full },
    ...passing,
  ]);
});

Deno.test("ZeroDetectStream: unaligned views and single nonzero bytes anywhere", async () => {
  const cs = 512;
  const backing = new Uint8Array(3 * cs + 3);
  const view = backing.subarray(3); // byteOffset 3: the bytewise path
  for (const pos of [0, 1, 63, 64, 255, 510, 511]) {
    view.fill(0);
    view[cs + pos] = 0x80;
    const out = await detect(
      [{ kind: "data", index: 0, count: 3, data: view }],
      cs,
    );
    assert.deepStrictEqual(
      out.map((r) => r.kind === "end" ? r.kind : [r.kind, r.index, r.count]),
      [["zero", 0, 1], ["data", 1, 1], ["zero", 2, 1]],
      `nonzero byte at ${pos}`,
    );
  }
  assert.throws(() => new ZeroDetectStream({ clusterSize: 100 }), RangeError);
});

Deno.test("ClusterChunkStream + ZeroDetectStream: holes and zero data give the same runs", async () => {
  const cs = 4096;
  const data = mixedBytes(200_000, 6, 20_000);
  const asBytes = await Array.fromAsync(
    ReadableStream.from([data.slice(), new Uint8Array(50_000), data.slice()])
      .pipeThrough(new ClusterChunkStream({ clusterSize: cs }))
      .pipeThrough(new ZeroDetectStream({ clusterSize: cs })),
  );
  const asHole = await Array.fromAsync(
    ReadableStream.from<Chunk>([data.slice(), { zeros: 50_000 }, data.slice()])
      .pipeThrough(new ClusterChunkStream({ clusterSize: cs }))
      .pipeThrough(new ZeroDetectStream({ clusterSize: cs })),
  );
  const perCluster = (records: ClusterRecord[]) => {
    const kinds: string[] = [];
    for (const r of records) {
      if (r.kind === "end") continue;
      for (let i = 0; i < r.count; i++) kinds[r.index + i] = r.kind;
    }
    return kinds;
  };
  assert.deepStrictEqual(perCluster(asHole), perCluster(asBytes));
  assert.deepStrictEqual(rebuild(asHole, cs), rebuild(asBytes, cs));
});

Deno.test("isZero() finds a non-zero byte anywhere in views at every alignment", () => {
  const buf = new Uint8Array(70_000);
  for (let offset = 0; offset < 8; offset++) {
    for (const length of [0, 1, 3, 4, 63, 64, 65, 127, 1000, 65536]) {
      const view = buf.subarray(offset, offset + length);
      assert.strictEqual(isZero(view), true, `zeros at ${offset}+${length}`);
      for (let k = 0; k < length; k++) {
        view[k] = 0x80;
        assert.strictEqual(
          isZero(view),
          false,
          `byte ${k} of ${offset}+${length}`,
        );
        view[k] = 0;
        if (length > 130 && k === 66) k = length - 66; // the middle is covered by the word loop
      }
    }
  }
});

Deno.test("stages refuse records made at another cluster size", async () => {
  const chunks = () =>
    ReadableStream.from([new Uint8Array(200_000).fill(1)]).pipeThrough(
      new ClusterChunkStream({ clusterSize: 65536 }),
    );
  // The case: 99,488 of 200,000 bytes read back wrong before.
  await assert.rejects(
    Array.fromAsync(
      chunks().pipeThrough(new ZeroDetectStream({ clusterSize: 512 })),
    ),
    /Cannot detect zero clusters: a data record of 3 cluster\(s\) at index 0 holds 196608 bytes, not 1536 at cluster size 512/,
  );
  await using pool = new CodecPool({ workers: 0 });
  await assert.rejects(
    Array.fromAsync(
      chunks().pipeThrough(
        new CompressStream({ pool, clusterSize: 4096, type: "zstd" }),
      ),
    ),
    /Cannot compress clusters: .* at cluster size 4096/,
  );
  await assert.rejects(
    Array.fromAsync(
      chunks().pipeThrough(new Qcow2PackStream({ clusterSize: 512 })),
    ),
    /Cannot place clusters: .* at cluster size 512/,
  );
  // Compressed payloads as long as a cluster of the next stage.
  const compressed = ReadableStream.from([{
    kind: "compressed" as const,
    index: 0,
    count: 1,
    data: new Uint8Array(600),
    lengths: [600],
  }]);
  await assert.rejects(
    Array.fromAsync(
      compressed.pipeThrough(new Qcow2PackStream({ clusterSize: 512 })),
    ),
    /one of 600 bytes/,
  );
});

Deno.test("ZeroDetectStream() with a sparse size of 4 clusters stores zeros as data in blocks that hold data", async () => {
  const cs = 512;
  const data = new Uint8Array(16 * cs);
  data[0] = 1; // block 0
  data[9 * cs] = 2; // block 2
  const out = await Array.fromAsync(
    ReadableStream.from<ClusterRecord>([
      { kind: "data", index: 0, count: 12, data: data.subarray(0, 12 * cs) },
      { kind: "zero", index: 12, count: 4 },
      { kind: "end", size: 16 * cs },
    ]).pipeThrough(new ZeroDetectStream({ clusterSize: cs, sparseSize: 2048 })),
  );
  // Each cluster's kind, in order.
  const kinds = out.flatMap((r) =>
    r.kind === "end" ? [] : new Array(r.count).fill(r.kind[0])
  ).join("");
  assert.strictEqual(kinds, "ddddzzzzddddzzzz");
  const stored = out.filter((r) => r.kind === "data").flatMap((r) => [
    ...r.data,
  ]);
  assert.deepStrictEqual(
    stored,
    [...data.subarray(0, 4 * cs), ...data.subarray(8 * cs, 12 * cs)],
  );
  assert.strictEqual(out.at(-1)?.kind, "end");
});

Deno.test("ZeroDetectStream() with sparse size 0 keeps every cluster as data, zero runs included", async () => {
  const out = await Array.fromAsync(
    ReadableStream.from<ClusterRecord>([
      { kind: "zero", index: 0, count: 3000 },
      { kind: "end", size: 3000 * 512 },
    ]).pipeThrough(new ZeroDetectStream({ clusterSize: 512, sparseSize: 0 })),
  );
  const data = out.filter((r) => r.kind === "data");
  assert.strictEqual(data.reduce((n, r) => n + r.count, 0), 3000);
  assert.ok(data.every((r) => r.data.every((b) => b === 0)));
  assert.throws(
    () => new ZeroDetectStream({ clusterSize: 512, sparseSize: -1 }),
    RangeError,
  );
});
