// Runs the deno bench suite (or some of its files) and prints each bench
// as MB/s, computed from the "[N MiB/iter]" tag in its name and deno
// bench's time per iteration, as a markdown table.
//
//   deno run -A bench/throughput.ts              # every *_bench.ts file
//   deno run -A bench/throughput.ts codec zero   # files whose name has these
//   deno bench -A --json bench/ > out.json && deno run -A bench/throughput.ts --json out.json
//
// Columns: MB/s from the mean time per iteration, and from p75 (less
// sensitive to the outliers a noisy machine produces; deno bench reports
// no median). 1 MB = 10^6 bytes.

import { parseArgs } from "node:util";

interface BenchStats {
  n: number;
  min: number;
  max: number;
  avg: number;
  p75: number;
}

interface BenchJson {
  runtime: string;
  cpu: string;
  benches: {
    origin: string;
    group: string | null;
    name: string;
    baseline: boolean;
    results: ({ ok: BenchStats } | { failed: unknown })[];
  }[];
}

const UNITS: Record<string, number> = {
  KiB: 1024,
  MiB: 1024 * 1024,
  GiB: 1024 * 1024 * 1024,
};

/** Bytes per iteration from a name's "[N MiB/iter]" tag, or undefined. */
export function bytesPerIter(name: string): number | undefined {
  const m = name.match(/\[([\d.]+) (KiB|MiB|GiB)\/iter\]/);
  return m ? Number(m[1]) * UNITS[m[2]] : undefined;
}

function rate(bytes: number, ns: number): string {
  const mbs = (bytes / ns) * 1e3; // bytes/ns = GB/s; x1000 = MB/s
  return mbs >= 10_000
    ? `${(mbs / 1000).toFixed(1)} GB/s`
    : `${mbs.toFixed(mbs >= 100 ? 0 : 1)} MB/s`;
}

function time(ns: number): string {
  if (ns >= 1e9) return `${(ns / 1e9).toFixed(2)} s`;
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(1)} ms`;
  return `${(ns / 1e3).toFixed(1)} µs`;
}

/** Formats deno bench JSON output as a markdown table with MB/s. */
export function table(json: BenchJson): string {
  const lines = [
    `${json.cpu}, ${json.runtime}`,
    "",
    "| file | group | bench | n | mean | p75 | MB/s (mean) | MB/s (p75) |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const b of json.benches) {
    const file = b.origin.split("/").at(-1);
    const r = b.results[0];
    if (!r || !("ok" in r)) {
      lines.push(`| ${file} | ${b.group ?? ""} | ${b.name} | failed | | | | |`);
      continue;
    }
    const s = r.ok;
    const bytes = bytesPerIter(b.name);
    lines.push(
      `| ${file} | ${b.group ?? ""} | ${b.name}${
        b.baseline ? " (baseline)" : ""
      } | ${s.n} | ${time(s.avg)} | ${time(s.p75)} | ${
        bytes ? rate(bytes, s.avg) : ""
      } | ${bytes ? rate(bytes, s.p75) : ""} |`,
    );
  }
  return lines.join("\n");
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(
      "Usage: deno run -A bench/throughput.ts [--json FILE] [FILE_FILTER...]",
    );
    Deno.exit(0);
  }
  let text: string;
  if (values.json) {
    text = await Deno.readTextFile(values.json);
  } else {
    const dir = new URL(".", import.meta.url).pathname;
    const files = [...Deno.readDirSync(dir)]
      .map((e) => e.name)
      .filter((n) => n.endsWith("_bench.ts"))
      .filter((n) =>
        positionals.length === 0 || positionals.some((p) => n.includes(p))
      )
      .sort()
      .map((n) => `${dir}${n}`);
    if (files.length === 0) {
      console.error(`No bench file matches ${positionals.join(", ")}`);
      Deno.exit(1);
    }
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["bench", "-A", "--json", ...files],
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "inherit",
    }).output();
    if (!out.success) {
      console.error("deno bench failed");
      Deno.exit(1);
    }
    text = new TextDecoder().decode(out.stdout);
  }
  // deno bench may print other lines around the JSON document.
  const start = text.indexOf("{");
  const end = text.lastIndexOf("}");
  console.log(table(JSON.parse(text.slice(start, end + 1)) as BenchJson));
}
