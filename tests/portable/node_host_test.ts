// lib/node/deno.ts, the part of Deno's API that the npm package gives
// lib/host and lib/cli on Node: run here under Deno against Deno's own
// answers, so that a failure reads the same under both runtimes (the same
// IoError code and message through lib/io/os_errors.ts), and positional
// reads and writes behave as Deno's seek, read and write do.

import assert from "node:assert";
import { join } from "node:path";
import { denoOnNode } from "../../lib/node/deno.ts";
import { fileError } from "../../lib/io/os_errors.ts";
import { tempDir } from "../_qemu.ts";

/** The error a call rejects with. */
async function failure(call: () => Promise<unknown>): Promise<unknown> {
  try {
    await call();
  } catch (err) {
    return err;
  }
  throw new Error("the call did not fail");
}

Deno.test("denoOnNode: OS errors carry Deno's class and read the same through fileError", async () => {
  await using dir = await tempDir();
  const file = join(dir.path, "file");
  await Deno.writeFile(file, new Uint8Array([1]));
  const cases: [
    string,
    (api: typeof denoOnNode | typeof Deno) => Promise<unknown>,
  ][] = [
    ["a missing file", (api) => api.open(join(dir.path, "missing"))],
    [
      "a file that exists, created new",
      (api) => api.open(file, { write: true, createNew: true }),
    ],
    [
      "a directory opened for writing",
      (api) => api.open(dir.path, { write: true }),
    ],
    ["a path through a file", (api) => api.stat(join(file, "below"))],
    ["a name too long", (api) => api.stat(join(dir.path, "n".repeat(300)))],
    [
      "a missing directory removed",
      (api) => api.remove(join(dir.path, "none")),
    ],
  ];
  for (const [what, call] of cases) {
    const [ours, deno] = [
      await failure(() => call(denoOnNode)),
      await failure(() => call(Deno)),
    ];
    assert.strictEqual((ours as Error).name, (deno as Error).name, what);
    assert.strictEqual(
      (ours as Error).constructor.name,
      (deno as Error).constructor.name,
      what,
    );
    const [a, b] = [fileError("open x", ours), fileError("open x", deno)];
    assert.deepStrictEqual([a.code, a.message], [b.code, b.message], what);
  }
});

Deno.test("denoOnNode: FsFile reads and writes where it was seeked, as Deno's", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "f");
  {
    using file = await denoOnNode.open(path, { write: true, create: true });
    assert.strictEqual(file.seekSync(10, denoOnNode.SeekMode.Start), 10);
    assert.strictEqual(file.writeSync(new Uint8Array([1, 2, 3])), 3);
    assert.strictEqual(await file.write(new Uint8Array([4])), 1);
    assert.strictEqual(await file.seek(0, denoOnNode.SeekMode.End), 14);
    await file.truncate(16);
  }
  const bytes = await Deno.readFile(path);
  assert.deepStrictEqual(
    bytes,
    Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0]),
  );
  using file = await denoOnNode.open(path);
  await file.seek(11, denoOnNode.SeekMode.Start);
  const into = new Uint8Array(8);
  assert.strictEqual(file.readSync(into), 5);
  assert.deepStrictEqual(into.subarray(0, 5), Uint8Array.from([2, 3, 4, 0, 0]));
  assert.strictEqual(await file.read(into), null);
  const info = file.statSync();
  const real = await Deno.stat(path);
  assert.deepStrictEqual(
    [info.size, info.dev, info.ino, info.isFile],
    [real.size, real.dev, real.ino, real.isFile],
  );
});
