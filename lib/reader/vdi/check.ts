/**
 * The consistency check QEMU 7.2 makes of a VDI image (`qemu-img check`):
 * every block map entry names a block inside the map, no two entries name
 * the same block, and the header's `blocks_allocated` is the number of
 * entries that name one.
 *
 * @module
 */

import type { RandomAccessSource } from "../../io/source.ts";
import { viewOf } from "../../bytes/binary.ts";
import type { FormatCheck } from "../image.ts";
import { readPadded } from "../read.ts";
import { isAllocated, type VdiHeader } from "./header.ts";

/** Block map entries read at a time. */
const ENTRIES_PER_READ = 64 * 1024;
/** Most problem lines kept; later problems are counted, not listed. */
export const MAX_MESSAGES = 100_000;

/**
 * Checks a VDI image's block map as QEMU does: all `blocks_in_image`
 * entries (read as QEMU reads them: zeros past the end of the file), one
 * message and one corruption per entry naming a block past the map or a
 * block an earlier entry named, and one for a wrong `blocks_allocated`.
 * Memory: one bit per block of the map, one read of 256 KiB, and at most
 * {@linkcode MAX_MESSAGES} lines (a hostile map could name one block a
 * billion times); time: the entries the file holds (those past its end
 * are all 0 and are counted at once).
 *
 * @param source The image file.
 * @param header Its parsed header.
 * @returns QEMU's messages and the corruptions counted.
 *
 * @example A clean dynamic image
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../../io/source.ts";
 * import { parseVdiHeader } from "./header.ts";
 * import { checkVdi } from "./check.ts";
 * const dir = await Deno.makeTempDir();
 * await new Deno.Command("qemu-img", { args: ["create", "-q", "-f", "vdi", `${dir}/d.vdi`, "4M"] }).output();
 * const bytes = await Deno.readFile(`${dir}/d.vdi`);
 * const result = await checkVdi(new BytesSource(bytes), parseVdiHeader(bytes.subarray(0, 512)));
 * assert.deepStrictEqual(result, { corruptions: 0, messages: [] });
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function checkVdi(
  source: RandomAccessSource,
  header: VdiHeader,
): Promise<FormatCheck> {
  const n = header.blocksInImage;
  const used = new Uint8Array(Math.ceil(n / 8));
  const messages: string[] = [];
  let corruptions = 0;
  let allocated = 0;
  const report = (line: string) => {
    if (messages.length < MAX_MESSAGES) messages.push(line);
    corruptions++;
  };
  // Entries past the end of the file read as 0: counted, not read.
  const inFile = Math.min(
    n,
    Math.max(0, Math.ceil((source.size - header.offsetBmap) / 4)),
  );
  for (let first = 0; first < inFile; first += ENTRIES_PER_READ) {
    const count = Math.min(ENTRIES_PER_READ, inFile - first);
    const view = viewOf(
      await readPadded(source, header.offsetBmap + first * 4, count * 4),
    );
    for (let i = 0; i < count; i++) {
      const entry = view.getUint32(i * 4, true);
      if (!isAllocated(entry)) continue;
      if (entry >= n) {
        report(`ERROR: block index ${first + i} too large, is ${entry}`);
        continue;
      }
      allocated++;
      const bit = 1 << (entry & 7);
      if (used[entry >>> 3] & bit) {
        // QEMU names the block twice: the one it recorded is the entry.
        report(`ERROR: block index ${entry} also used by ${entry}`);
      } else {
        used[entry >>> 3] |= bit;
      }
    }
  }
  // The entries past the end: all block 0, shared after the first.
  const past = n - inFile;
  if (past > 0) {
    allocated += past;
    const repeats = (used[0] & 1) === 0 ? past - 1 : past;
    used[0] |= 1;
    for (let i = 0; i < Math.min(repeats, MAX_MESSAGES); i++) {
      report("ERROR: block index 0 also used by 0");
    }
    corruptions += Math.max(0, repeats - MAX_MESSAGES);
  }
  if (allocated !== header.blocksAllocated) {
    report(
      `ERROR: allocated blocks mismatch, is ${allocated}, should be ${header.blocksAllocated}`,
    );
  }
  return { corruptions, messages };
}
