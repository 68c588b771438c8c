/**
 * What the inspection tools (`imageInfo`, `checkImage`, `mapImage`,
 * `compareImages`) accept as an image, and how they open related files.
 *
 * @module
 */

import type { RandomAccessSource } from "../io/source.ts";

/**
 * An image to inspect: a file path, a source (left open for the caller to
 * close), or the image's bytes.
 *
 * @example Describe an image held in memory
 * ```ts
 * import assert from "node:assert";
 * import { imageInfo } from "./info.ts";
 * import type { ImageInput } from "./input.ts";
 * const input: ImageInput = new Uint8Array(1000);
 * assert.strictEqual((await imageInfo(input)).virtualSize, 1024);
 * ```
 */
export type ImageInput = string | RandomAccessSource | Uint8Array;

/**
 * Opens a related file (a backing file, an external data file) by the
 * name the image gives, resolved against the image's own name.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import type { OpenSource } from "./input.ts";
 * const open: OpenSource = (name) => Promise.resolve(new BytesSource(new Uint8Array(512), name));
 * assert.strictEqual((await open("base.raw")).size, 512);
 * ```
 */
export type OpenSource = (name: string) => Promise<RandomAccessSource>;
