// `qcow2pipe demo`: builds a sample disk (text, random data, long zero
// runs), converts it to zstd qcow2 and back, verifies the round trip and
// prints sizes and speeds. Needs no input file.
import { join } from "node:path";
import {
  CodecPool,
  convert,
  fileChunks,
  openImage,
  OutputFile,
} from "../../mod.ts";
import { expandToPath } from "../reader/expand_to_path.ts";
import { formatBytes, formatRate, UsageError } from "./_util.ts";
import { getopt } from "./_getopt.ts";
import { prng } from "../_prng.ts";

export const DEMO_HELP = `Usage: qcow2pipe demo [--size MIB] [--keep]

Builds a sample disk in a temporary folder (text, random data and long
zero runs), converts it to a zstd-compressed qcow2 image and back to raw,
checks that the round trip is identical (and, when qemu-img is installed,
that QEMU accepts the image), and prints sizes and speeds.

Options:
  --size MIB   virtual size of the sample disk in MiB, 1 to 1048576
               (default 256)
  --keep       keep the temporary folder
  -h, --help   show this help`;

const WORDS = (
  "the quick brown fox jumps over lazy dog disk image cluster sector stream " +
  "qemu virtual machine kernel boot loader file system block device table " +
  "refcount snapshot backing chain compress zstd zlib header extension guest host"
).split(" ");

function text(bytes: number, rand: () => number): Uint8Array {
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    const line = Array.from({ length: 8 + Math.floor(rand() * 8) }, () =>
      WORDS[Math.floor(rand() * WORDS.length)])
      .join(" ") + ".\n";
    parts.push(line);
    n += line.length;
  }
  return new TextEncoder().encode(parts.join("")).subarray(0, bytes);
}

function random(bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let at = 0; at < bytes; at += 65536) {
    crypto.getRandomValues(out.subarray(at, Math.min(bytes, at + 65536)));
  }
  return out;
}

/** Writes the sample disk; returns how many bytes hold data. */
async function buildSample(path: string, size: number): Promise<number> {
  const rand = prng(2026);
  const mib = 1024 * 1024;
  const pieces: [number, Uint8Array][] = [
    [0, text(Math.min(16 * mib, size / 8), rand)],
    [size / 4, random(Math.min(16 * mib, size / 8))],
    [size / 2, new Uint8Array(Math.min(8 * mib, size / 16)).fill(0x5a)],
    [(size * 3) / 4, text(Math.min(4 * mib, size / 32), rand)],
    [size - 4096 - 1000, text(4096, rand)],
  ];
  const file = await Deno.open(path, { write: true, createNew: true });
  try {
    let data = 0;
    for (const [offset, bytes] of pieces) {
      await file.seek(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < bytes.length) {
        done += await file.write(bytes.subarray(done));
      }
      data += bytes.length;
    }
    await file.truncate(size);
    return data;
  } finally {
    file.close();
  }
}

/** Compares two files chunk by chunk; returns the first differing offset or -1. */
async function firstDifference(a: string, b: string): Promise<number> {
  const [fa, fb] = await Promise.all([Deno.open(a), Deno.open(b)]);
  const ra = fileChunks(fa, 4 * 1024 * 1024).getReader();
  const rb = fileChunks(fb, 4 * 1024 * 1024).getReader();
  let offset = 0;
  try {
    for (;;) {
      const [x, y] = await Promise.all([ra.read(), rb.read()]);
      if (x.done || y.done) return x.done && y.done ? -1 : offset;
      const n = Math.min(x.value.length, y.value.length);
      for (let i = 0; i < n; i++) {
        if (x.value[i] !== y.value[i]) return offset + i;
      }
      if (x.value.length !== y.value.length) return offset + n;
      offset += n;
    }
  } finally {
    await ra.cancel();
    await rb.cancel();
  }
}

async function qemuImg(args: string[]): Promise<string | undefined> {
  try {
    const out = await new Deno.Command("qemu-img", {
      args,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.success ? out.stdout : out.stderr)
      .trim();
    return (out.success ? "" : "FAILED: ") + text.split("\n")[0];
  } catch {
    return undefined;
  }
}

/** Reads the command line: the sample's size in bytes, or undefined for help. */
function demoOptions(
  args: string[],
): { size: number; keep: boolean } | undefined {
  const { values } = getopt("demo", args, {
    size: { type: "string" },
    keep: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return undefined;
  }
  const sizeMib = values.size === undefined ? 256 : Number(values.size);
  if (!Number.isInteger(sizeMib) || sizeMib < 1 || sizeMib > 1024 * 1024) {
    throw new UsageError(
      `Cannot run demo: --size ${values.size} is out of range [1, 1048576] MiB`,
    );
  }
  return { size: sizeMib * 1024 * 1024, keep: !!values.keep };
}

const rate = (bytes: number, ms: number) => formatRate(bytes, ms / 1000) ?? "";

/** The sample's files, its size and the codec pool. */
interface Demo {
  raw: string;
  qcow2: string;
  back: string;
  size: number;
  pool: CodecPool;
}

/** Converts the sample to zstd qcow2 and prints the line about it. */
async function convertStep(d: Demo): Promise<void> {
  const t0 = performance.now();
  const summary = await convert(
    fileChunks(await Deno.open(d.raw)),
    await OutputFile.create(d.qcow2),
    { compression: "zstd", pool: d.pool },
  );
  const ms = performance.now() - t0;
  console.log(
    `  raw -> zstd qcow2 ${formatBytes(summary.fileSize).padEnd(10)} ${
      (ms / 1000).toFixed(2)
    } s  ${
      rate(d.size, ms)
    }  (${summary.compressedClusters} compressed, ${summary.dataClusters} stored, ${summary.zeroClusters} zero clusters)`,
  );
}

/** Expands the qcow2 image back to raw and prints the line about it. */
async function expandStep(d: Demo): Promise<void> {
  const t0 = performance.now();
  {
    await using image = await openImage(d.qcow2);
    await expandToPath(image, d.back, { pool: d.pool });
  }
  const ms = performance.now() - t0;
  const onDisk = ((await Deno.stat(d.back)).blocks ?? 0) * 512;
  console.log(
    `  qcow2 -> raw      ${formatBytes(d.size).padEnd(10)} ${
      (ms / 1000).toFixed(2)
    } s  ${rate(d.size, ms)}  (sparse: ${formatBytes(onDisk)} on disk)`,
  );
}

/** Compares the round trip with the sample; returns whether they match. */
async function verifyStep(d: Demo): Promise<boolean> {
  const diff = await firstDifference(d.raw, d.back);
  console.log(
    diff === -1
      ? `  verify            round trip identical (${
        formatBytes(d.size)
      } compared byte for byte)`
      : `  verify            FAILED: the round trip differs at byte ${diff}`,
  );
  return diff === -1;
}

/**
 * Has qemu-img check the image and compare it with the sample, when it is
 * installed and allowed; returns false only when it finds a fault.
 */
async function qemuStep(d: Demo): Promise<boolean> {
  const mayRun = Deno.permissions.querySync({
    name: "run",
    command: "qemu-img",
  }).state === "granted";
  if (!mayRun) {
    console.log(
      "  qemu-img          not allowed to run (--allow-run=qemu-img); skipped check and compare",
    );
    return true;
  }
  const check = await qemuImg(["check", d.qcow2]);
  if (check === undefined) {
    console.log(
      "  qemu-img          not installed; skipped check and compare",
    );
    return true;
  }
  const compare = await qemuImg([
    "compare",
    "-f",
    "raw",
    "-F",
    "qcow2",
    d.raw,
    d.qcow2,
  ]);
  console.log(`  qemu-img check    ${check}`);
  console.log(`  qemu-img compare  ${compare}`);
  return !check.startsWith("FAILED") && !compare?.startsWith("FAILED");
}

export async function demoCommand(args: string[]): Promise<number> {
  const options = demoOptions(args);
  if (!options) return 0;
  const { size } = options;
  const dir = await Deno.makeTempDir({ prefix: "qcow2pipe-demo-" });
  try {
    console.log(`qcow2pipe demo: working in ${dir}`);
    const raw = join(dir, "sample.raw");
    const data = await buildSample(raw, size);
    console.log(
      `  sample disk       ${formatBytes(size)} virtual, ${
        formatBytes(data)
      } written (text, random, pattern)`,
    );
    await using pool = new CodecPool();
    const d: Demo = {
      raw,
      qcow2: join(dir, "sample.qcow2"),
      back: join(dir, "roundtrip.raw"),
      size,
      pool,
    };
    await convertStep(d);
    await expandStep(d);
    const same = await verifyStep(d);
    const accepted = await qemuStep(d);
    return same && accepted ? 0 : 1;
  } finally {
    if (options.keep) console.log(`  kept ${dir}`);
    else await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
