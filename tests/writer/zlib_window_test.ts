// Deflate windows. QEMU initializes its inflater with a 4 KiB window
// (windowBits -12) but inflates a whole cluster in one call into the
// cluster buffer, so back-references up to 32 KiB into the bytes already
// produced are valid for it. Our default zlib streams use a 32 KiB window
// (node:zlib, and fflate always): clusters built from 8 KiB blocks repeated
// at 8 KiB distances (only matchable beyond 4 KiB) must compress and read
// back identically in qemu-img. `zlibWindow: 4096` writes streams that an
// inflater holding only 4 KiB of history decodes.

import assert from "node:assert";
import { join } from "node:path";
import zlib from "node:zlib";
import { qemuTest, tempDir } from "../_qemu.ts";
import { randomBytes, textBytes, verifyImage } from "./_helpers.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { type CodecBackend, createCodec } from "../../lib/codec/codecs.ts";
import { runCli } from "./_cli.ts";

const CS = 65536;

/** Four clusters that only a window wider than 4 KiB can compress. */
function farMatches(): Uint8Array {
  const input = new Uint8Array(4 * CS);
  for (let k = 0; k < 4; k++) {
    const block = randomBytes(8192, k + 1);
    for (let j = 0; j < CS / 8192; j++) input.set(block, k * CS + j * 8192);
  }
  return input;
}

/**
 * Inflates with 4 KiB of history and 1 KiB of output per call, as a reader
 * that does not hold the whole cluster would: far back-references fail.
 */
function inflateWith4KiB(payload: Uint8Array): Uint8Array {
  return new Uint8Array(zlib.inflateRawSync(payload, {
    windowBits: 12,
    chunkSize: 1024,
    finishFlush: zlib.constants.Z_SYNC_FLUSH,
  }));
}

for (const backend of ["node", "fflate"] as CodecBackend[]) {
  qemuTest(
    `zlib (${backend}, default 32 KiB window): back-references beyond 4 KiB read identically in QEMU`,
    async () => {
      await using dir = await tempDir();
      const input = farMatches();
      const bytes = await convertToBytes(input, {
        compression: "zlib",
        backend,
        workers: 0,
      });
      const image = join(dir.path, "far.qcow2");
      await Deno.writeFile(image, bytes);
      const { check } = await verifyImage(dir.path, image, input, {
        compression: "zlib",
        clusterSize: CS,
        refcountBits: 16,
      });
      // Only far matches make these clusters compressible: all four are
      // stored compressed, so the test exercises what it claims.
      assert.strictEqual(
        check["compressed-clusters"],
        4,
        JSON.stringify(check),
      );
      // And those streams really reach past 4 KiB.
      const codec = await createCodec({ type: "zlib", backend });
      assert.strictEqual(codec.zlibWindow, 32768);
      assert.throws(
        () => inflateWith4KiB(codec.compress(input.subarray(0, CS))!),
        /too far back/,
      );
    },
  );
}

Deno.test("zlibWindow 4096: every stream inflates with 4 KiB of history", async () => {
  const codec = await createCodec({ type: "zlib", zlibWindow: 4096 });
  assert.strictEqual(codec.level, 9);
  const text = textBytes(8 * CS, 5);
  for (let at = 0; at < text.length; at += CS) {
    const cluster = text.subarray(at, at + CS);
    const payload = codec.compress(cluster)!;
    assert.ok(payload.length < CS / 2);
    assert.deepStrictEqual(inflateWith4KiB(payload), cluster);
  }
  // Far matches are out of its reach: the clusters do not compress.
  assert.strictEqual(codec.compress(farMatches().subarray(0, CS)), undefined);
  await assert.rejects(
    createCodec({ type: "zlib", zlibWindow: 4096, backend: "fflate" }),
    /needs node:zlib/,
  );
  await assert.rejects(
    createCodec({ type: "zlib", zlibWindow: 2048 as 4096 }),
    /zlib window 2048 is not 4096 or 32768/,
  );
});

qemuTest(
  "convert --zlib-window 4k writes QEMU's window; other values are refused",
  async () => {
    await using dir = await tempDir();
    const src = join(dir.path, "far.raw");
    await Deno.writeFile(src, farMatches());
    const out = join(dir.path, "far.qcow2");
    const r = await runCli([
      "convert",
      "-q",
      "--compress",
      "zlib",
      "--zlib-window",
      "4k",
      src,
      out,
    ]);
    assert.strictEqual(r.code, 0, r.stderr);
    const { check } = await verifyImage(dir.path, out, farMatches(), {
      compression: "zlib",
      clusterSize: CS,
      refcountBits: 16,
    });
    assert.strictEqual(
      check["compressed-clusters"] ?? 0,
      0,
      "far matches need 32 KiB",
    );
    const bad = await runCli([
      "convert",
      "--compress",
      "zlib",
      "--zlib-window",
      "8k",
      src,
      out + "2",
    ]);
    assert.strictEqual(bad.code, 1);
    assert.match(bad.stderr, /--zlib-window: "8k" is not 4k or 32k/);
    const zstd = await runCli([
      "convert",
      "--compress",
      "zstd",
      "--zlib-window",
      "4k",
      src,
      out + "3",
    ]);
    assert.match(zstd.stderr, /--zlib-window needs zlib compression/);
  },
);

/** Whether a command runs here. */
function has(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

const IN_CI = (Deno.env.get("CI") ?? "") !== "" &&
  Deno.env.get("CI") !== "false";
const HAVE_READERS = has("/usr/bin/python3", ["-c", "import pyqcow"]) &&
  has("7zz", ["i"]);
if (!HAVE_READERS && !IN_CI) {
  console.error(
    "libqcow (python3-libqcow) or 7-Zip (7zip) not found: skipping the zlib window test against them",
  );
}

Deno.test({
  name:
    "zlib (default 32 KiB window): libqcow and 7-Zip read far back-references identically",
  ignore: !HAVE_READERS && !IN_CI,
  async fn() {
    assert.ok(HAVE_READERS, "python3-libqcow and 7zip are required under CI");
    const dir = await Deno.makeTempDir();
    try {
      const input = new Uint8Array(8 * CS);
      input.set(farMatches());
      input.set(textBytes(4 * CS, 9), 4 * CS);
      const image = join(dir, "far.qcow2");
      await Deno.writeFile(
        image,
        await convertToBytes(input, { compression: "zlib", workers: 0 }),
      );
      const py = await new Deno.Command("/usr/bin/python3", {
        args: [
          "-c",
          "import pyqcow,sys\nf=pyqcow.file()\nf.open(sys.argv[1])\nsys.stdout.buffer.write(f.read_buffer(f.get_media_size()))",
          image,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(py.success, new TextDecoder().decode(py.stderr));
      assert.deepStrictEqual(new Uint8Array(py.stdout), input);
      const seven = await new Deno.Command("7zz", {
        args: ["x", `-o${join(dir, "x")}`, image],
        stdout: "null",
        stderr: "piped",
      }).output();
      assert.ok(seven.success, new TextDecoder().decode(seven.stderr));
      const [out] = await Array.fromAsync(Deno.readDir(join(dir, "x")));
      assert.deepStrictEqual(
        await Deno.readFile(join(dir, "x", out.name)),
        input,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
