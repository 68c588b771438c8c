// Building and inspecting XFS images for the --sparsify tests (not a test
// file): mkfs.xfs with a prototype file fills an image without root or a
// kernel mount (v4 included, which this kernel no longer mounts), over
// noise so that free blocks hold old bytes; xfs_db is the independent
// judge of free space (`freesp -d`) and, in expert mode, the attacker that
// edits fields and recomputes checksums.

import { join } from "node:path";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { merge, MiB, noise, sh } from "./_disks.ts";

/**
 * mkfs.xfs makes filesystems under 300 MB only for fstests, which it
 * recognizes by these variables.
 */
export const SMALL_FS_ENV: Record<string, string> = {
  TEST_DIR: "/tmp",
  TEST_DEV: "/dev/null",
  QA_CHECK_FS: "1",
};

/** Whether the XFS tools the tests use are there. */
export const XFS_TOOLS = ["mkfs.xfs", "xfs_db", "xfs_repair"];

/** A prototype file (mkfs.xfs -p) describing the tree under `dir`. */
export async function protofile(dir: string): Promise<string> {
  const lines = ["/dummy", "0 0", "d--755 0 0"];
  async function walk(path: string, depth: number): Promise<void> {
    const names: string[] = [];
    for await (const e of Deno.readDir(path)) names.push(e.name);
    names.sort();
    const pad = " ".repeat(depth);
    for (const name of names) {
      const full = join(path, name);
      const st = await Deno.lstat(full);
      const mode = ((st.mode ?? 0o644) & 0o777).toString(8).padStart(3, "0");
      if (st.isSymlink) {
        lines.push(`${pad}${name} l--${mode} 0 0 ${await Deno.readLink(full)}`);
      } else if (st.isDirectory) {
        lines.push(`${pad}${name} d--${mode} 0 0`);
        await walk(full, depth + 1);
        lines.push(`${pad}$`);
      } else {
        lines.push(`${pad}${name} ---${mode} 0 0 ${full}`);
      }
    }
  }
  await walk(dir, 1);
  lines.push("$", "");
  return lines.join("\n");
}

/**
 * Makes an XFS image of `size` bytes from the tree `tree` with mkfs.xfs
 * ARGS, over noise (`-K`: mkfs discards nothing), so that free blocks hold
 * old bytes as deleted files would.
 */
export async function protoImage(
  image: string,
  size: number,
  args: string[],
  tree: string,
  seed = 7,
): Promise<void> {
  {
    using f = await Deno.open(image, {
      create: true,
      write: true,
      truncate: true,
    });
    for (let at = 0; at < size; at += 4 * MiB) {
      await f.write(noise(Math.min(4 * MiB, size - at), seed + at));
    }
  }
  const proto = image + ".proto";
  await Deno.writeTextFile(proto, await protofile(tree));
  await sh("mkfs.xfs", ["-q", "-f", "-K", ...args, "-p", proto, image], {
    env: SMALL_FS_ENV,
  });
  await Deno.remove(proto);
}

/** A directory of `n` small files (a directory in leaf or node form). */
export async function manyFiles(dir: string, n: number): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  for (let i = 0; i < n; i++) {
    await Deno.writeTextFile(
      join(dir, `entry-${i}-with-a-longer-name`),
      `${i}\n`,
    );
  }
}

/** Geometry fields of an XFS image, by xfs_db. */
export interface XfsGeometry {
  blockSize: number;
  agblocks: number;
  agblklog: number;
  agcount: number;
  sectSize: number;
  logstart: number;
  logblocks: number;
}

/** Prints fields with xfs_db (read-only) as a map. */
export async function xfsDbFields(
  image: string,
  ...commands: string[]
): Promise<Map<string, string>> {
  const out = await sh("xfs_db", [
    "-r",
    ...commands.flatMap((c) => ["-c", c]),
    image,
  ]);
  const m = new Map<string, string>();
  for (const line of out.split("\n")) {
    const eq = line.indexOf(" = ");
    if (eq > 0) m.set(line.slice(0, eq).trim(), line.slice(eq + 3).trim());
  }
  return m;
}

/** The geometry of an XFS image. */
export async function xfsGeometry(image: string): Promise<XfsGeometry> {
  const f = await xfsDbFields(image, "sb 0", "p");
  const n = (k: string) => Number(f.get(k));
  return {
    blockSize: n("blocksize"),
    agblocks: n("agblocks"),
    agblklog: n("agblklog"),
    agcount: n("agcount"),
    sectSize: n("sectsize"),
    logstart: n("logstart"),
    logblocks: n("logblocks"),
  };
}

/**
 * Free space as xfs_db lists it (`freesp -d`, which counts the blocks on
 * the AG free lists as free too), as merged byte ranges shifted by `base`.
 */
export async function xfsDbFree(
  image: string,
  base = 0,
): Promise<{ ranges: FreeRange[]; freeListBytes: number }> {
  const g = await xfsGeometry(image);
  const text = await sh("xfs_db", ["-r", "-c", "freesp -d", image]);
  const ranges: FreeRange[] = [];
  for (const m of text.matchAll(/^\s+(\d+)\s+(\d+)\s+(\d+)$/gm)) {
    const [agno, agbno, len] = [m[1], m[2], m[3]].map(Number);
    ranges.push({
      offset: base + (agno * g.agblocks + agbno) * g.blockSize,
      length: len * g.blockSize,
    });
  }
  let freeList = 0;
  for (let a = 0; a < g.agcount; a++) {
    const f = await xfsDbFields(image, `agf ${a}`, "p flcount");
    freeList += Number(f.get("flcount"));
  }
  return { ranges: merge(ranges), freeListBytes: freeList * g.blockSize };
}

/** Runs xfs_db commands in expert mode (writes recompute v5 checksums). */
export async function xfsDbWrite(
  image: string,
  ...commands: string[]
): Promise<string> {
  return await sh("xfs_db", [
    "-x",
    ...commands.flatMap((c) => ["-c", c]),
    image,
  ]);
}

/** The data extents of the file at `path` in an image: `[agno, agbno, count]`. */
export async function fileExtents(
  image: string,
  path: string,
): Promise<Array<[number, number, number]>> {
  const ino = await inodeOf(image, path);
  const text = await sh("xfs_db", [
    "-r",
    "-c",
    `inode ${ino}`,
    "-c",
    "bmap",
    image,
  ]);
  const out: Array<[number, number, number]> = [];
  for (
    const m of text.matchAll(/startblock \d+ \((\d+)\/(\d+)\) count (\d+)/g)
  ) {
    out.push([Number(m[1]), Number(m[2]), Number(m[3])]);
  }
  return out;
}

/** The inode number of `path` in an image. */
export async function inodeOf(image: string, path: string): Promise<number> {
  const text = await sh("xfs_db", [
    "-r",
    "-c",
    `path ${path}`,
    "-c",
    "stack",
    image,
  ]);
  const m = /\tinode (\d+),/.exec(text);
  if (!m) throw new Error(`no inode for ${path}: ${text}`);
  return Number(m[1]);
}
