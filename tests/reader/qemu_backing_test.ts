// Backing chains and external data files made by QEMU: qcow2 over qcow2
// over raw, long chains mixing layouts, backing files shorter and longer
// than the overlay, relative backing names, the backing format extension
// present and absent, and data files with and without data_file_raw.

import assert from "node:assert";
import { join, relative } from "node:path";
import { qemuTest, readAt, tempDir } from "../_qemu.ts";
import {
  bytesOf,
  headerOf,
  mixedBytes,
  patchFile,
  patternFile,
  qemuImg,
  qemuIoAll,
  runIn,
  scribble,
  u32,
  verifyImage,
} from "./_helpers.ts";
import { backingFormat, dataFileName } from "../../lib/format/header.ts";
import { EXTENSION } from "../../lib/format/constants.ts";
import { openImage } from "../../lib/reader/open.ts";

const MiB = 1024 * 1024;

/** `qemu-img create -f qcow2 -o OPTS [-b BACKING -F FMT] PATH SIZE`. */
async function create(
  path: string,
  size: number | undefined,
  opts: string,
  backing?: [string, string],
): Promise<void> {
  const args = ["create", "-q", "-f", "qcow2"];
  if (opts) args.push("-o", opts);
  if (backing) args.push("-b", backing[0], "-F", backing[1]);
  args.push(path);
  if (size !== undefined) args.push(String(size));
  await qemuImg(...args);
}

qemuTest("qemu backing: qcow2 over qcow2 over raw", async () => {
  await using dir = await tempDir();
  const size = 3 * MiB;
  const base = join(dir.path, "base.raw");
  const mid = join(dir.path, "mid.qcow2");
  const top = join(dir.path, "top.qcow2");
  await Deno.writeFile(base, mixedBytes(size, 1));
  await create(mid, undefined, "cluster_size=65536", [base, "raw"]);
  const pat = await patternFile(dir.path, 2);
  await qemuIoAll(mid, scribble(size, 65536, pat, { compress: true }));
  await create(top, undefined, "cluster_size=4096", [mid, "qcow2"]);
  const pat2 = await patternFile(dir.path, 3);
  await qemuIoAll(top, scribble(size, 4096, pat2, { compress: true }));

  const v = await verifyImage(top, dir.path);
  const depths = new Set(v.extents.map((e) => e.depth));
  for (const d of [0, 1, 2]) assert.ok(depths.has(d), `depth ${d} answers`);
  await verifyImage(mid, dir.path, { seed: 5 });
});

qemuTest(
  "qemu backing: five-level chain mixing versions, cluster sizes and extended L2",
  async () => {
    await using dir = await tempDir();
    const size = 2 * MiB;
    const layers: Array<[string, number]> = [
      ["compat=1.1,cluster_size=65536", 65536],
      ["compat=0.10,cluster_size=4096", 4096],
      ["extended_l2=on,cluster_size=32768", 32768],
      ["compat=1.1,cluster_size=1024,compression_type=zstd", 1024],
      ["compat=1.1,cluster_size=512,refcount_bits=1", 512],
    ];
    let below: [string, string] = [join(dir.path, "l0.raw"), "raw"];
    await Deno.writeFile(below[0], mixedBytes(size, 10));
    for (let i = 0; i < layers.length; i++) {
      const [opts, cs] = layers[i];
      const path = join(dir.path, `l${i + 1}.qcow2`);
      await create(path, undefined, opts, below);
      const pat = await patternFile(dir.path, 20 + i);
      // Each layer writes a few disjoint-ish ranges and zeroes/discards some.
      const span = size / 8;
      const off = (i * span * 1.5) % (size - span);
      await qemuIoAll(path, [
        ...(i === 3 ? [`write -q -c -s ${pat} ${7 * span} ${cs * 8}`] : []),
        `write -q -s ${pat} ${off + i * 333} ${span / 2 + i}`,
        `write -q -z ${off + span / 2} ${span / 4}`,
        `write -q -z -u ${(i * 77777) % (size - 4096)} 4096`,
        `discard -q ${Math.floor(off / cs) * cs} ${cs}`,
        `write -q -P 0x${(i + 1).toString(16)}${i} ${
          size - 5000 + i * 100
        } 700`,
      ]);
      below = [path, "qcow2"];
    }
    const v = await verifyImage(below[0], dir.path);
    assert.ok(
      new Set(v.extents.map((e) => e.depth)).size >= 5,
      "most layers of the chain answer somewhere",
    );
    assert.ok(v.extents.some((e) => e.depth === 5), "the raw base shows");
    // Every intermediate image expands correctly too.
    for (let i = 1; i < layers.length; i++) {
      await verifyImage(join(dir.path, `l${i}.qcow2`), dir.path, { seed: i });
    }
  },
);

qemuTest("qemu backing: backing files shorter than the overlay", async () => {
  await using dir = await tempDir();
  // A raw base whose size is not even a whole sector.
  const rawBase = join(dir.path, "short.raw");
  await Deno.writeFile(rawBase, mixedBytes(700_001, 4));
  const qBase = join(dir.path, "short.qcow2");
  await create(qBase, 1 * MiB + 512, "cluster_size=4096");
  const pat = await patternFile(dir.path, 5);
  await qemuIoAll(qBase, [
    `write -q -s ${pat} 0 ${1 * MiB + 512}`,
    `write -q -z 4096 8192`,
  ]);
  for (const [base, fmt] of [[rawBase, "raw"], [qBase, "qcow2"]]) {
    for (const cs of [512, 65536]) {
      const top = join(dir.path, `top-${fmt}-${cs}.qcow2`);
      await create(top, 3 * MiB, `cluster_size=${cs}`, [base, fmt]);
      // Writes straddling the end of the backing file copy-on-write a
      // cluster that is partly backing data, partly beyond it.
      await qemuIoAll(top, [
        `write -q -P 0x61 699000 3000`,
        `write -q -P 0x62 ${1 * MiB + 100} 1000`,
        `write -q -P 0x63 ${2 * MiB + 7} 10`,
        `write -q -z 650000 10000`,
      ]);
      const v = await verifyImage(top, dir.path, { seed: cs });
      assert.strictEqual(v.virtualSize, 3 * MiB);
      assert.ok(
        v.extents.some((e) => e.kind === "unallocated" && e.offset > 700_000),
        "beyond the backing file is unallocated",
      );
    }
  }
});

qemuTest("qemu backing: backing file longer than the overlay", async () => {
  await using dir = await tempDir();
  const base = join(dir.path, "long.qcow2");
  await create(base, 4 * MiB, "cluster_size=65536");
  const pat = await patternFile(dir.path, 6);
  await qemuIoAll(base, [`write -q -s ${pat} 0 ${4 * MiB}`]);
  const top = join(dir.path, "top.qcow2");
  await create(top, 1 * MiB + 4096, "cluster_size=4096", [base, "qcow2"]);
  await qemuIoAll(top, [`write -q -P 0x70 ${MiB} 4096`, `discard -q 0 4096`]);
  const v = await verifyImage(top, dir.path);
  assert.strictEqual(v.virtualSize, 1 * MiB + 4096);
});

qemuTest(
  "qemu backing: relative backing name, opened from another working directory",
  async () => {
    await using dir = await tempDir();
    const sub = join(dir.path, "a", "b");
    await Deno.mkdir(sub, { recursive: true });
    await Deno.mkdir(join(dir.path, "c"));
    const size = 1 * MiB;
    await Deno.writeFile(join(dir.path, "c", "base.raw"), mixedBytes(size, 8));
    // Created from inside the overlay's directory with relative names, so
    // the stored names are relative to the image that refers to them.
    await runIn(join(dir.path, "c"), "qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base.raw",
      "-F",
      "raw",
      "mid.qcow2",
    ]);
    await runIn(sub, "qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "../../c/mid.qcow2",
      "-F",
      "qcow2",
      "top.qcow2",
    ]);
    const top = join(sub, "top.qcow2");
    const mid = join(dir.path, "c", "mid.qcow2");
    await qemuIoAll(mid, [`write -q -P 0x11 4096 8192`]);
    await qemuIoAll(top, [`write -q -P 0x22 0 4096`, `write -q -z 8192 512`]);
    assert.strictEqual((await headerOf(top)).backingFile, "../../c/mid.qcow2");
    assert.strictEqual((await headerOf(mid)).backingFile, "base.raw");
    // Open through a path relative to this process's working directory
    // (which is not the image's directory).
    const rel = relative(Deno.cwd(), top);
    assert.ok(!rel.startsWith("/"));
    // The chain leaves the top image's directory: with the format probed
    // that is refused (tests/reader/untrusted_test.ts); given, QEMU's rules.
    await assert.rejects(openImage(rel), /pass -f qcow2 to follow it/);
    const v = await verifyImage(top, dir.path, {
      openPath: rel,
      open: { format: "qcow2" },
    });
    assert.ok(v.extents.some((e) => e.depth === 2), "raw base reached");
  },
);

qemuTest(
  "qemu backing: backing format extension present and absent",
  async () => {
    await using dir = await tempDir();
    const size = 2 * MiB;
    const rawBase = join(dir.path, "base.raw");
    await Deno.writeFile(rawBase, mixedBytes(size, 12));
    const qBase = join(dir.path, "base.qcow2");
    await create(qBase, size, "cluster_size=16384");
    const pat = await patternFile(dir.path, 13);
    await qemuIoAll(qBase, scribble(size, 16384, pat, { compress: true }));
    for (const compat of ["0.10", "1.1"]) {
      for (const [base, fmt] of [[rawBase, "raw"], [qBase, "qcow2"]]) {
        const top = join(dir.path, `top-${compat}-${fmt}.qcow2`);
        await create(top, undefined, `compat=${compat}`, [base, fmt]);
        await qemuIoAll(top, [
          `write -q -P 0x33 ${MiB - 100} 200`,
          `write -q -z 0 65536`,
        ]);
        const before = await headerOf(top);
        assert.strictEqual(backingFormat(before), fmt);
        await verifyImage(top, dir.path);

        // Drop the extension by renaming its type to one nobody knows (as
        // images from QEMU versions before backing formats look): both QEMU
        // and we must then probe the backing file's format.
        const start = before.headerLength;
        const head = await readAt(top, 0, 4096);
        const view = new DataView(head.buffer);
        let at = start;
        let found = -1;
        while (at + 8 <= head.length) {
          const type = view.getUint32(at);
          if (type === 0) break;
          if (type === EXTENSION.BACKING_FORMAT) found = at;
          at += 8 + Math.ceil(view.getUint32(at + 4) / 8) * 8;
        }
        assert.ok(found >= 0, "backing format extension found");
        await patchFile(top, found, u32(0x0badcafe));
        const after = await headerOf(top);
        assert.strictEqual(backingFormat(after), undefined);
        assert.strictEqual(after.backingFile, before.backingFile);
        await verifyImage(top, dir.path, { seed: 3 });
      }
    }
  },
);

qemuTest("qemu backing: rebase onto another backing file", async () => {
  await using dir = await tempDir();
  const size = 1 * MiB;
  const a = join(dir.path, "a.raw");
  const b = join(dir.path, "b.qcow2");
  const top = join(dir.path, "top.qcow2");
  await Deno.writeFile(a, mixedBytes(size, 30));
  await create(b, size, "cluster_size=4096");
  await qemuIoAll(b, [`write -q -P 0x44 0 ${size / 2}`]);
  await create(top, undefined, "cluster_size=8192", [b, "qcow2"]);
  await qemuIoAll(top, [`write -q -P 0x55 ${size / 4} 5000`]);
  const before = await verifyImage(top, dir.path);
  // Safe rebase keeps the guest view: the top copies what differs.
  await qemuImg("rebase", "-q", "-b", a, "-F", "raw", top);
  const after = await verifyImage(top, dir.path);
  assert.deepStrictEqual(after.expected, before.expected);
  assert.strictEqual((await headerOf(top)).backingFile, a);
});

for (const raw of [false, true]) {
  qemuTest(
    `qemu data file: data_file_raw=${raw ? "on" : "off"}`,
    async () => {
      await using dir = await tempDir();
      const img = join(dir.path, "img.qcow2");
      const data = join(dir.path, "img.data");
      const size = 3 * MiB;
      const cs = 65536;
      await create(
        img,
        size,
        `data_file=${data}${raw ? ",data_file_raw=on" : ""},cluster_size=${cs}`,
      );
      const pat = await patternFile(dir.path, 40);
      await qemuIoAll(img, scribble(size, cs, pat));
      const header = await headerOf(img);
      assert.strictEqual(dataFileName(header), data);
      assert.strictEqual((header.autoclearFeatures & 2n) !== 0n, raw);
      const v = await verifyImage(img, dir.path);
      assert.ok(
        v.extents.filter((e) => e.kind === "data").every((e) =>
          e.file === data && e.hostOffset === e.offset
        ),
        "data lives in the data file at the guest offset",
      );
      if (raw) {
        // With data_file_raw the data file is the guest disk itself.
        assert.deepStrictEqual(
          v.expected,
          (await Deno.readFile(data)).subarray(0, size),
        );
      }
    },
  );
}

qemuTest(
  "qemu data file: relative name, extended L2 and a backing file",
  async () => {
    await using dir = await tempDir();
    const size = 2 * MiB;
    const base = join(dir.path, "base.raw");
    await Deno.writeFile(base, mixedBytes(size, 41));
    await runIn(dir.path, "qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "data_file=img.data,extended_l2=on,cluster_size=65536",
      "-b",
      "base.raw",
      "-F",
      "raw",
      "img.qcow2",
    ]);
    const img = join(dir.path, "img.qcow2");
    assert.strictEqual(dataFileName(await headerOf(img)), "img.data");
    const pat = await patternFile(dir.path, 42);
    // QEMU 7.2 opens a relative data file name from its working directory
    // (backing names are relative to the image); run it from the image's.
    await qemuIoAll(img, [
      `write -q -s ${pat} 2048 4096`,
      `write -q -z 65536 2048`,
      `write -q -s ${pat} ${size - 70000} 70000`,
      `write -q -z -u ${MiB} 65536`,
    ], { cwd: dir.path });
    const v = await verifyImage(img, dir.path, { cwd: dir.path });
    assert.ok(v.extents.some((e) => e.depth === 1));
    assert.ok(bytesOf(v.extents, "data") > 0);
    // The data file is required.
    await Deno.remove(join(dir.path, "img.data"));
    await assert.rejects(
      openImage(img),
      (err: Error) =>
        (err as { code?: string }).code === "BACKING" &&
        err.message.includes("external data file") &&
        err.message.includes("no such file"),
    );
  },
);
