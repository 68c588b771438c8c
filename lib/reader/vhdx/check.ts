/**
 * The consistency check QEMU 7.2 makes of a VHDX image (`qemu-img check`,
 * its `vhdx_check_bat_entries`): every FULLY_PRESENT BAT entry must start
 * and end inside the file, and a payload block must not overlap the log
 * or a region of the region table.
 *
 * @module
 */

import type { RandomAccessSource } from "../../io/source.ts";
import type { FormatCheck } from "../image.ts";
import { BLOCK_STATE } from "./layout.ts";
import type { VhdxLayout } from "./open.ts";

const U64 = (v: bigint) => BigInt.asUintN(64, v);
const INT64_MAX = 2n ** 63n - 1n;
/** Bits 20-63 of a BAT entry: the file offset. */
const FILE_OFFSET_MASK = 0xfffffffffff00000n;

/** An area registered against overlaps: the log and each region. */
interface Area {
  start: bigint;
  end: bigint;
}

/**
 * Checks the BAT of a VHDX image opened for `check`, with QEMU's messages
 * (each one line, counted as a corruption): an offset past 2^63, a block
 * starting past the end of the file or ending past it (the last block may
 * be short), a payload block overlapping the log or a region. As in QEMU,
 * FULLY_PRESENT entries are counted through the BAT and every
 * `chunk_ratio + 1`-th one is taken for a sector bitmap block, whose
 * overlaps are not checked; the file size is rounded up to 512 bytes.
 *
 * @param source The image file.
 * @param layout Its metadata, read with `readVhdx(source, name, true)`.
 * @returns QEMU's messages and the corruptions counted.
 *
 * @example A clean dynamic image
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../../io/source.ts";
 * import { readVhdx } from "./open.ts";
 * import { checkVhdx } from "./check.ts";
 * const dir = await Deno.makeTempDir();
 * await new Deno.Command("qemu-img", { args: ["create", "-q", "-f", "vhdx", `${dir}/d.vhdx`, "4M"] }).output();
 * const source = new BytesSource(await Deno.readFile(`${dir}/d.vhdx`));
 * const layout = await readVhdx(source, "d.vhdx", true);
 * assert.deepStrictEqual(checkVhdx(source, layout), { corruptions: 0, messages: [] });
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export function checkVhdx(
  source: RandomAccessSource,
  layout: VhdxLayout,
): FormatCheck {
  const fileSize = BigInt(Math.ceil(source.size / 512) * 512);
  const blockSize = BigInt(layout.blockSize);
  // QEMU's total_sectors: the size in logical sectors, taken for 512-byte ones.
  const total = BigInt(
    Math.floor(layout.virtualDiskSize / layout.logicalSectorSize),
  ) * 512n;
  // QEMU looks the areas up newest first: the regions last to first, the log.
  const { header } = layout;
  const areas: Area[] = [
    {
      start: BigInt(header.logOffset),
      end: U64(BigInt(header.logOffset) + BigInt(header.logLength)),
    },
    ...layout.regions.map((r) => ({
      start: BigInt(r.offset),
      end: U64(BigInt(r.offset) + BigInt(r.length)),
    })),
  ].reverse();
  const messages: string[] = [];
  let corruptions = 0;
  const report = (text: string) => {
    messages.push(text);
    corruptions++;
  };
  let payloadLeft = BigInt(layout.chunkRatio);
  for (let i = 0; i < layout.batEntries; i++) {
    const entry = layout.bat.getBigUint64(i * 8, true);
    if (Number(entry & 7n) !== BLOCK_STATE.FULLY_PRESENT) continue;
    const offset = entry & FILE_OFFSET_MASK;
    // A uint32_t of MIN(block_size, total - i * block_size), as in C.
    const left = total - BigInt(i) * blockSize;
    const length = BigInt.asUintN(32, left < blockSize ? left : blockSize);
    if (offset > INT64_MAX - blockSize) {
      report(`VHDX BAT entry ${i} offset overflow.`);
    }
    if (offset >= fileSize) {
      report(
        `VHDX BAT entry ${i} start offset ${offset} points after end of file (${fileSize}). Image has probably been truncated.`,
      );
    } else if (U64(offset + length) > fileSize) {
      report(
        `VHDX BAT entry ${i} end offset ${
          U64(offset + length - 1n)
        } points after end of file (${fileSize}). Image has probably been truncated.`,
      );
    }
    if (payloadLeft === 0n) {
      // Taken for a sector bitmap block: not checked against the areas.
      payloadLeft = BigInt(layout.chunkRatio);
      continue;
    }
    payloadLeft--;
    const end = U64(offset + blockSize);
    const hit = areas.find((a) => offset < a.end && end > a.start);
    if (hit) {
      report(
        `VHDX region ${offset}-${end} overlaps with region ${hit.start}-${hit.end}`,
      );
    }
  }
  return { corruptions, messages };
}
