// Chunking: ClusterChunkStream (64 KiB clusters) over 64 MiB of input cut
// into chunks of various sizes, records consumed and discarded.
//
// How to read: each iteration pushes 64 MiB through the stage ("[64 MiB/iter]"
// in the name), so MB/s = 67 109 / (time/iter in ms), e.g. 10 ms/iter =
// 6.7 GB/s; `iter/s` x 64 = MiB/s. Aligned chunks are never copied, so their
// cost is per chunk, not per byte (the MB/s is then very high and only says
// the stage is not a bottleneck). The baseline is 4 MiB chunks, what
// fileChunks() feeds the CLI. Cluster-aligned chunks pass through as views;
// unaligned ones (1000 B, 100 000 B, 65 535 B) are partly copied through a
// pending cluster and also produce unaligned views (see zero_bench.ts for
// what that costs isZero). Small chunks measure per-chunk stream overhead.
// `{ zeros }` holes are what imageChunks() sends for sparse ranges.
// `deno run -A bench/throughput.ts chunk` prints the MB/s column directly.

import { ClusterChunkStream, type ZeroBytes } from "../mod.ts";
import { CLUSTER, MiB, perIter, sink } from "./_data.ts";

const TOTAL = 64 * MiB;
const input = new Uint8Array(TOTAL);
for (let i = 0; i < TOTAL; i += 4096) input[i] = i & 0xff;

function chunks(size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < TOTAL; at += size) {
    out.push(input.subarray(at, Math.min(TOTAL, at + size)));
  }
  return out;
}

async function run(list: (Uint8Array | ZeroBytes)[]): Promise<void> {
  const records = ReadableStream.from(list).pipeThrough(
    new ClusterChunkStream({ clusterSize: CLUSTER }),
  );
  let n = 0;
  for await (const r of records) if (r.kind !== "end") n += r.count;
  sink.n += n;
}

const tag = perIter(TOTAL);
const cases: { label: string; list: (Uint8Array | ZeroBytes)[] }[] = [
  { label: "4 MiB chunks (fileChunks)", list: chunks(4 * MiB) },
  { label: "16 MiB chunks", list: chunks(16 * MiB) },
  { label: "64 KiB chunks (one cluster)", list: chunks(64 * 1024) },
  { label: "100 000 B chunks (unaligned)", list: chunks(100_000) },
  { label: "65 535 B chunks (unaligned)", list: chunks(65_535) },
  { label: "4 KiB chunks", list: chunks(4096) },
  { label: "1000 B chunks (unaligned)", list: chunks(1000) },
  {
    label: "{ zeros } holes of 4 MiB",
    list: Array.from({ length: TOTAL / (4 * MiB) }, () => ({ zeros: 4 * MiB })),
  },
];

for (const [i, c] of cases.entries()) {
  Deno.bench({
    name: `${c.label}, n=${c.list.length} ${tag}`,
    group: "ClusterChunkStream",
    baseline: i === 0,
    // An async function: deno bench only awaits fns that are AsyncFunctions.
    fn: async () => await run(c.list),
  });
}
