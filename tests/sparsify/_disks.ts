// Building real disks for the --sparsify tests (not a test file): mke2fs,
// debugfs, dumpe2fs, sfdisk and mkswap on image files (no root needed),
// and loop devices and mounts for the tests that need the kernel. Tests
// needing a tool are skipped with a message when it is missing, except
// under CI (CI=true), where that fails.

import assert from "node:assert";
import { join } from "node:path";
import { mulberry32 } from "../../lib/_prng.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { qemuCheckClean, qemuCompareIdentical } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";

export { patch, readAt } from "../tools/_helpers.ts";

export const KiB = 1024;
export const MiB = 1024 * 1024;

const IN_CI = (Deno.env.get("CI") ?? "") !== "" &&
  Deno.env.get("CI") !== "false";

const found = new Map<string, boolean>();

/** Whether a command can be run (looked up on PATH and in /sbin dirs). */
export function have(cmd: string): boolean {
  let ok = found.get(cmd);
  if (ok === undefined) {
    ok = false;
    for (
      const dir of [
        ...(Deno.env.get("PATH") ?? "").split(":"),
        "/usr/sbin",
        "/sbin",
      ]
    ) {
      try {
        if (dir && Deno.statSync(join(dir, cmd)).isFile) {
          ok = true;
          break;
        }
      } catch {
        // not there
      }
    }
    found.set(cmd, ok);
  }
  return ok;
}

/** Whether loop devices and mounts can be used: root, losetup, /dev/loop-control. */
export function canLoop(): boolean {
  try {
    return Deno.uid() === 0 && have("losetup") && have("mount") &&
      Deno.statSync("/dev/loop-control") !== null;
  } catch {
    return false;
  }
}

const warned = new Set<string>();

/**
 * Registers a test needing `tools` (and loop devices and root when
 * `loop`). Without them it is skipped with a message on stderr, except
 * under CI where it fails.
 */
export function diskTest(
  name: string,
  needs: { tools: string[]; loop?: boolean },
  fn: (t: Deno.TestContext) => Promise<void>,
): void {
  const missing = needs.tools.filter((t) => !have(t));
  if (needs.loop && !canLoop()) missing.push("root with loop devices");
  if (missing.length > 0 && !IN_CI) {
    const key = missing.join(", ");
    if (!warned.has(key)) {
      warned.add(key);
      console.error(
        `${key} not available: skipping the --sparsify tests that need it (apt-get install e2fsprogs fdisk util-linux mount zerofree python3 dosfstools mtools; loop devices need root)`,
      );
    }
    Deno.test({ name, ignore: true, fn });
    return;
  }
  Deno.test(name, async (t) => {
    assert.deepStrictEqual(missing, [], `required under CI: ${missing}`);
    await fn(t);
  });
}

/** Runs a command; returns stdout, throws with stderr on failure. */
export async function sh(
  cmd: string,
  args: string[],
  options: { stdin?: string | Uint8Array; env?: Record<string, string> } = {},
): Promise<string> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: options.stdin !== undefined ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
  }).spawn();
  if (options.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(
      typeof options.stdin === "string"
        ? new TextEncoder().encode(options.stdin)
        : options.stdin,
    );
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  if (!out.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} failed (${out.code}): ${
        dec.decode(out.stderr)
      }`,
    );
  }
  return dec.decode(out.stdout);
}

/** Incompressible bytes from a seed. */
export function noise(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  const next = mulberry32(seed);
  for (let i = 0; i < length; i += 4) {
    const v = next();
    out[i] = v;
    out[i + 1] = v >>> 8;
    out[i + 2] = v >>> 16;
    out[i + 3] = v >>> 24;
  }
  return out;
}

/**
 * Fills `dir` with a tree: files of seeded noise and text (about `bytes`
 * in all), nested directories, a symlink, a hard link, unusual modes.
 * Returns the files of the tree, relative to `dir`.
 */
export async function populate(
  dir: string,
  seed: number,
  bytes: number,
): Promise<string[]> {
  const next = mulberry32(seed);
  const files: string[] = [];
  let left = bytes;
  for (let i = 0; left > 0; i++) {
    const sub = `d${i % 5}/e${i % 3}`;
    await Deno.mkdir(join(dir, sub), { recursive: true });
    const size = Math.min(left, 4096 + (next() % (2 * MiB)));
    const name = `${sub}/f${i}.bin`;
    const data = i % 4 === 0
      ? new TextEncoder().encode(`line ${i}\n`.repeat(Math.ceil(size / 8)))
        .subarray(0, size)
      : noise(size, seed * 1000 + i);
    await Deno.writeFile(join(dir, name), data);
    files.push(name);
    left -= size;
  }
  await Deno.writeTextFile(join(dir, "small.txt"), "tiny\n");
  await Deno.symlink("d0/e0/f0.bin", join(dir, "link-to-f0"));
  await Deno.symlink("missing/target", join(dir, "dangling"));
  await Deno.link(join(dir, "small.txt"), join(dir, "hardlink.txt"));
  await Deno.chmod(join(dir, "small.txt"), 0o640);
  await Deno.chmod(join(dir, "d1"), 0o750);
  return files;
}

/** Makes an ext2/3/4 image file of `size` bytes with mke2fs ARGS, filled from `from`. */
export async function mkfs(
  image: string,
  size: number,
  args: string[],
  from?: string,
): Promise<void> {
  await Deno.remove(image).catch(() => {});
  const f = await Deno.open(image, { create: true, write: true });
  await f.truncate(size);
  f.close();
  await sh("mke2fs", [
    "-q",
    "-F",
    ...args,
    ...(from ? ["-d", from] : []),
    image,
  ]);
}

/** Deletes files inside an ext image with debugfs (their blocks keep their bytes). */
export async function debugfsRm(image: string, paths: string[]): Promise<void> {
  await sh("debugfs", ["-w", "-f", "-", image], {
    stdin: paths.map((p) => `rm /${p}\n`).join(""),
  });
}

/** Runs debugfs commands that write (set_super_value, set_bg, ...) in one session. */
export async function debugfsSet(
  image: string,
  ...commands: string[]
): Promise<void> {
  await sh("debugfs", ["-w", "-f", "-", image], {
    stdin: commands.map((c) => c + "\n").join(""),
  });
}

/** Merges sorted, possibly adjacent ranges. */
export function merge(ranges: FreeRange[]): FreeRange[] {
  const out: FreeRange[] = [];
  for (const r of ranges.toSorted((a, b) => a.offset - b.offset)) {
    const last = out.at(-1);
    if (last && last.offset + last.length === r.offset) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

/**
 * The free blocks of an ext image as dumpe2fs lists them ("Free blocks:"
 * of every group), as merged byte ranges shifted by `base`.
 */
export async function dumpe2fsFree(
  image: string,
  base = 0,
): Promise<FreeRange[]> {
  const text = await sh("dumpe2fs", [image]);
  const bs = Number(/^Block size:\s+(\d+)$/m.exec(text)![1]);
  const ranges: FreeRange[] = [];
  for (const m of text.matchAll(/^\s+Free blocks: (.*)$/gm)) {
    for (const part of m[1].split(",").map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split("-").map(Number);
      ranges.push({ offset: base + a * bs, length: ((b ?? a) - a + 1) * bs });
    }
  }
  return merge(ranges);
}

/** Copies file `from` into `disk` at byte `offset` (no root: plain file writes). */
export async function writeInto(
  disk: string,
  offset: number,
  from: string,
): Promise<void> {
  using out = await Deno.open(disk, { write: true });
  using src = await Deno.open(from, { read: true });
  await out.seek(offset, Deno.SeekMode.Start);
  await src.readable.pipeTo(out.writable, { preventClose: true });
}

/** Partitions of a disk image as sfdisk reads them, in bytes. */
export async function sfdiskParts(
  disk: string,
): Promise<Array<{ offset: number; length: number; type: string }>> {
  const json = JSON.parse(await sh("sfdisk", ["-J", disk]));
  const ss = json.partitiontable.sectorsize ?? 512;
  return json.partitiontable.partitions.map((
    p: { start: number; size: number; type: string },
  ) => ({ offset: p.start * ss, length: p.size * ss, type: p.type }));
}

/** Makes a sparse file of `size` bytes. */
export async function blank(path: string, size: number): Promise<void> {
  using f = await Deno.open(path, {
    create: true,
    write: true,
    truncate: true,
  });
  await f.truncate(size);
}

/** Whether every range of `inner` lies inside the union of `outer`. */
export function within(inner: FreeRange[], outer: FreeRange[]): boolean {
  const o = merge(outer);
  let k = 0;
  for (const r of merge(inner)) {
    while (k < o.length && o[k].offset + o[k].length <= r.offset) k++;
    if (
      k === o.length || o[k].offset > r.offset ||
      o[k].offset + o[k].length < r.offset + r.length
    ) return false;
  }
  return true;
}

/** A disk built from image files: its path and partitions. */
export interface BuiltDisk {
  path: string;
  parts: Array<{ offset: number; length: number; type: string }>;
  /** What should read as zeros, by dumpe2fs and the swap layout (not our code). */
  free: FreeRange[];
}

/**
 * A disk with a partition table (`label: gpt` or `label: dos`) holding an
 * ext4 filled and with files deleted, a swap partition whose pages hold old
 * bytes, and a partition of noise that no module maps. Built with sfdisk,
 * mke2fs, debugfs and mkswap on files (no root).
 */
export async function buildDisk(
  dir: string,
  label: "gpt" | "dos",
  size = 96 * MiB,
): Promise<BuiltDisk> {
  const path = join(dir, `${label}.img`);
  await blank(path, size);
  const script = label === "gpt"
    ? "label: gpt\n,48M,L\n,16M,S\n,8M,L\n"
    : "label: dos\n,48M,83\n,,E\n,16M,82\n,8M,83\n";
  await sh("sfdisk", ["-q", path], { stdin: script });
  const parts = (await sfdiskParts(path)).filter((p) => p.type !== "5");
  const tree = join(dir, "tree");
  const files = await populate(tree, 3, 24 * MiB);
  const fs = join(dir, "p1.img");
  await mkfs(fs, parts[0].length, ["-t", "ext4", "-b", "4096"], tree);
  await debugfsRm(fs, files.filter((_, i) => i % 3 !== 0));
  await writeInto(path, parts[0].offset, fs);
  const free = await dumpe2fsFree(fs, parts[0].offset);
  await Deno.remove(fs);
  free.push({ offset: parts[1].offset + 4096, length: parts[1].length - 4096 });
  const swap = join(dir, "p2.img");
  await Deno.writeFile(swap, noise(parts[1].length, 99));
  await sh("mkswap", ["-q", "-L", "old-swap", swap]);
  await writeInto(path, parts[1].offset, swap);
  await Deno.remove(swap);
  const rest = join(dir, "p3.img");
  await Deno.writeFile(rest, noise(parts[2].length, 5));
  await writeInto(path, parts[2].offset, rest);
  await Deno.remove(rest);
  await Deno.remove(tree, { recursive: true });
  return { path, parts, free };
}

/** Writes `src` with `ranges` zeroed to `dst`: what a sparsified disk should read as. */
export async function zeroed(
  src: string,
  dst: string,
  ranges: FreeRange[],
): Promise<void> {
  await Deno.copyFile(src, dst);
  using f = await Deno.open(dst, { write: true });
  const zeros = new Uint8Array(MiB);
  for (const r of ranges) {
    await f.seek(r.offset, Deno.SeekMode.Start);
    for (let left = r.length; left > 0; left -= zeros.length) {
      await f.write(zeros.subarray(0, Math.min(left, zeros.length)));
    }
  }
}

/** An inode in use and the blocks it uses, as debugfs lists them. */
export interface LiveInode {
  ino: number;
  /** `[first, last]` block ranges: data, extent tree, indirect and attribute blocks. */
  blocks: Array<[number, number]>;
}

/**
 * Every inode of an ext image that is in use (marked in its inode bitmap,
 * or with links), with every block `debugfs stat` lists for it (data,
 * ETB, IND/DIND/TIND) and its attribute block. Independent of our code.
 */
export async function liveInodes(
  image: string,
): Promise<{ blockSize: number; inodes: LiveInode[] }> {
  const head = await sh("dumpe2fs", ["-h", image]);
  const count = Number(/^Inode count:\s+(\d+)$/m.exec(head)![1]);
  const blockSize = Number(/^Block size:\s+(\d+)$/m.exec(head)![1]);
  const script = Array.from(
    { length: count },
    (_, i) => `testi <${i + 1}>\nstat <${i + 1}>\n`,
  ).join("");
  const out = await sh("debugfs", ["-f", "-", image], { stdin: script });
  const inodes: LiveInode[] = [];
  for (const chunk of out.split("debugfs: testi <").slice(1)) {
    const ino = Number(/^(\d+)>/.exec(chunk)![1]);
    const links = Number(/Links: (\d+)/.exec(chunk)?.[1] ?? 0);
    if (!/is marked in use/.test(chunk) && links === 0) continue;
    const blocks: Array<[number, number]> = [];
    const map = /\n(?:BLOCKS|EXTENTS):\n([^]*?)(?:\nTOTAL|\n\n|$)/.exec(chunk);
    for (
      const m of (map?.[1] ?? "").matchAll(
        /\([^)]*\)(?:\[[^\]]*\])?:(\d+)(?:-(\d+))?/g,
      )
    ) {
      blocks.push([Number(m[1]), Number(m[2] ?? m[1])]);
    }
    const acl = Number(/File ACL: (\d+)/.exec(chunk)?.[1] ?? 0);
    if (acl !== 0) blocks.push([acl, acl]);
    if (blocks.length > 0) inodes.push({ ino, blocks });
  }
  return { blockSize, inodes };
}

/** The blocks debugfs lists for one path (`stat`): `[first, last]` ranges and kinds. */
export async function blocksOf(
  image: string,
  path: string,
): Promise<Array<{ kind: string; first: number; last: number }>> {
  const out = await sh("debugfs", ["-R", `stat ${path}`, image]);
  const map = /\n(?:BLOCKS|EXTENTS):\n([^]*?)(?:\nTOTAL|\n\n|$)/.exec(out);
  const found = [];
  for (
    const m of (map?.[1] ?? "").matchAll(
      /\(([^)]*)\)(?:\[[^\]]*\])?:(\d+)(?:-(\d+))?/g,
    )
  ) {
    const kind = /^[A-Z]/.test(m[1]) ? m[1] : "data";
    found.push({ kind, first: Number(m[2]), last: Number(m[3] ?? m[2]) });
  }
  const acl = Number(/File ACL: (\d+)/.exec(out)?.[1] ?? 0);
  if (acl !== 0) found.push({ kind: "ACL", first: acl, last: acl });
  return found;
}

/**
 * Makes an ext image's metadata call blocks free as an attacker would:
 * the bits cleared in the block bitmaps (debugfs recomputes their
 * checksums), then every group's free count set to its bitmap's zero bits
 * and the superblock's to their sum, descriptor and superblock checksums
 * recomputed. e2fsck would find the blocks in use by their inodes; the
 * counts and checksums all agree.
 */
export async function freeAsAttacker(
  image: string,
  ranges: Array<[number, number]>,
): Promise<void> {
  await debugfsSet(
    image,
    ...ranges.map(([first, last]) => `freeb ${first} ${last - first + 1}`),
  );
  await fixFreeCounts(image);
}

/**
 * Sets every group's free block count to its bitmap's zero bits and the
 * superblock's to their sum, with their checksums (what an attacker does
 * after editing a bitmap).
 */
export async function fixFreeCounts(image: string): Promise<void> {
  const text = await sh("dumpe2fs", [image]);
  const commands: string[] = [];
  let total = 0;
  for (
    const m of text.matchAll(
      /^Group (\d+):[^]*?^\s+(\d+) free blocks,[^]*?^\s+Free blocks: (.*)$/gm,
    )
  ) {
    let free = 0;
    for (const part of m[3].split(",").map((s) => s.trim()).filter(Boolean)) {
      const [a, b] = part.split("-").map(Number);
      free += (b ?? a) - a + 1;
    }
    total += free;
    if (free !== Number(m[2])) {
      commands.push(
        `set_bg ${m[1]} free_blocks_count ${free}`,
        `set_bg ${m[1]} checksum calc`,
      );
    }
  }
  commands.push(`ssv free_blocks_count ${total}`);
  await debugfsSet(image, ...commands);
}

const CRC32C_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  return c >>> 0;
});

/** CRC-32C continued from `crc`, without inversions (ext4's chaining form); the tests' own. */
function crc32c(crc: number, bytes: Uint8Array): number {
  let c = crc >>> 0;
  for (const b of bytes) c = CRC32C_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/**
 * Recomputes, as an attacker would after editing geometry, every checksum
 * of an ext4 with metadata_csum (no meta_bg) from its current bytes: each
 * block bitmap's (over `s_blocks_per_group / 8` bytes), each group
 * descriptor's, then the superblock's.
 */
export async function fixExtChecksums(image: string): Promise<void> {
  const bytes = await Deno.readFile(image);
  const sb = new DataView(bytes.buffer, 1024, 1024);
  const blockSize = 1024 << sb.getUint32(0x18, true);
  const bpg = sb.getUint32(0x20, true);
  const blocks = sb.getUint32(0x04, true) +
    (sb.getUint32(0x60, true) & 0x80 ? sb.getUint32(0x150, true) * 2 ** 32 : 0);
  const first = sb.getUint32(0x14, true);
  const groups = Math.ceil((blocks - first) / bpg);
  const descSize = sb.getUint32(0x60, true) & 0x80
    ? sb.getUint16(0xfe, true)
    : 32;
  const seed = sb.getUint32(0x60, true) & 0x2000
    ? sb.getUint32(0x270, true)
    : crc32c(0xffffffff, bytes.subarray(1024 + 0x68, 1024 + 0x78));
  const gdt = (first + 1) * blockSize;
  for (let g = 0; g < groups; g++) {
    const at = gdt + g * descSize;
    const d = new DataView(bytes.buffer, at, descSize);
    const bitmap = d.getUint32(0, true) +
      (descSize >= 64 ? d.getUint32(0x20, true) * 2 ** 32 : 0);
    const bits = bytes.subarray(
      bitmap * blockSize,
      bitmap * blockSize + bpg / 8,
    );
    const c = crc32c(seed, bits);
    d.setUint16(0x18, c & 0xffff, true);
    if (descSize >= 64) d.setUint16(0x38, c >>> 16, true);
    const le = new Uint8Array(4);
    new DataView(le.buffer).setUint32(0, g, true);
    let x = crc32c(seed, le);
    x = crc32c(x, bytes.subarray(at, at + 0x1e));
    x = crc32c(x, new Uint8Array(2));
    if (descSize > 32) x = crc32c(x, bytes.subarray(at + 0x20, at + descSize));
    d.setUint16(0x1e, x & 0xffff, true);
  }
  sb.setUint32(
    0x3fc,
    crc32c(0xffffffff, bytes.subarray(1024, 1024 + 0x3fc)),
    true,
  );
  await Deno.writeFile(image, bytes);
}

// ---------------------------------------------------------------------------
// Old bytes, loop devices and mounts, and the untouched check

/** Fills `length` bytes of `disk` at `offset` with old bytes: one seeded MiB, repeated. */
export async function fillNoise(
  disk: string,
  offset: number,
  length: number,
  seed: number,
): Promise<void> {
  using f = await Deno.open(disk, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  const chunk = noise(MiB, seed);
  for (let done = 0; done < length;) {
    done += await f.write(chunk.subarray(0, Math.min(MiB, length - done)));
  }
}

/** A loop device over `length` bytes of `file` at `offset`, detached on dispose. */
export async function loop(
  file: string,
  offset: number,
  length: number,
  readOnly = false,
): Promise<{ dev: string } & AsyncDisposable> {
  const dev = (await sh("losetup", [
    "-f",
    "--show",
    ...(readOnly ? ["-r"] : []),
    "-o",
    String(offset),
    "--sizelimit",
    String(length),
    file,
  ])).trim();
  return {
    dev,
    async [Symbol.asyncDispose]() {
      await sh("losetup", ["-d", dev]).catch(() => {});
    },
  };
}

/** Mounts `dev` (of filesystem `type` when given) on `dir`; unmounted on dispose. */
export async function mount(
  dev: string,
  dir: string,
  options: string,
  type?: string,
): Promise<AsyncDisposable> {
  await Deno.mkdir(dir, { recursive: true });
  await sh("mount", [...(type ? ["-t", type] : []), "-o", options, dev, dir]);
  return {
    async [Symbol.asyncDispose]() {
      await sh("umount", [dir]).catch(() => {});
    },
  };
}

/**
 * Every extended attribute under a directory (symlinks not followed), as
 * text, through Python (Deno has no xattr calls).
 */
const LIST_XATTRS = `
import os, sys
root = sys.argv[1]
for base, dirs, files in os.walk(root):
    dirs.sort()
    for name in [base] + sorted(os.path.join(base, f) for f in files + dirs):
        for attr in sorted(os.listxattr(name, follow_symlinks=False)):
            value = os.getxattr(name, attr, follow_symlinks=False)
            print(os.path.relpath(name, root), attr, value.hex())
`;

/**
 * The tree of a mount as text: paths, types, modes, owners, sizes, link
 * targets, sorted; then, with `xattrs`, every extended attribute.
 */
export async function listing(
  dir: string,
  options: { xattrs?: boolean } = {},
): Promise<string> {
  const find = await sh("find", [dir, "-printf", "%P %y %m %U %G %s %l\\n"]);
  const lines = find.trim().split("\n").sort().join("\n");
  if (!options.xattrs) return lines;
  return lines + "\n" + await sh("python3", ["-c", LIST_XATTRS, dir]);
}

/**
 * Converts `src` with `--sparsify --compress zstd` and checks that nothing
 * was dropped: exactly one stderr line says a region was left as it is,
 * naming `found` (`btrfs`) when given and matching `reason`; the report
 * ends with 0 B dropped; qemu-img finds the image clean and identical to
 * the source.
 */
export async function expectUntouched(
  dir: string,
  src: string,
  reason: RegExp,
  found?: string,
): Promise<void> {
  const dst = join(dir, "out.qcow2");
  const r = await runCli([
    "convert",
    "--verbose",
    "--sparsify",
    "--compress",
    "zstd",
    src,
    dst,
  ]);
  assert.strictEqual(r.code, 0, r.stderr);
  const lines = r.stderr.trimEnd().split("\n");
  const refused = lines.filter((l) => l.includes("left as it is"));
  assert.strictEqual(refused.length, 1, r.stderr);
  if (found) {
    assert.ok(refused[0].includes(`: ${found} left as it is: `), refused[0]);
  }
  assert.match(refused[0], reason);
  // The report, then the summary line of every conversion.
  assert.match(lines.at(-2)!, /: 0 B dropped as free space$/);
  assert.match(lines.at(-1)!, /^qcow2pipe: wrote /);
  await qemuCheckClean(dst);
  await qemuCompareIdentical(src, dst);
}
