// The ideal of bench/sparsify_fs.ts: a copy of the disk with every
// filesystem's free space zeroed, where each filesystem's own tools say it
// is free (none of this reads the filesystems through lib/sparsify):
// - FAT32: the geometry minfo prints, and the FAT's zero entries (the
//   count checked against mdir's free bytes);
// - ext4: zerofree;
// - XFS: `xfs_db freesp -d`, every free extent of every AG;
// - btrfs: `btrfs inspect-internal dump-tree`: device space outside every
//   chunk stripe, and inside each chunk what no EXTENT_ITEM or
//   METADATA_ITEM covers (the superblock copies kept);
// - NTFS: the clear bits of `$Bitmap` as ntfscat reads it, clusters of
//   the size ntfsinfo gives;
// - swap: everything past the header page.

import { CACHE, must } from "./_compare_util.ts";
import { type Disk, type Part, withLoop } from "./_sparsify_fs_disk.ts";

/** `[offset, length]` pairs, partition-relative, to zero. */
type Ranges = Array<[number, number]>;

/** Merges sorted, adjacent ranges. */
function merge(ranges: Ranges): Ranges {
  const out: Ranges = [];
  for (const [o, n] of ranges.toSorted((a, b) => a[0] - b[0])) {
    const last = out.at(-1);
    if (last && last[0] + last[1] >= o) {
      last[1] = Math.max(last[1], o + n - last[0]);
    } else out.push([o, n]);
  }
  return out;
}

async function fatFree(dev: string, file: Deno.FsFile, p: Part) {
  const info = await must("minfo", ["-i", dev, "::"]);
  const num = (re: RegExp) => Number(re.exec(info)![1]);
  const sector = num(/sector size: (\d+) bytes/);
  const perCluster = num(/cluster size: (\d+) sectors/);
  const reserved = num(/reserved \(boot\) sectors: (\d+)/);
  const fats = num(/^fats: (\d+)/m);
  const fatLen = num(/Big fatlen=(\d+)/);
  const total = num(/big size: (\d+) sectors/);
  const dataStart = (reserved + fats * fatLen) * sector;
  const clusterBytes = perCluster * sector;
  const clusters = Math.floor((total * sector - dataStart) / clusterBytes);
  const fat = new Uint8Array(fatLen * sector);
  await file.seek(p.offset + reserved * sector, Deno.SeekMode.Start);
  for (let got = 0; got < fat.length;) {
    got += (await file.read(fat.subarray(got)))!;
  }
  const view = new DataView(fat.buffer);
  const ranges: Ranges = [];
  for (let c = 2; c < clusters + 2; c++) {
    if ((view.getUint32(4 * c, true) & 0x0fffffff) === 0) {
      ranges.push([dataStart + (c - 2) * clusterBytes, clusterBytes]);
    }
  }
  const mdir = await must("mdir", ["-i", dev, "::/"]);
  const free = Number(/([\d ]+) bytes free/.exec(mdir)![1].replace(/ /g, ""));
  if (free !== ranges.length * clusterBytes) {
    throw new Error(
      `Cannot zero FAT free space: ${ranges.length} free clusters of ${clusterBytes} bytes, mdir says ${free} bytes free`,
    );
  }
  return ranges;
}

async function xfsFree(dev: string): Promise<Ranges> {
  const sb = await must("xfs_db", [
    "-r",
    "-c",
    "sb 0",
    "-c",
    "p agblocks blocksize",
    dev,
  ]);
  const agblocks = Number(/agblocks = (\d+)/.exec(sb)![1]);
  const bs = Number(/blocksize = (\d+)/.exec(sb)![1]);
  const out = await must("xfs_db", ["-r", "-c", "freesp -d", dev]);
  const ranges: Ranges = [];
  for (const line of out.split("\n")) {
    const m = /^\s*(\d+)\s+(\d+)\s+(\d+)\s*$/.exec(line);
    if (!m) continue;
    const [ag, bno, len] = [Number(m[1]), Number(m[2]), Number(m[3])];
    ranges.push([(ag * agblocks + bno) * bs, len * bs]);
  }
  return ranges;
}

/** Byte ranges `[from, to)` minus `used` (sorted, merged). */
function minus(from: number, to: number, used: Ranges): Ranges {
  const out: Ranges = [];
  let pos = from;
  for (const [o, n] of used) {
    if (o + n <= pos) continue;
    if (o >= to) break;
    if (o > pos) out.push([pos, o - pos]);
    pos = Math.max(pos, o + n);
  }
  if (pos < to) out.push([pos, to - pos]);
  return out;
}

async function btrfsFree(dev: string, length: number): Promise<Ranges> {
  const sup = await must("btrfs", ["inspect-internal", "dump-super", dev]);
  const nodesize = Number(/^nodesize\s+(\d+)/m.exec(sup)![1]);
  const chunkTree = await must("btrfs", [
    "inspect-internal",
    "dump-tree",
    "-t",
    "chunk",
    dev,
  ]);
  const chunks: Array<{ logical: number; length: number; stripes: number[] }> =
    [];
  for (const item of chunkTree.split(/\n\titem /).slice(1)) {
    const key = /CHUNK_ITEM (\d+)\)/.exec(item);
    if (!key) continue;
    chunks.push({
      logical: Number(key[1]),
      length: Number(/length (\d+)/.exec(item)![1]),
      stripes: [...item.matchAll(/stripe \d+ devid 1 offset (\d+)/g)]
        .map((m) => Number(m[1])),
    });
  }
  const extentTree = await must("btrfs", [
    "inspect-internal",
    "dump-tree",
    "-t",
    "extent",
    dev,
  ]);
  const used: Ranges = [];
  for (
    const m of extentTree.matchAll(
      /key \((\d+) (EXTENT|METADATA)_ITEM (\d+)\)/g,
    )
  ) {
    used.push([Number(m[1]), m[2] === "EXTENT" ? Number(m[3]) : nodesize]);
  }
  const usedSorted = merge(used);
  // Superblock copies (64 KiB, 64 MiB, 256 GiB), 4 KiB each, and the
  // first MiB, which btrfs never allocates: kept.
  const keep: Ranges = [[0, 1 << 20], [64 << 20, 4096]];
  const ranges: Ranges = [];
  const stripes: Ranges = [];
  for (const c of chunks) {
    for (const s of c.stripes) {
      stripes.push([s, c.length]);
      for (const [o, n] of minus(c.logical, c.logical + c.length, usedSorted)) {
        ranges.push([s + o - c.logical, n]);
      }
    }
  }
  ranges.push(...minus(0, length, merge(stripes)));
  return minus(0, length, merge(keep)).flatMap(([o, n]) =>
    intersect(merge(ranges), o, o + n)
  );
}

/** The parts of `ranges` inside `[from, to)`. */
function intersect(ranges: Ranges, from: number, to: number): Ranges {
  const out: Ranges = [];
  for (const [o, n] of ranges) {
    const a = Math.max(o, from);
    const b = Math.min(o + n, to);
    if (a < b) out.push([a, b - a]);
  }
  return out;
}

async function ntfsFree(dev: string): Promise<Ranges> {
  const info = await must("ntfsinfo", ["-m", dev]);
  const cluster = Number(/Cluster Size:\s*(\d+)/.exec(info)![1]);
  const clusters = Number(/Volume Size in Clusters:\s*(\d+)/.exec(info)![1]);
  const bitmapPath = `${CACHE}sparsify-fs-ntfs-bitmap`;
  await must("bash", [
    "-c",
    `ntfscat ${dev} '$Bitmap' > ${bitmapPath}`,
  ]);
  const bitmap = await Deno.readFile(bitmapPath);
  await Deno.remove(bitmapPath);
  const ranges: Ranges = [];
  for (let c = 0; c < clusters; c++) {
    if (!(bitmap[c >> 3] & (1 << (c & 7)))) ranges.push([c * cluster, cluster]);
  }
  return ranges;
}

/** Zeroes `ranges` (partition-relative) of `p` in the open copy. */
async function zero(file: Deno.FsFile, p: Part, ranges: Ranges) {
  const zeros = new Uint8Array(4 << 20);
  for (const [o, n] of merge(ranges)) {
    await file.seek(p.offset + o, Deno.SeekMode.Start);
    for (let left = n; left > 0;) {
      const k = await file.write(
        zeros.subarray(0, Math.min(left, zeros.length)),
      );
      left -= k;
    }
  }
}

/** Zeroes ext4's free blocks with zerofree; returns the bytes it zeroed. */
async function ext4Zerofree(dev: string): Promise<number> {
  const sb = await must("dumpe2fs", ["-h", dev]);
  await must("zerofree", [dev]);
  const free = Number(/^Free blocks:\s*(\d+)/m.exec(sb)![1]);
  return free * Number(/^Block size:\s*(\d+)/m.exec(sb)![1]);
}

/** The free ranges of partition `p` (on `dev`), as its tools see them. */
function freeRanges(p: Part, dev: string, file: Deno.FsFile): Promise<Ranges> {
  switch (p.fs) {
    case "fat":
      return fatFree(dev, file, p);
    case "xfs":
      return xfsFree(dev);
    case "btrfs":
      return btrfsFree(dev, p.length);
    case "ntfs":
      return ntfsFree(dev);
    case "swap":
      return Promise.resolve([[4096, p.length - 4096]]);
    default:
      throw new Error(`Cannot list the free space of ${p.fs} here`);
  }
}

/**
 * A copy of the disk with every filesystem's free space zeroed, at
 * `bench/.cache/sparsify-fs-4G-ideal.img`; returns its path and the bytes
 * zeroed per filesystem.
 */
export async function idealCopy(
  disk: Disk,
): Promise<{ path: string; zeroed: Record<string, number> }> {
  const path = `${CACHE}sparsify-fs-4G-ideal.img`;
  await must("cp", ["--sparse=always", disk.path, path]);
  const zeroed: Record<string, number> = {};
  using file = await Deno.open(path, { read: true, write: true });
  for (const p of disk.parts) {
    zeroed[p.fs] = await withLoop(path, p, async (dev) => {
      if (p.fs === "ext4") return await ext4Zerofree(dev);
      const ranges = merge(await freeRanges(p, dev, file));
      await zero(file, p, ranges);
      return ranges.reduce((n, r) => n + r[1], 0);
    });
  }
  return { path, zeroed };
}
