// The HTTP case of bench/compare.ts: qcow2 → raw from a server that takes
// 50 ms to answer each request (a distant object store), ours against
// qemu-img's curl driver (Debian's qemu-block-extra) reading the same URL.
// Round trips are the cost here, so the requests and bytes each tool asks
// for are counted too.

import {
  have,
  log,
  median,
  MiB,
  mib,
  must,
  RSS_TARGET,
  sh,
} from "./_compare_util.ts";
import { serveFiles } from "../tests/streams/_server.ts";

/** One image kind served over HTTP. */
export interface HttpRow {
  image: string;
  size: number;
  ours: number[];
  qemu: number[];
  requests: { ours: number; qemu: number };
  bytes: { ours: number; qemu: number };
  problem?: string;
}

/**
 * The test server (tests/streams/_server.ts) serving the files of `dir`,
 * waiting `delayMs` before each answer and capping each connection at
 * `rate` bytes per second when given; `take()` returns the requests and
 * body bytes since the last call.
 */
function latencyServer(
  dir: string,
  names: string[],
  delayMs: number,
  rate?: number,
) {
  const server = serveFiles(
    Object.fromEntries(names.map((name) => [name, `${dir}${name}`])),
    { latency: delayMs, connectionRate: rate },
  );
  return {
    url: server.url,
    take() {
      const c = {
        requests: server.requests.length,
        bytes: server.bytesSent,
        ...server.connections,
      };
      server.reset();
      return c;
    },
    shutdown: () => server[Symbol.asyncDispose](),
  };
}

/** Builds the served images from the first 64 MiB of the disk. */
async function buildImages(dir: string, disk: string): Promise<string[]> {
  const slice = `${dir}slice.raw`;
  await must("dd", [
    `if=${disk}`,
    `of=${slice}`,
    "bs=1M",
    "count=64",
    "status=none",
  ]);
  const q = (...args: string[]) => must("qemu-img", args);
  await q(
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-c",
    "-o",
    "compression_type=zstd",
    slice,
    `${dir}zstd.qcow2`,
  );
  await q(
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-c",
    slice,
    `${dir}zlib.qcow2`,
  );
  await q(
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-o",
    "extended_l2=on,cluster_size=128k",
    slice,
    `${dir}extended-l2.qcow2`,
  );
  // Every kind of cluster QEMU writes: data, compressed, zeros, discards.
  await q("create", "-q", "-f", "qcow2", `${dir}io-mix.qcow2`, "64M");
  const io: string[] = [];
  for (let i = 0; i < 64; i++) {
    const at = i * MiB;
    if (i % 4 === 0) io.push(`write -P ${i + 1} ${at} 256k`);
    if (i % 4 === 1) io.push(`write -c -P ${i + 1} ${at} 128k`);
    if (i % 4 === 2) io.push(`write -z ${at} 512k`);
    if (i % 8 === 3) io.push(`write -P 7 ${at} 64k`, `discard ${at} 64k`);
  }
  await must("qemu-io", [
    "-f",
    "qcow2",
    ...io.flatMap((c) => ["-c", c]),
    `${dir}io-mix.qcow2`,
  ]);
  await Deno.remove(slice);
  return ["zstd.qcow2", "zlib.qcow2", "io-mix.qcow2", "extended-l2.qcow2"];
}

/**
 * qemu-img expanding `url` to `dst` with its curl driver, killed after
 * `seconds`: QEMU 7.2's curl driver sometimes never finishes a transfer
 * (tests/cli/_lines.ts), and a hung run is reported, not waited for.
 */
function curlArgv(url: string, dst: string, seconds: number): string[] {
  const convert = ["convert", "-f", "qcow2", "-O", "raw", url, dst];
  return ["timeout", "-s", "KILL", String(seconds), "qemu-img", ...convert];
}

/** Whether qemu-img can read http:// (the curl block driver). */
async function qemuHasCurl(url: string): Promise<boolean> {
  return (await sh("qemu-img", ["info", "-f", "qcow2", url])).code === 0;
}

/**
 * Runs the HTTP comparison: each image expanded to raw from the delaying
 * server by both tools, `reps` times, alternating which goes first; the
 * outputs must be byte-identical.
 */
export async function runHttp(
  dir: string,
  disk: string,
  reps: number,
  ourArgv: (src: string, dst: string) => string[],
  delayMs = 50,
): Promise<HttpRow[] | undefined> {
  if (!await have("qemu-img")) return undefined;
  const images = await buildImages(dir, disk);
  const server = latencyServer(dir, images, delayMs);
  try {
    if (!await qemuHasCurl(server.url(images[0]))) {
      log(
        "  qemu-img has no curl driver (apt-get install qemu-block-extra): skipping HTTP",
      );
      return undefined;
    }
    const rows: HttpRow[] = [];
    for (const image of images) {
      const row: HttpRow = {
        image,
        size: (await Deno.stat(`${dir}${image}`)).size,
        ours: [],
        qemu: [],
        requests: { ours: 0, qemu: 0 },
        bytes: { ours: 0, qemu: 0 },
      };
      const url = server.url(image);
      for (let rep = 0; rep < reps; rep++) {
        const order = rep % 2 === 0
          ? ["ours", "qemu"] as const
          : ["qemu", "ours"] as const;
        for (const tool of order) {
          const dst = `${dir}${tool}.raw`;
          await Deno.remove(dst).catch(() => {});
          server.take();
          const argv = tool === "ours"
            ? ourArgv(url, dst)
            : curlArgv(url, dst, 300);
          const t0 = performance.now();
          const out = await sh(argv[0], argv.slice(1));
          const secs = (performance.now() - t0) / 1000;
          const counts = server.take();
          if (out.code !== 0) {
            row.problem = `${tool} exit ${out.code}: ${
              out.stderr.trim().split("\n").at(-1)
            }`;
          }
          row[tool].push(secs);
          row.requests[tool] = counts.requests;
          row.bytes[tool] = counts.bytes;
        }
        const same = await sh("cmp", [`${dir}ours.raw`, `${dir}qemu.raw`]);
        if (same.code !== 0) row.problem ??= "outputs differ";
      }
      log(
        `  ${image}: ours ${
          median(row.ours).toFixed(2)
        } s (${row.requests.ours} requests), qemu-img ${
          median(row.qemu).toFixed(2)
        } s (${row.requests.qemu} requests)${
          row.problem ? ` PROBLEM: ${row.problem}` : ""
        }`,
      );
      rows.push(row);
    }
    return rows;
  } finally {
    await server.shutdown();
    for (const f of ["ours.raw", "qemu.raw"]) {
      await Deno.remove(`${dir}${f}`).catch(() => {});
    }
  }
}

/** The HTTP rows as a markdown table. */
export function httpMarkdown(rows: HttpRow[], delayMs = 50): string[] {
  const mb = (n: number) => (n / 1e6).toFixed(1);
  return [
    `qcow2 → raw over HTTP, ${delayMs} ms per request (median wall seconds; requests and MB fetched by the last run):`,
    "",
    "| image | size MB | ours s | qemu-img s | ratio | requests ours / qemu-img | MB fetched ours / qemu-img |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ...rows.map((r) => {
      const o = median(r.ours);
      const q = median(r.qemu);
      return `| ${r.image} | ${mb(r.size)} | ${o.toFixed(2)} | ${
        q.toFixed(2)
      } | ${(o / q).toFixed(2)}× | ${r.requests.ours} / ${r.requests.qemu} | ${
        mb(r.bytes.ours)
      } / ${mb(r.bytes.qemu)} |${r.problem ? ` ${r.problem}` : ""}`;
    }),
  ];
}

/** Issue 13's HTTP target: no slower than qemu-img's curl driver. */
export function httpTargets(
  rows: HttpRow[],
): { name: string; met: boolean; measured: string }[] {
  return rows.map((r) => {
    const x = median(r.ours) / median(r.qemu);
    return {
      name: `HTTP ${r.image} time ≤ 1× qemu-img (curl)`,
      met: !r.problem && x <= 1,
      measured: `${x.toFixed(2)}×`,
    };
  });
}

/**
 * Issue 26's HTTP row: one qcow2 image expanded to raw from a server that
 * waits `delayMs` before each answer and caps each connection at `rate`
 * bytes per second (as object stores and CDNs do), judged against what
 * one capped connection needs for the image (size / rate).
 */
export interface CappedRow {
  image: string;
  size: number;
  rate: number;
  delayMs: number;
  /** Wall seconds, CPU seconds (user + system) and peak RSS (KiB) of each run. */
  ours: { secs: number; cpu: number; rssKiB: number }[];
  /** Wall seconds of qemu-img's runs that finished. */
  qemu: number[];
  /** What the server saw in our last run. */
  seen: { requests: number; connections: number; maxConcurrent: number };
  /** Our failure: an exit status, or bytes other than the image's. */
  problem?: string;
  /** qemu-img's (its curl driver may hang: it is killed after a while). */
  qemuProblem?: string;
}

/** How long a qemu-img (curl) run of the capped row may take, in seconds. */
const CURL_LIMIT = 600;

/** The issue's target: ours ≤ this × (size / rate). */
export const CAPPED_TARGET = 0.3;

/**
 * Runs the capped row: `image` (a path) served with a pause of `delayMs`
 * per request and `rate` bytes per second per connection, expanded by
 * ours `reps` times and, unless `qemu` is false or its curl driver is
 * missing, by qemu-img; each output compared with the image.
 */
export async function runCapped(
  dir: string,
  image: string,
  reps: number,
  ourArgv: (src: string, dst: string) => string[],
  { qemu = true, delayMs = 50, rate = 20e6 } = {},
): Promise<CappedRow> {
  const name = image.split("/").at(-1)!;
  const served = `${dir}capped-${name}`;
  await Deno.link(image, served).catch(() => Deno.copyFile(image, served));
  const server = latencyServer(dir, [`capped-${name}`], delayMs, rate);
  const url = server.url(`capped-${name}`);
  const row: CappedRow = {
    image: name,
    size: (await Deno.stat(image)).size,
    rate,
    delayMs,
    ours: [],
    qemu: [],
    seen: { requests: 0, connections: 0, maxConcurrent: 0 },
  };
  const dst = `${dir}capped.raw`;
  const timing = `${dir}capped.time`;
  try {
    const withQemu = qemu && await qemuHasCurl(url);
    if (qemu && !withQemu) log("  qemu-img has no curl driver: ours only");
    for (let rep = 0; rep < reps; rep++) {
      for (const tool of withQemu ? ["ours", "qemu"] as const : ["ours"]) {
        await Deno.remove(dst).catch(() => {});
        server.take();
        const argv = tool === "ours"
          ? ourArgv(url, dst)
          : curlArgv(url, dst, CURL_LIMIT);
        const out = await sh("/usr/bin/time", [
          "-f",
          "%e %M %U %S",
          "-o",
          timing,
          ...argv,
        ]);
        const [secs, rss, user, system] = (await Deno.readTextFile(timing))
          .trim().split("\n").at(-1)!.split(" ").map(Number);
        const seen = server.take();
        if (tool === "qemu" && out.code !== 0) {
          row.qemuProblem = out.code === 137
            ? `killed after ${CURL_LIMIT} s`
            : `exit ${out.code}: ${out.stderr.trim().split("\n").at(-1)}`;
          log(`  qemu-img (curl) ${row.qemuProblem}`);
          continue;
        }
        if (out.code !== 0) {
          row.problem ??= `${tool} exit ${out.code}: ${
            out.stderr.trim().split("\n").at(-1)
          }`;
        } else {
          const same = await sh("qemu-img", [
            "compare",
            "-q",
            "-f",
            "raw",
            "-F",
            "qcow2",
            dst,
            image,
          ]);
          if (same.code !== 0) row.problem ??= `${tool}: output differs`;
        }
        if (tool === "qemu") {
          row.qemu.push(secs);
          continue;
        }
        row.ours.push({ secs, cpu: user + system, rssKiB: rss });
        row.seen = {
          requests: seen.requests,
          connections: seen.seen,
          maxConcurrent: seen.maxConcurrent,
        };
        log(
          `  ours ${secs.toFixed(2)} s (${
            (secs / (row.size / rate)).toFixed(2)
          }× one connection, ${
            (user + system).toFixed(1)
          } CPU s), ${seen.requests} requests on ${seen.seen} connections, at most ${seen.maxConcurrent} at once, ${
            (rss / 1024).toFixed(0)
          } MiB peak RSS`,
        );
      }
      if (row.qemu.length > rep) {
        log(`  qemu-img (curl) ${row.qemu[rep].toFixed(2)} s`);
      }
    }
    return row;
  } finally {
    await server.shutdown();
    for (const f of [dst, timing, served]) {
      await Deno.remove(f).catch(() => {});
    }
  }
}

/** The capped row as markdown lines. */
export function cappedMarkdown(row: CappedRow): string[] {
  const one = row.size / row.rate;
  const ours = median(row.ours.map((r) => r.secs));
  const rss = median(row.ours.map((r) => r.rssKiB)) / 1024;
  const cpu = median(row.ours.map((r) => r.cpu));
  const qemu = row.qemu.length > 0 ? median(row.qemu) : undefined;
  return [
    `qcow2 → raw over HTTP, ${row.delayMs} ms per request, each connection capped at ${
      row.rate / 1e6
    } MB/s (median of ${row.ours.length}; one connection needs size / rate):`,
    "",
    "| image | size MB | one connection s | ours s | ratio | our CPU s | qemu-img (curl) s | requests / connections (most at once) | our peak RSS MiB |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    `| ${row.image} | ${(row.size / 1e6).toFixed(1)} | ${one.toFixed(1)} | ${
      ours.toFixed(2)
    } | ${(ours / one).toFixed(2)}× | ${cpu.toFixed(1)} | ${
      qemu?.toFixed(2) ?? row.qemuProblem ?? "not run"
    } | ${row.seen.requests} / ${row.seen.connections} (${row.seen.maxConcurrent}) | ${
      rss.toFixed(0)
    } |${row.problem ? ` ${row.problem}` : ""}`,
  ];
}

/** Issue 26's target for the capped row. */
export function cappedTargets(
  row: CappedRow,
): { name: string; met: boolean; measured: string }[] {
  const x = median(row.ours.map((r) => r.secs)) / (row.size / row.rate);
  const peak = Math.max(...row.ours.map((r) => r.rssKiB)) * 1024;
  return [{
    name:
      `HTTP capped ${row.image} time ≤ ${CAPPED_TARGET}× one connection (size / ${
        row.rate / 1e6
      } MB/s, ${row.delayMs} ms per request)`,
    met: !row.problem && x <= CAPPED_TARGET,
    measured: `${x.toFixed(2)}×`,
  }, {
    name: `HTTP capped ${row.image} peak RSS ≤ ${mib(RSS_TARGET)}`,
    met: peak <= RSS_TARGET,
    measured: mib(peak),
  }];
}
