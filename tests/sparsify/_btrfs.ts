// btrfs for the --sparsify tests (not a test file): images made with
// mkfs.btrfs, what btrfs-progs says is on them (`btrfs inspect-internal
// dump-super` and `dump-tree`, parsed here: an oracle independent of the
// module under test), the free space that follows from it, and the edits
// an attacker makes (a tree block or the superblock changed, its crc32c
// recomputed, every DUP copy written).

import { crc32cRaw } from "../../lib/bytes/crc.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { merge, MiB, sh } from "./_disks.ts";
import { readAt } from "../_qemu.ts";

/** What btrfs-progs lists on a btrfs image. */
export interface BtrfsLayout {
  nodesize: number;
  sectorsize: number;
  totalBytes: number;
  /** Chunks: logical range, type text (`METADATA|DUP`), device offset of each copy. */
  chunks: Array<
    { logical: number; length: number; type: string; stripes: number[] }
  >;
  /** Extent items: logical range, and whether they hold a tree block. */
  extents: Array<{ start: number; length: number; tree: boolean }>;
  /** Dev extents: device offset and length. */
  devExtents: Array<{ physical: number; length: number }>;
  /** Every tree block btrfs-progs reaches: address, level, owner and its items' keys (leaves). */
  treeBlocks: Array<
    { bytenr: number; level: number; owner: string; keys: string[] }
  >;
  /** File extents on disk (regular and preallocated): logical range. */
  fileExtents: Array<{ disk: number; bytes: number }>;
}

/** Makes a btrfs image file of `size` bytes with mkfs.btrfs ARGS, filled from `from`. */
export async function mkbtrfs(
  image: string,
  size: number,
  args: string[],
  from?: string,
): Promise<void> {
  await Deno.remove(image).catch(() => {});
  {
    using f = await Deno.open(image, { create: true, write: true });
    await f.truncate(size);
  }
  await sh("mkfs.btrfs", [
    "-q",
    "-f",
    ...args,
    ...(from ? ["--rootdir", from] : []),
    image,
  ]);
}

function num(text: string, re: RegExp): number {
  const m = re.exec(text);
  if (!m) throw new Error(`btrfs-progs output has no ${re}`);
  return Number(m[1]);
}

/** Splits dump-tree output into blocks: the `leaf`/`node` line and what follows. */
function blocksOf(text: string): string[] {
  return text.split(/\n(?=leaf \d+ items|node \d+ level)/).slice(1);
}

/** Reads the layout of a btrfs image with btrfs-progs. */
export async function btrfsLayout(image: string): Promise<BtrfsLayout> {
  const sup = await sh("btrfs", ["inspect-internal", "dump-super", image]);
  const dump = (t?: string) =>
    sh("btrfs", [
      "inspect-internal",
      "dump-tree",
      ...(t ? ["-t", t] : []),
      image,
    ]);
  const chunkText = await dump("chunk");
  const chunks = [...chunkText.split(/\n\titem /)].flatMap((item) => {
    const m =
      /^\d+ key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)[^\n]*\n\s+length (\d+) owner \d+ stripe_len \d+ type (\S+)/
        .exec(item);
    if (!m) return [];
    const stripes = [...item.matchAll(/stripe \d+ devid \d+ offset (\d+)/g)]
      .map((s) => Number(s[1]));
    return [{
      logical: Number(m[1]),
      length: Number(m[2]),
      type: m[3],
      stripes,
    }];
  });
  const nodesize = num(sup, /^nodesize\s+(\d+)$/m);
  const extents = [
    ...(await dump("extent")).matchAll(
      /key \((\d+) (EXTENT_ITEM|METADATA_ITEM) (\d+)\)[^\n]*\n[^\n]*flags (\S+)/g,
    ),
  ].map((m) => ({
    start: Number(m[1]),
    length: m[2] === "METADATA_ITEM" ? nodesize : Number(m[3]),
    tree: m[4].includes("TREE_BLOCK"),
  }));
  const devExtents = [
    ...(await dump("dev")).matchAll(
      /key \(\d+ DEV_EXTENT (\d+)\)[^\n]*\n[^\n]*\n\s+chunk_objectid \d+ chunk_offset \d+ length (\d+)/g,
    ),
  ].map((m) => ({ physical: Number(m[1]), length: Number(m[2]) }));
  const all = await dump();
  const treeBlocks = blocksOf(all).map((b) => {
    const m = /^(leaf|node) (\d+) (?:level (\d+) )?items \d+.* owner (\S+)/
      .exec(b)!;
    return {
      bytenr: Number(m[2]),
      level: m[1] === "leaf" ? 0 : Number(m[3]),
      owner: m[4],
      keys: m[1] === "leaf"
        ? [...b.matchAll(/\titem \d+ key (\([^)]*\))/g)].map((k) => k[1])
        : [],
    };
  });
  const fileExtents = [
    ...all.matchAll(/extent data disk byte (\d+) nr (\d+)/g),
  ].map((m) => ({ disk: Number(m[1]), bytes: Number(m[2]) }))
    .filter((e) => e.disk !== 0);
  return {
    nodesize,
    sectorsize: num(sup, /^sectorsize\s+(\d+)$/m),
    totalBytes: num(sup, /^total_bytes\s+(\d+)$/m),
    chunks,
    extents,
    devExtents,
    treeBlocks,
    fileExtents,
  };
}

/** Device offsets of every copy of logical `[at, at + n)`. */
export function physicalOf(
  layout: BtrfsLayout,
  at: number,
  n: number,
): number[] {
  const c = layout.chunks.find((c) =>
    c.logical <= at && at + n <= c.logical + c.length
  );
  if (!c) throw new Error(`logical ${at} is in no chunk`);
  return c.stripes.map((s) => s + (at - c.logical));
}

function subtract(from: FreeRange[], cut: FreeRange[]): FreeRange[] {
  let out = merge(from);
  for (const c of cut) {
    const next: FreeRange[] = [];
    for (const r of out) {
      const end = r.offset + r.length;
      const cend = c.offset + c.length;
      if (cend <= r.offset || c.offset >= end) {
        next.push(r);
        continue;
      }
      if (c.offset > r.offset) {
        next.push({ offset: r.offset, length: c.offset - r.offset });
      }
      if (cend < end) next.push({ offset: cend, length: end - cend });
    }
    out = next;
  }
  return out;
}

/**
 * The device's free ranges by btrfs-progs' view: outside the dev extents,
 * and inside each chunk's copies where no extent item is; never the first
 * MiB or a superblock copy. Shifted by `base`.
 */
export function btrfsFree(layout: BtrfsLayout, base = 0): FreeRange[] {
  const free = subtract(
    [{ offset: 0, length: layout.totalBytes }],
    layout.devExtents.map((d) => ({ offset: d.physical, length: d.length })),
  );
  for (const c of layout.chunks) {
    const inside = subtract(
      [{ offset: c.logical, length: c.length }],
      layout.extents.map((e) => ({ offset: e.start, length: e.length })),
    );
    for (const s of c.stripes) {
      for (const r of inside) {
        free.push({ offset: s + (r.offset - c.logical), length: r.length });
      }
    }
  }
  const reserved = [{ offset: 0, length: MiB }];
  for (const m of [64 * MiB, 256 * 1024 * MiB]) {
    if (m < layout.totalBytes) reserved.push({ offset: m, length: 4096 });
  }
  return subtract(free, reserved).map((r) => ({
    offset: base + r.offset,
    length: r.length,
  }));
}

/**
 * What the filesystem reads, on the device: every copy of every tree block
 * and file extent btrfs-progs reaches. Shifted by `base`.
 */
export function btrfsUsed(layout: BtrfsLayout, base = 0): FreeRange[] {
  const out: FreeRange[] = [];
  const add = (at: number, n: number) => {
    for (const p of physicalOf(layout, at, n)) {
      out.push({ offset: base + p, length: n });
    }
  };
  for (const b of layout.treeBlocks) add(b.bytenr, layout.nodesize);
  for (const e of layout.fileExtents) add(e.disk, e.bytes);
  return merge(out.sort((a, b) => a.offset - b.offset)).reduce<FreeRange[]>(
    (acc, r) => {
      const last = acc.at(-1);
      if (last && last.offset + last.length >= r.offset) {
        last.length = Math.max(last.length, r.offset + r.length - last.offset);
      } else acc.push({ ...r });
      return acc;
    },
    [],
  );
}

/** The crc32c btrfs stores in a block's first 4 bytes. */
export function btrfsCsum(block: Uint8Array): number {
  return (crc32cRaw(0xffffffff, block.subarray(32)) ^ 0xffffffff) >>> 0;
}

async function writeAtFile(path: string, at: number, bytes: Uint8Array) {
  using f = await Deno.open(path, { write: true });
  await f.seek(at, Deno.SeekMode.Start);
  let done = 0;
  while (done < bytes.length) done += await f.write(bytes.subarray(done));
}

/**
 * Edits the tree block at logical `bytenr` as an attacker would: `edit`
 * changes the bytes, the checksum is recomputed (unless `keepCsum`), and
 * every copy is written (unless `copies` says which).
 */
export async function editTreeBlock(
  image: string,
  layout: BtrfsLayout,
  bytenr: number,
  edit: (block: Uint8Array, view: DataView) => void,
  options: { base?: number; keepCsum?: boolean; copies?: number[] } = {},
): Promise<void> {
  const base = options.base ?? 0;
  const where = physicalOf(layout, bytenr, layout.nodesize);
  const block = await readAt(image, base + where[0], layout.nodesize);
  edit(block, new DataView(block.buffer));
  if (!options.keepCsum) {
    new DataView(block.buffer).setUint32(0, btrfsCsum(block), true);
  }
  for (const [i, p] of where.entries()) {
    if (options.copies && !options.copies.includes(i)) continue;
    await writeAtFile(image, base + p, block);
  }
}

/** Edits the primary superblock and recomputes its checksum. */
export async function editSuper(
  image: string,
  edit: (sb: Uint8Array, view: DataView) => void,
  base = 0,
): Promise<void> {
  const sb = await readAt(image, base + 0x10000, 4096);
  edit(sb, new DataView(sb.buffer));
  new DataView(sb.buffer).setUint32(0, btrfsCsum(sb), true);
  await writeAtFile(image, base + 0x10000, sb);
}

/**
 * Removes item `i` from a leaf in the kernel's packed layout: the headers
 * after it move down, the data of the items after it (which lies before
 * its data) moves up over it.
 */
export function removeItem(leaf: Uint8Array, i: number): void {
  const v = new DataView(leaf.buffer, leaf.byteOffset, leaf.length);
  const HDR = 0x65;
  const n = v.getUint32(0x60, true);
  const head = (k: number) => HDR + k * 25;
  const off = (k: number) => v.getUint32(head(k) + 17, true);
  const size = (k: number) => v.getUint32(head(k) + 21, true);
  const gone = size(i);
  const lastOff = off(n - 1);
  // Data of items i+1..n-1 lies in [lastOff, off(i)): move it up by `gone`.
  leaf.copyWithin(HDR + lastOff + gone, HDR + lastOff, HDR + off(i));
  for (let k = i + 1; k < n; k++) {
    v.setUint32(head(k) + 17, off(k) + gone, true);
  }
  leaf.copyWithin(head(i), head(i + 1), head(n));
  leaf.fill(0, head(n - 1), head(n));
  v.setUint32(0x60, n - 1, true);
}

/** Index of the item with key text `key` (as dump-tree prints it) in a leaf. */
export function itemIndex(
  layout: BtrfsLayout,
  leaf: number,
  key: string,
): number {
  const b = layout.treeBlocks.find((t) => t.bytenr === leaf)!;
  return b.keys.indexOf(key);
}

/**
 * Mounts a btrfs image file through a loop device; unmounted and detached
 * on dispose. Without discard: the kernel would otherwise punch the extents
 * of deleted files out of the image file, and they must keep their bytes.
 */
export async function mountBtrfs(
  image: string,
  dir: string,
  options = "nodiscard",
): Promise<AsyncDisposable> {
  await Deno.mkdir(dir, { recursive: true });
  const dev = (await sh("losetup", ["-f", "--show", image])).trim();
  try {
    await sh("mount", [
      "-t",
      "btrfs",
      ...(options ? ["-o", options] : []),
      dev,
      dir,
    ]);
  } catch (err) {
    await sh("losetup", ["-d", dev]).catch(() => {});
    throw err;
  }
  return {
    async [Symbol.asyncDispose]() {
      await sh("umount", [dir]).catch(() => {});
      await sh("losetup", ["-d", dev]).catch(() => {});
    },
  };
}
