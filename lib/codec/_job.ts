// One pool job, run either in a worker or inline on the calling thread.
import { type ClusterCodec, type CodecOptions, createCodec } from "./codecs.ts";
import { concatBytes } from "../format/_bytes.ts";

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
  /** compress: whole clusters back to back; decompress: payloads back to back. */
  data: Uint8Array;
  /** decompress: the length of each payload. */
  lengths: number[];
}

/**
 * compress: returns the compressed payloads back to back and their lengths
 * (0 for a cluster that does not compress).
 * decompress: returns the clusters back to back.
 */
export function runJob(
  codec: ClusterCodec,
  job: JobInput,
): { data: Uint8Array; lengths: number[] } {
  const cs = job.clusterSize;
  if (job.op === "compress") {
    const count = job.data.length / cs;
    const parts: Uint8Array[] = [];
    const lengths: number[] = [];
    for (let i = 0; i < count; i++) {
      const out = codec.compress(job.data.subarray(i * cs, (i + 1) * cs));
      lengths.push(out ? out.length : 0);
      if (out) parts.push(out);
    }
    return { data: concatBytes(parts), lengths };
  }
  const data = new Uint8Array(job.lengths.length * cs);
  let at = 0;
  job.lengths.forEach((length, i) => {
    try {
      data.set(
        codec.decompress(job.data.subarray(at, at + length), cs),
        i * cs,
      );
    } catch (err) {
      (err as { index?: number }).index = i;
      throw err;
    }
    at += length;
  });
  return { data, lengths: [] };
}
