// The whole forward pipeline in memory: Qcow2Writer (chunk → zero detect →
// compress on a CodecPool → pack → finalize), raw bytes in 4 MiB chunks in,
// host writes counted and dropped (no file I/O), by disk fullness and by
// worker count.
//
// How to read: "[N MiB/iter]" is the virtual (guest) size converted per
// iteration, so guest MB/s = N x 1048.6 / (time/iter in ms), e.g. 32 MiB in
// 400 ms = 84 MB/s. workers=0 compresses on the calling thread (the
// baseline of each group); workers=1 and 2 go through CodecPool Web Workers
// (the CLI defaults to one worker per core, 2 here). On this 2-core machine
// the main thread (chunking, zero detection, copying jobs to workers,
// packing) competes with the workers, so 2 workers cannot reach 2x. Sparse
// output has no compression, so no pool and one row per fullness.
// `deno run -A bench/throughput.ts pipeline` prints the MB/s column directly.

import { CodecPool, Qcow2Writer } from "../mod.ts";
import { CLUSTER, FULLNESS, makeDisk, MiB, perIter, sink } from "./_data.ts";

const SPARSE_VIRTUAL = 256 * MiB;
const COMPRESSED_VIRTUAL = 32 * MiB;

// Pools live as long as the bench process (benches run after this module
// has been evaluated, so they cannot be closed in a block here); deno bench
// exits with them running.
const pools = new Map<number, CodecPool>(
  [0, 1, 2].map((w) => [w, new CodecPool({ workers: w })]),
);

function chunksOf(disk: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < disk.length; at += 4 * MiB) {
    out.push(disk.subarray(at, at + 4 * MiB));
  }
  return out;
}

async function run(
  chunks: Uint8Array[],
  compression: "none" | "zlib" | "zstd",
  pool: CodecPool | undefined,
): Promise<void> {
  await using writer = new Qcow2Writer({ compression, pool });
  let n = 0;
  for await (const w of ReadableStream.from(chunks).pipeThrough(writer)) {
    n += w.data.length;
  }
  sink.n += n;
}

for (const full of FULLNESS) {
  const chunks = chunksOf(makeDisk(SPARSE_VIRTUAL / CLUSTER, full));
  Deno.bench({
    name: `sparse, ${full}% full ${perIter(SPARSE_VIRTUAL)}`,
    group: "Qcow2Writer sparse",
    baseline: full === 100,
    fn: async () => await run(chunks, "none", undefined),
  });
}

for (const compression of ["zstd", "zlib"] as const) {
  for (const full of FULLNESS) {
    const chunks = chunksOf(makeDisk(COMPRESSED_VIRTUAL / CLUSTER, full));
    for (const [workers, pool] of pools) {
      Deno.bench({
        name: `${compression}, ${full}% full, workers=${workers} ${
          perIter(COMPRESSED_VIRTUAL)
        }`,
        group: `Qcow2Writer ${compression}, ${full}% full`,
        baseline: workers === 0,
        warmup: full === 0 ? 20 : 2,
        n: full === 0 ? 50 : 8,
        fn: async () => await run(chunks, compression, pool),
      });
    }
  }
}
