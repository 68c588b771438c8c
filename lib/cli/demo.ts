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

export async function demoCommand(args: string[]): Promise<number> {
  const { values } = getopt("demo", args, {
    size: { type: "string" },
    keep: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  const sizeMib = values.size === undefined ? 256 : Number(values.size);
  if (!Number.isInteger(sizeMib) || sizeMib < 1 || sizeMib > 1024 * 1024) {
    throw new UsageError(
      `Cannot run demo: --size ${values.size} is out of range [1, 1048576] MiB`,
    );
  }
  const size = sizeMib * 1024 * 1024;
  const dir = await Deno.makeTempDir({ prefix: "qcow2pipe-demo-" });
  const raw = join(dir, "sample.raw");
  const qcow2 = join(dir, "sample.qcow2");
  const back = join(dir, "roundtrip.raw");
  const rate = (bytes: number, ms: number) => formatRate(bytes / (ms / 1000));
  let failed = false;
  try {
    console.log(`qcow2pipe demo: working in ${dir}`);
    const data = await buildSample(raw, size);
    console.log(
      `  sample disk       ${formatBytes(size)} virtual, ${
        formatBytes(data)
      } written (text, random, pattern)`,
    );

    await using pool = new CodecPool();
    let t0 = performance.now();
    const summary = await convert(
      fileChunks(await Deno.open(raw)),
      await OutputFile.create(qcow2),
      {
        compression: "zstd",
        pool,
      },
    );
    const convertMs = performance.now() - t0;
    console.log(
      `  raw -> zstd qcow2 ${formatBytes(summary.fileSize).padEnd(10)} ${
        (convertMs / 1000).toFixed(2)
      } s  ${
        rate(size, convertMs)
      }  (${summary.compressedClusters} compressed, ${summary.dataClusters} stored, ${summary.zeroClusters} zero clusters)`,
    );

    t0 = performance.now();
    {
      await using image = await openImage(qcow2);
      await expandToPath(image, back, { pool });
    }
    const expandMs = performance.now() - t0;
    const onDisk = ((await Deno.stat(back)).blocks ?? 0) * 512;
    console.log(
      `  qcow2 -> raw      ${formatBytes(size).padEnd(10)} ${
        (expandMs / 1000).toFixed(2)
      } s  ${rate(size, expandMs)}  (sparse: ${formatBytes(onDisk)} on disk)`,
    );

    const diff = await firstDifference(raw, back);
    if (diff === -1) {
      console.log(
        `  verify            round trip identical (${
          formatBytes(size)
        } compared byte for byte)`,
      );
    } else {
      console.log(
        `  verify            FAILED: the round trip differs at byte ${diff}`,
      );
      failed = true;
    }
    const mayRun = Deno.permissions.querySync({
      name: "run",
      command: "qemu-img",
    }).state === "granted";
    const check = mayRun ? await qemuImg(["check", qcow2]) : undefined;
    if (!mayRun) {
      console.log(
        "  qemu-img          not allowed to run (--allow-run=qemu-img); skipped check and compare",
      );
    } else if (check === undefined) {
      console.log(
        "  qemu-img          not installed; skipped check and compare",
      );
    } else {
      const compare = await qemuImg([
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw,
        qcow2,
      ]);
      console.log(`  qemu-img check    ${check}`);
      console.log(`  qemu-img compare  ${compare}`);
      if (check.startsWith("FAILED") || compare?.startsWith("FAILED")) {
        failed = true;
      }
    }
  } finally {
    if (values.keep) console.log(`  kept ${dir}`);
    else await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return failed ? 1 : 0;
}
