// The runtime-neutral core on its own: paths need a runtime's file module
// (mod.ts loads Deno's), the codec pool runs inline where there is no
// Worker, and names images give each other are joined as node:path would.

import assert from "node:assert";
import { posix } from "node:path";
import { fileURLToPath } from "node:url";
import { CodecPool } from "../../lib/codec/pool.ts";
import { dirname, isAbsolute, join } from "../../lib/io/path.ts";
import { tempDir } from "../_qemu.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

Deno.test("core.ts alone refuses a path in one line; with mod.ts loaded the same openImage() opens it", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/disk.raw`;
  await Deno.writeFile(path, new Uint8Array(4096).fill(3));
  // A fresh process, so that no test has loaded the file module before.
  const script = `
    const core = await import(${JSON.stringify(`${ROOT}core.ts`)});
    try {
      await core.openImage(${JSON.stringify(path)});
      console.log("opened without file access");
    } catch (err) {
      console.log(err.constructor.name + ": " + err.message);
    }
    await import(${JSON.stringify(`${ROOT}mod.ts`)});
    const image = await core.openImage(${JSON.stringify(path)});
    console.log(image.format, image.virtualSize, (await image.readAt(4095, 1))[0]);
    await image.close();
  `;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", script],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, stderr);
  assert.deepStrictEqual(
    new TextDecoder().decode(out.stdout).trim().split("\n"),
    [
      `TypeError: Cannot open "${path}": no file access is loaded (in Deno import mod.ts; elsewhere pass a RandomAccessSource such as BlobSource, or the bytes)`,
      "raw 4096 3",
    ],
  );
});

Deno.test("CodecPool() runs jobs inline where the runtime has no Worker", async () => {
  const RealWorker = globalThis.Worker;
  // deno-lint-ignore no-explicit-any
  delete (globalThis as any).Worker;
  try {
    await using pool = new CodecPool({ workers: 2 });
    assert.strictEqual(pool.size, 0);
    const clusters = new Uint8Array(3 * 4096);
    clusters.fill(5, 0, 4096);
    clusters.fill(6, 8192);
    for (const type of ["zlib", "zstd"] as const) {
      const packed = await pool.compress({ type }, clusters, 4096);
      assert.strictEqual(packed.lengths.length, 3);
      const payloads = packed.lengths.map((n, i) =>
        packed.data.subarray(packed.offsets[i], packed.offsets[i] + n)
      );
      assert.deepStrictEqual(
        await pool.decompress({ type }, payloads, 4096),
        clusters,
      );
    }
  } finally {
    globalThis.Worker = RealWorker;
  }
  await using pool = new CodecPool({ workers: 2 });
  assert.strictEqual(pool.size, 2, "workers again once Worker is back");
});

Deno.test("_path: dirname, join and isAbsolute agree with node:path (POSIX)", () => {
  const names = [
    "",
    "/",
    "a",
    "a/",
    "/a",
    "/a/b",
    "a/b/c",
    "/a/b/",
    "./a",
    "../a",
    "a/../..",
    "/..",
    "x/./y/../z",
    "base.qcow2",
    "../images/base.qcow2",
  ];
  for (const a of names) {
    assert.strictEqual(dirname(a), posix.dirname(a), `dirname(${a})`);
    assert.strictEqual(isAbsolute(a), posix.isAbsolute(a), `isAbsolute(${a})`);
    for (const b of names) {
      assert.strictEqual(join(a, b), posix.join(a, b), `join(${a}, ${b})`);
    }
  }
  // Windows drive and UNC paths count as absolute too.
  assert.ok(isAbsolute("C:\\images\\base.qcow2"));
  assert.ok(isAbsolute("\\\\server\\share\\base.qcow2"));
});

Deno.test("mod.ts imported by path from outside the repository converts with every backend", async () => {
  await using dir = await tempDir();
  // A script in a directory of its own (no deno.json, no import map): the
  // library's dependencies must resolve from its own specifiers.
  const script = `${dir.path}/use.ts`;
  await Deno.writeTextFile(
    script,
    `import { convertToBytes, openImage } from ${
      JSON.stringify(`${ROOT}mod.ts`)
    };
const raw = new Uint8Array(200_000).fill(3);
for (const [compression, backend] of [["zlib", "fflate"], ["zstd", "zstd-codec"], ["zstd", "node"]]) {
  const qcow2 = await convertToBytes(raw, { compression, backend, workers: 0 });
  const image = await openImage(qcow2);
  console.log(compression, backend, (await image.readAt(199_999, 1))[0]);
  await image.close();
}
`,
  );
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", script],
    cwd: dir.path,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.success, stderr);
  assert.strictEqual(
    new TextDecoder().decode(out.stdout),
    "zlib fflate 3\nzstd zstd-codec 3\nzstd node 3\n",
  );
});
