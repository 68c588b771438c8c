// `convert --sparsify` against virt-sparsify on the disk of issue 25: one
// 4 GiB GPT disk with an EFI FAT32 partition, ext4, XFS, btrfs, NTFS and
// Linux swap, each holding live files and deleted ones
// (bench/_sparsify_fs_disk.ts). Prints size and time of: plain `convert
// -c` (zlib), `--sparsify -c` (zlib), `--sparsify --compress zstd`,
// `virt-sparsify --compress`, and the ideal (a copy with every
// filesystem's free space zeroed by its own tools, bench/
// _sparsify_fs_ideal.ts, then `convert -c`). Before the timings, our
// --sparsify output is checked: expanded, the files of each filesystem are
// those of the disk (hashed through mounts, mtools for FAT), each checker
// is clean and the GPT is byte for byte the disk's; after them, every
// output must pass `qemu-img check`.
//
//   deno run -A bench/sparsify_fs.ts [--reps N] [--virt-reps N] [--rebuild]
//
// Cold protocol: `sync`, then the page cache dropped (`echo 3 >
// /proc/sys/vm/drop_caches`, where it is writable; said once when not),
// before each run, no warm-up run; the runs of the conversions are
// interleaved (one of each, N times). Needs root (loop devices, mounts),
// sfdisk, mkfs.vfat and mtools, mkfs.ext4 and zerofree, xfsprogs,
// btrfs-progs, ntfs-3g, mkswap; and virt-sparsify (package
// libguestfs-tools), run with LIBGUESTFS_BACKEND=direct and
// LIBGUESTFS_BACKEND_SETTINGS=force_tcg (nested KVM aborts here): without
// it, its row is skipped with a message and the ratios are left out.

import { CACHE, have, median, must, sh } from "./_compare_util.ts";
import {
  checkAll,
  type Disk,
  type Part,
  withLoop,
  withMount,
} from "./_sparsify_fs_disk.ts";
import { buildDisk } from "./_sparsify_fs_disk.ts";
import { idealCopy } from "./_sparsify_fs_ideal.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const args = Deno.args;
const flag = (name: string, fallback: number) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const REPS = flag("--reps", 3);
const VIRT_REPS = flag("--virt-reps", 1);
const REBUILD = args.includes("--rebuild");

/** A digest of every file (path, bytes) of a filesystem. */
async function filesDigest(file: string, p: Part): Promise<string> {
  if (p.fs === "swap") return "";
  return await withLoop(file, p, async (dev) => {
    const hash = (dir: string) =>
      must("bash", [
        "-c",
        `cd ${dir} && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum`,
      ]);
    if (p.fs !== "fat") return await withMount(p.fs, dev, hash, true);
    const dir = await Deno.makeTempDir({ prefix: "sparsify-fs-fat-" });
    try {
      await must("mcopy", ["-i", dev, "-s", "-Q", "-n", "::/keep", dir]);
      return await hash(dir);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/**
 * Our --sparsify output, expanded by qemu-img: the same files in every
 * filesystem as the disk, and every checker clean.
 */
async function verify(disk: Disk, out: string): Promise<void> {
  const raw = `${CACHE}sparsify-fs-expanded.img`;
  await must("qemu-img", ["convert", "-O", "raw", out, raw]);
  try {
    await checkAll(raw, disk.parts);
    for (const p of disk.parts) {
      const want = await filesDigest(disk.path, p);
      const got = await filesDigest(raw, p);
      if (want !== got) {
        throw new Error(`Cannot trust --sparsify: the files of ${p.fs} differ`);
      }
    }
    // Outside the partitions (the GPT and its backup), byte for byte.
    const ends = [
      0,
      ...disk.parts.flatMap((p) => [p.offset, p.offset + p.length]),
      disk.size,
    ];
    for (let k = 0; k < ends.length; k += 2) {
      const [from, to] = [ends[k], ends[k + 1]];
      if (to <= from) continue;
      await must("cmp", [
        "-i",
        `${from}:${from}`,
        "-n",
        String(to - from),
        disk.path,
        raw,
      ]);
    }
  } finally {
    await Deno.remove(raw);
  }
}

const DROP_CACHES = "/proc/sys/vm/drop_caches";
let canDrop = true;

/** Writes the dirty pages out and drops the page cache, where allowed. */
async function cold(): Promise<void> {
  await must("sync", []);
  if (!canDrop) return;
  try {
    await Deno.writeTextFile(DROP_CACHES, "3");
  } catch (err) {
    canDrop = false;
    console.error(
      `${DROP_CACHES} is not writable (${
        (err as Error).message
      }): runs are after sync only, with the page cache warm`,
    );
  }
}

async function timed(command: string, env: Record<string, string> = {}) {
  await cold();
  const t0 = performance.now();
  const out = await new Deno.Command("bash", {
    args: ["-c", command],
    env,
    stdout: "null",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - t0) / 1000;
  if (!out.success) {
    throw new Error(
      `Cannot run ${command}: ${new TextDecoder().decode(out.stderr).trim()}`,
    );
  }
  return seconds;
}

const disk = await buildDisk(REBUILD);
for (const p of disk.parts) {
  console.error(
    `${p.fs}: ${(p.length / 2 ** 20).toFixed(0)} MiB at ${
      (p.offset / 2 ** 20).toFixed(0)
    } MiB, ${(p.kept! / 1e6).toFixed(0)} MB live, ${
      (p.deleted! / 1e6).toFixed(0)
    } MB deleted`,
  );
}
const ideal = await idealCopy(disk);
console.error(
  `ideal: zeroed ${
    Object.entries(ideal.zeroed).map(([fs, n]) =>
      `${fs} ${(n / 1e6).toFixed(0)} MB`
    ).join(", ")
  }`,
);

const virtSparsify = VIRT_REPS > 0 &&
  await have("virt-sparsify", ["--version"]);
if (!virtSparsify) {
  console.error(
    VIRT_REPS > 0
      ? "virt-sparsify not found (apt-get install libguestfs-tools): its row is skipped"
      : "--virt-reps 0: virt-sparsify's row is skipped",
  );
}

const outOf = (name: string) => `${CACHE}sparsify-fs-${name}.qcow2`;
const ours = (extra: string, name: string) =>
  `deno run -A ${CLI} convert --force ${extra} ${disk.path} ${outOf(name)}`;
const runs = [
  {
    name: "plain",
    what: "plain `convert -c` (zlib)",
    cmd: ours("-q -c", "plain"),
  },
  {
    name: "sparsify-zlib",
    what: "ours `--sparsify -c` (zlib)",
    cmd: ours("-q --sparsify -c", "sparsify-zlib"),
  },
  {
    name: "sparsify-zstd",
    what: "ours `--sparsify --compress zstd`",
    cmd: ours("-q --sparsify --compress zstd", "sparsify-zstd"),
  },
  {
    name: "virt-sparsify",
    what: "`virt-sparsify --compress`",
    cmd: `virt-sparsify -q --compress --convert qcow2 ${disk.path} ${
      outOf("virt-sparsify")
    }`,
    env: {
      LIBGUESTFS_BACKEND: "direct",
      LIBGUESTFS_BACKEND_SETTINGS: "force_tcg",
    },
    reps: VIRT_REPS,
    skip: !virtSparsify,
  },
  {
    name: "ideal",
    what: "ideal: free space zeroed, then `convert -c` (zlib)",
    cmd: `deno run -A ${CLI} convert -q --force -c ${ideal.path} ${
      outOf("ideal")
    }`,
  },
];

// The report of our run, once, for the record.
const report = await sh("deno", [
  "run",
  "-A",
  CLI,
  "convert",
  "--force",
  "--sparsify",
  "-c",
  disk.path,
  outOf("sparsify-zlib"),
]);
console.error(report.stderr.trim());
await verify(disk, outOf("sparsify-zlib"));
console.error("--sparsify output: every file identical, every checker clean");

const times = new Map<string, number[]>(runs.map((r) => [r.name, []]));
for (let i = 0; i < Math.max(REPS, VIRT_REPS); i++) {
  for (const r of runs) {
    if (r.skip || i >= (r.reps ?? REPS)) continue;
    const t = await timed(r.cmd, r.env);
    times.get(r.name)!.push(t);
    console.error(`${r.name}: ${t.toFixed(1)} s`);
  }
}

const measured = runs.filter((r) => !r.skip);
const sizes = new Map<string, number>();
for (const r of measured) {
  await must("qemu-img", ["check", outOf(r.name)]);
  sizes.set(r.name, (await Deno.stat(outOf(r.name))).size);
}
const virt = virtSparsify
  ? {
    size: sizes.get("virt-sparsify")!,
    time: median(times.get("virt-sparsify")!),
  }
  : undefined;
console.log(
  `${(disk.size / 2 ** 30).toFixed(0)} GiB GPT disk (${
    disk.parts.map((p) => p.fs).join(", ")
  }), ${
    new Date().toISOString().slice(0, 10)
  }, \`deno run -A bench/sparsify_fs.ts --reps ${REPS} --virt-reps ${VIRT_REPS}\`:`,
);
console.log("");
console.log(
  "| conversion | size | × virt-sparsify's size | time, median (runs) | virt-sparsify's time ÷ this |",
);
console.log("| --- | ---: | ---: | --- | ---: |");
for (const r of measured) {
  const size = sizes.get(r.name)!;
  const ts = times.get(r.name)!;
  const t = median(ts);
  console.log(
    `| ${r.what} | ${(size / 1e6).toFixed(1)} MB | ${
      virt ? (size / virt.size).toFixed(3) : "n/a"
    } | ${t.toFixed(1)} s (${ts.map((x) => x.toFixed(1)).join(", ")}) | ${
      virt ? (virt.time / t).toFixed(1) : "n/a"
    } |`,
  );
}
for (const r of measured) await Deno.remove(outOf(r.name));
await Deno.remove(ideal.path);
