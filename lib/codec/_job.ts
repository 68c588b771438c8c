// One pool job, run either in a worker or inline on the calling thread.
import { type ClusterCodec, type CodecOptions, createCodec } from "./codecs.ts";
import { compressedSpan } from "../format/compressed.ts";

/**
 * A cache of codecs for one thread (a worker, or the pool's inline path),
 * one per type, level, backend and window as given; an absent level or backend is
 * its own key and resolves to the default inside createCodec.
 */
export function codecCache(): (options: CodecOptions) => Promise<ClusterCodec> {
  const codecs = new Map<string, Promise<ClusterCodec>>();
  return (options) => {
    const { type, level = "default", backend = "auto", zlibWindow } = options;
    const key = `${type}/${level}/${backend}/${zlibWindow ?? "default"}`;
    let codec = codecs.get(key);
    if (!codec) {
      codec = createCodec(options);
      codecs.set(key, codec);
    }
    return codec;
  };
}

/** The work of one job. */
export interface JobInput {
  op: "compress" | "decompress";
  clusterSize: number;
  /**
   * compress: whole clusters back to back, laid out again in place as the
   * result; decompress: the payloads, back to back unless `starts` says
   * where each starts.
   */
  data: Uint8Array;
  /** decompress: the length of each payload. */
  lengths: number[];
  /** decompress: where each payload starts in `data`, when not back to back. */
  starts?: number[];
  /** decompress: where the clusters go (allocated when absent). */
  out?: Uint8Array;
}

/** What one job gives back. */
export interface JobOutput {
  /**
   * compress: in the input's memory, each cluster at `offsets[i]`: its
   * payload (`lengths[i]` bytes, zero-padded to the next 512-byte boundary)
   * or, where `lengths[i]` is 0, the cluster as it was.
   * decompress: the clusters back to back.
   */
  data: Uint8Array;
  /** compress: payload lengths, 0 for a cluster that does not compress. */
  lengths: number[];
  /** compress: where each cluster's bytes start in `data`. */
  offsets: number[];
}

/** Compression output of one cluster, before it is moved into place. */
let scratch = new Uint8Array(0);

/**
 * Runs one job. Compression lays its result out over its input: cluster
 * `i` starts at or before `i * clusterSize` (a payload never takes more
 * room than its cluster), so nothing is overwritten before it is read.
 * Payloads start at 512-byte boundaries, as the packer places them, so a
 * run of them is written straight from this memory.
 */
export function runJob(codec: ClusterCodec, job: JobInput): JobOutput {
  const cs = job.clusterSize;
  const { data } = job;
  if (job.op === "compress") {
    if (scratch.length < cs) scratch = new Uint8Array(cs);
    const count = data.length / cs;
    const lengths: number[] = [];
    const offsets: number[] = [];
    let at = 0;
    for (let i = 0; i < count; i++) {
      const n = codec.compressTo(data.subarray(i * cs, (i + 1) * cs), scratch);
      lengths.push(n);
      offsets.push(at);
      if (n === 0) {
        if (at !== i * cs) data.copyWithin(at, i * cs, (i + 1) * cs);
        at += cs;
      } else {
        const end = at + n;
        data.set(scratch.subarray(0, n), at);
        at += compressedSpan(n); // `at` stays on a sector boundary
        data.fill(0, end, at);
      }
    }
    return { data: data.subarray(0, at), lengths, offsets };
  }
  const count = job.lengths.length;
  const out = job.out?.subarray(0, count * cs) ?? new Uint8Array(count * cs);
  if (out.length < count * cs) {
    throw new RangeError(
      `Cannot decompress ${count} clusters into ${out.length} bytes`,
    );
  }
  let at = 0;
  job.lengths.forEach((length, i) => {
    at = job.starts?.[i] ?? at;
    try {
      codec.decompressTo(
        data.subarray(at, at + length),
        out.subarray(i * cs, (i + 1) * cs),
      );
    } catch (err) {
      (err as { index?: number }).index = i;
      throw err;
    }
    at += length;
  });
  return { data: out, lengths: [], offsets: [] };
}
