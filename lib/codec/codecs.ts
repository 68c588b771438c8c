/**
 * Cluster codecs: compress one cluster, or decompress one cluster exactly as
 * QEMU does, with zlib (raw deflate) or zstd, on a choice of backends.
 *
 * Backends:
 * - `node`: `node:zlib` (built into Deno and Node; the fastest, as
 *   bench/codec_bench.ts shows).
 * - `fflate`: pure JavaScript deflate/inflate, for runtimes without
 *   `node:zlib`.
 * - `zstd-codec`: zstd compiled to WebAssembly, for runtimes without
 *   `node:zlib`.
 *
 * @module
 */

import { loadNodeZlib } from "./node_zlib.ts";

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
   * @default {defaultLevel(type, backend, zlibWindow)}: zlib 4 with
   * node:zlib (9 with a 4 KiB window), 6 with fflate; zstd 3
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
  /**
   * Compresses one cluster into `out`, as {@linkcode ClusterCodec.compress}
   * does, without allocating (with `node:zlib`, one context serves every
   * cluster).
   *
   * @param cluster The cluster.
   * @param out At least as long as the cluster.
   * @returns The compressed length, or 0 when it would not be smaller than
   * the cluster.
   */
  compressTo(cluster: Uint8Array, out: Uint8Array): number;
  /**
   * Decompresses one cluster into `out`, whose length is the cluster size,
   * as {@linkcode ClusterCodec.decompress} does, without allocating.
   *
   * @throws {Qcow2Error} `DECOMPRESS` with the reason.
   */
  decompressTo(data: Uint8Array, out: Uint8Array): void;
}

/**
 * The level used when {@linkcode CodecOptions.level} is not given.
 *
 * zstd uses QEMU's level, 3. zlib with the default 32 KiB window uses
 * level 4 on node:zlib: a little larger than level 6 and faster, and still
 * smaller than QEMU's output (bench/RESULTS.md, History, has the
 * measurement); fflate keeps QEMU's level, 6. With a 4 KiB window, the
 * Chromium zlib inside node:zlib needs level 9 to reach the size of
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
 * assert.strictEqual(defaultLevel("zlib", "node"), 4);
 * assert.strictEqual(defaultLevel("zlib", "fflate"), 6);
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
  if (backend !== "node") return 6;
  return zlibWindow === 4096 ? 9 : 4;
}

const LEVEL_RANGE: Record<CompressionType, [number, number]> = {
  zlib: [1, 9],
  zstd: [1, 22],
};

/**
 * Builds a codec, loading its backend on first use.
 *
 * @param options Type, level and backend.
 * @returns The codec.
 * @throws {RangeError} For a level out of range or a backend that does not
 * implement the type (`fflate` is zlib only, `zstd-codec` zstd only) or is
 * not available in this runtime.
 * @throws {InternalError} When zstd-codec's WebAssembly fails to load.
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
  // Each backend's code loads with its first codec.
  switch (backend) {
    case "node": {
      const zlib = await loadNodeZlib();
      if (zlib === undefined) {
        throw new RangeError("Cannot create codec: node:zlib is not available");
      }
      const node = await import("./_node_backend.ts");
      if (type === "zstd") return node.nodeZstd(zlib, level);
      const { loadFflate } = await import("./_fflate_backend.ts");
      return node.nodeDeflate(
        zlib,
        level,
        zlibWindow,
        await loadFflate().catch(() => undefined),
      );
    }
    case "fflate": {
      const { fflateDeflate, loadFflate } = await import(
        "./_fflate_backend.ts"
      );
      return fflateDeflate(await loadFflate(), level);
    }
    case "zstd-codec": {
      const [{ zstdCodecBackend }, { loadZstdWasm }] = await Promise.all([
        import("./_zstd_codec_backend.ts"),
        import("./_zstd_wasm.ts"),
      ]);
      return zstdCodecBackend(await loadZstdWasm(), level);
    }
    default:
      throw new RangeError(`Cannot create codec: unknown backend "${backend}"`);
  }
}
