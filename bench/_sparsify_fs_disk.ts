// The disk of bench/sparsify_fs.ts: one GPT disk with an EFI FAT32
// partition, ext4, XFS, btrfs, NTFS and Linux swap, each holding live files
// and deleted ones (real files copied from /usr, then some removed, so
// that the free space holds old, non-zero bytes). Built as root with loop
// devices: ext4, XFS and btrfs through kernel mounts, NTFS through an
// ntfs-3g FUSE mount, FAT with mtools (this kernel has no vfat).

import { CACHE, cachedDisk, must, sh } from "./_compare_util.ts";
import { loop, sh as run } from "../tests/sparsify/_disks.ts";

const MiB = 1024 * 1024;

/** Partition sizes in MiB; swap takes what is left of the 4 GiB. */
const DISK_MIB = 4096;
const LAYOUT = [
  { fs: "fat", mib: 256, type: "U" },
  { fs: "ext4", mib: 1024, type: "L" },
  { fs: "xfs", mib: 1024, type: "L" },
  { fs: "btrfs", mib: 768, type: "L" },
  // Microsoft basic data.
  { fs: "ntfs", mib: 768, type: "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" },
  { fs: "swap", mib: 0, type: "S" },
] as const;

/** What each filesystem keeps, and the tree copied in and then deleted. */
const KEEP: Record<string, string[]> = {
  fat: ["/usr/lib/python3"],
  ext4: ["/usr/share/doc", "/usr/lib/python3"],
  xfs: ["/usr/include", "/usr/lib/python3"],
  btrfs: ["/usr/share/doc", "/usr/libexec"],
  ntfs: ["/usr/lib/python3", "/usr/libexec"],
};
const DELETE = "/usr/lib/x86_64-linux-gnu";
/** Old bytes for the swap pages. */
const SWAP_FILL = "/usr/lib/llvm-14";

/** A filesystem on the disk. */
export interface Part {
  fs: "fat" | "ext4" | "xfs" | "btrfs" | "ntfs" | "swap";
  offset: number;
  length: number;
  /** Bytes of files kept, and of files deleted, as `df` counted them. */
  kept?: number;
  deleted?: number;
}

/** The disk file and its partitions. */
export interface Disk {
  path: string;
  size: number;
  parts: Part[];
}

/** Runs `f` with a loop device over the partition, detached after. */
export async function withLoop<T>(
  file: string,
  p: Part,
  f: (dev: string) => Promise<T>,
): Promise<T> {
  await using part = await loop(file, p.offset, p.length);
  return await f(part.dev);
}

/**
 * Mounts `dev` (kernel filesystems; NTFS through ntfs-3g, run in the
 * foreground as a child so that its exit says the volume is flushed and
 * marked clean), runs `f` on the mount point, unmounts.
 */
export async function withMount<T>(
  fs: Part["fs"],
  dev: string,
  f: (mnt: string) => Promise<T>,
  readOnly = false,
): Promise<T> {
  const mnt = await Deno.makeTempDir({ prefix: "sparsify-fs-bench-" });
  let fuse: Deno.ChildProcess | undefined;
  try {
    if (fs === "ntfs") {
      fuse = new Deno.Command("ntfs-3g", {
        args: [...(readOnly ? ["-o", "ro"] : []), "-o", "no_detach", dev, mnt],
        stdout: "null",
        stderr: "null",
      }).spawn();
      for (let i = 0; i < 200; i++) {
        const m = await Deno.readTextFile("/proc/self/mounts");
        if (m.split("\n").some((l) => l.split(" ")[1] === mnt)) break;
        await new Promise((r) => setTimeout(r, 50));
      }
    } else {
      const opts = readOnly
        ? ["-o", fs === "xfs" ? "ro,norecovery,nouuid" : "ro"]
        : [];
      await must("mount", [...opts, dev, mnt]);
    }
    let result: T;
    try {
      result = await f(mnt);
    } finally {
      await must("umount", [mnt]);
    }
    if (fuse && !(await fuse.status).success) {
      throw new Error(`Cannot unmount ${dev}: ntfs-3g failed`);
    }
    return result;
  } finally {
    await Deno.remove(mnt);
  }
}

async function used(mnt: string): Promise<number> {
  const out = await must("df", ["-B1", "--output=used", mnt]);
  return Number(out.split("\n")[1]);
}

/** Copies KEEP in, then DELETE until done or full, then deletes DELETE. */
async function fillMounted(p: Part, dev: string): Promise<void> {
  await withMount(p.fs, dev, async (mnt) => {
    const cp = p.fs === "ntfs" ? ["-r"] : ["-a"];
    await Deno.mkdir(`${mnt}/keep`);
    for (const d of KEEP[p.fs]) await must("cp", [...cp, d, `${mnt}/keep/`]);
    await must("sync", []);
    const before = await used(mnt);
    // Until the filesystem is full or the tree is copied: ENOSPC is expected.
    await sh("cp", [...cp, DELETE, `${mnt}/deleted`]);
    await must("sync", []);
    const after = await used(mnt);
    await must("rm", ["-rf", `${mnt}/deleted`]);
    await must("sync", []);
    p.kept = before;
    p.deleted = after - before;
  });
}

/**
 * The same with mtools on a FAT32 made by mkfs.vfat. mcopy leaves the
 * clusters of a file it could not finish allocated to no file (fsck.fat
 * reclaims them), so the files deleted are chosen to fit: DELETE's
 * top-level files (unique names) while 16 MiB stay free.
 */
async function fillFat(p: Part, dev: string): Promise<void> {
  await must("mkfs.vfat", ["-F", "32", "-n", "EFI", dev]);
  const i = ["-i", dev];
  const free = async () => {
    const out = await must("mdir", [...i, "::/"]);
    return Number(/([\d ]+) bytes free/.exec(out)![1].replace(/ /g, ""));
  };
  const total = p.length;
  await must("mmd", [...i, "::/keep"]);
  for (const d of KEEP.fat) {
    await must("mcopy", [...i, "-s", "-Q", d, "::/keep/"]);
  }
  const before = total - await free();
  const files = (await must("find", [
    DELETE,
    "-maxdepth",
    "1",
    "-type",
    "f",
    "-printf",
    "%s %p\n",
  ])).trim().split("\n").map((l) => {
    const k = l.indexOf(" ");
    return { size: Number(l.slice(0, k)), path: l.slice(k + 1) };
  });
  let budget = await free() - 16 * 1024 * 1024;
  const chosen: string[] = [];
  for (const f of files) {
    const onDisk = Math.ceil(f.size / 4096) * 4096 + 4096;
    if (onDisk > budget) continue;
    budget -= onDisk;
    chosen.push(f.path);
  }
  await must("mmd", [...i, "::/deleted"]);
  for (let k = 0; k < chosen.length; k += 200) {
    await must("mcopy", [
      ...i,
      "-Q",
      ...chosen.slice(k, k + 200),
      "::/deleted/",
    ]);
  }
  const after = total - await free();
  await must("mdeltree", [...i, "::/deleted"]);
  p.kept = before;
  p.deleted = after - before;
}

async function makeFs(p: Part, dev: string): Promise<void> {
  switch (p.fs) {
    case "ext4":
      return void await must("mkfs.ext4", ["-q", "-F", dev]);
    case "xfs":
      return void await must("mkfs.xfs", ["-q", "-f", dev]);
    case "btrfs":
      return void await must("mkfs.btrfs", ["-q", "-f", dev]);
    case "ntfs":
      return void await must("mkntfs", ["-q", "-Q", "-F", dev]);
    default:
      throw new Error(`Cannot make ${p.fs} here`);
  }
}

/** Old bytes in every page, then a swap header (mkswap writes page 0 only). */
async function fillSwap(p: Part, dev: string): Promise<void> {
  await sh("bash", [
    "-c",
    `tar -cf - ${SWAP_FILL} 2>/dev/null | head -c ${p.length} > ${dev}`,
  ]);
  await must("mkswap", ["-q", dev]);
  p.kept = 4096;
  p.deleted = p.length - 4096;
}

async function partition(path: string): Promise<Part[]> {
  const script = "label: gpt\n" +
    LAYOUT.map((l) => `,${l.mib ? `${l.mib}M` : ""},${l.type}\n`).join("");
  await run("sfdisk", ["-q", path], { stdin: script });
  const table = JSON.parse(await must("sfdisk", ["-J", path]))
    .partitiontable.partitions as Array<{ start: number; size: number }>;
  return table.map((t, k) => ({
    fs: LAYOUT[k].fs,
    offset: t.start * 512,
    length: t.size * 512,
  }));
}

/** Each filesystem's own checker, read-only; throws on the first complaint. */
export async function checkAll(path: string, parts: Part[]): Promise<void> {
  for (const p of parts) {
    await withLoop(path, p, async (dev) => {
      const [cmd, ...args] = {
        fat: ["fsck.fat", "-n", dev],
        ext4: ["e2fsck", "-fn", dev],
        xfs: ["xfs_repair", "-n", dev],
        btrfs: ["btrfs", "check", "--readonly", "--check-data-csum", dev],
        ntfs: ["ntfsfix", "-n", dev],
        swap: ["swaplabel", dev],
      }[p.fs];
      await must(cmd, args);
    });
  }
}

/**
 * The disk, built once into bench/.cache/ (rebuilt with `rebuild`), with
 * each filesystem's checker clean.
 */
export function buildDisk(rebuild: boolean): Promise<Disk> {
  const size = DISK_MIB * MiB;
  return cachedDisk(
    `${CACHE}sparsify-fs-4G.img`,
    size,
    rebuild,
    async (path) => {
      const parts = await partition(path);
      for (const p of parts) {
        await withLoop(path, p, async (dev) => {
          if (p.fs === "fat") return await fillFat(p, dev);
          if (p.fs === "swap") return await fillSwap(p, dev);
          await makeFs(p, dev);
          await fillMounted(p, dev);
        });
        console.error(
          `${p.fs}: ${(p.length / MiB).toFixed(0)} MiB, ${
            (p.kept! / 1e6).toFixed(0)
          } MB kept, ${(p.deleted! / 1e6).toFixed(0)} MB deleted`,
        );
      }
      await checkAll(path, parts);
      return { path, size, parts };
    },
  );
}
