// The sparse qcow2 images of issue 26's `check`/`map`/`compare` row, made
// by qemu-img and qemu-io and cached in bench/.cache/: a virtual size of
// whole TiB, 64 KiB of data at the start of every GiB (each GiB's bytes a
// different pattern), optionally internal snapshots of it made by
// `qemu-img snapshot -c`, and the copy a user would compare it with: the
// same image converted by `qemu-img convert -O qcow2` (no snapshots, the
// data packed at the front of the file).

import { CACHE, exists, GiB, log, must } from "./_compare_util.ts";

/** One image of the tools row and the copy it is compared with. */
export interface ToolsImage {
  /** Short name: `1t-s100`, `1t`, `4t`, ... */
  name: string;
  /** Virtual size in bytes. */
  virtualSize: number;
  /** Internal snapshots. */
  snapshots: number;
  /** The image. */
  path: string;
  /** `qemu-img convert -O qcow2` of it: same guest content, no snapshots. */
  copy: string;
}

/** Data written at the start of every GiB. */
export const DATA_PER_GIB = 64 * 1024;

/** qemu-io commands per invocation (each one is a command-line argument). */
const WRITES_PER_RUN = 4096;

/**
 * The image of `tib` TiB with `snapshots` internal snapshots, built once
 * (its copy too) and kept in bench/.cache/ (built again when `rebuild`).
 */
export async function toolsImage(
  tib: number,
  snapshots: number,
  rebuild = false,
): Promise<ToolsImage> {
  const name = `${tib}t${snapshots > 0 ? `-s${snapshots}` : ""}`;
  const path = `${CACHE}tools-${name}.qcow2`;
  const copy = `${CACHE}tools-${name}-copy.qcow2`;
  const done = `${path}.done`;
  const image = { name, virtualSize: tib * 1024 * GiB, snapshots, path, copy };
  if (!rebuild && await exists(done)) return image;
  await Deno.mkdir(CACHE, { recursive: true });
  for (const f of [done, path, copy]) await Deno.remove(f).catch(() => {});
  log(`Building ${path} (${tib} TiB, ${snapshots} snapshots)...`);
  await must("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    path,
    `${tib}T`,
  ]);
  const gibs = tib * 1024;
  for (let first = 0; first < gibs; first += WRITES_PER_RUN) {
    const args = ["-f", "qcow2"];
    for (let g = first; g < Math.min(gibs, first + WRITES_PER_RUN); g++) {
      args.push("-c", `write -q -P ${1 + g % 255} ${g}G ${DATA_PER_GIB}`);
    }
    await must("qemu-io", [...args, path]);
  }
  for (let s = 1; s <= snapshots; s++) {
    await must("qemu-img", ["snapshot", "-c", `snap${s}`, path]);
  }
  await must("qemu-img", ["convert", "-f", "qcow2", "-O", "qcow2", path, copy]);
  await Deno.writeTextFile(done, new Date().toISOString());
  return image;
}
