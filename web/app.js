// @ts-check
// The page's script: pick or drop a file, convert it in the page with the
// qcow2pipe bundle (built by `deno task bundle`, served as ./qcow2pipe.js
// and mapped to the package's name by index.html's import map), then
// download the result or describe it. The input is read as a stream
// (raw) or in slices (qcow2), and the output goes to the Origin Private
// File System, so memory stays bounded whatever the size of the disk.
// A qcow2 image's backing files are read only from the files the user
// picks for them, matched by name. Cluster size, compression level and
// sparsify are the library's options of the same names.
//
// `deno check .` type-checks this file (// @ts-check, JSDoc types) with the
// DOM's types and against web/bundle.ts, the module index.html's import map
// gives it: web/deno.json maps the same names.

import {
  BlobSource,
  CodecPool,
  convert,
  createCodec,
  expandToFile,
  openImage,
} from "@qcow2pipe/qcow2pipe/core";
import {
  checkImage,
  formatCheckResult,
  formatImageInfo,
  imageInfo,
} from "@qcow2pipe/qcow2pipe/tools";
import { hasQcow2Magic } from "@qcow2pipe/qcow2pipe/format";
import { freeSpaceChunks } from "@qcow2pipe/qcow2pipe/sparsify";
/** @import { GuestImage, ImageSink, RandomAccessSource } from "@qcow2pipe/qcow2pipe/core" */
/** @import { SparsifyReport } from "@qcow2pipe/qcow2pipe/sparsify" */

/**
 * Where a result goes: an {@linkcode ImageSink} that keeps the committed
 * file and can remove it again.
 * @typedef {ImageSink & {
 *   storage: string,
 *   file?: File,
 *   remove(): Promise<void>,
 * }} ResultSink
 */

/**
 * The element of index.html with this id, checked to be of its kind.
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{ new (): T, name: string }} kind
 * @returns {T}
 */
function $(id, kind) {
  const element = document.getElementById(id);
  if (!(element instanceof kind)) {
    throw new Error(`index.html has no ${kind.name} with id "${id}"`);
  }
  return element;
}
const fileInput = $("file", HTMLInputElement);
const drop = $("drop", HTMLLabelElement);
const convertButton = $("convert", HTMLButtonElement);
const progress = $("progress", HTMLProgressElement);
const status = $("status", HTMLParagraphElement);
const error = $("error", HTMLParagraphElement);
const result = $("result", HTMLDivElement);
const download = $("download", HTMLAnchorElement);
const info = $("info", HTMLPreElement);
const backingSection = $("backing-section", HTMLDivElement);
const backingInput = $("backing", HTMLInputElement);
const clusterSize = $("cluster-size", HTMLSelectElement);
const level = $("level", HTMLInputElement);
const sparsify = $("sparsify", HTMLInputElement);

/**
 * The backing files the user picked, by name. An image's backing (and
 * external data) file is opened from here when its name ends with the
 * picked file's name, and from nowhere else: the page reads no file that
 * was not picked for it.
 * @type {Map<string, File>}
 */
const backingFiles = new Map();

/** The file a qcow2 image names, which the user has not picked yet. */
class MissingFile extends Error {
  /** @param {string} name As the image names it. */
  constructor(name) {
    super(`pick the file "${baseName(name)}"`);
    this.name = "MissingFile";
    this.file = name;
  }
}

/** @param {string} name A path as an image stores it. */
function baseName(name) {
  return name.split(/[\\/]/).pop() ?? name;
}

/**
 * Opens what an image names from the picked files: the `openSource` of
 * {@linkcode openImage}.
 * @param {string} name
 * @returns {Promise<RandomAccessSource>}
 */
function openPicked(name) {
  const file = backingFiles.get(baseName(name));
  return file
    ? Promise.resolve(new BlobSource(file, name))
    : Promise.reject(new MissingFile(name));
}

/**
 * The chosen input as an image, its backing files from the picked ones.
 * Its format is the one its magic showed, given: the references it makes
 * lead only to the files the user picked, whatever their names say.
 * @returns {Promise<GuestImage>}
 */
function openInput() {
  if (!input) throw new Error("Cannot open: no file is chosen");
  return openImage(new BlobSource(input.file), {
    format: input.format,
    openSource: openPicked,
  });
}

/**
 * The missing file an error is about, when a picked file would answer it,
 * and what the image takes it for (the reader's wording of the error that
 * wraps it: a backing file or an external data file).
 * @param {unknown} err
 * @returns {{ name: string, what: string } | undefined}
 */
function missingFile(err) {
  let what = "backing file";
  for (let e = err; e instanceof Error; e = e.cause) {
    if (e instanceof MissingFile) return { name: e.file, what };
    what = /^Cannot open (backing file|external data file) /.exec(e.message)
      ?.[1] ?? what;
  }
  return undefined;
}

/**
 * The chosen input: the File and its format, detected from its magic.
 * @type {{ file: File, format: "qcow2" | "raw" } | undefined}
 */
let input;
/**
 * The last result: a File in private storage (or in memory) and its name.
 * @type {{ name: string, sink: ResultSink, file: File } | undefined}
 */
let output;

/**
 * @param {"idle" | "checking" | "needs-backing" | "ready" | "converting" |
 *   "done" | "error"} state
 */
function setState(state) {
  document.body.dataset.state = state;
}

/**
 * A size as people read it: KiB below a MiB, so that a small file does
 * not read as 0.0 MiB.
 * @param {number} bytes
 */
function mib(bytes) {
  return bytes < 2 ** 20
    ? `${(bytes / 1024).toFixed(1)} KiB`
    : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

/** @param {File} file */
async function choose(file) {
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  const qcow2 = hasQcow2Magic(head);
  input = { file, format: qcow2 ? "qcow2" : "raw" };
  backingFiles.clear();
  $(qcow2 ? "target-raw" : "target-zstd", HTMLInputElement).checked = true;
  showOptions();
  await openChain();
}

/**
 * Opens the chosen image with the picked backing files, to learn whether
 * a file it names is still missing: asks for it, or makes the page ready.
 */
async function openChain() {
  if (!input) return;
  const { file, format } = input;
  error.textContent = "";
  convertButton.disabled = true;
  setState("checking");
  let about = `${file.name}: ${mib(file.size)}, ${format}`;
  try {
    const image = await openInput();
    const chain = [];
    for (let i = image.backing; i; i = i.backing) chain.push(i.name);
    await image.close();
    if (chain.length > 0) about += `, backing files ${chain.join(", ")}`;
    backingSection.hidden = chain.length === 0;
    $("backing-needed", HTMLParagraphElement).textContent = chain.length
      ? `All its backing files are picked.`
      : "";
    convertButton.disabled = false;
    setState("ready");
  } catch (err) {
    const missing = missingFile(err);
    if (missing === undefined) {
      backingSection.hidden = true;
      error.textContent = err instanceof Error ? err.message : String(err);
      setState("error");
    } else {
      backingSection.hidden = false;
      $("backing-needed", HTMLParagraphElement).textContent =
        `${file.name} is read through ${
          missing.what === "backing file" ? "a" : "an"
        } ${missing.what}, "${missing.name}": pick the file named ${
          baseName(missing.name)
        } (and the files it names in turn, if any).`;
      setState("needs-backing");
    }
  } finally {
    $("input", HTMLParagraphElement).textContent = about;
    $("backing-list", HTMLParagraphElement).textContent = backingFiles.size
      ? `Picked: ${[...backingFiles.keys()].join(", ")}.`
      : "";
  }
}

/** Enables the options the chosen target takes. */
function showOptions() {
  const target = chosenTarget();
  const compressed = target === "zlib" || target === "zstd";
  level.disabled = !compressed;
  level.max = target === "zlib" ? "9" : "22";
  clusterSize.disabled = target === "raw";
}

/**
 * Where the result is written: a file in the Origin Private File System,
 * written at offsets and committed with its final size. Without it (an old
 * browser) the writes are kept in memory.
 *
 * @param {string} name
 * @returns {Promise<ResultSink>}
 */
async function createSink(name) {
  const storage = navigator.storage;
  if (storage?.getDirectory) {
    const root = await storage.getDirectory();
    const handle = await root.getFileHandle(name, { create: true });
    if (handle.createWritable) {
      const writable = await handle.createWritable();
      /** @type {ResultSink} */
      const sink = {
        storage: "private file system",
        // The library's buffers are never shared memory.
        writeAt: (position, data) =>
          writable.write({
            type: "write",
            position,
            data: /** @type {Uint8Array<ArrayBuffer>} */ (data),
          }),
        async commit(size) {
          await writable.truncate(size);
          await writable.close();
          sink.file = await handle.getFile();
        },
        async abort() {
          await writable.abort().catch(() => {});
          await root.removeEntry(name).catch(() => {});
        },
        remove: () => root.removeEntry(name).catch(() => {}),
      };
      return sink;
    }
  }
  /** @type {{ offset: number, data: Uint8Array<ArrayBuffer> }[]} */
  const parts = [];
  /** @type {ResultSink} */
  const sink = {
    storage: "memory",
    writeAt(offset, data) {
      parts.push({ offset, data: data.slice() });
      return Promise.resolve();
    },
    commit(size) {
      // Writes never overlap; the gaps read as zeros.
      parts.sort((a, b) => a.offset - b.offset);
      /** @type {BlobPart[]} */
      const blobs = [];
      let at = 0;
      for (const { offset, data } of parts) {
        if (offset > at) blobs.push(new Uint8Array(offset - at));
        blobs.push(data);
        at = offset + data.length;
      }
      if (size > at) blobs.push(new Uint8Array(size - at));
      sink.file = new File(blobs, name);
      return Promise.resolve();
    },
    abort() {
      parts.length = 0;
      return Promise.resolve();
    },
    remove: () => Promise.resolve(),
  };
  return sink;
}

/**
 * What the checked "Convert to" button asks for: qcow2 with no compression,
 * with zlib or zstd, or raw.
 * @returns {"qcow2" | "zlib" | "zstd" | "raw"}
 */
function chosenTarget() {
  const value = document.querySelector("input[name=target]:checked")
    ?.getAttribute("value");
  if (
    value === "qcow2" || value === "zlib" || value === "zstd" ||
    value === "raw"
  ) return value;
  throw new Error(`Cannot convert: no known target is chosen (${value})`);
}

/**
 * @param {string} name
 * @param {"qcow2" | "zlib" | "zstd" | "raw"} target
 */
function outputName(name, target) {
  const base = name.replace(/\.(raw|img|qcow2)$/i, "");
  return target === "raw" ? `${base}.raw` : `${base}.qcow2`;
}

async function run() {
  if (!input) return;
  const target = chosenTarget();
  const name = outputName(input.file.name, target);
  convertButton.disabled = true;
  result.hidden = true;
  info.hidden = true;
  error.textContent = "";
  progress.value = 0;
  setState("converting");
  await output?.sink.remove();
  output = undefined;

  const started = performance.now();
  const pool = new CodecPool();
  const sink = await createSink(`qcow2pipe-${Date.now()}-${name}`);
  let total = input.file.size;
  /** @type {import("@qcow2pipe/qcow2pipe/core").ConvertOptions} */
  const options = {
    compression: target === "qcow2" || target === "raw" ? "none" : target,
    clusterSize: Number(clusterSize.value),
    ...(level.disabled || level.value === "" ? {} : {
      level: Number(level.value),
    }),
  };
  /** @param {number} done */
  const onProgress = (done) => {
    progress.value = total > 0 ? done / total : 1;
    const seconds = (performance.now() - started) / 1000;
    status.textContent = `${mib(done)} of ${mib(total)}, ${
      (done / 2 ** 20 / Math.max(seconds, 0.001)).toFixed(1)
    } MiB/s`;
  };
  /** @type {GuestImage | undefined} */
  let image;
  /** @type {SparsifyReport | undefined} */
  let report;
  try {
    if (input.format === "raw" && target !== "raw" && !sparsify.checked) {
      await convert(input.file.stream(), sink, {
        ...options,
        pool,
        onProgress,
      });
    } else {
      // Read at random: with sparsify, free space is never read.
      image = await openInput();
      total = image.virtualSize;
      if (target === "raw") {
        const mapped = sparsify.checked
          ? await freeSpaceChunks(image, { pool })
          : undefined;
        report = mapped?.report;
        await expandToFile(mapped?.readable ?? image, sink, {
          pool,
          onProgress,
        });
      } else {
        const summary = await convert(image, sink, {
          ...options,
          sparsify: sparsify.checked,
          pool,
          onProgress,
        });
        report = summary.sparsify;
      }
    }
    const seconds = (performance.now() - started) / 1000;
    if (!sink.file) throw new Error(`${name} was not committed`);
    output = { name, sink, file: sink.file };
    download.href = URL.createObjectURL(output.file);
    download.download = name;
    download.textContent = `Download ${name} (${mib(output.file.size)})`;
    progress.value = 1;
    status.textContent = `Done: ${mib(total)} in ${seconds.toFixed(2)} s (${
      (total / 2 ** 20 / seconds).toFixed(1)
    } MiB/s), ${mib(output.file.size)} written to ${sink.storage}${
      target === "raw" ? "" : `, ${settingsText(options)}`
    }.${report ? ` ${sparsifyText(report)}` : ""}`;
    result.hidden = false;
    setState("done");
  } catch (err) {
    await sink.abort();
    error.textContent = err instanceof Error ? err.message : String(err);
    setState("error");
  } finally {
    await image?.close();
    await pool.close();
    convertButton.disabled = false;
  }
}

/**
 * The settings a qcow2 was written with, as the status line says them.
 * @param {import("@qcow2pipe/qcow2pipe/core").ConvertOptions} o
 */
function settingsText(o) {
  const size = o.clusterSize ?? 65536;
  const cluster = size >= 2 ** 20
    ? `${size / 2 ** 20} MiB`
    : `${size / 1024} KiB`;
  const codec = o.compression === "none"
    ? "uncompressed"
    : o.level === undefined
    ? `${o.compression} (default level)`
    : `${o.compression} level ${o.level}`;
  return `${codec}, ${cluster} clusters`;
}

/**
 * What sparsify found, in one sentence: the free space dropped, and each
 * region that was left as it is, with why.
 * @param {SparsifyReport} report
 */
function sparsifyText(report) {
  const found = report.regions.map((r) =>
    r.status === "mapped"
      ? `${r.found}: ${mib(r.freeBytes)} free`
      : `${r.found} left as it is (${r.reason})`
  );
  return `Sparsify: ${mib(report.freeBytes)} of free space dropped (${
    found.join("; ")
  }).`;
}

async function showInfo() {
  if (!output) return;
  const source = new BlobSource(output.file, output.name);
  let text = formatImageInfo(await imageInfo(source));
  if (text.includes("file format: qcow2")) {
    text += "\n" + formatCheckResult(await checkImage(source));
  }
  info.textContent = text;
  info.hidden = false;
}

fileInput.addEventListener("change", () => {
  const file = fileInput.files?.[0];
  if (file) choose(file);
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer?.files[0];
  if (file) choose(file);
});
convertButton.addEventListener("click", run);
backingInput.addEventListener("change", () => {
  for (const file of backingInput.files ?? []) {
    backingFiles.set(file.name, file);
  }
  backingInput.value = "";
  openChain();
});
for (const radio of document.querySelectorAll("input[name=target]")) {
  radio.addEventListener("change", showOptions);
}
$("show-info", HTMLButtonElement).addEventListener(
  "click",
  () =>
    showInfo().catch((err) => {
      error.textContent = err instanceof Error ? err.message : String(err);
    }),
);

// Say which codecs this browser gets and how many workers run them.
const [zlib, zstd] = await Promise.all([
  createCodec({ type: "zlib" }),
  createCodec({ type: "zstd" }),
]);
const workers = new CodecPool().size;
$("env", HTMLParagraphElement).textContent =
  `Codecs: zlib on ${zlib.backend}, zstd on ${
    zstd.backend === "zstd-codec" ? "zstd-codec (WebAssembly)" : zstd.backend
  }; ${workers} worker${workers === 1 ? "" : "s"}.`;
setState("idle");
