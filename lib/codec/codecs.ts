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

import { InternalError, Qcow2Error } from "../format/errors.ts";
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
 * level 4 on node:zlib: on 2000 clusters of the bench disk it stored 1.5%
 * more than level 6 at 1.3× its speed (108 against 84 MB/s), still about
 * 2% below QEMU's output; fflate keeps QEMU's level, 6. With a 4 KiB
 * window, the Chromium zlib inside node:zlib needs level 9 to reach the
 * size of QEMU's output (system zlib at level 6, same window).
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

/** What a backend implements; the allocating calls are derived from it. */
type CodecCore = Omit<ClusterCodec, "compress" | "decompress">;

/** A whole codec from its core: `compress` and `decompress` allocate. */
function complete(core: CodecCore): ClusterCodec {
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
function storeIn(packed: Uint8Array, cluster: Uint8Array, out: Uint8Array) {
  if (packed.length >= cluster.length) return 0;
  out.set(packed);
  return packed.length;
}

/**
 * The native context behind a `node:zlib` stream, driven synchronously
 * through the handle that Node's (and Deno's) own `*Sync` functions use:
 * one context for every cluster instead of one per call, and output
 * written straight into the caller's buffer. Measured on clusters of the
 * bench disk, against the `*Sync` calls: zstd decompression 1124 against
 * 271 MB/s, inflate 667 against 396, zstd level 3 compression 324 against
 * 295, deflate level 6 86 against 75. `undefined` where the runtime lacks
 * that handle; the `*Sync` calls serve then.
 */
class NativeContext {
  #handle: NativeHandle;
  #state: Uint32Array;
  #error: string | undefined;
  #probe = new Uint8Array(1);

  private constructor(handle: NativeHandle, state: Uint32Array) {
    this.#handle = handle;
    this.#state = state;
    // Called during writeSync; replaces the stream's handler, which would
    // destroy the stream.
    handle.onerror = (message) => {
      this.#error = String(message);
    };
  }

  static of(stream: unknown): NativeContext | undefined {
    const s = stream as {
      _handle?: Partial<NativeHandle>;
      _writeState?: unknown;
    };
    const h = s?._handle;
    if (
      typeof h?.writeSync !== "function" || typeof h.reset !== "function" ||
      !(s._writeState instanceof Uint32Array)
    ) {
      return undefined;
    }
    return new NativeContext(h as NativeHandle, s._writeState);
  }

  /**
   * Runs all of `input` through into `out`.
   *
   * @returns Bytes written and input bytes left unread.
   * @throws {InternalError} With the codec's message.
   */
  run(
    flush: number,
    input: Uint8Array,
    out: Uint8Array,
  ): { written: number; inputLeft: number } {
    this.#error = undefined;
    this.#handle.writeSync(
      flush,
      input,
      0,
      input.length,
      out,
      0,
      out.length,
    );
    const result = {
      written: out.length - this.#state[0],
      inputLeft: this.#state[1],
    };
    if (this.#error !== undefined) {
      this.#handle.reset();
      // Decompression turns it into a Qcow2Error (the data was bad); a
      // compressor that fails on bytes it was given is a bug.
      throw new InternalError(this.#error);
    }
    return result;
  }

  /** Whether the stream has output beyond what `run` had room for. */
  hasMore(flush: number): boolean {
    return this.run(flush, this.#probe.subarray(0, 0), this.#probe)
      .written > 0;
  }

  /** Ready for the next cluster. */
  reset(): void {
    this.#handle.reset();
  }
}

interface NativeHandle {
  writeSync(
    flush: number,
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    out: Uint8Array,
    outOffset: number,
    outLength: number,
  ): void;
  reset(): void;
  onerror: (message: string, errno: number) => void;
}

function nodeDeflate(
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

function inflateInto(ff: Fflate, data: Uint8Array, out: Uint8Array): void {
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

function fflateDeflate(
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

/**
 * Decodes zstd frames one after another until `out` (a cluster) is full
 * (QEMU's `qcow2_zstd_decompress` loop): a frame that would overflow the
 * cluster, or input that ends first, is an error; bytes after the frame
 * that completes the cluster are ignored. `decodeFrame` writes one frame
 * into the room it is given and returns how much it wrote, or `undefined`
 * when the frame decodes past that room.
 */
function zstdFrames(
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

/** zstd levels from which a pledged size makes compression faster. */
const ZSTD_PLEDGED_FROM = 10;

function nodeZstd(zlib: NodeZlib, level: number): ClusterCodec {
  const { ZSTD_c_compressionLevel, ZSTD_e_end } = zlib.constants;
  const params = { [ZSTD_c_compressionLevel]: level };
  // Up to level 9 one reused context is fastest (324 against 295 MB/s at
  // level 3), and writes frames without a content size, as QEMU does.
  // Above, the parameters zstd picks for a pledged 64 KiB input are faster
  // than a reused context's (4.8 against 3.2 MB/s at level 19).
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
      // instead of an unknown input (200x faster at high levels).
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

function zstdCodecBackend(zstd: ZstdWasm, level: number): ClusterCodec {
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
