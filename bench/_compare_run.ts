// Running one measured operation for bench/compare.ts and bench/formats.ts:
// both tools' command lines, `sync` and GNU time around each run, the
// output verified by qemu-img, the runs interleaved.

import { type DiskMeta, diskUsage } from "./_compare_disk.ts";
import type { Result, Sample, Tool } from "./_compare_report.ts";
import {
  CACHE,
  loadavg,
  log,
  type Machine,
  MiB,
  mib,
  must,
  ROOT,
  sh,
} from "./_compare_util.ts";

/**
 * Where outputs and GNU time's report go; removed at the end of a run. One
 * per process: a second bench run at the same time keeps its own.
 */
export const RUN_DIR = `${CACHE}run-${Deno.pid}/`;
/** Our CLI. */
export const CLI = `${ROOT}cli.ts`;

/** One operation measured: what each tool runs, and how it is checked. */
export interface Op {
  id: string;
  label: string;
  kind: "forward" | "expand";
  src: string;
  argv: Record<Tool, (dst: string) => string[]>;
  ext: string;
}

/** The Deno running this, which runs our CLI too. */
export const DENO = Deno.execPath();

/** Our CLI's `convert` with `flags`, quiet, replacing DST. */
export function oursArgv(
  flags: string[],
  src: string,
): (dst: string) => string[] {
  return (dst) => [
    DENO,
    "run",
    "-A",
    CLI,
    "convert",
    "-q",
    "--force",
    ...flags,
    src,
    dst,
  ];
}

/** `qemu-img convert -W -m 16` (its fastest flags) with `flags`. */
export function qemuArgv(
  flags: string[],
  src: string,
): (dst: string) => string[] {
  return (dst) => [
    "qemu-img",
    "convert",
    "-W",
    "-m",
    "16",
    ...flags,
    src,
    dst,
  ];
}

/** Busy CPU seconds of the whole machine so far (from /proc/stat). */
async function busySecs(): Promise<number> {
  try {
    const line = (await Deno.readTextFile("/proc/stat")).split("\n")[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal ...: USER_HZ ticks
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / 100;
  } catch {
    return NaN;
  }
}

/** What GNU time said of one run. */
export interface Timing {
  secs: number;
  cpuSecs: number;
  otherCores: number;
  rssKiB: number;
  code: number;
  stderr: string;
}

/**
 * How each timed run starts. `dropCaches`: the page cache is dropped after
 * `sync` (`/proc/sys/vm/drop_caches`, as root), so that the source comes
 * from the disk, as a fresh download does for a user.
 */
export const protocol = { dropCaches: false };

/** Runs one command under GNU time after `sync` (and a cache drop). */
export async function timed(argv: string[]): Promise<Timing> {
  const timeFile = `${RUN_DIR}time.txt`;
  await must("sync", []);
  if (protocol.dropCaches) {
    await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3");
  }
  const busy0 = await busySecs();
  const out = await sh("/usr/bin/time", [
    "-f",
    "%e %M %U %S",
    "-o",
    timeFile,
    ...argv,
  ]);
  const busy1 = await busySecs();
  const last = (await Deno.readTextFile(timeFile)).trim().split("\n").at(-1)!;
  const [secs, rss, user, sys] = last.split(" ").map(Number);
  const cpuSecs = user + sys;
  return {
    secs,
    cpuSecs,
    otherCores: Math.max(0, (busy1 - busy0 - cpuSecs) / Math.max(secs, 0.01)),
    rssKiB: rss,
    code: out.code,
    stderr: out.stderr.trim(),
  };
}

/** Checks an output: identical guest content to `reference`, sane image. */
export async function verify(
  op: Op,
  out: string,
  reference: string,
  virtualSize: number,
): Promise<string | undefined> {
  if (op.kind === "forward") {
    const check = await sh("qemu-img", ["check", "-q", "-f", "qcow2", out]);
    if (check.code !== 0) {
      return `qemu-img check exit ${check.code}: ${
        (check.stdout + check.stderr).trim().split("\n").slice(0, 3).join("; ")
      }`;
    }
  } else {
    const size = (await Deno.stat(out)).size;
    if (size !== virtualSize) {
      return `raw output is ${size} bytes, expected ${virtualSize}`;
    }
  }
  const cmp = await sh("qemu-img", [
    "compare",
    "-f",
    "raw",
    "-F",
    op.kind === "forward" ? "qcow2" : "raw",
    reference,
    out,
  ]);
  if (cmp.code !== 0) {
    return `qemu-img compare exit ${cmp.code}: ${
      (cmp.stdout + cmp.stderr).trim()
    }`;
  }
  return undefined;
}

async function measure(
  op: Op,
  tool: Tool,
  reference: string,
  virtualSize: number,
  keepAs?: string,
): Promise<Sample> {
  const dst = `${RUN_DIR}${tool}-${op.id}.${op.ext}`;
  await Deno.remove(dst).catch(() => {});
  const load = await loadavg();
  const t = await timed(op.argv[tool](dst));
  let problem: string | undefined;
  let size = 0;
  let allocated = 0;
  if (t.code !== 0) {
    problem = `exit ${t.code}: ${t.stderr.split("\n").slice(-3).join("; ")}`;
  } else {
    size = (await Deno.stat(dst)).size;
    allocated = await diskUsage(dst);
    problem = await verify(op, dst, reference, virtualSize);
  }
  const sample: Sample = {
    secs: t.secs,
    cpuSecs: t.cpuSecs,
    otherCores: t.otherCores,
    rssKiB: t.rssKiB,
    size,
    allocated,
    verified: problem === undefined,
    problem,
    load,
  };
  const status = problem ? `FAILED: ${problem}` : "verified";
  log(
    `  ${op.id.padEnd(16)} ${tool.padEnd(4)} ${
      t.secs.toFixed(2).padStart(7)
    } s` +
      `  CPU ${t.cpuSecs.toFixed(2).padStart(6)} s` +
      `  RSS ${mib(t.rssKiB * 1024).padStart(9)}` +
      `  size ${mib(size).padStart(9)}  ${status}` +
      `  (others busy: ${t.otherCores.toFixed(2)} cores)`,
  );
  if (keepAs && !problem) await Deno.rename(dst, keepAs);
  else await Deno.remove(dst).catch(() => {});
  return sample;
}

/**
 * Runs `op` `reps` times with each tool, alternating which goes first,
 * each output verified against `reference` (a raw disk of the same guest
 * content; a raw output must be `virtualSize` bytes). With `warmUp`, one
 * untimed run of each tool comes first. `keepQemuAs`: where qemu-img's
 * first verified output is kept.
 */
export async function runOp(
  op: Op,
  reps: number,
  reference: string,
  virtualSize: number,
  scale: 1 | 4,
  keepQemuAs?: string,
  warmUp = reps > 1,
): Promise<Result> {
  const samples: Record<Tool, Sample[]> = { ours: [], qemu: [] };
  if (warmUp) {
    // One untimed run of each tool first: the first command after the
    // previous operation's gigabytes were written and deleted pays for
    // memory the machine has to find again (seen here: 4.6 s against a
    // median of 1.6 s for the same expansion), whichever tool it is.
    log(`  (warm-up runs, not counted)`);
    for (const tool of ["qemu", "ours"] as const) {
      await measure(op, tool, reference, virtualSize);
    }
  }
  for (let rep = 0; rep < reps; rep++) {
    const order: Tool[] = rep % 2 === 0 ? ["ours", "qemu"] : ["qemu", "ours"];
    for (const tool of order) {
      const keep = tool === "qemu" && samples.qemu.length === 0
        ? keepQemuAs
        : undefined;
      samples[tool].push(
        await measure(op, tool, reference, virtualSize, keep),
      );
    }
  }
  return { op: op.id, label: op.label, kind: op.kind, scale, samples };
}

/**
 * Fills Deno's module cache (transpiled TypeScript, npm packages) for
 * ours: a 1 MiB conversion with each of `compressions` (`[]` for none).
 */
export async function warmModuleCache(
  compressions: string[][],
): Promise<void> {
  const tiny = `${RUN_DIR}tiny.raw`;
  await Deno.writeFile(tiny, new Uint8Array(MiB).fill(1));
  for (const c of compressions) {
    const [cmd, ...args] = oursArgv(["-O", "qcow2", ...c], tiny)(
      `${RUN_DIR}tiny.qcow2`,
    );
    await must(cmd, args);
  }
}

/**
 * Prints the markdown report (with the failed checks after it) and writes
 * every sample to `bench/.cache/<prefix>-<date>.json`.
 */
export async function finish(
  prefix: string,
  md: string[],
  failed: string[],
  samples: { machine: Machine; reps: number; results: Result[] },
  disk: DiskMeta,
): Promise<void> {
  if (failed.length > 0) {
    md.push("", "Failed verification:", "", ...failed.map((f) => `- ${f}`));
  }
  console.log(`\n${md.join("\n")}`);
  const path = `${CACHE}${prefix}-${
    samples.machine.date.replace(/[:.]/g, "-")
  }.json`;
  await Deno.writeTextFile(
    path,
    JSON.stringify({ ...samples, disk }, null, 2),
  );
  log(`\nAll samples written to ${path}`);
}

/** Removes the cached disk images of bench/.cache/, not the results. */
export async function removeCachedDisks(): Promise<void> {
  for (const e of await Array.fromAsync(Deno.readDir(CACHE))) {
    if (e.name.startsWith("disk-") || e.name.startsWith("tree-")) {
      await Deno.remove(`${CACHE}${e.name}`, { recursive: true });
    }
  }
  log(
    "Removed the cached disk images (pass --keep-cache to keep them for the next run)",
  );
}
