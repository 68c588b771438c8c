/**
 * The directory tree, walked from the root as the independent check of the
 * FAT: every cluster that a live directory entry reaches must be in range,
 * marked in use in the FAT, and in no other chain; a file's chain must
 * cover its size. A reader follows a chain from the entry's first cluster
 * without asking the FAT whether that cluster is free, so a file whose
 * clusters the FAT calls free would still be read by a guest: any such
 * entry leaves the volume as it is, naming the path.
 *
 * ```text
 * directory entry (32 bytes):
 *  0 name (8 + 3; 0x00 never used, 0xe5 deleted, 0x05 = a name starting 0xe5)
 *  11 attributes: 0x01 read-only 0x02 hidden 0x04 system 0x08 volume label
 *     0x10 directory 0x20 archive; (attr & 0x3f) == 0x0f: a long-name entry
 *  12 case flags (0x08 base, 0x10 extension in lower case)
 *  20 first cluster, high 16 bits (FAT32)   26 first cluster, low 16 bits
 *  28 file size (u32)
 * long-name entry: 0 sequence (0x40 = last), 1/14/28 UTF-16 name parts
 *  (5 + 6 + 2 units), 13 checksum of the short name
 * ```
 *
 * Bounds: each cluster is claimed once, so no directory cluster is read
 * twice and the entries read are at most the volume's data size / 32; a
 * directory holds at most 65536 entries (2 MiB); the tree is at most
 * {@linkcode MAX_DEPTH} deep, and the clusters held at once (one per level)
 * stay within {@linkcode MAX_HELD_BYTES}.
 *
 * Linux reads past an entry starting 0x00, which the specification calls
 * the end of the directory; a live entry after one is refused, since the
 * two readers would see different trees.
 *
 * @module
 */

import { Refusal, type RegionReader } from "../_region.ts";
import {
  clusterOffset,
  DIR_ENTRY_BYTES,
  type FatVolume,
  FIRST_CLUSTER,
  rootDirOffset,
} from "./boot.ts";
import { BAD_CLUSTER, END_OF_CHAIN, type FatTable } from "./table.ts";

/** Most levels of directories below the root. */
export const MAX_DEPTH = 128;
/** Most bytes of directory held at once (one cluster per open level). */
export const MAX_HELD_BYTES = 32 * 1024 * 1024;
/** Most bytes of one directory (65536 entries). */
export const MAX_DIR_BYTES = 65536 * DIR_ENTRY_BYTES;

/** Attribute bits. */
export const ATTR = {
  VOLUME: 0x08,
  DIRECTORY: 0x10,
  LONG_NAME_MASK: 0x3f,
  LONG_NAME: 0x0f,
} as const;
/** First name byte of a deleted entry. */
const DELETED = 0xe5;
/** First name byte standing for 0xe5 in a live name. */
const KANJI_E5 = 0x05;
/** Offsets of the UTF-16 units of a long-name entry. */
const LFN_UNITS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/** Long-name entries of one name at most (255 characters). */
const LFN_MAX_ENTRIES = 20;
/** Characters of a path shown in a message (its end is kept). */
const PATH_SHOWN = 240;

/** What the walk found. */
export interface TreeCount {
  directories: number;
  files: number;
}

/** A live short entry of a directory. */
interface DirEntry {
  /** Long name when a valid one precedes it, else the short name. */
  name: string;
  /** The 11 raw name bytes. */
  raw: string;
  attr: number;
  cluster: number;
  size: number;
}

function shortName(e: Uint8Array): string {
  const chars = [...e.subarray(0, 11)];
  if (chars[0] === KANJI_E5) chars[0] = DELETED;
  const text = (bytes: number[], lower: boolean) => {
    const s = String.fromCharCode(...bytes).trimEnd();
    return lower ? s.toLowerCase() : s;
  };
  const base = text(chars.slice(0, 8), (e[12] & 0x08) !== 0);
  const ext = text(chars.slice(8, 11), (e[12] & 0x10) !== 0);
  return ext ? `${base}.${ext}` : base;
}

function shortChecksum(e: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) {
    sum = (((sum & 1) << 7) + (sum >> 1) + e[i]) & 0xff;
  }
  return sum;
}

/** Long-name entries seen so far, waiting for their short entry. */
class LongName {
  #parts: string[] = [];
  #next = 0;
  #checksum = -1;

  reset(): void {
    this.#next = 0;
    this.#checksum = -1;
  }

  add(e: Uint8Array): void {
    const seq = e[0] & 0x1f;
    if (e[0] & 0x40) {
      if (seq === 0 || seq > LFN_MAX_ENTRIES) return this.reset();
      this.#parts = new Array(seq).fill("");
      this.#checksum = e[13];
    } else if (seq !== this.#next || e[13] !== this.#checksum) {
      return this.reset();
    }
    let s = "";
    for (const at of LFN_UNITS) {
      const unit = e[at] | e[at + 1] << 8;
      if (unit === 0 || unit === 0xffff) break;
      s += String.fromCharCode(unit);
    }
    this.#parts[seq - 1] = s;
    this.#next = seq - 1;
  }

  /** The long name of short entry `e`, if the entries before it spell one. */
  take(e: Uint8Array): string | undefined {
    const ok = this.#checksum >= 0 && this.#next === 0 &&
      this.#checksum === shortChecksum(e);
    this.reset();
    return ok ? this.#parts.join("") : undefined;
  }
}

/** A directory being read: where its bytes are. */
interface Dir {
  path: string;
  /** First cluster; 0 for the FAT12/16 root. */
  start: number;
  /** The directory whose entry this is (0 for the root and its children). */
  parent: number;
}

/**
 * The live short entries of a directory, in order, its bytes read one
 * cluster at a time (the fixed root in pieces of a cluster).
 */
async function* entries(
  region: RegionReader,
  vol: FatVolume,
  fat: FatTable,
  dir: Dir,
): AsyncGenerator<DirEntry> {
  const lfn = new LongName();
  const eoc = END_OF_CHAIN[vol.type];
  let ended = false;
  let index = 0;
  const parse = function* (block: Uint8Array): Generator<DirEntry> {
    for (let at = 0; at < block.length; at += DIR_ENTRY_BYTES, index++) {
      const e = block.subarray(at, at + DIR_ENTRY_BYTES);
      const attr = e[11];
      const longName = (attr & ATTR.LONG_NAME_MASK) === ATTR.LONG_NAME;
      if (e[0] === 0) {
        ended = true;
        lfn.reset();
        continue;
      }
      if (e[0] === DELETED) {
        lfn.reset();
        continue;
      }
      if (longName) {
        lfn.add(e);
        continue;
      }
      const name = lfn.take(e) ?? shortName(e);
      if (ended) {
        throw new Refusal(
          `entry ${index} of directory ${dir.path} ("${name}") follows the end-of-directory mark (Linux reads it, other readers do not)`,
        );
      }
      const v = new DataView(e.buffer, e.byteOffset, DIR_ENTRY_BYTES);
      const hi = vol.type === 32 ? v.getUint16(20, true) : 0;
      yield {
        name,
        raw: String.fromCharCode(...e.subarray(0, 11)),
        attr,
        cluster: hi * 0x10000 + v.getUint16(26, true),
        size: v.getUint32(28, true),
      };
    }
  };
  if (dir.start === 0) {
    const base = rootDirOffset(vol);
    const total = vol.rootDirSectors * vol.bytesPerSector;
    for (let at = 0; at < total; at += vol.clusterSize) {
      const n = Math.min(vol.clusterSize, total - at);
      yield* parse(
        await region.read(
          base + at,
          n,
          `root directory (bytes ${base + at}-${base + at + n - 1})`,
        ),
      );
    }
    return;
  }
  // The chain was followed and claimed before: every link is valid.
  for (let c = dir.start; c < eoc; c = fat.entry(c)) {
    yield* parse(
      await region.read(
        clusterOffset(vol, c),
        vol.clusterSize,
        `directory ${dir.path} (cluster ${c})`,
      ),
    );
  }
}

/**
 * Walks the tree from the root and claims every cluster a live entry
 * reaches.
 *
 * @param region The volume.
 * @param vol Its geometry.
 * @param fat The checked FAT.
 * @returns How many directories and files were found.
 * @throws {Refusal} Naming the path, for a cluster out of range, marked
 * free or bad, or in two chains (a cross-link or a directory loop); a
 * chain shorter than its file; a directory over 2 MiB or too deep; `.` or
 * `..` pointing elsewhere; a live entry after the end mark.
 */
export async function walkTree(
  region: RegionReader,
  vol: FatVolume,
  fat: FatTable,
): Promise<TreeCount> {
  const last = vol.clusters + FIRST_CLUSTER - 1;
  const claimed = new Uint8Array(Math.ceil((last + 1) / 8));
  const eoc = END_OF_CHAIN[vol.type];
  const bad = BAD_CLUSTER[vol.type];
  const dirClusters = Math.ceil(MAX_DIR_BYTES / vol.clusterSize);
  const maxDepth = Math.min(
    MAX_DEPTH,
    Math.floor(MAX_HELD_BYTES / vol.clusterSize) - 1,
  );
  const count: TreeCount = { directories: 0, files: 0 };

  /** Claims the chain from `start`; returns its length in clusters. */
  const claim = (start: number, what: string, limit: number): number => {
    let c = start;
    for (let n = 1;; n++) {
      const at = n === 1 ? `starts at cluster ${c}` : `has cluster ${c}`;
      if (c < FIRST_CLUSTER || c > last) {
        throw new Refusal(
          `${what} ${at}, outside clusters ${FIRST_CLUSTER}-${last}`,
        );
      }
      if (claimed[c >> 3] & (1 << (c & 7))) {
        throw new Refusal(
          `${what} ${at}, which is in another chain too (cross-linked, or a directory loop)`,
        );
      }
      claimed[c >> 3] |= 1 << (c & 7);
      const next = fat.entry(c);
      if (next === 0) {
        throw new Refusal(`${what} ${at}, which the FAT marks free`);
      }
      if (next === bad) {
        throw new Refusal(`${what} ${at}, which the FAT marks bad`);
      }
      if (next >= eoc) return n;
      if (n >= limit) {
        throw new Refusal(
          `${what} has more than ${limit} clusters (a directory holds at most ${MAX_DIR_BYTES} bytes)`,
        );
      }
      c = next;
    }
  };

  const root: Dir = { path: "/", start: vol.rootCluster, parent: 0 };
  if (vol.type === 32) claim(root.start, "root directory", dirClusters);
  const stack = [{ dir: root, list: entries(region, vol, fat, root) }];
  while (stack.length > 0) {
    const { dir, list } = stack.at(-1)!;
    const next = await list.next();
    if (next.done) {
      stack.pop();
      continue;
    }
    const e = next.value;
    const isRoot = dir === root;
    let path = `${isRoot ? "" : dir.path}/${e.name}`;
    if (path.length > PATH_SHOWN) path = `…${path.slice(-PATH_SHOWN)}`;
    if (e.raw === ".          " || e.raw === "..         ") {
      const dot = e.raw[1] === " " ? "." : "..";
      const target = dot === "." ? (isRoot ? 0 : dir.start) : dir.parent;
      const fine = target === 0
        ? e.cluster === 0 || e.cluster === vol.rootCluster
        : e.cluster === target;
      if (!fine) {
        throw new Refusal(
          `"${dot}" in directory ${dir.path} points at cluster ${e.cluster}, not ${
            target === 0 ? "the root" : `cluster ${target}`
          }`,
        );
      }
      continue;
    }
    if (e.attr & ATTR.VOLUME) {
      if (e.cluster !== 0) {
        throw new Refusal(
          `volume label entry ${path} points at cluster ${e.cluster}`,
        );
      }
      continue;
    }
    if (e.attr & ATTR.DIRECTORY) {
      if (e.cluster === 0) {
        throw new Refusal(`directory ${path} has no first cluster`);
      }
      if (stack.length > maxDepth) {
        throw new Refusal(
          `directory ${path} is more than ${maxDepth} levels deep`,
        );
      }
      claim(e.cluster, `directory ${path}`, dirClusters);
      count.directories++;
      const sub: Dir = {
        path,
        start: e.cluster,
        parent: isRoot ? 0 : dir.start,
      };
      stack.push({ dir: sub, list: entries(region, vol, fat, sub) });
      continue;
    }
    count.files++;
    if (e.cluster === 0) {
      if (e.size !== 0) {
        throw new Refusal(
          `file ${path} of ${e.size} bytes has no first cluster`,
        );
      }
      continue;
    }
    const n = claim(e.cluster, `file ${path}`, Infinity);
    const need = Math.ceil(e.size / vol.clusterSize);
    if (n < need) {
      throw new Refusal(
        `file ${path} of ${e.size} bytes needs ${need} clusters, its chain has ${n}`,
      );
    }
  }
  return count;
}
