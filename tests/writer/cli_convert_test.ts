// The CLI's forward path: `deno run -A cli.ts convert ... SRC DST.qcow2`.
// Output format from the extension and -O, options reaching the image,
// SRC "-" (stdin), DST replaced (or kept with --no-clobber), and errors: one line on stderr, exit
// code 1, no DST and no temporary `.partial` file left behind.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuTest, runStatus, tempDir } from "../_qemu.ts";
import {
  exists,
  listDir,
  MiB,
  mixedBytes,
  qemuInfo,
  verifyImage,
} from "./_helpers.ts";
import { assertOneLineError, partialFiles, runCli } from "./_cli.ts";
import { QCOW2_MAGIC } from "../../lib/format/constants.ts";

const INPUT = mixedBytes(3 * MiB + 1234, 42, 64 * 1024);
/** INPUT as a raw disk: whole sectors, as qemu-img convert -O raw writes it. */
const INPUT_DISK = new Uint8Array(Math.ceil(INPUT.length / 512) * 512);
INPUT_DISK.set(INPUT);

function isQcow2(bytes: Uint8Array): boolean {
  return bytes.length >= 4 &&
    new DataView(bytes.buffer, bytes.byteOffset).getUint32(0) === QCOW2_MAGIC;
}

async function withSource(
  fn: (dir: string, src: string) => Promise<void>,
): Promise<void> {
  await using dir = await tempDir();
  const src = join(dir.path, "src.raw");
  await Deno.writeFile(src, INPUT);
  await fn(dir.path, src);
}

qemuTest("cli convert: --compress zstd SRC DST.qcow2", async () => {
  await withSource(async (dir, src) => {
    const dst = join(dir, "dst.qcow2");
    const r = await runCli([
      "convert",
      "--verbose",
      "--compress",
      "zstd",
      src,
      dst,
    ]);
    assert.strictEqual(r.code, 0, r.stderr);
    // No progress bar when stderr is not a terminal: the summary only.
    assert.match(r.stderr, /^qcow2pipe: wrote \S+dst\.qcow2: [^\n]*\n$/);
    assert.strictEqual(r.stdout.length, 0);
    const { check } = await verifyImage(dir, dst, INPUT, {
      compression: "zstd",
      clusterSize: 65536,
      refcountBits: 16,
    });
    assert.ok((check["compressed-clusters"] ?? 0) > 0);
    assert.deepStrictEqual(await listDir(dir), [
      "dst.qcow2",
      "source.raw",
      "src.raw",
    ]);
  });
});

qemuTest(
  "cli convert: --level, --cluster-size, --refcount-bits and --workers reach the image",
  async () => {
    await withSource(async (dir, src) => {
      for (
        const [args, compression, cs, bits] of [
          [
            [
              "--compress",
              "zlib",
              "--level",
              "9",
              "--cluster-size",
              "4k",
              "--refcount-bits",
              "1",
              "--workers",
              "1",
            ],
            "zlib",
            4096,
            1,
          ],
          [
            [
              "--compress=zstd",
              "--level=19",
              "--cluster-size=2M",
              "--refcount-bits=64",
              "--workers=0",
            ],
            "zstd",
            2 * MiB,
            64,
          ],
          [
            ["--cluster-size", "512", "--refcount-bits", "2", "--workers", "2"],
            "none",
            512,
            2,
          ],
          [
            [
              "--compress",
              "zlib",
              "--level",
              "1",
              "--cluster-size",
              "65536",
              "--refcount-bits",
              "8",
              "-q",
            ],
            "zlib",
            65536,
            8,
          ],
        ] as const
      ) {
        const dst = join(dir, `dst-${cs}.qcow2`);
        const r = await runCli(["convert", ...args, src, dst]);
        assert.strictEqual(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
        const { check } = await verifyImage(dir, dst, INPUT, {
          compression,
          clusterSize: cs,
          refcountBits: bits,
        });
        if (compression === "none") {
          assert.strictEqual(check["compressed-clusters"] ?? 0, 0);
        } else assert.ok((check["compressed-clusters"] ?? 0) > 0);
        await Deno.remove(dst);
      }
      assert.deepStrictEqual(await partialFiles(dir), []);
    });
  },
);

qemuTest(
  "cli convert: the output format comes from -O, -c or DST's extension",
  async () => {
    await withSource(async (dir, src) => {
      const cases: [string[], string, "qcow2" | "raw"][] = [
        [[], "a.qcow2", "qcow2"],
        [[], "b.img", "raw"],
        [[], "c.raw", "raw"],
        [["-O", "qcow2"], "d.bin", "qcow2"],
        [["-O", "raw"], "e.qcow2", "raw"],
        [["--output-format", "qcow2"], "f", "qcow2"],
        [["--compress", "zlib"], "g.img", "qcow2"], // -c implies qcow2
      ];
      for (const [flags, name, format] of cases) {
        const dst = join(dir, name);
        const r = await runCli(["convert", ...flags, src, dst]);
        assert.strictEqual(r.code, 0, `${name}: ${r.stderr}`);
        const bytes = await Deno.readFile(dst);
        assert.strictEqual(isQcow2(bytes), format === "qcow2", name);
        if (format === "raw") {
          assert.deepStrictEqual(
            bytes,
            INPUT_DISK,
            `${name} is the raw input`,
          );
        } else {
          await qemuCheckClean(dst);
          const info = await qemuInfo(dst);
          assert.strictEqual(
            info["virtual-size"],
            Math.ceil(INPUT.length / 512) * 512,
          );
        }
      }
      // no format to be found: raw, as qemu-img writes without -O
      const r = await runCli(["convert", src, join(dir, "h.unknown")]);
      assert.strictEqual(r.code, 0, r.stderr);
      const same = await runStatus("qemu-img", [
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src,
        join(dir, "h.unknown"),
      ]);
      assert.strictEqual(same.code, 0, same.stdout);
      // compression needs qcow2
      const r2 = await runCli([
        "convert",
        "-O",
        "raw",
        "--compress",
        "zstd",
        src,
        join(dir, "i.img"),
      ]);
      assertOneLineError(r2, /apply to qcow2 output only/);
      assert.strictEqual(await exists(join(dir, "i.img")), false);
      assert.deepStrictEqual(await partialFiles(dir), []);
    });
  },
);

qemuTest(
  "cli convert: an existing DST is replaced as qemu-img replaces it; --no-clobber keeps it untouched",
  async () => {
    await withSource(async (dir, src) => {
      const dst = join(dir, "dst.qcow2");
      const old = new TextEncoder().encode("precious bytes, not an image\n");
      await Deno.writeFile(dst, old);
      const before = await Deno.stat(dst);
      const r = await runCli([
        "convert",
        "--no-clobber",
        "--compress",
        "zstd",
        src,
        dst,
      ]);
      assertOneLineError(r, /dst\.qcow2: the file exists and is kept/);
      assert.deepStrictEqual(await Deno.readFile(dst), old);
      assert.strictEqual(
        (await Deno.stat(dst)).mtime?.getTime(),
        before.mtime?.getTime(),
      );
      assert.deepStrictEqual(await partialFiles(dir), []);
      // raw output too
      const rawDst = join(dir, "dst.img");
      await Deno.writeFile(rawDst, old);
      assertOneLineError(
        await runCli(["convert", "--no-clobber", src, rawDst]),
        /exists and is kept/,
      );
      assert.deepStrictEqual(await Deno.readFile(rawDst), old);
      // without it (and with --force, accepted) it is replaced
      const ok = await runCli(["convert", "--compress", "zstd", src, dst]);
      assert.strictEqual(ok.code, 0, ok.stderr);
      await verifyImage(dir, dst, INPUT, {
        compression: "zstd",
        clusterSize: 65536,
        refcountBits: 16,
      });
      const ok2 = await runCli(["convert", "--force", src, rawDst]);
      assert.strictEqual(ok2.code, 0, ok2.stderr);
      assert.deepStrictEqual(await Deno.readFile(rawDst), INPUT_DISK);
      assert.deepStrictEqual(await partialFiles(dir), []);
    });
  },
);

qemuTest("cli convert: SRC - reads raw bytes from standard input", async () => {
  await using dir = await tempDir();
  for (
    const [flags, compression] of [[["--compress", "zlib"], "zlib"], [
      ["-O", "qcow2"],
      "none",
    ]] as const
  ) {
    const dst = join(dir.path, `stdin-${compression}.qcow2`);
    const r = await runCli(["convert", ...flags, "-", dst], { stdin: INPUT });
    assert.strictEqual(r.code, 0, r.stderr);
    await verifyImage(dir.path, dst, INPUT, {
      compression,
      clusterSize: 65536,
      refcountBits: 16,
    });
  }
  // an empty stdin is refused (a pipeline whose first command failed),
  // not taken for an empty disk
  const empty = join(dir.path, "empty.qcow2");
  const r = await runCli(["convert", "--compress", "zstd", "-", empty], {
    stdin: new Uint8Array(0),
  });
  assertOneLineError(r, /Cannot convert standard input: it is empty/);
  assert.strictEqual(await exists(empty), false);
  // three bytes that are not a qcow2 magic
  const tiny = join(dir.path, "tiny.qcow2");
  const r2 = await runCli(["convert", "--compress", "zlib", "-", tiny], {
    stdin: new Uint8Array([0x51, 0x46, 0x49]),
  });
  assert.strictEqual(r2.code, 0, r2.stderr);
  await verifyImage(dir.path, tiny, new Uint8Array([0x51, 0x46, 0x49]), {
    compression: "zlib",
    clusterSize: 65536,
    refcountBits: 16,
  });
  assert.deepStrictEqual(await partialFiles(dir.path), []);
});

Deno.test("cli convert: errors leave no DST and no temporary file", async () => {
  await withSource(async (dir, src) => {
    const dst = join(dir, "dst.qcow2");
    const cases: [string[], RegExp][] = [
      [
        ["convert", "--compress", "zstd", join(dir, "missing.raw"), dst],
        /missing\.raw/,
      ],
      [["convert", "--cluster-size", "3000", src, dst], /cluster size 3000/],
      [["convert", "--cluster-size", "4M", src, dst], /cluster size 4194304/],
      [["convert", "--refcount-bits", "3", src, dst], /refcount width 3/],
      [
        ["convert", "--compress", "zlib", "--level", "0", src, dst],
        /zlib level 0 is out of range/,
      ],
      [
        ["convert", "--compress", "zstd", "--level", "23", src, dst],
        /zstd level 23 is out of range/,
      ],
      [
        ["convert", "--level", "5", "-O", "qcow2", src, dst],
        /level needs compression/,
      ],
      [
        ["convert", "--compress", "lz4", src, dst],
        /--compress takes zlib or zstd/,
      ],
      [["convert", "-O", "vmdk", src, dst], /output format "vmdk"/],
      [["convert", "--workers", "two", src, dst], /--workers/],
      [["convert", "--cluster-size", "64q", src, dst], /--cluster-size/],
      [["convert", "--bogus", src, dst], /bogus/],
      [["convert", src], /expected SRC and DST/],
      [["convert", "--sparsify", src, src, dst], /take one SRC/],
      [["convert", src, src], /src\.raw: it is the input/],
      [
        ["convert", "--compress", "zstd", "-O", "qcow2", src, src],
        /src\.raw: it is the input/,
      ],
    ];
    for (const [args, pattern] of cases) {
      const r = await runCli(args);
      assertOneLineError(r, pattern);
      assert.strictEqual(await exists(dst), false, `${args.join(" ")}: no DST`);
      assert.deepStrictEqual(
        await listDir(dir),
        ["src.raw"],
        `${args.join(" ")}: nothing left behind`,
      );
    }
    assert.deepStrictEqual(await Deno.readFile(src), INPUT, "SRC untouched");
  });
});

Deno.test("cli convert: DST in a missing directory, or a directory", async () => {
  await withSource(async (dir, src) => {
    const r = await runCli([
      "convert",
      "--compress",
      "zstd",
      src,
      join(dir, "no", "dst.qcow2"),
    ]);
    assertOneLineError(
      r,
      /Cannot write \S*dst\.qcow2: directory \S*no does not exist/,
    );
    const sub = join(dir, "sub.qcow2");
    await Deno.mkdir(sub);
    const r2 = await runCli([
      "convert",
      "--force",
      "--compress",
      "zstd",
      src,
      sub,
    ]);
    assertOneLineError(r2, /directory/);
    assert.deepStrictEqual(await listDir(dir), ["src.raw", "sub.qcow2"]);
    assert.deepStrictEqual(await listDir(sub), []);
  });
});

qemuTest(
  "convert --sync flushes DST before renaming it and writes the same image",
  async () => {
    await using tmp = await tempDir();
    const src = join(tmp.path, "in.raw");
    await Deno.writeFile(src, new Uint8Array(3 * 65536 + 512).fill(0x3c));
    const plain = join(tmp.path, "plain.qcow2");
    const synced = join(tmp.path, "synced.qcow2");
    assert.strictEqual(
      (await runCli(["convert", "--compress", "zstd", src, plain])).code,
      0,
    );
    const r = await runCli([
      "convert",
      "--sync",
      "--compress",
      "zstd",
      src,
      synced,
    ]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.deepStrictEqual(
      await Deno.readFile(synced),
      await Deno.readFile(plain),
    );
    assert.deepStrictEqual(await partialFiles(tmp.path), []);
  },
);
