// The pack stage (Qcow2PackStream: placement, then L2 tables, refcounts, L1
// and header) on records prepared in advance (no I/O, no compression in the
// timed part), by disk fullness.
//
// How to read: every iteration maps a 256 MiB virtual disk ("[256 MiB/iter]"
// counts guest bytes, data or not), so guest MB/s = 268 435 / (time/iter in
// ms), e.g. 10 ms/iter = 26.8 GB/s. The records are what the real front
// stages (ClusterChunkStream → ZeroDetectStream → CompressStream) emit for a
// disk of that fullness, so run shapes are realistic: "sparse" records are
// data runs of up to 64 clusters, "zstd" records compressed runs of up to
// 16 clusters whose payloads the stage copies into sector-aligned writes.
// Host writes are counted and dropped. Baselines: the sparse records.
// `deno run -A bench/throughput.ts packer` prints the MB/s column directly.

import {
  ClusterChunkStream,
  type ClusterRecord,
  CodecPool,
  CompressStream,
  Qcow2PackStream,
  ZeroDetectStream,
} from "../mod.ts";
import { CLUSTER, FULLNESS, makeDisk, MiB, perIter, sink } from "./_data.ts";

const VIRTUAL = 256 * MiB;

async function prepare(
  disk: Uint8Array,
  pool: CodecPool | undefined,
): Promise<ClusterRecord[]> {
  const chunks: Uint8Array[] = [];
  for (let at = 0; at < disk.length; at += 4 * MiB) {
    chunks.push(disk.subarray(at, at + 4 * MiB));
  }
  let records = ReadableStream.from(chunks)
    .pipeThrough(new ClusterChunkStream({ clusterSize: CLUSTER }))
    .pipeThrough(new ZeroDetectStream({ clusterSize: CLUSTER }));
  if (pool) {
    records = records.pipeThrough(
      new CompressStream({ pool, clusterSize: CLUSTER, type: "zstd" }),
    );
  }
  return await Array.fromAsync(records);
}

async function run(records: ClusterRecord[], zstd: boolean): Promise<void> {
  const writes = ReadableStream.from(records).pipeThrough(
    new Qcow2PackStream({
      clusterSize: CLUSTER,
      compressionType: zstd ? "zstd" : "zlib",
    }),
  );
  let n = 0;
  for await (const w of writes) n += w.data.length;
  sink.n += n;
}

{
  await using pool = new CodecPool({ workers: 2 });
  for (const full of FULLNESS) {
    const disk = makeDisk(VIRTUAL / CLUSTER, full);
    const sparse = await prepare(disk, undefined);
    const zstd = await prepare(disk, pool);
    const group = `packer+finalizer, ${full}% full`;
    Deno.bench({
      name: `sparse records, n=${sparse.length} ${perIter(VIRTUAL)}`,
      group,
      baseline: true,
      fn: async () => await run(sparse, false),
    });
    Deno.bench({
      name: `zstd records, n=${zstd.length} ${perIter(VIRTUAL)}`,
      group,
      fn: async () => await run(zstd, true),
    });
  }
}
