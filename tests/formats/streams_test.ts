// VDI and qcow version 1 images from a pipe and over HTTP (with and without
// Range support): read as what they are, never copied as raw disks.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import { mixedRaw } from "../reader/_helpers.ts";
import { runCli } from "../writer/_cli.ts";
import { serveFiles } from "../streams/_server.ts";
import { qemuConvert } from "./_oracle.ts";

const MiB = 1024 * 1024;

qemuTest(
  "VDI and qcow images convert from a pipe and over HTTP, with and without Range support",
  async () => {
    await using dir = await tempDir();
    const raw = mixedRaw(3 * MiB, 128 * 1024, 77);
    const rawPath = join(dir.path, "disk.raw");
    await Deno.writeFile(rawPath, raw);
    const files: Record<string, Uint8Array> = {};
    for (
      const [name, args] of [
        ["d.vdi", ["-O", "vdi"]],
        ["s.vdi", ["-O", "vdi", "-o", "static=on"]],
        ["c.qcow", ["-O", "qcow", "-c"]],
      ] as const
    ) {
      await qemuConvert(...args, rawPath, join(dir.path, name));
      files[name] = await Deno.readFile(join(dir.path, name));
    }
    const out = join(dir.path, "out.raw");
    for (const [name, bytes] of Object.entries(files)) {
      const format = name.endsWith(".vdi") ? "vdi" : "qcow";
      for (const args of [[], ["-f", format]]) {
        const piped = await runCli(
          ["convert", ...args, "-O", "raw", "-", out],
          {
            stdin: bytes,
          },
        );
        assert.strictEqual(piped.code, 0, piped.stderr);
        assert.match(
          piped.stderr,
          new RegExp(`standard input is ${format}: spooled it whole`),
        );
        assert.deepStrictEqual(
          await Deno.readFile(out),
          raw,
          `${name} ${args} from a pipe`,
        );
      }
    }
    for (const ranges of [true, false]) {
      await using server = serveFiles(files, { ranges });
      for (const name of Object.keys(files)) {
        const r = await runCli(["convert", "-O", "raw", server.url(name), out]);
        assert.strictEqual(r.code, 0, r.stderr);
        assert.deepStrictEqual(
          await Deno.readFile(out),
          raw,
          `${name} over HTTP (ranges: ${ranges})`,
        );
        if (!ranges) assert.match(r.stderr, /spooled it whole/);
      }
      if (ranges) {
        assert.ok(
          server.requests.some((r) => r.includes("bytes=")),
          "Range requests were used",
        );
      }
    }
  },
);
