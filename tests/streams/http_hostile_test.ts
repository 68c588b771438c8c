// Hostile HTTP servers against the CLI and HttpSource, each built for real
// on loopback: redirects to other origins, schemes and in loops, an endless
// 206 body, a server that trickles or stays silent, Content-Encoding,
// 5xx answers, and a resource that changes between requests.

import assert from "node:assert";
import { join } from "node:path";
import {
  fetchStream,
  HttpSource,
  RangeNotSupportedError,
} from "../../lib/io/http_source.ts";
import { openImage } from "../../lib/reader/open.ts";
import type { Qcow2Error } from "../../lib/format/errors.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { qemuImg, qemuIo, qemuTest, tempDir } from "../_qemu.ts";
import {
  assertOneLineError,
  CLI,
  type CliResult,
  runCli,
} from "../writer/_cli.ts";
import { serveFiles } from "./_server.ts";

const MiB = 1024 * 1024;

/** Bytes that say where they are: each 512-byte sector starts with its offset and a tag. */
function stamped(size: number, tag: number): Uint8Array {
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  for (let at = 0; at + 16 <= size; at += 512) {
    view.setBigUint64(at, BigInt(at), true);
    view.setUint32(at + 8, tag, true);
  }
  return out;
}

/** Whether `haystack` holds the 16 bytes of a sector stamped with `tag`. */
function holdsTag(haystack: Uint8Array, tag: number): boolean {
  const view = new DataView(
    haystack.buffer,
    haystack.byteOffset,
    haystack.byteLength,
  );
  for (let at = 0; at + 16 <= haystack.length; at += 512) {
    if (view.getUint32(at + 8, true) === tag) return true;
  }
  return false;
}

/**
 * A chain made by qemu-img in `dir`: base.raw, top.qcow2 naming it
 * (relative, format raw) with a cluster of its own, and expected.raw,
 * qemu-img's conversion of the chain.
 */
async function chain(
  dir: string,
  base: Uint8Array,
): Promise<{ top: Uint8Array; base: Uint8Array; expected: Uint8Array }> {
  await Deno.writeFile(join(dir, "base.raw"), base);
  const top = join(dir, "top.qcow2");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    "base.raw",
    "-F",
    "raw",
    top,
    String(base.length),
  );
  // A cluster of the overlay's own, so the output mixes both layers.
  await qemuIo(top, ["write -P 0x77 64k 4k"]);
  await qemuImg("convert", "-O", "raw", top, join(dir, "expected.raw"));
  return {
    top: await Deno.readFile(top),
    base,
    expected: await Deno.readFile(join(dir, "expected.raw")),
  };
}

/** Sleeps `ms`, or less when `signal` aborts. */
function nap(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/**
 * Asserts equal bytes, naming the first offset that differs (a diff of
 * megabytes would take longer to print than the test to run).
 */
function assertSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  const n = Math.min(actual.length, expected.length);
  let at = 0;
  while (at < n && actual[at] === expected[at]) at++;
  assert.ok(
    at === n && actual.length === expected.length,
    `${actual.length} bytes, ${expected.length} expected; first difference at ${at}`,
  );
}

/** The files in a directory. */
function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

/** What a run measured: its result, peak RSS (VmHWM) and wall time. */
interface Measured extends CliResult {
  peakBytes: number;
  seconds: number;
}

/** The peak RSS of a live process, from /proc (0 when unreadable). */
function peakOf(pid: number): number {
  try {
    const m = /VmHWM:\s+(\d+)\s+kB/.exec(
      Deno.readTextFileSync(`/proc/${pid}/status`),
    );
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * Runs the CLI like runCli, sampling its peak RSS (VmHWM, which only
 * grows) every 20 ms until it exits, and killing it after `limitSeconds`.
 */
async function runMeasured(
  args: string[],
  cwd: string,
  limitSeconds = 60,
): Promise<Measured> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let peakBytes = 0;
  const sampler = setInterval(() => {
    peakBytes = Math.max(peakBytes, peakOf(child.pid));
  }, 20);
  const killer = setTimeout(() => child.kill("SIGKILL"), limitSeconds * 1000);
  try {
    const out = await child.output();
    return {
      code: out.code,
      signal: out.signal,
      stdout: out.stdout,
      stderr: new TextDecoder().decode(out.stderr),
      peakBytes,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    clearInterval(sampler);
    clearTimeout(killer);
  }
}

/** A Range header's bounds (`bytes=A-B`, or `bytes=A-` to `size`). */
function askedRange(req: Request, size: number): [number, number] {
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.get("range") ?? "");
  if (!m) return [0, size - 1];
  return [
    Number(m[1]),
    m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1),
  ];
}

qemuTest(
  "convert follows the named URL's redirect to another origin and resolves the backing file against the URL that answered",
  async () => {
    await using dir = await tempDir();
    const { top, base, expected } = await chain(dir.path, stamped(2 * MiB, 1));
    // The mirror holds the image; the front only sends users there, and
    // has a base.raw of its own that must not be read.
    await using mirror = serveFiles({
      "v2/top.qcow2": top,
      "v2/base.raw": base,
    });
    await using front = serveFiles({
      "base.raw": stamped(2 * MiB, 0xbad),
    }, { redirects: { "latest": mirror.url("v2/top.qcow2") } });
    const out = join(dir.path, "out.raw");
    for (const format of [[], ["-f", "qcow2"]]) {
      const r = await runCli([
        "convert",
        "-q",
        ...format,
        front.url("latest"),
        "-O",
        "raw",
        out,
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      assertSameBytes(await Deno.readFile(out), expected);
      await Deno.remove(out);
    }
    // The front answered the opening requests only (with the redirect);
    // every other request went to the URL that answered.
    assert.ok(front.requests.every((r) => r.startsWith("GET latest")));
    assert.ok(mirror.requests.some((r) => r.startsWith("GET v2/base.raw")));
    // The inspection commands resolve it the same way.
    const info = await runCli([
      "info",
      "--output=json",
      "--backing-chain",
      front.url("latest"),
    ]);
    assert.strictEqual(info.code, 0, info.stderr);
    const chainInfo = JSON.parse(new TextDecoder().decode(info.stdout));
    assert.strictEqual(
      chainInfo[0]["full-backing-filename"],
      mirror.url("v2/base.raw"),
    );
    assert.strictEqual(chainInfo.length, 2);
  },
);

qemuTest(
  "a backing file request that redirects to another origin or scheme is refused before it is followed",
  async () => {
    await using dir = await tempDir();
    const { top, base, expected } = await chain(dir.path, stamped(MiB, 2));
    const secretTag = 0x5ec2e7;
    await using elsewhere = serveFiles({
      "secret.raw": stamped(MiB, secretTag),
    });
    const targets = {
      origin: elsewhere.url("secret.raw"),
      scheme: "file:///etc/passwd",
    };
    for (const [kind, target] of Object.entries(targets)) {
      await using server = serveFiles({ "img/top.qcow2": top }, {
        redirects: { "img/base.raw": target },
      });
      const url = server.url("img/top.qcow2");
      const why = kind === "origin"
        ? `another origin than http://127\\.0\\.0\\.1:\\d+, and a file an image names must stay on the origin it was asked from`
        : `only http\\(s\\) URLs are followed`;
      // (info words the reason in lower case, as it words file errors.)
      const refusal = new RegExp(
        `[Cc]annot fetch ${
          server.url("img/base.raw").replaceAll(".", "\\.")
        }: it redirects to ${target.replaceAll(".", "\\.")}: ${why}`,
      );
      // Probed or with -f qcow2 (which trusts the name, not a redirect).
      for (const format of [[], ["-f", "qcow2"]]) {
        for (const to of ["raw", "qcow2"]) {
          const out = join(dir.path, `out.${to}`);
          const r = await runCli([
            "convert",
            ...format,
            url,
            "-O",
            to,
            out,
          ]);
          assertOneLineError(r, refusal);
          assert.deepStrictEqual(names(dir.path), [
            "base.raw",
            "expected.raw",
            "top.qcow2",
          ]);
        }
      }
      for (
        const args of [
          ["info", "--backing-chain", url],
          ["map", url],
          ["compare", url, join(dir.path, "base.raw")],
        ]
      ) {
        const r = await runCli(args);
        assert.notStrictEqual(r.code, 0, args.join(" "));
        assert.match(r.stderr, refusal, args.join(" "));
        assert.ok(!holdsTag(r.stdout, secretTag));
      }
    }
    // Not one request reached the other origin.
    assert.deepStrictEqual(elsewhere.requests, []);
    // A redirect within the origin is followed.
    await using same = serveFiles({ "img/top.qcow2": top, "store/b": base }, {
      redirects: { "img/base.raw": "/store/b" },
    });
    const out = join(dir.path, "same.raw");
    const ok = await runCli([
      "convert",
      "-q",
      same.url("img/top.qcow2"),
      "-O",
      "raw",
      out,
    ]);
    assert.strictEqual(ok.code, 0, ok.stderr);
    assertSameBytes(await Deno.readFile(out), expected);
    assert.ok(same.requests.some((r) => r.startsWith("GET store/b")));
  },
);

Deno.test("HttpSource follows at most 10 redirects, only to http(s), never from https to http, and judges where a browser's redirect led", async () => {
  await using server = serveFiles({}, {
    intercept: (req, path) => {
      const n = Number(path.slice(1));
      return Response.redirect(new URL(`/r${n + 1}`, req.url), 302);
    },
  });
  await assert.rejects(
    HttpSource.open(server.url("r0"), { retryDelays: [] }),
    (err: Error) => {
      assert.match(
        err.message,
        /^Cannot fetch http:\S+\/r0: http:\S+\/r10 redirects to http:\S+\/r11: more than 10 redirects$/,
      );
      return true;
    },
  );
  assert.strictEqual(server.requests.length, 11);
  // https to http, asked of a fetch that would answer anything.
  const asked: string[] = [];
  const fake: typeof fetch = (input) => {
    asked.push(String(input));
    return Promise.resolve(
      new Response(null, {
        status: 301,
        headers: { location: "http://example.org/disk.raw" },
      }),
    );
  };
  await assert.rejects(
    HttpSource.open("https://example.org/disk.raw", { fetch: fake }),
    /^Error: Cannot fetch https:\/\/example\.org\/disk\.raw: it redirects to http:\/\/example\.org\/disk\.raw: it would leave https for plain http$/,
  );
  assert.deepStrictEqual(asked, ["https://example.org/disk.raw"]);
  // A browser's fetch hides a redirect's target until it has followed it:
  // the URL that answered is judged then.
  const browser = (to: string): typeof fetch => (_input, init) => {
    if (init?.redirect === "manual") {
      const hidden = new Response(null);
      Object.defineProperty(hidden, "type", { value: "opaqueredirect" });
      return Promise.resolve(hidden);
    }
    const res = new Response("abcd", {
      status: 206,
      headers: { "content-range": "bytes 0-3/4" },
    });
    Object.defineProperty(res, "url", { value: to });
    return Promise.resolve(res);
  };
  await using followed = await HttpSource.open("https://example.org/latest", {
    fetch: browser("https://cdn.example.org/v2/disk.raw"),
  });
  assert.strictEqual(followed.url, "https://cdn.example.org/v2/disk.raw");
  await assert.rejects(
    HttpSource.open("https://example.org/base.raw", {
      fetch: browser("https://cdn.example.org/v2/disk.raw"),
      stayOnOrigin: true,
    }),
    /it redirects to https:\/\/cdn\.example\.org\/v2\/disk\.raw: another origin than https:\/\/example\.org/,
  );
});

Deno.test("HttpSource sends later requests to the URL that answered, and credentials only to the origin named", async () => {
  const body = stamped(3 * MiB, 7);
  const seen: string[] = [];
  await using mirror = serveFiles({ "disk.raw": body }, {
    intercept: (req) => {
      seen.push(req.headers.get("authorization") ?? "none");
      return undefined;
    },
  });
  await using front = serveFiles({}, {
    intercept: (req) => {
      seen.push(`front ${req.headers.get("authorization")}`);
      return Response.redirect(mirror.url("disk.raw"), 307);
    },
  });
  await using src = await HttpSource.open(front.url("disk.raw"), {
    headers: { authorization: "Bearer token" },
  });
  assert.strictEqual(src.url, mirror.url("disk.raw"));
  assert.strictEqual(src.name, front.url("disk.raw"));
  assert.deepStrictEqual(
    await src.read(2 * MiB, 1024),
    body.subarray(2 * MiB, 2 * MiB + 1024),
  );
  assert.deepStrictEqual(front.requests, ["GET disk.raw bytes=0-1048575"]);
  assert.deepStrictEqual(mirror.requests, [
    "GET disk.raw bytes=0-1048575",
    `GET disk.raw bytes=${2 * MiB}-${2 * MiB + 1023}`,
  ]);
  assert.deepStrictEqual(seen, ["front Bearer token", "none", "none"]);
});

qemuTest(
  "an endless 206 body is cut at the range asked for: convert succeeds within 300 MiB and 20 s",
  async () => {
    await using dir = await tempDir();
    const raw = stamped(64 * MiB, 3);
    await Deno.writeFile(join(dir.path, "disk.raw"), raw);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      join(dir.path, "disk.raw"),
      join(dir.path, "disk.qcow2"),
    );
    const qcow2 = await Deno.readFile(join(dir.path, "disk.qcow2"));
    const junk = new Uint8Array(MiB).fill(0xaa);
    await using server = serveFiles({}, {
      intercept: (req) => {
        // The asked range, then junk for ever.
        const [a, b] = askedRange(req, qcow2.length);
        let first = true;
        const body = new ReadableStream<Uint8Array>({
          pull(controller) {
            controller.enqueue(first ? qcow2.slice(a, b + 1) : junk);
            first = false;
          },
        });
        return new Response(body, {
          status: 206,
          headers: { "content-range": `bytes ${a}-${b}/${qcow2.length}` },
        });
      },
    });
    const r = await runMeasured(
      ["convert", "-q", server.url("disk.qcow2"), "-O", "raw", "out.raw"],
      dir.path,
    );
    assert.strictEqual(r.code, 0, r.stderr);
    assertSameBytes(await Deno.readFile(join(dir.path, "out.raw")), raw);
    assert.ok(r.peakBytes > 0, "VmHWM was read");
    assert.ok(
      r.peakBytes < 300 * MiB,
      `peak RSS ${(r.peakBytes / MiB).toFixed(0)} MiB`,
    );
    assert.ok(r.seconds < 20, `${r.seconds.toFixed(1)} s`);
  },
);

Deno.test("HttpSource refuses a 206 for another range than asked, or of another size", async () => {
  const body = stamped(2 * MiB, 4);
  let lie: "start" | "total" | undefined;
  await using server = serveFiles({ "disk.raw": body }, {
    intercept: (req) => {
      if (!lie || !req.headers.has("range")) return undefined;
      const [a, b] = askedRange(req, body.length);
      const [from, total] = lie === "start"
        ? [a + 512, body.length]
        : [a, body.length * 2];
      return new Response(body.slice(from, b + 1), {
        status: 206,
        headers: { "content-range": `bytes ${from}-${b}/${total}` },
      });
    },
  });
  await using src = await HttpSource.open(server.url("disk.raw"));
  lie = "start";
  await assert.rejects(
    src.read(MiB + 4096, 4096),
    RangeNotSupportedError,
  );
  lie = "total";
  await assert.rejects(
    src.read(MiB + 4096, 4096),
    /: its size changed from 2097152 to 4194304 bytes$/,
  );
});

qemuTest(
  "a server that trickles or stays silent fails after --http-timeout, naming the URL; one that keeps sending is never cut",
  async () => {
    await using dir = await tempDir();
    const raw = stamped(2 * MiB, 5);
    let mode: "silent" | "trickle" | "steady" = "silent";
    const done = new AbortController();
    await using server = serveFiles({}, {
      intercept: async (req) => {
        if (mode === "silent") {
          // Headers never come (until the test ends).
          await nap(60_000, done.signal);
          return new Response(null, { status: 500 });
        }
        const [a, b] = askedRange(req, raw.length);
        const slice = raw.slice(a, b + 1);
        const steady = mode === "steady";
        let at = 0;
        const body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            if (at >= slice.length) return controller.close();
            // A byte every 3 s, or 128 KiB every 100 ms.
            await nap(steady ? 100 : 3000, done.signal);
            const n = steady ? 128 * 1024 : 1;
            controller.enqueue(slice.slice(at, at + n));
            at += n;
          },
        });
        return req.headers.has("range")
          ? new Response(body, {
            status: 206,
            headers: { "content-range": `bytes ${a}-${b}/${raw.length}` },
          })
          : new Response(body);
      },
    });
    // Released before the server shuts down (disposal runs last first).
    using _ = { [Symbol.dispose]: () => done.abort() };
    for (const m of ["silent", "trickle"] as const) {
      mode = m;
      const before = server.requests.length;
      const r = await runMeasured(
        ["convert", "--http-timeout", "1", server.url("disk.raw"), "out.raw"],
        dir.path,
      );
      assertOneLineError(
        r,
        /^qcow2pipe: Cannot fetch http:\S+\/disk\.raw: no data came for 1 s$/,
      );
      assert.ok(r.seconds < 20, `${r.seconds.toFixed(1)} s`);
      // A silence is not retried.
      assert.strictEqual(server.requests.length - before, 1);
      assert.deepStrictEqual(names(dir.path), []);
    }
    // 2 MiB at 1.25 MiB/s: 1.6 s, longer than the timeout.
    mode = "steady";
    const ok = await runCli([
      "convert",
      "-q",
      "--http-timeout",
      "1",
      server.url("disk.raw"),
      join(dir.path, "out.raw"),
    ]);
    assert.strictEqual(ok.code, 0, ok.stderr);
    assertSameBytes(await Deno.readFile(join(dir.path, "out.raw")), raw);
    // The flag is checked.
    const bad = await runCli([
      "info",
      "--http-timeout",
      "0",
      server.url("disk.raw"),
    ]);
    assertOneLineError(
      bad,
      /^qcow2pipe: Cannot describe image: --http-timeout "0" is not a number of seconds in \(0, 86400\]$/,
    );
  },
);

qemuTest(
  "a body sent with Content-Encoding: gzip is refused, never read as disk bytes",
  async () => {
    await using dir = await tempDir();
    const raw = stamped(MiB, 6);
    await Deno.writeFile(join(dir.path, "disk.raw"), raw);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      join(dir.path, "disk.raw"),
      join(dir.path, "disk.qcow2"),
    );
    const qcow2 = await Deno.readFile(join(dir.path, "disk.qcow2"));
    const gzip = async (bytes: Uint8Array<ArrayBuffer>) =>
      new Uint8Array(
        await new Response(
          new Blob([bytes]).stream().pipeThrough(
            new CompressionStream("gzip"),
          ),
        ).arrayBuffer(),
      );
    for (const ranges of [true, false]) {
      await using server = serveFiles({}, {
        intercept: async (req) => {
          const [a, b] = askedRange(req, qcow2.length);
          const range = ranges && req.headers.has("range");
          const headers = new Headers({ "content-encoding": "gzip" });
          if (range) {
            headers.set("content-range", `bytes ${a}-${b}/${qcow2.length}`);
          }
          return new Response(
            await gzip(range ? qcow2.slice(a, b + 1) : qcow2),
            { status: range ? 206 : 200, headers },
          );
        },
      });
      const r = await runCli([
        "convert",
        server.url("disk.qcow2"),
        join(dir.path, "out.raw"),
      ]);
      assertOneLineError(
        r,
        /^qcow2pipe: Cannot fetch http:\S+\/disk\.qcow2: the server sent it with Content-Encoding: gzip, and only identity is accepted/,
      );
      assert.deepStrictEqual(names(dir.path), ["disk.qcow2", "disk.raw"]);
    }
    // It was asked for identity.
    await using plain = serveFiles({}, {
      intercept: (req) =>
        new Response(req.headers.get("accept-encoding") ?? "none"),
    });
    const { body } = await fetchStream(plain.url("x"));
    assert.strictEqual(await new Response(body).text(), "identity");
  },
);

Deno.test("HttpSource and fetchStream retry a 5xx answer, and give up after the attempts", async () => {
  const body = stamped(3 * MiB, 8);
  let failing = 0;
  await using server = serveFiles({ "disk.raw": body }, {
    intercept: () => {
      if (failing === 0) return undefined;
      failing--;
      return new Response("busy", { status: 503 });
    },
  });
  const options = { retryDelays: [1, 1, 1] };
  failing = 2;
  await using src = await HttpSource.open(server.url("disk.raw"), options);
  failing = 3;
  assert.deepStrictEqual(
    await src.read(2 * MiB, 100),
    body.subarray(2 * MiB, 2 * MiB + 100),
  );
  failing = 1;
  const { body: stream } = await fetchStream(server.url("disk.raw"), options);
  assertSameBytes(
    new Uint8Array(await new Response(stream).arrayBuffer()),
    body,
  );
  assert.strictEqual(server.requests.length, 3 + 4 + 2);
  failing = 4;
  await assert.rejects(
    src.read(2 * MiB, 100),
    /^Error: Cannot read 100 bytes at 2097152 of http:\S+: the server answered 503 Service Unavailable \(4 attempts\)$/,
  );
});

qemuTest(
  "convert retries a 503 with its default pauses",
  async () => {
    await using dir = await tempDir();
    const raw = stamped(3 * MiB, 9);
    let failing = 2;
    await using server = serveFiles({ "disk.raw": raw }, {
      intercept: () => {
        if (failing === 0) return undefined;
        failing--;
        return new Response("busy", { status: 503 });
      },
    });
    const r = await runCli([
      "convert",
      "-q",
      server.url("disk.raw"),
      join(dir.path, "out.raw"),
    ]);
    assert.strictEqual(r.code, 0, r.stderr);
    assertSameBytes(await Deno.readFile(join(dir.path, "out.raw")), raw);
    assert.deepStrictEqual(server.requests.slice(0, 3), [
      "GET disk.raw bytes=0-1048575",
      "GET disk.raw bytes=0-1048575",
      "GET disk.raw bytes=0-1048575",
    ]);
  },
);

Deno.test("fetchStream refuses to resume a resource whose ETag or size changed, or a resume at another offset", async () => {
  const body = stamped(2 * MiB, 10);
  for (const change of ["etag", "size", "offset"] as const) {
    let calls = 0;
    await using server = serveFiles({}, {
      intercept: (req) => {
        calls++;
        const resume = req.headers.has("range");
        const headers = new Headers({
          etag: change === "etag" && resume ? '"v2"' : '"v1"',
        });
        if (!resume) {
          // The first answer breaks after 1 MiB.
          let sent = false;
          headers.set("content-length", String(body.length));
          return new Response(
            new ReadableStream({
              pull(controller) {
                if (sent) return controller.error(new Error("cut"));
                controller.enqueue(body.slice(0, MiB));
                sent = true;
              },
            }),
            { headers },
          );
        }
        const from = change === "offset" ? MiB - 512 : MiB;
        const total = change === "size" ? body.length + 1 : body.length;
        headers.set("content-range", `bytes ${from}-${total - 1}/${total}`);
        return new Response(body.slice(from), { status: 206, headers });
      },
    });
    const { body: stream } = await fetchStream(server.url("d"), {
      retryDelays: [1],
    });
    const why = {
      etag:
        /it changed on the server while being read \(ETag "v1" became "v2"\)$/,
      size: /its size changed from 2097152 to 2097153 bytes$/,
      offset:
        /the transfer broke after 1048576 bytes, and the server resumed it at 1048064$/,
    }[change];
    await assert.rejects(new Response(stream).arrayBuffer(), why);
    assert.strictEqual(calls, 2);
  }
});

Deno.test("openImage() resolves a backing file's relative name against the URL that answered", async () => {
  const base = stamped(MiB, 11);
  // Every cluster reads as the backing file does: none is stored.
  await using backing = await openImage(base);
  const top = await convertToBytes(base, {
    backingFile: { name: "base.raw", format: "raw" },
    backingImage: backing,
    workers: 0,
  });
  await using mirror = serveFiles({ "a/top.qcow2": top, "a/base.raw": base });
  await using front = serveFiles({ "base.raw": stamped(MiB, 0xbad) }, {
    redirects: { "top.qcow2": mirror.url("a/top.qcow2") },
  });
  await using image = await openImage(front.url("top.qcow2"), {
    http: { retryDelays: [] },
  });
  assertSameBytes(await image.readAt(0, MiB), base);
  assert.deepStrictEqual(front.requests, ["GET top.qcow2 bytes=0-1048575"]);
  assert.ok(mirror.requests.some((r) => r.startsWith("GET a/base.raw")));
});

Deno.test("openImage() refuses a backing file that any opener got from another origin", async () => {
  const base = stamped(MiB, 12);
  await using backing = await openImage(base);
  const top = await convertToBytes(base, {
    backingFile: { name: "base.raw", format: "raw" },
    backingImage: backing,
    workers: 0,
  });
  await using elsewhere = serveFiles({ "secret.raw": stamped(MiB, 0x5ec2e7) });
  await using server = serveFiles({ "img/top.qcow2": top }, {
    redirects: { "img/base.raw": elsewhere.url("secret.raw") },
  });
  // An opener of the caller's that follows any redirect: the gate judges
  // what it returns on the URL that answered.
  const follows = (path: string) => HttpSource.open(path, { retryDelays: [] });
  for (const format of ["auto", "qcow2"] as const) {
    await assert.rejects(
      openImage(server.url("img/top.qcow2"), { format, openSource: follows }),
      (err: Qcow2Error) => {
        assert.strictEqual(err.code, "UNTRUSTED_REFERENCE");
        assert.match(
          err.message,
          /^Cannot open backing file "http:\S+\/img\/base\.raw": it was answered by http:\S+\/secret\.raw, on another origin than http:\/\/127\.0\.0\.1:\d+$/,
        );
        return true;
      },
    );
  }
});
