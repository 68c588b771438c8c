/**
 * Reading images over HTTP(S) with Range requests.
 *
 * @module
 */

import type { RandomAccessSource } from "./source.ts";
import { ioReason } from "./_errors.ts";

/**
 * Options of {@linkcode HttpSource.open}.
 *
 * @example Send a token with every request
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource } from "./http_source.ts";
 * await using server = Deno.serve({ port: 0, onListen() {} }, (req) =>
 *   req.headers.get("authorization") === "Bearer t"
 *     ? new Response("abcd".slice(0, 2), { status: 206, headers: { "content-range": "bytes 0-1/4" } })
 *     : new Response(null, { status: 401 }));
 * const url = `http://localhost:${server.addr.port}/disk`;
 * await assert.rejects(HttpSource.open(url), /401/);
 * await using src = await HttpSource.open(url, { headers: { authorization: "Bearer t" } });
 * assert.strictEqual(src.size, 4);
 * ```
 */
export interface HttpSourceOptions {
  /** Extra request headers (for example authorization). */
  headers?: HeadersInit;
  /** The fetch function to use. @default {globalThis.fetch} */
  fetch?: typeof fetch;
  /** Aborts every request. */
  signal?: AbortSignal;
}

/**
 * The server cannot serve byte ranges of the resource, or answered a range
 * request with the wrong range.
 *
 * @example A server that ignores Range
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource, RangeNotSupportedError } from "./http_source.ts";
 * await using server = Deno.serve({ port: 0, onListen() {} }, () => new Response("whole body"));
 * await assert.rejects(HttpSource.open(`http://localhost:${server.addr.port}/`), RangeNotSupportedError);
 * ```
 */
export class RangeNotSupportedError extends Error {
  /**
   * Creates the error.
   *
   * @param message What the server did.
   */
  constructor(message: string) {
    super(message);
    this.name = "RangeNotSupportedError";
  }
}

/** Whether a string is an http(s) URL. */
export function isHttpUrl(name: string): boolean {
  return /^https?:\/\//i.test(name);
}

/** What the server answered: "the server answered 404 Not Found". */
function answered(res: Response): string {
  return `the server answered ${res.status}${
    res.statusText ? " " + res.statusText : ""
  }`;
}

/**
 * Bytes asked for by the request that opens a resource: enough for the
 * format detection, the qcow2 header and its extensions, and in an image
 * QEMU made with clusters up to 128 KiB also its refcount table, L1 table
 * and first L2 table (at 64 to 320 KiB with 64 KiB clusters, to 640 KiB
 * with 128 KiB ones), so that opening an image costs one round trip. At
 * 100 MB/s the extra bytes cost about 10 ms, less than a round trip to a
 * distant server.
 */
const PREFIX_BYTES = 1024 * 1024;

/**
 * Reads closer together than this (bytes between them) go out as one
 * request: at 100 MB/s, 256 KiB cost less than a round trip of a few ms.
 */
const MERGE_GAP = 256 * 1024;

/** The largest merged request, in bytes. */
const MERGE_MAX = 16 * 1024 * 1024;

/** A read waiting for its batch to be sent. */
interface PendingRead {
  offset: number;
  length: number;
  resolve: (bytes: Uint8Array) => void;
  reject: (err: unknown) => void;
}

/**
 * A {@linkcode RandomAccessSource} over an HTTP(S) resource: opening it is
 * one `Range` request for its first 1 MiB, and reads beyond them go out
 * as Range requests, those asked for together merged when they are close, so reading a qcow2 image fetches only its metadata and the clusters
 * read.
 *
 * @example Read a range from a local server
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource } from "./http_source.ts";
 * const body = new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]);
 * await using server = Deno.serve({ port: 0, onListen() {} }, (req) => {
 *   const m = /bytes=(\d+)-(\d+)/.exec(req.headers.get("range") ?? "")!;
 *   const [a, b] = [Number(m[1]), Number(m[2])];
 *   return new Response(body.slice(a, b + 1), {
 *     status: 206,
 *     headers: { "content-range": `bytes ${a}-${b}/${body.length}` },
 *   });
 * });
 * await using src = await HttpSource.open(`http://localhost:${server.addr.port}/disk`);
 * assert.strictEqual(src.size, 8);
 * assert.deepStrictEqual(await src.read(2, 3), new Uint8Array([2, 3, 4]));
 * ```
 */
export class HttpSource implements RandomAccessSource, AsyncDisposable {
  /** The URL. */
  readonly name: string;
  /** Size of the resource in bytes. */
  readonly size: number;
  #options: HttpSourceOptions;
  #prefix: Uint8Array;
  #batch: PendingRead[] = [];

  private constructor(
    url: string,
    size: number,
    prefix: Uint8Array,
    options: HttpSourceOptions,
  ) {
    this.name = url;
    this.size = size;
    this.#prefix = prefix;
    this.#options = options;
  }

  /**
   * Opens the resource with one Range request for its first 1 MiB, which
   * gives the size and answers the reads that fall inside them (format
   * detection, the qcow2 header) without more requests.
   *
   * @param url The resource.
   * @param options Headers, fetch, signal.
   * @returns The source.
   * @throws {RangeNotSupportedError} When the server ignores ranges.
   * @throws {Error} When the request fails (`Cannot fetch URL: ...`).
   */
  static async open(
    url: string,
    options: HttpSourceOptions = {},
  ): Promise<HttpSource> {
    const opened = await HttpSource.openOrStream(url, options);
    if (opened instanceof HttpSource) return opened;
    await opened.body.cancel();
    throw new RangeNotSupportedError(
      `Cannot read ${url} at random offsets: the server ignored a Range request`,
    );
  }

  /**
   * Opens the resource like {@linkcode HttpSource.open}, with the same one
   * request; when the server does not serve ranges, its answer is the whole
   * resource, and that body is returned to be streamed instead of being
   * dropped and fetched again.
   *
   * @param url The resource.
   * @param options Headers, fetch, signal.
   * @returns A source, or the body and its length when the server gave one.
   * @throws {Error} When the request fails or the status is not 2xx.
   *
   * @example Stream from a server without Range support
   * ```ts
   * import assert from "node:assert";
   * import { HttpSource } from "./http_source.ts";
   * await using server = Deno.serve({ port: 0, onListen() {} }, () => new Response("abc"));
   * const opened = await HttpSource.openOrStream(`http://localhost:${server.addr.port}/`);
   * assert.ok(!(opened instanceof HttpSource));
   * assert.strictEqual(await new Response(opened.body).text(), "abc");
   * ```
   */
  static async openOrStream(
    url: string,
    options: HttpSourceOptions = {},
  ): Promise<HttpSource | HttpBody> {
    const res = await request(url, 0, PREFIX_BYTES, options);
    if (res.status === 416) {
      // An empty resource: no range of it can be satisfied.
      await res.body?.cancel();
      const total = /\*\/(\d+)/.exec(res.headers.get("content-range") ?? "");
      if (total && Number(total[1]) === 0) {
        return new HttpSource(url, 0, new Uint8Array(0), options);
      }
    }
    if (res.ok && res.status !== 206 && res.body) {
      // Ranges are not served: this response is the whole resource.
      return bodyStream(url, res);
    }
    if (res.status !== 206) {
      await res.body?.cancel();
      throw new Error(`Cannot fetch ${url}: ${answered(res)}`);
    }
    const range = parseContentRange(res.headers.get("content-range"));
    if (!range || range.total === undefined || range.start !== 0) {
      await res.body?.cancel();
      throw new RangeNotSupportedError(
        `Cannot read ${url} at random offsets: the server ${
          range?.start ? "sent another range" : "did not give the total size"
        }`,
      );
    }
    const prefix = await bodyPrefix(
      res,
      Math.min(range.end + 1, PREFIX_BYTES),
      `Cannot read the first bytes of ${url}`,
    );
    return new HttpSource(url, range.total, prefix, options);
  }

  /**
   * Reads `length` bytes at `offset`: from the bytes fetched when opening
   * when they hold the range, else with one Range request.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns The bytes (shorter at the end of the resource).
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    const want = Math.max(0, Math.min(length, this.size - offset));
    if (want === 0) return Promise.resolve(new Uint8Array(0));
    if (offset + want <= this.#prefix.length) {
      return Promise.resolve(this.#prefix.slice(offset, offset + want));
    }
    // Reads asked for together (a reader running ahead) wait for the end of
    // this turn of the event loop, then go out merged where they are close:
    // on a distant server, round trips cost more than a few extra bytes.
    return new Promise((resolve, reject) => {
      if (this.#batch.length === 0) setTimeout(() => this.#flush(), 0);
      this.#batch.push({ offset, length: want, resolve, reject });
    });
  }

  #flush(): void {
    const batch = this.#batch.sort((a, b) => a.offset - b.offset);
    this.#batch = [];
    let group: PendingRead[] = [];
    let start = 0;
    let end = 0;
    const send = () => {
      if (group.length === 0) return;
      const reads = group;
      const from = start;
      this.#fetchRange(from, end - from).then((bytes) => {
        // Each read gets a view of the one response: copying each piece
        // cost 174 of 1128 ms reading an image with extended L2 entries
        // (many small pieces). Nothing here transfers what it reads (the
        // codec pool copies payloads into its own buffers).
        for (const r of reads) {
          const at = r.offset - from;
          r.resolve(bytes.subarray(at, at + r.length));
        }
      }, (err) => {
        for (const r of reads) r.reject(err);
      });
      group = [];
    };
    for (const r of batch) {
      const rEnd = r.offset + r.length;
      if (
        group.length > 0 && r.offset <= end + MERGE_GAP &&
        Math.max(end, rEnd) - start <= MERGE_MAX
      ) {
        group.push(r);
        end = Math.max(end, rEnd);
        continue;
      }
      send();
      group = [r];
      start = r.offset;
      end = rEnd;
    }
    send();
  }

  /** One Range request for `[offset, offset + want)`. */
  async #fetchRange(offset: number, want: number): Promise<Uint8Array> {
    const res = await request(this.name, offset, want, this.#options);
    const what = `Cannot read ${want} bytes at ${offset} of ${this.name}`;
    if (res.status !== 206) {
      await res.body?.cancel();
      if (res.ok) {
        throw new RangeNotSupportedError(
          `${what}: the server ignored a Range request`,
        );
      }
      throw new Error(`${what}: ${answered(res)}`);
    }
    const range = parseContentRange(res.headers.get("content-range"));
    if (range && range.start !== offset) {
      await res.body?.cancel();
      throw new RangeNotSupportedError(
        `${what}: the server sent bytes from ${range.start}`,
      );
    }
    const bytes = await bodyBytes(res, what);
    if (bytes.length < want) {
      throw new Error(
        `${what}: the transfer ended after ${bytes.length} bytes`,
      );
    }
    return bytes.length === want ? bytes : bytes.subarray(0, want);
  }

  /** Nothing to release (each read is its own request). */
  close(): void {}

  /** Same as {@linkcode HttpSource.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return Promise.resolve();
  }
}

async function request(
  url: string,
  offset: number,
  length: number,
  options: HttpSourceOptions,
): Promise<Response> {
  const headers = new Headers(options.headers);
  headers.set("range", `bytes=${offset}-${offset + length - 1}`);
  // Compressed transfer encodings would change the byte offsets.
  headers.set("accept-encoding", "identity");
  try {
    return await (options.fetch ?? fetch)(url, {
      headers,
      signal: options.signal,
    });
  } catch (err) {
    throw new Error(`Cannot fetch ${url}: ${ioReason(err)}`, {
      cause: err,
    });
  }
}

function parseContentRange(
  value: string | null,
): { start: number; end: number; total?: number } | undefined {
  const m = value
    ? /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(value.trim())
    : null;
  if (!m) return undefined;
  return {
    start: Number(m[1]),
    end: Number(m[2]),
    total: m[3] === "*" ? undefined : Number(m[3]),
  };
}

/**
 * A resource's body as a stream, and its length when the server gave one.
 *
 * @example A transfer cut short fails
 * ```ts
 * import assert from "node:assert";
 * import { fetchStream } from "./http_source.ts";
 * await using server = Deno.serve({ port: 0, onListen() {} }, () =>
 *   new Response(ReadableStream.from([new TextEncoder().encode("ab")]), { headers: { "content-length": "5" } }));
 * const { body } = await fetchStream(`http://localhost:${server.addr.port}/`);
 * await assert.rejects(new Response(body).arrayBuffer());
 * ```
 */
export interface HttpBody {
  /** The bytes; transfer errors name the URL, and a short transfer fails. */
  body: ReadableStream<Uint8Array>;
  /** Content-Length, when given. */
  size: number | undefined;
}

/**
 * The first `max` bytes of a response's body (the rest is dropped, should a
 * server send more than was asked for), its errors naming what was read.
 */
async function bodyPrefix(
  res: Response,
  max: number,
  what: string,
): Promise<Uint8Array> {
  const out = new Uint8Array(max);
  let have = 0;
  const reader = res.body!.getReader();
  try {
    while (have < max) {
      const { value, done } = await reader.read();
      if (done) break;
      const take = Math.min(value.length, max - have);
      out.set(value.subarray(0, take), have);
      have += take;
    }
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
  } finally {
    await reader.cancel().catch(() => {});
  }
  return out.subarray(0, have);
}

/** The whole body of a response, its errors naming what was being read. */
async function bodyBytes(res: Response, what: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await res.arrayBuffer());
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Fetches a resource as a byte stream (for raw input, or a qcow2 image from
 * a server without Range support).
 *
 * @param url The resource.
 * @param options Headers, fetch, signal.
 * @returns The body stream and its length when the server gave one.
 * @throws {Error} When the request fails or the status is not 2xx.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { fetchStream } from "./http_source.ts";
 * await using server = Deno.serve({ port: 0, onListen() {} }, () => new Response("abc"));
 * const { body, size } = await fetchStream(`http://localhost:${server.addr.port}/`);
 * assert.strictEqual(size, 3);
 * assert.strictEqual(await new Response(body).text(), "abc");
 * ```
 */
export async function fetchStream(
  url: string,
  options: HttpSourceOptions = {},
): Promise<HttpBody> {
  let res: Response;
  const headers = new Headers(options.headers);
  headers.set("accept-encoding", "identity");
  try {
    res = await (options.fetch ?? fetch)(url, {
      headers,
      signal: options.signal,
    });
  } catch (err) {
    throw new Error(`Cannot fetch ${url}: ${ioReason(err)}`, {
      cause: err,
    });
  }
  if (!res.ok || !res.body) {
    await res.body?.cancel();
    throw new Error(`Cannot fetch ${url}: ${answered(res)}`);
  }
  return bodyStream(url, res);
}

/**
 * A 2xx response's body, checked on the way: transfer errors name the URL,
 * and a transfer cut short of Content-Length must not look complete.
 */
function bodyStream(url: string, res: Response): HttpBody {
  const length = res.headers.get("content-length");
  const size = length !== null && /^\d+$/.test(length)
    ? Number(length)
    : undefined;
  let seen = 0;
  const reader = res.body!.getReader();
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await reader.read();
      } catch (err) {
        throw new Error(
          `Cannot read ${url}: the transfer failed after ${seen} bytes (${
            (err as Error).message
          })`,
          { cause: err },
        );
      }
      if (next.done) {
        if (size !== undefined && seen !== size) {
          throw new Error(
            `Cannot read ${url}: the transfer ended after ${seen} of ${size} bytes`,
          );
        }
        controller.close();
        return;
      }
      seen += next.value.length;
      controller.enqueue(next.value);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
  return { body, size };
}
