// Fuzz case runner (not a test file): `deno run -A _runner.ts BATCH.json`.
// For each job it builds (or takes) the image, runs info, check, map and
// convert-to-raw through the library in this process (codec pool of 0
// workers: deterministic), and prints one JSON line `{"begin": id}` before
// and one `{"report": ...}` after. Memory is measured per case: the peak RSS
// (VmHWM, reset before each case through /proc/self/clear_refs) and the
// largest RSS / ArrayBuffer total sampled while it runs.

import { join } from "node:path";
import {
  bytesOf,
  CASE_MEMORY_BYTES,
  type CaseReport,
  errorProblem,
  mutate,
  type OpOutcome,
  type ReportedError,
  type RunnerJob,
} from "./_fuzz.ts";
import { imageInfo } from "../../lib/tools/info.ts";
import { checkImage } from "../../lib/tools/check.ts";
import { mapImage } from "../../lib/tools/map.ts";
import { openImage } from "../../lib/reader/open.ts";
import { openImageStream } from "../../lib/reader/stream_open.ts";
import { readSegments } from "../../lib/reader/segments.ts";
import { expandToPath } from "../../lib/reader/expand_to_path.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { convert } from "../../lib/convert.ts";
import type { GuestImage } from "../../lib/reader/image.ts";
import { emit, peakResident, resetPeak } from "./_process.ts";

let sampled = 0;
function sample(): void {
  const m = Deno.memoryUsage();
  sampled = Math.max(sampled, m.rss, m.external);
}

function report(err: unknown): ReportedError {
  const e = err as Error & { code?: string };
  const out: ReportedError = {
    name: e?.constructor?.name === "Qcow2Error"
      ? "Qcow2Error"
      : String(e?.name ?? typeof err),
    message: String(e?.message ?? err),
  };
  if (e?.code !== undefined) out.code = String(e.code);
  if (errorProblem(out) !== undefined && e?.stack) {
    out.stack = e.stack.split("\n").slice(0, 6).join("\n");
  }
  return out;
}

/** What an operation that completed says about the image, for the tests. */
let detail: string | undefined;

async function op(
  ops: OpOutcome[],
  name: string,
  fn: () => Promise<string | undefined>,
): Promise<boolean> {
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  detail = undefined;
  try {
    const problem = await fn();
    sample();
    const outcome: OpOutcome = { op: name, ok: true, ms: ms() };
    if (detail !== undefined) outcome.detail = detail;
    if (problem) outcome.problem = problem;
    ops.push(outcome);
    return true;
  } catch (err) {
    sample();
    const error = report(err);
    const problem = errorProblem(error);
    const outcome: OpOutcome = { op: name, ok: false, ms: ms(), error };
    if (problem) outcome.problem = problem;
    ops.push(outcome);
    return false;
  }
}

/** Checks that segments cover the disk in order and counts them. */
async function drain(
  image: GuestImage,
  pool: CodecPool,
): Promise<string | undefined> {
  let at = 0;
  for await (const s of readSegments(image, { pool })) {
    if (s.offset !== at) return `segment at ${s.offset}, expected ${at}`;
    if (s.data && s.data.length !== s.length) {
      return `segment at ${s.offset} has ${s.data.length} bytes for length ${s.length}`;
    }
    at += s.length;
  }
  return at === image.virtualSize
    ? undefined
    : `segments end at ${at}, not ${image.virtualSize}`;
}

const EXPAND_LIMIT = 64 * 1024 * 1024;

async function runCase(
  job: RunnerJob,
  pool: CodecPool,
  scratch: string,
): Promise<CaseReport> {
  let path: string;
  let bytes: Uint8Array | undefined;
  let temp: string | undefined;
  if (job.path !== undefined) {
    path = job.path;
    if (job.stream) bytes = await Deno.readFile(path);
  } else {
    bytes = mutate(await bytesOf(job.base!), job.seed!).bytes;
    temp = join(job.base!.dir, `case-${job.id}.qcow2`);
    await Deno.writeFile(temp, bytes);
    path = temp;
  }
  const ops: OpOutcome[] = [];
  const out: CaseReport = { id: job.id, ops, memory: 0, ms: 0 };
  const started = performance.now();
  // Start from a clean slate: what the previous case left is collected.
  (globalThis as { gc?: () => void }).gc?.();
  sampled = 0;
  resetPeak();
  const timer = setInterval(sample, 5);
  try {
    let virtualSize: number | undefined;
    await op(ops, "info", async () => {
      const info = await imageInfo(path, { backingChain: true });
      virtualSize = info.virtualSize;
      detail =
        `virtual size ${info.virtualSize}, ${info.snapshots.length} snapshots`;
      if (!Number.isSafeInteger(info.virtualSize) || info.virtualSize < 0) {
        return `virtual size ${info.virtualSize}`;
      }
      return undefined;
    });
    await op(ops, "check", async () => {
      const r = await checkImage(path);
      detail = `exit ${r.exitCode}, ${r.corruptions} corruptions${
        r.failure ? `: ${r.failure}` : ""
      }`;
      if (
        r.format === "qcow2"
          ? ![0, 1, 2, 3].includes(r.exitCode)
          : r.exitCode !== 63
      ) {
        return `exit code ${r.exitCode} for ${r.format}`;
      }
      for (const line of [...r.messages, r.failure ?? ""]) {
        if (line.includes("\n") || /\bundefined\b|\bNaN\b/.test(line)) {
          return `bad check message: ${JSON.stringify(line)}`;
        }
      }
      return undefined;
    });
    await op(ops, "map", async () => {
      const entries = await mapImage(path);
      let at = 0;
      for (const e of entries) {
        if (e.start !== at || !(e.length >= 0)) {
          return `map entry ${JSON.stringify(e)} does not start at ${at}`;
        }
        at += e.length;
      }
      if (virtualSize !== undefined && at !== virtualSize) {
        return `map ends at ${at}, virtual size ${virtualSize}`;
      }
      return undefined;
    });
    let expanded: string | undefined;
    await op(ops, "convert-raw", async () => {
      await using image = await openImage(path, { snapshot: job.snapshot });
      detail = `virtual size ${image.virtualSize}`;
      if (image.virtualSize > EXPAND_LIMIT) return await drain(image, pool);
      const dst = join(scratch, `${job.id}.raw`);
      await expandToPath(image, dst, { pool });
      const size = (await Deno.stat(dst)).size;
      if (size !== image.virtualSize) {
        return `raw output has ${size} bytes, virtual size ${image.virtualSize}`;
      }
      expanded = dst;
      return undefined;
    });
    if (job.stream && bytes) {
      const chunks = bytes;
      await op(ops, "stream-raw", async () => {
        const stream = ReadableStream.from(
          (function* () {
            for (let i = 0; i < chunks.length; i += 100_000) {
              yield chunks.slice(i, i + 100_000);
            }
          })(),
        );
        await using opened = await openImageStream(stream, {
          spoolDir: scratch,
        });
        return await drain(opened.image, pool);
      });
    }
    if (job.convertDir && expanded) {
      const dst = join(job.convertDir, `${job.id}.qcow2`);
      const ok = await op(ops, "convert-qcow2", async () => {
        await using image = await openImage(path);
        await convert(image, await OutputFile.create(dst), {
          compression: "zstd",
          pool,
        });
        return undefined;
      });
      if (ok) {
        out.converted = dst;
        const raw = join(job.convertDir, `${job.id}.raw`);
        await Deno.rename(expanded, raw);
        out.expanded = raw;
        expanded = undefined;
      }
    }
    if (expanded) await Deno.remove(expanded).catch(() => {});
  } finally {
    clearInterval(timer);
    sample();
    out.memory = Math.max(sampled, peakResident());
    out.ms = Math.round(performance.now() - started);
    if (temp) await Deno.remove(temp).catch(() => {});
  }
  return out;
}

const jobs: RunnerJob[] = JSON.parse(await Deno.readTextFile(Deno.args[0]));
const scratch = await Deno.makeTempDir({ prefix: "qcow2pipe-fuzz-run-" });
try {
  await using pool = new CodecPool({ workers: 0 });
  for (const job of jobs) {
    emit({ begin: job.id });
    const report = await runCase(job, pool, scratch);
    emit({ report });
    // What a case over the bound allocated may outlive it: the next case
    // starts in a fresh runner so that its measure is its own.
    if (report.memory > CASE_MEMORY_BYTES) break;
  }
} finally {
  await Deno.remove(scratch, { recursive: true }).catch(() => {});
}
