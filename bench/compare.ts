// End-to-end comparison with `qemu-img convert` on a realistic disk.
//
//   deno task bench:compare [--quick] [--cold [--no-drop]] [--tools]
//                           [--keep-cache] [--reps N] [--skip-curl]
//
// 1. Builds (once, into bench/.cache/) a raw disk holding an ext4 filesystem
//    made by `mkfs.ext4 -q -F -d DIR` from part of this machine's /usr,
//    hardlinked (`cp -al`, no data copied) into a temporary tree so that it
//    fills about half of a 4 GiB virtual disk (1 GiB with --quick).
// 2. Times our CLI and `qemu-img convert -W -m 16` (its fastest flags) on
//    the same input: raw → sparse qcow2, zlib qcow2, zstd qcow2, and each of
//    qemu-img's three outputs expanded back to raw by both tools. Wall
//    seconds and peak RSS come from GNU time (`/usr/bin/time -f "%e %M"`).
//    `sync` runs before each command; nothing else is dropped, so the
//    source is in the page cache for both tools alike. Each measurement is
//    repeated 3 times (1 with --quick), alternating which tool goes first,
//    after one untimed warm-up run of each (not with --quick), and the
//    median is reported with the range.
//    Then the floors (bench/_compare_floor.ts): each tool's start-up on a
//    1 MiB file, and one thread's codec speeds on the disk's data, which
//    give each time target the ratio no run of ours could beat here.
//    Then ours under Node beside ours under Deno (bench/_compare_node.ts,
//    the npm package): raw → zstd qcow2 and zstd qcow2 → raw.
//    Then qcow2 → raw over HTTP (bench/_compare_http.ts): four images made
//    by qemu-img from the disk's first 64 MiB, served by a local server that
//    waits 50 ms before each answer; ours against qemu-img's curl driver.
//    Then qemu-img's zstd image of the whole disk from the same server with
//    each connection capped at 20 MB/s, against size / 20 MB/s (one
//    connection) and qemu-img's curl driver (--skip-curl leaves it out).
// 3. Verifies every output before its time counts: `qemu-img compare`
//    against the source (and `qemu-img check` for qcow2 outputs; the exact
//    virtual size for raw outputs). A failed check is reported and makes
//    the run exit non-zero.
//    Then `check`, `map` (human, JSON) and `compare` on sparse qcow2 images
//    of 1 TiB (with 100 internal snapshots, and without), 4 TiB and 16 TiB
//    made by qemu-img (bench/_compare_tools.ts): issue 26's row, each run's
//    output checked to be qemu-img's.
// 4. Peak-RSS scaling: the forward conversions and one expansion again on
//    an image four times larger in virtual size (the same disk plus a
//    sparse tail), once each.
// 5. Prints the results as a text table while running and as markdown at
//    the end, and writes them with every sample to
//    bench/.cache/results-<date>.json.
//
// Options: --quick (1 GiB disk, 1 repetition: a smoke run), --cold (the
// protocol of issue 26, as a user runs a conversion once: no warm-up run,
// the source not read beforehand, and the page cache dropped after the
// `sync` before every run; needs root; with --no-drop only the `sync`, to
// try the protocol on a machine others use), --tools (only the check/map/
// compare row; its images stay in bench/.cache/), --keep-cache
// (keep the built disk images for the next run; by default they are deleted
// at the end, the results files are kept), --reps N, --help.
// Needs qemu-img, mkfs.ext4 (e2fsprogs) and GNU time; says so if missing.

import { parseArgs } from "node:util";
import {
  CACHE,
  exists,
  GiB,
  gib,
  have,
  log,
  machine,
  MiB,
  mib,
  must,
} from "./_compare_util.ts";
import { buildBigDisk, buildDisk } from "./_compare_disk.ts";
import {
  nodeFailures,
  nodeMarkdown,
  type NodeRow,
  runNode,
} from "./_compare_node.ts";
import { TOOLS_IMAGES, toolsSection } from "./_compare_tools.ts";
import { measureFloors } from "./_compare_floor.ts";
import {
  cappedMarkdown,
  cappedTargets,
  httpMarkdown,
  type HttpRow,
  httpTargets,
  runCapped,
  runHttp,
} from "./_compare_http.ts";
import {
  failures,
  inputLine,
  machineLines,
  mainTable,
  markdownTable,
  noiseLine,
  type Result,
  scalingTable,
  targetLines,
  targets,
  textTable,
} from "./_compare_report.ts";
import {
  finish,
  type Op,
  oursArgv,
  protocol,
  qemuArgv,
  removeCachedDisks,
  RUN_DIR,
  runOp,
  warmModuleCache,
} from "./_compare_run.ts";

const HELP =
  `Usage: deno task bench:compare [--quick] [--cold [--no-drop]] [--tools] [--keep-cache] [--reps N]
                               [--skip-curl]

Times qcow2pipe's CLI against qemu-img convert on an ext4 disk image built
from /usr (cached in bench/.cache/). See the comment at the top of
bench/compare.ts for what is measured and how.

  --quick        1 GiB disk, 1 repetition, only the 1 TiB tools image (smoke run)
  --cold         no warm-up, page cache dropped before every run (as root)
  --no-drop      with --cold: sync only, the page cache is not dropped
  --tools        only check, map and compare on TiB-sized sparse qcow2 images
  --keep-cache   keep the disk images in bench/.cache/ for the next run
  --reps N       repetitions per measurement (default 3, --quick 1)
  --skip-curl    no qemu-img (curl) run over the capped HTTP server`;

function forwardOps(src: string, suffix = ""): Op[] {
  return [
    {
      id: `sparse${suffix}`,
      label: "raw → qcow2 (sparse)",
      kind: "forward",
      src,
      ext: "qcow2",
      argv: {
        ours: oursArgv(["-f", "raw", "-O", "qcow2"], src),
        qemu: qemuArgv(["-f", "raw", "-O", "qcow2"], src),
      },
    },
    {
      id: `zlib${suffix}`,
      label: "raw → qcow2 zlib",
      kind: "forward",
      src,
      ext: "qcow2",
      argv: {
        ours: oursArgv(["-f", "raw", "--compress", "zlib"], src),
        qemu: qemuArgv(["-f", "raw", "-O", "qcow2", "-c"], src),
      },
    },
    {
      id: `zstd${suffix}`,
      label: "raw → qcow2 zstd",
      kind: "forward",
      src,
      ext: "qcow2",
      argv: {
        ours: oursArgv(["-f", "raw", "--compress", "zstd"], src),
        qemu: qemuArgv([
          "-f",
          "raw",
          "-O",
          "qcow2",
          "-c",
          "-o",
          "compression_type=zstd",
        ], src),
      },
    },
  ];
}

function expandOp(id: string, label: string, input: string): Op {
  return {
    id: `expand-${id}`,
    label: `${label} qcow2 (qemu-img's) → raw`,
    kind: "expand",
    src: input,
    ext: "raw",
    argv: {
      ours: oursArgv(["-f", "qcow2", "-O", "raw"], input),
      qemu: qemuArgv(["-f", "qcow2", "-O", "raw"], input),
    },
  };
}

/** The tools row's images: with --quick, issue 26's image alone. */
function toolsImages(quick: boolean) {
  return quick ? TOOLS_IMAGES.slice(0, 1) : TOOLS_IMAGES;
}

/** `--tools`: only the check/map/compare row, its images kept. */
async function toolsOnly(reps: number, quick: boolean): Promise<number> {
  try {
    const tools = await toolsSection(RUN_DIR, reps, toolsImages(quick));
    console.log(targetLines(tools.targets).join("\n"));
    console.log(`\n${tools.markdown.join("\n")}`);
    return tools.failed.length > 0 ? 1 : 0;
  } finally {
    await Deno.remove(RUN_DIR, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------- main

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean" },
      cold: { type: "boolean" },
      "no-drop": { type: "boolean" },
      tools: { type: "boolean" },
      "keep-cache": { type: "boolean" },
      reps: { type: "string" },
      "skip-curl": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const missing: string[] = [];
  if (!await have("qemu-img")) {
    missing.push("qemu-img (apt-get install qemu-utils)");
  }
  if (!await have("mkfs.ext4", ["-V"])) {
    missing.push("mkfs.ext4 (apt-get install e2fsprogs)");
  }
  if (!await have("/usr/bin/time", ["--version"])) {
    missing.push("GNU time at /usr/bin/time (apt-get install time)");
  }
  if (missing.length > 0) {
    console.error(
      `Cannot run the comparison: it needs ${missing.join(", ")}`,
    );
    return 2;
  }
  const quick = values.quick ?? false;
  const cold = values.cold ?? false;
  if (cold && !values["no-drop"]) {
    try {
      await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3");
    } catch (err) {
      console.error(
        `Cannot run the comparison cold: cannot drop the page cache (${
          (err as Error).message
        }); run it as root`,
      );
      return 2;
    }
    protocol.dropCaches = true;
  }
  const reps = values.reps ? Number(values.reps) : quick ? 1 : 3;
  if (!Number.isInteger(reps) || reps < 1) {
    console.error(
      `Cannot run the comparison: --reps ${values.reps} is not a positive integer`,
    );
    return 2;
  }
  const warmUp = !cold && reps > 1;
  await Deno.mkdir(RUN_DIR, { recursive: true });
  if (values.tools) return await toolsOnly(reps, quick);

  // Scale down when the disk cannot hold the images and outputs (about
  // three times the virtual size: source, 4x copy, kept qemu-img outputs,
  // one output being measured; data fills half of the virtual size).
  let virtualSize = quick ? GiB : 4 * GiB;
  const avail = Number(
    (await must("df", ["-B1", "--output=avail", CACHE])).trim().split("\n")
      .at(-1),
  );
  while (virtualSize > 256 * MiB && avail < 3 * virtualSize + GiB) {
    virtualSize /= 2;
  }
  if (virtualSize !== (quick ? GiB : 4 * GiB)) {
    log(
      `Only ${gib(avail)} free in ${CACHE}: using a ${gib(virtualSize)} disk`,
    );
  }

  const info = await machine();
  log(
    `${info.cpu}, ${info.cores} cores, ${info.ramGiB} GiB RAM, Deno ${info.deno}, ${info.qemu}; ${info.code}`,
  );
  if (info.busyProcesses.length > 0) {
    log(`Other busy processes: ${info.busyProcesses.join(", ")}`);
  }

  let exitCode = 0;
  const results: Result[] = [];
  const cleanupRun = () =>
    Deno.remove(RUN_DIR, { recursive: true }).catch(() => {});
  const onSignal = () => {
    try {
      Deno.removeSync(RUN_DIR, { recursive: true });
    } catch {
      // already gone
    }
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    const [disk, meta] = await buildDisk(virtualSize);
    log(
      `Disk: ${gib(virtualSize)} virtual, ${mib(meta.allocated)} allocated (${
        (meta.allocated / virtualSize * 100).toFixed(0)
      }%), from ${meta.dirs.join(" ")}${
        meta.hardlinked ? " (hardlinked)" : " (copied)"
      }`,
    );
    const big = await buildBigDisk(disk, virtualSize);

    // Warm up: the source into the page cache for both tools alike, and
    // Deno's module cache (transpiled TypeScript, npm packages) for ours.
    if (!cold) await must("sh", ["-c", `cat "${disk}" "${big}" > /dev/null`]);
    await warmModuleCache([[], ["--compress", "zlib"], ["--compress", "zstd"]]);

    log(`\nForward conversions (${reps} repetition(s) each):`);
    const kept: Record<string, string> = {};
    for (const op of forwardOps(disk)) {
      kept[op.id] = `${RUN_DIR}input-${op.id}.qcow2`;
      results.push(
        await runOp(op, reps, disk, virtualSize, 1, kept[op.id], warmUp),
      );
    }
    log(`\nExpansions of qemu-img's outputs (${reps} repetition(s) each):`);
    for (const op of forwardOps(disk)) {
      if (!await exists(kept[op.id])) {
        log(`  skipping expand-${op.id}: qemu-img's output failed`);
        continue;
      }
      results.push(
        await runOp(
          expandOp(op.id, op.id, kept[op.id]),
          reps,
          disk,
          virtualSize,
          1,
          undefined,
          warmUp,
        ),
      );
    }

    log(`\nFloors: start-up (${reps} repetition(s)) and the codecs' speed:`);
    const floors = await measureFloors(disk, reps, info.cores);

    log(`\nOurs under Node beside Deno (${reps} repetition(s) each):`);
    const zstdOp = forwardOps(disk).find((op) => op.id === "zstd")!;
    const nodeOps = [{ op: zstdOp, reference: disk, virtualSize }];
    if (await exists(kept.zstd)) {
      nodeOps.push({
        op: expandOp("zstd", "zstd", kept.zstd),
        reference: disk,
        virtualSize,
      });
    }
    const node: NodeRow[] = await runNode(nodeOps, reps) ?? [];

    log(`\nqcow2 → raw over HTTP, 50 ms per request (${reps} repetition(s)):`);
    const fromUrl = (url: string, dst: string) =>
      oursArgv(["-f", "qcow2", "-O", "raw"], url)(dst);
    const http: HttpRow[] = await runHttp(RUN_DIR, disk, reps, fromUrl) ?? [];
    log(`\n… each connection capped at 20 MB/s (${reps} repetition(s)):`);
    const capped = await exists(kept.zstd)
      ? await runCapped(RUN_DIR, kept.zstd, reps, fromUrl, {
        qemu: !values["skip-curl"],
      })
      : undefined;
    for (const f of Object.values(kept)) await Deno.remove(f).catch(() => {});

    const tools = await toolsSection(RUN_DIR, reps, toolsImages(quick));
    const failed = [...tools.failed];

    log(`\nPeak RSS at 4× virtual size (${gib(4 * virtualSize)}), once each:`);
    let bigZstd: string | undefined;
    for (const op of forwardOps(big, "-x4")) {
      const keep = op.id === "zstd-x4"
        ? `${RUN_DIR}input-zstd-x4.qcow2`
        : undefined;
      const r = await runOp(op, 1, big, 4 * virtualSize, 4, keep);
      results.push(r);
      if (keep && await exists(keep)) bigZstd = keep;
    }
    if (bigZstd) {
      const op = expandOp("zstd-x4", "zstd", bigZstd);
      results.push(await runOp(op, 1, big, 4 * virtualSize, 4));
      await Deno.remove(bigZstd).catch(() => {});
    }

    failed.push(...failures(results), ...nodeFailures(node));
    for (const r of http) {
      if (r.problem) failed.push(`http ${r.image}: ${r.problem}`);
    }
    if (capped?.problem) failed.push(`http capped: ${capped.problem}`);
    if (failed.length > 0) exitCode = 1;

    const mainRows = mainTable(results, reps);
    const scaling = scalingTable(results);
    const ts = [
      ...targets(results, floors),
      ...httpTargets(http),
      ...tools.targets,
      ...(capped ? cappedTargets(capped) : []),
    ];

    console.log(`\n${textTable(mainRows)}\n\n${textTable(scaling)}\n`);
    console.log(targetLines(ts).join("\n"));
    if (failed.length > 0) {
      console.log(
        `\nFAILED VERIFICATION:\n${failed.map((f) => `- ${f}`).join("\n")}`,
      );
    }

    const md = [
      `### qcow2pipe vs qemu-img convert (${info.date.slice(0, 10)})`,
      "",
      ...machineLines(info),
      inputLine(meta),
      `- Ours: \`deno run -A cli.ts convert -q --force [-f raw -O qcow2 | -f raw --compress zlib | -f raw --compress zstd | -f qcow2 -O raw] SRC DST\` (default workers = ${info.cores})`,
      "- qemu-img: `qemu-img convert -W -m 16 [-f raw -O qcow2 [-c [-o compression_type=zstd]] | -f qcow2 -O raw] SRC DST`",
      `- Times: median of ${reps} run(s) (range in parentheses)${
        warmUp ? " after an untimed warm-up run of each tool" : ", no warm-up"
      }, wall seconds from GNU time, \`sync\`${
        cold ? " and the page cache dropped" : ""
      } before each; CPU s = user + system seconds of the command (all threads); sizes in MiB (du = allocated blocks); RSS = peak resident set (GNU time %M), median`,
      `- Every output verified with qemu-img compare against the source (plus qemu-img check for qcow2, exact size for raw): ${
        failed.length === 0 ? "all passed" : `${failed.length} FAILED`
      }`,
      noiseLine(results, info),
      "",
      markdownTable(mainRows),
      "",
      `Peak RSS at 4× virtual size (${
        gib(4 * virtualSize)
      }: same data, sparse tail), one run each:`,
      "",
      markdownTable(scaling),
      "",
      ...(node.length > 0 ? [...nodeMarkdown(node), ""] : []),
      ...(http.length > 0 ? [...httpMarkdown(http), ""] : []),
      ...tools.markdown,
      "",
      ...(capped ? [...cappedMarkdown(capped), ""] : []),
      "Targets:",
      "",
      ...targetLines(ts),
    ];
    await finish("results", md, failed, { machine: info, reps, results }, meta);
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    await cleanupRun();
    if (!values["keep-cache"]) await removeCachedDisks();
  }
  return exitCode;
}

if (import.meta.main) {
  Deno.exit(await main());
}
