/**
 * Cluster codecs: compress one cluster, or decompress one cluster exactly as
 * QEMU does, with zlib (raw deflate) or zstd, on a choice of backends.
 *
 * Backends:
 * - `node`: `node:zlib` (built into Deno; fastest, measured in bench/).
 * - `fflate`: pure JavaScript deflate/inflate, for runtimes without
 *   `node:zlib`.
 * - `zstd-codec`: zstd compiled to WebAssembly, for runtimes without
 *   `node:zlib`.
 *
 * @module
 */

import { Qcow2Error } from "../format/errors.ts";
import { zstdFrameAt } from "./zstd_frames.ts";
import { loadZstdWasm, type ZstdWasm } from "./_zstd_wasm.ts";

/**
 * Compression algorithms qcow2 defines.
 *
 * @example Round trip a cluster through each type
 * ```ts
 * import assert from "node:assert";
 * import { type CompressionType, createCodec } from "./codecs.ts";
 * const cluster = new Uint8Array(4096).fill(1);
 * for (const type of ["zlib", "zstd"] satisfies CompressionType[]) {
 *   const codec = await createCodec({ type });
 *   assert.deepStrictEqual(codec.decompress(codec.compress(cluster)!, 4096), cluster);
 * }
 * ```
 */
export type CompressionType = "zlib" | "zstd";

/**
 * Which implementation runs a codec. `auto` picks `node` when `node:zlib`
 * is available, else `fflate` (zlib) or `zstd-codec` (zstd).
 *
 * @example fflate inflates what node:zlib deflated
 * ```ts
 * import assert from "node:assert";
 * import { type CodecBackend, createCodec } from "./codecs.ts";
 * const [node, fflate] = await Promise.all(
 *   (["node", "fflate"] satisfies CodecBackend[]).map((backend) => createCodec({ type: "zlib", backend })),
 * );
 * const cluster = new Uint8Array(65536).fill(3);
 * assert.deepStrictEqual(fflate.decompress(node.compress(cluster)!, 65536), cluster);
 * ```
 */
export type CodecBackend = "auto" | "node" | "fflate" | "zstd-codec";

/**
 * How to build a codec.
 *
 * @example Compress harder than the default
 * ```ts
 * import assert from "node:assert";
 * import { type CodecOptions, createCodec } from "./codecs.ts";
 * const options: CodecOptions = { type: "zstd", level: 19 };
 * const codec = await createCodec(options);
 * assert.strictEqual(codec.level, 19);
 * assert.ok(codec.compress(new Uint8Array(65536))!.length < 100);
 * ```
 */
export interface CodecOptions {
  /** zlib or zstd. */
  type: CompressionType;
  /**
   * Compression level: zlib 1-9, zstd 1-22.
   * @default {defaultLevel(type, backend, zlibWindow)}: zlib 6 (9 with
   * node:zlib and a 4 KiB window); zstd 3
   */
  level?: number;
  /**
   * Implementation.
   * @default {"auto"}
   */
  backend?: CodecBackend;
  /**
   * zlib: the deflate window in bytes, 32768 or 4096. QEMU compresses with
   * a 4 KiB window but inflates each cluster in one call, which follows
   * back-references as far as the cluster reaches; so do libqcow and 7-Zip.
   * The 32 KiB window gives smaller clusters, faster. 4096 writes streams
   * that any reader with a 4 KiB window can inflate (needs node:zlib).
   * @default {32768}
   */
  zlibWindow?: ZlibWindow;
}

/**
 * A deflate window size in bytes, as {@linkcode CodecOptions.zlibWindow}
 * takes it.
 *
 * @example Write QEMU's own 4 KiB-window streams
 * ```ts
 * import assert from "node:assert";
 * import { createCodec, type ZlibWindow } from "./codecs.ts";
 * const zlibWindow: ZlibWindow = 4096;
 * const codec = await createCodec({ type: "zlib", zlibWindow });
 * assert.strictEqual(codec.zlibWindow, 4096);
 * ```
 */
export type ZlibWindow = 4096 | 32768;

/**
 * Compresses and decompresses single clusters.
 *
 * @example Round trip a cluster
 * ```ts
 * import assert from "node:assert";
 * import { createCodec } from "./codecs.ts";
 * const codec = await createCodec({ type: "zstd" });
 * const cluster = new Uint8Array(65536).fill(42);
 * const packed = codec.compress(cluster)!;
 * assert.deepStrictEqual(codec.decompress(packed, 65536), cluster);
 * ```
 */
export interface ClusterCodec {
  /** The algorithm. */
  readonly type: CompressionType;
  /** The backend in use (never `auto`). */
  readonly backend: Exclude<CodecBackend, "auto">;
  /** The level in use. */
  readonly level: number;
  /** zlib: the deflate window in bytes; zstd: undefined. */
  readonly zlibWindow?: ZlibWindow;
  /**
   * Compresses one cluster.
   *
   * @returns The compressed bytes, or undefined when they would not be
   * smaller than the cluster (QEMU then stores the cluster uncompressed).
   */
  compress(cluster: Uint8Array): Uint8Array | undefined;
  /**
   * Decompresses exactly `clusterSize` bytes, following QEMU: trailing
   * bytes after the data are ignored, zlib output beyond the cluster is cut,
   * zstd may hold several frames, and too little output is an error.
   *
   * @throws {Qcow2Error} `DECOMPRESS` with the reason.
   */
  decompress(data: Uint8Array, clusterSize: number): Uint8Array;
}

/**
 * The level used when {@linkcode CodecOptions.level} is not given.
 *
 * zstd uses QEMU's level, 3. zlib uses QEMU's level, 6, with the default
 * 32 KiB window (smaller than QEMU's output already). With a 4 KiB window,
 * the Chromium zlib inside node:zlib needs level 9 to reach the size of
 * QEMU's output (system zlib at level 6, same window).
 *
 * @param type Compression type.
 * @param backend The backend in use, after `"auto"` is resolved.
 * @param zlibWindow zlib: the deflate window in bytes.
 * @returns The default level.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { defaultLevel } from "./codecs.ts";
 * assert.strictEqual(defaultLevel("zlib", "node"), 6);
 * assert.strictEqual(defaultLevel("zlib", "node", 4096), 9);
 * assert.strictEqual(defaultLevel("zstd", "node"), 3);
 * ```
 */
export function defaultLevel(
  type: CompressionType,
  backend: Exclude<CodecBackend, "auto">,
  zlibWindow: ZlibWindow = 32768,
): number {
  if (type === "zstd") return 3;
  return backend === "node" && zlibWindow === 4096 ? 9 : 6;
}

const LEVEL_RANGE: Record<CompressionType, [number, number]> = {
  zlib: [1, 9],
  zstd: [1, 22],
};

type NodeZlib = typeof import("node:zlib");
/** zstd options; `pledgedSrcSize` is supported at run time but missing from the types. */
type ZstdOptions = Parameters<NodeZlib["zstdCompressSync"]>[1];
let nodeZlib: Promise<NodeZlib | undefined> | undefined;
function loadNodeZlib(): Promise<NodeZlib | undefined> {
  nodeZlib ??= import("node:zlib").then(
    (m) => (m.default ?? m) as NodeZlib,
    () => undefined,
  );
  return nodeZlib;
}

/**
 * fflate, by a full specifier (not the import map), so that the module
 * works when imported by path from outside this repository.
 */
type Fflate = typeof import("npm:fflate@0.8.2");
let fflate: Promise<Fflate> | undefined;
function loadFflate(): Promise<Fflate> {
  // deno-lint-ignore no-import-prefix -- see above
  fflate ??= import("npm:fflate@0.8.2");
  return fflate;
}

function fail(reason: string): never {
  throw new Qcow2Error("DECOMPRESS", `Cannot decompress cluster: ${reason}`);
}

/**
 * Builds a codec, loading its backend on first use.
 *
 * @param options Type, level and backend.
 * @returns The codec.
 * @throws {RangeError} For a level out of range or a backend that does not
 * implement the type (`fflate` is zlib only, `zstd-codec` zstd only) or is
 * not available in this runtime.
 *
 * @example zlib through fflate
 * ```ts
 * import assert from "node:assert";
 * import { createCodec } from "./codecs.ts";
 * const codec = await createCodec({ type: "zlib", backend: "fflate" });
 * assert.strictEqual(codec.backend, "fflate");
 * ```
 */
export async function createCodec(
  options: CodecOptions,
): Promise<ClusterCodec> {
  const { type } = options;
  if (type !== "zlib" && type !== "zstd") {
    throw new RangeError(
      `Cannot create codec: compression type "${type}" is not zlib or zstd`,
    );
  }
  let backend = options.backend ?? "auto";
  if (backend === "auto") {
    const zlib = await loadNodeZlib();
    const nodeOk = zlib !== undefined &&
      (type === "zlib" || typeof zlib.zstdCompressSync === "function");
    backend = nodeOk ? "node" : type === "zlib" ? "fflate" : "zstd-codec";
  }
  const zlibWindow = options.zlibWindow ?? 32768;
  if (zlibWindow !== 4096 && zlibWindow !== 32768) {
    throw new RangeError(
      `Cannot create codec: zlib window ${zlibWindow} is not 4096 or 32768`,
    );
  }
  if (type === "zlib" && zlibWindow === 4096 && backend !== "node") {
    throw new RangeError(
      `Cannot create codec: backend ${backend} writes 32 KiB deflate windows only; a 4096-byte window needs node:zlib`,
    );
  }
  const level = options.level ?? defaultLevel(type, backend, zlibWindow);
  const [min, max] = LEVEL_RANGE[type];
  if (!Number.isInteger(level) || level < min || level > max) {
    throw new RangeError(
      `Cannot create codec: ${type} level ${level} is out of range [${min}, ${max}]`,
    );
  }
  if (
    (backend === "fflate" && type !== "zlib") ||
    (backend === "zstd-codec" && type !== "zstd")
  ) {
    throw new RangeError(
      `Cannot create codec: backend ${backend} does not implement ${type}`,
    );
  }
  switch (backend) {
    case "node": {
      const zlib = await loadNodeZlib();
      if (zlib === undefined) {
        throw new RangeError("Cannot create codec: node:zlib is not available");
      }
      return type === "zlib"
        ? nodeDeflate(
          zlib,
          level,
          zlibWindow,
          await loadFflate().catch(() => undefined),
        )
        : nodeZstd(zlib, level);
    }
    case "fflate":
      return fflateDeflate(await loadFflate(), level);
    case "zstd-codec":
      return zstdCodecBackend(await loadZstdWasm(), level);
    default:
      throw new RangeError(`Cannot create codec: unknown backend "${backend}"`);
  }
}

function asBytes(buf: Uint8Array): Uint8Array {
  // node:zlib returns Buffers; hand out plain Uint8Array views.
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function fits(out: Uint8Array, clusterSize: number): Uint8Array | undefined {
  return out.length < clusterSize ? asBytes(out) : undefined;
}

function nodeDeflate(
  zlib: NodeZlib,
  level: number,
  zlibWindow: ZlibWindow,
  fallback: Fflate | undefined,
): ClusterCodec {
  const Z_SYNC_FLUSH = zlib.constants.Z_SYNC_FLUSH;
  // QEMU: deflateInit2(level, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY); the
  // default here is the same with a 32 KiB window (-15).
  const options = { level, windowBits: Math.log2(zlibWindow), memLevel: 9 };
  return {
    type: "zlib",
    backend: "node",
    level,
    zlibWindow,
    compress(cluster) {
      return fits(zlib.deflateRawSync(cluster, options), cluster.length);
    },
    decompress(data, clusterSize) {
      let out: Uint8Array;
      try {
        out = zlib.inflateRawSync(data, {
          finishFlush: Z_SYNC_FLUSH,
          maxOutputLength: clusterSize,
        });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === "ERR_BUFFER_TOO_LARGE" && fallback) {
          // More output than a cluster: QEMU keeps the first cluster_size bytes.
          return inflateInto(fallback, data, clusterSize);
        }
        return fail(`zlib: ${(err as Error).message}`);
      }
      if (out.length !== clusterSize) {
        fail(`zlib data ends after ${out.length} of ${clusterSize} bytes`);
      }
      return asBytes(out);
    },
  };
}

function inflateInto(
  ff: Fflate,
  data: Uint8Array,
  clusterSize: number,
): Uint8Array {
  let out: Uint8Array;
  try {
    out = ff.inflateSync(data, { out: new Uint8Array(clusterSize) });
  } catch (err) {
    return fail(`zlib: ${(err as Error).message}`);
  }
  if (out.length !== clusterSize) {
    fail(`zlib data ends after ${out.length} of ${clusterSize} bytes`);
  }
  return out;
}

function fflateDeflate(
  ff: Fflate,
  level: number,
): ClusterCodec {
  return {
    type: "zlib",
    backend: "fflate",
    level,
    zlibWindow: 32768,
    compress(cluster) {
      return fits(
        ff.deflateSync(cluster, { level: level as 1 }),
        cluster.length,
      );
    },
    decompress(data, clusterSize) {
      return inflateInto(ff, data, clusterSize);
    },
  };
}

/**
 * Decodes zstd frames one after another until exactly `clusterSize` bytes
 * are produced (QEMU's `qcow2_zstd_decompress` loop): a frame that would
 * overflow the cluster, or input that ends first, is an error; bytes after
 * the frame that completes the cluster are ignored.
 */
function zstdFrames(
  data: Uint8Array,
  clusterSize: number,
  decodeFrame: (frame: Uint8Array, room: number) => Uint8Array,
): Uint8Array {
  let out: Uint8Array | undefined;
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
      const piece = decodeFrame(
        data.subarray(at, at + frame.length),
        clusterSize - produced,
      );
      if (piece.length > clusterSize - produced) {
        fail(
          `zstd frame at byte ${at} decodes past the ${clusterSize}-byte cluster`,
        );
      }
      if (produced === 0 && piece.length === clusterSize) return piece; // one frame: no copy
      out ??= new Uint8Array(clusterSize);
      out.set(piece, produced);
      produced += piece.length;
    }
    at += frame.length;
  }
  return out!;
}

function nodeZstd(zlib: NodeZlib, level: number): ClusterCodec {
  const params = { [zlib.constants.ZSTD_c_compressionLevel]: level };
  return {
    type: "zstd",
    backend: "node",
    level,
    compress(cluster) {
      // The pledged size lets zstd size its context for one cluster
      // instead of an unknown input (200x faster at high levels).
      return fits(
        zlib.zstdCompressSync(
          cluster,
          { params, pledgedSrcSize: cluster.length } as ZstdOptions,
        ),
        cluster.length,
      );
    },
    decompress(data, clusterSize) {
      return zstdFrames(data, clusterSize, (frame, room) => {
        try {
          return asBytes(
            zlib.zstdDecompressSync(frame, { maxOutputLength: room }),
          );
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code === "ERR_BUFFER_TOO_LARGE") {
            return fail(
              `zstd frame decodes past the ${clusterSize}-byte cluster`,
            );
          }
          return fail(`zstd: ${(err as Error).message}`);
        }
      });
    },
  };
}

function zstdCodecBackend(zstd: ZstdWasm, level: number): ClusterCodec {
  return {
    type: "zstd",
    backend: "zstd-codec",
    level,
    compress(cluster) {
      const out = zstd.compress(cluster, level);
      if (!out) throw new Error("Cannot compress cluster: zstd-codec failed");
      return fits(out, cluster.length);
    },
    decompress(data, clusterSize) {
      return zstdFrames(data, clusterSize, (frame, room) => {
        let out: Uint8Array | undefined;
        try {
          out = zstd.decompressFrame(frame, room);
        } catch (err) {
          return fail(`zstd: ${(err as Error).message}`);
        }
        if (!out) return fail("zstd frame is corrupt");
        return out;
      });
    },
  };
}
