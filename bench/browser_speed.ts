// Conversion speed in headless Chromium (fflate, zstd-codec: what a browser
// gets) against Deno (node:zlib, and fflate / zstd-codec for reference), on
// the same raw input, through the same convert() of the one-file bundle
// (Chromium) or of the source (Deno).
//
//   deno task bench:browser [--size MIB] [--full PERCENT] [--reps N]
//
// The input is a raw disk of --size MiB (default 128) of which --full
// percent (default 50) holds 64 KiB clusters sampled from this machine's
// /usr (bench/_data.ts), the rest zero, written to bench/.cache/. Chromium
// reads it as a File picked in the page (web/index.html), as a stream;
// Deno reads the file as a stream. The qcow2 output is discarded (a sink
// that only counts), so storage does not count. Each case runs --reps
// times (default 3); the table gives the median wall time, its range, and
// MiB/s of input. Needs Debian's chromium.

import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CLUSTER, dataSource, makeDisk, MiB } from "./_data.ts";
import { buildBundle } from "../tests/_bundle.ts";
import { Chromium } from "../tests/_chromium.ts";
import { serveWeb } from "../web/serve.ts";
import { convert } from "../lib/convert.ts";
import { CodecPool } from "../lib/codec/pool.ts";
import { type CodecBackend, createCodec } from "../lib/codec/codecs.ts";
import type { HostWrite } from "../lib/writer/records.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "128" },
    full: { type: "string", default: "50" },
    reps: { type: "string", default: "3" },
  },
});
const size = Number(values.size) * MiB;
const full = Number(values.full);
const reps = Number(values.reps);
if (
  !(size >= CLUSTER && size % CLUSTER === 0) || !(full >= 0 && full <= 100) ||
  !(reps >= 1)
) {
  console.error(
    "Cannot run: --size must be whole 64 KiB clusters (MiB), --full 0-100, --reps >= 1",
  );
  Deno.exit(2);
}

const CACHE = fileURLToPath(new URL("./.cache/", import.meta.url));
await Deno.mkdir(CACHE, { recursive: true });
const input = join(CACHE, `browser-input-${values.size}M-${full}.raw`);
await Deno.writeFile(input, makeDisk(size / CLUSTER, full));

interface Case {
  runtime: string;
  compression: "zlib" | "zstd";
  backend: string;
  workers: number;
  ms: number[];
  fileSize: number;
}
const cases: Case[] = [];
const CASES: { compression: "zlib" | "zstd"; workers: number }[] = [
  { compression: "zlib", workers: 1 },
  { compression: "zlib", workers: 2 },
  { compression: "zstd", workers: 1 },
  { compression: "zstd", workers: 2 },
];

function record(
  runtime: string,
  c: { compression: "zlib" | "zstd"; workers: number },
  backend: string,
  ms: number,
  fileSize: number,
): void {
  let row = cases.find((r) =>
    r.runtime === runtime && r.compression === c.compression &&
    r.backend === backend && r.workers === c.workers
  );
  if (!row) {
    row = { runtime, ...c, backend, ms: [], fileSize };
    cases.push(row);
  }
  row.ms.push(ms);
  console.error(
    `${runtime} ${c.compression} on ${backend}, ${c.workers} worker(s): ${
      (ms / 1000).toFixed(2)
    } s, ${fileSize} bytes`,
  );
}

// Chromium: the page's bundle, the picked File's stream, a counting sink.
{
  const dir = await Deno.makeTempDir({ prefix: "qcow2pipe-bench-" });
  try {
    const bundle = await buildBundle(join(dir, "qcow2pipe.js"));
    await using server = serveWeb({ port: 0, bundle, onListen() {} });
    await using browser = await Chromium.launch();
    await browser.page.goto(`http://127.0.0.1:${server.addr.port}/`);
    await browser.waitFor(`document.body.dataset.state === "idle"`, "page");
    await browser.pickFiles("#file", [input]);
    await browser.waitFor(`document.body.dataset.state === "ready"`, "file");
    for (let rep = 0; rep < reps; rep++) {
      for (const c of CASES) {
        const r = await browser.page.evaluate(`(async () => {
          const q = await import("@qcow2pipe/qcow2pipe/core");
          const file = document.getElementById("file").files[0];
          const backend = (await q.createCodec({ type: "${c.compression}" })).backend;
          const pool = new q.CodecPool({ workers: ${c.workers} });
          try {
            const t0 = performance.now();
            const summary = await q.convert(file.stream(), new WritableStream(), {
              compression: "${c.compression}", pool,
            });
            return { backend, ms: performance.now() - t0, fileSize: summary.fileSize };
          } finally {
            await pool.close();
          }
        })()`) as { backend: string; ms: number; fileSize: number };
        record("Chromium", c, r.backend, r.ms, r.fileSize);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// Deno: the same convert() from source, on node:zlib and on the browser's
// codecs.
const DENO_BACKENDS: Record<"zlib" | "zstd", CodecBackend[]> = {
  zlib: ["node", "fflate"],
  zstd: ["node", "zstd-codec"],
};
for (let rep = 0; rep < reps; rep++) {
  for (const c of CASES) {
    for (const backend of DENO_BACKENDS[c.compression]) {
      await createCodec({ type: c.compression, backend }); // load it untimed
      await using pool = new CodecPool({ workers: c.workers });
      const file = await Deno.open(input);
      const t0 = performance.now();
      const summary = await convert(
        file.readable,
        new WritableStream<HostWrite>(),
        { compression: c.compression, backend, pool },
      );
      record("Deno", c, backend, performance.now() - t0, summary.fileSize);
    }
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? s[(s.length - 1) / 2]
    : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const chromium = await new Deno.Command("chromium", {
  args: ["--version"],
  stderr: "null",
}).output();
console.log(
  `\nInput: ${
    size / MiB
  } MiB raw, ${full}% data (${dataSource}), 64 KiB clusters; ` +
    `${reps} runs each, median (range); ${navigator.hardwareConcurrency} cores.\n` +
    `${
      new TextDecoder().decode(chromium.stdout).trim()
    }; Deno ${Deno.version.deno}.\n`,
);
console.log(
  "| runtime | compression | codec | workers | time, s | MiB/s | qcow2 size |",
);
console.log(
  "| ------- | ----------- | ----- | ------: | ------: | ----: | ---------: |",
);
for (const r of cases) {
  const m = median(r.ms) / 1000;
  const range = `${(Math.min(...r.ms) / 1000).toFixed(2)}–${
    (Math.max(...r.ms) / 1000).toFixed(2)
  }`;
  const codec = r.backend === "node" ? "node:zlib" : r.backend;
  console.log(
    `| ${r.runtime} | ${r.compression} | ${codec} | ${r.workers} | ${
      m.toFixed(2)
    } (${range}) | ${(size / MiB / m).toFixed(1)} | ${
      (r.fileSize / MiB).toFixed(1)
    } MiB |`,
  );
}
