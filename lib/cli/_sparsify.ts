// `convert --sparsify`: the free-space map stage in front of the writer,
// chosen by what the source allows (random reads of a file or of an HTTP
// resource with Range support, else the stream stage), and the report as
// lines for stderr.
import { FileSource, HttpSource, IoError, type ZeroBytes } from "../../mod.ts";
import {
  type ContentsReport,
  freeSpaceChunks,
  FreeSpaceStream,
  type RegionReport,
  type SparsifyReport,
} from "../sparsify/mod.ts";
import { isHttpUrl } from "../io/http_source.ts";
import type { CodecPool } from "../codec/pool.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { formatBytes } from "./_util.ts";
import type { Input as OpenedInput } from "./_convert_input.ts";

/** The input with free space as zero runs, and the report to come. */
export interface Sparsified {
  stream: ReadableStream<Uint8Array | ZeroBytes>;
  report: Promise<SparsifyReport>;
}

/**
 * Puts the free-space map in front of the input. A raw file or a raw HTTP
 * resource with Range support is reopened for random reads, so that free
 * blocks are never read; a pipe goes through the stream stage. `recycle`
 * (qcow2 output, whose writers say when bytes are written) lets a file's
 * chunks go round, as the plain path's do.
 */
export async function sparsifyInput(
  src: string,
  input: OpenedInput,
  pool: CodecPool,
  cleanups: (() => Promise<void>)[],
  http: HttpTransport,
  recycle: boolean,
): Promise<Sparsified> {
  if ("image" in input && input.image.format !== "raw") {
    const { readable, report } = await freeSpaceChunks(input.image, { pool });
    return { stream: readable, report: Promise.resolve(report) };
  }
  let random: FileSource | HttpSource | undefined;
  if (isHttpUrl(src)) {
    try {
      // The free space is skipped: nothing is fetched ahead into it.
      random = await HttpSource.open(src, { ...http, fetchAhead: false });
    } catch (err) {
      if (!(err instanceof IoError && err.code === "RANGE_NOT_SUPPORTED")) {
        throw err;
      }
    }
  } else if (src !== "-") {
    random = await FileSource.open(src);
    cleanups.push(() => Promise.resolve(random!.close()));
  }
  if (random) {
    if ("raw" in input) await input.raw.cancel();
    const { readable, report } = await freeSpaceChunks(random, { recycle });
    return { stream: readable, report: Promise.resolve(report) };
  }
  if ("image" in input) {
    const { readable, report } = await freeSpaceChunks(input.image, { pool });
    return { stream: readable, report: Promise.resolve(report) };
  }
  const stage = new FreeSpaceStream({ size: input.total });
  return { stream: input.raw.pipeThrough(stage), report: stage.report };
}

function where(r: RegionReport): string {
  const name = r.partition === 0 ? "disk" : `partition ${r.partition}`;
  const what = [
    ...(r.type ? [r.type] : []),
    `${formatBytes(r.length)} at ${formatBytes(r.offset)}`,
  ].join(", ");
  return `${name} (${what})`;
}

/**
 * The report as stderr lines: the table, one line per partition (what is
 * on it, what was dropped, or why it was left as it is), and the total.
 */
export function sparsifyLines(report: SparsifyReport): string[] {
  const p = "qcow2pipe: sparsify:";
  const lines: string[] = [];
  const table = report.table === "none"
    ? "no partition table"
    : report.table.toUpperCase();
  if (report.tableProblem) {
    lines.push(`${p} ${table} left as it is: ${report.tableProblem}`);
  } else if (report.table !== "none") {
    const n = report.regions.length;
    lines.push(`${p} ${table}, ${n} partition${n === 1 ? "" : "s"}`);
  }
  if (report.tableIncomplete) {
    lines.push(`${p} ${table}: ${report.tableIncomplete}`);
  }
  const outcome = (r: ContentsReport) => {
    const found = r.detail ? `${r.found} (${r.detail})` : r.found;
    return r.status === "mapped"
      ? `${found}: ${formatBytes(r.freeBytes)} free, dropped`
      : `${found} left as it is: ${r.reason}`;
  };
  for (const r of report.regions) {
    lines.push(`${p} ${where(r)}: ${outcome(r)}`);
    for (const v of r.volumes ?? []) {
      const n = v.segments === 1 ? "" : `, ${v.segments} segments`;
      lines.push(
        `${p}   LV ${v.name} (${formatBytes(v.length)}${n}): ${outcome(v)}`,
      );
    }
  }
  lines.push(`${p} ${formatBytes(report.freeBytes)} dropped as free space`);
  return lines;
}
