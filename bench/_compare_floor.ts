// What two cores and the page cache allow, measured in the same run as the
// rows it bounds (issue 26 asks for times "close to" it): for each timed
// row of bench/compare.ts, a time no run of ours can beat on this machine.
//
// - Start-up: our CLI converting a 1 MiB raw file (Deno starting, the
//   modules loading), timed under the run's protocol (cold: the page cache
//   dropped before each), beside qemu-img's on the same file.
// - Codecs: one thread compressing and decompressing the disk's non-zero
//   64 KiB clusters with our default codecs (lib/codec), in this process;
//   the work divided over every core, as if the pool lost nothing to
//   messages, reads, writes or the main thread.
// - Uncompressed rows move data without codec work: for them, our
//   start-up plus qemu-img's own time minus its start-up (our data moved
//   exactly as fast as qemu-img's): a ratio below it needs the data to
//   move faster than qemu-img moves it.

import { isZero } from "../lib/bytes/zeros.ts";
import { type ClusterCodec, createCodec } from "../lib/codec/codecs.ts";
import { fileChunks } from "../lib/host/file_stream.ts";
import { log, median, MiB } from "./_compare_util.ts";
import { oursArgv, qemuArgv, RUN_DIR, timed } from "./_compare_run.ts";

/** The clusters sampled for the codec speeds (the first ones with data). */
const SAMPLE_BYTES = 256 * MiB;
const CLUSTER = 65536;

/** One codec's single-thread speeds, bytes of guest data per second. */
export interface CodecSpeed {
  compress: number;
  decompress: number;
}

/** The floor's parts, measured once per run. */
export interface Floors {
  /** Median seconds to convert a 1 MiB raw file: ours, qemu-img's. */
  startup: { ours: number; qemu: number };
  /** Bytes in the disk's non-zero clusters (what the codecs work on). */
  dataBytes: number;
  cores: number;
  zstd: CodecSpeed;
  zlib: CodecSpeed;
}

/** The disk's non-zero clusters: their total, and the first of them. */
async function nonZeroClusters(
  disk: string,
): Promise<{ total: number; sample: Uint8Array[] }> {
  const sample: Uint8Array[] = [];
  let total = 0;
  for await (const cluster of fileChunks(await Deno.open(disk), CLUSTER)) {
    if (isZero(cluster)) continue;
    total += cluster.length;
    if (sample.length * CLUSTER < SAMPLE_BYTES) sample.push(cluster);
  }
  return { total, sample };
}

/** One thread's speed through `codec`, compressing then decompressing. */
function speedOf(codec: ClusterCodec, clusters: Uint8Array[]): CodecSpeed {
  const out = new Uint8Array(CLUSTER);
  const packed: Uint8Array[] = [];
  let t0 = performance.now();
  for (const c of clusters) {
    const n = codec.compressTo(c, out);
    packed.push(n > 0 ? out.slice(0, n) : c);
  }
  const compressSecs = (performance.now() - t0) / 1000;
  t0 = performance.now();
  for (let i = 0; i < packed.length; i++) {
    if (packed[i] !== clusters[i]) codec.decompressTo(packed[i], out);
  }
  const decompressSecs = (performance.now() - t0) / 1000;
  const bytes = clusters.length * CLUSTER;
  return { compress: bytes / compressSecs, decompress: bytes / decompressSecs };
}

/**
 * Measures the floor's parts: start-up `reps` times for each tool (under
 * the run's protocol), the codecs once on the disk's data.
 */
export async function measureFloors(
  disk: string,
  reps: number,
  cores: number,
): Promise<Floors> {
  const tiny = `${RUN_DIR}floor.raw`;
  await Deno.writeFile(tiny, new Uint8Array(MiB).fill(7));
  const startup = { ours: [] as number[], qemu: [] as number[] };
  for (let i = 0; i < reps; i++) {
    const dst = `${RUN_DIR}floor.qcow2`;
    startup.ours.push(
      (await timed(oursArgv(["-f", "raw", "-O", "qcow2"], tiny)(dst))).secs,
    );
    startup.qemu.push(
      (await timed(qemuArgv(["-f", "raw", "-O", "qcow2"], tiny)(dst))).secs,
    );
  }
  const { total, sample } = await nonZeroClusters(disk);
  const zstd = speedOf(await createCodec({ type: "zstd" }), sample);
  const zlib = speedOf(await createCodec({ type: "zlib" }), sample);
  const floors: Floors = {
    startup: { ours: median(startup.ours), qemu: median(startup.qemu) },
    dataBytes: total,
    cores,
    zstd,
    zlib,
  };
  log(
    `  start-up (1 MiB convert): ours ${
      floors.startup.ours.toFixed(2)
    } s, qemu-img ${floors.startup.qemu.toFixed(2)} s; one thread: zstd ${
      mbps(zstd.compress)
    } / ${mbps(zstd.decompress)}, zlib ${mbps(zlib.compress)} / ${
      mbps(zlib.decompress)
    } (compress / decompress, MB/s of guest data)`,
  );
  return floors;
}

function mbps(bytesPerSec: number): string {
  return (bytesPerSec / 1e6).toFixed(0);
}

/**
 * The least time a row could take, what it is made of, and what it is
 * called: a `floor` for a row whose codec work no run avoids; for an
 * uncompressed row, the time ours would take moving data as fast as
 * qemu-img does (ours may move it faster); undefined for a row without
 * either.
 *
 * @param id The row (`sparse`, `zlib`, `zstd`, `expand-…`).
 * @param qemuSecs qemu-img's median time on the row.
 */
export function floorOf(
  floors: Floors,
  id: string,
  qemuSecs: number,
): { name: string; secs: number; why: string } | undefined {
  const start = floors.startup.ours;
  const codec = /(zstd|zlib)$/.exec(id)?.[1] as "zstd" | "zlib" | undefined;
  if (codec) {
    const direction = id.startsWith("expand-") ? "decompress" : "compress";
    const speed = floors[codec][direction];
    const work = floors.dataBytes / (floors.cores * speed);
    return {
      name: "floor",
      secs: start + work,
      why: `start-up ${start.toFixed(2)} s + ${
        (floors.dataBytes / 1e6).toFixed(0)
      } MB ${codec} ${direction}ion at ${floors.cores} × ${mbps(speed)} MB/s`,
    };
  }
  if (id === "sparse" || id === "expand-sparse") {
    const data = Math.max(0, qemuSecs - floors.startup.qemu);
    return {
      name: "at qemu-img's data speed",
      secs: start + data,
      why: `start-up ${start.toFixed(2)} s + qemu-img's data time ${
        data.toFixed(2)
      } s (its ${qemuSecs.toFixed(2)} s less its start-up ${
        floors.startup.qemu.toFixed(2)
      } s)`,
    };
  }
  return undefined;
}
