// Building FAT volumes for the --sparsify tests (not a test file):
// mkfs.vfat on a partition of a disk image (no root: this kernel has no
// vfat, so nothing is mounted), filled and partly deleted with mtools, and
// the oracle of what is free, which does not use our code: fsck.fat's
// geometry and the clusters mshowfat lists for every live path.

import { join } from "node:path";
import { mulberry32 } from "../../lib/_prng.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { blank, merge, MiB, noise, readAt, sh, writeInto } from "./_disks.ts";

/** The tools these helpers run. */
export const FAT_TOOLS = [
  "mkfs.vfat",
  "fsck.fat",
  "mcopy",
  "mdel",
  "mdir",
  "mshowfat",
];

/** mtools refuses unusual geometry unless told not to check it. */
const MTOOLS_ENV = { MTOOLS_SKIP_CHECK: "1" };

/** A FAT volume inside a disk image. */
export interface FatPart {
  disk: string;
  /** Byte offset of the volume in the disk. */
  offset: number;
  length: number;
}

/** The `-i` argument of mtools for a volume. */
function image(p: FatPart): string {
  return `${p.disk}@@${p.offset}`;
}

/** Runs an mtools command on a volume. */
export function mtools(
  cmd: string,
  p: FatPart,
  ...args: string[]
): Promise<string> {
  return sh(cmd, ["-i", image(p), ...args], { env: MTOOLS_ENV });
}

/**
 * Makes a FAT volume with mkfs.vfat in a file of the partition's size and
 * writes it at `p.offset` of `p.disk` (mkfs.vfat --offset would choose the
 * cluster size by the size of the whole disk).
 */
export async function makeFat(
  p: FatPart,
  bits: 12 | 16 | 32,
  args: string[] = [],
): Promise<void> {
  const file = `${p.disk}.fat-${p.offset}`;
  await blank(file, p.length);
  await sh("mkfs.vfat", ["-F", String(bits), ...args, file]);
  await writeInto(p.disk, p.offset, file);
  await Deno.remove(file);
}

/** A file written to a volume: its path there and its content. */
export interface FatFile {
  path: string;
  data: Uint8Array;
}

/**
 * Fills a volume the way an EFI system partition looks, plus data: a
 * boot loader tree, long and short names, an empty file, a file of
 * exactly one cluster, a deep directory, and about `bytes` of noise files;
 * then deletes every other noise file (their clusters keep their bytes).
 * Returns the files that remain.
 */
export async function fillFat(
  p: FatPart,
  work: string,
  seed: number,
  bytes: number,
): Promise<FatFile[]> {
  const tree = join(work, `tree-${seed}`);
  const next = mulberry32(seed);
  const files: FatFile[] = [];
  const add = async (path: string, data: Uint8Array) => {
    const at = join(tree, path);
    await Deno.mkdir(join(at, ".."), { recursive: true });
    await Deno.writeFile(at, data);
    files.push({ path, data });
  };
  await add("EFI/BOOT/BOOTX64.EFI", noise(950_000, seed + 1));
  await add("EFI/debian/shimx64.efi", noise(940_000, seed + 2));
  await add("EFI/debian/grubx64.efi", noise(2_400_000, seed + 3));
  await add(
    "EFI/debian/grub.cfg",
    new TextEncoder().encode("search --fs-uuid 1234-ABCD\nconfigfile /x\n"),
  );
  await add("EFI/debian/fonts/unicode.pf2", noise(300_000, seed + 4));
  await add("empty file", new Uint8Array(0));
  await add("one.cls", noise(4096, seed + 5));
  await add("deep/a/b/c/d/e/f/g/h/i/j/leaf.txt", noise(3000, seed + 6));
  const data: string[] = [];
  let left = bytes;
  for (let i = 0; left > 0; i++) {
    const size = Math.min(left, 1 + (next() % (3 * MiB)));
    const name = `data/d${i % 4}/file with a long name ${i}.bin`;
    await add(name, noise(size, seed * 1000 + i));
    data.push(name);
    left -= size;
  }
  const top = [];
  for await (const e of Deno.readDir(tree)) top.push(join(tree, e.name));
  await sh("mcopy", ["-s", "-i", image(p), ...top, "::/"], {
    env: MTOOLS_ENV,
  });
  const gone = data.filter((_, i) => i % 2 === 0);
  for (let i = 0; i < gone.length; i += 20) {
    await mtools("mdel", p, ...gone.slice(i, i + 20).map((f) => `::/${f}`));
  }
  await Deno.remove(tree, { recursive: true });
  return files.filter((f) => !gone.includes(f.path));
}

/** Geometry of a volume as fsck.fat reports it (byte offsets in the volume). */
export interface FatGeometry {
  clusterSize: number;
  /** Where cluster 2 starts. */
  dataStart: number;
  clusters: number;
  /** Where the first FAT starts. */
  fatStart: number;
  /** Bytes of one FAT. */
  fatBytes: number;
  fats: number;
  /** Bits of a FAT entry. */
  bits: number;
}

/** Copies a volume out of its disk into `file` (fsck.fat takes no offset). */
export async function extract(p: FatPart, file: string): Promise<void> {
  await Deno.writeFile(file, await readAt(p.disk, p.offset, p.length));
}

/** fsck.fat -n -v on a volume: exit code and output. */
export async function fsckFat(
  p: FatPart,
  work: string,
): Promise<{ code: number; text: string; geometry: FatGeometry }> {
  const file = join(work, "fsck.img");
  await extract(p, file);
  const out = await new Deno.Command("fsck.fat", {
    args: ["-n", "-v", file],
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(file);
  const dec = new TextDecoder();
  const text = dec.decode(out.stdout) + dec.decode(out.stderr);
  const num = (re: RegExp) => {
    const m = re.exec(text);
    if (!m) throw new Error(`fsck.fat: no ${re} in\n${text}`);
    return Number(m[1]);
  };
  return {
    code: out.code,
    text,
    geometry: {
      clusterSize: num(/^\s*(\d+) bytes per cluster$/m),
      dataStart: num(/^Data area starts at byte (\d+)/m),
      clusters: num(/^\s*(\d+) data clusters/m),
      fatStart: num(/^First FAT starts at byte (\d+)/m),
      fatBytes: num(/^\s*(\d+) bytes per FAT/m),
      fats: num(/^\s*(\d+) FATs, \d+ bit entries/m),
      bits: num(/^\s*\d+ FATs, (\d+) bit entries/m),
    },
  };
}

/** Every live path of a volume (directories end in `/`), as mdir lists them. */
export async function fatPaths(p: FatPart): Promise<string[]> {
  return (await mtools("mdir", p, "-/", "-b", "-a", "::/")).split("\n")
    .filter((l) => l.startsWith("::/"));
}

/** The clusters of each path, as mshowfat lists them. */
export async function fatClusters(
  p: FatPart,
  paths: string[],
): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (let i = 0; i < paths.length; i += 50) {
    const batch = paths.slice(i, i + 50).map((x) => x.replace(/\/$/, ""));
    const text = await mtools("mshowfat", p, ...batch);
    for (const line of text.split("\n")) {
      const m = /^(::\/.*?) ((?:<\d+(?:-\d+)?> ?)+)$/.exec(line.trimEnd());
      if (!m) continue;
      const list: number[] = [];
      for (const r of m[2].matchAll(/<(\d+)(?:-(\d+))?>/g)) {
        const a = Number(r[1]);
        for (let c = a; c <= Number(r[2] ?? a); c++) list.push(c);
      }
      out.set(m[1], list);
    }
  }
  return out;
}

/**
 * The free clusters of a volume by mtools and fsck.fat, as disk byte
 * ranges: every data cluster that no live path (nor the FAT32 root) uses.
 */
export async function fatFree(
  p: FatPart,
  work: string,
): Promise<FreeRange[]> {
  const { geometry: g } = await fsckFat(p, work);
  const paths = [...await fatPaths(p), "::/"];
  const used = new Uint8Array(g.clusters + 2);
  for (const list of (await fatClusters(p, paths)).values()) {
    for (const c of list) used[c] = 1;
  }
  const ranges: FreeRange[] = [];
  for (let c = 2; c < g.clusters + 2; c++) {
    if (used[c]) continue;
    ranges.push({
      offset: p.offset + g.dataStart + (c - 2) * g.clusterSize,
      length: g.clusterSize,
    });
  }
  return merge(ranges);
}
