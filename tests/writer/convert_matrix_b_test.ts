// Raw -> qcow2 conversion matrix, part B: incompressible, mixed, long runs
// of one byte and sparse inputs with `{ zeros }` holes. Each image passes
// qemu-img check/compare/info and reads back with our reader (see
// _matrix.ts).

import { registerMatrix } from "./_matrix.ts";

const M2 = 2 * 1024 * 1024;

registerMatrix([
  // incompressible: clusters stay uncompressed
  {
    shape: "random-1MiB+333",
    chunk: 100003,
    clusterSize: 4096,
    refcountBits: 1,
    compression: "zlib",
    level: 9,
    backend: "node",
    workers: 2,
  },
  {
    shape: "random-1MiB+333",
    clusterSize: M2,
    refcountBits: 16,
    compression: "zstd",
    level: 19,
    backend: "node",
    workers: 1,
  },
  {
    shape: "random-1MiB+333",
    clusterSize: 512,
    refcountBits: 2,
    compression: "zstd",
    backend: "zstd-codec",
    workers: 0,
    via: "writer",
  },
  {
    shape: "random-1MiB+333",
    chunk: 7,
    clusterSize: 65536,
    refcountBits: 64,
    compression: "none",
  },
  // mixed text / random / zero runs
  {
    shape: "mixed-5MiB+77",
    chunk: 100003,
    clusterSize: 65536,
    refcountBits: 16,
    compression: "zlib",
    level: 1,
    backend: "node",
    workers: 2,
  },
  {
    shape: "mixed-5MiB+77",
    clusterSize: M2,
    refcountBits: 8,
    compression: "zstd",
    level: 1,
    backend: "zstd-codec",
    workers: 2,
  },
  {
    shape: "mixed-5MiB+77",
    chunk: 100003,
    clusterSize: 4096,
    refcountBits: 2,
    compression: "zstd",
    workers: 2,
  },
  {
    shape: "mixed-5MiB+77",
    clusterSize: 512,
    refcountBits: 1,
    compression: "zstd",
    backend: "node",
    workers: 1,
    via: "writer",
  },
  {
    shape: "mixed-5MiB+77",
    chunk: 100003,
    clusterSize: 512,
    refcountBits: 1,
    compression: "zlib",
    backend: "fflate",
    workers: 2,
  },
  {
    shape: "mixed-9MiB",
    clusterSize: M2,
    refcountBits: 64,
    compression: "zlib",
    level: 9,
    backend: "fflate",
    workers: 1,
  },
  {
    shape: "mixed-9MiB",
    chunk: 100003,
    clusterSize: M2,
    refcountBits: 2,
    compression: "none",
    via: "bytes",
  },
  // long runs of one byte
  {
    shape: "runs-2MiB+5",
    chunk: 100003,
    clusterSize: 65536,
    refcountBits: 1,
    compression: "zstd",
    workers: 0,
  },
  {
    shape: "runs-2MiB+5",
    clusterSize: M2,
    refcountBits: 2,
    compression: "none",
  },
  {
    shape: "runs-2MiB+5",
    clusterSize: M2,
    refcountBits: 1,
    compression: "zlib",
    level: 1,
    backend: "fflate",
    workers: 2,
  },
  {
    shape: "runs-300k",
    chunk: 7,
    clusterSize: 512,
    refcountBits: 16,
    compression: "zlib",
    backend: "fflate",
    workers: 2,
  },
  // `{ zeros }` holes of unaligned lengths between data pieces
  {
    shape: "holes-a",
    clusterSize: 4096,
    refcountBits: 1,
    compression: "zlib",
    workers: 1,
  },
  {
    shape: "holes-a",
    clusterSize: M2,
    refcountBits: 8,
    compression: "zstd",
    workers: 2,
    via: "writer",
  },
  {
    shape: "holes-b",
    clusterSize: 512,
    refcountBits: 64,
    compression: "none",
  },
  {
    shape: "holes-b",
    clusterSize: 65536,
    refcountBits: 16,
    compression: "zstd",
    level: 19,
    backend: "zstd-codec",
    workers: 0,
  },
]);
