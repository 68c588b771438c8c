// `qcow2pipe convert`: raw or qcow2 in (file, stdin or http(s) URL), raw or
// qcow2 out (file or stdout).
import { extname } from "node:path";
import {
  CodecPool,
  convert,
  expandToFile,
  fetchStream,
  type GuestImage,
  HttpSource,
  imageChunks,
  imageReadable,
  isHttpUrl,
  isZero,
  openImage,
  openImageStream,
  OutputFile,
  type OutputFileOptions,
  QCOW2_MAGIC,
  sparseFileChunks,
  StreamableQcow2Writer,
  type StreamableSummary,
  type ZeroBytes,
  type ZlibWindow,
} from "../../mod.ts";
import { createProgress, type Progress } from "./progress.ts";
import {
  formatBytes,
  formatRate,
  parseInteger,
  parseSize,
  UsageError,
  warn,
} from "./_util.ts";
import {
  expectPositionals,
  parseCommand,
  parseFormat,
  stdoutSink,
} from "./_args.ts";
import type { ImageFormat } from "../reader/open.ts";
import { concatBytes } from "../format/_bytes.ts";
import { type Sparsified, sparsifyInput, sparsifyLines } from "./_sparsify.ts";
import { fileError } from "../io/_errors.ts";

/**
 * The most codec workers `--workers` takes. Each worker is a JavaScript
 * isolate of its own (about 8 MiB, plus its codec's buffers); past the
 * number of cores more workers only add memory and scheduling.
 */
const MAX_WORKERS = 64;

export const CONVERT_HELP = `Usage: qcow2pipe convert [options] SRC DST

Convert a disk image. SRC is raw or qcow2: give its format with -f, or it
is detected from its first bytes (probed). qcow2 backing chains, external
data files and snapshots are followed; a probed image may only lead to
files in its own directory (see "Untrusted images" in the README). DST is
written under a temporary name and renamed when complete.

SRC may be a file, "-" for standard input, or an http(s) URL: qcow2 over
HTTP is read with Range requests (metadata and needed clusters only); raw
input and servers without Range support are streamed. A qcow2 stream whose
tables come before its data is decoded in one pass; any other qcow2 stream
is first spooled to a temporary file (said on stderr).

DST may be a file or "-" for standard output. qcow2 on standard output uses
the streamable layout (header, refcounts, L1 and L2 tables, then data); the
data waits in a temporary spool file (never larger than the output) until
the input ends.

Options:
  -f, --format FMT          format of SRC: raw or qcow2 (default: probed).
                            -f raw reads SRC as raw whatever its bytes; -f
                            qcow2 follows its backing and data files
                            wherever they are, as qemu-img does
  -O, --output-format FMT   raw or qcow2 (default: from DST's extension;
                            qcow2 when -c is given)
  -c, --compress TYPE       compress clusters with zlib or zstd (qcow2 output)
      --level N             compression level (zlib 1-9, default 6, 9 with
                            --zlib-window 4k; zstd 1-22, default 3)
      --zlib-window SIZE    deflate window: 32k (default; smaller and faster,
                            read by QEMU, libqcow and 7-Zip, which inflate a
                            cluster in one call) or 4k (QEMU's own window)
      --cluster-size SIZE   qcow2 cluster size, 512 to 2M (default 64k)
      --refcount-bits N     refcount width: 1, 2, 4, 8, 16, 32, 64 (default 16)
      --streamable          write a qcow2 file in the streamable layout
                            (metadata first), expandable from a pipe in one pass
      --sparsify            read SRC's partition table (MBR, GPT) and
                            filesystems (ext2/3/4, Linux swap) and store
                            their free space as zeros; reported on stderr
      --workers N           compression/decompression workers, 0 to ${MAX_WORKERS}
                            (default: the number of cores); 0 runs the
                            codecs on the main thread, without workers
  -s, --snapshot NAME|ID    read an internal snapshot of SRC instead of its
                            current state
      --force               replace DST if it exists
      --sync                flush DST to the device (fdatasync) before
                            renaming it into place
  -p, --progress            show a progress bar (default when stderr is a
                            terminal)
  -q, --quiet               no progress bar, no notices
  -h, --help                show this help

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

/** `--zlib-window`: 4k or 32k, with -c zlib only. */
function parseZlibWindow(
  text: string | undefined,
  compression: string | undefined,
): ZlibWindow | undefined {
  if (text === undefined) return undefined;
  if (compression !== "zlib") {
    throw new UsageError("Cannot convert: --zlib-window needs -c zlib");
  }
  const bytes = parseSize(text, "--zlib-window");
  if (bytes !== 4096 && bytes !== 32768) {
    throw new UsageError(
      `Cannot parse --zlib-window: "${text}" is not 4k or 32k`,
    );
  }
  return bytes;
}

/** Reads the first bytes of a stream to detect its format, and gives them back. */
async function peek(
  stream: ReadableStream<Uint8Array>,
): Promise<{ head: Uint8Array; all: ReadableStream<Uint8Array> }> {
  const reader = stream.getReader();
  const parts: Uint8Array[] = [];
  let have = 0;
  while (have < 4) {
    const { value, done } = await reader.read();
    if (done) break;
    parts.push(value);
    have += value.length;
  }
  const head = concatBytes(parts);
  let sentHead = head.length === 0;
  const all = new ReadableStream<Uint8Array>({
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
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
  return { head, all };
}

function isQcow2(head: Uint8Array): boolean {
  return head.length >= 4 &&
    new DataView(head.buffer, head.byteOffset, 4).getUint32(0) === QCOW2_MAGIC;
}

async function sameFile(a: string, b: string): Promise<boolean> {
  try {
    return (await Deno.realPath(a)) === (await Deno.realPath(b));
  } catch {
    return false;
  }
}

/** An opened input: an image to read at random, or a raw byte stream. */
type Input =
  | { image: GuestImage; total: number }
  | { raw: ReadableStream<Uint8Array | ZeroBytes>; total: number | undefined };

interface InputOptions {
  /** The format -f gave, or undefined to probe. */
  format: ImageFormat | undefined;
  snapshot: string | undefined;
  /** Whether the output is qcow2 (raw files are then streamed, holes skipped). */
  toQcow2: boolean;
  notice: (line: string) => void;
  cleanups: (() => Promise<void>)[];
}

/**
 * Opens a qcow2 or raw stream: qcow2 is decoded in one pass when its layout
 * allows, else spooled. Relative names the image gives resolve against
 * `relativeTo`.
 */
async function openStream(
  stream: ReadableStream<Uint8Array>,
  size: number | undefined,
  what: string,
  relativeTo: string,
  options: InputOptions,
): Promise<Input> {
  if (options.format === "raw") {
    if (options.snapshot !== undefined) {
      throw new UsageError("Cannot convert: --snapshot needs a qcow2 source");
    }
    return { raw: stream, total: size };
  }
  const { head, all } = await peek(stream);
  if (!isQcow2(head)) {
    if (options.format === "qcow2") {
      await all.cancel();
      throw new UsageError(
        `Cannot convert: ${what} is not a qcow2 image (it does not start with the qcow2 magic), but -f qcow2 was given`,
      );
    }
    if (options.snapshot !== undefined) {
      throw new UsageError("Cannot convert: --snapshot needs a qcow2 source");
    }
    return { raw: all, total: size };
  }
  const opened = await openImageStream(all, {
    snapshot: options.snapshot,
    format: options.format,
    relativeTo,
  });
  options.cleanups.push(() => opened.close());
  options.notice(
    opened.onePass
      ? `qcow2pipe: ${what} is qcow2 with its tables first: decoding it in one pass (${
        formatBytes(opened.spoolBytes)
      } of metadata spooled to ${opened.spoolPath})`
      : `qcow2pipe: ${what} is qcow2 whose tables do not all precede its data: spooled it whole (${
        formatBytes(opened.spoolBytes)
      }) to ${opened.spoolPath} to read it at random offsets`,
  );
  return { image: opened.image, total: opened.image.virtualSize };
}

/** Standard input, its read errors saying so and where. */
function stdinReadable(): ReadableStream<Uint8Array> {
  const reader = Deno.stdin.readable.getReader();
  let at = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await reader.read();
      } catch (err) {
        throw fileError(`read standard input at offset ${at}`, err);
      }
      if (next.done) {
        controller.close();
      } else {
        at += next.value.length;
        controller.enqueue(next.value);
      }
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}

async function openInput(src: string, options: InputOptions): Promise<Input> {
  const { format, snapshot } = options;
  if (src === "-") {
    // Names in an image read from a pipe resolve against the working
    // directory (never the spool directory).
    return await openStream(
      stdinReadable(),
      undefined,
      "standard input",
      Deno.cwd(),
      options,
    );
  }
  if (isHttpUrl(src)) {
    // One request opens it: with Range support, its first bytes tell the
    // format; without, the answer is the whole resource, streamed as is.
    const opened = await HttpSource.openOrStream(src);
    if (!(opened instanceof HttpSource)) {
      return await openStream(
        opened.body,
        opened.size,
        src,
        new URL(".", src).href,
        options,
      );
    }
    if (
      format !== "raw" &&
      (format === "qcow2" || isQcow2(await opened.read(0, 4)))
    ) {
      const image = await openImage(opened, { snapshot, format });
      options.cleanups.push(() => image.close());
      return { image, total: image.virtualSize };
    }
    // Raw over HTTP: one streamed request beats many range requests.
    const { body, size } = await fetchStream(src);
    return await openStream(body, size, src, new URL(".", src).href, options);
  }
  const image = await openImage(src, { snapshot, format });
  options.cleanups.push(() => image.close());
  if (image.format === "raw" && options.toQcow2) {
    // Raw file to qcow2: large sequential reads that skip the file's holes.
    return { raw: sparseFileChunks(src), total: image.virtualSize };
  }
  return { image, total: image.virtualSize };
}

/** Writes a raw byte stream to a sparse file or stdout. */
async function writeRawStream(
  raw: ReadableStream<Uint8Array | ZeroBytes>,
  dst: string,
  outputOptions: OutputFileOptions,
  progress: Progress,
): Promise<number> {
  if (dst === "-") {
    const zeros = new Uint8Array(1 << 20);
    const out = stdoutSink().getWriter();
    let done = 0;
    try {
      for await (const chunk of raw) {
        if (chunk instanceof Uint8Array) {
          await out.write(chunk);
          done += chunk.length;
        } else {
          for (let left = chunk.zeros; left > 0; left -= zeros.length) {
            await out.write(zeros.subarray(0, Math.min(left, zeros.length)));
          }
          done += chunk.zeros;
        }
        progress.update(done);
      }
    } finally {
      out.releaseLock();
    }
    return done;
  }
  const output = await OutputFile.create(dst, outputOptions);
  try {
    let at = 0;
    for await (const chunk of raw) {
      if (chunk instanceof Uint8Array) {
        if (!isZero(chunk) || output.isDevice) await output.writeAt(at, chunk);
        at += chunk.length;
      } else {
        if (output.isDevice) {
          for (let left = chunk.zeros; left > 0; left -= 1 << 20) {
            await output.writeAt(
              at + chunk.zeros - left,
              new Uint8Array(Math.min(left, 1 << 20)),
            );
          }
        }
        at += chunk.zeros;
      }
      progress.update(at);
    }
    await output.commit(at);
    return at;
  } catch (err) {
    await output.abort();
    throw err;
  }
}

export async function convertCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand("convert", args, {
    "output-format": { type: "string", short: "O" },
    compress: { type: "string", short: "c" },
    level: { type: "string" },
    "zlib-window": { type: "string" },
    "cluster-size": { type: "string" },
    "refcount-bits": { type: "string" },
    streamable: { type: "boolean" },
    sparsify: { type: "boolean" },
    workers: { type: "string" },
    snapshot: { type: "string", short: "s" },
    format: { type: "string", short: "f" },
    force: { type: "boolean" },
    sync: { type: "boolean" },
    progress: { type: "boolean", short: "p" },
    quiet: { type: "boolean", short: "q" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(CONVERT_HELP);
    return 0;
  }
  const [src, dst] = expectPositionals("convert", positionals, ["SRC", "DST"]);
  const sourceFormat = parseFormat(values.format, "-f");
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
  const qcow2Only = compression || values["cluster-size"] ||
    values["refcount-bits"] || values.level || values["zlib-window"] ||
    values.streamable;
  if (format === "raw" && qcow2Only) {
    throw new UsageError(
      "Cannot convert: -c, --level, --zlib-window, --cluster-size, --refcount-bits and --streamable apply to qcow2 output only",
    );
  }
  const zlibWindow = parseZlibWindow(values["zlib-window"], compression);
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
  if (workers !== undefined && workers > MAX_WORKERS) {
    throw new UsageError(
      `Cannot convert: --workers ${workers} is out of range [0, ${MAX_WORKERS}]`,
    );
  }
  if (src !== "-" && dst !== "-" && await sameFile(src, dst)) {
    throw new UsageError(
      `Cannot convert: SRC and DST are the same file (${dst})`,
    );
  }
  // .raw says raw; .img is as often qcow2 (cloud images) as raw.
  if (
    values["output-format"] === undefined && compression &&
    extname(dst).toLowerCase() === ".raw"
  ) {
    throw new UsageError(
      `Cannot convert: -c writes qcow2, but DST ${dst} is named like a raw image; give -O qcow2 to write qcow2 under that name`,
    );
  }
  const force = values.force ?? false;
  const outputOptions = { force, sync: values.sync ?? false };
  const quiet = values.quiet ?? false;
  const showProgress = !quiet && (values.progress ?? Deno.stderr.isTerminal());
  const notice = (line: string) => {
    if (!quiet) warn(line);
  };

  await using pool = new CodecPool({ workers });
  const cleanups: (() => Promise<void>)[] = [];
  try {
    const input = await openInput(src, {
      format: sourceFormat,
      snapshot: values.snapshot,
      toQcow2: format === "qcow2",
      notice,
      cleanups,
    });
    const sparse: Sparsified | undefined = values.sparsify
      ? await sparsifyInput(src, input, pool, cleanups)
      : undefined;
    const sparseReport = async () => {
      if (sparse) {
        for (const l of sparsifyLines(await sparse.report)) notice(l);
      }
    };
    const progress = createProgress(showProgress, input.total);
    const started = performance.now();
    const source = sparse?.stream ??
      ("image" in input ? input.image : input.raw);
    /** The last line, unless -q: what was written, how fast. */
    const summary = (what: string, guestBytes: number, more = "") => {
      const seconds = (performance.now() - started) / 1000;
      notice(
        `qcow2pipe: wrote ${
          dst === "-" ? "standard output" : dst
        }: ${what} in ${seconds.toFixed(2)} s (${
          formatRate(seconds > 0 ? guestBytes / seconds : 0)
        })${more}`,
      );
    };

    if (format === "qcow2") {
      const writerOptions = {
        clusterSize,
        compression: compression ?? "none",
        level,
        zlibWindow,
        refcountBits,
        pool,
        onProgress: (n: number) =>
          progress.update(Math.min(n, input.total ?? n)),
      } as const;
      if (dst === "-" || values.streamable) {
        const written = await writeStreamable(
          source,
          dst,
          outputOptions,
          writerOptions,
        );
        progress.finish();
        await sparseReport();
        summary(
          `${formatBytes(written.fileSize)} of streamable qcow2 for ${
            formatBytes(written.virtualSize)
          } virtual`,
          written.virtualSize,
          `; ${formatBytes(written.spoolBytes)} waited in the spool`,
        );
      } else {
        const written = await convert(
          source,
          await OutputFile.create(dst, outputOptions),
          writerOptions,
        );
        progress.finish();
        await sparseReport();
        summary(
          `${formatBytes(written.fileSize)} of qcow2 for ${
            formatBytes(written.virtualSize)
          } virtual`,
          written.virtualSize,
        );
      }
      return 0;
    }

    let size: number;
    if (sparse || "raw" in input) {
      size = await writeRawStream(
        sparse?.stream ?? (input as { raw: ReadableStream }).raw,
        dst,
        outputOptions,
        progress,
      );
    } else if (dst === "-") {
      let done = 0;
      await imageReadable(input.image, { pool }).pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, controller) {
            done += chunk.length;
            progress.update(done);
            controller.enqueue(chunk);
          },
        }),
      ).pipeTo(stdoutSink());
      size = done;
    } else {
      const output = await OutputFile.create(dst, outputOptions);
      try {
        await expandToFile(input.image, output, {
          pool,
          onProgress: (n) => progress.update(n),
        });
      } catch (err) {
        await output.abort();
        throw err;
      }
      size = input.image.virtualSize;
    }
    progress.finish();
    await sparseReport();
    summary(`${formatBytes(size)} of raw`, size);
    return 0;
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  }
}

/** qcow2 in the streamable layout, to stdout or to a file. */
async function writeStreamable(
  source: GuestImage | ReadableStream<Uint8Array | ZeroBytes>,
  dst: string,
  outputOptions: OutputFileOptions,
  options: ConstructorParameters<typeof StreamableQcow2Writer>[0] & object,
): Promise<StreamableSummary> {
  const stream = source instanceof ReadableStream
    ? source
    : imageChunks(source, { pool: options.pool });
  await using writer = new StreamableQcow2Writer(options);
  const bytes = stream.pipeThrough(writer);
  if (dst === "-") {
    await bytes.pipeTo(stdoutSink());
  } else {
    const output = await OutputFile.create(dst, outputOptions);
    try {
      let at = 0;
      for await (const chunk of bytes) {
        await output.writeAt(at, chunk);
        at += chunk.length;
      }
      await output.commit(at);
    } catch (err) {
      await output.abort();
      throw err;
    }
  }
  return await writer.summary;
}
