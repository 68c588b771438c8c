// Cluster codecs: every backend at the levels that matter, one cluster at a
// time (as the pipeline calls them), on one core.
//
// How to read: each compress iteration compresses the same 128 realistic
// 64 KiB clusters ("[8 MiB/iter]"; see _data.ts for where they come from),
// so MB/s = 8389 / (time/iter in ms), e.g. 100 ms/iter = 84 MB/s;
// `iter/s` x 8 = MiB/s. The slowest level (zstd 19) compresses only the
// first 16 clusters per iteration ("[1 MiB/iter]": MB/s = 1049 / ms).
// "ratio" is output bytes / input bytes with QEMU's
// rule (a cluster that does not shrink is stored as is, 65 536 bytes), so
// lower is better and it predicts the size of a compressed qcow2's data.
// Decompress iterations expand the compressed clusters of the same sample
// ("[N MiB/iter]" counts the output bytes) and run the exact QEMU-compatible
// decompress() the reader uses. Baselines are the defaults the CLI uses
// (node zlib 9, node zstd 3). QEMU's own speed on the same clusters is not
// measured here (see bench/compare.ts for end-to-end comparisons).
// `deno run -A bench/throughput.ts codec` prints the MB/s column directly.

import { type ClusterCodec, type CodecOptions, createCodec } from "../mod.ts";
import { CLUSTER, dataSource, perIter, sampleClusters, sink } from "./_data.ts";

const sample = sampleClusters(128);
const inputBytes = sample.length * CLUSTER;
console.error(`codec_bench: data is ${dataSource}`);

interface Case {
  label: string;
  options: CodecOptions;
  /** Compress only the first 16 clusters per iteration (very slow levels). */
  slow?: boolean;
  baseline?: boolean;
}

const CASES: Case[] = [
  {
    label: "node zlib 1",
    options: { type: "zlib", backend: "node", level: 1 },
  },
  {
    label: "node zlib 6",
    options: { type: "zlib", backend: "node", level: 6 },
  },
  {
    label: "node zlib 9",
    options: { type: "zlib", backend: "node", level: 9 },
    baseline: true,
  },
  {
    label: "fflate 6",
    options: { type: "zlib", backend: "fflate", level: 6 },
  },
  {
    label: "node zstd 1",
    options: { type: "zstd", backend: "node", level: 1 },
  },
  {
    label: "node zstd 3",
    options: { type: "zstd", backend: "node", level: 3 },
    baseline: true,
  },
  {
    label: "node zstd 9",
    options: { type: "zstd", backend: "node", level: 9 },
  },
  {
    label: "node zstd 19",
    options: { type: "zstd", backend: "node", level: 19 },
    slow: true,
  },
  {
    label: "zstd-codec 3",
    options: { type: "zstd", backend: "zstd-codec", level: 3 },
  },
];

function compressAll(codec: ClusterCodec): (Uint8Array | undefined)[] {
  return sample.map((c) => codec.compress(c));
}

for (const c of CASES) {
  const codec = await createCodec(c.options);
  const packed = compressAll(codec);
  const stored = packed.reduce((n, p) => n + (p ? p.length : CLUSTER), 0);
  const ratio = (stored / inputBytes).toFixed(3);
  const payloads = packed.filter((p): p is Uint8Array => p !== undefined);
  const type = c.options.type;

  const input = c.slow ? sample.slice(0, 16) : sample;
  Deno.bench({
    name: `${c.label} compress, ratio ${ratio} ${
      perIter(input.length * CLUSTER)
    }`,
    group: `compress ${type}`,
    baseline: c.baseline,
    warmup: 1,
    n: c.slow ? 5 : 10,
    fn() {
      let n = 0;
      for (const cluster of input) n += codec.compress(cluster)?.length ?? 0;
      sink.n += n;
    },
  });

  Deno.bench({
    name: `${c.label} decompress, ${payloads.length} clusters ${
      perIter(payloads.length * CLUSTER)
    }`,
    group: `decompress ${type}`,
    baseline: c.baseline,
    warmup: 2,
    n: 20,
    fn() {
      let n = 0;
      for (const p of payloads) n += codec.decompress(p, CLUSTER)[0];
      sink.n += n;
    },
  });
}
