// Zero detection: isZero() on 64 KiB clusters, one core (the main thread).
//
// How to read: every bench checks 64 MiB of clusters per iteration (the
// "[64 MiB/iter]" in its name), so throughput in GB/s = 0.0671 / (time/iter
// in ms), e.g. 13.4 ms/iter = 5.0 GB/s; `iter/s` x 64 = MiB/s. Target:
// isZero >= 5 GB/s on all-zero clusters (the worst case: every byte is read).
// "data clusters" return at the first non-zero word, so they only show the
// per-call overhead. The other rows are references, not library code: a
// plain byte loop (what isZero must beat), 64-bit word loops, and
// node:buffer's native compare against a zero cluster (memcmp).
// `deno run -A bench/throughput.ts zero` prints the MB/s column directly.

import { Buffer } from "node:buffer";
import { isZero } from "../lib/bytes/zeros.ts";
import { CLUSTER, MiB, perIter, sampleClusters, sink } from "./_data.ts";

const TOTAL = 64 * MiB;
const COUNT = TOTAL / CLUSTER;

function views(buf: Uint8Array, skew = 0): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < COUNT; i++) {
    out.push(buf.subarray(skew + i * CLUSTER, skew + (i + 1) * CLUSTER));
  }
  return out;
}

/**
 * A zero buffer backed by real memory: untouched pages of a fresh buffer
 * all map the kernel's one shared zero page, which would always be in the
 * CPU cache and flatter every full scan.
 */
function zeroBuffer(size: number): Uint8Array {
  return new Uint8Array(size).fill(1).fill(0);
}

const zeros = views(zeroBuffer(TOTAL));
const zerosUnaligned = views(zeroBuffer(TOTAL + 8), 1);
const lastByte = new Uint8Array(TOTAL);
for (let i = 0; i < COUNT; i++) lastByte[(i + 1) * CLUSTER - 1] = 1;
const lastByteSet = views(lastByte);
const sample = sampleClusters();
const dataBuf = new Uint8Array(TOTAL);
for (let i = 0; i < COUNT; i++) {
  dataBuf.set(sample[i % sample.length], i * CLUSTER);
}
const dataClusters = views(dataBuf);
// 1 MiB reused 64 times: the clusters stay in the CPU cache.
const small = zeroBuffer(MiB);
const hot: Uint8Array[] = [];
for (let i = 0; i < COUNT; i++) {
  const k = i % (MiB / CLUSTER);
  hot.push(small.subarray(k * CLUSTER, (k + 1) * CLUSTER));
}

function byteLoop(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function float64Loop(b: Uint8Array): boolean {
  const w = new Float64Array(b.buffer, b.byteOffset, b.byteLength >>> 3);
  for (let i = 0; i < w.length; i += 8) {
    // Reference only: wrong for words holding -0.0 (only the sign bit set).
    if (
      w[i] !== 0 || w[i + 1] !== 0 || w[i + 2] !== 0 || w[i + 3] !== 0 ||
      w[i + 4] !== 0 || w[i + 5] !== 0 || w[i + 6] !== 0 || w[i + 7] !== 0
    ) {
      return false;
    }
  }
  return true;
}

function bigUint64Loop(b: Uint8Array): boolean {
  const w = new BigUint64Array(b.buffer, b.byteOffset, b.byteLength >>> 3);
  for (let i = 0; i < w.length; i += 4) {
    if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3]) !== 0n) return false;
  }
  return true;
}

const ZERO_CLUSTER = Buffer.alloc(CLUSTER);
function bufferCompare(b: Uint8Array): boolean {
  return Buffer.compare(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    ZERO_CLUSTER,
  ) === 0;
}

function run(fn: (b: Uint8Array) => boolean, list: Uint8Array[]): void {
  let n = 0;
  for (let i = 0; i < list.length; i++) if (fn(list[i])) n++;
  sink.n += n;
}

const tag = perIter(TOTAL);

Deno.bench({
  name: `isZero, zero clusters ${tag}`,
  group: "zero clusters (full scan)",
  baseline: true,
  fn: () => run(isZero, zeros),
});
Deno.bench({
  name: `byte loop, zero clusters ${tag}`,
  group: "zero clusters (full scan)",
  fn: () => run(byteLoop, zeros),
});
Deno.bench({
  name: `Float64Array loop (reference), zero clusters ${tag}`,
  group: "zero clusters (full scan)",
  fn: () => run(float64Loop, zeros),
});
Deno.bench({
  name: `BigUint64Array loop (reference), zero clusters ${tag}`,
  group: "zero clusters (full scan)",
  fn: () => run(bigUint64Loop, zeros),
});
Deno.bench({
  name: `Buffer.compare vs zero cluster (native), zero clusters ${tag}`,
  group: "zero clusters (full scan)",
  fn: () => run(bufferCompare, zeros),
});
Deno.bench({
  name: `isZero, zero clusters in CPU cache ${tag}`,
  group: "zero clusters (full scan)",
  fn: () => run(isZero, hot),
});

Deno.bench({
  name: `isZero, last byte set ${tag}`,
  group: "other inputs",
  baseline: true,
  fn: () => run(isZero, lastByteSet),
});
Deno.bench({
  name: `isZero, unaligned views (byteOffset 1) ${tag}`,
  group: "other inputs",
  fn: () => run(isZero, zerosUnaligned),
});
Deno.bench({
  name: `isZero, data clusters (early exit) ${tag}`,
  group: "other inputs",
  fn: () => run(isZero, dataClusters),
});
Deno.bench({
  name: `byte loop, data clusters (early exit) ${tag}`,
  group: "other inputs",
  fn: () => run(byteLoop, dataClusters),
});
