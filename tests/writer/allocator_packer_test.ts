// The pack stage's private parts, HostAllocator and ClusterPacker, alone
// (through their modules): compressed payloads packed at
// 512-byte granularity, crossing into the next host cluster only when it
// is free, the refcount maximum respected (1- and 2-bit refcounts), and
// refcount blocks handed over once final.

import assert from "node:assert";
import { HostAllocator } from "../../lib/writer/_host_allocator.ts";
import { ClusterPacker, type PlacedRecord } from "../../lib/writer/_packer.ts";
import type { ClusterRecord } from "../../lib/writer/records.ts";
import { getRefcount } from "../../lib/format/refcount.ts";
import { randomBytes } from "./_helpers.ts";

Deno.test("HostAllocator: the header cluster is allocated first; whole clusters follow", () => {
  const a = new HostAllocator({ clusterSize: 65536 });
  assert.strictEqual(a.end, 65536);
  assert.strictEqual(a.refcount(0), 1);
  assert.strictEqual(a.refcountOrder, 4, "16-bit refcounts by default");
  assert.strictEqual(a.blockEntries, 32768);
  assert.strictEqual(a.allocClusters(3), 65536);
  assert.strictEqual(a.allocClusters(1), 4 * 65536);
  assert.strictEqual(a.end, 5 * 65536);
  for (let c = 0; c < 5; c++) assert.strictEqual(a.refcount(c * 65536), 1);
  assert.strictEqual(a.refcount(5 * 65536), 0);
});

Deno.test("HostAllocator: compressed payloads are packed at 512-byte granularity", () => {
  const a = new HostAllocator({ clusterSize: 4096 });
  assert.deepStrictEqual(
    [100, 600, 1, 512, 512].map((n) => a.allocCompressed(n)),
    [4096, 4608, 5632, 6144, 6656],
  );
  assert.strictEqual(a.refcount(4096), 5, "one reference per payload");
  assert.strictEqual(a.end, 8192);
  // exactly fills the rest of the cluster
  assert.strictEqual(a.allocCompressed(1024), 7168);
  assert.strictEqual(a.refcount(4096), 6);
  assert.strictEqual(a.end, 8192);
  // the cluster is full: the next payload starts a new one
  assert.strictEqual(a.allocCompressed(100), 8192);
  assert.strictEqual(a.refcount(8192), 1);
  assert.strictEqual(a.end, 12288);
});

Deno.test("HostAllocator: a payload crosses into the next cluster when that one is free", () => {
  const a = new HostAllocator({ clusterSize: 4096 });
  assert.strictEqual(a.allocCompressed(3000), 4096); // 6 sectors
  assert.strictEqual(a.allocCompressed(3000), 7168); // 7168..10240
  assert.strictEqual(a.end, 12288);
  assert.deepStrictEqual([a.refcount(4096), a.refcount(8192)], [2, 1]);
  assert.strictEqual(a.allocCompressed(3000), 10240); // 10240..13312
  assert.deepStrictEqual(
    [a.refcount(4096), a.refcount(8192), a.refcount(12288)],
    [2, 2, 1],
  );
  assert.strictEqual(a.end, 16384);
});

Deno.test("HostAllocator: no crossing into a cluster that is taken; the partly used cluster still fills", () => {
  const a = new HostAllocator({ clusterSize: 4096 });
  assert.strictEqual(a.allocCompressed(3000), 4096); // tail at 7168
  assert.strictEqual(a.allocClusters(1), 8192); // data after it
  // 512 bytes still fit in the partly used cluster
  assert.strictEqual(a.allocCompressed(500), 7168);
  assert.strictEqual(a.refcount(4096), 2);
  assert.strictEqual(a.allocClusters(1), 12288);
  // 3000 bytes do not fit, and cluster 8192 is taken: a new cluster
  const b = new HostAllocator({ clusterSize: 4096 });
  b.allocCompressed(3000);
  b.allocClusters(1);
  assert.strictEqual(b.allocCompressed(3000), 12288);
  assert.strictEqual(b.refcount(8192), 1, "the data cluster is not shared");
  assert.strictEqual(b.end, 16384);
});

Deno.test("HostAllocator: 1-bit refcounts never share a host cluster", () => {
  const a = new HostAllocator({ clusterSize: 4096, refcountBits: 1 });
  assert.deepStrictEqual(
    [100, 100, 3000, 3000, 4095].map((n) => a.allocCompressed(n)),
    [4096, 8192, 12288, 16384, 20480],
  );
  for (let c = 0; c < 6; c++) assert.strictEqual(a.refcount(c * 4096), 1);
  assert.strictEqual(a.end, 24576);
});

Deno.test("HostAllocator: 2-bit refcounts share a host cluster at most 3 times", () => {
  const a = new HostAllocator({ clusterSize: 4096, refcountBits: 2 });
  assert.deepStrictEqual(
    [100, 100, 100, 100, 100, 100, 100].map((n) => a.allocCompressed(n)),
    [4096, 4608, 5120, 8192, 8704, 9216, 12288],
  );
  assert.deepStrictEqual(
    [4096, 8192, 12288].map((o) => a.refcount(o)),
    [3, 3, 1],
  );
  // crossing: the payload adds a reference to both clusters it touches
  const b = new HostAllocator({ clusterSize: 4096, refcountBits: 2 });
  b.allocCompressed(3000); // 4096, rc 1
  b.allocCompressed(512); // 7168, rc 2
  assert.strictEqual(b.allocCompressed(1000), 7680); // crosses: rc 3 and 1
  assert.deepStrictEqual([b.refcount(4096), b.refcount(8192)], [3, 1]);
  assert.strictEqual(b.allocCompressed(100), 8704); // continues in 8192
  assert.strictEqual(b.refcount(8192), 2);
});

Deno.test("HostAllocator: payload lengths outside [1, cluster size) are rejected", () => {
  const a = new HostAllocator({ clusterSize: 4096 });
  for (const n of [0, -1, 4096, 5000, 1.5, NaN]) {
    assert.throws(() => a.allocCompressed(n), RangeError, `length ${n}`);
  }
  assert.throws(() => new HostAllocator({ clusterSize: 4097 }), RangeError);
  assert.throws(
    () => new HostAllocator({ clusterSize: 4096, refcountBits: 3 }),
    RangeError,
  );
  assert.throws(
    () => new HostAllocator({ clusterSize: 4096, refcountBits: 128 }),
    RangeError,
  );
});

Deno.test("HostAllocator: takeFinalBlocks hands over only blocks that can no longer change", () => {
  // 64-bit refcounts, 4 KiB clusters: 512 clusters per refcount block
  const a = new HostAllocator({ clusterSize: 4096, refcountBits: 64 });
  assert.strictEqual(a.blockEntries, 512);
  assert.strictEqual(a.allocCompressed(100), 4096); // partly used cluster 1
  a.allocClusters(600); // clusters 2..601
  assert.deepStrictEqual(
    a.takeFinalBlocks(),
    [],
    "block 0 holds the partly used cluster",
  );
  assert.strictEqual(a.allocCompressed(100), 4608, "still packed there");
  a.closeTail();
  const first = a.takeFinalBlocks();
  assert.deepStrictEqual(first.map((b) => b.index), [0]);
  const block = first[0].block;
  assert.strictEqual(block.length, 4096);
  assert.strictEqual(getRefcount(block, 0, 6), 1);
  assert.strictEqual(getRefcount(block, 1, 6), 2);
  for (let e = 2; e < 512; e++) assert.strictEqual(getRefcount(block, e, 6), 1);
  assert.deepStrictEqual(a.takeFinalBlocks(), [], "nothing more is final");
  assert.strictEqual(a.refcount(4096), 0, "handed-over blocks read as 0");
  const rest = a.takeFinalBlocks(true);
  assert.deepStrictEqual(rest.map((b) => b.index), [1]);
  for (let e = 0; e < 512; e++) {
    assert.strictEqual(getRefcount(rest[0].block, e, 6), e < 90 ? 1 : 0);
  }
  assert.throws(
    () => a.allocClusters(1),
    /refcount block 1 was already written/,
  );
});

Deno.test("HostAllocator: 1-bit refcount blocks", () => {
  // 512-byte clusters, 1-bit refcounts: 4096 clusters per block
  const a = new HostAllocator({ clusterSize: 512, refcountBits: 1 });
  assert.strictEqual(a.blockEntries, 4096);
  a.allocClusters(5000);
  const blocks = a.takeFinalBlocks();
  assert.deepStrictEqual(blocks.map((b) => b.index), [0]);
  assert.ok(blocks[0].block.every((b) => b === 0xff), "4096 ones");
  const last = a.takeFinalBlocks(true)[0].block;
  for (let e = 0; e < 4096; e++) {
    assert.strictEqual(getRefcount(last, e, 0), e < 5001 - 4096 ? 1 : 0);
  }
});

function pack(records: ClusterRecord[], packer: ClusterPacker): PlacedRecord[] {
  const out: PlacedRecord[] = [];
  for (const record of records) packer.place(record, (p) => out.push(p));
  return out;
}

Deno.test("ClusterPacker: placements, merged payload writes with zero padding", () => {
  const cs = 4096;
  const p = [100, 600, 3000].map((n, i) => randomBytes(n, i));
  const joined = new Uint8Array(3700);
  joined.set(p[0], 0);
  joined.set(p[1], 100);
  joined.set(p[2], 700);
  const data = randomBytes(2 * cs, 9);
  const small = randomBytes(200, 10);
  const big = [randomBytes(4000, 11), randomBytes(4000, 12)];
  const bigJoined = new Uint8Array(8000);
  bigJoined.set(big[0], 0);
  bigJoined.set(big[1], 4000);
  const packer = new ClusterPacker(new HostAllocator({ clusterSize: cs }));
  const out = pack([
    {
      kind: "compressed",
      index: 0,
      count: 3,
      data: joined,
      lengths: [100, 600, 3000],
    },
    { kind: "data", index: 3, count: 2, data },
    { kind: "compressed", index: 5, count: 1, data: small, lengths: [200] },
    {
      kind: "compressed",
      index: 6,
      count: 2,
      data: bigJoined,
      lengths: [4000, 4000],
    },
    { kind: "zero", index: 8, count: 10 },
    { kind: "end", size: 18 * cs },
  ], packer);
  const expected = new Uint8Array(4608);
  expected.set(p[0], 0);
  expected.set(p[1], 512);
  expected.set(p[2], 1536);
  const smallPadded = new Uint8Array(512);
  smallPadded.set(small);
  const bigPadded = new Uint8Array(8192);
  bigPadded.set(big[0], 0);
  bigPadded.set(big[1], 4096);
  assert.deepStrictEqual(out, [
    { kind: "write", offset: 4096, data: expected },
    {
      kind: "compressed",
      index: 0,
      count: 3,
      hostOffsets: [4096, 4608, 5632],
      sectors: [1, 2, 6],
    },
    { kind: "write", offset: 12288, data },
    { kind: "normal", index: 3, count: 2, hostOffset: 12288 },
    // back into the partly used cluster 8192
    { kind: "write", offset: 8704, data: smallPadded },
    {
      kind: "compressed",
      index: 5,
      count: 1,
      hostOffsets: [8704],
      sectors: [1],
    },
    // 4000 bytes do not fit there: new clusters, one merged write
    { kind: "write", offset: 20480, data: bigPadded },
    {
      kind: "compressed",
      index: 6,
      count: 2,
      hostOffsets: [20480, 24576],
      sectors: [8, 8],
    },
    { kind: "zero", index: 8, count: 10 },
    { kind: "end", size: 18 * cs },
  ]);
  const a = packer.allocator;
  assert.deepStrictEqual(
    [0, 4096, 8192, 12288, 16384, 20480, 24576, 28672].map((o) =>
      a.refcount(o)
    ),
    [1, 3, 2, 1, 1, 1, 1, 0],
  );
  assert.strictEqual(a.end, 28672);
});

Deno.test("ClusterPacker: 1-bit refcounts put each payload in a cluster of its own", () => {
  const allocator = new HostAllocator({ clusterSize: 512, refcountBits: 1 });
  const packer = new ClusterPacker(allocator);
  const out = pack([
    {
      kind: "compressed",
      index: 0,
      count: 2,
      data: new Uint8Array(20).fill(1),
      lengths: [10, 10],
    },
  ], packer);
  // 512-byte clusters: each payload in a cluster of its own
  assert.deepStrictEqual(out.at(-1), {
    kind: "compressed",
    index: 0,
    count: 2,
    hostOffsets: [512, 1024],
    sectors: [1, 1],
  });
  assert.strictEqual(allocator.end, 1536);
});

Deno.test("HostAllocator({ backfill: false }) keeps compressed payloads in allocation order", () => {
  const cs = 4096;
  for (const backfill of [true, false]) {
    const alloc = new HostAllocator({ clusterSize: cs, backfill });
    const a = alloc.allocCompressed(100); // opens a partly used cluster at 4096
    const data = alloc.allocClusters(1); // a whole cluster after it
    const b = alloc.allocCompressed(100);
    assert.strictEqual(a, cs);
    assert.strictEqual(data, 2 * cs);
    // QEMU's way fills the old cluster; the streamable layout must not go back.
    assert.strictEqual(b, backfill ? cs + 512 : 3 * cs);
    assert.ok(backfill || b > data);
  }
});

Deno.test("HostAllocator() fills clusters left partly used when whole clusters came between", () => {
  const cs = 4096;
  const alloc = new HostAllocator({ clusterSize: cs });
  const a = alloc.allocCompressed(1000); // cluster 1, 1024 bytes used
  const data = alloc.allocClusters(1); // cluster 2
  const big = alloc.allocCompressed(3500); // does not fit cluster 1: cluster 3
  assert.deepStrictEqual([a, data, big], [cs, 2 * cs, 3 * cs]);
  // Later payloads that fit go back into cluster 1, then the new tail.
  const small = alloc.allocCompressed(600);
  assert.strictEqual(small, cs + 1024);
  assert.strictEqual(alloc.refcount(cs), 2);
  const next = alloc.allocCompressed(3000); // cluster 1 has 2048 left: tail
  assert.strictEqual(next, 3 * cs + 3584);
  assert.strictEqual(alloc.refcount(3 * cs), 2);
  assert.strictEqual(alloc.refcount(4 * cs), 1);
  // Without backfill (the streamable layout), nothing goes back.
  const ordered = new HostAllocator({ clusterSize: cs, backfill: false });
  ordered.allocCompressed(1000);
  ordered.allocClusters(1);
  ordered.allocCompressed(3500);
  assert.strictEqual(ordered.allocCompressed(600), 3 * cs + 3584);
});

Deno.test("HostAllocator.takeFinalBlocks() keeps the block of a cluster still open for payloads", () => {
  const cs = 4096; // 64-bit refcounts: a block covers 512 clusters
  const alloc = new HostAllocator({ clusterSize: cs, refcountBits: 64 });
  alloc.allocCompressed(100); // cluster 1, 512 bytes used
  alloc.allocClusters(1100); // clusters 2-1101: blocks 0, 1 and 2
  alloc.allocCompressed(3900); // does not fit cluster 1: a new tail
  assert.deepStrictEqual(alloc.takeFinalBlocks().map((b) => b.index), []);
  assert.strictEqual(alloc.allocCompressed(300), cs + 512);
  assert.strictEqual(alloc.refcount(cs), 2);
  alloc.closeTail();
  assert.deepStrictEqual(alloc.takeFinalBlocks().map((b) => b.index), [0, 1]);
});
