// HttpSource's read window (lib/io/_http_window.ts): reads that run
// forward through a resource fetch the next pieces ahead, several
// requests at once on connections of their own, within a fixed budget.
// Judged against qemu-img on a server that caps each connection's
// bandwidth and delays each answer (an object store, a CDN), and against
// servers that answer the window's requests wrongly: each is a one-line
// error naming the URL and the range, never bytes.

import assert from "node:assert";
import { join } from "node:path";
import { mulberry32 } from "../../lib/_prng.ts";
import { IoError } from "../../lib/format/errors.ts";
import { MERGE_MAX } from "../../lib/io/_http.ts";
import {
  ReadWindow,
  WINDOW_PIECE,
  WINDOW_PIECES,
} from "../../lib/io/_http_window.ts";
import { HttpSource } from "../../lib/io/http_source.ts";
import {
  DEFAULT_CHUNK,
  readAheadBudget,
} from "../../lib/reader/_read_ahead.ts";
import { qemuImg, qemuTest, run, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { deferredWindow, fillPiece } from "./_pieces.ts";
import { serveFiles } from "./_server.ts";

const MiB = 1024 * 1024;

/**
 * The most bytes the expansion may ask for at once: the window's pieces,
 * the reader's read-ahead (the pieces its reads still wait for), and one
 * request of reads merged outside the window.
 */
const ASKED_AT_MOST = WINDOW_PIECES * WINDOW_PIECE +
  readAheadBudget(DEFAULT_CHUNK).remoteBytes + MERGE_MAX;

/**
 * A raw disk of `size` bytes whose 64 KiB clusters are pseudo-random in
 * their first half and zeros in the second: zstd halves it, no more.
 */
async function halfRandomDisk(path: string, size: number): Promise<void> {
  const next = mulberry32(26);
  const bytes = new Uint8Array(size);
  const words = new Uint32Array(bytes.buffer);
  const cluster = 64 * 1024 / 4;
  for (let i = 0; i < words.length; i += cluster) {
    for (let j = i; j < i + cluster / 2; j++) words[j] = next();
  }
  await Deno.writeFile(path, bytes);
}

qemuTest(
  "convert expands a qcow2 image from a server that caps each connection, on several connections at once, with qemu-img's bytes",
  async () => {
    await using dir = await tempDir();
    const raw = join(dir.path, "disk.raw");
    await halfRandomDisk(raw, 192 * MiB);
    const image = join(dir.path, "disk.qcow2");
    const zstd = "convert -f raw -O qcow2 -c -o compression_type=zstd";
    await qemuImg(...zstd.split(" "), raw, image);
    const expected = join(dir.path, "expected.raw");
    await qemuImg("convert", "-f", "qcow2", "-O", "raw", image, expected);
    const size = (await Deno.stat(image)).size;
    assert.ok(size > ASKED_AT_MOST, `image of ${size} bytes`);

    await using server = serveFiles({ "disk.qcow2": image }, {
      latency: 20,
      connectionRate: 40e6,
    });
    const out = join(dir.path, "out.raw");
    const args = ["convert", "-q", "-f", "qcow2", "-O", "raw"];
    const r = await runCli([...args, server.url("disk.qcow2"), out]);
    assert.strictEqual(r.code, 0, r.stderr);
    await run("cmp", [expected, out]);
    const seen = server.connections;
    assert.ok(seen.seen > 1 && seen.maxConcurrent > 1, JSON.stringify(seen));
    // Bounded by the budget, not by the image.
    assert.ok(seen.maxBytesAsked <= ASKED_AT_MOST, JSON.stringify(seen));
    assert.ok(server.bytesSent < size + MERGE_MAX, `${server.bytesSent} sent`);

    // Without Range support: the one answer, streamed.
    await using plain = serveFiles({ "disk.qcow2": image }, {
      ranges: false,
      latency: 20,
      connectionRate: 40e6,
    });
    await Deno.remove(out);
    const p = await runCli([...args, plain.url("disk.qcow2"), out]);
    assert.strictEqual(p.code, 0, p.stderr);
    await run("cmp", [expected, out]);
    assert.deepStrictEqual(plain.requests, ["GET disk.qcow2 bytes=0-1048575"]);
    assert.strictEqual(plain.connections.seen, 1);
  },
);

/** A 206 answer for `bytes=A-B` of `body`, with `headers` added. */
function partial(
  body: Uint8Array,
  range: string,
  headers: Record<string, string> = {},
): Response {
  const m = /^bytes=(\d+)-(\d+)$/.exec(range)!;
  const [a, b] = [Number(m[1]), Math.min(Number(m[2]), body.length - 1)];
  return new Response(body.slice(a, b + 1), {
    status: 206,
    headers: {
      "content-range": `bytes ${a}-${b}/${body.length}`,
      ...headers,
    },
  });
}

/** Where the window's first piece starts: the first forward read. */
const FROM = 2 * MiB;

/**
 * Opens a 24 MiB resource on a server whose answers to requests from
 * FROM on are `hostile`'s, reads forward from FROM until a read fails,
 * and returns that error.
 */
async function windowFailure(
  hostile: (
    req: Request,
    body: Uint8Array,
    done: Promise<void>,
  ) => Response | Promise<Response>,
  options: { idleTimeout?: number } = {},
): Promise<IoError> {
  const body = new Uint8Array(24 * MiB).map((_, i) => (i * 7 + 5) % 251);
  const done = Promise.withResolvers<void>();
  await using server = serveFiles({ "disk.raw": body }, {
    intercept(req) {
      const range = req.headers.get("range") ?? "";
      const start = Number(/^bytes=(\d+)-/.exec(range)?.[1] ?? 0);
      if (start < FROM) return partial(body, range, { etag: '"v1"' });
      return hostile(req, body, done.promise);
    },
  });
  await using src = await HttpSource.open(server.url("disk.raw"), {
    retryDelays: [],
    idleTimeout: options.idleTimeout,
  });
  try {
    for (let at = FROM; at < body.length; at += MiB) {
      const got = await src.read(at, MiB);
      // Never wrong bytes: a read that resolves holds the resource's.
      assert.deepStrictEqual(got, body.subarray(at, at + MiB));
    }
  } catch (err) {
    assert.ok(err instanceof IoError, String(err));
    assert.doesNotMatch(err.message, /\n/);
    assert.ok(err.message.includes(server.url("disk.raw")), err.message);
    return err;
  } finally {
    done.resolve();
  }
  assert.fail("every read succeeded");
}

Deno.test("HttpSource fails a read from its window in one line naming the URL and the range, never with other bytes", async (t) => {
  const range = (req: Request) => req.headers.get("range")!;
  const at = `${WINDOW_PIECE} bytes at ${FROM} of`;
  await t.step("a 206 for another range than asked", async () => {
    const err = await windowFailure((req, body) => {
      const start = Number(/^bytes=(\d+)-/.exec(range(req))![1]);
      return partial(body, `bytes=${start + 512}-${start + WINDOW_PIECE}`, {
        etag: '"v1"',
      });
    });
    assert.match(err.message, new RegExp(`${at} .*sent bytes from`));
  });
  await t.step("a body shorter than asked", async () => {
    const err = await windowFailure((req, body) => {
      const answer = partial(body, range(req), { etag: '"v1"' });
      return new Response(
        answer.body!.pipeThrough(
          new TransformStream({
            transform(chunk, c) {
              c.enqueue(chunk.subarray(0, 1000));
              c.terminate();
            },
          }),
        ),
        answer,
      );
    });
    assert.match(err.message, new RegExp(`${at} .*transfer ended after`));
  });
  await t.step("a changed ETag", async () => {
    const err = await windowFailure((req, body) =>
      partial(body, range(req), { etag: '"v2"' })
    );
    assert.strictEqual(err.code, "CHANGED");
    assert.match(err.message, new RegExp(`${at} .*ETag "v1" became "v2"`));
  });
  await t.step("a changed length", async () => {
    const err = await windowFailure((req, body) =>
      partial(body.subarray(0, body.length - 1), range(req), { etag: '"v1"' })
    );
    assert.strictEqual(err.code, "CHANGED");
    assert.match(err.message, new RegExp(`${at} .*size changed`));
  });
  await t.step("a redirect to another origin", async () => {
    const err = await windowFailure(() =>
      new Response(null, {
        status: 302,
        headers: { location: "http://127.0.0.2:9/disk.raw" },
      })
    );
    assert.match(err.message, new RegExp(`${at} .*another origin`));
  });
  await t.step("a server that stops answering", async () => {
    const err = await windowFailure(
      (_req, _body, done) => done.then(() => new Response(null)),
      { idleTimeout: 300 },
    );
    assert.strictEqual(err.code, "TIMEOUT");
    assert.match(err.message, new RegExp(`${at} .*no data came for 0.3 s`));
  });
});

Deno.test("ReadWindow opens after 1 MiB read forward, holds at most WINDOW_PIECES pieces, and leaves reads behind or far ahead to the caller", async () => {
  const size = 128 * MiB;
  const calls: [number, number][] = [];
  const window = new ReadWindow(size, (offset, into) => {
    calls.push([offset, into.length]);
    return fillPiece(into, offset, (at) => at % 251);
  });
  const check = async (offset: number, length: number) => {
    const got = await window.read(offset, length);
    assert.ok(got, `read at ${offset} answered by the window`);
    assert.strictEqual(got.length, length);
    for (let i = 0; i < length; i += 4099) {
      assert.strictEqual(got[i], (offset + i) % 251, `byte ${offset + i}`);
    }
  };
  const half = MiB / 2;
  assert.strictEqual(window.read(0, half), undefined);
  assert.strictEqual(calls.length, 0);
  // 1 MiB read one after the other: the window opens where this read is.
  await check(half, half);
  assert.deepStrictEqual(
    calls,
    Array.from({ length: WINDOW_PIECES }, (_, k) => [
      half + k * WINDOW_PIECE,
      WINDOW_PIECE,
    ]),
  );
  // Forward, a little out of order, across pieces: pieces follow, bounded.
  for (let at = MiB; at < 40 * MiB; at += 3 * MiB) {
    await check(at + MiB, MiB);
    await check(at, MiB + 7);
    assert.ok(window.held <= WINDOW_PIECES, `${window.held} pieces held`);
  }
  assert.ok(
    calls.every(([o, n], i) =>
      o === half + i * WINDOW_PIECE && n === Math.min(WINDOW_PIECE, size - o)
    ),
    JSON.stringify(calls),
  );
  // Behind the window: the caller's; far ahead: the window closes.
  assert.strictEqual(window.read(0, 4096), undefined);
  assert.ok(window.held > 0);
  assert.strictEqual(window.read(size - 4096, 4096), undefined);
  assert.strictEqual(window.held, 0);
});

Deno.test("ReadWindow fetches nothing ahead while WINDOW_PIECES requests are out, pieces dropped by a jump included", async () => {
  const { window, answers } = deferredWindow(1024 * MiB, () => 0);
  const first = window.read(0, MiB);
  assert.strictEqual(answers.length, WINDOW_PIECES);
  // Far ahead: the window closes, its requests still out; 1 MiB read from
  // there opens it again with only the piece that read needs.
  assert.strictEqual(window.read(512 * MiB, 4096), undefined);
  const second = window.read(512 * MiB + 4096, MiB);
  assert.strictEqual(answers.length, WINDOW_PIECES + 1);
  for (const answer of answers) answer();
  assert.strictEqual((await first)!.length, MiB);
  assert.strictEqual((await second)!.length, MiB);
  // With the requests answered, the next read fetches ahead again.
  await window.read(512 * MiB + 4096 + MiB, MiB);
  assert.strictEqual(answers.length, 2 * WINDOW_PIECES);
});
