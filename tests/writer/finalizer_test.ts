// MetadataFinalizer alone and through Qcow2Writer: the summary numbers
// (clusters, L2 tables, refcount blocks, file size) against a layout
// computed by hand, progress reports, huge sparse disks, and records that
// break the stream contract.

import assert from "node:assert";
import { join } from "node:path";
import { HostAllocator } from "../../lib/writer/host_allocator.ts";
import { MetadataFinalizer } from "../../lib/writer/finalizer.ts";
import { Qcow2Writer, writesToBytes } from "../../lib/writer/qcow2_writer.ts";
import type { PlacedRecord, ZeroBytes } from "../../lib/writer/records.ts";
import { parseHeader } from "../../lib/format/header.ts";
import { decodeL1Entry } from "../../lib/format/l1.ts";
import { openImage } from "../../lib/reader/open.ts";
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

Deno.test("MetadataFinalizer: summary of a sparse 512-byte-cluster image matches the layout", async () => {
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

Deno.test("MetadataFinalizer: several refcount blocks (64-bit refcounts) counting themselves", async () => {
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

Deno.test("MetadataFinalizer: an empty image is header, refcount block and table", async () => {
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
    });
    const header = parseHeader(bytes.subarray(0, 512));
    assert.strictEqual(header.l1Size, 0);
    assert.strictEqual(header.size, 0);
  }
});

Deno.test("MetadataFinalizer: records after the end, a missing end, late clusters", async () => {
  const run = (records: PlacedRecord[]) =>
    Array.fromAsync(
      ReadableStream.from(records).pipeThrough(
        new MetadataFinalizer({
          allocator: new HostAllocator({ clusterSize: 512 }),
        }),
      ),
    );
  await assert.rejects(
    run([{ kind: "zero", index: 0, count: 1 }]),
    /without an end record/,
  );
  await assert.rejects(
    run([{ kind: "end", size: 0 }, { kind: "zero", index: 0, count: 1 }]),
    /after the end record/,
  );
  // cluster 70 completes L2 table 0 (64 entries); cluster 1 comes too late
  await assert.rejects(
    run([
      { kind: "normal", index: 0, count: 1, hostOffset: 512 },
      { kind: "normal", index: 70, count: 1, hostOffset: 1024 },
      { kind: "normal", index: 1, count: 1, hostOffset: 1536 },
      { kind: "end", size: 71 * 512 },
    ]),
    /L2 table 0 was already written/,
  );
  // clusters beyond the end of the input
  await assert.rejects(
    run([
      { kind: "normal", index: 200, count: 1, hostOffset: 512 },
      { kind: "end", size: 512 },
    ]),
    /beyond the end of the input/,
  );
});

Deno.test("MetadataFinalizer: compression type zstd sets the header field and feature bit", async () => {
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
