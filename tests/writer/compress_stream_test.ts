// CompressStream alone: order kept with many jobs in flight (on a real pool
// and on a pool whose jobs finish in random order), incompressible clusters
// left as data, and a failing job (closed pool, invalid level, a job that
// throws) erroring the stream and aborting the whole pipeline.

import { runJob } from "../../lib/codec/_job.ts";
import assert from "node:assert";
import { join } from "node:path";
import { CodecPool, type CompressResult } from "../../lib/codec/pool.ts";
import {
  type CodecBackend,
  type CodecOptions,
  type CompressionType,
  createCodec,
} from "../../lib/codec/codecs.ts";
import { CompressStream } from "../../lib/writer/compress_stream.ts";
import type { ClusterRecord } from "../../lib/writer/records.ts";
import { convert } from "../../lib/convert.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { Qcow2Writer, writesToBytes } from "../../lib/writer/qcow2_writer.ts";
import { tempDir } from "../_qemu.ts";
import { listDir, prng, randomBytes, textBytes } from "./_helpers.ts";

type Kind = "text" | "random" | "zero";

/** Clusters that are compressible (text), not (random) or zero, seeded. */
function clusters(count: number, cs: number, seed: number) {
  const rand = prng(seed);
  const kinds: Kind[] = [];
  const data = new Uint8Array(count * cs);
  for (let i = 0; i < count; i++) {
    const r = rand();
    const kind = r < 0.35 ? "random" : r < 0.45 ? "zero" : "text";
    kinds.push(kind);
    if (kind === "random") data.set(randomBytes(cs, seed * 7919 + i), i * cs);
    if (kind === "text") data.set(textBytes(cs, seed + i), i * cs);
  }
  return { kinds, data };
}

/**
 * The records ZeroDetectStream would emit for these clusters: zero runs,
 * and data runs of 1..maxRun clusters.
 */
function records(
  input: { kinds: Kind[]; data: Uint8Array },
  cs: number,
  seed: number,
  maxRun: number,
): ClusterRecord[] {
  const rand = prng(seed);
  const out: ClusterRecord[] = [];
  const count = input.kinds.length;
  let i = 0;
  while (i < count) {
    const zero = input.kinds[i] === "zero";
    let n = 1;
    const limit = zero ? count : 1 + Math.floor(rand() * maxRun);
    while (
      n < limit && i + n < count && (input.kinds[i + n] === "zero") === zero
    ) n++;
    out.push(
      zero ? { kind: "zero", index: i, count: n } : {
        kind: "data",
        index: i,
        count: n,
        data: input.data.subarray(i * cs, (i + n) * cs),
      },
    );
    i += n;
  }
  return out;
}

/**
 * Checks CompressStream output against the input clusters: records in
 * order, contiguous, every compressible cluster compressed (payloads
 * decompressing to the cluster), every incompressible one kept as data.
 */
async function checkOutput(
  out: ClusterRecord[],
  input: { kinds: Kind[]; data: Uint8Array },
  cs: number,
  codec: CodecOptions,
): Promise<void> {
  const decoder = await createCodec({ ...codec, backend: "auto" });
  let next = 0;
  for (const r of out) {
    if (r.kind === "end") continue;
    assert.strictEqual(r.index, next, "output in cluster order");
    if (r.kind === "zero") {
      for (let i = 0; i < r.count; i++) {
        assert.strictEqual(input.kinds[r.index + i], "zero");
      }
      next += r.count;
      continue;
    }
    if (r.kind === "data") {
      for (let i = 0; i < r.count; i++) {
        assert.strictEqual(input.kinds[r.index + i], "random");
      }
      assert.deepStrictEqual(
        r.data,
        input.data.subarray(r.index * cs, (r.index + r.count) * cs),
      );
    } else {
      assert.strictEqual(r.kind, "compressed");
      assert.strictEqual(r.lengths.length, r.count);
      // Laid out as the packer places them: 512-byte boundaries, zeros
      // between, the last payload's padding included.
      const offsets = r.offsets!;
      let at = 0;
      for (let i = 0; i < r.count; i++) {
        const c: number = r.index + i;
        assert.strictEqual(input.kinds[c], "text");
        assert.ok(r.lengths[i] > 0 && r.lengths[i] < cs);
        assert.strictEqual(
          offsets[i],
          at,
          `cluster ${c} starts after the last`,
        );
        const payload = r.data.subarray(at, at + r.lengths[i]);
        at = Math.ceil((at + r.lengths[i]) / 512) * 512;
        assert.ok(
          r.data.subarray(offsets[i] + r.lengths[i], at).every((b) => b === 0),
          `cluster ${c}: zero padding`,
        );
        assert.deepStrictEqual(
          decoder.decompress(payload, cs),
          input.data.subarray(c * cs, (c + 1) * cs),
          `cluster ${c}`,
        );
      }
      assert.strictEqual(r.data.length, at, "ends with the last padding");
    }
    next += r.count;
  }
  assert.strictEqual(next, input.kinds.length, "every cluster came out");
  assert.deepStrictEqual(out.at(-1), { kind: "end", size: input.data.length });
}

for (
  const [type, backend, workers, cs] of [
    ["zlib", "node", 2, 4096],
    ["zstd", "node", 1, 512],
    ["zlib", "fflate", 0, 65536],
    ["zstd", "zstd-codec", 2, 4096],
  ] as [CompressionType, CodecBackend, number, number][]
) {
  Deno.test(`CompressStream: order kept with many jobs in flight (${type}/${backend}, ${workers} workers, ${cs}-byte clusters)`, async () => {
    await using pool = new CodecPool({ workers });
    const input = clusters(cs === 65536 ? 60 : 300, cs, cs + workers);
    const out = await Array.fromAsync(
      ReadableStream.from([
        ...records(input, cs, 1, 9),
        { kind: "end" as const, size: input.data.length },
      ]).pipeThrough(
        new CompressStream({
          pool,
          clusterSize: cs,
          type,
          backend,
          maxInFlight: 64,
          jobBytes: 3 * cs, // many small jobs
        }),
      ),
    );
    await checkOutput(out, input, cs, { type });
    assert.ok(out.some((r) => r.kind === "compressed"));
    assert.ok(out.some((r) => r.kind === "data"));
  });
}

/**
 * A stand-in pool that compresses with a real codec but completes jobs in
 * a random order (random delays), and can fail a chosen job.
 */
class ShufflingPool {
  readonly size = 8;
  submitted = 0;
  completed: number[] = [];
  #rand = prng(7);
  #failAt: number;
  constructor(failAt = -1) {
    this.#failAt = failAt;
  }
  async compress(
    codec: CodecOptions,
    clusters: Uint8Array,
    cs: number,
  ): Promise<CompressResult> {
    const job = this.submitted++;
    const c = await createCodec(codec);
    await new Promise((r) => setTimeout(r, Math.floor(this.#rand() * 8)));
    if (job === this.#failAt) throw new Error(`job ${job} failed`);
    this.completed.push(job);
    // The pool's own layout: payloads at 512-byte boundaries.
    return runJob(c, {
      op: "compress",
      clusterSize: cs,
      data: clusters.slice(),
      lengths: [],
    });
  }
}

Deno.test("CompressStream: jobs finishing out of order still come out in order", async () => {
  const cs = 4096;
  const pool = new ShufflingPool();
  const input = clusters(400, cs, 11);
  const out = await Array.fromAsync(
    ReadableStream.from([
      ...records(input, cs, 2, 5),
      { kind: "end" as const, size: input.data.length },
    ]).pipeThrough(
      new CompressStream({
        pool: pool as unknown as CodecPool,
        clusterSize: cs,
        type: "zstd",
        maxInFlight: 50,
        jobBytes: cs,
      }),
    ),
  );
  assert.strictEqual(
    pool.submitted,
    input.kinds.filter((k) => k !== "zero").length,
    "one job per nonzero cluster",
  );
  assert.notDeepStrictEqual(
    pool.completed,
    [...pool.completed].sort((a, b) => a - b),
    "jobs completed out of order",
  );
  await checkOutput(out, input, cs, { type: "zstd" });
});

Deno.test("CompressStream: at most maxInFlight jobs are outstanding", async () => {
  const cs = 512;
  let outstanding = 0;
  let most = 0;
  const pool = {
    size: 1,
    async compress(_codec: CodecOptions, clusters: Uint8Array, size: number) {
      outstanding++;
      most = Math.max(most, outstanding);
      await new Promise((r) => setTimeout(r, 1));
      outstanding--;
      // nothing compresses: the clusters come back as they are
      const count = clusters.length / size;
      return {
        data: clusters.slice(),
        lengths: new Array(count).fill(0),
        offsets: Array.from({ length: count }, (_, i) => i * size),
      };
    },
  };
  const input = clusters(100, cs, 3);
  const out = await Array.fromAsync(
    ReadableStream.from(records(input, cs, 4, 1)).pipeThrough(
      new CompressStream({
        pool: pool as unknown as CodecPool,
        clusterSize: cs,
        type: "zlib",
        maxInFlight: 5,
        jobBytes: cs,
      }),
    ),
  );
  assert.ok(most <= 6, `at most maxInFlight + 1 jobs at once (saw ${most})`);
  assert.ok(most >= 2, `jobs overlap (saw ${most})`);
  let next = 0;
  for (const r of out) {
    if (r.kind === "end") continue;
    assert.strictEqual(r.index, next);
    assert.strictEqual(
      r.kind,
      input.kinds[r.index] === "zero" ? "zero" : "data",
    );
    next += r.count;
  }
  assert.strictEqual(next, 100);
});

async function expectStreamError(
  pool: CodecPool,
  options: { type: CompressionType; level?: number },
  pattern: RegExp,
): Promise<void> {
  const cs = 4096;
  const input = clusters(20, cs, 8);
  await assert.rejects(
    Array.fromAsync(
      ReadableStream.from(records(input, cs, 5, 3)).pipeThrough(
        new CompressStream({ pool, clusterSize: cs, ...options }),
      ),
    ),
    pattern,
  );
}

Deno.test("CompressStream: a closed pool errors the stream", async () => {
  for (const workers of [0, 1]) {
    const pool = new CodecPool({ workers });
    await pool.close();
    await expectStreamError(pool, { type: "zlib" }, /pool is closed/);
  }
});

Deno.test("CompressStream: an invalid level errors the stream", async () => {
  for (const workers of [0, 2]) {
    await using pool = new CodecPool({ workers });
    await expectStreamError(
      pool,
      { type: "zlib", level: 0 },
      /zlib level 0 is out of range/,
    );
    await expectStreamError(
      pool,
      { type: "zstd", level: 23 },
      /zstd level 23 is out of range/,
    );
  }
});

Deno.test("CompressStream: invalid limits are rejected up front", async () => {
  await using pool = new CodecPool({ workers: 0 });
  assert.throws(
    () =>
      new CompressStream({
        pool,
        clusterSize: 4096,
        type: "zlib",
        maxInFlight: 0,
      }),
    RangeError,
  );
  assert.throws(
    () => new CompressStream({ pool, clusterSize: 3000, type: "zlib" }),
    RangeError,
  );
});

Deno.test("Qcow2Writer: a failing job aborts the pipeline and cancels the source", async () => {
  const cs = 65536;
  let pulls = 0;
  let cancelled: unknown;
  const source = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulls++;
      if (pulls > 1000) controller.close();
      else controller.enqueue(textBytes(cs, pulls));
    },
    cancel(reason) {
      cancelled = reason;
    },
  }, { highWaterMark: 0 });
  const pool = new ShufflingPool(5);
  await using writer = new Qcow2Writer({
    clusterSize: cs,
    compression: "zlib",
    pool: pool as unknown as CodecPool,
  });
  await assert.rejects(
    writesToBytes(source.pipeThrough(writer)),
    /job 5 failed/,
  );
  await assert.rejects(writer.summary, /job 5 failed/);
  assert.ok(pulls < 1000, `the source stopped early (${pulls} pulls)`);
  assert.match(String(cancelled), /job 5 failed/, "the source was cancelled");
});

Deno.test("convert: a failing job leaves no output file and no temporary file", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "out.qcow2");
  const chunks = Array.from({ length: 64 }, (_, i) => textBytes(65536, i));
  await assert.rejects(
    convert(ReadableStream.from(chunks), await OutputFile.create(dst), {
      compression: "zstd",
      pool: new ShufflingPool(10) as unknown as CodecPool,
    }),
    /job 10 failed/,
  );
  assert.deepStrictEqual(await listDir(dir.path), []);
  // same with an invalid level on a real pool
  await assert.rejects(
    convert(ReadableStream.from(chunks), await OutputFile.create(dst), {
      compression: "zlib",
      level: 10,
      workers: 1,
    }),
    /zlib level 10 is out of range/,
  );
  assert.deepStrictEqual(await listDir(dir.path), []);
  // and with a closed pool
  const closed = new CodecPool({ workers: 1 });
  await closed.close();
  await assert.rejects(
    convert(ReadableStream.from(chunks), await OutputFile.create(dst), {
      compression: "zlib",
      pool: closed,
    }),
    /pool is closed/,
  );
  assert.deepStrictEqual(await listDir(dir.path), []);
});

Deno.test("CodecPool: without a level, workers use the backend's default level", async () => {
  const cs = 64 * 1024;
  const cluster = textBytes(cs, 11);
  const direct = async (
    level: number,
    backend: "node" | "fflate",
    zlibWindow?: 4096,
  ) =>
    (await createCodec({ type: "zlib", level, backend, zlibWindow }))
      .compress(cluster);
  await using pool = new CodecPool({ workers: 1 });
  const cases = [
    { backend: "node", expected: 4, other: 9 },
    { backend: "node", zlibWindow: 4096, expected: 9, other: 6 },
    { backend: "fflate", expected: 6, other: 9 },
  ] as const;
  for (const c of cases) {
    const { backend, expected, other } = c;
    const zlibWindow = "zlibWindow" in c ? c.zlibWindow : undefined;
    const want = await direct(expected, backend, zlibWindow);
    const notWant = await direct(other, backend, zlibWindow);
    assert.ok(want && notWant);
    // the sample tells the two levels apart
    assert.notDeepStrictEqual(want, notWant, `${backend}: same output`);
    const got = await pool.compress(
      { type: "zlib", backend, zlibWindow },
      cluster,
      cs,
    );
    assert.deepStrictEqual(got.lengths, [want.length], backend);
    assert.deepStrictEqual(got.data.subarray(0, want.length), want, backend);
  }
});
