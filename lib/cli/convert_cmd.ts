// `qcow2pipe convert`: raw or qcow2 in (file or stdin), raw or qcow2 out
// (file or stdout).
import { extname } from "node:path";
import {
  CodecPool,
  convert,
  expandToFile,
  fileChunks,
  type GuestImage,
  imageReadable,
  isZero,
  openImage,
  OutputFile,
  QCOW2_MAGIC,
} from "../../mod.ts";
import { createProgress } from "./progress.ts";
import {
  formatBytes,
  parseInteger,
  parseSize,
  UsageError,
  warn,
} from "./_util.ts";

export const CONVERT_HELP = `Usage: qcow2pipe convert [options] SRC|- DST|-

Convert a disk image. SRC is raw or qcow2 (detected from its first bytes;
qcow2 backing chains, external data files and snapshots are followed).
DST is written under a temporary name and renamed when complete.

Options:
  -O, --output-format FMT   raw or qcow2 (default: from DST's extension;
                            qcow2 when -c is given)
  -c, --compress TYPE       compress clusters with zlib or zstd (qcow2 output)
      --level N             compression level (zlib 1-9, default 6;
                            zstd 1-22, default 3)
      --cluster-size SIZE   qcow2 cluster size, 512 to 2M (default 64k)
      --refcount-bits N     refcount width: 1, 2, 4, 8, 16, 32, 64 (default 16)
      --workers N           compression/decompression workers (default: cores)
  -s, --snapshot NAME|ID    read an internal snapshot of SRC instead of its
                            current state
  -f, --force               replace DST if it exists
  -p, --progress            show a progress bar (default when stderr is a
                            terminal)
  -q, --quiet               no progress bar, no notices
  -h, --help                show this help

SRC "-" reads standard input; DST "-" writes raw bytes to standard output.
Raw output files are sparse: zero ranges become holes.`;

type Format = "raw" | "qcow2";

function formatFromName(name: string): Format | undefined {
  const ext = extname(name).toLowerCase();
  if (ext === ".qcow2" || ext === ".qcow" || ext === ".qcow2c") return "qcow2";
  if (ext === ".raw" || ext === ".img" || ext === ".bin" || ext === ".iso") {
    return "raw";
  }
  return undefined;
}

/** Reads the first bytes of stdin to detect its format, and gives them back. */
async function peekStdin(): Promise<
  { head: Uint8Array; rest: ReadableStream<Uint8Array> }
> {
  const reader = Deno.stdin.readable.getReader();
  const parts: Uint8Array[] = [];
  let have = 0;
  while (have < 4) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
    have += value.length;
  }
  const head = new Uint8Array(have);
  let at = 0;
  for (const p of parts) {
    head.set(p, at);
    at += p.length;
  }
  const rest = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
  return { head, rest };
}

function isQcow2(head: Uint8Array): boolean {
  return head.length >= 4 &&
    new DataView(head.buffer, head.byteOffset, 4).getUint32(0) === QCOW2_MAGIC;
}

function prepend(
  head: Uint8Array,
  rest: ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  let sentHead = head.length === 0;
  const reader = rest.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (!sentHead) {
        sentHead = true;
        controller.enqueue(head);
        return;
      }
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    return (await Deno.realPath(a)) === (await Deno.realPath(b));
  } catch {
    return false;
  }
}

export async function convertCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    strict: true,
    options: {
      "output-format": { type: "string", short: "O" },
      compress: { type: "string", short: "c" },
      level: { type: "string" },
      "cluster-size": { type: "string" },
      "refcount-bits": { type: "string" },
      workers: { type: "string" },
      snapshot: { type: "string", short: "s" },
      force: { type: "boolean", short: "f" },
      progress: { type: "boolean", short: "p" },
      quiet: { type: "boolean", short: "q" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(CONVERT_HELP);
    return 0;
  }
  if (positionals.length !== 2) {
    throw new UsageError(
      `Cannot convert: expected SRC and DST, got ${positionals.length} argument(s) (see convert --help)`,
    );
  }
  const [src, dst] = positionals;
  const compression = values.compress;
  if (
    compression !== undefined && compression !== "zlib" &&
    compression !== "zstd"
  ) {
    throw new UsageError(
      `Cannot convert: -c takes zlib or zstd, not "${compression}"`,
    );
  }
  let format = values["output-format"] as string | undefined;
  if (format !== undefined && format !== "raw" && format !== "qcow2") {
    throw new UsageError(
      `Cannot convert: output format "${format}" is not raw or qcow2`,
    );
  }
  format ??= compression
    ? "qcow2"
    : dst === "-"
    ? undefined
    : formatFromName(dst);
  if (format === undefined) {
    throw new UsageError(
      `Cannot convert: cannot tell the output format from "${dst}"; give -O raw or -O qcow2`,
    );
  }
  if (
    format === "raw" &&
    (compression || values["cluster-size"] || values["refcount-bits"] ||
      values.level)
  ) {
    throw new UsageError(
      "Cannot convert: -c, --level, --cluster-size and --refcount-bits apply to qcow2 output only",
    );
  }
  const level = values.level === undefined
    ? undefined
    : parseInteger(values.level, "--level");
  const clusterSize = values["cluster-size"] === undefined
    ? undefined
    : parseSize(values["cluster-size"], "--cluster-size");
  const refcountBits = values["refcount-bits"] === undefined
    ? undefined
    : parseInteger(values["refcount-bits"], "--refcount-bits");
  const workers = values.workers === undefined
    ? undefined
    : parseInteger(values.workers, "--workers");
  if (src !== "-" && dst !== "-" && await sameFile(src, dst)) {
    throw new UsageError(
      `Cannot convert: SRC and DST are the same file (${dst})`,
    );
  }
  if (dst === "-" && format === "qcow2") {
    throw new UsageError(
      "Cannot convert: qcow2 output to standard output is not supported; write to a file",
    );
  }

  const quiet = values.quiet ?? false;
  const showProgress = !quiet && (values.progress ?? Deno.stderr.isTerminal());
  const notice = (line: string) => {
    if (!quiet) warn(line);
  };

  await using pool = new CodecPool({ workers });
  const cleanups: (() => Promise<void>)[] = [];
  try {
    // Open the source: a qcow2 image (file, or stdin spooled to a file), or
    // a raw byte stream.
    let image: GuestImage | undefined;
    let rawStream: ReadableStream<Uint8Array> | undefined;
    let total: number | undefined;
    if (src === "-") {
      const { head, rest } = await peekStdin();
      if (isQcow2(head)) {
        const spool = await Deno.makeTempFile({
          prefix: "qcow2pipe-stdin-",
          suffix: ".qcow2",
        });
        cleanups.push(() => Deno.remove(spool).catch(() => {}));
        notice(
          `qcow2pipe: standard input is qcow2; spooling it to ${spool} to read it at random offsets`,
        );
        const file = await Deno.open(spool, { write: true });
        await prepend(head, rest).pipeTo(file.writable);
        image = await openImage(spool, { snapshot: values.snapshot });
      } else {
        if (values.snapshot !== undefined) {
          throw new UsageError(
            "Cannot convert: --snapshot needs a qcow2 source",
          );
        }
        rawStream = prepend(head, rest);
      }
    } else {
      image = await openImage(src, { snapshot: values.snapshot });
      if (image.format === "raw" && format === "qcow2") {
        // Raw to qcow2: stream the file in large sequential reads.
        total = image.virtualSize;
        await image.close();
        image = undefined;
        rawStream = fileChunks(await Deno.open(src, { read: true }));
      }
    }
    if (image) cleanups.push(() => image!.close());
    total ??= image?.virtualSize;
    const progress = createProgress(showProgress, total);
    const started = performance.now();

    if (format === "qcow2") {
      const output = await OutputFile.create(dst, { force: values.force });
      const summary = await convert(image ?? rawStream!, output, {
        clusterSize,
        compression: compression ?? "none",
        level,
        refcountBits,
        pool,
        onProgress: (n) => progress.update(Math.min(n, total ?? n)),
      });
      progress.finish();
      if (!quiet && showProgress) {
        const secs = (performance.now() - started) / 1000;
        notice(
          `qcow2pipe: wrote ${dst}: ${formatBytes(summary.fileSize)} for ${
            formatBytes(summary.virtualSize)
          } virtual in ${secs.toFixed(2)} s`,
        );
      }
      return 0;
    }

    // Raw output.
    if (!image) {
      // Raw standard input to raw.
      if (dst === "-") {
        await rawStream!.pipeTo(Deno.stdout.writable, { preventClose: true });
        return 0;
      }
      const output = await OutputFile.create(dst, { force: values.force });
      try {
        let at = 0;
        for await (const chunk of rawStream!) {
          if (!isZero(chunk)) await output.writeAt(at, chunk);
          at += chunk.length;
          progress.update(at);
        }
        await output.commit(at);
      } catch (err) {
        await output.abort();
        throw err;
      }
      progress.finish();
      return 0;
    }
    if (dst === "-") {
      let done = 0;
      const counted = imageReadable(image, { pool }).pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, controller) {
            done += chunk.length;
            progress.update(done);
            controller.enqueue(chunk);
          },
        }),
      );
      await counted.pipeTo(Deno.stdout.writable, { preventClose: true });
      progress.finish();
      return 0;
    }
    const output = await OutputFile.create(dst, { force: values.force });
    try {
      await expandToFile(image, output, {
        pool,
        onProgress: (n) => progress.update(n),
      });
    } catch (err) {
      await output.abort();
      throw err;
    }
    progress.finish();
    return 0;
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
}
