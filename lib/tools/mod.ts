/**
 * What `qemu-img info`, `check`, `map` and `compare` report, as functions
 * that return plain objects, with the text and JSON that qemu-img prints
 * for them. Each takes a path, bytes or a `RandomAccessSource`,
 * opens it through the reader (so backing chains, external data files and
 * the rules for untrusted images are the reader's), and closes only what it
 * opened. `check` also reads images the reader refuses (corrupt, encrypted,
 * tables past the end of the file) to say what is wrong with them.
 *
 * - {@linkcode imageInfo}, {@linkcode formatImageInfo},
 *   {@linkcode formatImageInfoJson}: `qemu-img info`
 * - {@linkcode checkImage}, {@linkcode formatCheckResult},
 *   {@linkcode formatCheckJson}: `qemu-img check`
 * - {@linkcode mapImage}, {@linkcode mapImageEntries},
 *   {@linkcode formatMapJson}: `qemu-img map`
 * - {@linkcode compareImages}, {@linkcode formatCompareResult}:
 *   `qemu-img compare`
 * - {@linkcode measureImage}, {@linkcode formatMeasure},
 *   {@linkcode formatMeasureJson}: `qemu-img measure`
 * - {@linkcode formatSnapshotList}: `qemu-img snapshot -l`
 * - {@linkcode createImage}: `qemu-img create`
 * - {@linkcode repairImage}, {@linkcode formatRepairHeader}:
 *   `qemu-img check -r leaks|all`
 *
 * @example Describe and check an image made in memory
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { checkImage, formatImageInfo, imageInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const qcow2 = await convertToBytes(new Uint8Array(1 << 20).fill(3), { workers: 1 });
 * const info = await imageInfo(qcow2);
 * assert.strictEqual(info.virtualSize, 1 << 20);
 * assert.match(formatImageInfo(info), /^virtual size: 1 MiB \(1048576 bytes\)$/m);
 * const check = await checkImage(qcow2);
 * assert.strictEqual(check.corruptions + check.leaks, 0);
 * ```
 *
 * @module
 */

export type { ImageInput, OpenSource } from "./input.ts";
export {
  type BitmapInfo,
  type ImageInfo,
  imageInfo,
  type ImageInfoOptions,
  type InfoValue,
  type LuksInfo,
  type LuksSlotInfo,
  type Qcow2Info,
  type SnapshotInfo,
} from "./info.ts";
export {
  formatImageInfo,
  formatImageInfoJson,
  formatSnapshotList,
} from "./info_text.ts";
export {
  checkImage,
  type CheckImageOptions,
  type CheckResult,
} from "./check.ts";
export {
  formatCheckJson,
  formatCheckResult,
  formatRepairHeader,
} from "./check_text.ts";
export {
  type MapEntry,
  mapImage,
  mapImageEntries,
  type MapImageOptions,
} from "./map.ts";
export { formatMapJson } from "./map_text.ts";
export {
  compareImages,
  type CompareImagesOptions,
  type CompareResult,
} from "./compare.ts";
export { formatCompareResult } from "./compare_text.ts";
export {
  BytesImageFile,
  type ImageFile,
  repairImage,
  type RepairImageOptions,
  type RepairResult,
} from "./repair.ts";
export {
  formatMeasure,
  formatMeasureJson,
  measureImage,
  type MeasureOptions,
  type MeasureResult,
} from "./measure.ts";
export {
  type CreatedImage,
  createImage,
  type CreateImageOptions,
} from "./create.ts";
