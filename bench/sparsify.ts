// `convert --sparsify` on the disks of issue 18, measured: plain,
// sparsified (from the file and from a pipe) and ideal sizes (a zerofree'd
// copy, swap zeroed past its header), and the time of each conversion.
//
//   deno run -A bench/sparsify.ts [--reps N] [--rebuild]
//
// Needs root (loop devices and mounts), sfdisk, mkfs.ext4, mkswap,
// zerofree. The disks are built once into bench/.cache/:
// - ext4-1G: a bare 1 GiB ext4 (mkfs defaults), /usr/share/doc and
//   /usr/lib/python3 copied in and kept, /usr/lib/x86_64-linux-gnu copied
//   in and deleted;
// - gpt-1G: a 1 GiB GPT disk, the same ext4 contents in a 700 MiB
//   partition (the deleted copy stops when the partition is full) and a
//   200 MiB swap partition whose pages hold old bytes (an archive of
//   /usr/lib/llvm-14), made swap by mkswap.

import { CACHE, cachedDisk, must, sh } from "./_compare_util.ts";
import { loop, sh as run } from "../tests/sparsify/_disks.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const MiB = 1024 * 1024;
const args = Deno.args;
const REPS = Number(args[args.indexOf("--reps") + 1] || 3) || 3;
const REBUILD = args.includes("--rebuild");

const KEEP = ["/usr/share/doc", "/usr/lib/python3"];
const DELETE = "/usr/lib/x86_64-linux-gnu";
const SWAP_FILL = "/usr/lib/llvm-14";

interface Disk {
  name: string;
  path: string;
  /** ext4 [offset, length], swap [offset, length]. */
  ext4: [number, number];
  swap?: [number, number];
}

async function fillExt4(
  dev: string,
): Promise<{ kept: number; deleted: number }> {
  const mnt = await Deno.makeTempDir({ prefix: "sparsify-bench-" });
  await must("mkfs.ext4", ["-q", "-F", dev]);
  await must("mount", [dev, mnt]);
  try {
    await Deno.mkdir(`${mnt}/keep`);
    for (const d of KEEP) await must("cp", ["-a", d, `${mnt}/keep/`]);
    const used = async () =>
      Number((await must("df", ["-B1", "--output=used", mnt])).split("\n")[1]);
    const before = await used();
    // Until the filesystem is full or the tree is copied: ENOSPC is expected.
    await sh("cp", ["-a", DELETE, `${mnt}/deleted`]);
    await must("sync", []);
    const after = await used();
    await must("rm", ["-rf", `${mnt}/deleted`]);
    await must("sync", []);
    return { kept: before, deleted: after - before };
  } finally {
    await must("umount", [mnt]);
    await Deno.remove(mnt);
  }
}

function build(name: string): Promise<Disk> {
  return cachedDisk(
    `${CACHE}sparsify-${name}.img`,
    1024 * MiB,
    REBUILD,
    async (path) => {
      const disk: Disk = { name, path, ext4: [0, 1024 * MiB] };
      if (name.startsWith("gpt")) {
        await run("sfdisk", ["-q", path], {
          stdin: "label: gpt\n,700M,L\n,200M,S\n",
        });
        const parts = JSON.parse(await must("sfdisk", ["-J", path]))
          .partitiontable.partitions as Array<{ start: number; size: number }>;
        disk.ext4 = [parts[0].start * 512, parts[0].size * 512];
        disk.swap = [parts[1].start * 512, parts[1].size * 512];
      }
      {
        await using ext4 = await loop(path, ...disk.ext4);
        const filled = await fillExt4(ext4.dev);
        console.error(
          `${name}: ext4 keeps ${(filled.kept / 1e6).toFixed(0)} MB, ${
            (filled.deleted / 1e6).toFixed(0)
          } MB deleted`,
        );
      }
      if (disk.swap) {
        await using swap = await loop(path, ...disk.swap);
        await sh("bash", [
          "-c",
          `tar -cf - ${SWAP_FILL} 2>/dev/null | head -c ${
            disk.swap[1]
          } > ${swap.dev}`,
        ]);
        await must("mkswap", ["-q", swap.dev]);
      }
      return disk;
    },
  );
}

/** The zerofree'd copy: free blocks zeroed, swap zeroed past its header. */
async function ideal(disk: Disk): Promise<string> {
  const path = `${CACHE}sparsify-${disk.name}-zerofree.img`;
  await must("cp", ["--sparse=always", disk.path, path]);
  {
    await using ext4 = await loop(path, ...disk.ext4);
    await must("zerofree", [ext4.dev]);
  }
  if (disk.swap) {
    using f = await Deno.open(path, { write: true });
    await f.seek(disk.swap[0] + 4096, Deno.SeekMode.Start);
    await f.write(new Uint8Array(disk.swap[1] - 4096));
  }
  return path;
}

async function timed(command: string): Promise<number> {
  const t0 = performance.now();
  await must("bash", ["-c", command]);
  return (performance.now() - t0) / 1000;
}

function median(xs: number[]): number {
  const s = xs.toSorted((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

const rows: string[] = [];
for (const name of ["ext4-1G", "gpt-1G"]) {
  const disk = await build(name);
  const zf = await ideal(disk);
  const out = `${CACHE}sparsify-out.qcow2`;
  const runs: Array<[string, string]> = [
    [
      "plain",
      `deno run -A ${CLI} convert -q --force --compress zstd ${disk.path} ${out}`,
    ],
    [
      "--sparsify",
      `deno run -A ${CLI} convert -q --force --sparsify --compress zstd ${disk.path} ${out}`,
    ],
    [
      "--sparsify from a pipe",
      `cat ${disk.path} | deno run -A ${CLI} convert -q --force --sparsify --compress zstd -O qcow2 - ${out}`,
    ],
    [
      "zerofree'd copy",
      `deno run -A ${CLI} convert -q --force --compress zstd ${zf} ${out}`,
    ],
    [
      "qemu-img, plain",
      `qemu-img convert -c -O qcow2 -o compression_type=zstd ${disk.path} ${out}`,
    ],
  ];
  for (const [what, command] of runs) {
    const times: number[] = [];
    for (let i = 0; i < REPS; i++) times.push(await timed(command));
    const size = (await Deno.stat(out)).size;
    rows.push(
      `| ${name} | ${what} | ${(size / 1e6).toFixed(1)} MB | ${
        median(times).toFixed(2)
      } s (${times.map((t) => t.toFixed(2)).join(", ")}) |`,
    );
    console.error(rows.at(-1));
  }
  await Deno.remove(zf);
  await Deno.remove(out);
}
console.log("| disk | conversion (zstd) | size | time, median (runs) |");
console.log("| ---- | ---------------- | ---- | ------------------- |");
for (const r of rows) console.log(r);
