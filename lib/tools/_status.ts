// Block status of a chain as QEMU 7.2 computes it (the generic
// bdrv_co_block_status_above() and qemu-img's get_block_status()): each
// image answers for itself (GuestImage.blockStatus, its driver's
// block_status), and where it does not allocate a range its backing image
// answers, or zeros past its end. `qemu-img map` prints these runs merged;
// `qemu-img compare` decides from them which ranges to read.

import type { BlockStatusOptions, GuestImage } from "../reader/image.ts";
import type { MapEntry } from "./map.ts";

/**
 * One run of guest bytes with one block status: a map entry (field by field
 * what QEMU's block status reports), plus what `compare` needs.
 */
export interface StatusRun extends MapEntry {
  /**
   * Unallocated past the end of a shorter backing image: zeros that
   * bdrv_block_status_above() (used by `qemu-img compare`) calls allocated.
   */
  pastBacking?: boolean;
}

/**
 * The status runs of `[start, start + length)` of a chain, deepest answers
 * resolved, in order (not merged).
 */
export async function* statusRuns(
  image: GuestImage,
  start: number,
  length: number,
  options: BlockStatusOptions,
  depth = 0,
): AsyncGenerator<StatusRun> {
  for await (const s of image.blockStatus(start, length, options)) {
    const at = s.hostOffset === undefined
      ? {}
      : { offset: s.hostOffset, file: s.file };
    if (s.allocated) {
      const run: StatusRun = {
        start: s.offset,
        length: s.length,
        depth,
        present: true,
        zero: s.zero,
        data: s.data,
        ...at,
      };
      if (s.compressed) run.compressed = true;
      yield run;
      continue;
    }
    // Unallocated here: the backing image answers, or zeros.
    const backing = image.backing;
    const inside = backing
      ? Math.max(0, Math.min(s.length, backing.virtualSize - s.offset))
      : 0;
    if (inside > 0) {
      yield* statusRuns(backing!, s.offset, inside, options, depth + 1);
    }
    if (inside < s.length) {
      const run: StatusRun = {
        start: s.offset + inside,
        length: s.length - inside,
        depth,
        present: false,
        zero: true,
        data: false,
      };
      if (backing) run.pastBacking = true;
      if (s.hostOffset !== undefined) {
        run.offset = s.hostOffset + inside;
        run.file = s.file;
      }
      yield run;
    }
  }
}
