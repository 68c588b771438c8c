// Building real NTFS volumes for the --sparsify tests (not a test file):
// mkntfs on image files, filled and with files deleted through an ntfs-3g
// FUSE mount (there is no tool that deletes a file from an unmounted NTFS
// image), and what ntfs-3g's own tools say about them: the free clusters
// by `ntfscat -i 6` ($Bitmap's data, read by ntfs-3g), data runs by
// `ntfsinfo -v`. Tests needing FUSE are skipped with a message when
// /dev/fuse or root is missing, except under CI, where that fails.

import assert from "node:assert";
import { join } from "node:path";
import { IN_CI } from "../_qemu.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import {
  blank,
  diskTest,
  merge,
  MiB,
  patch,
  populate,
  readAt,
  sh,
} from "./_disks.ts";

/** The ntfs-3g tools the NTFS tests run (Debian package ntfs-3g). */
export const NTFS_TOOLS = [
  "mkntfs",
  "ntfs-3g",
  "ntfsfix",
  "ntfsinfo",
  "ntfscat",
  "ntfscp",
];

/** Whether ntfs-3g can mount here: root and a /dev/fuse character device. */
export function canFuse(): boolean {
  try {
    return Deno.uid() === 0 && Deno.statSync("/dev/fuse").isCharDevice === true;
  } catch {
    return false;
  }
}

let warnedFuse = false;

/**
 * Registers a test needing `tools` and an ntfs-3g FUSE mount: skipped with
 * a message when FUSE is missing (failed under CI), as diskTest does for
 * tools.
 */
export function ntfsTest(
  name: string,
  tools: string[],
  fn: (t: Deno.TestContext) => Promise<void>,
): void {
  if (!canFuse() && !IN_CI) {
    if (!warnedFuse) {
      warnedFuse = true;
      console.error(
        "/dev/fuse or root not available: skipping the NTFS --sparsify tests (ntfs-3g fills and deletes through a FUSE mount)",
      );
    }
    Deno.test({ name, ignore: true, fn });
    return;
  }
  diskTest(name, { tools: [...NTFS_TOOLS, ...tools] }, async (t) => {
    assert.ok(canFuse(), "root and /dev/fuse are required under CI");
    await fn(t);
  });
}

/** An ntfs-3g mount of an image file, unmounted on dispose. */
export async function ntfsMount(
  image: string,
  dir: string,
  readOnly = false,
): Promise<AsyncDisposable> {
  await Deno.mkdir(dir, { recursive: true });
  await sh("ntfs-3g", [...(readOnly ? ["-o", "ro"] : []), image, dir]);
  return {
    async [Symbol.asyncDispose]() {
      await sh("umount", [dir]);
    },
  };
}

/** What a filled NTFS holds: files kept and deleted, relative to its root. */
export interface NtfsContent {
  kept: string[];
  deleted: string[];
  /** A file with so many hard links that ntfs-3g gives it an attribute list. */
  linked: string;
}

/**
 * Makes an NTFS image file of `size` bytes (mkntfs -f, options `args`),
 * fills it through a FUSE mount with about `bytes` of seeded files under
 * `data/`, a file with 60 hard links, then deletes two thirds of the files
 * (their clusters keep the bytes).
 */
export async function makeNtfs(
  image: string,
  size: number,
  options: { args?: string[]; seed: number; bytes: number },
): Promise<NtfsContent> {
  await blank(image, size);
  await sh("mkntfs", ["-f", "-F", "-q", ...(options.args ?? []), image]);
  const mnt = `${image}.mnt`;
  const files = [];
  {
    await using _m = await ntfsMount(image, mnt);
    files.push(
      ...(await populate(join(mnt, "data"), options.seed, options.bytes))
        .map((f) => `data/${f}`),
    );
    await Deno.writeFile(
      join(mnt, "linked.bin"),
      new Uint8Array(300_000).fill(0x6c),
    );
    for (let i = 0; i < 60; i++) {
      await Deno.link(
        join(mnt, "linked.bin"),
        join(mnt, `linked-with-a-long-name-to-fill-the-record-${i}.bin`),
      );
    }
    for (const [i, f] of files.entries()) {
      if (i % 3 !== 0) await Deno.remove(join(mnt, f));
    }
  }
  await Deno.remove(mnt);
  return {
    kept: files.filter((_, i) => i % 3 === 0),
    deleted: files.filter((_, i) => i % 3 !== 0),
    linked: "linked.bin",
  };
}

/** ntfsinfo's dump of an inode (`-i N`) or a path (`-F path`), verbose. */
export function ntfsInfo(
  image: string,
  which: number | string,
): Promise<string> {
  return sh("ntfsinfo", [
    ...(typeof which === "number" ? ["-i", String(which)] : ["-F", which]),
    "-v",
    image,
  ]);
}

/** A run as ntfsinfo prints it. */
export interface NtfsRun {
  vcn: number;
  lcn: number;
  length: number;
}

/** The runs ntfsinfo lists for the attribute `name` (`$DATA`) of an inode dump. */
export function runsIn(dump: string, name: string): NtfsRun[] {
  const part = dump.split(/^Dumping attribute /m)
    .find((p) => p.startsWith(`${name} `));
  assert.ok(part, `ntfsinfo shows ${name}`);
  const runs: NtfsRun[] = [];
  for (
    const m of part.matchAll(
      /^\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+|<HOLE>)\s+(0x[0-9a-f]+)$/gm,
    )
  ) {
    runs.push({
      vcn: Number(m[1]),
      lcn: m[2] === "<HOLE>" ? -1 : Number(m[2]),
      length: Number(m[3]),
    });
  }
  return runs;
}

/** The inode number of a dump (`Dumping Inode 67`). */
export function inodeOf(dump: string): number {
  return Number(/^Dumping Inode (\d+)/m.exec(dump)![1]);
}

/** Cluster size and count by `ntfsinfo -m`. */
export async function ntfsGeometry(
  image: string,
): Promise<{ clusterSize: number; clusters: number; recordSize: number }> {
  const text = await sh("ntfsinfo", ["-m", image]);
  const num = (re: RegExp) => Number(re.exec(text)![1]);
  return {
    clusterSize: num(/Cluster Size: (\d+)/),
    clusters: num(/Volume Size in Clusters: (\d+)/),
    recordSize: num(/MFT Record Size: (\d+)/),
  };
}

/**
 * The free clusters of an NTFS image by ntfs-3g (`ntfscat -i 6`: the bits
 * of $Bitmap), as merged byte ranges shifted by `base`.
 */
export async function ntfsFree(image: string, base = 0): Promise<FreeRange[]> {
  const { clusterSize, clusters } = await ntfsGeometry(image);
  const out = await new Deno.Command("ntfscat", {
    args: ["-i", "6", image],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const bits = out.stdout;
  const ranges: FreeRange[] = [];
  for (let c = 0; c < clusters; c++) {
    if (!(bits[c >> 3] & (1 << (c & 7)))) {
      ranges.push({ offset: base + c * clusterSize, length: clusterSize });
    }
  }
  return merge(ranges);
}

/** Disk offset of MFT record `n`, through $MFT's runs as ntfsinfo lists them. */
export async function recordOffset(image: string, n: number): Promise<number> {
  const { clusterSize, recordSize } = await ntfsGeometry(image);
  const at = n * recordSize;
  for (const r of runsIn(await ntfsInfo(image, 0), "$DATA")) {
    if (at >= r.vcn * clusterSize && at < (r.vcn + r.length) * clusterSize) {
      return r.lcn * clusterSize + at - r.vcn * clusterSize;
    }
  }
  throw new Error(`MFT record ${n} is not in $MFT's runs`);
}

/**
 * Overwrites bytes of the MFT record at disk offset `record` as a writer
 * would: a byte that falls on a stride's last two bytes goes to the update
 * sequence array, so that the record still reads back correctly.
 */
export async function patchRecord(
  image: string,
  record: number,
  offset: number,
  bytes: Uint8Array,
): Promise<void> {
  const head = await readAt(image, record, 8);
  const usaOfs = head[4] | (head[5] << 8);
  for (let i = 0; i < bytes.length; i++) {
    const at = offset + i;
    const stride = at >> 9;
    const inStride = at & 511;
    const dst = inStride >= 510
      ? record + usaOfs + 2 * (stride + 1) + (inStride - 510)
      : record + at;
    await patch(image, dst, bytes.subarray(i, i + 1));
  }
}

/** Reads an MFT record and undoes its fixups (the test's own reading). */
export async function readRecord(
  image: string,
  record: number,
  size: number,
): Promise<Uint8Array> {
  const rec = await readAt(image, record, size);
  const usaOfs = rec[4] | (rec[5] << 8);
  for (let s = 0; s < size / 512; s++) {
    rec[s * 512 + 510] = rec[usaOfs + 2 * (s + 1)];
    rec[s * 512 + 511] = rec[usaOfs + 2 * (s + 1) + 1];
  }
  return rec;
}

/** Offset in a record (fixups undone) of the first attribute of `type`. */
export function attributeAt(rec: Uint8Array, type: number): number {
  const view = new DataView(rec.buffer, rec.byteOffset, rec.length);
  let at = view.getUint16(0x14, true);
  while (view.getUint32(at, true) !== 0xffffffff) {
    if (view.getUint32(at, true) === type) return at;
    at += view.getUint32(at + 4, true);
  }
  throw new Error(`no attribute of type ${type.toString(16)}`);
}

/** Copies `length` bytes of `disk` at `offset` to the file `to`. */
export async function extract(
  disk: string,
  offset: number,
  length: number,
  to: string,
): Promise<void> {
  using src = await Deno.open(disk, { read: true });
  using dst = await Deno.open(to, {
    write: true,
    create: true,
    truncate: true,
  });
  await src.seek(offset, Deno.SeekMode.Start);
  const buf = new Uint8Array(4 * MiB);
  for (let left = length; left > 0;) {
    const n = await src.read(buf.subarray(0, Math.min(left, buf.length)));
    assert.ok(n !== null && n > 0, `short read of ${disk}`);
    await dst.write(buf.subarray(0, n));
    left -= n;
  }
}

/** The first byte at which two files differ, or -1 when they are identical. */
export async function firstDifference(a: string, b: string): Promise<number> {
  using fa = await Deno.open(a, { read: true });
  using fb = await Deno.open(b, { read: true });
  const size = (await fa.stat()).size;
  if ((await fb.stat()).size !== size) {
    return Math.min(size, (await fb.stat()).size);
  }
  const ba = new Uint8Array(4 * MiB);
  const bb = new Uint8Array(4 * MiB);
  for (let at = 0; at < size;) {
    const n = Math.min(ba.length, size - at);
    await readFull(fa, ba.subarray(0, n));
    await readFull(fb, bb.subarray(0, n));
    for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return at + i;
    at += n;
  }
  return -1;
}

async function readFull(f: Deno.FsFile, buf: Uint8Array): Promise<void> {
  for (let done = 0; done < buf.length;) {
    const n = await f.read(buf.subarray(done));
    assert.ok(n !== null, "short read");
    done += n;
  }
}

/**
 * Makes a 16 MiB NTFS (512-byte clusters) whose MFT is so fragmented that
 * record 0 no longer holds all of $MFT's data runs: ntfs-3g gives $MFT an
 * attribute list and extension records. The volume is filled with 1 KiB
 * files, every other one is deleted, and empty files are created until the
 * volume is full: the MFT grows into the 1 KiB holes.
 */
export async function makeFragmentedMft(image: string): Promise<void> {
  await blank(image, 16 * MiB);
  await sh("mkntfs", ["-f", "-F", "-q", "-c", "512", image]);
  const mnt = `${image}.mnt`;
  {
    await using _m = await ntfsMount(image, mnt);
    await Deno.mkdir(join(mnt, "fill"));
    const block = new Uint8Array(1024).fill(0x5a);
    let n = 0;
    try {
      for (;; n++) await Deno.writeFile(join(mnt, "fill", `f${n}`), block);
    } catch (err) {
      if (!String(err).includes("No space left")) throw err;
    }
    for (let i = 0; i < n; i += 2) {
      await Deno.remove(join(mnt, "fill", `f${i}`));
    }
    try {
      for (let i = 0; i < 20000; i++) {
        await Deno.writeFile(join(mnt, `e${i}`), new Uint8Array(0));
      }
    } catch (err) {
      if (!String(err).includes("No space left")) throw err;
    }
  }
  await Deno.remove(mnt);
}
