/**
 * The qcow2 format core: pure functions over bytes for the header and its
 * extensions, L1/L2 entries (standard and extended), compressed cluster
 * descriptors, refcount blocks of every width, snapshot and bitmap tables,
 * and validation against QEMU's limits. No I/O, no streams.
 *
 * @example Parse the header of a new image
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, parseHeader, serializeHeader } from "@qcow2pipe/qcow2pipe/format";
 * const header = parseHeader(serializeHeader(defaultHeader({ size: 1 << 30 })));
 * assert(header.version === 3 && header.size === 1 << 30);
 * ```
 *
 * @module
 */

export * from "./constants.ts";
export * from "./errors.ts";
export * from "./extensions.ts";
export * from "./header.ts";
export * from "./l1.ts";
export * from "./l2.ts";
export * from "./compressed.ts";
export * from "./refcount.ts";
export * from "./snapshot.ts";
export * from "./bitmaps.ts";
export * from "./geometry.ts";
export * from "./validate.ts";
export * from "./probe.ts";
