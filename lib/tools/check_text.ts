/**
 * The two forms `qemu-img check` prints its summary in: the human text and
 * `--output=json` (QEMU's keys and key order).
 *
 * @module
 */

import type { CheckResult } from "./check.ts";
import { qemuJson, type QValue } from "./_qemu_text.ts";

/** C's `%0.2f`: like toFixed(2), but exact ties round to even. */
function fixed2(x: number): string {
  const n = x * 200;
  if (Number.isInteger(n) && n % 2 === 1 && n % 25 === 0 && n / 200 === x) {
    const down = Math.floor(x * 100);
    return ((down % 2 === 0 ? down : down + 1) / 100).toFixed(2);
  }
  return x.toFixed(2);
}

/**
 * The summary `qemu-img check` prints on standard output (the per-problem
 * messages go to standard error; they are `result.messages`).
 *
 * @param result What {@linkcode checkImage} returned.
 * @returns QEMU's text, ending with a newline; empty when the check failed.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatCheckResult } from "./check_text.ts";
 * const text = formatCheckResult({
 *   filename: "a.qcow2", format: "qcow2", corruptions: 0, leaks: 0, checkErrors: 0,
 *   imageEndOffset: 262144, totalClusters: 16, allocatedClusters: 0,
 *   fragmentedClusters: 0, compressedClusters: 0, corruptionsFixed: 0,
 *   leaksFixed: 0, messages: [], exitCode: 0,
 * });
 * assert.strictEqual(text, "No errors were found on the image.\nImage end offset: 262144\n");
 * ```
 */
export function formatCheckResult(result: CheckResult): string {
  if (result.failure !== undefined) return "";
  let out = "";
  const r = result;
  if (!(r.corruptions || r.leaks || r.checkErrors)) {
    out += "No errors were found on the image.\n";
  } else {
    if (r.corruptions) {
      out += `\n${r.corruptions} errors were found on the image.\n` +
        "Data may be corrupted, or further writes to the image may corrupt it.\n";
    }
    if (r.leaks) {
      out += `\n${r.leaks} leaked clusters were found on the image.\n` +
        "This means waste of disk space, but no harm to data.\n";
    }
    if (r.checkErrors) {
      out +=
        `\n${r.checkErrors} internal errors have occurred during the check.\n`;
    }
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    out += `${r.allocatedClusters}/${r.totalClusters} = ${
      fixed2(r.allocatedClusters * 100 / r.totalClusters)
    }% allocated, ${
      fixed2(r.fragmentedClusters * 100 / r.allocatedClusters)
    }% fragmented, ${
      fixed2(r.compressedClusters * 100 / r.allocatedClusters)
    }% compressed clusters\n`;
  }
  if (r.imageEndOffset) out += `Image end offset: ${r.imageEndOffset}\n`;
  return out;
}

/**
 * The lines `qemu-img check -r` prints on standard output once it has
 * repaired something, before it checks the image again (text output
 * only; the JSON form has the `leaks-fixed` and `corruptions-fixed` keys).
 *
 * @param result The repair's result (its fixed counts).
 * @returns QEMU's text, ending with a newline; empty when nothing was
 * repaired.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatRepairHeader } from "./check_text.ts";
 * const text = formatRepairHeader({ leaksFixed: 2, corruptionsFixed: 0 });
 * assert.match(text, /^The following inconsistencies were found and repaired:\n\n    2 leaked clusters\n/);
 * ```
 */
export function formatRepairHeader(
  result: Pick<CheckResult, "leaksFixed" | "corruptionsFixed">,
): string {
  if (!result.leaksFixed && !result.corruptionsFixed) return "";
  return "The following inconsistencies were found and repaired:\n\n" +
    `    ${result.leaksFixed} leaked clusters\n` +
    `    ${result.corruptionsFixed} corruptions\n\n` +
    "Double checking the fixed image now...\n";
}

/**
 * The object `qemu-img check --output=json` prints.
 *
 * @param result What {@linkcode checkImage} returned.
 * @returns QEMU's keys (`check-errors`, `image-end-offset`, ...), with the
 * optional ones only when non-zero, as QEMU does.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { checkResultJson } from "./check_text.ts";
 * const json = checkResultJson({
 *   filename: "a.qcow2", format: "qcow2", corruptions: 0, leaks: 2, checkErrors: 0,
 *   imageEndOffset: 262144, totalClusters: 16, allocatedClusters: 0,
 *   fragmentedClusters: 0, compressedClusters: 0, corruptionsFixed: 0,
 *   leaksFixed: 0, messages: [], exitCode: 3,
 * });
 * assert.deepStrictEqual(json, {
 *   filename: "a.qcow2", format: "qcow2", "check-errors": 0, "image-end-offset": 262144,
 *   leaks: 2, "total-clusters": 16,
 * });
 * ```
 */
export function checkResultJson(result: CheckResult): Record<string, unknown> {
  // Keys in QAPI schema order (ImageCheck).
  const o: Record<string, QValue> = {
    filename: result.filename,
    format: result.format,
    "check-errors": result.checkErrors,
  };
  const optional: [string, number][] = [
    ["image-end-offset", result.imageEndOffset],
    ["corruptions", result.corruptions],
    ["leaks", result.leaks],
    ["corruptions-fixed", result.corruptionsFixed],
    ["leaks-fixed", result.leaksFixed],
    ["total-clusters", result.totalClusters],
    ["allocated-clusters", result.allocatedClusters],
    ["fragmented-clusters", result.fragmentedClusters],
    ["compressed-clusters", result.compressedClusters],
  ];
  for (const [key, value] of optional) if (value !== 0) o[key] = value;
  return o;
}

/**
 * The exact text of `qemu-img check --output=json` (without the final
 * newline).
 *
 * @param result What {@linkcode checkImage} returned.
 * @returns QEMU's pretty JSON, keys in QEMU's order.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatCheckJson } from "./check_text.ts";
 * const text = formatCheckJson({
 *   filename: "a.qcow2", format: "qcow2", corruptions: 0, leaks: 0, checkErrors: 0,
 *   imageEndOffset: 0, totalClusters: 0, allocatedClusters: 0,
 *   fragmentedClusters: 0, compressedClusters: 0, corruptionsFixed: 0,
 *   leaksFixed: 0, messages: [], exitCode: 0,
 * });
 * assert.strictEqual(text, '{\n    "check-errors": 0,\n    "filename": "a.qcow2",\n    "format": "qcow2"\n}');
 * ```
 */
export function formatCheckJson(result: CheckResult): string {
  return qemuJson(checkResultJson(result) as Record<string, QValue>);
}
