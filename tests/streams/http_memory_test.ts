// Memory behind HttpSource: the read window's blocks go round instead of
// being left to the collector and stay within a budget, reads get copies
// (in the caller's buffer with readInto), and a body is read into the
// caller's memory whether the runtime's fetch gives a byte stream (BYOB
// reads) or plain chunks.

import assert from "node:assert";
import { mulberry32 } from "../../lib/_prng.ts";
import {
  ReadWindow,
  WINDOW_BLOCK,
  WINDOW_MEMORY,
  WINDOW_PIECE,
  WINDOW_PIECES,
} from "../../lib/io/_http_window.ts";
import { HttpSource } from "../../lib/io/http_source.ts";
import { isRemote } from "../../lib/io/source.ts";
import { deferredWindow, fillPiece } from "./_pieces.ts";
import { serveFiles } from "./_server.ts";

const MiB = 1024 * 1024;

/** `size` pseudo-random bytes. */
function randomBytes(size: number, seed: number): Uint8Array {
  const next = mulberry32(seed);
  const words = new Uint32Array(Math.ceil(size / 4));
  for (let i = 0; i < words.length; i++) words[i] = next();
  return new Uint8Array(words.buffer, 0, size);
}

Deno.test("ReadWindow fetches into a few blocks that go round, and a read's bytes stay its own", async () => {
  const size = 96 * MiB;
  const byte = (at: number) => (at * 7 + (at >> 16)) % 251;
  const buffers = new Set<ArrayBufferLike>();
  const window = new ReadWindow(
    size,
    (offset, into) => fillPiece(into, offset, byte, buffers),
  );
  assert.strictEqual(window.read(0, MiB / 2), undefined);
  const kept: [number, Uint8Array][] = [];
  const into = new Uint8Array(MiB + 9);
  for (let at = MiB / 2; at + 2 * MiB < size; at += 2 * MiB) {
    const got = await window.read(at, MiB + 9);
    assert.ok(got, `read at ${at} answered by the window`);
    kept.push([at, got]);
    const same = await window.read(at + MiB, MiB + 9, into);
    assert.ok(
      same && same.buffer === into.buffer,
      "read into the buffer given",
    );
    for (let i = 0; i < same.length; i += 4093) {
      assert.strictEqual(same[i], byte(at + MiB + i));
    }
  }
  // Every piece of 96 MiB fetched into the window's budget of blocks, and
  // the pieces outside it: the one kept behind the reads, the one read and
  // the next.
  assert.ok(
    buffers.size <= (WINDOW_MEMORY + 3 * WINDOW_PIECE) / WINDOW_BLOCK,
    `${buffers.size} blocks for ${Math.ceil(size / WINDOW_PIECE)} pieces`,
  );
  // Bytes read long ago were copies: no later piece wrote over them.
  for (const [at, got] of kept) {
    for (let i = 0; i < got.length; i += 4093) {
      assert.strictEqual(got[i], byte(at + i), `byte ${at + i}`);
    }
  }
});

Deno.test("ReadWindow keeps a piece's buffer while a read waits for it, after a jump dropped the piece", async () => {
  const { window, answers } = deferredWindow(
    256 * MiB,
    (at) => Math.floor(at / WINDOW_PIECE) + 1,
  );
  const first = window.read(0, MiB)!;
  // A jump drops every piece while the first read still waits for piece 0.
  assert.strictEqual(window.read(200 * MiB, 4096), undefined);
  assert.strictEqual(window.held, 0);
  const second = window.read(200 * MiB + 4096, MiB)!;
  for (const answer of answers) answer();
  assert.deepStrictEqual(await first, new Uint8Array(MiB).fill(1));
  assert.ok((await second).every((b) => b === 0 || b > 1));
});

Deno.test("ReadWindow holds at most WINDOW_MEMORY of blocks for pieces ahead: their bodies wait until the reads come near", async () => {
  let held = 0;
  let most = 0;
  const bodies: Promise<void>[] = [];
  const window = new ReadWindow(256 * MiB, (offset, into) => {
    // Every request answers at once; each block taken is counted.
    const body = (async () => {
      for (let at = 0; at < into.length;) {
        const region = await into.region(at, into.length - at);
        if (at % WINDOW_BLOCK === 0) most = Math.max(most, ++held);
        region.fill(offset % 251);
        at += region.length;
      }
    })();
    bodies.push(body);
    return body;
  });
  // The reads stop after the first piece: the pieces ahead fill the budget
  // (the piece read and the next one aside), then wait.
  await window.read(0, MiB);
  await window.read(MiB, MiB);
  await new Promise((r) => setTimeout(r, 50));
  const limit = (WINDOW_MEMORY + 2 * WINDOW_PIECE) / WINDOW_BLOCK;
  assert.ok(most <= limit, `${most} blocks held, at most ${limit}`);
  assert.ok(most * WINDOW_BLOCK < WINDOW_PIECES * WINDOW_PIECE);
  // Reads running on let the waiting pieces come.
  for (let at = 2 * MiB; at < 40 * MiB; at += MiB) {
    const got = await window.read(at, MiB);
    const want = (Math.floor(at / WINDOW_PIECE) * WINDOW_PIECE) % 251;
    assert.ok(got?.every((b) => b === want), `bytes at ${at}`);
  }
  window.clear();
  await Promise.all(bodies); // dropped pieces read their bodies to the end
});

/** A fetch whose bodies come as plain chunks of odd sizes, not a byte stream. */
function chunkedFetch(chunk: number): typeof fetch {
  return async (input, init) => {
    const res = await fetch(input, init);
    const body = res.body;
    if (!body) return res;
    const reader = body.getReader();
    let held = new Uint8Array(0);
    const stream = new ReadableStream<Uint8Array>({
      async pull(controller) {
        while (held.length < chunk) {
          const { value, done } = await reader.read();
          if (done) {
            if (held.length > 0) controller.enqueue(held);
            controller.close();
            return;
          }
          const joined = new Uint8Array(held.length + value.length);
          joined.set(held);
          joined.set(value, held.length);
          held = joined;
        }
        controller.enqueue(held.slice(0, chunk));
        held = held.slice(chunk);
      },
      cancel: (reason) => reader.cancel(reason),
    });
    return new Response(stream, { status: res.status, headers: res.headers });
  };
}

Deno.test("HttpSource.readInto gives read()'s bytes, from the first bytes, the window and merged requests, over byte-stream and chunked bodies", async () => {
  const size = 40 * MiB + 12345;
  const bytes = randomBytes(size, 7);
  await using server = serveFiles({ "disk.raw": bytes });
  for (const fetcher of [undefined, chunkedFetch(100_003)]) {
    await using src = await HttpSource.open(server.url("disk.raw"), {
      fetch: fetcher,
    });
    assert.strictEqual(isRemote(src), true);
    const into = new Uint8Array(3 * MiB);
    const check = async (offset: number, length: number) => {
      const n = await src.readInto(offset, into.subarray(0, length));
      const want = Math.max(0, Math.min(length, size - offset));
      assert.strictEqual(n, want, `bytes at ${offset}`);
      assert.deepStrictEqual(
        into.subarray(0, n),
        bytes.subarray(offset, offset + n),
        `bytes at ${offset}`,
      );
      assert.deepStrictEqual(
        await src.read(offset, length),
        bytes.subarray(offset, offset + want),
      );
    };
    await check(100, 4000); // the first bytes
    await check(30 * MiB, 5000); // a request of its own
    for (let at = MiB; at < 20 * MiB; at += 3 * MiB - 77) {
      await check(at, 3 * MiB - 77); // the window
    }
    await check(size - 1000, 3000); // past the end
    assert.strictEqual(await src.readInto(size, into), 0);
  }
});
