// Our CLI under Node beside Deno for bench/compare.ts: the npm package
// (npm/build.ts, laid out in the run directory) runs the same command lines
// as `deno run -A cli.ts` for raw → zstd qcow2 and zstd qcow2 → raw. Runs
// alternate between the runtimes, each output verified by qemu-img.

import { buildPackage } from "../npm/build.ts";
import { markdownTable, type Sample, summarize } from "./_compare_report.ts";
import { have, loadavg, log, mib, must } from "./_compare_util.ts";
import { type Op, RUN_DIR, timed, verify } from "./_compare_run.ts";

/** The runtimes compared. */
type Runtime = "deno" | "node";

/** One operation's runs under each runtime. */
export interface NodeRow {
  label: string;
  /** `node --version`. */
  node: string;
  samples: Record<Runtime, Sample[]>;
}

/** `node cli.js convert -q --force FLAGS SRC DST`, as oursArgv for Deno. */
function nodeArgv(cli: string, denoArgv: string[]): string[] {
  const at = denoArgv.indexOf("convert");
  return ["node", cli, ...denoArgv.slice(at)];
}

/**
 * Times `ops` (ours under Deno, the argv of `op.argv.ours`) under Deno and
 * Node, `reps` times each, alternating which goes first.
 *
 * @returns The rows, or undefined when Node 20+ is not installed.
 */
export async function runNode(
  ops: { op: Op; reference: string; virtualSize: number }[],
  reps: number,
): Promise<NodeRow[] | undefined> {
  const node20 =
    "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)";
  if (!await have("node", ["-e", node20])) {
    log("  skipped: Node 20 or newer is not installed");
    return undefined;
  }
  const pkg = await buildPackage(`${RUN_DIR}npm`);
  const cli = `${pkg}/cli.js`;
  const version = (await must("node", ["--version"])).trim();
  const rows: NodeRow[] = [];
  for (const { op, reference, virtualSize } of ops) {
    const samples: Record<Runtime, Sample[]> = { deno: [], node: [] };
    for (let rep = 0; rep < reps; rep++) {
      const order: Runtime[] = rep % 2 === 0
        ? ["deno", "node"]
        : ["node", "deno"];
      for (const runtime of order) {
        const dst = `${RUN_DIR}${runtime}-${op.id}.${op.ext}`;
        const denoArgv = op.argv.ours(dst);
        const load = await loadavg();
        const t = await timed(
          runtime === "deno" ? denoArgv : nodeArgv(cli, denoArgv),
        );
        const problem = t.code !== 0
          ? `exit ${t.code}: ${t.stderr.split("\n").slice(-3).join("; ")}`
          : await verify(op, dst, reference, virtualSize);
        const size = problem ? 0 : (await Deno.stat(dst)).size;
        await Deno.remove(dst).catch(() => {});
        samples[runtime].push({
          secs: t.secs,
          cpuSecs: t.cpuSecs,
          otherCores: t.otherCores,
          rssKiB: t.rssKiB,
          size,
          allocated: 0,
          verified: problem === undefined,
          problem,
          load,
        });
        log(
          `  ${op.id.padEnd(16)} ${runtime} ${
            t.secs.toFixed(2).padStart(7)
          } s` +
            `  CPU ${t.cpuSecs.toFixed(2).padStart(6)} s` +
            `  RSS ${mib(t.rssKiB * 1024).padStart(9)}  ${
              problem ? `FAILED: ${problem}` : "verified"
            }`,
        );
      }
    }
    rows.push({ label: op.label, node: version, samples });
  }
  return rows;
}

/** The failed runs, for the report's list. */
export function nodeFailures(rows: NodeRow[]): string[] {
  return rows.flatMap((r) =>
    (["deno", "node"] as const).flatMap((runtime) =>
      r.samples[runtime].filter((s) => s.problem).map((s) =>
        `${r.label} under ${runtime}: ${s.problem}`
      )
    )
  );
}

/** The section's markdown: medians of Deno and Node side by side. */
export function nodeMarkdown(rows: NodeRow[]): string[] {
  const table = [[
    "operation",
    "Deno s",
    "Node s",
    "Node/Deno",
    "Deno CPU s",
    "Node CPU s",
    "Deno RSS",
    "Node RSS",
  ]];
  for (const r of rows) {
    const d = summarize(r.samples.deno);
    const n = summarize(r.samples.node);
    table.push([
      r.label,
      d.secs.toFixed(2),
      n.secs.toFixed(2),
      `${(n.secs / d.secs).toFixed(2)}×`,
      d.cpuSecs.toFixed(2),
      n.cpuSecs.toFixed(2),
      mib(d.rss),
      mib(n.rss),
    ]);
  }
  return [
    `Ours under Node ${
      rows[0]?.node
    } (the npm package's \`qcow2pipe\`, built by npm/build.ts) beside Deno, the same command lines, median of the runs:`,
    "",
    markdownTable(table),
  ];
}
