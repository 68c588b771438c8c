// Hostile FAT32 volumes at the module's limits, built in memory as sparse
// sources (not a test file; fat_fuzz_test.ts runs it in a subprocess under
// a time limit): `deno run -A _fat_hostile.ts` maps each and prints one
// JSON line per volume: {name, status, reason?, freeBytes, ms, growth},
// `growth` being how much the peak resident memory rose while mapping
// (Linux VmHWM, reset before each volume).

import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import type { RandomAccessSource } from "../../lib/io/source.ts";

const EOC = 0x0fffffff;

/** A source of zeros with byte arrays laid over it. */
class SparseSource implements RandomAccessSource {
  readonly name = "<hostile FAT>";
  readonly size: number;
  readonly #extents: Array<{ at: number; bytes: Uint8Array }> = [];

  constructor(size: number) {
    this.size = size;
  }

  put(at: number, bytes: Uint8Array): void {
    this.#extents.push({ at, bytes });
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const n = Math.max(0, Math.min(length, this.size - offset));
    const out = new Uint8Array(n);
    for (const { at, bytes } of this.#extents) {
      const from = Math.max(offset, at);
      const to = Math.min(offset + n, at + bytes.length);
      if (from < to) out.set(bytes.subarray(from - at, to - at), from - offset);
    }
    return Promise.resolve(out);
  }
}

interface Shape {
  bytesPerSector: number;
  sectorsPerCluster: number;
  clusters: number;
  fats: number;
}

/** A FAT32 volume: its source, its FAT (shared by every copy) and its clusters. */
function fat32(shape: Shape) {
  const { bytesPerSector: bps, sectorsPerCluster: spc, clusters, fats } = shape;
  const reserved = 32;
  const fatSectors = Math.ceil((clusters + 2) * 4 / bps);
  const dataSector = reserved + fats * fatSectors;
  const total = dataSector + clusters * spc;
  const source = new SparseSource(total * bps);
  const boot = new Uint8Array(512);
  const b = new DataView(boot.buffer);
  boot.set([0xeb, 0x58, 0x90], 0);
  b.setUint16(0x0b, bps, true);
  boot[0x0d] = spc;
  b.setUint16(0x0e, reserved, true);
  boot[0x10] = fats;
  boot[0x15] = 0xf8;
  b.setUint32(0x20, total, true);
  b.setUint32(0x24, fatSectors, true);
  b.setUint32(0x2c, 2, true); // root cluster
  b.setUint16(0x30, 1, true); // FSInfo
  boot[0x42] = 0x29;
  boot.set([0x55, 0xaa], 510);
  source.put(0, boot);
  const fat = new Uint32Array(clusters + 2);
  fat[0] = 0x0ffffff8;
  fat[1] = EOC;
  fat[2] = EOC; // the root directory, one cluster
  const fatBytes = new Uint8Array(fat.buffer);
  for (let k = 0; k < fats; k++) {
    source.put((reserved + k * fatSectors) * bps, fatBytes);
  }
  const cluster = (c: number) => (dataSector + (c - 2) * spc) * bps;
  return { source, fat, cluster, clusterSize: bps * spc };
}

/** A 32-byte short entry. */
function entry(name: string, attr: number, cluster: number, size: number) {
  const e = new Uint8Array(32);
  e.set(new TextEncoder().encode(name.padEnd(11)), 0);
  e[11] = attr;
  const v = new DataView(e.buffer);
  v.setUint16(20, cluster >>> 16, true);
  v.setUint16(26, cluster & 0xffff, true);
  v.setUint32(28, size, true);
  return e;
}

const VOLUMES: Array<[string, () => RandomAccessSource]> = [
  // The largest FAT read (32 MiB, 8 Mi clusters, 4 GiB): one file chains
  // every cluster, so the walk follows 8 Mi links.
  ["largest FAT, one chain through every cluster", () => {
    const clusters = 8_388_600;
    const v = fat32({
      bytesPerSector: 512,
      sectorsPerCluster: 1,
      clusters,
      fats: 2,
    });
    for (let c = 3; c < clusters + 1; c++) v.fat[c] = c + 1;
    v.fat[clusters + 1] = EOC;
    v.source.put(
      v.cluster(2),
      entry("BIG     BIN", 0x20, 3, (clusters - 1) * 512),
    );
    return v.source;
  }],
  // A FAT beyond the budget (64 MiB): refused before it is read.
  ["FAT over the budget", () =>
    fat32({
      bytesPerSector: 512,
      sectorsPerCluster: 1,
      clusters: 16_777_200,
      fats: 2,
    }).source],
  // 255 copies of a 256 KiB FAT, every one read and compared.
  ["255 FATs", () =>
    fat32({
      bytesPerSector: 512,
      sectorsPerCluster: 1,
      clusters: 65_600,
      fats: 255,
    }).source],
  // 512 KiB clusters, directories nested 100 deep: the walk holds one
  // cluster per level, and stops at the depth its budget allows.
  ["directories 100 deep in 512 KiB clusters", () => {
    const v = fat32({
      bytesPerSector: 4096,
      sectorsPerCluster: 128,
      clusters: 65_600,
      fats: 2,
    });
    v.source.put(v.cluster(2), entry("D", 0x10, 3, 0));
    for (let i = 0; i < 100; i++) {
      const c = 3 + i;
      v.fat[c] = EOC;
      const dir = new Uint8Array(96);
      dir.set(entry(".", 0x10, c, 0), 0);
      dir.set(entry("..", 0x10, i === 0 ? 0 : c - 1, 0), 32);
      dir.set(entry("D", 0x10, c + 1, 0), 64);
      v.source.put(v.cluster(c), dir);
    }
    v.fat[103] = EOC;
    return v.source;
  }],
];

function peak(): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(
    Deno.readTextFileSync("/proc/self/status"),
  );
  return Number(m![1]) * 1024;
}

for (const [name, make] of VOLUMES) {
  const source = make();
  Deno.writeTextFileSync("/proc/self/clear_refs", "5");
  const before = peak();
  const t0 = performance.now();
  const map = await mapFreeSpace(source);
  let freeBytes = 0;
  for await (const r of map.ranges()) freeBytes += r.length;
  const ms = Math.round(performance.now() - t0);
  const [region] = map.report.regions;
  console.log(JSON.stringify({
    name,
    status: region.status,
    found: region.found,
    reason: region.reason,
    freeBytes,
    ms,
    growth: peak() - before,
  }));
}
