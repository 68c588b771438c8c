// Per-format comparison with `qemu-img convert` (issue 24's benchmark row
// per format).
//
//   deno task bench:formats [--size MIB] [--reps N] [--formats LIST] [--paths LIST] [--keep-cache]
//
// 1. Takes the bench disk of bench/compare.ts (bench/_compare_disk.ts: an
//    ext4 filesystem made from /usr, data filling half of the virtual size;
//    2 GiB virtual by default, so about 1 GiB of data) and makes it, once,
//    into each source format with `qemu-img convert -f raw -O FMT`: qcow
//    (version 1), vmdk monolithicSparse and streamOptimized, vpc (VHD)
//    dynamic, vhdx dynamic, vdi dynamic. They are cached in bench/.cache/
//    beside the disk.
// 2. For each format, three paths, ours against `qemu-img convert -W -m 16
//    -f FMT` (the flags bench/compare.ts gives qemu-img): to qcow2 with
//    zlib (`-O qcow2 -c`), to qcow2 with zstd (`-o compression_type=zstd`),
//    and to raw (`-O raw`). Timing, verification and the interleaving are
//    bench/_compare_run.ts's, as in compare.ts: `sync` before each run,
//    wall seconds and peak RSS from GNU time, the tools alternating which
//    goes first, the median of the runs. No untimed warm-up run; the
//    source image is read once into the page cache before its paths (for
//    both tools alike) and Deno's module cache is warmed by a tiny
//    conversion at the start.
// 3. Every output is verified against the raw bench disk with `qemu-img
//    compare` (and `qemu-img check` for qcow2 outputs; a raw output must
//    have the source's virtual size). A failed check makes the run exit
//    non-zero.
// 4. Prints a text table while running and markdown at the end, and writes
//    every sample to bench/.cache/formats-<date>.json.
//
// Options: --size MIB (virtual size of the bench disk, default 2048),
// --reps N (default 3), --formats qcow,vmdk-sparse,... (a subset, in that
// order), --keep-cache (keep the disk and format images for the next run).

import { parseArgs } from "node:util";
import {
  CACHE,
  exists,
  gib,
  have,
  log,
  machine,
  MiB,
  mib,
  must,
} from "./_compare_util.ts";
import { buildDisk } from "./_compare_disk.ts";
import {
  failures,
  inputLine,
  machineLines,
  mainTable,
  markdownTable,
  noiseLine,
  type Result,
  summarize,
  textTable,
} from "./_compare_report.ts";
import {
  finish,
  type Op,
  oursArgv,
  qemuArgv,
  removeCachedDisks,
  RUN_DIR,
  runOp,
  warmModuleCache,
} from "./_compare_run.ts";

/** A source format: how qemu-img makes it from the raw disk. */
interface SourceFormat {
  id: string;
  label: string;
  /** The `-f` name, ours and qemu-img's. */
  fmt: string;
  ext: string;
  /** `qemu-img convert -o` options that choose the subformat. */
  create: string[];
}

const FORMATS: SourceFormat[] = [
  { id: "qcow", label: "qcow (v1)", fmt: "qcow", ext: "qcow", create: [] },
  {
    id: "vmdk-sparse",
    label: "vmdk monolithicSparse",
    fmt: "vmdk",
    ext: "vmdk",
    create: ["subformat=monolithicSparse"],
  },
  {
    id: "vmdk-stream",
    label: "vmdk streamOptimized",
    fmt: "vmdk",
    ext: "vmdk",
    create: ["subformat=streamOptimized"],
  },
  {
    id: "vpc",
    label: "vpc dynamic",
    fmt: "vpc",
    ext: "vhd",
    create: ["subformat=dynamic"],
  },
  {
    id: "vhdx",
    label: "vhdx dynamic",
    fmt: "vhdx",
    ext: "vhdx",
    create: ["subformat=dynamic"],
  },
  {
    id: "vdi",
    label: "vdi dynamic",
    fmt: "vdi",
    ext: "vdi",
    create: ["static=off"],
  },
];

const HELP =
  `Usage: deno task bench:formats [--size MIB] [--reps N] [--formats LIST] [--paths LIST] [--keep-cache]

Times qcow2pipe's CLI against qemu-img convert -f FMT on the bench disk of
bench/compare.ts made into each source format (${
    FORMATS.map((f) => f.id).join(", ")
  }):
to qcow2 with zlib, to qcow2 with zstd, and to raw. See the comment at the
top of bench/formats.ts for what is measured and how.

  --size MIB     virtual size of the bench disk (default 2048: about 1 GiB of data)
  --reps N       repetitions per measurement (default 3)
  --formats L    comma-separated subset of the formats above
  --paths L      comma-separated subset of the paths: zlib, zstd, raw
  --keep-cache   keep the disk images in bench/.cache/ for the next run`;

/** The image of the bench disk in format `f`, made once by qemu-img. */
async function formatImage(disk: string, f: SourceFormat): Promise<string> {
  const name = `${
    disk.slice(CACHE.length).replace(/\.raw$/, "")
  }-${f.id}.${f.ext}`;
  const path = `${CACHE}${name}`;
  if (await exists(path)) return path;
  // Made under its final name in a folder of its own: a VMDK's embedded
  // descriptor names its file.
  const dir = `${CACHE}building/`;
  await Deno.mkdir(dir, { recursive: true });
  log(`Making ${name} with qemu-img convert -O ${f.fmt} ...`);
  await must("qemu-img", [
    "convert",
    "-f",
    "raw",
    "-O",
    f.fmt,
    ...f.create.flatMap((o) => ["-o", o]),
    disk,
    `${dir}${name}`,
  ]);
  await Deno.rename(`${dir}${name}`, path);
  await Deno.remove(dir).catch(() => {});
  return path;
}

/** The virtual size qemu-img gives an image. */
async function qemuVirtualSize(path: string, fmt: string): Promise<number> {
  const info = JSON.parse(
    await must("qemu-img", ["info", "--output=json", "-f", fmt, path]),
  );
  return info["virtual-size"];
}

/** The three paths from a source image in format `f`. */
function formatOps(f: SourceFormat, src: string): Op[] {
  const from = ["-f", f.fmt];
  const op = (
    path: string,
    label: string,
    ours: string[],
    qemu: string[],
  ): Op => ({
    id: `${f.id}-${path}`,
    label: `${f.label} → ${label}`,
    kind: path === "raw" ? "expand" : "forward",
    src,
    ext: path === "raw" ? "raw" : "qcow2",
    argv: {
      ours: oursArgv([...from, ...ours], src),
      qemu: qemuArgv([...from, ...qemu], src),
    },
  });
  return [
    op("zlib", "qcow2 zlib", ["--compress", "zlib"], ["-O", "qcow2", "-c"]),
    op("zstd", "qcow2 zstd", ["--compress", "zstd"], [
      "-O",
      "qcow2",
      "-c",
      "-o",
      "compression_type=zstd",
    ]),
    op("raw", "raw", ["-O", "raw"], ["-O", "raw"]),
  ];
}

/**
 * One row per path: compare.ts's columns without the output sizes, the
 * size ratio only for the compressed outputs.
 */
function formatsTable(results: Result[], reps: number): string[][] {
  const keep = [0, 1, 2, 3, 4, 5, 8, 11, 12];
  return mainTable(results, reps).map((row, i) =>
    keep.map((c) => c === 8 && results[i - 1]?.kind === "expand" ? "" : row[c])
  );
}

/** Whether ours is ahead of qemu-img on each path, one line each. */
function aheadLines(results: Result[]): string[] {
  return results.map((r) => {
    const o = summarize(r.samples.ours);
    const x = o.secs / summarize(r.samples.qemu).secs;
    return `- ${
      x < 1 && o.ok ? "MET" : "NOT MET"
    }: ${r.label} ahead of qemu-img (measured ${x.toFixed(2)}×)`;
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string" },
      reps: { type: "string" },
      formats: { type: "string" },
      paths: { type: "string" },
      "keep-cache": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const fail = (reason: string) => {
    console.error(`Cannot run the format comparison: ${reason}`);
    return 2;
  };
  const reps = Number(values.reps ?? 3);
  if (!Number.isInteger(reps) || reps < 1) {
    return fail(`--reps ${values.reps} is not a positive integer`);
  }
  const sizeMiB = Number(values.size ?? 2048);
  if (!Number.isInteger(sizeMiB) || sizeMiB < 64) {
    return fail(
      `--size ${values.size} is not a whole number of MiB, 64 or more`,
    );
  }
  const ids = values.formats?.split(",") ?? FORMATS.map((f) => f.id);
  const unknown = ids.filter((id) => !FORMATS.some((f) => f.id === id));
  if (unknown.length > 0) {
    return fail(
      `unknown format ${unknown.join(", ")} (known: ${
        FORMATS.map((f) => f.id).join(", ")
      })`,
    );
  }
  const formats = FORMATS.filter((f) => ids.includes(f.id));
  const paths = values.paths?.split(",") ?? ["zlib", "zstd", "raw"];
  const badPath = paths.find((p) => !["zlib", "zstd", "raw"].includes(p));
  if (badPath !== undefined) {
    return fail(`unknown path ${badPath} (known: zlib, zstd, raw)`);
  }
  for (
    const [cmd, args, what] of [
      ["qemu-img", ["--version"], "qemu-img (apt-get install qemu-utils)"],
      ["mkfs.ext4", ["-V"], "mkfs.ext4 (apt-get install e2fsprogs)"],
      ["/usr/bin/time", ["--version"], "GNU time (apt-get install time)"],
    ] as const
  ) {
    if (!await have(cmd, [...args])) return fail(`it needs ${what}`);
  }
  const virtualSize = sizeMiB * MiB;
  await Deno.mkdir(RUN_DIR, { recursive: true });
  const info = await machine();
  log(
    `${info.cpu}, ${info.cores} cores, ${info.ramGiB} GiB RAM, Deno ${info.deno}, ${info.qemu}; ${info.code}`,
  );
  if (info.busyProcesses.length > 0) {
    log(`Other busy processes: ${info.busyProcesses.join(", ")}`);
  }
  const results: Result[] = [];
  try {
    const [disk, meta] = await buildDisk(virtualSize);
    log(
      `Disk: ${gib(virtualSize)} virtual, ${
        mib(meta.allocated)
      } allocated, from ${meta.dirs.join(" ")}`,
    );
    const images = [];
    for (const f of formats) images.push(await formatImage(disk, f));

    await warmModuleCache([["--compress", "zlib"], ["--compress", "zstd"]]);

    for (const [i, f] of formats.entries()) {
      const src = images[i];
      const size = await qemuVirtualSize(src, f.fmt);
      log(
        `\n${f.label}: ${src} (${mib((await Deno.stat(src)).size)}, ${
          gib(size)
        } virtual), ${reps} repetition(s) each:`,
      );
      await must("sh", ["-c", `cat "${src}" > /dev/null`]);
      const ops = formatOps(f, src).filter((op) =>
        paths.some((p) => op.id === `${f.id}-${p}`)
      );
      for (const op of ops) {
        results.push(await runOp(op, reps, disk, size, 1, undefined, false));
      }
    }

    const failed = failures(results);
    const rows = formatsTable(results, reps);
    console.log(`\n${textTable(rows)}\n`);
    console.log(aheadLines(results).join("\n"));
    const md = [
      `### qcow2pipe vs qemu-img convert, per source format (${
        info.date.slice(0, 10)
      })`,
      "",
      ...machineLines(info),
      inputLine(meta),
      `- Sources: that disk made into each format by \`qemu-img convert -f raw -O FMT [-o subformat=...]\`: ${
        formats.map((f) => `${f.fmt}${f.create.length ? ` ${f.create}` : ""}`)
          .join(", ")
      }`,
      `- Ours: \`deno run -A cli.ts convert -q --force -f FMT [--compress zlib | --compress zstd | -O raw] SRC DST\` (default workers = ${info.cores})`,
      "- qemu-img: `qemu-img convert -W -m 16 -f FMT [-O qcow2 -c [-o compression_type=zstd] | -O raw] SRC DST`",
      `- Times: median of ${reps} run(s) (range in parentheses), the tools alternating which goes first, no warm-up run (the source read into the page cache once before its paths), wall seconds from GNU time, \`sync\` before each; CPU s = user + system seconds of the command (all threads); size ratio = ours / qemu-img's output; RSS = peak resident set (GNU time %M), median`,
      `- Every output verified with qemu-img compare against the raw disk (plus qemu-img check for qcow2, the source's virtual size for raw): ${
        failed.length === 0 ? "all passed" : `${failed.length} FAILED`
      }`,
      noiseLine(results, info),
      "",
      markdownTable(rows),
      "",
      "Target (issue 24): ahead of qemu-img on each.",
      "",
      ...aheadLines(results),
    ];
    await finish("formats", md, failed, { machine: info, reps, results }, meta);
    return failed.length > 0 ? 1 : 0;
  } finally {
    await Deno.remove(RUN_DIR, { recursive: true }).catch(() => {});
    if (!values["keep-cache"]) await removeCachedDisks();
  }
}

if (import.meta.main) {
  Deno.exit(await main());
}
