// The fflate backend: pure JavaScript deflate and inflate (zlib only), for
// runtimes without node:zlib. The node backend falls back on its inflate
// where node:zlib, without a native context, refuses a cluster whose
// output runs past the cluster size.

import type { ClusterCodec } from "./codecs.ts";
import { complete, fail, storeIn } from "./_backend.ts";

/**
 * fflate, by a full specifier (not the import map), so that the module
 * works when imported by path from outside this repository.
 */
export type Fflate = typeof import("npm:fflate@0.8.2");
let fflate: Promise<Fflate> | undefined;
/** Loads fflate once. */
export function loadFflate(): Promise<Fflate> {
  // deno-lint-ignore no-import-prefix -- see above
  fflate ??= import("npm:fflate@0.8.2");
  return fflate;
}

/**
 * Inflates one cluster into `out`, as {@linkcode ClusterCodec.decompressTo}
 * does: output beyond the cluster is cut, too little is an error.
 */
export function inflateInto(
  ff: Fflate,
  data: Uint8Array,
  out: Uint8Array,
): void {
  let inflated: Uint8Array;
  try {
    inflated = ff.inflateSync(data, { out });
  } catch (err) {
    return fail(`zlib: ${(err as Error).message}`);
  }
  if (inflated.length !== out.length) {
    fail(`zlib data ends after ${inflated.length} of ${out.length} bytes`);
  }
  if (inflated.buffer !== out.buffer) out.set(inflated);
}

/** A zlib codec on fflate (32 KiB window). */
export function fflateDeflate(
  ff: Fflate,
  level: number,
): ClusterCodec {
  return complete({
    type: "zlib",
    backend: "fflate",
    level,
    zlibWindow: 32768,
    compressTo(cluster, out) {
      return storeIn(
        ff.deflateSync(cluster, { level: level as 1 }),
        cluster,
        out,
      );
    },
    decompressTo(data, out) {
      inflateInto(ff, data, out);
    },
  });
}
