// Test data shared by the bench files: realistic 64 KiB clusters and raw
// disks of a chosen fullness, built deterministically.
//
// Cluster data comes from the machine's own /usr (text: headers, docs, man
// pages; binaries: executables and shared libraries; Python sources), laid
// out the way a filesystem would (each file starting on a 4 KiB block, its
// tail zero-padded), so the clusters look like those of a real ext4 image.
// Without a readable /usr (another OS, no permission) a generated
// text/binary mix stands in. With QCOW2PIPE_BENCH_IMAGE=path/to/disk.raw
// the clusters are sampled evenly from the non-zero clusters of that raw
// image instead (e.g. the ext4 disk bench/compare.ts builds with
// --keep-cache). `dataSource` says which one was used.

import { prng } from "../lib/_prng.ts";
/** Cluster size the benches use (the qcow2 default). */
export const CLUSTER = 65536;

/** 2^20 bytes. */
export const MiB = 1024 * 1024;

/** Where to take each kind of file from, in this order. */
const USR_SOURCES: { kind: string; dirs: string[] }[] = [
  {
    kind: "text",
    dirs: ["/usr/include", "/usr/share/doc", "/usr/share/man"],
  },
  {
    kind: "binary",
    dirs: [
      "/usr/bin",
      "/usr/lib/x86_64-linux-gnu",
      "/usr/lib/aarch64-linux-gnu",
    ],
  },
  {
    kind: "python",
    dirs: ["/usr/lib/python3", "/usr/lib/python3.11", "/usr/lib/python3.12"],
  },
];

const BLOCK = 4096;
const MAX_FILE = 32 * MiB;

/** Appends files under `dir` (sorted walk) to `out` until it is full. */
function fillFromDir(
  dir: string,
  out: Uint8Array,
  at: { n: number },
): void {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(dir)].sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0
    );
  } catch {
    return;
  }
  for (const e of entries) {
    if (at.n >= out.length) return;
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) {
      fillFromDir(path, out, at);
    } else if (e.isFile) {
      try {
        const info = Deno.statSync(path);
        if (info.size === 0 || info.size > MAX_FILE) continue;
        const bytes = Deno.readFileSync(path);
        const n = Math.min(bytes.length, out.length - at.n);
        out.set(bytes.subarray(0, n), at.n);
        at.n += Math.ceil(n / BLOCK) * BLOCK; // next file on a new block
      } catch {
        // unreadable: skip
      }
    }
  }
}

const WORDS = (
  "the of and to in is that for it as was with be by on not he this are or " +
  "his from at which but have an they you were her she there been one all " +
  "would their we him has when who will more no if out so said what up its " +
  "about into than them can only other new some could time these two may " +
  "then do first any my now such like our over man me even most made after " +
  "also did many before must through back years where much your way well " +
  "disk image cluster table offset refcount header sector block file data"
).split(" ");

/** One generated cluster of kind 0 text, 1 structured binary, 2 random. */
function generatedCluster(kind: number, rand: () => number): Uint8Array {
  const c = new Uint8Array(CLUSTER);
  if (kind === 0) {
    const enc = new TextEncoder();
    let at = 0;
    let line = 0;
    while (at < CLUSTER) {
      const w = WORDS[Math.floor(rand() * WORDS.length)];
      const sep = ++line % 12 === 0 ? "\n" : " ";
      const { written } = enc.encodeInto(w + sep, c.subarray(at));
      if (!written) break;
      at += written;
    }
  } else if (kind === 1) {
    // Little-endian small integers and pointers, like tables in binaries.
    const v = new DataView(c.buffer);
    for (let i = 0; i < CLUSTER; i += 8) {
      const r = rand();
      if (r < 0.4) v.setUint32(i, Math.floor(rand() * 256), true);
      else if (r < 0.7) {
        v.setUint32(i, 0x400000 + Math.floor(rand() * 65536) * 16, true);
      } else v.setUint32(i, Math.floor(rand() * 2 ** 32), true);
    }
  } else {
    for (let i = 0; i < CLUSTER; i++) c[i] = Math.floor(rand() * 256);
  }
  return c;
}

function isAllZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

/** Which data the benches use: "/usr files" or "generated mix". */
export let dataSource = "";

let cached: Uint8Array[] | undefined;

/** `count` non-zero clusters spread evenly over a raw image file. */
function sampleImage(path: string, count: number): Uint8Array[] {
  const file = Deno.openSync(path, { read: true });
  try {
    const size = file.statSync().size;
    const clusters = Math.floor(size / CLUSTER);
    const out: Uint8Array[] = [];
    // Scan with a stride, skipping zero clusters, until enough are found.
    for (
      let stride = Math.max(1, Math.floor(clusters / (count * 4)));
      stride >= 1;
      stride = Math.floor(stride / 2)
    ) {
      out.length = 0;
      for (let i = 0; i < clusters && out.length < count; i += stride) {
        const c = new Uint8Array(CLUSTER);
        file.seekSync(i * CLUSTER, Deno.SeekMode.Start);
        let got = 0;
        while (got < CLUSTER) {
          const n = file.readSync(c.subarray(got));
          if (n === null) break;
          got += n;
        }
        if (!isAllZero(c)) out.push(c);
      }
      if (out.length >= count || stride === 1) break;
    }
    return out;
  } finally {
    file.close();
  }
}

/**
 * `count` distinct non-zero 64 KiB clusters: a third text, a third
 * binaries, a third Python sources, interleaved (from /usr; generated
 * text / structured binary / random thirds when /usr is not readable).
 */
export function sampleClusters(count = 128): Uint8Array[] {
  if (cached && cached.length >= count) return cached.slice(0, count);
  const image = Deno.env.get("QCOW2PIPE_BENCH_IMAGE");
  if (image) {
    const found = sampleImage(image, count);
    if (found.length === 0) {
      throw new Error(`Cannot sample clusters: ${image} holds no data`);
    }
    dataSource = `${found.length} non-zero clusters sampled from ${image}`;
    cached = found;
    return found;
  }
  const per = Math.ceil(count / USR_SOURCES.length);
  const groups: Uint8Array[][] = [];
  for (const { dirs } of USR_SOURCES) {
    // Read twice what is needed: all-zero clusters are dropped.
    const buf = new Uint8Array(per * 2 * CLUSTER);
    const at = { n: 0 };
    for (const d of dirs) fillFromDir(d, buf, at);
    const clusters: Uint8Array[] = [];
    for (
      let i = 0;
      i + CLUSTER <= at.n && clusters.length < per;
      i += CLUSTER
    ) {
      const c = buf.subarray(i, i + CLUSTER);
      if (!isAllZero(c)) clusters.push(c.slice());
    }
    groups.push(clusters);
  }
  let out: Uint8Array[] = [];
  if (groups.every((g) => g.length === per)) {
    dataSource = "/usr files (1/3 text, 1/3 binaries, 1/3 Python)";
    for (let i = 0; i < per; i++) for (const g of groups) out.push(g[i]);
  } else {
    dataSource = "generated mix (1/3 text, 1/3 structured binary, 1/3 random)";
    const rand = prng(42);
    for (let i = 0; i < per * 3; i++) out.push(generatedCluster(i % 3, rand));
  }
  out = out.slice(0, count);
  cached = out;
  return out;
}

/** Fullness levels every disk-shaped bench is grouped by. */
export const FULLNESS = [0, 50, 100] as const;

/**
 * A raw disk of `clusters` clusters of which `percent`% hold data (sample
 * clusters, cycled) and the rest are zero, in runs of 1 to 32 clusters the
 * way files and free space alternate on a real filesystem.
 */
export function makeDisk(clusters: number, percent: number): Uint8Array {
  const disk = new Uint8Array(clusters * CLUSTER);
  if (percent <= 0) return disk;
  const sample = sampleClusters();
  const rand = prng(7 + percent);
  const want = percent / 100;
  let data = 0;
  let next = 0;
  let i = 0;
  while (i < clusters) {
    const run = Math.min(clusters - i, 1 + Math.floor(rand() * 32));
    const isData = percent >= 100 || data / Math.max(1, i) < want;
    if (isData) {
      for (let k = 0; k < run; k++) {
        disk.set(sample[next++ % sample.length], (i + k) * CLUSTER);
      }
      data += run;
    }
    i += run;
  }
  return disk;
}

/** A sink that keeps results alive so no benched work is optimized away. */
export const sink = { n: 0 };

/** Formats bytes per iteration for bench names: "[64 MiB/iter]". */
export function perIter(bytes: number): string {
  if (bytes >= 1024 * MiB && bytes % (1024 * MiB) === 0) {
    return `[${bytes / (1024 * MiB)} GiB/iter]`;
  }
  if (bytes % MiB === 0) return `[${bytes / MiB} MiB/iter]`;
  return `[${(bytes / MiB).toFixed(2)} MiB/iter]`;
}
