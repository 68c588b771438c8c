// The node:zlib backend: deflate and zstd through the runtime's native
// zlib and zstd, one reused context per codec where the runtime allows.

import type { ClusterCodec, ZlibWindow } from "./codecs.ts";
import { complete, fail, storeIn, zstdFrames } from "./_backend.ts";
import { type Fflate, inflateInto } from "./_fflate_backend.ts";
import { NativeContext } from "./_native_context.ts";
import type { NodeZlib } from "./node_zlib.ts";

/** zstd options; `pledgedSrcSize` is supported at run time but missing from the types. */
type ZstdOptions = Parameters<NodeZlib["zstdCompressSync"]>[1];

/**
 * A zlib codec on node:zlib; `fallback` inflates what node:zlib's `*Sync`
 * call refuses when the runtime has no native context.
 */
export function nodeDeflate(
  zlib: NodeZlib,
  level: number,
  zlibWindow: ZlibWindow,
  fallback: Fflate | undefined,
): ClusterCodec {
  const { Z_SYNC_FLUSH, Z_FINISH } = zlib.constants;
  // QEMU: deflateInit2(level, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY); the
  // default here is the same with a 32 KiB window (-15).
  const options = { level, windowBits: Math.log2(zlibWindow), memLevel: 9 };
  const deflate = NativeContext.of(zlib.createDeflateRaw(options));
  const inflate = NativeContext.of(zlib.createInflateRaw());
  const ended = (produced: number, clusterSize: number) =>
    fail(`zlib data ends after ${produced} of ${clusterSize} bytes`);
  return complete({
    type: "zlib",
    backend: "node",
    level,
    zlibWindow,
    compressTo(cluster, out) {
      if (!deflate) {
        return storeIn(zlib.deflateRawSync(cluster, options), cluster, out);
      }
      // Room for one byte less than the cluster: output that fills it is
      // not smaller, and the cluster is stored as it is.
      const room = out.subarray(0, cluster.length - 1);
      const { written } = deflate.run(Z_FINISH, cluster, room);
      deflate.reset();
      return written < room.length ? written : 0;
    },
    decompressTo(data, out) {
      const cs = out.length;
      if (inflate) {
        let written: number;
        try {
          ({ written } = inflate.run(Z_SYNC_FLUSH, data, out));
        } catch (err) {
          return fail(`zlib: ${(err as Error).message}`);
        } finally {
          inflate.reset();
        }
        // More output than a cluster: QEMU keeps the first cluster_size bytes.
        if (written !== cs) ended(written, cs);
        return;
      }
      let inflated: Uint8Array;
      try {
        inflated = zlib.inflateRawSync(data, {
          finishFlush: Z_SYNC_FLUSH,
          maxOutputLength: cs,
        });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === "ERR_BUFFER_TOO_LARGE" && fallback) {
          return inflateInto(fallback, data, out);
        }
        return fail(`zlib: ${(err as Error).message}`);
      }
      if (inflated.length !== cs) ended(inflated.length, cs);
      out.set(inflated);
    },
  });
}

/** zstd levels from which a pledged size makes compression faster. */
const ZSTD_PLEDGED_FROM = 10;

/** A zstd codec on node:zlib. */
export function nodeZstd(zlib: NodeZlib, level: number): ClusterCodec {
  const { ZSTD_c_compressionLevel, ZSTD_e_end } = zlib.constants;
  const params = { [ZSTD_c_compressionLevel]: level };
  // Up to level 9 one reused context is fastest, and writes frames without
  // a content size, as QEMU does. Above, the parameters zstd picks for a
  // pledged 64 KiB input are faster than a reused context's
  // (bench/RESULTS.md, History).
  const compressor = level < ZSTD_PLEDGED_FROM
    ? NativeContext.of(zlib.createZstdCompress({ params }))
    : undefined;
  const decompressor = NativeContext.of(zlib.createZstdDecompress());
  return complete({
    type: "zstd",
    backend: "node",
    level,
    compressTo(cluster, out) {
      if (compressor) {
        const room = out.subarray(0, cluster.length - 1);
        const { written } = compressor.run(ZSTD_e_end, cluster, room);
        compressor.reset();
        return written < room.length ? written : 0;
      }
      // The pledged size lets zstd size its context for one cluster
      // instead of an unknown input (much faster at high levels).
      return storeIn(
        zlib.zstdCompressSync(
          cluster,
          { params, pledgedSrcSize: cluster.length } as ZstdOptions,
        ),
        cluster,
        out,
      );
    },
    decompressTo(data, out) {
      zstdFrames(data, out, (frame, room) => {
        if (decompressor) {
          try {
            const { written } = decompressor.run(ZSTD_e_end, frame, room);
            const past = written === room.length && (
              decompressor.hasMore(ZSTD_e_end)
            );
            return past ? undefined : written;
          } catch (err) {
            return fail(`zstd: ${(err as Error).message}`);
          } finally {
            decompressor.reset();
          }
        }
        let piece: Uint8Array;
        try {
          piece = zlib.zstdDecompressSync(frame, {
            maxOutputLength: room.length,
          });
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code === "ERR_BUFFER_TOO_LARGE") return undefined;
          return fail(`zstd: ${(err as Error).message}`);
        }
        room.set(piece);
        return piece.length;
      });
    },
  });
}
