/**
 * Linux swap: everything after the first page is free. The first page is
 * the header (`union swap_header`) and stays as it is.
 *
 * ```text
 * first page (4 KiB here; the page size of the machine that made it):
 *   0..1023       boot bits
 *   1024 version (u32, 1)   1028 last_page (u32)   1032 nr_badpages (u32)
 *   1036 UUID (16 bytes)    1052 label (16 bytes)
 *   page size - 10          signature "SWAPSPACE2"
 * ```
 *
 * A swap area holding a hibernation image carries another signature there
 * (`S1SUSPEND`, `S2SUSPEND`, `ULSUSPEND`, `LINHIB0001`): it is left as it is,
 * as is the old `SWAP-SPACE` format.
 *
 * Ten bytes at the end of a page can be written into any partition: a
 * signature is trusted only where the partition table's type says swap
 * (MBR 0x82, the GPT Linux swap GUID), or on a bare disk with no table.
 *
 * @module
 */

import { hex, Refusal, type RegionReader } from "./_region.ts";
import type { FilesystemAnalysis, FilesystemModule } from "./filesystem.ts";

/** Page sizes the signature is looked for at. */
export const SWAP_PAGE_SIZES: readonly number[] = [
  4096,
  8192,
  16384,
  32768,
  65536,
];
/** Signature of a swap area in use (version 1). */
export const SWAP_SIGNATURE = "SWAPSPACE2";
/** Signatures of a swap area holding a hibernation image, and of the old format. */
export const SWAP_OTHER_SIGNATURES: readonly string[] = [
  "S1SUSPEND",
  "S2SUSPEND",
  "ULSUSPEND",
  "LINHIB0001",
  "SWAP-SPACE",
];
/** Offset of `version` in the header. */
const VERSION = 1024;
/** Offset of `last_page`. */
const LAST_PAGE = 1028;
/** Offset of the UUID and of the label. */
const UUID = 1036;
const LABEL = 1052;

/** What the signature at the end of a page says. */
interface Found {
  pageSize: number;
  signature: string;
}

function signatureAt(head: Uint8Array, pageSize: number): string | undefined {
  if (head.length < pageSize) return undefined;
  const text = String.fromCharCode(
    ...head.subarray(pageSize - 10, pageSize),
  );
  for (const sig of [SWAP_SIGNATURE, ...SWAP_OTHER_SIGNATURES]) {
    if (text.startsWith(sig)) return sig;
  }
  return undefined;
}

/**
 * Finds a swap signature at the end of the first page, trying each page
 * size from the smallest.
 *
 * @param head The first bytes of the partition (64 KiB covers every page size).
 * @returns The page size and signature, or undefined.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { findSwapSignature } from "./swap.ts";
 * const head = new Uint8Array(65536);
 * head.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
 * assert.deepStrictEqual(findSwapSignature(head), { pageSize: 4096, signature: "SWAPSPACE2" });
 * ```
 */
export function findSwapSignature(head: Uint8Array): Found | undefined {
  for (const pageSize of SWAP_PAGE_SIZES) {
    const signature = signatureAt(head, pageSize);
    if (signature) return { pageSize, signature };
  }
  return undefined;
}

function uuidText(b: Uint8Array): string {
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${
    h.slice(16, 20)
  }-${h.slice(20)}`;
}

async function analyzeSwap(region: RegionReader): Promise<FilesystemAnalysis> {
  const head = await region.head(SWAP_PAGE_SIZES.at(-1)!);
  const found = findSwapSignature(head);
  if (!found) throw new Refusal("no swap signature", { found: "swap" });
  const { pageSize, signature } = found;
  if (signature === "SWAP-SPACE") {
    throw new Refusal("old swap format (SWAP-SPACE) is not handled", {
      found: "swap",
    });
  }
  if (signature !== SWAP_SIGNATURE) {
    throw new Refusal(
      `holds a hibernation image (signature ${signature})`,
      { found: "swap" },
    );
  }
  const view = new DataView(head.buffer, head.byteOffset, pageSize);
  // The header is in the byte order of the machine that wrote it.
  const little = view.getUint32(VERSION, true) === 1;
  const version = view.getUint32(VERSION, little);
  if (version !== 1) {
    throw new Refusal(`swap header version ${hex(version)} is not 1`, {
      found: "swap",
    });
  }
  const lastPage = view.getUint32(LAST_PAGE, little);
  if (lastPage < 1) {
    throw new Refusal(`swap last_page ${lastPage} leaves no swap space`, {
      found: "swap",
    });
  }
  const swapEnd = (lastPage + 1) * pageSize;
  if (region.length !== undefined && swapEnd > region.length) {
    throw new Refusal(
      `swap area of ${swapEnd} bytes (last_page ${lastPage}) is larger than its partition of ${region.length} bytes: truncated`,
      { found: "swap" },
    );
  }
  // Past the header, the swap area is the kernel's scratch space. Only the
  // area the header describes is dropped: a partition table that makes the
  // partition longer must not reach over other bytes.
  const end = swapEnd;
  const labelBytes = head.subarray(LABEL, LABEL + 16);
  const nul = labelBytes.indexOf(0);
  const label = new TextDecoder().decode(
    labelBytes.subarray(0, nul < 0 ? 16 : nul),
  );
  const detail = [
    `${pageSize / 1024} KiB pages`,
    `UUID ${uuidText(head.subarray(UUID, UUID + 16))}`,
    ...(label ? [`label "${label}"`] : []),
  ].join(", ");
  const freeBytes = Math.max(0, end - pageSize);
  return {
    found: "swap",
    detail,
    freeBytes,
    async *ranges() {
      if (freeBytes > 0) yield { offset: pageSize, length: freeBytes };
    },
  };
}

/**
 * Linux swap (SWAPSPACE2): all but the header page is free. Trusted only in
 * a partition typed Linux swap, or on a bare disk.
 */
export const swapModule: FilesystemModule = {
  name: "swap",
  headBytes: SWAP_PAGE_SIZES.at(-1)!,
  partitionType: "swap",
  detect: (head) => findSwapSignature(head) !== undefined,
  analyze: analyzeSwap,
};
