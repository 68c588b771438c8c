// A codec worker that dies of an uncaught error in the middle of a run: the
// writer and the reader end with an error naming the worker, within a
// bounded time, leave no temporary file, and keep an existing DST as it was.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { listDir, MiB, mixedBytes } from "../writer/_helpers.ts";
import { convert } from "../../lib/convert.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { openImage } from "../../lib/reader/open.ts";
import { expandToFile } from "../../lib/reader/expand.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { InternalError } from "../../lib/format/errors.ts";

const CRASHING = new URL("./_crashing_worker.ts", import.meta.url).href;
const BOUND_MS = 60_000;

/** Runs `fn` while every new Worker runs the crashing codec worker. */
async function withCrashingWorkers<T>(fn: () => Promise<T>): Promise<T> {
  const Real = globalThis.Worker;
  let started = 0;
  globalThis.Worker = class extends Real {
    constructor(_url: string | URL, options?: WorkerOptions) {
      super(CRASHING, options);
      started++;
    }
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      fn(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no outcome within ${BOUND_MS} ms`)),
          BOUND_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
    globalThis.Worker = Real;
    assert.ok(started > 0, "the crashing worker was used");
  }
}

const OLD = new TextEncoder().encode("the previous DST\n");

Deno.test("faults: a codec worker that crashes while compressing fails the conversion and keeps DST", async () => {
  await using dir = await tempDir();
  const dst = join(dir.path, "out.qcow2");
  await Deno.writeFile(dst, OLD);
  const input = mixedBytes(16 * MiB, 5);
  await withCrashingWorkers(async () => {
    await using pool = new CodecPool({ workers: 2 });
    const chunks = Array.from(
      { length: 16 },
      (_, i) => input.subarray(i * MiB, (i + 1) * MiB),
    );
    await assert.rejects(
      convert(
        ReadableStream.from(chunks),
        await OutputFile.create(dst),
        { compression: "zstd", pool },
      ),
      (e: Error) =>
        e instanceof InternalError &&
        /codec worker \d failed: .*injected fault in a codec worker/.test(
          e.message,
        ),
    );
    // The pool stays failed: later jobs are refused at once.
    await assert.rejects(
      pool.compress({ type: "zlib" }, new Uint8Array(65536), 65536),
      /codec worker \d failed/,
    );
  });
  assert.deepStrictEqual(await listDir(dir.path), ["out.qcow2"]);
  assert.deepStrictEqual(await Deno.readFile(dst), OLD, "DST untouched");
});

Deno.test("faults: a codec worker that crashes while decompressing fails the expansion", async () => {
  await using dir = await tempDir();
  const src = join(dir.path, "src.qcow2");
  const image = await convertToBytes(mixedBytes(32 * MiB, 6), {
    compression: "zlib",
    workers: 0,
  });
  await Deno.writeFile(src, image);
  const dst = join(dir.path, "out.raw");
  await Deno.writeFile(dst, OLD);
  await withCrashingWorkers(async () => {
    await using pool = new CodecPool({ workers: 2 });
    await using opened = await openImage(src);
    const output = await OutputFile.create(dst);
    await assert.rejects(
      expandToFile(opened, output, { pool }),
      (e: Error) =>
        e instanceof InternalError &&
        /codec worker \d failed: .*injected fault in a codec worker/.test(
          e.message,
        ),
    );
  });
  assert.deepStrictEqual(await listDir(dir.path), ["out.raw", "src.qcow2"]);
  assert.deepStrictEqual(await Deno.readFile(dst), OLD, "DST untouched");
  assert.deepStrictEqual(await Deno.readFile(src), image, "source untouched");
});
