import assert from "node:assert";
import { join } from "node:path";
import { expandToFile } from "../../lib/reader/expand.ts";
import { expandToPath } from "../../lib/reader/expand_to_path.ts";
import { openImage } from "../../lib/reader/open.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import type { ImageSink } from "../../lib/io/sink.ts";
import { BytesSource, type RandomAccessSource } from "../../lib/io/source.ts";
import { listDir } from "../writer/_helpers.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { qemuImg, qemuIo, qemuTest, readAt, tempDir } from "../_qemu.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

qemuTest(
  "convert expands a 4 TiB image with three written clusters to a sparse file of kilobytes",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "huge.qcow2");
    const TiB = 2 ** 40;
    await qemuImg("create", "-q", "-f", "qcow2", img, "4T");
    const spots = [0, 2 * TiB + 65536 * 3, 4 * TiB - 65536];
    await qemuIo(img, spots.map((at, i) => `write -P ${0x41 + i} ${at} 64k`));
    const out = join(dir.path, "huge.raw");
    const r = await new Deno.Command("deno", {
      args: ["run", "-A", CLI, "convert", "-q", img, out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
    const info = await Deno.stat(out);
    assert.strictEqual(info.size, 4 * TiB);
    assert.ok(
      (info.blocks ?? 0) * 512 <= 1024 * 1024,
      `${info.blocks} blocks on disk`,
    );
    for (const [i, at] of spots.entries()) {
      assert.ok(
        (await readAt(out, at, 65536)).every((b) => b === 0x41 + i),
        `cluster at ${at}`,
      );
    }
    assert.ok(
      (await readAt(out, 65536, 65536)).every((b) => b === 0),
      "the rest reads as zeros",
    );
  },
);

Deno.test("expandToFile() writes data runs whole and leaves zero blocks as holes", async () => {
  await using dir = await tempDir();
  // 1 MiB of data, 1 MiB of zeros, then 100 KiB and a bit of data. A raw
  // image reports everything as data, so the zero run is found by scanning.
  const raw = new Uint8Array(2 * 1024 * 1024 + 100 * 1024 + 123);
  raw.fill(5, 0, 1024 * 1024);
  raw.fill(6, 2 * 1024 * 1024);
  const path = join(dir.path, "out.raw");
  await using image = await openImage(raw); // a raw image: everything is data
  const written = await expandToFile(image, await OutputFile.create(path));
  assert.strictEqual(
    written,
    1024 * 1024 + 100 * 1024 + 123,
    "zero blocks were not written",
  );
  // Whole sectors, as qemu-img convert -f raw -O raw writes: the tail of the
  // last sector reads as zeros.
  const padded = new Uint8Array(Math.ceil(raw.length / 512) * 512);
  padded.set(raw);
  assert.deepStrictEqual(await Deno.readFile(path), padded);

  await using qcow2 = await openImage(
    await convertToBytes(raw, { clusterSize: 4096 }),
  );
  const path2 = join(dir.path, "out2.raw");
  await expandToFile(qcow2, await OutputFile.create(path2));
  assert.deepStrictEqual(
    (await Deno.readFile(path2)).subarray(0, raw.length),
    raw,
  );
});

const MiB = 1024 * 1024;

/**
 * A 16 MiB qcow2 image of 7s whose last cluster's L2 entry points 1 TiB
 * past the end of the file: it opens, and reading it fails.
 */
async function badImage(): Promise<Uint8Array> {
  const image = await convertToBytes(new Uint8Array(16 * MiB).fill(7), {
    workers: 0,
  });
  const view = new DataView(image.buffer);
  const l1 = Number(view.getBigUint64(40)); // l1_table_offset
  const l2 = Number(view.getBigUint64(l1) & 0x00ff_ffff_ffff_fe00n);
  const last = 16 * MiB / 65536 - 1;
  view.setBigUint64(l2 + 8 * last, (1n << 63n) | (1n << 40n)); // COPIED | 1 TiB
  return image;
}

const PAST_END =
  /Cannot read image \S+\/bad\.qcow2: guest cluster 0xff0000 maps to host offset 0x10000000000, past the end of the file/;

/** A 16 MiB raw source of 7s whose reads at 8 MiB and past fail. */
function failingSource(): RandomAccessSource {
  const bytes = new BytesSource(new Uint8Array(16 * MiB).fill(7));
  return {
    size: bytes.size,
    read: (offset, length) =>
      offset + length > 8 * MiB
        ? Promise.reject(new Error(`Cannot read SRC at ${offset}: injected`))
        : bytes.read(offset, length),
  };
}

Deno.test("expandToPath() leaves no file and no temporary file when the image read fails mid-way", async () => {
  await using dir = await tempDir();
  await using image = await openImage(failingSource(), { format: "raw" });
  const dst = join(dir.path, "out.raw");
  let done = 0;
  const reading = { chunkSize: MiB, maxInFlight: 1 }; // little read-ahead
  await assert.rejects(
    expandToPath(image, dst, { ...reading, onProgress: (n) => done = n }),
    /Cannot read guest offset 0x800000: .*: Cannot read SRC at 8388608: injected/,
  );
  assert.strictEqual(done, 8 * MiB, "failed mid-way");
  assert.deepStrictEqual(await listDir(dir.path), []);

  // An existing DST, replaced only by a complete output, keeps its bytes,
  // as it does when the image is found corrupt before anything is written.
  await using bad = await openImage(await badImage());
  for (const failing of [image, bad]) {
    await Deno.writeFile(dst, new Uint8Array([1, 2, 3]));
    await assert.rejects(
      expandToPath(failing, dst),
      /injected|past the end of the file/,
    );
    assert.deepStrictEqual(await listDir(dir.path), ["out.raw"]);
    assert.deepStrictEqual(await Deno.readFile(dst), new Uint8Array([1, 2, 3]));
  }
});

/** A raw stream of `good` bytes of 5s that then fails. */
function failingStream(good: number): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream({
    pull(controller) {
      if (sent >= good) {
        controller.error(new Error("Cannot read SRC: injected failure"));
        return;
      }
      controller.enqueue(new Uint8Array(MiB).fill(5));
      sent += MiB;
    },
  });
}

Deno.test("expandToFile() aborts its sink, and commits nothing, when the read fails", async () => {
  const calls: string[] = [];
  const sink: ImageSink = {
    writeAt: (offset, data) => {
      calls.push(`write ${offset / MiB} MiB`);
      assert.strictEqual(data.length, MiB);
      return Promise.resolve();
    },
    commit: (size) => (calls.push(`commit ${size}`), Promise.resolve()),
    abort: () => (calls.push("abort"), Promise.resolve()),
  };
  const reading = { chunkSize: MiB, maxInFlight: 1 };
  await using image = await openImage(failingSource(), { format: "raw" });
  await assert.rejects(expandToFile(image, sink, reading), /injected/);
  assert.deepStrictEqual(calls, [
    ...[0, 1, 2, 3, 4, 5, 6, 7].map((n) => `write ${n} MiB`),
    "abort",
  ]);

  await using dir = await tempDir();
  const output = await OutputFile.create(join(dir.path, "out.raw"));
  await assert.rejects(expandToFile(image, output, reading), /injected/);
  assert.deepStrictEqual(await listDir(dir.path), [], "no temporary file");
  await assert.rejects(
    expandToFile(failingStream(3 * MiB), sink),
    /injected failure/,
  );
  assert.strictEqual(calls.at(-1), "abort", "a stream source too");
});

Deno.test("expandToPath() -n: a target smaller than the input is refused before anything is written", async () => {
  await using dir = await tempDir();
  const target = join(dir.path, "small.raw");
  const old = new Uint8Array(MiB).fill(9);
  await Deno.writeFile(target, old);
  await using image = await openImage(new Uint8Array(2 * MiB).fill(1));
  await assert.rejects(
    expandToPath(image, target, { inPlace: true }),
    /^IoError: Cannot write into .*small\.raw: it has 1048576 bytes, fewer than the input's 2097152 \(it is not grown\)$/,
  );
  assert.ok((await Deno.readFile(target)).every((b) => b === 9), "untouched");
  // A stream of unknown length is refused when it overruns the target; what
  // came before is written by then.
  await assert.rejects(
    expandToPath(failingStream(4 * MiB), target, { inPlace: true }),
    /fewer than the input's 2097152/,
  );
  await Deno.writeFile(target, old);
  await assert.rejects(
    expandToPath(failingStream(4 * MiB), target, {
      inPlace: true,
      sourceLength: 4 * MiB,
    }),
    /fewer than the input's 4194304/,
  );
  assert.ok((await Deno.readFile(target)).every((b) => b === 9), "untouched");
});

Deno.test("cli convert: a corrupt qcow2 SRC leaves no DST and no temporary file, and an old DST as it was", async () => {
  await using dir = await tempDir();
  const src = join(dir.path, "bad.qcow2");
  await Deno.writeFile(src, await badImage());
  for (const [dst, old] of [["out.raw", false], ["old.raw", true]] as const) {
    const path = join(dir.path, dst);
    if (old) await Deno.writeFile(path, new Uint8Array([4, 5]));
    const r = await new Deno.Command("deno", {
      args: [
        "run",
        "-A",
        CLI,
        "convert",
        "-q",
        src,
        path,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(r.stderr);
    assert.strictEqual(r.code, 1, stderr);
    assert.match(stderr, new RegExp(`^qcow2pipe: ${PAST_END.source}.*\n$`));
    assert.strictEqual(stderr.split("\n").length, 2, "one line");
  }
  assert.deepStrictEqual(await listDir(dir.path), ["bad.qcow2", "old.raw"]);
  assert.deepStrictEqual(
    await Deno.readFile(join(dir.path, "old.raw")),
    new Uint8Array([4, 5]),
  );
});
