// Converting a raw file with several reads in flight (pread(2) through FFI,
// nonblocking; Deno's reads without it): the same image with and without
// --allow-ffi, and qemu-img finds its guest bytes those of the file.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuTest,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import { MiB, mixedBytes } from "./_helpers.ts";
import { CLI } from "./_cli.ts";

qemuTest(
  "convert reads a raw file's data in parallel with --allow-ffi, the image it makes without",
  async () => {
    await using dir = await tempDir();
    const raw = join(dir.path, "disk.raw");
    // Data runs longer than the reads in flight, zeros written as data,
    // a hole, and a tail that is not a whole chunk.
    const size = 40 * MiB + 12345;
    await using f = await Deno.open(raw, { write: true, create: true });
    await f.write(mixedBytes(24 * MiB, 126));
    await f.write(new Uint8Array(3 * MiB));
    await f.seek(36 * MiB, Deno.SeekMode.Start);
    await f.write(mixedBytes(size - 36 * MiB, 127));
    const images: string[] = [];
    for (const perms of [["-A"], ["-R", "-W"]]) {
      const out = join(dir.path, `disk${images.length}.qcow2`);
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", ...perms, CLI, "convert", "-q", "-O", "qcow2", raw, out],
        stderr: "piped",
      }).output();
      assert.strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
      await qemuCheckClean(out);
      await qemuCompareIdentical(raw, out);
      images.push(out);
    }
    const same = await runStatus("cmp", images);
    assert.strictEqual(same.code, 0, same.stdout + same.stderr);
  },
);
