// `qcow2pipe convert`: raw, qcow2 or vpc in (file, stdin or http(s) URL), raw or
// qcow2 out (file, stdout, a FIFO or device, or an existing file or device
// with -n), with qemu-img's command line.
import { CodecPool } from "../codec/pool.ts";
import { convert } from "../convert.ts";
import type { FileIdentity } from "../io/source.ts";
import type { GuestImage } from "../reader/image.ts";
import { openImage } from "../reader/open.ts";
import { imageChunks, type SalvageReport } from "../reader/segments.ts";
import { SECTOR_SIZE } from "../format/geometry.ts";
import { IoError, printable } from "../format/errors.ts";
import { OutputFile } from "../host/output_file.ts";
import { DEFAULT_CLUSTER_SIZE } from "../format/constants.ts";
import { directoryOf, resolveName } from "../reader/references.ts";
import { fileIdentities } from "../io/identity.ts";
import { descriptorIdentity } from "../host/stream_output.ts";
import {
  createProgress,
  createQemuProgress,
  type Progress,
  type ProgressExtent,
  QEMU_COPY_CHUNK,
  qemuProgressPieces,
} from "./progress.ts";
import {
  formatBytes,
  formatRate,
  inQemuWords,
  reworded,
  UsageError,
  warn,
} from "./_util.ts";
import { writeOut } from "./_args.ts";
import { readFormatsText } from "../reader/formats.ts";
import { getopt, httpTimeoutHelp, optionHelp } from "./_getopt.ts";
import { createOptionsHelp } from "./_create_options.ts";
import {
  checkCompressedName,
  CONVERT_OPTIONS,
  type ConvertSettings,
  convertSettings,
  MAX_WORKERS,
  NAMED_FORMATS,
  optionsHelpFormat,
} from "./_convert_settings.ts";
import { type Input, openInput } from "./_convert_input.ts";
import { openConcatenated } from "./_convert_concat.ts";
import {
  openTarget,
  type RawSource,
  type Target,
  writeIntoImage,
  writeRaw,
  writeStreamable,
} from "./_convert_output.ts";
import type { Sparsified } from "./_sparsify.ts";

export const CONVERT_HELP = `Usage: qcow2pipe convert [options] SRC [SRC...] DST

Convert a disk image, with qemu-img's command line (see "Coming from
qemu-img" in the README for what differs). SRC is an image in one of the
formats read (see -f): give its format with -f, or it is detected from its
first bytes (probed). Backing chains, external data files, extents and
snapshots are followed; a probed image may only lead to files in its own
directory (see "Untrusted images" in the README). Several SRCs are read
one after the other as one disk, as qemu-img concatenates them (not with
-l, -B, --sparsify or --disk). DST is written under a temporary name and put in place
when complete, replacing an existing file as qemu-img does (--no-clobber
keeps it). DST is never SRC, its backing or data files, or -B's file: they
are compared by device and inode (hard and symbolic links included).

SRC may be a file, "-" for standard input, or an http(s) URL, and may come
gzip-, xz- or zstd-compressed or as a tar archive of one disk (a .raw.xz,
a .tar.gz), told by its first bytes and unpacked as it streams. qcow2 over
HTTP is read with Range requests (metadata and needed clusters only); raw
input and servers without Range support are streamed. A qcow2 stream whose
tables come before its data is decoded in one pass; any other qcow2 stream
is first spooled to a temporary file (said on stderr).

SRC may also be named in qemu-img's syntax for a local file, as info takes
it: file:PATH, json:{"driver": FMT, "file": {"driver": "file", "filename":
PATH}} or, with --image-opts, driver=FMT,file.filename=PATH (the driver is
the format, as -f). Options naming a backing file, another protocol or a
data file are refused. A null-co driver with "read-zeroes" on is a SRC of
"size" zero bytes (default 1G), as in qemu-img; without it, refused.

DST may be a file or "-" for standard output. A FIFO, a character device,
or a name leading through /dev or /proc (/dev/stdout, /proc/self/fd/N) is
written as a stream, like standard output, and never replaced. qcow2 to a
stream uses the streamable layout (header, refcounts, L1 and L2 tables,
then data); the data and the L2 tables wait in a temporary spool file
(about the size of the output) until the input ends.

qemu-img's options:
${
  optionHelp(
    "  -f FMT",
    23,
    `format of SRC: ${
      readFormatsText("or")
    } (default: probed). -f raw reads SRC as raw whatever its bytes; -f with another format follows its backing and data files wherever they are, as qemu-img does`,
  )
}
${
  optionHelp(
    "  -O FMT",
    23,
    `raw or qcow2. Default: qcow2 with -c; else what DST's name says (${
      NAMED_FORMATS.qcow2.join(" ")
    }: qcow2; ${
      NAMED_FORMATS.raw.join(" ")
    }: raw); else qcow2 with -B; else raw, as in qemu-img`,
  )
}
  -c                   compress clusters: zlib, or what -o compression_type
                       names (qcow2 output)
  -o OPTIONS           qcow2 creation options, key=value[,...]:
                       compression_type=zlib|zstd, cluster_size=SIZE,
                       refcount_bits=N, backing_file=NAME,
                       backing_fmt=raw|qcow2, compat=0.10|1.1 (0.10: a
                       version 2 image), lazy_refcounts=on|off (the
                       feature bit), preallocation=off|metadata|falloc|full
                       (every cluster allocated and the file as large as
                       measure's fully allocated size; full writes the
                       zeros). "-o help" lists qemu-img's keys; those not
                       named here are refused
  -B BACKING           write a delta image: only what differs from
                       BACKING's content is stored. The name is stored as
                       given and read relative to DST's directory, as in
                       qemu-img
  -F BACKING_FMT       BACKING's format, raw or qcow2 (required with -B)
  -l SNAPSHOT          read an internal snapshot of SRC: snapshot.id=ID,
                       snapshot.name=NAME (both may be given) or ID_OR_NAME
  -s ID_OR_NAME        the same as -l ID_OR_NAME
      --image-opts     each SRC is qemu-img's options: driver=FMT,
                       file.filename=PATH (or driver=null-co,size=SIZE,
                       read-zeroes=on)
  -m N                 codec workers, 1 to ${MAX_WORKERS} (as --workers)
  -W                   accepted: clusters are always placed as they come
  -n                   DST exists (a raw file, a device or a qcow2 image,
                       at least as large as SRC): write into it in place,
                       zeros included; nothing beyond SRC's size is
                       touched. Into qcow2 (-O qcow2) as qemu-img writes:
                       clusters DST owns are overwritten, others allocated
                       where QEMU's allocator puts them, zeros as zero
                       entries (version 2: unallocated, or zero clusters
                       over a backing file); not with -c, -o, or DST's
                       internal snapshots, bitmaps or data file
      --target-is-zero with -n: DST reads as zeros; zeros are not written
  -S SIZE              zero detection granularity, a multiple of 512 up
                       to 16M (default: a cluster; raw output: holes): a
                       block of SIZE (aligned) is left unallocated only if
                       all zero; 0 writes zeros as data, allocating every
                       cluster (raw: no holes). With -c only 0 counts
  -U, --force-share    accepted: images are read without locks
  -t CACHE, -T CACHE   accepted (none, writeback, writethrough,
                       directsync, unsafe): the same bytes are written
                       whatever the cache mode; files go through the page
                       cache
  -p, --progress       show progress: a bar on a terminal (the default
                       there), else qemu-img's "    (NN.NN/100%)" steps
                       on stdout (stderr when DST is -)
  -q, --quiet          no progress bar, no notices
      --salvage        read what cannot be read as zeros and go on: a
                       request that fails (a compressed cluster that
                       does not inflate, an I/O error) is read again
                       cluster by cluster and 512 bytes at a time, and
                       each 512-byte sector that fails again is written
                       as zeros with qemu-img's warning ("error while
                       reading offset N: ..."); a cluster or L2 table
                       past the end of SRC is zeros, with one warning
                       for its range. Exit 0 if nothing else failed
  -h, --help           show this help

Options of our own:
      --compress TYPE   compress with zlib or zstd (the same as -c -o
                        compression_type=TYPE)
      --level N         compression level (zlib 1-9, default 4, 9 with
                        --zlib-window 4k; zstd 1-22, default 3)
      --zlib-window SIZE
                        deflate window: 32k (default; smaller and faster,
                        read by QEMU, libqcow and 7-Zip, which inflate a
                        cluster in one call) or 4k (QEMU's own window)
      --cluster-size SIZE
                        qcow2 cluster size, 512 to 2M (default 64k)
      --refcount-bits N refcount width: 1, 2, 4, 8, 16, 32, 64 (default 16)
      --streamable      write a qcow2 file in the streamable layout
                        (metadata first), expandable from a pipe in one pass
      --sparsify        read SRC's partition table (MBR, GPT) and
                        filesystems (ext2/3/4, Linux swap) and store
                        their free space as zeros; reported on stderr
      --disk NAME       the member of a tar archive to read (default:
                        the only disk in it)
      --workers N       compression/decompression workers, 0 to ${MAX_WORKERS}
                        (default: the number of cores); 0 runs the
                        codecs on the main thread, without workers
      --no-clobber      keep an existing DST: refuse it, and fail without
                        replacing a DST that appears during the run
      --force           accepted: an existing DST is replaced by default
      --sync            flush DST to the device (fdatasync) before
                        putting it in place
      --verbose         print the summary line ("wrote DST: ...") even
                        when stderr is not a terminal (qemu-img prints
                        nothing; neither do we, by default, off a
                        terminal)
${httpTimeoutHelp(24)}

qemu-img options that are not supported (-C, -r, --object,
--target-image-opts, --bitmaps, --skip-broken-bitmaps) are refused with a
line saying why.

Raw output files are sparse: zero ranges become holes.`;

/**
 * Opens the backing file of a delta image: its name as the user gave it,
 * read relative to DST's directory (as QEMU reads it from the new image).
 */
async function openBacking(
  backing: NonNullable<ConvertSettings["backing"]>,
  dst: string,
  http: ConvertSettings["http"],
): Promise<GuestImage> {
  const path = resolveName(directoryOf(dst), backing.name) ?? backing.name;
  try {
    return await openImage(path, { format: backing.format, http });
  } catch (err) {
    if (err instanceof IoError && err.code === "NOT_FOUND") {
      // qemu-img's words: it opens the backing file through the new image.
      throw reworded(
        err,
        `Could not open '${dst}': Could not open backing file: Could not open '${path}': No such file or directory`,
      );
    }
    const reason = (err as Error).message.replace(/^Cannot [^:]*: /, "");
    const where = path === backing.name ? "" : ` (-B ${backing.name})`;
    throw reworded(err, `Cannot open backing file ${path}${where}: ${reason}`);
  }
}

/** The parts of a run: settings, where notices go, the codec pool. */
interface Run {
  s: ConvertSettings;
  notice: (line: string) => void;
  pool: CodecPool;
  /** With --salvage: prints qemu-img's warnings for a range read as zeros. */
  salvage: SalvageReport | undefined;
  /** Closed at the end, last first. */
  cleanups: (() => Promise<void>)[];
}

/** What is read: the input, its free-space map, the backing of a delta. */
interface Sources {
  input: Input;
  sparse: Sparsified | undefined;
  backingImage: GuestImage | undefined;
  /** The guest bytes to write. */
  source: RawSource;
  /**
   * Every local file read (SRC or standard input, its data and backing
   * files, -B's chain): DST may be none of them.
   */
  inputs: FileIdentity[];
}

/** Opens the backing file of a delta, SRC and, with --sparsify, its map. */
async function openSources(run: Run): Promise<Sources> {
  const { s, cleanups } = run;
  const backingImage = s.backing &&
    await openBacking(s.backing, s.dst, s.http);
  if (backingImage) cleanups.push(() => backingImage.close());
  const options = {
    format: s.sourceFormat,
    snapshot: s.snapshot,
    toQcow2: s.outputFormat === "qcow2",
    disk: s.disk,
    notice: run.notice,
    cleanups,
    http: s.http,
    imageOpts: s.imageOpts,
  };
  if (s.sources.length > 1) {
    const several = await openConcatenated(
      s.sources,
      options,
      run.pool,
      run.salvage,
    );
    const inputs = fileIdentities(
      [...several.images, backingImage].flatMap((i) => i?.sources() ?? []),
    );
    if (s.sources.includes("-")) {
      const stdin = descriptorIdentity(0, "standard input");
      if (stdin) inputs.push(stdin);
    }
    return {
      input: several.input,
      sparse: undefined,
      backingImage,
      source: several.input.raw,
      inputs,
    };
  }
  const input = await openInput(s.src, options).catch((err) => {
    throw inQemuWords(err, s.src);
  });
  // The file systems' code loads only for --sparsify.
  const sparse = s.sparsify
    ? await (await import("./_sparsify.ts")).sparsifyInput(
      s.src,
      input,
      run.pool,
      cleanups,
      s.http,
      s.outputFormat === "qcow2",
    )
    : undefined;
  // With --salvage the image is read here, its failed ranges as zeros,
  // and every writer takes the stream.
  const source = sparse?.stream ??
    ("image" in input
      ? run.salvage
        ? imageChunks(input.image, {
          pool: run.pool,
          recycle: true,
          salvage: run.salvage,
        })
        : input.image
      : input.raw);
  const images = [
    "image" in input ? input.image : input.from,
    backingImage,
  ];
  const inputs = fileIdentities(images.flatMap((i) => i?.sources() ?? []));
  if (s.src === "-") {
    const stdin = descriptorIdentity(0, "standard input");
    if (stdin) inputs.push(stdin);
  }
  return { input, sparse, backingImage, source, inputs };
}

/** What a writer reports for the last line. */
interface Written {
  /** What was written, such as "1.2 MiB of qcow2 for 10 GiB virtual". */
  what: string;
  guestBytes: number;
  more?: string;
}

/** Writes qcow2: streamable to a stream or with --streamable, else a file. */
async function writeQcow2(
  run: Run,
  sources: Sources,
  target: Target,
  progress: Progress,
): Promise<Written> {
  const { s, pool } = run;
  const total = sources.input.total;
  const writerOptions = {
    clusterSize: s.clusterSize,
    compression: s.compression,
    level: s.level,
    zlibWindow: s.zlibWindow,
    refcountBits: s.refcountBits,
    sparseSize: s.sparseSize,
    preallocation: s.preallocation,
    compat: s.compat,
    lazyRefcounts: s.lazyRefcounts,
    pool,
    onProgress: (n: number) => progress.update(Math.min(n, total ?? n)),
    backingFile: s.backing,
    backingImage: sources.backingImage,
  } as const;
  const outputOptions = {
    noClobber: s.noClobber,
    sync: s.sync,
    inputs: sources.inputs,
  };
  if (s.inPlace) {
    const written = await writeIntoImage(
      sources.source,
      s,
      sources.inputs,
      (n) => progress.update(Math.min(n, total ?? n)),
    );
    return {
      what: `${
        formatBytes(written.guestBytes)
      } of guest data into qcow2 (${written.allocatedClusters} clusters allocated, ${written.freedClusters} freed)`,
      guestBytes: written.guestBytes,
    };
  }
  if ("stream" in target || s.streamable) {
    const written = await writeStreamable(
      sources.source,
      target,
      outputOptions,
      writerOptions,
    );
    return {
      what: `${formatBytes(written.fileSize)} of streamable qcow2 for ${
        formatBytes(written.virtualSize)
      } virtual`,
      guestBytes: written.virtualSize,
      more: `; ${formatBytes(written.spoolBytes)} waited in the spool${
        leftToBacking(s, written.backingClusters)
      }`,
    };
  }
  const written = await convert(
    sources.source,
    await OutputFile.create(s.dst, outputOptions),
    writerOptions,
  );
  return {
    what: `${formatBytes(written.fileSize)} of qcow2 for ${
      formatBytes(written.virtualSize)
    } virtual`,
    guestBytes: written.virtualSize,
    more: leftToBacking(s, written.backingClusters),
  };
}

/** The summary's note on a delta image: how many clusters its base keeps. */
function leftToBacking(s: ConvertSettings, clusters: number): string {
  return s.backing ? `; ${clusters} clusters left to ${s.backing.name}` : "";
}

/** Writes raw bytes: a sparse file, a stream, or with -n the target. */
async function writeRawOutput(
  run: Run,
  sources: Sources,
  target: Target,
  progress: Progress,
): Promise<Written> {
  const size = await writeRaw(sources.source, sources.input.total, run.s, {
    pool: run.pool,
    progress,
    target,
    inputs: sources.inputs,
  });
  return {
    what: `${formatBytes(size)} of raw${run.s.inPlace ? " in place" : ""}`,
    guestBytes: size,
  };
}

/** Reads the command line; undefined when it only asked for help. */
async function parseCommandLine(
  args: string[],
): Promise<ConvertSettings | undefined> {
  const parsed = getopt("convert", args, CONVERT_OPTIONS);
  if (parsed.values.help) {
    console.log(CONVERT_HELP);
    return undefined;
  }
  const helpFormat = optionsHelpFormat(parsed);
  if (helpFormat !== undefined) {
    await writeOut(
      createOptionsHelp(helpFormat, parsed.positionals.length >= 2),
    );
    return undefined;
  }
  const s = convertSettings(parsed);
  checkCompressedName(parsed, s);
  return s;
}

/**
 * The progress report: none with -q; with -p into a file or pipe,
 * qemu-img's percentages (on stdout, as qemu-img prints them, or stderr
 * when DST is stdout); our bar on a terminal (by default there).
 */
async function progressOf(s: ConvertSettings, sources: Sources) {
  const total = sources.input.total;
  if (s.quiet) return createProgress(false, total);
  if (!s.progress || Deno.stderr.isTerminal()) {
    return createProgress(s.progress ?? Deno.stderr.isTerminal(), total);
  }
  const { input } = sources;
  const image = "image" in input ? input.image : input.from;
  const extents: ProgressExtent[] = [];
  if (image) {
    for await (const e of image.extents()) {
      extents.push({
        offset: e.offset,
        length: e.length,
        data: e.kind === "data" || e.kind === "compressed",
        depth: e.depth,
        hostOffset: e.hostOffset,
        compressed: e.kind === "compressed",
      });
    }
  } else if (total !== undefined) {
    extents.push({ offset: 0, length: total, data: true });
  }
  const chunk = s.compression === "none"
    ? QEMU_COPY_CHUNK
    : s.clusterSize ?? DEFAULT_CLUSTER_SIZE;
  const out = s.dst === "-" ? Deno.stderr : Deno.stdout;
  const encoder = new TextEncoder();
  return createQemuProgress(
    qemuProgressPieces(extents, chunk),
    (text) => out.writeSync(encoder.encode(text)),
  );
}

/**
 * Refuses a terminal where bytes of an image would go or come from, as
 * zstd and gzip do: standard output (DST `-`) would fill the screen with
 * binary, and standard input (SRC `-`) would take typed lines as disk data.
 */
function refuseTerminals(s: ConvertSettings): void {
  if (s.dst === "-" && Deno.stdout.isTerminal()) {
    throw new UsageError(
      "Cannot write to standard output: it is a terminal, and an image is binary; redirect it (> FILE or | COMMAND)",
    );
  }
  if (s.sources.includes("-") && Deno.stdin.isTerminal()) {
    throw new UsageError(
      "Cannot read standard input: it is a terminal; redirect an image into it (< FILE or COMMAND |)",
    );
  }
}

/**
 * qemu-img's `--salvage` warnings, at offsets in their SRC (none with -q).
 * A failed read: one line per 512-byte sector, as qemu-img prints one per
 * sector it could not read. A range the image's tables could not map
 * (qemu-img reads zeros there and says nothing): one line for the range,
 * with our reason, so that a small corrupt table cannot make gigabytes of
 * warnings. Written as they come: memory stays bounded.
 */
function salvageWarnings(quiet: boolean): SalvageReport {
  const line = (at: number, more = "") =>
    warn(
      `qcow2pipe: warning: error while reading offset ${at}: Input/output error${
        printable(more)
      }`,
    );
  return (offset, length, error, cause) => {
    if (quiet) return;
    if (cause === "map") {
      line(offset, ` (${length} bytes read as zeros: ${error.message})`);
      return;
    }
    const end = offset + length;
    for (let at = offset - offset % SECTOR_SIZE; at < end; at += SECTOR_SIZE) {
      line(at);
    }
  };
}

export async function convertCommand(args: string[]): Promise<number> {
  const s = await parseCommandLine(args);
  if (!s) return 0;
  refuseTerminals(s);
  // Notices and the summary name files of the command line and members
  // of archives: shown by printable(), each stays on its line.
  const notice = (line: string) => {
    if (!s.quiet) warn(printable(line));
  };
  // qemu-img prints nothing after a conversion: our summary is for a person
  // at a terminal, or asked for with --verbose.
  const summary = (line: string) => {
    if (s.verbose || (!s.quiet && Deno.stderr.isTerminal())) {
      warn(printable(line));
    }
  };
  await using pool = new CodecPool({ workers: s.workers });
  const run: Run = {
    s,
    notice,
    pool,
    salvage: s.salvage ? salvageWarnings(s.quiet) : undefined,
    cleanups: [],
  };
  try {
    const sources = await openSources(run);
    const target = await openTarget(s, sources.inputs);
    if ("stream" in target) {
      // Closes a stream nothing was written to; once written, a no-op.
      run.cleanups.push(() => target.stream.abort().catch(() => {}));
    }
    const progress = await progressOf(s, sources);
    const started = performance.now();
    const written = s.outputFormat === "qcow2"
      ? await writeQcow2(run, sources, target, progress)
      : await writeRawOutput(run, sources, target, progress);
    progress.finish();
    if (sources.sparse) {
      const { sparsifyLines } = await import("./_sparsify.ts");
      for (const l of sparsifyLines(await sources.sparse.report)) notice(l);
    }
    const seconds = (performance.now() - started) / 1000;
    const rate = formatRate(written.guestBytes, seconds);
    summary(
      `qcow2pipe: wrote ${
        s.dst === "-" ? "standard output" : s.dst
      }: ${written.what} in ${seconds.toFixed(2)} s${
        rate ? ` (${rate} of guest disk)` : ""
      }${written.more ?? ""}`,
    );
    return 0;
  } finally {
    for (const c of run.cleanups.reverse()) await c().catch(() => {});
  }
}
