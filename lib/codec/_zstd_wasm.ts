// zstd on zstd-codec's WebAssembly build, loaded on its own. The package's
// main entry also pulls in an asm.js build (1.3 MB, for runtimes without
// WebAssembly, which every runtime we target has) and a Node stream
// wrapper; going to the WebAssembly binding keeps both out of the bundle
// (about 5 MB less). The binding is an Emscripten module: classes
// ZstdCodec, VectorU8 and ZstdDecompressStreamBinding over the C library.

import { InternalError } from "../format/errors.ts";

// deno-lint-ignore no-explicit-any
type Any = any;

/** zstd compression and frame decoding on the WebAssembly binding. */
export interface ZstdWasm {
  /** One zstd frame of `src` at `level`; undefined when zstd reports an error. */
  compress(src: Uint8Array, level: number): Uint8Array | undefined;
  /**
   * Decodes one frame, keeping at most `limit + 1` bytes of its output, so
   * that a frame decoding past `limit` shows as a longer result.
   *
   * @returns The output, or undefined when the frame is corrupt.
   */
  decompressFrame(frame: Uint8Array, limit: number): Uint8Array | undefined;
}

let loading: Promise<ZstdWasm> | undefined;

/** Loads the binding once per thread. */
export function loadZstdWasm(): Promise<ZstdWasm> {
  // A full specifier, not the import map, so that the module works when
  // imported by path from outside this repository.
  // deno-lint-ignore no-import-prefix
  loading ??= import("npm:zstd-codec@0.1.5/lib/zstd-codec-binding-wasm.js")
    .then(
      (m: Any) => instantiate(m.default ?? m),
    );
  return loading;
}

function instantiate(factory: (module: Any) => unknown): Promise<ZstdWasm> {
  return new Promise((resolve, reject) => {
    const module: Any = {
      print: () => {},
      printErr: () => {},
      onAbort: (what: unknown) =>
        reject(new InternalError(`Cannot load zstd-codec: ${String(what)}`)),
      // Resolve with a wrapper: the module itself has a `then` method.
      onRuntimeInitialized: () => resolve(wrap(module)),
    };
    // Emscripten takes any runtime with `process.versions.node` for Node,
    // and then reads CommonJS's `__dirname` and `require`s fs and path for
    // its Node file system. An ES module bundle running in Node or Deno has
    // none of them, and nothing here uses them (the WebAssembly binary is
    // inline, no file is touched): lend stand-ins while it starts.
    const scope = globalThis as Record<string, unknown>;
    const lent = (["__dirname", "require"] as const).filter((name) =>
      scope[name] === undefined
    );
    const standIns = { __dirname: "/", require: () => ({}) };
    for (const name of lent) scope[name] = standIns[name];
    try {
      factory(module);
    } catch (err) {
      reject(err);
    } finally {
      for (const name of lent) delete scope[name];
    }
  });
}

function wrap(binding: Any): ZstdWasm {
  const codec = new binding.ZstdCodec();
  // Vectors in WebAssembly memory, reused from call to call.
  const src = new binding.VectorU8();
  const dest = new binding.VectorU8();
  return {
    compress(input, level) {
      binding.cloneToVector(src, input);
      dest.resize(codec.compressBound(input.length), 0);
      const size = codec.compress(dest, src, level);
      if (size < 0) return undefined;
      dest.resize(size, 0);
      return binding.cloneAsTypedArray(dest) as Uint8Array;
    },
    decompressFrame(frame, limit) {
      const stream = new binding.ZstdDecompressStreamBinding();
      const out = new Uint8Array(limit + 1);
      let produced = 0;
      const take = (piece: Uint8Array) => {
        const n = Math.min(piece.length, out.length - produced);
        out.set(piece.subarray(0, n), produced);
        produced += n;
      };
      try {
        const ok = stream.begin() && stream.transform(frame, take) &&
          stream.end(take);
        return ok ? out.subarray(0, produced) : undefined;
      } finally {
        stream.delete();
      }
    },
  };
}
