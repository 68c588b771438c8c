// The HTTP case of bench/compare.ts: qcow2 → raw from a server that takes
// 50 ms to answer each request (a distant object store), ours against
// qemu-img's curl driver (Debian's qemu-block-extra) reading the same URL.
// Round trips are the cost here, so the requests and bytes each tool asks
// for are counted too.

import { have, log, median, MiB, must, sh } from "./_compare_util.ts";

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
 * A file server on 127.0.0.1 with Range support that waits `delayMs`
 * before answering each request, and counts requests and body bytes.
 */
function latencyServer(dir: string, delayMs: number) {
  const counts = { requests: 0, bytes: 0 };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req) => {
      counts.requests++;
      await new Promise((r) => setTimeout(r, delayMs));
      const name = new URL(req.url).pathname.slice(1);
      if (name.includes("/") || name.startsWith(".")) {
        return new Response("no", { status: 404 });
      }
      let file: Deno.FsFile;
      try {
        file = await Deno.open(`${dir}${name}`);
      } catch {
        return new Response("not found", { status: 404 });
      }
      try {
        const size = (await file.stat()).size;
        const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.get("range") ?? "");
        const start = m ? Number(m[1]) : 0;
        const end = m && m[2] !== ""
          ? Math.min(Number(m[2]), size - 1)
          : size - 1;
        if (m && start >= size) {
          return new Response(null, {
            status: 416,
            headers: { "content-range": `bytes */${size}` },
          });
        }
        const body = new Uint8Array(end - start + 1);
        await file.seek(start, Deno.SeekMode.Start);
        for (let n = 0; n < body.length;) {
          const r = await file.read(body.subarray(n));
          if (r === null) break;
          n += r;
        }
        counts.bytes += body.length;
        const headers: Record<string, string> = {
          "accept-ranges": "bytes",
          "content-length": String(body.length),
        };
        if (m) headers["content-range"] = `bytes ${start}-${end}/${size}`;
        return new Response(body, { status: m ? 206 : 200, headers });
      } finally {
        file.close();
      }
    },
  );
  return {
    url: (name: string) => `http://127.0.0.1:${server.addr.port}/${name}`,
    take() {
      const c = { ...counts };
      counts.requests = 0;
      counts.bytes = 0;
      return c;
    },
    shutdown: () => server.shutdown(),
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
  const server = latencyServer(dir, delayMs);
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
            // QEMU 7.2's curl driver sometimes never finishes a transfer
            // (tests/cli/_lines.ts): kill a hung run, report it.
            : [
              "timeout",
              "-s",
              "KILL",
              "300",
              "qemu-img",
              "convert",
              "-f",
              "qcow2",
              "-O",
              "raw",
              url,
              dst,
            ];
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
