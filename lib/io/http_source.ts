/**
 * Reading images over HTTP(S) with Range requests.
 *
 * @module
 */

import type { RandomAccessSource } from "./source.ts";

/**
 * Options of {@linkcode HttpSource.open}.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { HttpSourceOptions } from "./http_source.ts";
 * const o: HttpSourceOptions = { headers: { authorization: "Bearer x" } };
 * assert.ok(o.headers);
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
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { RangeNotSupportedError } from "./http_source.ts";
 * assert.strictEqual(new RangeNotSupportedError("x").name, "RangeNotSupportedError");
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

function describe(url: string, status: number, statusText: string): string {
  return `${url} answered ${status}${statusText ? " " + statusText : ""}`;
}

/**
 * A {@linkcode RandomAccessSource} over an HTTP(S) resource: every read is
 * one `Range` request, so opening a qcow2 image fetches only its metadata
 * and the clusters read.
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

  private constructor(url: string, size: number, options: HttpSourceOptions) {
    this.name = url;
    this.size = size;
    this.#options = options;
  }

  /**
   * Asks the server for the resource's size with a one-byte range request.
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
    const res = await request(url, 0, 1, options);
    if (res.status === 416) {
      // An empty resource: nothing satisfies bytes=0-0.
      await res.body?.cancel();
      const total = /\*\/(\d+)/.exec(res.headers.get("content-range") ?? "");
      if (total && Number(total[1]) === 0) {
        return new HttpSource(url, 0, options);
      }
    }
    if (res.status !== 206) {
      await res.body?.cancel();
      if (res.ok) {
        throw new RangeNotSupportedError(
          `Cannot read ${url} at random offsets: the server ignored a Range request`,
        );
      }
      throw new Error(
        `Cannot fetch ${describe(url, res.status, res.statusText)}`,
      );
    }
    const range = parseContentRange(res.headers.get("content-range"));
    await res.body?.cancel();
    if (!range || range.total === undefined) {
      throw new RangeNotSupportedError(
        `Cannot read ${url} at random offsets: the server did not give the total size`,
      );
    }
    return new HttpSource(url, range.total, options);
  }

  /**
   * Reads `length` bytes at `offset` with one Range request.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns The bytes (shorter at the end of the resource).
   */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const want = Math.max(0, Math.min(length, this.size - offset));
    if (want === 0) return new Uint8Array(0);
    const res = await request(this.name, offset, want, this.#options);
    if (res.status !== 206) {
      await res.body?.cancel();
      if (res.ok) {
        throw new RangeNotSupportedError(
          `Cannot read ${this.name}: the server ignored a Range request`,
        );
      }
      throw new Error(
        `Cannot read ${want} bytes at ${offset}: ${
          describe(this.name, res.status, res.statusText)
        }`,
      );
    }
    const range = parseContentRange(res.headers.get("content-range"));
    if (range && range.start !== offset) {
      await res.body?.cancel();
      throw new RangeNotSupportedError(
        `Cannot read ${this.name}: asked for bytes from ${offset}, the server sent bytes from ${range.start}`,
      );
    }
    let bytes: Uint8Array;
    try {
      bytes = new Uint8Array(await res.arrayBuffer());
    } catch (err) {
      throw new Error(
        `Cannot read ${want} bytes at ${offset} of ${this.name}: ${
          (err as Error).message
        }`,
        {
          cause: err,
        },
      );
    }
    if (bytes.length < want) {
      throw new Error(
        `Cannot read ${want} bytes at ${offset} of ${this.name}: the transfer ended after ${bytes.length} bytes`,
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
    throw new Error(`Cannot fetch ${url}: ${(err as Error).message}`, {
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
): Promise<{ body: ReadableStream<Uint8Array>; size: number | undefined }> {
  let res: Response;
  const headers = new Headers(options.headers);
  headers.set("accept-encoding", "identity");
  try {
    res = await (options.fetch ?? fetch)(url, {
      headers,
      signal: options.signal,
    });
  } catch (err) {
    throw new Error(`Cannot fetch ${url}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!res.ok || !res.body) {
    await res.body?.cancel();
    throw new Error(
      `Cannot fetch ${describe(url, res.status, res.statusText)}`,
    );
  }
  const length = res.headers.get("content-length");
  const size = length !== null && /^\d+$/.test(length)
    ? Number(length)
    : undefined;
  // Name the URL in transfer errors, and check the length on the way: a
  // transfer cut short must not look complete.
  let seen = 0;
  const reader = res.body.getReader();
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
          {
            cause: err,
          },
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
