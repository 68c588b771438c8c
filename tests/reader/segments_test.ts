import assert from "node:assert";
import { join } from "node:path";
import { openImage } from "../../lib/reader/open.ts";
import {
  type ReadImageOptions,
  readSegments,
  type Segment,
} from "../../lib/reader/segments.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import type { RandomAccessSource } from "../../lib/io/source.ts";
import {
  doneWith,
  POISON_BYTE,
  setPoisoning,
} from "../../lib/bytes/recycle.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { tempDir } from "../_qemu.ts";
import { CodecPool } from "../../lib/codec/pool.ts";

/** 8 MiB with data runs of 1 to 7 clusters between holes. */
function scattered(): Uint8Array {
  const raw = new Uint8Array(8 << 20);
  let at = 0;
  for (let run = 1; at < raw.length; run = run % 7 + 1) {
    const end = Math.min(raw.length, at + run * 65536);
    for (let i = at; i < end; i += 512) raw[i] = 1 + (i >> 9) % 251;
    at = end + 65536 * (run % 3 + 1);
  }
  return raw;
}

/**
 * `raw` as a qcow2 image in `dir`, uncompressed and zstd, each opened with
 * a pool of 0 and of 2 workers (closed when the next one comes).
 */
async function* qcow2Readers(dir: string, raw: Uint8Array) {
  for (const compression of ["none", "zstd"] as const) {
    const path = join(dir, `${compression}.qcow2`);
    await Deno.writeFile(
      path,
      await convertToBytes(raw, { compression, workers: 1 }),
    );
    for (const workers of [0, 2]) {
      await using pool = new CodecPool({ workers });
      await using image = await openImage(path, { format: "qcow2" });
      yield { pool, image, what: `${compression}, ${workers} workers` };
    }
  }
}

Deno.test("readSegments({ reuseBuffers }) reads the same bytes as without, into a few buffers used again", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  const path = join(dir.path, "s.qcow2");
  await Deno.writeFile(path, await convertToBytes(raw, { workers: 1 }));
  for (const reuseBuffers of [false, true]) {
    await using source = await FileSource.open(path);
    await using image = await openImage(source, { format: "qcow2" });
    const got = new Uint8Array(raw.length);
    const buffers = new Set<ArrayBufferLike>();
    let segments = 0;
    for await (
      const s of readSegments(image, {
        reuseBuffers,
        chunkSize: 1 << 20,
        maxInFlight: 4,
      })
    ) {
      if (!s.data) continue;
      got.set(s.data, s.offset); // done with it before asking for the next
      buffers.add(s.data.buffer);
      segments++;
    }
    assert.deepStrictEqual(got, raw);
    assert.ok(segments > 20, `${segments} data segments`);
    if (reuseBuffers) {
      assert.ok(
        buffers.size < segments / 2,
        `${buffers.size} buffers for ${segments} segments`,
      );
    } else {
      assert.strictEqual(buffers.size, segments);
    }
  }
});

Deno.test("readSegments({ reuseBuffers, pool }) takes its buffers from the pool's carriers: a segment's buffer given back is the next carrier", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  const path = join(dir.path, "s.qcow2");
  await Deno.writeFile(path, await convertToBytes(raw, { workers: 1 }));
  await using pool = new CodecPool({ workers: 0 });
  await using image = await openImage(path, { format: "qcow2" });
  const chunkSize = 256 << 10;
  const buffers = new Set<ArrayBufferLike>();
  for await (
    const s of readSegments(image, { pool, reuseBuffers: true, chunkSize })
  ) {
    if (s.data) buffers.add(s.data.buffer);
  }
  assert.ok(buffers.size > 1, `${buffers.size} buffers`);
  // Data segments of 64 KiB to 256 KiB: a carrier of 256 KiB is one of them.
  assert.ok(buffers.has(pool.carrier(chunkSize).buffer));
});

Deno.test("readSegments({ reuseBuffers }) decompresses into buffers used again: the same bytes, zlib and zstd, on workers and inline", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  // Text-like bytes so that the clusters compress.
  for (let i = 0; i < raw.length; i += 4096) {
    if (raw[i] !== 0) raw.fill(raw[i], i, i + 1000);
  }
  for (const compression of ["zlib", "zstd"] as const) {
    const path = join(dir.path, `${compression}.qcow2`);
    await Deno.writeFile(
      path,
      await convertToBytes(raw, { compression, workers: 1 }),
    );
    for (const workers of [0, 2]) {
      await using pool = new CodecPool({ workers });
      await using source = await FileSource.open(path);
      await using image = await openImage(source, { format: "qcow2" });
      const got = new Uint8Array(raw.length);
      let segments = 0;
      for await (
        const s of readSegments(image, {
          pool,
          reuseBuffers: true,
          chunkSize: 256 << 10,
          maxInFlight: 3,
        })
      ) {
        if (!s.data) continue;
        got.set(s.data, s.offset); // done with it before asking for the next
        segments++;
      }
      assert.ok(segments > 10, `${segments} data segments`);
      assert.deepStrictEqual(got, raw, `${compression}, ${workers} workers`);
    }
  }
});

/**
 * A raw source of 3s whose reads wait while held, counting those started:
 * with `readInto` as a local file has, without as a Blob, or with it and
 * fetching ahead itself as an HTTP source.
 */
function heldSource(size: number, kind: "local" | "remote" | "ahead") {
  const bytes = new Uint8Array(size).fill(3);
  const waiting: (() => void)[] = [];
  let held = true;
  const wait = () =>
    held ? new Promise<void>((go) => waiting.push(go)) : Promise.resolve();
  const source: RandomAccessSource = {
    size,
    read: async (offset, length) => {
      await wait();
      return bytes.slice(offset, offset + length);
    },
    ...kind === "ahead" ? { remote: true, fetchesAhead: true } : {},
  };
  if (kind !== "remote") {
    source.readInto = async (offset, into) => {
      await wait();
      const part = bytes.subarray(offset, offset + into.length);
      into.set(part);
      return part.length;
    };
  }
  return {
    source,
    started: () => waiting.length,
    release() {
      held = false;
      for (const go of waiting.splice(0)) go();
    },
  };
}

Deno.test("readSegments() reads 4 chunks ahead from a local or remote source, 2 from one that fetches ahead itself (HttpSource), within maxInFlight and maxInFlightBytes", async () => {
  const chunkSize = 65536;
  const cases: ["local" | "remote" | "ahead", ReadImageOptions, number][] = [
    ["local", {}, 4],
    ["remote", {}, 4],
    ["ahead", {}, 2],
    ["remote", { maxInFlight: 3 }, 3],
    ["ahead", { maxInFlight: 1 }, 1],
    ["local", { maxInFlightBytes: 5 * chunkSize }, 5],
    ["ahead", { maxInFlightBytes: 5 * chunkSize - 1 }, 5],
  ];
  for (const [kind, options, ahead] of cases) {
    const held = heldSource(64 * chunkSize, kind);
    await using image = await openImage(held.source, { format: "raw" });
    const segments = readSegments(image, { chunkSize, ...options });
    const first = segments.next();
    await new Promise((settled) => setTimeout(settled, 0));
    const what = `${kind}, ${JSON.stringify(options)}`;
    assert.strictEqual(held.started(), ahead, what);
    held.release();
    let bytes = (await first).value!.length;
    for await (const s of segments) {
      assert.ok(s.data!.every((b) => b === 3));
      bytes += s.length;
    }
    assert.strictEqual(bytes, 64 * chunkSize, what);
  }
});

Deno.test("readSegments({ reuseBuffers }) lends a segment's buffer until the next one is asked for: kept longer, it reads as poison", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  for (let i = 0; i < raw.length; i += 4096) {
    if (raw[i] !== 0) raw.fill(raw[i], i, i + 1000);
  }
  const was = setPoisoning(true);
  try {
    for await (const { pool, image, what } of qcow2Readers(dir.path, raw)) {
      let kept: Uint8Array | undefined;
      let poisoned = 0;
      for await (
        const s of readSegments(image, {
          pool,
          reuseBuffers: true,
          chunkSize: 256 << 10,
        })
      ) {
        if (kept) {
          assert.ok(kept.every((b) => b === POISON_BYTE), what);
          poisoned++;
        }
        kept = s.data ?? undefined;
        if (!s.data) continue;
        assert.deepStrictEqual(
          s.data,
          raw.subarray(s.offset, s.offset + s.length),
          `${what}: intact while lent`,
        );
      }
      assert.ok(poisoned > 10, `${what}: ${poisoned} segments poisoned`);
    }
  } finally {
    setPoisoning(was);
  }
});

Deno.test("readSegments({ recycle }) reuses a segment's buffer only once doneWith() passed a later one: before, the bytes stay intact", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  const was = setPoisoning(true);
  try {
    for await (const { pool, image, what } of qcow2Readers(dir.path, raw)) {
      const held: Segment[] = [];
      for await (
        const s of readSegments(image, {
          pool,
          recycle: true,
          chunkSize: 256 << 10,
        })
      ) {
        if (s.data) held.push(s);
      }
      // Nobody called doneWith: every segment is intact.
      for (const h of held) {
        assert.deepStrictEqual(
          h.data,
          raw.subarray(h.offset, h.offset + h.length),
          `${what}: intact without doneWith`,
        );
      }
      // doneWith on the last recycled one (a piece filling half a chunk or
      // more; smaller ones get fresh memory) frees every buffer before it.
      const last = held.findLastIndex((h) => 2 * h.length >= 256 << 10);
      doneWith(held[last].data!);
      const poisoned = held.slice(0, last).filter((h) =>
        h.data!.every((b) => b === POISON_BYTE)
      );
      assert.ok(poisoned.length > 10, `${what}: ${poisoned.length} freed`);
    }
  } finally {
    setPoisoning(was);
  }
});

Deno.test("readSegments() refuses a read-ahead budget of nothing", async () => {
  await using image = await openImage(new Uint8Array(65536));
  for (
    const [options, message] of [
      [{ maxInFlight: 0 }, "maxInFlight 0 is out of range [1, ∞)"],
      [{ maxInFlightBytes: 0 }, "maxInFlightBytes 0 is out of range [1, ∞)"],
      [{ maxInFlight: 1.5 }, "maxInFlight 1.5 is out of range [1, ∞)"],
      [{ chunkSize: 256 }, "chunkSize 256 is out of range [512, ∞)"],
    ] as const
  ) {
    await assert.rejects(
      Array.fromAsync(readSegments(image, options)),
      (err) => {
        assert.ok(err instanceof RangeError);
        assert.strictEqual(err.message, `Cannot read image: ${message}`);
        return true;
      },
    );
  }
});
