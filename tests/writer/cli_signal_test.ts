// SIGTERM / SIGINT in the middle of `cli.ts convert`: the run exits through
// the CLI's handler (exit 143 / 130, one notice on stderr) and leaves
// neither DST nor the temporary `.partial` file. Runs are interrupted
// while provably in progress: reading a standard input that the test keeps
// open, or converting a 2 GiB sparse input holding 256 MiB of noise at
// zlib level 9 on one worker (several seconds), signalled as soon as its
// temporary file has received data. A qcow2 SRC that streams in (from
// standard input, or over HTTP without ranges) leaves no stream spool.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { exists, listDir, MiB, mixedBytes, randomBytes } from "./_helpers.ts";
import { CLI, partialFiles } from "./_cli.ts";
import { serveFiles } from "../streams/_server.ts";
import { convertToBytes } from "../../mod.ts";

const signals = Deno.build.os === "windows" ? [] : ["SIGTERM", "SIGINT"];

/** Waits until `dir` holds a `.partial` file with at least `bytes` bytes. */
async function waitForPartial(
  dir: string,
  bytes: number,
  child: Deno.ChildProcess,
): Promise<string> {
  let exited = false;
  child.status.then(() => exited = true);
  for (;;) {
    for (const name of await partialFiles(dir)) {
      try {
        if ((await Deno.stat(join(dir, name))).size >= bytes) return name;
      } catch {
        // renamed or removed meanwhile
      }
    }
    if (exited) throw new Error("the run ended before it could be signalled");
    await new Promise((r) => setTimeout(r, 10));
  }
}

function spawn(
  args: string[],
  stdin: "piped" | "null",
  env: Record<string, string> = {},
) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    stdin,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).spawn();
}

async function expectInterrupted(
  child: Deno.ChildProcess,
  signal: Deno.Signal,
): Promise<void> {
  child.kill(signal);
  const out = await child.output();
  const stderr = new TextDecoder().decode(out.stderr);
  assert.strictEqual(out.code, signal === "SIGINT" ? 130 : 143, stderr);
  assert.strictEqual(out.signal, null, "exited through the CLI's handler");
  assert.match(stderr, new RegExp(`^qcow2pipe: interrupted by ${signal}\\n$`));
}

for (const signal of signals as Deno.Signal[]) {
  Deno.test(`cli convert: ${signal} while reading an open standard input leaves no DST and no temporary file`, async () => {
    await using dir = await tempDir();
    const dst = join(dir.path, "dst.qcow2");
    const child = spawn(["convert", "--compress", "zstd", "-", dst], "piped");
    const writer = child.stdin.getWriter();
    // the input stays open: the run cannot end before the signal
    const feeding = (async () => {
      for (let i = 0; i < 8; i++) await writer.write(mixedBytes(MiB, i));
    })().catch(() => {});
    await waitForPartial(dir.path, 0, child);
    await expectInterrupted(child, signal);
    await feeding;
    await writer.close().catch(() => {});
    assert.strictEqual(await exists(dst), false);
    assert.deepStrictEqual(await listDir(dir.path), []);
  });
}

for (const signal of signals as Deno.Signal[]) {
  Deno.test(`cli convert: ${signal} while qcow2 streams to standard output removes the spool`, async () => {
    await using dir = await tempDir();
    const tmp = join(dir.path, "tmp");
    await Deno.mkdir(tmp);
    const child = spawn(["convert", "--compress", "zstd", "-", "-"], "piped", {
      TMPDIR: tmp,
    });
    const writer = child.stdin.getWriter();
    const feeding = (async () => {
      for (let i = 0; i < 8; i++) await writer.write(mixedBytes(MiB, i));
    })().catch(() => {});
    // the spool holds compressed clusters until the input ends
    let exited = false;
    child.status.then(() => exited = true);
    for (;;) {
      const spools = await listDir(tmp);
      if (spools.length > 0 && (await listDir(join(tmp, spools[0]))).length) {
        break;
      }
      if (exited) throw new Error("the run ended before it could be signalled");
      await new Promise((r) => setTimeout(r, 10));
    }
    await expectInterrupted(child, signal);
    await feeding;
    await writer.close().catch(() => {});
    assert.deepStrictEqual(await listDir(tmp), [], "no spool left");
  });
}

if (signals.length > 0) {
  Deno.test("cli convert: SIGTERM / SIGINT during a long file conversion leave no DST and no temporary file", async () => {
    await using dir = await tempDir();
    const src = join(dir.path, "big.raw");
    {
      // 2 GiB, sparse: 1 MiB of noise every 8 MiB
      const f = await Deno.open(src, { write: true, create: true });
      await f.truncate(2 * 1024 * MiB);
      for (let i = 0; i < 256; i++) {
        await f.seek(i * 8 * MiB, Deno.SeekMode.Start);
        const b = randomBytes(MiB, i);
        let done = 0;
        while (done < b.length) done += await f.write(b.subarray(done));
      }
      f.close();
    }
    for (const signal of signals as Deno.Signal[]) {
      const dst = join(dir.path, `dst-${signal}.qcow2`);
      const child = spawn([
        "convert",
        "--compress",
        "zlib",
        "--level",
        "9",
        "--workers",
        "1",
        src,
        dst,
      ], "null");
      await waitForPartial(dir.path, 1, child); // writing has begun
      await expectInterrupted(child, signal);
      assert.strictEqual(await exists(dst), false);
      assert.deepStrictEqual(await listDir(dir.path), ["big.raw"]);
    }
  });
}

/** Waits until `tmp` holds a `qcow2pipe-stream-*` directory. */
async function waitForStreamSpool(
  tmp: string,
  child: Deno.ChildProcess,
): Promise<void> {
  let exited = false;
  child.status.then(() => exited = true);
  while (!(await listDir(tmp)).some((n) => n.startsWith("qcow2pipe-stream-"))) {
    if (exited) throw new Error("the run ended before it could be signalled");
    await new Promise((r) => setTimeout(r, 10));
  }
}

for (const signal of signals as Deno.Signal[]) {
  Deno.test(`cli convert: ${signal} while a qcow2 SRC streams in (standard input, HTTP without ranges) removes its stream spool`, async () => {
    await using dir = await tempDir();
    const tmp = join(dir.path, "tmp");
    await Deno.mkdir(tmp);
    const qcow2 = await convertToBytes(mixedBytes(8 * MiB, 3));
    await using server = serveFiles({ "disk.qcow2": qcow2 }, {
      ranges: false,
      pauseAfter: qcow2.length >> 1,
    });
    for (const src of ["-", server.url("disk.qcow2")]) {
      const dst = join(dir.path, "dst.raw");
      const child = spawn(
        ["convert", "-q", "-O", "raw", src, dst],
        src === "-" ? "piped" : "null",
        { TMPDIR: tmp },
      );
      // Half the image, and standard input kept open: the run cannot end.
      const writer = src === "-" ? child.stdin.getWriter() : undefined;
      const feeding = writer?.write(qcow2.subarray(0, qcow2.length >> 1))
        .catch(() => {});
      await waitForStreamSpool(tmp, child);
      await expectInterrupted(child, signal);
      await feeding;
      await writer?.close().catch(() => {});
      assert.deepStrictEqual(await listDir(tmp), [], `${src}: no spool left`);
      assert.deepStrictEqual(await listDir(dir.path), ["tmp"]);
    }
  });
}
