import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  qemuTest,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import { serveFiles } from "./_server.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

/** A disk whose length is a multiple of 512 (so raw round trips are exact). */
function sampleDisk(size: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = 99;
  for (let at = 0; at < size; at += 65536) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    const kind = x % 4;
    for (let i = at; i < Math.min(size, at + 65536) && kind !== 0; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      out[i] = kind === 1
        ? x >>> 24
        : kind === 2
        ? 97 + (i % 26)
        : (i >> 9) & 0xff;
    }
  }
  return out;
}

/** Runs `sh -c SCRIPT` in `cwd`; returns exit code, stdout and stderr. */
async function sh(
  script: string,
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("sh", {
    args: ["-c", script],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

const run = `deno run -A ${CLI}`;

qemuTest(
  "convert - - pipes raw to zstd qcow2 and back through stdin/stdout",
  async () => {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "disk.raw"), sampleDisk(6 << 20));
    const to = await sh(
      `cat disk.raw | ${run} convert --verbose --compress zstd -O qcow2 - - > out.qcow2`,
      dir.path,
    );
    assert.strictEqual(to.code, 0, to.stderr);
    assert.match(
      to.stderr,
      /^qcow2pipe: wrote standard output: .* of streamable qcow2 for 6\.00 MiB virtual in .*; .* waited in the spool\n$/,
    );
    await qemuCheckClean(join(dir.path, "out.qcow2"));
    const info = JSON.parse(
      await qemuImg("info", "--output=json", join(dir.path, "out.qcow2")),
    );
    assert.strictEqual(
      info["format-specific"].data["compression-type"],
      "zstd",
    );
    await qemuCompareIdentical(
      join(dir.path, "disk.raw"),
      join(dir.path, "out.qcow2"),
    );
    const back = await sh(
      `cat out.qcow2 | ${run} convert -O raw - - | cmp - disk.raw`,
      dir.path,
    );
    assert.strictEqual(back.code, 0, back.stderr + back.stdout);
    assert.match(back.stderr, /decoding it in one pass/);
  },
);

qemuTest(
  "convert from a pipe spools a qcow2 image whose tables are not first, and says so",
  async () => {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "disk.raw"), sampleDisk(3 << 20));
    await qemuImg(
      "convert",
      "-c",
      "-O",
      "qcow2",
      join(dir.path, "disk.raw"),
      join(dir.path, "q.qcow2"),
    );
    const r = await sh(
      `cat q.qcow2 | ${run} convert -O raw - - | cmp - disk.raw`,
      dir.path,
    );
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, /spooled it whole/);
  },
);

qemuTest(
  "convert --streamable writes a file that expands from a pipe in one pass",
  async () => {
    await using dir = await tempDir();
    await Deno.writeFile(join(dir.path, "disk.raw"), sampleDisk(4 << 20));
    const w = await sh(
      `${run} convert -q --streamable --compress zlib disk.raw s.qcow2`,
      dir.path,
    );
    assert.strictEqual(w.code, 0, w.stderr);
    await qemuCheckClean(join(dir.path, "s.qcow2"));
    const r = await sh(
      `cat s.qcow2 | ${run} convert -O raw - - | cmp - disk.raw`,
      dir.path,
    );
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, /one pass/);
  },
);

qemuTest(
  "convert reads raw and qcow2 over HTTP, with and without Range support",
  async () => {
    await using dir = await tempDir();
    const raw = sampleDisk(5 << 20);
    await Deno.writeFile(join(dir.path, "disk.raw"), raw);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      "-c",
      join(dir.path, "disk.raw"),
      join(dir.path, "q.qcow2"),
    );
    const qcow2 = await Deno.readFile(join(dir.path, "q.qcow2"));
    for (const ranges of [true, false]) {
      await using server = serveFiles({ "disk.raw": raw, "q.qcow2": qcow2 }, {
        ranges,
      });
      // raw URL -> qcow2 file, streamed without a temporary copy
      const a = await sh(
        `${run} convert -q --compress zstd ${server.url("disk.raw")} a.qcow2`,
        dir.path,
      );
      assert.strictEqual(a.code, 0, a.stderr);
      await qemuCompareIdentical(
        join(dir.path, "disk.raw"),
        join(dir.path, "a.qcow2"),
      );
      // qcow2 URL -> raw file
      const before = server.bytesSent;
      const b = await sh(
        `${run} convert --verbose ${server.url("q.qcow2")} b.raw`,
        dir.path,
      );
      assert.strictEqual(b.code, 0, b.stderr);
      assert.deepStrictEqual(await Deno.readFile(join(dir.path, "b.raw")), raw);
      if (ranges) {
        assert.ok(
          server.requests.some((r) => r.includes("bytes=")),
          "Range requests were used",
        );
        // Nothing spooled: the summary is all.
        assert.match(
          b.stderr,
          /^qcow2pipe: wrote b\.raw: 5\.00 MiB of raw in [^\n]*\n$/,
        );
      } else {
        assert.match(b.stderr, /spooled it whole/);
        assert.ok(server.bytesSent - before >= qcow2.length);
      }
    }
  },
);

qemuTest(
  "convert opens an HTTP source with one request, and streams a server without Range support from that response",
  async () => {
    await using dir = await tempDir();
    const raw = sampleDisk(3 << 20);
    await Deno.writeFile(join(dir.path, "disk.raw"), raw);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      join(dir.path, "disk.raw"),
      join(dir.path, "q.qcow2"),
    );
    const qcow2 = await Deno.readFile(join(dir.path, "q.qcow2"));
    for (const ranges of [true, false]) {
      for (const name of ["q.qcow2", "disk.raw"]) {
        await using server = serveFiles({
          [name]: name === "q.qcow2" ? qcow2 : raw,
        }, {
          ranges,
        });
        const r = await sh(
          `${run} convert -q -O raw ${
            server.url(name)
          } out.raw && cmp out.raw disk.raw && rm out.raw`,
          dir.path,
        );
        assert.strictEqual(r.code, 0, r.stderr);
        const what = `${name}, ranges ${ranges}: ${server.requests.join(", ")}`;
        // Opening is one request for the first 1 MiB.
        assert.strictEqual(
          server.requests[0],
          `GET ${name} bytes=0-1048575`,
          what,
        );
        assert.ok(
          server.requests.slice(1).every((line) => !/ bytes=0-/.test(line)),
          what,
        );
        if (!ranges) {
          // The whole resource came with that answer: no second GET.
          assert.strictEqual(server.requests.length, 1, what);
          assert.strictEqual(
            server.bytesSent,
            name === "q.qcow2" ? qcow2.length : raw.length,
          );
        } else if (name === "disk.raw") {
          // Raw with ranges: then one streamed GET of the whole.
          assert.deepStrictEqual(
            server.requests.slice(1),
            ["GET disk.raw"],
            what,
          );
        }
      }
    }
  },
);

qemuTest(
  "convert from an HTTP server that fails mid-transfer resumes with Range requests, and without them gives one line and no output",
  async () => {
    await using dir = await tempDir();
    const raw = sampleDisk(4 << 20);
    await Deno.writeFile(join(dir.path, "disk.raw"), raw);
    for (const ranges of [true, false]) {
      await using server = serveFiles({ "disk.raw": raw }, {
        ranges,
        failAfter: 1 << 20,
      });
      const r = await sh(
        `${run} convert -q --compress zstd ${server.url("disk.raw")} out.qcow2`,
        dir.path,
      );
      if (ranges) {
        // Every response breaks after 1 MiB: each resumes where it broke.
        assert.strictEqual(r.code, 0, r.stderr);
        await qemuCompareIdentical(
          join(dir.path, "disk.raw"),
          join(dir.path, "out.qcow2"),
        );
        assert.deepStrictEqual(server.requests.slice(1), [
          "GET disk.raw",
          "GET disk.raw bytes=1048576-",
          "GET disk.raw bytes=2097152-",
          "GET disk.raw bytes=3145728-",
        ]);
        await Deno.remove(join(dir.path, "out.qcow2"));
        continue;
      }
      assert.strictEqual(r.code, 1);
      const lines = r.stderr.trim().split("\n");
      assert.strictEqual(lines.length, 1, r.stderr);
      assert.match(
        lines[0],
        /^qcow2pipe: Cannot read http:\S+: the transfer broke after 1048576 bytes, and the server answered 200 to a Range request for the rest: it cannot resume$/,
      );
      assert.deepStrictEqual(
        [...Deno.readDirSync(dir.path)].map((e) => e.name),
        ["disk.raw"],
      );
    }
  },
);

qemuTest(
  "convert of a qcow2 URL whose backing file is a relative URL follows the chain",
  async () => {
    await using dir = await tempDir();
    const base = sampleDisk(2 << 20);
    await Deno.writeFile(join(dir.path, "base.raw"), base);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      join(dir.path, "base.raw"),
      join(dir.path, "base.qcow2"),
    );
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      join(dir.path, "top.qcow2"),
    );
    await runStatus("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 0x77 64k 4k",
      join(dir.path, "top.qcow2"),
    ]);
    await qemuImg(
      "convert",
      "-O",
      "raw",
      join(dir.path, "top.qcow2"),
      join(dir.path, "ref.raw"),
    );
    await using server = serveFiles({
      "img/base.qcow2": await Deno.readFile(join(dir.path, "base.qcow2")),
      "img/top.qcow2": await Deno.readFile(join(dir.path, "top.qcow2")),
    });
    const r = await sh(
      `${run} convert -q ${server.url("img/top.qcow2")} out.raw`,
      dir.path,
    );
    assert.strictEqual(r.code, 0, r.stderr);
    assert.deepStrictEqual(
      await Deno.readFile(join(dir.path, "out.raw")),
      await Deno.readFile(join(dir.path, "ref.raw")),
    );
    assert.ok(server.requests.some((line) => line.includes("img/base.qcow2")));
  },
);
