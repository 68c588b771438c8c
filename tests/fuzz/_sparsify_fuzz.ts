// Seeded fuzzing of the --sparsify parsers (not a test file): real disks
// (bare ext2/3/4 in several layouts, GPT and MBR disks with ext4 and swap)
// with their metadata mutated: superblock fields, group descriptors,
// bitmap bits and pointers, GPT headers and entries, MBR and EBR entries,
// truncations, raw bytes, inode fields. Checksums are sometimes fixed up
// after a mutation so that the parsers meet hostile values that pass them.
// One operator is the attack of issue 22 in full: used blocks marked free
// with the group's and the superblock's free counts and every checksum
// (bitmap, descriptor, superblock) recomputed, so that only the inodes
// still say the blocks are in use.
//
// The oracle is independent of the parsers: the free ranges of the
// unmutated disk as dumpe2fs lists them (and the swap pages past the
// header). A mutated disk may be mapped, partly mapped or left as it is,
// but every byte called free must be free in the original: anything else
// is a wrong zero — a live block dropped. The attack and the inode
// mutations are each a case of their own (never combined with other
// operators): an inode edit that "deletes" the file whose blocks another
// operator freed would make a consistent filesystem in which that file is
// gone, which no reader of the metadata could tell from a real deletion.
// A case is (base, seed): the same pair always gives the same bytes.

import { join } from "node:path";
import { Rand } from "../../lib/_prng.ts";
export { Rand };
import { crc16, crc32, crc32cRaw } from "../../lib/bytes/crc.ts";
import {
  blank,
  debugfsRm,
  dumpe2fsFree,
  MiB,
  mkfs,
  noise,
  populate,
  sfdiskParts,
  sh,
  writeInto,
} from "../sparsify/_disks.ts";
import {
  type CaseBase,
  current,
  diskOutcome,
  type FuzzTarget,
  inMemory,
  type Mutation,
} from "./_sparsify_target.ts";

/** One ext filesystem of a base disk, where its structures are. */
export interface ExtInfo {
  /** Disk offset of the filesystem. */
  offset: number;
  blockSize: number;
  descSize: number;
  groups: number;
  /** Disk offset of the primary group descriptor table. */
  gdt: number;
  /** Disk offsets of the block bitmaps, by group. */
  bitmaps: number[];
  /** Descriptor checksum kind. */
  csum: "crc32c" | "crc16" | "none";
  /** Disk offsets of the superblock backups. */
  backups: number[];
  blocksPerGroup: number;
  firstDataBlock: number;
  blocksCount: number;
  inodeSize: number;
  inodesPerGroup: number;
  /** Disk offset of group 0's inode table. */
  inodeTable: number;
}

/** A disk to mutate, and what is free on it by e2fsprogs and the swap layout. */
export interface FuzzBase extends CaseBase {
  ext: ExtInfo[];
  /** GPT: the entry array's disk offset and shape. */
  gpt?: { entries: number; count: number; entrySize: number };
  /** MBR: disk offsets of sector 0 and every EBR. */
  mbr?: number[];
  /** Disk offsets worth pointing things at. */
  targets: number[];
}

// ---------------------------------------------------------------------------
// Bases

async function extInfo(image: string, offset: number): Promise<ExtInfo> {
  const text = await sh("dumpe2fs", [image]);
  const num = (re: RegExp, dflt?: number) => {
    const m = re.exec(text);
    if (!m) {
      if (dflt !== undefined) return dflt;
      throw new Error(`dumpe2fs: no ${re}`);
    }
    return Number(m[1]);
  };
  const blockSize = num(/^Block size:\s+(\d+)$/m);
  const features = /^Filesystem features:\s+(.*)$/m.exec(text)![1];
  const bitmaps = [...text.matchAll(/Block bitmap at (\d+)/g)].map((m) =>
    offset + Number(m[1]) * blockSize
  );
  const backups = [...text.matchAll(/Backup superblock at (\d+)/g)].map((m) =>
    offset + Number(m[1]) * blockSize
  );
  return {
    offset,
    blockSize,
    descSize: num(/^Group descriptor size:\s+(\d+)$/m, 32),
    groups: bitmaps.length,
    gdt: offset +
      num(/Primary superblock at \d+, Group descriptors? at (\d+)/) *
        blockSize,
    bitmaps,
    csum: /metadata_csum/.test(features)
      ? "crc32c"
      : /uninit_bg/.test(features)
      ? "crc16"
      : "none",
    backups,
    blocksPerGroup: num(/^Blocks per group:\s+(\d+)$/m),
    firstDataBlock: num(/^First block:\s+(\d+)$/m),
    blocksCount: num(/^Block count:\s+(\d+)$/m),
    inodeSize: num(/^Inode size:\s+(\d+)$/m, 128),
    inodesPerGroup: num(/^Inodes per group:\s+(\d+)$/m),
    inodeTable: offset +
      num(/^Group 0:[^]*?Inode table at (\d+)/m) * blockSize,
  };
}

async function bareBase(
  root: string,
  name: string,
  size: number,
  args: string[],
): Promise<FuzzBase> {
  const dir = join(root, name);
  await Deno.mkdir(dir, { recursive: true });
  const tree = join(dir, "tree");
  const files = await populate(tree, name.length, size / 3);
  const path = join(dir, "disk.img");
  await mkfs(path, size, args, tree);
  await debugfsRm(path, files.filter((_, i) => i % 2 === 0));
  await Deno.remove(tree, { recursive: true });
  const ext = await extInfo(path, 0);
  return {
    name,
    path,
    size,
    free: await dumpe2fsFree(path),
    ext: [ext],
    targets: targetsOf([ext], size, []),
  };
}

async function tableBase(
  root: string,
  name: string,
  label: "gpt" | "dos",
): Promise<FuzzBase> {
  const dir = join(root, name);
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, "disk.img");
  const size = 40 * MiB;
  await blank(path, size);
  await sh("sfdisk", ["-q", path], {
    stdin: label === "gpt"
      ? "label: gpt\n,20M,L\n,8M,S\n,,L\n"
      : "label: dos\n,8M,82\n,,E\n,20M,83\n,,83\n",
  });
  const all = await sfdiskParts(path);
  const parts = all.filter((p) => p.type !== "5");
  const [fsPart, swapPart, rest] = label === "gpt"
    ? [parts[0], parts[1], parts[2]]
    : [parts[1], parts[0], parts[2]];
  const tree = join(dir, "tree");
  const files = await populate(tree, 5, 6 * MiB);
  const fs = join(dir, "fs.img");
  await mkfs(fs, fsPart.length, ["-t", "ext4", "-b", "1024"], tree);
  await debugfsRm(fs, files.filter((_, i) => i % 2 === 1));
  await writeInto(path, fsPart.offset, fs);
  const free = await dumpe2fsFree(fs, fsPart.offset);
  const ext = await extInfo(fs, fsPart.offset);
  const swap = join(dir, "swap.img");
  await Deno.writeFile(swap, noise(swapPart.length, 8));
  await sh("mkswap", ["-q", swap]);
  await writeInto(path, swapPart.offset, swap);
  free.push({ offset: swapPart.offset + 4096, length: swapPart.length - 4096 });
  const other = join(dir, "rest.img");
  await Deno.writeFile(other, noise(rest.length, 9));
  await writeInto(path, rest.offset, other);
  for (const f of [fs, swap, other]) await Deno.remove(f);
  await Deno.remove(tree, { recursive: true });
  const base: FuzzBase = {
    name,
    path,
    size,
    free: free.sort((a, b) => a.offset - b.offset),
    ext: [ext],
    targets: targetsOf([ext], size, parts.map((p) => p.offset)),
  };
  if (label === "gpt") {
    base.gpt = { entries: 1024, count: 128, entrySize: 128 };
  } else {
    const ext = all.find((p) => p.type === "5")!;
    const ebrs = [ext.offset];
    const bytes = await Deno.readFile(path);
    const view = new DataView(bytes.buffer);
    for (let k = 0; k < 4; k++) {
      const rel = view.getUint32(ebrs.at(-1)! + 446 + 16 + 8, true);
      if (rel === 0) break;
      ebrs.push(ext.offset + rel * 512);
    }
    base.mbr = [0, ...ebrs];
  }
  return base;
}

function targetsOf(ext: ExtInfo[], size: number, parts: number[]): number[] {
  return [
    0,
    512,
    size,
    size - 512,
    ...parts,
    ...ext.flatMap((e) => [
      e.offset,
      e.offset + 1024,
      e.gdt,
      ...e.bitmaps,
      ...e.backups,
      ...e.backups.map((b) => b - 1024), // a backup superblock as a filesystem start
    ]),
  ];
}

/** Builds every base under `root` (mke2fs, debugfs, dumpe2fs, sfdisk, mkswap). */
export async function buildFuzzBases(root: string): Promise<FuzzBase[]> {
  return [
    await bareBase(root, "ext4-4k", 16 * MiB, [
      "-t",
      "ext4",
      "-b",
      "4096",
      "-g",
      "1024",
    ]),
    await bareBase(root, "ext4-1k-metabg", 12 * MiB, [
      "-t",
      "ext4",
      "-b",
      "1024",
      "-O",
      "meta_bg,^resize_inode",
    ]),
    await bareBase(root, "ext4-uninit-bg", 12 * MiB, [
      "-t",
      "ext4",
      "-b",
      "1024",
      "-O",
      "^metadata_csum,uninit_bg,^flex_bg",
    ]),
    await bareBase(root, "ext4-nocsum-flex", 12 * MiB, [
      "-t",
      "ext4",
      "-b",
      "1024",
      "-O",
      "^metadata_csum",
    ]),
    await bareBase(root, "ext2", 8 * MiB, ["-t", "ext2", "-b", "1024"]),
    await bareBase(root, "ext3-sparse-super2", 12 * MiB, [
      "-t",
      "ext3",
      "-b",
      "1024",
      "-O",
      "sparse_super2",
    ]),
    await tableBase(root, "gpt", "gpt"),
    await tableBase(root, "mbr", "dos"),
  ];
}

// ---------------------------------------------------------------------------
// Mutations

const SB_FIELDS: Array<[string, number, number]> = [
  ["s_inodes_count", 0x00, 4],
  ["s_blocks_count_lo", 0x04, 4],
  ["s_first_data_block", 0x14, 4],
  ["s_log_block_size", 0x18, 4],
  ["s_log_cluster_size", 0x1c, 4],
  ["s_blocks_per_group", 0x20, 4],
  ["s_clusters_per_group", 0x24, 4],
  ["s_inodes_per_group", 0x28, 4],
  ["s_state", 0x3a, 2],
  ["s_rev_level", 0x4c, 4],
  ["s_inode_size", 0x58, 2],
  ["s_block_group_nr", 0x5a, 2],
  ["s_feature_compat", 0x5c, 4],
  ["s_feature_incompat", 0x60, 4],
  ["s_feature_ro_compat", 0x64, 4],
  ["s_uuid", 0x68, 4],
  ["s_reserved_gdt_blocks", 0xce, 2],
  ["s_desc_size", 0xfe, 2],
  ["s_first_meta_bg", 0x104, 4],
  ["s_blocks_count_hi", 0x150, 4],
  ["s_checksum_type", 0x175, 1],
  ["s_backup_bgs[0]", 0x24c, 4],
  ["s_backup_bgs[1]", 0x250, 4],
  ["s_checksum_seed", 0x270, 4],
];

const GD_FIELDS: Array<[string, number, number]> = [
  ["bg_block_bitmap_lo", 0x00, 4],
  ["bg_inode_bitmap_lo", 0x04, 4],
  ["bg_inode_table_lo", 0x08, 4],
  ["bg_free_blocks_count_lo", 0x0c, 2],
  ["bg_flags", 0x12, 2],
  ["bg_block_bitmap_csum_lo", 0x18, 2],
  ["bg_checksum", 0x1e, 2],
  ["bg_block_bitmap_hi", 0x20, 4],
  ["bg_inode_table_hi", 0x28, 4],
  ["bg_free_blocks_count_hi", 0x2c, 2],
  ["bg_block_bitmap_csum_hi", 0x38, 2],
];

/** Little-endian bytes of `value`. */
export function le(value: number, size: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < size; i++) out.push(Math.floor(value / 256 ** i) % 256);
  return out;
}

/** A value worth trying in a field of `size` bytes that holds `old`. */
export function interesting(
  r: Rand,
  old: number,
  size: number,
  extra: number[],
): number {
  const max = 256 ** size - 1;
  const pool = [
    0,
    1,
    2,
    3,
    7,
    8,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x10000,
    0x7fffffff,
    0xffffffff,
    old + 1,
    old - 1,
    old * 2,
    Math.floor(old / 2),
    old ^ (1 << r.int(size * 8)),
    r.u32(),
    ...extra,
  ];
  return Math.max(0, Math.min(max, Math.floor(r.pick(pool))));
}

/** Recomputes an ext superblock's checksum (metadata_csum) into the patches. */
function fixSuperblock(base: Uint8Array, m: Mutation, e: ExtInfo): void {
  if (e.csum !== "crc32c") return;
  const sb = current(base, m.patches, e.offset + 1024, 1024);
  const c = crc32cRaw(0xffffffff, sb.subarray(0, 0x3fc));
  m.patches.push({ at: e.offset + 1024 + 0x3fc, bytes: le(c, 4) });
  m.desc.push("fixed the superblock checksum");
}

/** Recomputes group `g`'s descriptor checksum into the patches. */
function fixDescriptor(
  base: Uint8Array,
  m: Mutation,
  e: ExtInfo,
  g: number,
): void {
  if (e.csum === "none") return;
  const sb = current(base, m.patches, e.offset + 1024, 1024);
  const at = e.gdt + g * e.descSize;
  const desc = current(base, m.patches, at, e.descSize);
  const group = Uint8Array.of(...le(g, 4));
  let c: number;
  if (e.csum === "crc32c") {
    const incompat = new DataView(sb.buffer).getUint32(0x60, true);
    const seed = incompat & 0x2000
      ? new DataView(sb.buffer).getUint32(0x270, true)
      : crc32cRaw(0xffffffff, sb.subarray(0x68, 0x78));
    c = crc32cRaw(seed, group);
    c = crc32cRaw(c, desc.subarray(0, 0x1e));
    c = crc32cRaw(c, new Uint8Array(2));
    if (e.descSize > 32) c = crc32cRaw(c, desc.subarray(0x20));
    c &= 0xffff;
  } else {
    c = crc16(0xffff, sb.subarray(0x68, 0x78));
    c = crc16(c, group);
    c = crc16(c, desc.subarray(0, 0x1e));
    if (e.descSize > 32) c = crc16(c, desc.subarray(0x20));
  }
  m.patches.push({ at: at + 0x1e, bytes: le(c, 2) });
  m.desc.push(`fixed descriptor ${g}'s checksum`);
}

/** Recomputes the GPT entry array CRC and the header CRC into the patches. */
function fixGpt(
  base: Uint8Array,
  m: Mutation,
  g: NonNullable<FuzzBase["gpt"]>,
): void {
  const header = current(base, m.patches, 512, 92);
  const hv = new DataView(header.buffer);
  const array = current(base, m.patches, g.entries, g.count * g.entrySize);
  hv.setUint32(88, crc32(array), true);
  hv.setUint32(16, 0, true);
  const size = Math.min(92, Math.max(0, hv.getUint32(12, true)));
  hv.setUint32(16, crc32(header.subarray(0, size)), true);
  m.patches.push({ at: 512, bytes: [...header] });
  m.desc.push("fixed the GPT CRC32s");
}

/** The crc32c seed of an ext4 with metadata_csum, from the current superblock. */
function csumSeed(sb: Uint8Array): number {
  const v = new DataView(sb.buffer, sb.byteOffset, 1024);
  return v.getUint32(0x60, true) & 0x2000
    ? v.getUint32(0x270, true)
    : crc32cRaw(0xffffffff, sb.subarray(0x68, 0x78));
}

/** Reads a little-endian unsigned field of the current bytes. */
function field(
  base: Uint8Array,
  m: Mutation,
  at: number,
  size: number,
): number {
  return [...current(base, m.patches, at, size)]
    .reduceRight((v, x) => v * 256 + x, 0);
}

/**
 * The attack of issue 22: clears a run of set bits (used blocks) in a
 * group's bitmap, then makes every count and checksum agree as an attacker
 * would — the group's free count, its bitmap checksum and descriptor
 * checksum, the superblock's free count and checksum. Groups with
 * BLOCK_UNINIT have no bitmap on disk and are not picked.
 */
function freeUsedBlocks(
  r: Rand,
  base: Uint8Array,
  b: FuzzBase,
  m: Mutation,
): void {
  const e = r.pick(b.ext);
  const g = r.int(e.groups);
  const desc = e.gdt + g * e.descSize;
  if (e.csum !== "none" && field(base, m, desc + 0x12, 2) & 0x2) return;
  const blocks = Math.min(
    e.blocksPerGroup,
    e.blocksCount - e.firstDataBlock - g * e.blocksPerGroup,
  );
  const bitmap = current(base, m.patches, e.bitmaps[g], e.blockSize);
  const set = (i: number) => (bitmap[i >> 3] & (1 << (i & 7))) !== 0;
  let i = r.int(blocks);
  for (let tries = 0; tries < blocks && !set(i); tries++) i = (i + 1) % blocks;
  if (!set(i)) return;
  const want = 1 + r.int(r.chance(0.5) ? 4 : 256);
  let n = 0;
  while (n < want && i + n < blocks && set(i + n)) {
    bitmap[(i + n) >> 3] &= ~(1 << ((i + n) & 7));
    n++;
  }
  m.patches.push({ at: e.bitmaps[g], bytes: [...bitmap] });
  const free = field(base, m, desc + 0x0c, 2) +
    (e.descSize >= 64 ? field(base, m, desc + 0x2c, 2) * 0x10000 : 0) + n;
  m.patches.push({ at: desc + 0x0c, bytes: le(free & 0xffff, 2) });
  if (e.descSize >= 64) {
    m.patches.push({ at: desc + 0x2c, bytes: le(free >>> 16, 2) });
  }
  const sbAt = e.offset + 1024;
  const wide = field(base, m, sbAt + 0x60, 4) & 0x80;
  const total = field(base, m, sbAt + 0x0c, 4) +
    (wide ? field(base, m, sbAt + 0x158, 4) * 2 ** 32 : 0) + n;
  m.patches.push({ at: sbAt + 0x0c, bytes: le(total % 2 ** 32, 4) });
  if (wide) {
    m.patches.push({
      at: sbAt + 0x158,
      bytes: le(Math.floor(total / 2 ** 32), 4),
    });
  }
  if (e.csum === "crc32c") {
    const seed = csumSeed(current(base, m.patches, sbAt, 1024));
    const c = crc32cRaw(seed, bitmap.subarray(0, e.blocksPerGroup / 8));
    m.patches.push({ at: desc + 0x18, bytes: le(c & 0xffff, 2) });
    if (e.descSize >= 64) {
      m.patches.push({ at: desc + 0x38, bytes: le(c >>> 16, 2) });
    }
  }
  const first = e.firstDataBlock + g * e.blocksPerGroup + i;
  m.desc.push(
    `freed used blocks ${first}-${
      first + n - 1
    } (group ${g}) with counts fixed`,
  );
  fixDescriptor(base, m, e, g);
  fixSuperblock(base, m, e);
}

const INODE_FIELDS: Array<[string, number, number]> = [
  ["i_mode", 0x00, 2],
  ["i_size_lo", 0x04, 4],
  ["i_dtime", 0x14, 4],
  ["i_links_count", 0x1a, 2],
  ["i_blocks_lo", 0x1c, 4],
  ["i_flags", 0x20, 4],
  ["i_block[0]", 0x28, 4],
  ["i_block[1]", 0x2c, 4],
  ["i_block[2]", 0x30, 4],
  ["i_block[3]", 0x34, 4],
  ["i_block[4]", 0x38, 4],
  ["i_block[5]", 0x3c, 4],
  ["i_block[6]", 0x40, 4],
  ["i_block[12]", 0x58, 4],
  ["i_block[13]", 0x5c, 4],
  ["i_block[14]", 0x60, 4],
  ["i_file_acl_lo", 0x68, 4],
  ["l_i_file_acl_high", 0x76, 2],
];

/**
 * A field of one of the first inodes of group 0 (the reserved ones, the
 * root, the first files): the walk must stay bounded and never call more
 * free than the bitmaps do. Inode checksums are not fixed: they are not
 * what the walk relies on.
 */
function inodeField(
  r: Rand,
  base: Uint8Array,
  b: FuzzBase,
  m: Mutation,
): void {
  const e = r.pick(b.ext);
  const ino = 1 + r.int(Math.min(40, e.inodesPerGroup));
  const [name, off, size] = r.pick(INODE_FIELDS);
  const at = e.inodeTable + (ino - 1) * e.inodeSize + off;
  const old = field(base, m, at, size);
  const blocks = b.targets.map((t) => Math.floor((t - e.offset) / e.blockSize))
    .filter((x) => x >= 0);
  const value = interesting(r, old, size, [
    ...blocks,
    0xf30a, // an extent header's magic
    0x80000, // EXTENTS_FL
    0x10000000, // INLINE_DATA_FL
    0x2000 | 0o644, // a character device
    0xa000 | 0o777, // a symlink
  ]);
  m.patches.push({ at, bytes: le(value, size) });
  m.desc.push(`inode ${ino} ${name} ${old} -> ${value}`);
}

type Operator = (r: Rand, base: Uint8Array, b: FuzzBase, m: Mutation) => void;

/** `[weight, operator, alone]`: an operator marked alone is a whole case by itself. */
const OPERATORS: Array<[number, Operator, boolean?]> = [
  [4, freeUsedBlocks, true],
  [3, inodeField, true],
  // A superblock field.
  [3, (r, base, b, m) => {
    const e = r.pick(b.ext);
    const [name, off, size] = r.pick(SB_FIELDS);
    const at = e.offset + 1024 + off;
    const old = [...current(base, m.patches, at, size)]
      .reduceRight((v, x) => v * 256 + x, 0);
    const value = interesting(r, old, size, [e.groups, e.blockSize]);
    m.patches.push({ at, bytes: le(value, size) });
    m.desc.push(`${name} ${old} -> ${value}`);
    if (r.chance(0.6)) fixSuperblock(base, m, e);
  }],
  // A group descriptor field.
  [4, (r, base, b, m) => {
    const e = r.pick(b.ext);
    const g = r.int(e.groups);
    const fields = GD_FIELDS.filter(([, off, size]) =>
      off + size <= e.descSize
    );
    const [name, off, size] = r.pick(fields);
    const at = e.gdt + g * e.descSize + off;
    const old = [...current(base, m.patches, at, size)]
      .reduceRight((v, x) => v * 256 + x, 0);
    const blocks = b.targets.map((t) =>
      Math.floor((t - e.offset) / e.blockSize)
    )
      .filter((x) => x >= 0);
    const value = interesting(r, old, size, [
      ...blocks,
      ...blocks.map((x) => x + 1),
    ]);
    m.patches.push({ at, bytes: le(value, size) });
    m.desc.push(`group ${g} ${name} ${old} -> ${value}`);
    if (r.chance(0.6)) fixDescriptor(base, m, e, g);
  }],
  // One bit of a block bitmap, never fixed up. Without metadata_csum a
  // bitmap has no checksum: two flips that keep its free count make another
  // consistent filesystem, which no reader of the metadata can tell from
  // the original. So such bitmaps get one flip per case (the free count
  // then disagrees); bitmaps with checksums get any number.
  [3, (r, base, b, m) => {
    const e = r.pick(b.ext);
    if (e.csum !== "crc32c" && m.flipped) return;
    m.flipped = true;
    const g = r.int(e.groups);
    const at = e.bitmaps[g] + r.int(e.blockSize);
    const [old] = current(base, m.patches, at, 1);
    const bit = 1 << r.int(8);
    m.patches.push({ at, bytes: [old ^ bit] });
    m.desc.push(`flipped bit ${bit} of byte ${at} (group ${g}'s bitmap)`);
  }],
  // A block bitmap pointer aimed at another structure.
  [2, (r, base, b, m) => {
    const e = r.pick(b.ext);
    const g = r.int(e.groups);
    const target = Math.floor((r.pick(b.targets) - e.offset) / e.blockSize);
    const at = e.gdt + g * e.descSize;
    m.patches.push({ at, bytes: le(Math.max(0, target), 4) });
    m.desc.push(`group ${g}'s block bitmap -> block ${target}`);
    if (r.chance(0.7)) fixDescriptor(base, m, e, g);
  }],
  // Truncation.
  [1, (r, _base, b, m) => {
    const cut = r.chance(0.5) ? r.int(b.size) : r.int(b.size / 512) * 512;
    m.size = Math.min(m.size, cut);
    m.desc.push(`truncated to ${cut}`);
  }],
  // Random bytes in a metadata area.
  [2, (r, _base, b, m) => {
    const e = r.pick(b.ext);
    const areas = [
      e.offset + 1024,
      e.gdt,
      ...(e.csum === "crc32c" ? e.bitmaps : []), // see the bitmap operator
      ...(b.gpt ? [512, b.gpt.entries] : []),
      ...(b.mbr ?? []),
    ];
    const at = r.pick(areas) + r.int(512);
    const bytes = Array.from({ length: 1 + r.int(8) }, () => r.int(256));
    m.patches.push({ at, bytes });
    m.desc.push(`${bytes.length} random bytes at ${at}`);
  }],
  // A GPT header field, or an entry.
  [3, (r, base, b, m) => {
    if (!b.gpt) return;
    const g = b.gpt;
    const lbas = b.targets.map((t) => Math.floor(t / 512));
    if (r.chance(0.4)) {
      const [name, off, size] = r.pick([
        ["revision", 8, 4],
        ["header size", 12, 4],
        ["my LBA", 24, 8],
        ["alternate LBA", 32, 8],
        ["first usable", 40, 8],
        ["last usable", 48, 8],
        ["entries LBA", 72, 8],
        ["entry count", 80, 4],
        ["entry size", 84, 4],
      ] as Array<[string, number, number]>);
      const old = [...current(base, m.patches, 512 + off, size)]
        .reduceRight((v, x) => v * 256 + x, 0);
      const value = interesting(r, old, Math.min(size, 6), lbas);
      m.patches.push({ at: 512 + off, bytes: le(value, size) });
      m.desc.push(`GPT ${name} ${old} -> ${value}`);
    } else {
      const i = r.int(3);
      const [name, off, size] = r.pick([
        ["type GUID", 0, 4],
        ["first LBA", 32, 8],
        ["last LBA", 40, 8],
      ] as Array<[string, number, number]>);
      const at = g.entries + i * g.entrySize + off;
      const old = [...current(base, m.patches, at, size)]
        .reduceRight((v, x) => v * 256 + x, 0);
      const value = interesting(r, old, Math.min(size, 6), [
        ...lbas,
        ...lbas.map((x) => x - 1),
      ]);
      m.patches.push({ at, bytes: le(value, size) });
      m.desc.push(`GPT entry ${i + 1} ${name} ${old} -> ${value}`);
    }
    if (r.chance(0.6)) fixGpt(base, m, g);
  }],
  // An MBR or EBR entry.
  [3, (r, base, b, m) => {
    if (!b.mbr) return;
    const sector = r.pick(b.mbr);
    const slot = sector === 0 ? r.int(4) : r.int(2);
    const [name, off, size] = r.pick([
      ["status", 0, 1],
      ["type", 4, 1],
      ["first LBA", 8, 4],
      ["sectors", 12, 4],
    ] as Array<[string, number, number]>);
    const at = sector + 446 + slot * 16 + off;
    const old = [...current(base, m.patches, at, size)]
      .reduceRight((v, x) => v * 256 + x, 0);
    const lbas = b.targets.map((t) => Math.floor((t - sector) / 512))
      .filter((x) => x >= 0);
    const value = interesting(r, old, size, [...lbas, 0x05, 0x82, 0x83, 0xee]);
    m.patches.push({ at, bytes: le(value, size) });
    m.desc.push(
      `MBR sector ${sector / 512} entry ${slot + 1} ${name} ${old} -> ${value}`,
    );
  }],
];

/** The mutation of case `seed` of a base: one to three operators. */
export function mutate(
  b: FuzzBase,
  base: Uint8Array,
  seed: number,
): Mutation {
  const r = new Rand(seed);
  const m: Mutation = { patches: [], size: b.size, desc: [] };
  const total = OPERATORS.reduce((n, [w]) => n + w, 0);
  const rounds = 1 + r.int(3);
  while (m.desc.length === 0 || m.desc.length < rounds) {
    let roll = r.int(total);
    const [, op, alone] = OPERATORS.find(([w]) => (roll -= w) < 0)!;
    if (alone && m.desc.length > 0) break;
    const before = m.desc.length;
    op(r, base, b, m);
    if (alone && m.desc.length > before) break;
    if (m.desc.length === before && m.desc.length > 0) break;
  }
  return m;
}

/**
 * The ext2/3/4, GPT and MBR target of the case runner: every fourth case
 * streamed with a 4 MiB read-ahead (so that a filesystem whose metadata
 * lies further is left as it is).
 */
export const target: FuzzTarget<FuzzBase, Uint8Array> = inMemory({
  mutate,
  judge: (_b, report) => ({ outcome: diskOutcome(report) }),
  readAhead: () => 4 << 20,
});
