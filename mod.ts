/**
 * qcow2pipe: convert raw disk images to sparse or compressed qcow2 v3
 * images through a streaming Web Streams pipeline, and expand qcow2 images
 * back to raw.
 *
 * @example Parse a header
 * ```ts
 * import assert from "node:assert";
 * import { defaultHeader, parseHeader, serializeHeader } from "@qcow2pipe/qcow2pipe";
 * const header = parseHeader(serializeHeader(defaultHeader({ size: 1 << 20 })));
 * assert(header.size === 1 << 20);
 * ```
 *
 * @module
 */

export * from "./lib/format/mod.ts";
