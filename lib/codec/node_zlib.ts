// The one place `node:zlib` is loaded (once, lazily): the codec's backend
// and the reader's stream decoders (gzip, zstd downloads) both take it
// from here, so a bundle has a single dynamic import of it and runtimes
// without it (browsers) never fail at load time.

/** The `node:zlib` module's type. */
export type NodeZlib = typeof import("node:zlib");

let nodeZlib: Promise<NodeZlib | undefined> | undefined;

/** Loads `node:zlib` once; undefined where the runtime has none. */
export function loadNodeZlib(): Promise<NodeZlib | undefined> {
  nodeZlib ??= import("node:zlib").then(
    (m) => (m.default ?? m) as NodeZlib,
    () => undefined,
  );
  return nodeZlib;
}
