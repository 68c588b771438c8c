// Tables and targets for bench/compare.ts.

import type { DiskMeta } from "./_compare_disk.ts";
import { floorOf, type Floors } from "./_compare_floor.ts";
import { gib, type Machine, median, mib, RSS_TARGET } from "./_compare_util.ts";

/** Which program ran. */
export type Tool = "ours" | "qemu";

/** One timed run. */
export interface Sample {
  secs: number;
  /** User + system CPU seconds of the command (all its threads). */
  cpuSecs: number;
  /** CPU used by everything else during the run, in cores (noise). */
  otherCores: number;
  rssKiB: number;
  size: number;
  allocated: number;
  verified: boolean;
  problem?: string;
  load: number;
}

/** All runs of one operation. */
export interface Result {
  op: string;
  label: string;
  kind: "forward" | "expand";
  scale: 1 | 4;
  samples: Record<Tool, Sample[]>;
}

export interface Summary {
  secs: number;
  cpuSecs: number;
  min: number;
  max: number;
  rss: number;
  size: number;
  allocated: number;
  ok: boolean;
}

export function summarize(samples: Sample[]): Summary {
  const good = samples.filter((s) => s.verified);
  const use = good.length > 0 ? good : samples;
  const secs = use.map((s) => s.secs);
  return {
    secs: median(secs),
    cpuSecs: median(use.map((s) => s.cpuSecs)),
    min: Math.min(...secs),
    max: Math.max(...secs),
    rss: median(use.map((s) => s.rssKiB)) * 1024,
    size: median(use.map((s) => s.size)),
    allocated: median(use.map((s) => s.allocated)),
    ok: good.length === samples.length,
  };
}

export function secsText(s: Summary, reps: number): string {
  const v = s.ok ? s.secs.toFixed(2) : `${s.secs.toFixed(2)} (FAILED)`;
  return reps > 1 ? `${v} (${s.min.toFixed(2)}–${s.max.toFixed(2)})` : v;
}

export function mainTable(results: Result[], reps: number): string[][] {
  const rows = [[
    "operation",
    "ours s",
    "qemu-img s",
    "ours/qemu",
    "ours CPU s",
    "qemu CPU s",
    "ours size",
    "qemu size",
    "size ratio",
    "ours du",
    "qemu du",
    "ours RSS",
    "qemu RSS",
  ]];
  for (const r of results.filter((r) => r.scale === 1)) {
    const o = summarize(r.samples.ours);
    const q = summarize(r.samples.qemu);
    rows.push([
      r.label,
      secsText(o, reps),
      secsText(q, reps),
      `${(o.secs / q.secs).toFixed(2)}×`,
      o.cpuSecs.toFixed(2),
      q.cpuSecs.toFixed(2),
      mib(o.size),
      mib(q.size),
      `${(o.size / q.size).toFixed(3)}×`,
      mib(o.allocated),
      mib(q.allocated),
      mib(o.rss),
      mib(q.rss),
    ]);
  }
  return rows;
}

export function scalingTable(results: Result[]): string[][] {
  const rows = [[
    "operation",
    "ours RSS 1×",
    "ours RSS 4×",
    "growth",
    "qemu RSS 1×",
    "qemu RSS 4×",
    "ours s 4×",
    "qemu-img s 4×",
  ]];
  for (const big of results.filter((r) => r.scale === 4)) {
    const base = results.find((r) =>
      r.scale === 1 && r.label === big.label && r.kind === big.kind
    );
    if (!base) continue;
    const o1 = summarize(base.samples.ours);
    const o4 = summarize(big.samples.ours);
    const q1 = summarize(base.samples.qemu);
    const q4 = summarize(big.samples.qemu);
    rows.push([
      big.label,
      mib(o1.rss),
      mib(o4.rss),
      `${((o4.rss / o1.rss - 1) * 100).toFixed(1)}%`,
      mib(q1.rss),
      mib(q4.rss),
      secsText(o4, 1),
      secsText(q4, 1),
    ]);
  }
  return rows;
}

export function textTable(rows: string[][]): string {
  const widths = rows[0].map((_, i) =>
    Math.max(...rows.map((r) => r[i].length))
  );
  return rows.map((r) =>
    r.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))
      .join("  ")
  ).join("\n");
}

export function markdownTable(rows: string[][]): string {
  const [head, ...body] = rows;
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map((_, i) => (i === 0 ? "---" : "---:")).join(" | ")} |`,
    ...body.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

export interface Target {
  name: string;
  met: boolean;
  measured: string;
  /**
   * The least ratio this machine allows (or, for a row without codec
   * work, the ratio at qemu-img's data speed), named, and what it is made
   * of.
   */
  floor?: string;
}

/**
 * Issue 26's targets on the main rows; with `floors`, each time target
 * also says the ratio no run of ours could beat here (bench/_compare_floor.ts).
 */
export function targets(results: Result[], floors?: Floors): Target[] {
  const base = (id: string) =>
    results.find((r) => r.op === id && r.scale === 1);
  const ratio = (id: string) => {
    const r = base(id);
    if (!r) return NaN;
    return summarize(r.samples.ours).secs / summarize(r.samples.qemu).secs;
  };
  const sizeRatio = (id: string) => {
    const r = base(id);
    if (!r) return NaN;
    return summarize(r.samples.ours).size / summarize(r.samples.qemu).size;
  };
  const out: Target[] = [];
  const time = (id: string, label: string, limit: number) => {
    const x = ratio(id);
    if (Number.isNaN(x)) return;
    const qemuSecs = summarize(base(id)!.samples.qemu).secs;
    const floor = floors && floorOf(floors, id, qemuSecs);
    out.push({
      name: `${label} time ≤ ${limit}× qemu-img`,
      met: x <= limit && summarize(base(id)!.samples.ours).ok,
      measured: `${x.toFixed(2)}×`,
      floor: floor &&
        `${floor.name} ${(floor.secs / qemuSecs).toFixed(2)}×: ${floor.why}`,
    });
  };
  // Issue 26's targets (meant for the cold protocol, --cold).
  time("zlib", "convert zlib", 0.38);
  time("zstd", "convert zstd", 0.5);
  time("sparse", "convert uncompressed (sparse)", 0.7);
  time("expand-sparse", "expand sparse qcow2", 0.7);
  time("expand-zlib", "expand zlib qcow2", 0.3);
  time("expand-zstd", "expand zstd qcow2", 0.4);
  for (const [id, limit] of [["zlib", 1.0], ["zstd", 1.0]] as const) {
    const x = sizeRatio(id);
    if (Number.isNaN(x)) continue;
    out.push({
      name: `${id} output size ≤ ${limit.toFixed(2)}× qemu-img's`,
      met: x <= limit,
      measured: `${x.toFixed(3)}×`,
    });
  }
  const all = results.flatMap((r) => r.samples.ours);
  if (all.length > 0) {
    const peak = Math.max(...all.map((s) => s.rssKiB)) * 1024;
    out.push({
      name: `peak RSS ≤ ${mib(RSS_TARGET)} (every run of ours, 1× and 4×)`,
      met: peak <= RSS_TARGET,
      measured: mib(peak),
    });
  }
  for (const big of results.filter((r) => r.scale === 4)) {
    const b = results.find((r) =>
      r.scale === 1 && r.label === big.label && r.kind === big.kind
    );
    if (!b) continue;
    const g = summarize(big.samples.ours).rss / summarize(b.samples.ours).rss -
      1;
    out.push({
      name: `peak RSS growth ≤ 10% at 4× virtual size: ${big.label}`,
      met: g <= 0.1,
      measured: `${(g * 100).toFixed(1)}%`,
    });
  }
  return out;
}

export function targetLines(ts: Target[]): string[] {
  return ts.map((t) =>
    `- ${t.met ? "MET" : "NOT MET"}: ${t.name} (measured ${t.measured}${
      t.floor ? `; ${t.floor}` : ""
    })`
  );
}

/** Every run whose output failed its check, one line each. */
export function failures(results: Result[]): string[] {
  return results.flatMap((r) =>
    (["ours", "qemu"] as const).flatMap((t) =>
      r.samples[t].filter((s) => !s.verified).map((s) =>
        `${r.op}${r.scale === 4 ? " (4×)" : ""} ${t}: ${s.problem}`
      )
    )
  );
}

/** The markdown lines saying what ran where: machine, versions, code. */
export function machineLines(info: Machine): string[] {
  return [
    `- Machine: ${info.cpu}, ${info.cores} cores, ${info.ramGiB} GiB RAM, Linux ${info.kernel}; work dir on ${info.workDirFs}`,
    `- Deno ${info.deno}; ${info.qemu}; ${info.mkfs}`,
    `- Code: ${info.code}`,
  ];
}

/** The markdown line describing the bench disk. */
export function inputLine(meta: DiskMeta): string {
  return `- Input: ${
    gib(meta.virtualSize)
  } raw disk, ext4 made by \`mkfs.ext4 -q -F -d\` from ${
    meta.dirs.join(" ")
  }; ${mib(meta.allocated)} allocated`;
}

/**
 * The markdown line on noise: the cores other processes kept busy during
 * the timed runs, the 1-minute load average when they started, and what
 * was busy at the start.
 */
export function noiseLine(results: Result[], info: Machine): string {
  const all = results.flatMap((r) => [...r.samples.ours, ...r.samples.qemu]);
  const others = all.map((s) => s.otherCores);
  const loads = all.map((s) => s.load);
  return `- Noise: other processes kept a median ${
    median(others).toFixed(2)
  } (max ${
    Math.max(...others).toFixed(2)
  }) of the ${info.cores} cores busy during the timed runs (machine busy time from /proc/stat minus the command's own CPU time); 1-minute load average at the start of each run: median ${
    median(loads).toFixed(2)
  } (${Math.min(...loads).toFixed(2)}–${
    Math.max(...loads).toFixed(2)
  }), which counts the measured commands too${
    info.busyProcesses.length > 0
      ? `; busy at start: ${info.busyProcesses.join(", ")}`
      : ""
  }`;
}
