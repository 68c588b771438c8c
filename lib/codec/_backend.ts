// What every cluster codec backend shares: the error a failed
// decompression throws, the allocating calls derived from the
// non-allocating ones, and QEMU's frame-by-frame zstd decoding loop.

import { Qcow2Error } from "../format/errors.ts";
import type { ClusterCodec } from "./codecs.ts";
import { zstdFrameAt } from "./zstd_frames.ts";

/** Throws the error every backend reports a failed decompression with. */
export function fail(reason: string): never {
  throw new Qcow2Error("DECOMPRESS", `Cannot decompress cluster: ${reason}`);
}

/** What a backend implements; the allocating calls are derived from it. */
export type CodecCore = Omit<ClusterCodec, "compress" | "decompress">;

/** A whole codec from its core: `compress` and `decompress` allocate. */
export function complete(core: CodecCore): ClusterCodec {
  return {
    compress(cluster) {
      const out = new Uint8Array(cluster.length);
      const n = core.compressTo(cluster, out);
      return n === 0 ? undefined : out.subarray(0, n);
    },
    decompress(data, clusterSize) {
      const out = new Uint8Array(clusterSize);
      core.decompressTo(data, out);
      return out;
    },
    ...core,
  };
}

/** Copies a compressed cluster into `out`: its length, or 0 if not smaller. */
export function storeIn(
  packed: Uint8Array,
  cluster: Uint8Array,
  out: Uint8Array,
) {
  if (packed.length >= cluster.length) return 0;
  out.set(packed);
  return packed.length;
}

/**
 * Decodes zstd frames one after another until `out` (a cluster) is full
 * (QEMU's `qcow2_zstd_decompress` loop): a frame that would overflow the
 * cluster, or input that ends first, is an error; bytes after the frame
 * that completes the cluster are ignored. `decodeFrame` writes one frame
 * into the room it is given and returns how much it wrote, or `undefined`
 * when the frame decodes past that room.
 */
export function zstdFrames(
  data: Uint8Array,
  out: Uint8Array,
  decodeFrame: (frame: Uint8Array, room: Uint8Array) => number | undefined,
): void {
  const clusterSize = out.length;
  let produced = 0;
  let at = 0;
  while (produced < clusterSize) {
    if (at >= data.length) {
      fail(`zstd data ends after ${produced} of ${clusterSize} bytes`);
    }
    const frame = zstdFrameAt(data, at);
    if (typeof frame === "string") {
      fail(
        `zstd ${frame} at byte ${at} after ${produced} of ${clusterSize} bytes`,
      );
    }
    if (!frame.skippable) {
      const written = decodeFrame(
        data.subarray(at, at + frame.length),
        out.subarray(produced),
      );
      if (written === undefined) {
        fail(
          `zstd frame at byte ${at} decodes past the ${clusterSize}-byte cluster`,
        );
      }
      produced += written;
    }
    at += frame.length;
  }
}
