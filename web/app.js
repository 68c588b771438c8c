// The page's script: pick or drop a file, convert it in the page with the
// qcow2pipe bundle (built by `deno task bundle`, served as ./qcow2pipe.js
// and mapped to the package's name by index.html's import map), then
// download the result or describe it. The input is read as a stream
// (raw) or in slices (qcow2), and the output goes to the Origin Private
// File System, so memory stays bounded whatever the size of the disk.

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

const $ = (id) => document.getElementById(id);
const fileInput = $("file");
const drop = $("drop");
const convertButton = $("convert");
const progress = $("progress");
const status = $("status");
const error = $("error");
const result = $("result");
const download = $("download");
const info = $("info");

/** The chosen input: the File and its format, detected from its magic. */
let input;
/** The last result: a File in private storage (or in memory) and its name. */
let output;

function setState(state) {
  document.body.dataset.state = state;
}

function mib(bytes) {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}

async function choose(file) {
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  const qcow2 = hasQcow2Magic(head);
  input = { file, format: qcow2 ? "qcow2" : "raw" };
  $("input").textContent = `${file.name}: ${mib(file.size)}, ${input.format}`;
  $(qcow2 ? "target-raw" : "target-zstd").checked = true;
  error.textContent = "";
  convertButton.disabled = false;
  setState("ready");
}

/**
 * Where the result is written: a file in the Origin Private File System,
 * written at offsets and committed with its final size. Without it (an old
 * browser) the writes are kept in memory.
 */
async function createSink(name) {
  const storage = navigator.storage;
  if (storage?.getDirectory) {
    const root = await storage.getDirectory();
    const handle = await root.getFileHandle(name, { create: true });
    if (handle.createWritable) {
      const writable = await handle.createWritable();
      return {
        storage: "private file system",
        writeAt: (position, data) =>
          writable.write({ type: "write", position, data }),
        async commit(size) {
          await writable.truncate(size);
          await writable.close();
          this.file = await handle.getFile();
        },
        async abort() {
          await writable.abort().catch(() => {});
          await root.removeEntry(name).catch(() => {});
        },
        remove: () => root.removeEntry(name).catch(() => {}),
      };
    }
  }
  const parts = [];
  return {
    storage: "memory",
    writeAt(offset, data) {
      parts.push({ offset, data: data.slice() });
      return Promise.resolve();
    },
    commit(size) {
      // Writes never overlap; the gaps read as zeros.
      parts.sort((a, b) => a.offset - b.offset);
      const blobs = [];
      let at = 0;
      for (const { offset, data } of parts) {
        if (offset > at) blobs.push(new Uint8Array(offset - at));
        blobs.push(data);
        at = offset + data.length;
      }
      if (size > at) blobs.push(new Uint8Array(size - at));
      this.file = new File(blobs, name);
      return Promise.resolve();
    },
    abort() {
      parts.length = 0;
      return Promise.resolve();
    },
    remove: () => Promise.resolve(),
  };
}

function outputName(name, target) {
  const base = name.replace(/\.(raw|img|qcow2)$/i, "");
  return target === "raw" ? `${base}.raw` : `${base}.qcow2`;
}

async function run() {
  const target = document.querySelector("input[name=target]:checked").value;
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
  const onProgress = (done) => {
    progress.value = total > 0 ? done / total : 1;
    const seconds = (performance.now() - started) / 1000;
    status.textContent = `${mib(done)} of ${mib(total)}, ${
      (done / 2 ** 20 / Math.max(seconds, 0.001)).toFixed(1)
    } MiB/s`;
  };
  let image;
  try {
    const compression = target === "qcow2" ? "none" : target;
    if (target === "raw") {
      image = await openImage(new BlobSource(input.file));
      total = image.virtualSize;
      await expandToFile(image, sink, { pool, onProgress });
    } else if (input.format === "raw") {
      await convert(input.file.stream(), sink, {
        compression,
        pool,
        onProgress,
      });
    } else {
      image = await openImage(new BlobSource(input.file));
      total = image.virtualSize;
      await convert(image, sink, { compression, pool, onProgress });
    }
    const seconds = (performance.now() - started) / 1000;
    output = { name, sink, file: sink.file };
    download.href = URL.createObjectURL(output.file);
    download.download = name;
    download.textContent = `Download ${name} (${mib(output.file.size)})`;
    progress.value = 1;
    status.textContent = `Done: ${mib(total)} in ${seconds.toFixed(2)} s (${
      (total / 2 ** 20 / seconds).toFixed(1)
    } MiB/s), ${mib(output.file.size)} written to ${sink.storage}.`;
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

async function showInfo() {
  const source = new BlobSource(output.file, output.name);
  let text = formatImageInfo(await imageInfo(source));
  if (text.includes("file format: qcow2")) {
    text += "\n" + formatCheckResult(await checkImage(source));
  }
  info.textContent = text;
  info.hidden = false;
}

fileInput.addEventListener("change", () => {
  if (fileInput.files[0]) choose(fileInput.files[0]);
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) choose(file);
});
convertButton.addEventListener("click", run);
$("show-info").addEventListener("click", () =>
  showInfo().catch((err) => {
    error.textContent = err.message;
  }));

// Say which codecs this browser gets and how many workers run them.
const [zlib, zstd] = await Promise.all([
  createCodec({ type: "zlib" }),
  createCodec({ type: "zstd" }),
]);
const workers = new CodecPool().size;
$("env").textContent = `Codecs: zlib on ${zlib.backend}, zstd on ${
  zstd.backend === "zstd-codec" ? "zstd-codec (WebAssembly)" : zstd.backend
}; ${workers} worker${workers === 1 ? "" : "s"}.`;
setState("idle");
