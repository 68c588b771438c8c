// Issue 26's `check`/`map`/`compare` row for bench/compare.ts: both tools
// on sparse qcow2 images of a TiB and more (bench/_compare_tools_images.ts),
// interleaved, each run under GNU time after `sync` (and the page cache
// dropped, with --cold). Every run's stdout and exit status must be the
// same as qemu-img's (the run is reported FAILED otherwise).
//
// What is compared with what: `compare IMG COPY`, where COPY is IMG
// converted by `qemu-img convert -O qcow2` (what a user checks after a
// conversion: same guest content, a different layout, no snapshots), so
// that both tools read every data cluster of both images.

import {
  markdownTable,
  type Sample,
  type Target,
  textTable,
} from "./_compare_report.ts";
import { CLI, DENO, timed } from "./_compare_run.ts";
import { GiB, loadavg, log, median, mib, RSS_TARGET } from "./_compare_util.ts";
import { type ToolsImage, toolsImage } from "./_compare_tools_images.ts";

/** One command of the row. */
interface ToolsOp {
  id: string;
  /** Arguments after `qemu-img` (and after our `cli.ts`). */
  args: (image: ToolsImage) => string[];
}

const OPS: ToolsOp[] = [
  { id: "check", args: (im) => ["check", im.path] },
  { id: "map", args: (im) => ["map", im.path] },
  { id: "map-json", args: (im) => ["map", "--output=json", im.path] },
  { id: "compare", args: (im) => ["compare", im.path, im.copy] },
];

/** The images measured: issue 26's, without snapshots, and larger ones. */
export const TOOLS_IMAGES: { tib: number; snapshots: number }[] = [
  { tib: 1, snapshots: 100 },
  { tib: 1, snapshots: 0 },
  { tib: 4, snapshots: 0 },
  { tib: 16, snapshots: 0 },
];

/** All runs of one command on one image. */
export interface ToolsResult {
  image: string;
  virtualSize: number;
  op: string;
  samples: { ours: Sample[]; qemu: Sample[] };
}

/**
 * Runs `argv` with stdout into `out` (through `sh -c exec`, so that GNU
 * time measures the command itself), and returns the sample and exit code.
 */
async function measure(
  argv: string[],
  out: string,
): Promise<{ sample: Sample; code: number; stderr: string }> {
  const load = await loadavg();
  const t = await timed(["sh", "-c", 'exec "$@" > "$0"', out, ...argv]);
  return {
    sample: {
      secs: t.secs,
      cpuSecs: t.cpuSecs,
      otherCores: t.otherCores,
      rssKiB: t.rssKiB,
      size: 0,
      allocated: 0,
      verified: true,
      load,
    },
    code: t.code,
    stderr: t.stderr,
  };
}

/**
 * Measures every command of {@linkcode OPS} on each image `reps` times
 * with each tool, alternating which goes first (one run each beyond the
 * first image), in `dir`.
 */
export async function runTools(
  dir: string,
  reps: number,
  images = TOOLS_IMAGES,
): Promise<ToolsResult[]> {
  const results: ToolsResult[] = [];
  for (const [n, spec] of images.entries()) {
    const image = await toolsImage(spec.tib, spec.snapshots);
    const runs = n === 0 ? reps : 1;
    log(
      `  ${image.name}: ${spec.tib} TiB, 64 KiB of data in every GiB, ${spec.snapshots} snapshots (${runs} run(s) each)`,
    );
    for (const op of OPS) {
      const r: ToolsResult = {
        image: image.name,
        virtualSize: image.virtualSize,
        op: op.id,
        samples: { ours: [], qemu: [] },
      };
      for (let rep = 0; rep < runs; rep++) {
        const order = rep % 2 === 0
          ? ["ours", "qemu"] as const
          : ["qemu", "ours"] as const;
        const got: Record<string, { code: number; out: string }> = {};
        for (const tool of order) {
          const argv = tool === "ours"
            ? [DENO, "run", "-A", CLI, ...op.args(image)]
            : ["qemu-img", ...op.args(image)];
          const outPath = `${dir}${tool}-${op.id}.out`;
          const m = await measure(argv, outPath);
          got[tool] = {
            code: m.code,
            out: await Deno.readTextFile(outPath).catch(() => ""),
          };
          await Deno.remove(outPath).catch(() => {});
          r.samples[tool].push(m.sample);
          log(
            `    ${op.id.padEnd(9)} ${tool.padEnd(4)} ${
              m.sample.secs.toFixed(2).padStart(6)
            } s  CPU ${m.sample.cpuSecs.toFixed(2).padStart(6)} s  RSS ${
              mib(m.sample.rssKiB * 1024).padStart(9)
            }  exit ${m.code}  (load ${m.sample.load.toFixed(2)})`,
          );
        }
        // The check: our stdout and exit status are qemu-img's.
        let problem: string | undefined;
        if (got.ours.code !== got.qemu.code) {
          problem = `exit ${got.ours.code}, qemu-img exit ${got.qemu.code}`;
        } else if (got.ours.out !== got.qemu.out) {
          problem =
            `stdout differs from qemu-img's (${got.ours.out.length} against ${got.qemu.out.length} characters)`;
        }
        if (problem) {
          const s = r.samples.ours.at(-1)!;
          s.verified = false;
          s.problem = problem;
          log(`    FAILED: ${problem}`);
        }
      }
      results.push(r);
    }
  }
  return results;
}

const summary = (ss: Sample[]) => ({
  secs: median(ss.map((s) => s.secs)),
  cpu: median(ss.map((s) => s.cpuSecs)),
  rss: median(ss.map((s) => s.rssKiB)) * 1024,
  ok: ss.every((s) => s.verified),
});

/** The table of every image and command: times, ratio, CPU, RSS. */
export function toolsTable(results: ToolsResult[]): string[][] {
  const rows = [[
    "image",
    "command",
    "ours s",
    "qemu-img s",
    "ours/qemu",
    "ours CPU s",
    "qemu CPU s",
    "ours RSS",
    "qemu RSS",
    "same output",
  ]];
  for (const r of results) {
    const o = summary(r.samples.ours);
    const q = summary(r.samples.qemu);
    rows.push([
      r.image,
      r.op,
      o.secs.toFixed(2),
      q.secs.toFixed(2),
      `${(o.secs / q.secs).toFixed(2)}×`,
      o.cpu.toFixed(2),
      q.cpu.toFixed(2),
      mib(o.rss),
      mib(q.rss),
      o.ok ? "yes" : "NO",
    ]);
  }
  return rows;
}

/**
 * Issue 26's targets for the row: each command on the first image (1 TiB,
 * 100 snapshots) and on the others at most as slow as qemu-img, the same
 * output, peak RSS ≤ 160 MiB, and no growth of RSS with virtual size
 * (the largest image against the 1 TiB one without snapshots).
 */
export function toolsTargets(results: ToolsResult[]): Target[] {
  const out: Target[] = [];
  for (const r of results) {
    const o = summary(r.samples.ours);
    const x = o.secs / summary(r.samples.qemu).secs;
    out.push({
      name: `${r.op} on ${r.image} time ≤ 1.0× qemu-img, same output`,
      met: x <= 1 && o.ok,
      measured: `${x.toFixed(2)}×${o.ok ? "" : ", output differs"}`,
    });
  }
  const peak = Math.max(
    ...results.flatMap((r) => r.samples.ours.map((s) => s.rssKiB * 1024)),
  );
  out.push({
    name: `check/map/compare peak RSS ≤ ${mib(RSS_TARGET)}`,
    met: peak <= RSS_TARGET,
    measured: mib(peak),
  });
  const byImage = (name: string, op: string) =>
    results.find((r) => r.image === name && r.op === op);
  const sizes = [...new Set(results.map((r) => r.virtualSize))];
  const largest = results.find((r) => r.virtualSize === Math.max(...sizes))
    ?.image;
  if (largest && largest !== "1t" && byImage("1t", "check")) {
    for (const op of OPS) {
      const small = byImage("1t", op.id);
      const big = byImage(largest, op.id);
      if (!small || !big) continue;
      const g = summary(big.samples.ours).rss /
          summary(small.samples.ours).rss - 1;
      out.push({
        name: `${op.id} peak RSS growth ≤ 10% from 1 TiB to ${
          big.virtualSize / GiB / 1024
        } TiB`,
        met: g <= 0.1,
        measured: `${(g * 100).toFixed(1)}%`,
      });
    }
  }
  return out;
}

/** What the row adds to bench/compare.ts's report. */
export interface ToolsSection {
  results: ToolsResult[];
  /** Markdown lines: the table. */
  markdown: string[];
  targets: Target[];
  /** One line per run whose output was not qemu-img's. */
  failed: string[];
}

/**
 * Runs the row (`reps` runs of each command on the first image, one on the
 * larger ones) in `dir` and prints its table.
 */
export async function toolsSection(
  dir: string,
  reps: number,
  images = TOOLS_IMAGES,
): Promise<ToolsSection> {
  log(
    `\ncheck, map, compare on sparse qcow2 images (compare: IMG against qemu-img convert's copy of it):`,
  );
  const results = await runTools(dir, reps, images);
  const rows = toolsTable(results);
  console.log(`\n${textTable(rows)}\n`);
  return {
    results,
    markdown: [
      `\`check\`, \`map\` (human and JSON), \`compare\` on sparse qcow2 images made by qemu-img (64 KiB of data in every GiB; \`1t-s100\`: 1 TiB with 100 internal snapshots; \`compare IMG COPY\` where COPY is \`qemu-img convert -O qcow2 IMG\`), median of ${reps} on the first image, one run on the others; "same output" = stdout and exit status identical to qemu-img's:`,
      "",
      markdownTable(rows),
    ],
    targets: toolsTargets(results),
    failed: results.flatMap((r) =>
      r.samples.ours.filter((s) => !s.verified).map((s) =>
        `${r.op} on ${r.image}: ${s.problem}`
      )
    ),
  };
}
