// The SRC of `qcow2pipe convert`: a file, standard input or an http(s)
// URL, in a format the reader opens (given with -f or probed), with the
// internal snapshot -l / -s selects.
import { isHttpUrl } from "../io/http_source.ts";
import { HttpSource } from "../io/http_source.ts";
import type { GuestImage } from "../reader/image.ts";
import { openImage } from "../reader/open.ts";
import { sparseFileChunks } from "../host/file_stream.ts";
import type { ZeroBytes } from "../bytes/zeros.ts";
import { hasQcow2Magic } from "../format/header.ts";
import { PROBE_BYTES, probeFormat } from "../format/probe.ts";
import { type FormatName, readableFormat } from "../reader/formats.ts";
import { Qcow2Image } from "../reader/qcow2/image.ts";
import { formatBytes, UsageError } from "./_util.ts";
import type { ImageFormat } from "../reader/open.ts";
import type { HttpTransport } from "../io/http_source.ts";
import { directoryOf } from "../reader/references.ts";
import { fileError } from "../io/os_errors.ts";
import { splitOptionList } from "./_create_options.ts";
import { sourceName } from "./_inputs.ts";
import type { Unpacked } from "../reader/packed/unpack.ts";
import { PACKING_TITLES, packingOf } from "../reader/packed/magic.ts";

/**
 * Which internal snapshot to read: qemu-img's `-l snapshot.id=ID`,
 * `-l snapshot.name=NAME` (both may be given), or `-l ID_OR_NAME` / `-s`
 * (an ID first, then a name).
 */
export interface SnapshotSelector {
  id?: string;
  name?: string;
  idOrName?: string;
  /** As the user wrote it, for messages. */
  text: string;
}

/** Parses the value of `-l` or `-s` as qemu-img reads `-l`. */
export function parseSnapshot(text: string): SnapshotSelector {
  if (!text.startsWith("snapshot.")) return { idOrName: text, text };
  const selector: SnapshotSelector = { text };
  for (const [key, value] of splitOptionList([text])) {
    if (key === "snapshot.id") selector.id = value;
    else if (key === "snapshot.name") selector.name = value;
    else {
      throw new UsageError(
        `Cannot parse -l: "${key}" is not snapshot.id or snapshot.name`,
      );
    }
  }
  return selector;
}

/** Whether a snapshot of the image is the one the selector names. */
function selects(
  s: { id: string; name: string },
  selector: SnapshotSelector,
): boolean {
  if (selector.idOrName !== undefined) {
    return s.id === selector.idOrName || s.name === selector.idOrName;
  }
  return (selector.id === undefined || s.id === selector.id) &&
    (selector.name === undefined || s.name === selector.name);
}

/**
 * The snapshot string the reader takes (an ID, matched first, or a name)
 * for a selector: the ID of the snapshot that matches, when the image's
 * snapshots are known; otherwise what was given.
 */
function readerSnapshot(
  selector: SnapshotSelector,
  known?: { id: string; name: string }[],
): string {
  const found = known?.find((s) => selects(s, selector));
  if (found) return found.id;
  if (known) {
    const names = known.map((s) => `${s.id} "${s.name}"`).join(", ") ||
      "none";
    throw new UsageError(
      `Cannot open snapshot ${selector.text}: no snapshot matches (snapshots: ${names})`,
    );
  }
  return selector.idOrName ?? selector.id ?? selector.name!;
}

/**
 * An opened input: an image to read at random, or a raw byte stream (with
 * the raw file image it streams, when it is one: the files it reads).
 */
export type Input =
  | { image: GuestImage; total: number }
  | {
    raw: ReadableStream<Uint8Array | ZeroBytes>;
    total: number | undefined;
    from?: GuestImage;
  };

/** How to open SRC. */
export interface InputOptions {
  /** The format -f gave, or undefined to probe. */
  format: ImageFormat | undefined;
  snapshot: SnapshotSelector | undefined;
  /** Whether the output is qcow2 (raw files are then streamed, holes skipped). */
  toQcow2: boolean;
  /** --disk: the member of a tar archive to read. */
  disk?: string;
  notice: (line: string) => void;
  /** Where the input's closing is registered. */
  cleanups: (() => Promise<void>)[];
  /** How http(s) URLs are fetched. */
  http: HttpTransport;
  /** --image-opts: each SRC is qemu-img's `key=value,...` options. */
  imageOpts?: boolean;
}

/** What a stream was packed in: "xz-compressed: decompressing it as it is read". */
function describePacking(unpacked: Unpacked): string {
  const layers = unpacked.layers.map((l) => PACKING_TITLES[l]);
  const member = unpacked.member === undefined
    ? ""
    : `; reading its member "${unpacked.member}"`;
  return `${layers.join(", holding ")}: unpacking it as it is read${member}`;
}

function noSnapshots(): UsageError {
  return new UsageError("Cannot convert: -l / -s needs a qcow2 source");
}

/**
 * The image a selector asked for is the one opened: a name that is also
 * another snapshot's ID opens that one, as the reader matches IDs first.
 */
function assertSelected(image: GuestImage, selector: SnapshotSelector): void {
  if (!(image instanceof Qcow2Image) || !image.snapshot) return;
  const chosen = image.snapshot;
  if (selects(chosen, selector)) return;
  const wanted = image.snapshots.find((s) => selects(s, selector));
  throw new UsageError(
    `Cannot open snapshot ${selector.text}: snapshot ${chosen.id} "${chosen.name}" has that ID and was read instead, and a pipe cannot be read again${
      wanted ? `; give -l snapshot.id=${wanted.id}` : ""
    }`,
  );
}

/**
 * Opens a stream: raw is streamed, qcow2 is decoded in one pass when its
 * layout allows, and anything else is spooled. Relative names the image gives resolve against
 * `relativeTo`; with none, a probed image follows no backing or data file.
 */
async function openStream(
  stream: ReadableStream<Uint8Array>,
  size: number | undefined,
  what: string,
  relativeTo: string | undefined,
  options: InputOptions,
): Promise<Input> {
  if (options.format === "raw") {
    if (options.snapshot !== undefined) throw noSnapshots();
    return { raw: stream, total: size };
  }
  // A stream's readers (archives, decompressors, the one-pass and spooled
  // openers) load only for a stream.
  const { bytesOnly, unpackStream } = await import(
    "../reader/packed/unpack.ts"
  );
  const unpacked = await unpackStream(stream, {
    disk: options.disk,
    name: what,
  });
  const { head } = unpacked;
  if (unpacked.layers.length > 0) {
    options.notice(`qcow2pipe: ${what} is ${describePacking(unpacked)}`);
    size = unpacked.size;
  }
  const all = unpacked.stream;
  let format: FormatName;
  try {
    format = options.format !== undefined && options.format !== "auto"
      ? options.format
      : readableFormat(probeFormat(head, what), what);
  } catch (err) {
    await all.cancel();
    throw err;
  }
  const qcow2 = format === "qcow2";
  if (qcow2 && !hasQcow2Magic(head)) {
    await all.cancel();
    throw new UsageError(
      `Cannot convert: ${what} is not a qcow2 image (it does not start with the qcow2 magic), but -f qcow2 was given`,
    );
  }
  if (format === "raw") {
    if (options.snapshot !== undefined) throw noSnapshots();
    return { raw: all, total: size };
  }
  // Another format the reader opens (qcow, VDI, ...) is spooled whole,
  // a streamOptimized VMDK read in one pass.
  const { openImageStream } = await import("../reader/stream_open.ts");
  const opened = await openImageStream(bytesOnly(all), {
    snapshot: options.snapshot && readerSnapshot(options.snapshot),
    format: qcow2 ? options.format : format,
    relativeTo,
    name: what,
    http: options.http,
  });
  options.cleanups.push(() => opened.close());
  if (options.snapshot) assertSelected(opened.image, options.snapshot);
  options.notice(
    opened.onePass && !qcow2
      ? `qcow2pipe: ${what} is a streamOptimized ${format}: decoding it in one pass (${
        formatBytes(opened.spoolBytes)
      } before its grains spooled to ${opened.spoolPath})`
      : opened.onePass
      ? `qcow2pipe: ${what} is qcow2 with its tables first: decoding it in one pass (${
        formatBytes(opened.spoolBytes)
      } of metadata spooled to ${opened.spoolPath})`
      : !qcow2
      ? `qcow2pipe: ${what} is ${format}: spooled it whole (${
        formatBytes(opened.spoolBytes)
      }) to ${opened.spoolPath} to read it at random offsets`
      : `qcow2pipe: ${what} is qcow2 whose tables do not all precede its data: spooled it whole (${
        formatBytes(opened.spoolBytes)
      }) to ${opened.spoolPath} to read it at random offsets`,
  );
  return { image: opened.image, total: opened.image.virtualSize };
}

/**
 * Standard input, its read errors saying so and where. Its first bytes
 * are awaited here: an empty standard input (a pipeline whose first
 * command failed) is refused rather than converted to an empty image.
 */
async function stdinReadable(): Promise<ReadableStream<Uint8Array>> {
  const reader = Deno.stdin.readable.getReader();
  let at = 0;
  const next = async () => {
    try {
      return await reader.read();
    } catch (err) {
      throw fileError(`read standard input at offset ${at}`, err);
    }
  };
  let first: ReadableStreamReadResult<Uint8Array> | undefined = await next();
  if (first.done) {
    throw new UsageError(
      "Cannot convert standard input: it is empty (did the command before the pipe fail?)",
    );
  }
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = first ?? await next();
      first = undefined;
      if (chunk.done) {
        controller.close();
      } else {
        at += chunk.value.length;
        controller.enqueue(chunk.value);
      }
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}

/**
 * Opens an image read at random (a file, or a URL with Range requests)
 * with the snapshot asked for: when a name could be read as another
 * snapshot's ID, it is opened again by the right ID.
 */
async function openSeekable(
  input: string | HttpSource,
  options: InputOptions,
): Promise<GuestImage> {
  const { format, snapshot, http } = options;
  if (snapshot !== undefined && format === "raw") throw noSnapshots();
  let image = await openImage(input, {
    format,
    snapshot: snapshot && readerSnapshot(snapshot),
    http,
  });
  if (snapshot && image instanceof Qcow2Image) {
    const want = readerSnapshot(snapshot, image.snapshots);
    if (want !== image.snapshot?.id) {
      await image.close();
      image = await openImage(input, { format, snapshot: want, http });
    }
  }
  return image;
}

/**
 * A file that starts with a compression's or a tar archive's magic (or
 * any file, with --disk), opened as a stream to be unpacked as it is
 * read; undefined for any other file.
 */
async function packedFile(
  path: string,
  options: InputOptions,
): Promise<ReadableStream<Uint8Array> | undefined> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (err) {
    throw fileError(`open image ${path}`, err);
  }
  try {
    const head = new Uint8Array(PROBE_BYTES);
    let have = 0;
    while (have < head.length) {
      const n = await file.read(head.subarray(have));
      if (n === null) break;
      have += n;
    }
    if (
      options.disk === undefined &&
      packingOf(head.subarray(0, have)) === undefined
    ) {
      file.close();
      return undefined;
    }
    await file.seek(0, Deno.SeekMode.Start);
  } catch (err) {
    file.close();
    throw fileError(`open image ${path}`, err); // its first bytes are read to open it
  }
  return fileReadable(file, path);
}

/** A file read forward, its read errors saying so and where. */
function fileReadable(
  file: Deno.FsFile,
  path: string,
): ReadableStream<Uint8Array> {
  let at = 0;
  let closed = false;
  const close = () => {
    if (!closed) file.close();
    closed = true;
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const buffer = new Uint8Array(1 << 20);
      let n: number | null;
      try {
        n = await file.read(buffer);
      } catch (err) {
        close();
        throw fileError(`read ${path} at offset ${at}`, err);
      }
      if (n === null) {
        close();
        controller.close();
      } else {
        at += n;
        controller.enqueue(buffer.subarray(0, n));
      }
    },
    cancel: () => close(),
  }, { highWaterMark: 0 });
}

/**
 * Says once that a sparse raw file will be read whole: its holes are
 * found with lseek(SEEK_DATA/SEEK_HOLE), which Deno offers only through
 * FFI, and FFI was not granted (a 4 TiB file holding 1 MiB is then read
 * in full). Sparse means fewer blocks allocated than its size needs.
 */
async function noticeUnskippedHoles(
  path: string,
  options: InputOptions,
): Promise<void> {
  const os = Deno.build.os;
  if (os !== "linux" && os !== "darwin") return;
  if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") return;
  const info = await Deno.stat(path).catch(() => undefined);
  if (!info?.isFile || info.blocks === null) return;
  if (info.blocks * 512 >= info.size) return;
  // Under Node (lib/node/deno.ts stands in for Deno) there is no FFI to
  // grant: say so rather than name a flag that means nothing there.
  const why = typeof Deno.dlopen === "function"
    ? "without --allow-ffi (they are found with lseek through FFI)"
    : "under Node (Deno finds them with lseek through FFI; Node's fs offers no SEEK_DATA)";
  options.notice(
    `qcow2pipe: ${path} is sparse, but its holes cannot be skipped ${why}: reading all ${
      formatBytes(info.size)
    } of it`,
  );
}

/**
 * Opens SRC: a file, `-`, an http(s) URL, or a name in qemu-img's syntax
 * (`file:`, `json:{...}`, --image-opts; a `null-co` driver reads as zeros).
 */
export async function openInput(
  name: string,
  given: InputOptions,
): Promise<Input> {
  const named = sourceName(name, given.format, given.imageOpts);
  if (named.zeros !== undefined) {
    if (given.snapshot !== undefined) throw noSnapshots();
    const zeros: ZeroBytes = { zeros: named.zeros };
    return { raw: ReadableStream.from([zeros]), total: named.zeros };
  }
  const src = named.path;
  const options = { ...given, format: named.format };
  const { format } = options;
  if (src === "-") {
    // A pipe has no directory: a probed image from it follows no backing
    // or data file (a service started in / would otherwise follow any
    // absolute name). With -f qcow2 (or another named format), names
    // resolve against the working directory by QEMU's rules (never
    // against the spool directory).
    return await openStream(
      await stdinReadable(),
      undefined,
      "standard input",
      format !== undefined && format !== "auto" ? Deno.cwd() : undefined,
      options,
    );
  }
  if (isHttpUrl(src)) {
    // One request opens it: with Range support, its first bytes tell the
    // format; without, the answer is the whole resource, streamed as is.
    // Names the image gives resolve against the URL that answered.
    const opened = await HttpSource.openOrStream(src, options.http);
    if (!(opened instanceof HttpSource)) {
      return await openStream(
        opened.body,
        opened.size,
        src,
        directoryOf(opened.url)!,
        options,
      );
    }
    // Any format but raw is read at random offsets, with Range requests.
    const named = format !== undefined && format !== "auto";
    if (
      named ? format !== "raw" : readableFormat(
        probeFormat(await opened.read(0, PROBE_BYTES), src),
        src,
      ) !== "raw"
    ) {
      // The image leaves a source passed in open: close it here.
      options.cleanups.push(() => Promise.resolve(opened.close()));
      const image = await openSeekable(opened, options);
      options.cleanups.push(() => image.close());
      return { image, total: image.virtualSize };
    }
    if (options.snapshot !== undefined) throw noSnapshots();
    // Raw over HTTP: one streamed request beats many range requests.
    const { body, size } = await opened.stream();
    return await openStream(
      body,
      size,
      src,
      directoryOf(opened.url)!,
      options,
    );
  }
  if (format !== "raw") {
    const packed = await packedFile(src, options);
    if (packed) {
      return await openStream(
        packed,
        undefined,
        src,
        directoryOf(src),
        options,
      );
    }
  }
  const image = await openSeekable(src, options);
  options.cleanups.push(() => image.close());
  if (image.format === "raw") await noticeUnskippedHoles(src, options);
  if (image.format === "raw" && options.toQcow2) {
    // Raw file to qcow2: large sequential reads that skip the file's holes.
    // Its chunks go round: convert() to a file reports when they are
    // written. 2 MiB chunks convert as fast as 4 MiB ones here, with about
    // 6 MiB less peak memory.
    return {
      raw: sparseFileChunks(src, 2 * 1024 * 1024, { recycle: true }),
      total: image.virtualSize,
      from: image,
    };
  }
  return { image, total: image.virtualSize };
}
