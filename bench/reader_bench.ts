// The reader: openImage() on an in-memory qcow2 made with convertToBytes(),
// then readSegments() over the whole disk, by disk fullness, without
// decompression (sparse images) and with it (zlib, zstd) on 0, 1 or 2
// workers.
//
// How to read: "[N MiB/iter]" is the virtual (guest) size read per
// iteration, so guest MB/s = N x 1048.6 / (time/iter in ms), e.g. 64 MiB in
// 100 ms = 671 MB/s. Holes cost almost nothing, so the 0% rows measure
// opening the image and walking its tables. workers=0 decompresses on the
// calling thread (no pool: what readSegments does without one, the
// baseline); workers=1 and 2 go through CodecPool Web Workers, as the CLI
// does when it expands. Sparse images never touch a codec, so no pool and
// one row per fullness. No file I/O: the image is a Uint8Array
// (BytesSource), so these are upper bounds for expanding from disk.
// `deno run -A bench/throughput.ts reader` prints the MB/s column directly.

import { CodecPool, convertToBytes, openImage, readSegments } from "../mod.ts";
import { CLUSTER, FULLNESS, makeDisk, MiB, perIter, sink } from "./_data.ts";

const SPARSE_VIRTUAL = 256 * MiB;
const COMPRESSED_VIRTUAL = 64 * MiB;

// Pools live as long as the bench process (see pipeline_bench.ts).
const pools = new Map<number, CodecPool>(
  [1, 2].map((w) => [w, new CodecPool({ workers: w })]),
);

async function run(image: Uint8Array, pool: CodecPool | undefined) {
  await using guest = await openImage(image);
  let n = 0;
  for await (const s of readSegments(guest, { pool })) {
    if (s.data) n += s.data[0] + s.length;
  }
  sink.n += n;
}

const setup = pools.get(2)!;
for (const full of FULLNESS) {
  const image = await convertToBytes(
    makeDisk(SPARSE_VIRTUAL / CLUSTER, full),
    { compression: "none" },
  );
  Deno.bench({
    name: `sparse, ${full}% full ${perIter(SPARSE_VIRTUAL)}`,
    group: "read sparse qcow2 (no decompression)",
    baseline: full === 100,
    fn: async () => await run(image, undefined),
  });
}

for (const compression of ["zstd", "zlib"] as const) {
  for (const full of FULLNESS) {
    const image = await convertToBytes(
      makeDisk(COMPRESSED_VIRTUAL / CLUSTER, full),
      { compression, pool: setup },
    );
    for (const workers of [0, 1, 2]) {
      const pool = workers === 0 ? undefined : pools.get(workers);
      Deno.bench({
        name: `${compression}, ${full}% full, workers=${workers} ${
          perIter(COMPRESSED_VIRTUAL)
        }`,
        group: `read ${compression} qcow2, ${full}% full`,
        baseline: workers === 0,
        warmup: full === 0 ? 20 : 2,
        n: full === 0 ? 50 : 10,
        fn: async () => await run(image, pool),
      });
    }
  }
}
