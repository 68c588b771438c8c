// Qcow2PackStream alone and through Qcow2Writer: the summary numbers
// (clusters, L2 tables, refcount blocks, file size) against a layout
// computed by hand, progress reports, huge sparse disks, records that break
// the stream contract, and the streamable layout over a spool of the
// caller's.

import assert from "node:assert";
import { join } from "node:path";
import {
  Qcow2PackStream,
  type Qcow2PackStreamOptions,
  type SpoolStore,
} from "../../lib/writer/pack_stream.ts";
import { Qcow2Writer, writesToBytes } from "../../lib/writer/qcow2_writer.ts";
import type {
  ClusterRecord,
  HostWrite,
  ZeroBytes,
} from "../../lib/writer/records.ts";
import { parseHeader } from "../../lib/format/header.ts";
import { decodeL1Entry } from "../../lib/format/l1.ts";
import { openImage } from "../../lib/reader/open.ts";
import { openImageStream } from "../../lib/reader/stream_open.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { ClusterChunkStream } from "../../lib/writer/chunk_stream.ts";
import { CompressStream } from "../../lib/writer/compress_stream.ts";
import { ZeroDetectStream } from "../../lib/writer/zero_stream.ts";
import { qemuCheckClean, qemuIo, qemuTest, tempDir } from "../_qemu.ts";
import { assertGuestBytes, qemuInfo, randomBytes } from "./_helpers.ts";

async function write(
  chunks: (Uint8Array | ZeroBytes)[],
  options: ConstructorParameters<typeof Qcow2Writer>[0],
) {
  const progress: number[] = [];
  await using writer = new Qcow2Writer({
    ...options,
    onProgress: (n) => progress.push(n),
  });
  const bytes = await writesToBytes(
    ReadableStream.from(chunks).pipeThrough(writer),
  );
  return { bytes, summary: await writer.summary, progress };
}

Deno.test("Qcow2PackStream: summary of a sparse 512-byte-cluster image matches the layout", async () => {
  const cs = 512;
  const size = 100 * 1024 - 100; // 200 clusters, the last one partial
  const input = new Uint8Array(size);
  const dataClusters = [];
  for (let c = 0; c < 64; c += 3) dataClusters.push(c); // L2 table 0
  dataClusters.push(150); // table 2 (table 1 stays empty)
  dataClusters.push(199); // table 3, the partial cluster
  for (const c of dataClusters) {
    input[Math.min(size - 1, c * cs + 17)] = c + 1;
  }
  const { bytes, summary, progress } = await write([input], {
    clusterSize: cs,
  });
  // header + 24 data + 3 L2 + 1 L1 (4 entries) + 1 refblock + 1 reftable
  assert.deepStrictEqual(summary, {
    inputSize: size,
    virtualSize: 100 * 1024,
    fileSize: 31 * cs,
    dataClusters: 24,
    compressedClusters: 0,
    zeroClusters: 176,
    backingClusters: 0,
    l2Tables: 3,
    refcountBlocks: 1,
    spoolBytes: 0,
  });
  assert.strictEqual(bytes.length, summary.fileSize);
  const header = parseHeader(bytes.subarray(0, cs));
  assert.strictEqual(header.l1Size, 4);
  assert.strictEqual(header.refcountTableClusters, 1);
  const l1 = bytes.subarray(header.l1TableOffset, header.l1TableOffset + 32);
  assert.deepStrictEqual(
    [0, 1, 2, 3].map((i) => decodeL1Entry(l1, i).l2Offset !== 0),
    [true, false, true, true],
  );
  // progress: guest bytes mapped so far, growing to all clusters
  assert.ok(progress.length > 0);
  for (let i = 1; i < progress.length; i++) {
    assert.ok(progress[i] > progress[i - 1], "progress grows");
  }
  assert.strictEqual(progress.at(-1), 200 * cs);
  await using image = await openImage(bytes);
  assertGuestBytes(await image.readAt(0, image.virtualSize), input);
});

Deno.test("Qcow2PackStream: several refcount blocks (64-bit refcounts) counting themselves", async () => {
  const cs = 512; // 64 refcounts per block
  const input = randomBytes(300 * cs, 1);
  const { bytes, summary } = await write([input], {
    clusterSize: cs,
    refcountBits: 64,
  });
  // T = 1 header + 300 data + 5 L2 + 1 L1 + B blocks + R table clusters,
  // B = ceil(T / 64), R = ceil(8B / 512): T = 313, B = 5, R = 1
  assert.strictEqual(summary.dataClusters, 300);
  assert.strictEqual(summary.l2Tables, 5);
  assert.strictEqual(summary.refcountBlocks, 5);
  assert.strictEqual(summary.fileSize, 313 * cs);
  assert.strictEqual(bytes.length, 313 * cs);
  await using image = await openImage(bytes);
  assert.deepStrictEqual(await image.readAt(0, input.length), input);
});

Deno.test("Qcow2PackStream: an empty image is header, refcount block and table", async () => {
  for (const cs of [512, 65536, 2 * 1024 * 1024]) {
    const { bytes, summary } = await write([], { clusterSize: cs });
    assert.deepStrictEqual(summary, {
      inputSize: 0,
      virtualSize: 0,
      fileSize: 3 * cs,
      dataClusters: 0,
      compressedClusters: 0,
      zeroClusters: 0,
      backingClusters: 0,
      l2Tables: 0,
      refcountBlocks: 1,
      spoolBytes: 0,
    });
    const header = parseHeader(bytes.subarray(0, 512));
    assert.strictEqual(header.l1Size, 0);
    assert.strictEqual(header.size, 0);
  }
});

Deno.test("Qcow2PackStream: records after the end, a missing end, out of order or beyond the end", async () => {
  const data = (index: number): ClusterRecord => ({
    kind: "data",
    index,
    count: 1,
    data: new Uint8Array(512).fill(1),
  });
  for (const streamable of [undefined, { spool: memorySpool }]) {
    const run = (records: ClusterRecord[]) =>
      Array.fromAsync(
        ReadableStream.from(records).pipeThrough(
          new Qcow2PackStream({ clusterSize: 512, streamable }),
        ),
      );
    await assert.rejects(
      run([{ kind: "zero", index: 0, count: 1 }]),
      /Cannot place clusters: the input ended without an end record/,
    );
    await assert.rejects(
      run([{ kind: "end", size: 0 }, { kind: "zero", index: 0, count: 1 }]),
      /Cannot place clusters: a zero record came after the end record/,
    );
    // cluster 70 completes L2 table 0 (64 entries); cluster 1 comes too late
    await assert.rejects(
      run([data(0), data(70), data(1), { kind: "end", size: 71 * 512 }]),
      /Cannot place clusters: a data record at cluster 1 came after cluster 70; records must be in guest order/,
    );
    await assert.rejects(
      run([data(0), { kind: "zero", index: 0, count: 2 }]),
      /a zero record at cluster 0 came after cluster 0/,
    );
    await assert.rejects(
      run([data(200), { kind: "end", size: 512 }]),
      /Cannot place clusters: cluster 200 is beyond the end of the input \(512 bytes, 1 clusters\)/,
    );
  }
});

Deno.test("Qcow2PackStream() refuses bad options up front", () => {
  for (
    const [options, message] of [
      [{ clusterSize: 1000 }, /cluster size 1000/],
      [{ refcountBits: 3 }, /refcount width 3/],
      [
        { compressionType: "lz4" },
        /compression type "lz4" is not zlib or zstd/,
      ],
      [{ backingFile: { name: "", format: "qcow2" } }, /a name is 1 to 1023/],
    ] as const
  ) {
    assert.throws(
      () => new Qcow2PackStream(options as Qcow2PackStreamOptions),
      (err: Error) => err instanceof RangeError && message.test(err.message),
      JSON.stringify(options),
    );
  }
});

/** A spool in memory, and what it holds. */
function memorySpool(): Promise<SpoolStore & { bytes: () => Uint8Array }> {
  let bytes = new Uint8Array(0);
  let closed = false;
  return Promise.resolve({
    bytes: () => bytes,
    writeAt(offset: number, data: Uint8Array) {
      assert.ok(!closed, "written after close");
      if (offset + data.length > bytes.length) {
        const grown = new Uint8Array(offset + data.length);
        grown.set(bytes);
        bytes = grown;
      }
      bytes.set(data, offset);
      return Promise.resolve();
    },
    readable(start: number, length: number) {
      const out = new Uint8Array(length);
      out.set(bytes.subarray(start, start + length));
      // in small chunks, so that records straddle them
      const chunks = [];
      for (let at = 0; at < length; at += 1000) {
        chunks.push(out.subarray(at, at + 1000));
      }
      return Promise.resolve(ReadableStream.from(chunks));
    },
    close() {
      closed = true;
      bytes = new Uint8Array(0);
      return Promise.resolve();
    },
  });
}

/** The records Qcow2Writer's stages make of `raw`. */
function recordsOf(
  raw: Uint8Array,
  clusterSize: number,
  pool: CodecPool | undefined,
): ReadableStream<ClusterRecord> {
  const records = ReadableStream.from([raw])
    .pipeThrough(new ClusterChunkStream({ clusterSize }))
    .pipeThrough(new ZeroDetectStream({ clusterSize }));
  return pool
    ? records.pipeThrough(
      new CompressStream({ pool, clusterSize, type: "zstd" }),
    )
    : records;
}

Deno.test("Qcow2PackStream({ streamable }) writes the file in order, metadata first, through the caller's spools", async () => {
  const cs = 512;
  const raw = randomBytes(300 * cs + 100, 3);
  raw.fill(0, 50 * cs, 200 * cs); // zero clusters between data
  await using pool = new CodecPool({ workers: 0 });
  for (const compress of [false, true]) {
    const spools: Awaited<ReturnType<typeof memorySpool>>[] = [];
    const progress: number[] = [];
    const pack = new Qcow2PackStream({
      clusterSize: cs,
      compressionType: "zstd",
      onProgress: (n) => progress.push(n),
      streamable: {
        spool: async () => {
          spools.push(await memorySpool());
          return spools.at(-1)!;
        },
      },
    });
    const writes: HostWrite[] = await Array.fromAsync(
      recordsOf(raw, cs, compress ? pool : undefined).pipeThrough(pack),
    );
    let offset = 0;
    for (const w of writes) {
      assert.strictEqual(w.offset, offset, "back to back from offset 0");
      offset += w.data.length;
    }
    const image = await writesToBytes(ReadableStream.from(writes));
    const summary = await pack.summary;
    assert.strictEqual(summary.fileSize, image.length);
    assert.strictEqual(spools.length, 2, "the data region and the mappings");
    const [data, mappings] = spools.map((s) => s.bytes().length);
    // the data region in whole clusters, and the mappings
    assert.strictEqual(
      summary.spoolBytes,
      Math.ceil(data / cs) * cs + mappings,
    );
    assert.ok(data > 150 * cs && data <= 151 * cs, `${data}`);
    assert.strictEqual(progress.at(-1), 301 * cs);
    assert.strictEqual(summary.zeroClusters, 150);
    await using opened = await openImageStream(ReadableStream.from([image]));
    assert.strictEqual(opened.onePass, true, "the streamable layout");
    await using image2 = await openImage(image);
    assert.deepStrictEqual(await image2.readAt(0, raw.length), raw);
    await pack.close();
    assert.deepStrictEqual(
      spools.map((s) => s.bytes().length),
      [0, 0],
      "deleted on close",
    );
  }
});

Deno.test("Qcow2PackStream: the summary rejects, and the spools are deleted, when the reader cancels", async () => {
  const records = (): ClusterRecord[] => [
    { kind: "data", index: 0, count: 4, data: new Uint8Array(2048).fill(1) },
    { kind: "end", size: 2048 },
  ];
  for (const layout of ["default", "streamable"] as const) {
    const spools: Awaited<ReturnType<typeof memorySpool>>[] = [];
    const pack = new Qcow2PackStream({
      clusterSize: 512,
      streamable: layout === "streamable"
        ? {
          spool: async () => {
            spools.push(await memorySpool());
            return spools.at(-1)!;
          },
        }
        : undefined,
    });
    const piped = ReadableStream.from(records()).pipeTo(pack.writable);
    const reader = pack.readable.getReader();
    const first = await reader.read();
    assert.ok(!first.done && first.value.data.length > 0, layout);
    await reader.cancel(new Error("enough"));
    await assert.rejects(pack.summary, /enough/, layout);
    if (layout === "streamable") {
      await piped; // the input was parked whole before the first write
      assert.deepStrictEqual(spools.map((s) => s.bytes().length), [0, 0]);
    } else {
      await assert.rejects(piped, /enough/);
    }
  }
});

Deno.test("Qcow2PackStream({ streamable }): a spool that fails fails the stage and its summary", async () => {
  const failing: SpoolStore = {
    writeAt: () => Promise.reject(new Error("disk full")),
    readable: () => Promise.reject(new Error("not reached")),
    close: () => Promise.resolve(),
  };
  const pack = new Qcow2PackStream({
    clusterSize: 512,
    streamable: { spool: () => Promise.resolve(failing) },
  });
  const out = Array.fromAsync(
    ReadableStream.from<ClusterRecord>([
      { kind: "data", index: 0, count: 1, data: new Uint8Array(512) },
      { kind: "end", size: 512 },
    ]).pipeThrough(pack),
  );
  await assert.rejects(out, /disk full/);
  await assert.rejects(pack.summary, /disk full/);
  const noSpool = new Qcow2PackStream({
    streamable: { spool: () => Promise.reject(new Error("no room")) },
  });
  await assert.rejects(
    Array.fromAsync(
      ReadableStream.from<ClusterRecord>([{ kind: "end", size: 0 }])
        .pipeThrough(noSpool),
    ),
    /no room/,
  );
});

Deno.test("Qcow2PackStream: compression type zstd sets the header field and feature bit", async () => {
  const { bytes } = await write([new Uint8Array(5000).fill(3)], {
    compression: "zstd",
    workers: 0,
  });
  const header = parseHeader(bytes.subarray(0, 4096));
  assert.strictEqual(header.compressionType, 1);
  assert.strictEqual(header.incompatibleFeatures & 0b1000n, 0b1000n);
  const zlib = await write([new Uint8Array(5000).fill(3)], {
    compression: "zlib",
    workers: 0,
  });
  const h2 = parseHeader(zlib.bytes.subarray(0, 4096));
  assert.strictEqual(h2.compressionType, 0);
  assert.strictEqual(h2.incompatibleFeatures, 0n);
});

for (
  const [label, cs, hole, compression, l2Tables] of [
    ["4 TiB, 64 KiB clusters", 65536, 4 * 2 ** 40 - 65536, "zstd", 2],
    ["513 GiB, 2 MiB clusters", 2 ** 21, 513 * 2 ** 30, "zlib", 2],
    ["1 GiB, 512-byte clusters", 512, 2 ** 30, "none", 3],
  ] as const
) {
  qemuTest(
    `Qcow2Writer: huge sparse disk from { zeros } holes: ${label}`,
    async () => {
      const head = randomBytes(1000, 1);
      const tail = new Uint8Array(65536).fill(0x5a);
      const { bytes, summary } = await write(
        [head, { zeros: hole - 1000 }, tail],
        { clusterSize: cs, compression, workers: 1 },
      );
      const size = hole + 65536;
      assert.strictEqual(summary.inputSize, size);
      assert.strictEqual(
        summary.zeroClusters + summary.dataClusters +
          summary.compressedClusters,
        Math.ceil(size / cs),
      );
      assert.strictEqual(summary.l2Tables, l2Tables);
      assert.ok(bytes.length < 16 * 2 ** 20, "the image stays small");
      await using dir = await tempDir();
      const path = join(dir.path, "huge.qcow2");
      await Deno.writeFile(path, bytes);
      await qemuCheckClean(path);
      const info = await qemuInfo(path);
      assert.strictEqual(info["virtual-size"], size);
      const out = await qemuIo(path, [
        `read -P 0x5a ${hole} 65536`,
        `read -P 0 1000 ${Math.min(hole - 1000, 2 ** 20)}`,
        `read -P 0 ${hole - 2 ** 20} ${2 ** 20}`,
      ]);
      assert.doesNotMatch(out, /Pattern verification failed/, out);
      await using image = await openImage(path);
      assert.deepStrictEqual(await image.readAt(0, 1000), head);
      assert.deepStrictEqual(await image.readAt(hole, 65536), tail);
      assert.ok((await image.readAt(hole - 4096, 4096)).every((b) => b === 0));
    },
  );
}
