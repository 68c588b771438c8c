// The zstd-codec backend: zstd (only) on zstd-codec's WebAssembly build,
// for runtimes without node:zlib's zstd.

import { InternalError } from "../format/errors.ts";
import type { ClusterCodec } from "./codecs.ts";
import { complete, fail, storeIn, zstdFrames } from "./_backend.ts";
import type { ZstdWasm } from "./_zstd_wasm.ts";

/** A zstd codec on the zstd-codec WebAssembly binding. */
export function zstdCodecBackend(zstd: ZstdWasm, level: number): ClusterCodec {
  return complete({
    type: "zstd",
    backend: "zstd-codec",
    level,
    compressTo(cluster, out) {
      const packed = zstd.compress(cluster, level);
      if (!packed) {
        throw new InternalError("Cannot compress cluster: zstd-codec failed");
      }
      return storeIn(packed, cluster, out);
    },
    decompressTo(data, out) {
      zstdFrames(data, out, (frame, room) => {
        let piece: Uint8Array | undefined;
        try {
          piece = zstd.decompressFrame(frame, room.length);
        } catch (err) {
          return fail(`zstd: ${(err as Error).message}`);
        }
        if (!piece) return fail("zstd frame is corrupt");
        if (piece.length > room.length) return undefined;
        room.set(piece);
        return piece.length;
      });
    },
  });
}
