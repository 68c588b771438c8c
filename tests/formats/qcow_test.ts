// qcow version 1 images made by qemu-img (plain, compressed, overlays of raw
// and qcow backing files) held to qemu-img and 7-Zip; backing files through
// the reference gate; encrypted images refused; hostile input.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import { mixedRaw, qemuIoAll } from "../reader/_helpers.ts";
import { assertOneLineError, runCli } from "../writer/_cli.ts";
import { openImage } from "../../lib/reader/open.ts";
import { Qcow2Error } from "../../lib/format/errors.ts";
import {
  holdToOracles,
  hostileLoop,
  type Mutation,
  nastyU32,
  nastyU64,
  qemuConvert,
  setU32,
  setU64,
} from "./_oracle.ts";

const MiB = 1024 * 1024;

/** A raw disk with text, noise, a fill pattern, zeros, and a hole. */
async function sourceDisk(
  dir: string,
  name: string,
  size: number,
  seed: number,
): Promise<string> {
  const path = join(dir, name);
  const bytes = mixedRaw(size, 96 * 1024, seed);
  bytes.fill(0, MiB, MiB + 200_000);
  await Deno.writeFile(path, bytes.subarray(0, size - 4096));
  await Deno.truncate(path, size);
  return path;
}

for (const [what, flags] of [["plain", []], ["compressed", ["-c"]]] as const) {
  qemuTest(
    `qcow ${what}: convert, info, map and a qcow2 copy agree with qemu-img (and 7-Zip)`,
    async () => {
      await using dir = await tempDir();
      // Not a whole number of 4 KiB clusters: the last one is partial.
      const raw = await sourceDisk(dir.path, "disk.raw", 5 * MiB + 1536, 5);
      const qcow = join(dir.path, `${what}.qcow`);
      await qemuConvert("-O", "qcow", ...flags, raw, qcow);
      if (what === "compressed") {
        const map = JSON.parse(
          await qemuImg("map", "--output=json", qcow),
        ) as { data: boolean; offset?: number }[];
        assert.ok(
          map.some((e) => e.data && e.offset === undefined),
          "qemu-img stored compressed clusters",
        );
      }
      // 7-Zip reads qcow version 1 but not its compressed clusters
      // ("Unsupported method").
      await holdToOracles(qcow, dir.path, {
        format: "qcow",
        sevenZip: what === "plain",
      });
    },
  );
}

for (const backingFormat of ["raw", "qcow"] as const) {
  qemuTest(
    `qcow overlay of a ${backingFormat} backing file (shorter than the overlay) agrees with qemu-img`,
    async () => {
      await using dir = await tempDir();
      const raw = await sourceDisk(dir.path, "base.raw", 3 * MiB, 9);
      const base = backingFormat === "raw" ? "base.raw" : (await qemuConvert(
        "-O",
        "qcow",
        "-c",
        raw,
        join(dir.path, "base.qcow"),
      ),
        "base.qcow");
      const top = join(dir.path, "top.qcow");
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow",
        "-b",
        base,
        "-F",
        backingFormat,
        top,
        `${4 * MiB}`,
      );
      await qemuIoAll(top, [
        "write -q -P 0x11 1000448 70000",
        "write -q -P 0x22 2097152 4096",
        "write -q -z 2200000 8192",
        "write -q -P 0x33 3600000 300000",
      ], { format: "qcow" });
      await holdToOracles(top, dir.path, { format: "qcow" });
    },
  );
}

qemuTest(
  "qcow backing files go through the reference gate as qcow2's do",
  async () => {
    await using dir = await tempDir();
    const raw = await sourceDisk(dir.path, "base.raw", MiB, 3);
    await Deno.mkdir(join(dir.path, "sub"));
    const top = join(dir.path, "sub", "top.qcow");
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow",
      "-b",
      raw,
      "-F",
      "raw",
      top,
      `${MiB}`,
    );
    // Probed: a backing file outside the image's directory is not followed.
    const probed = await runCli([
      "convert",
      "-O",
      "raw",
      top,
      join(dir.path, "x.raw"),
    ]);
    assertOneLineError(probed, /base\.raw/);
    assert.match(probed.stderr, /-f/);
    await assert.rejects(
      () => openImage(top),
      (err: unknown) =>
        err instanceof Qcow2Error && err.code === "UNTRUSTED_REFERENCE",
    );
    // Named with -f qcow: QEMU's rules, the absolute name is followed.
    const named = await runCli([
      "convert",
      "-f",
      "qcow",
      "-O",
      "raw",
      top,
      join(dir.path, "y.raw"),
    ]);
    assert.strictEqual(named.code, 0, named.stderr);
    assert.deepStrictEqual(
      await Deno.readFile(join(dir.path, "y.raw")),
      await Deno.readFile(raw),
    );
  },
);

qemuTest("qcow: an encrypted image is refused in one line", async () => {
  await using dir = await tempDir();
  const enc = join(dir.path, "enc.qcow");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow",
    "--object",
    "secret,id=sec0,data=123456",
    "-o",
    "encrypt.format=aes,encrypt.key-secret=sec0",
    enc,
    "1M",
  );
  for (const command of ["convert", "info", "map"]) {
    const args = command === "convert"
      ? [command, "-O", "raw", enc, join(dir.path, "x.raw")]
      : [command, enc];
    assertOneLineError(
      await runCli(args),
      /Cannot open qcow image \S+\/enc\.qcow: it is encrypted \(crypt_method 1, AES-CBC\), which is not supported/,
    );
  }
});

qemuTest("qcow: refusals are one line naming the field", async () => {
  await using dir = await tempDir();
  const raw = await sourceDisk(dir.path, "disk.raw", MiB, 4);
  const qcow = join(dir.path, "a.qcow");
  await qemuConvert("-O", "qcow", "-c", raw, qcow);
  const good = await Deno.readFile(qcow);
  const l1 = Number(new DataView(good.buffer).getBigUint64(40));
  const cases: [string, Uint8Array, RegExp, string][] = [
    [
      "cluster bits",
      (() => {
        const b = good.slice();
        b[32] = 17;
        return b;
      })(),
      /cluster_bits 17 is out of range \[9, 16\]/,
      "OUT_OF_RANGE",
    ],
    [
      "l2 bits",
      (() => {
        const b = good.slice();
        b[33] = 5;
        return b;
      })(),
      /l2_bits 5 is out of range \[6, 13\]/,
      "OUT_OF_RANGE",
    ],
    [
      "size",
      setU64(good, 24, 1n, false),
      /size 1 is out of range/,
      "OUT_OF_RANGE",
    ],
    [
      "crypt",
      setU32(good, 36, 2, false),
      /crypt_method 2 is not 0/,
      "UNSUPPORTED_FEATURE",
    ],
    [
      "L1 past the end",
      setU64(good, 40, BigInt(good.length), false),
      /L1 table at 0x[0-9a-f]+ with 1 entries ends past the end of the file/,
      "TRUNCATED",
    ],
    [
      "L2 past the end",
      setU64(good, l1, BigInt(good.length), false),
      /L2 table at 0x[0-9a-f]+ \(L1 entry 0\) ends past the end of the file/,
      "TRUNCATED",
    ],
    [
      "backing name",
      setU32(setU64(good, 8, 48n, false), 16, 5000, false),
      /backing_file_size 5000 is out of range \[0, 1023\]/,
      "OUT_OF_RANGE",
    ],
  ];
  for (const [what, bytes, message, code] of cases) {
    const path = join(dir.path, `bad-${what.replaceAll(" ", "-")}.qcow`);
    await Deno.writeFile(path, bytes);
    await assert.rejects(
      async () => {
        await using image = await openImage(path, { format: "qcow" });
        await image.readAt(0, image.virtualSize);
      },
      (err: unknown) => {
        assert.ok(err instanceof Qcow2Error, `${what}: ${err}`);
        assert.strictEqual(err.code, code, what);
        assert.match(err.message, message, what);
        return true;
      },
    );
    assertOneLineError(
      await runCli(["convert", "-O", "raw", path, join(dir.path, "x.raw")]),
      message,
    );
  }
});

qemuTest(
  "qcow: 200 hostile mutations each end in one line, in bounded time and memory",
  async () => {
    await using dir = await tempDir();
    const raw = await sourceDisk(dir.path, "disk.raw", 2 * MiB + 512, 8);
    const qcow = join(dir.path, "base.qcow");
    await qemuConvert("-O", "qcow", "-c", raw, qcow);
    const base = await Deno.readFile(qcow);
    const view = new DataView(base.buffer);
    const l1 = Number(view.getBigUint64(40));
    const l2 = Number(view.getBigUint64(l1));
    const mutations: Mutation[] = [
      (b, r) => b.subarray(0, Math.floor(r() * b.length)),
      (b, r) => setU64(b, [8, 24, 40][Math.floor(r() * 3)], nastyU64(r), false),
      (b, r) => setU32(b, [4, 16, 36][Math.floor(r() * 3)], nastyU32(r), false),
      (b, r) => {
        const out = b.slice();
        out[32 + Math.floor(r() * 2)] = Math.floor(r() * 24);
        return out;
      },
      (b, r) => setU64(b, l1 + 8 * Math.floor(r() * 2), nastyU64(r), false),
      // An L2 entry: stored, compressed with a nasty size, or garbage.
      (b, r) => {
        const at = l2 + 8 * Math.floor(r() * 512);
        const pick = r();
        const value = pick < 0.3
          ? nastyU64(r)
          : pick < 0.6
          ? (1n << 63n) | (BigInt(nastyU32(r) & 0xfff) << 51n) |
            BigInt(Math.floor(r() * b.length * 2))
          : BigInt(Math.floor(r() * b.length * 2));
        return setU64(b, at, value, false);
      },
      (b, r) => {
        const out = b.slice();
        const at = Math.floor(r() * out.length);
        out[at] ^= 1 << Math.floor(r() * 8);
        return out;
      },
    ];
    const summary = await hostileLoop(base, "qcow", mutations, 200, 24);
    assert.ok(
      summary.refused > 0 && summary.opened > 0,
      JSON.stringify(summary),
    );
    for (const code of ["TRUNCATED", "DECOMPRESS"]) {
      assert.ok(summary.codes.has(code), `${code} in ${[...summary.codes]}`);
    }
  },
);
