/**
 * Reading images over HTTP(S) with Range requests.
 *
 * @module
 */

import { IoError } from "../format/errors.ts";
import type { RandomAccessSource } from "./source.ts";

export { DEFAULT_IDLE_TIMEOUT } from "./_http.ts";
import {
  type Answer,
  answered,
  bufferTarget,
  type ByteTarget,
  type ContentRange,
  Failure,
  HttpClient,
  MERGE_MAX,
  parseContentRange,
  readInto,
} from "./_http.ts";
import { ReadWindow } from "./_http_window.ts";

/**
 * Options of {@linkcode HttpSource.open} and {@linkcode fetchStream}.
 *
 * @example Send a token with every request
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource } from "./http_source.ts";
 * await using server = Deno.serve({ port: 0, onListen() {} }, (req) =>
 *   req.headers.get("authorization") === "Bearer t"
 *     ? new Response("abcd", { status: 206, headers: { "content-range": "bytes 0-3/4" } })
 *     : new Response(null, { status: 401 }));
 * const url = `http://localhost:${server.addr.port}/disk`;
 * await assert.rejects(HttpSource.open(url), /401/);
 * await using src = await HttpSource.open(url, { headers: { authorization: "Bearer t" } });
 * assert.strictEqual(src.size, 4);
 * ```
 *
 * @example Give up sooner on a server that stops sending
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource } from "./http_source.ts";
 * const silent = Promise.withResolvers<void>();
 * await using server = Deno.serve({ port: 0, onListen() {} }, async () => {
 *   await silent.promise;
 *   return new Response(null, { status: 500 });
 * });
 * const url = `http://localhost:${server.addr.port}/disk`;
 * await assert.rejects(
 *   HttpSource.open(url, { idleTimeout: 200, retryDelays: [] }),
 *   /no data came for 0.2 s/,
 * );
 * silent.resolve();
 * ```
 */
export interface HttpSourceOptions {
  /**
   * Extra request headers (for example authorization). Authorization,
   * Cookie and Proxy-Authorization go only to the origin of the URL
   * opened, not to another origin it redirects to.
   */
  headers?: HeadersInit;
  /** The fetch function to use. @default {globalThis.fetch} */
  fetch?: typeof fetch;
  /** Aborts every request. */
  signal?: AbortSignal;
  /**
   * How long a request may wait for its answer or the next bytes of its
   * body before it fails (`no data came for 30 s`), in milliseconds. It
   * bounds silences, not transfers: a long download that keeps moving
   * is never cut.
   * @default {30000}
   */
  idleTimeout?: number;
  /**
   * The pauses, in milliseconds, before each new attempt after a dropped
   * connection or a 5xx answer; a transfer that broke resumes from where
   * it stopped with a Range request, and a pause sequence starts over
   * once bytes came. `[]` tries once.
   * @default {[500, 1000, 2000]}
   */
  retryDelays?: readonly number[];
  /**
   * Refuse a redirect to another origin (scheme, host and port). The
   * reader sets it for the backing and data files an image names, which
   * must stay on the origin they were asked from.
   * @default {false}
   */
  stayOnOrigin?: boolean;
  /**
   * Fetch ahead of reads that run forward: once 1 MiB was read one read
   * after the other, the next pieces (4 MiB each, 8 requests at most) are
   * fetched before they are asked for, all at once on as many
   * connections; their bytes beyond the piece read and the next one are
   * held to 8 MiB (20 MiB in all, with the piece kept behind the reads).
   * Turn it off for a reader that skips ranges it does not want fetched
   * (`--sparsify` skips free space).
   * @default {true}
   */
  fetchAhead?: boolean;
}

/**
 * The settings of {@linkcode HttpSourceOptions} that may apply to every
 * URL of a backing chain (`OpenImageOptions.http`, the tools' `http`):
 * idle timeout, retries, fetch, signal. Headers are not among them: they
 * would go to every file an image names.
 *
 * @example Give up on any file of a chain after 5 s of silence
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource, type HttpTransport } from "./http_source.ts";
 * const http: HttpTransport = { idleTimeout: 5000, retryDelays: [100] };
 * await using server = Deno.serve({ port: 0, onListen() {} }, () =>
 *   new Response("ab", { status: 206, headers: { "content-range": "bytes 0-1/2" } }));
 * await using src = await HttpSource.open(`http://localhost:${server.addr.port}/`, http);
 * assert.strictEqual(src.size, 2);
 * ```
 */
export type HttpTransport = Pick<
  HttpSourceOptions,
  "idleTimeout" | "retryDelays" | "fetch" | "signal"
>;

/** Whether a string is an http(s) URL. */
export function isHttpUrl(name: string): boolean {
  return /^https?:\/\//i.test(name);
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
 * as Range requests, those asked for together merged when they are close,
 * so reading a qcow2 image fetches only its metadata and the clusters
 * read. Once reads run forward (1 MiB read one after the other), the next
 * pieces are fetched ahead of them: 4 MiB each, up to 8 requests in
 * flight at once on as many connections (their bytes held to 20 MiB), so
 * that a server capping each connection's bandwidth sends several times
 * faster.
 *
 * What a server sends is held to what was asked: redirects are followed
 * at most 10 times, to http(s) URLs only and never from https to http;
 * later requests go to the URL that answered the first one and stay on
 * its origin; only identity encoding is accepted; a body is read up to
 * the bytes asked for and no further; a Content-Range must start where
 * asked and give the same total; an ETag or Last-Modified that changes
 * between requests stops the reads. A silence longer than the idle
 * timeout fails; a dropped connection or a 5xx answer is retried from
 * where it stopped.
 *
 * @example Read a range from a local server
 * ```ts
 * import assert from "node:assert";
 * import { HttpSource } from "./http_source.ts";
 * const body = new Uint8Array([0, 1, 2, 3, 4, 5, 6, 7]);
 * await using server = Deno.serve({ port: 0, onListen() {} }, (req) => {
 *   const m = /bytes=(\d+)-(\d+)/.exec(req.headers.get("range") ?? "")!;
 *   const [a, b] = [Number(m[1]), Math.min(Number(m[2]), body.length - 1)];
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
  /** The URL as it was named (for messages). */
  readonly name: string;
  /** Size of the resource in bytes. */
  readonly size: number;
  #client: HttpClient;
  #prefix: Uint8Array;
  #batch: PendingRead[] = [];
  /** Pieces fetched ahead of reads that run forward, unless turned off. */
  #window: ReadWindow | undefined;
  /** Aborts the window's requests when the source is closed. */
  #closing = new AbortController();

  private constructor(
    client: HttpClient,
    size: number,
    prefix: Uint8Array,
    fetchAhead: boolean,
  ) {
    this.name = client.name;
    this.size = size;
    this.#client = client;
    this.#prefix = prefix;
    this.#window = fetchAhead
      ? new ReadWindow(
        size,
        (offset, into) => this.#fetchInto(offset, into, this.#closing.signal),
      )
      : undefined;
  }

  /**
   * Every read not answered from bytes already fetched is a request over
   * the network: readers ask for more at once, and further ahead.
   */
  get remote(): true {
    return true;
  }

  /**
   * Whether the source fetches ahead of reads that run forward (its read
   * window; the `fetchAhead` option): a reader keeps fewer reads of its
   * own ahead.
   *
   * @returns False when opened with `fetchAhead: false`.
   *
   * @example A source opened for skipping reads fetches nothing ahead
   * ```ts
   * import assert from "node:assert";
   * import { HttpSource } from "./http_source.ts";
   * await using server = Deno.serve({ port: 0, onListen() {} }, () =>
   *   new Response("ab", { status: 206, headers: { "content-range": "bytes 0-1/2" } }));
   * const url = `http://localhost:${server.addr.port}/`;
   * await using src = await HttpSource.open(url, { fetchAhead: false });
   * assert.strictEqual(src.fetchesAhead, false);
   * ```
   */
  get fetchesAhead(): boolean {
    return this.#window !== undefined;
  }

  /**
   * The URL that answered when the resource was opened, after redirects:
   * where later requests go, and what the names an image gives resolve
   * against.
   *
   * @example Follow a download link
   * ```ts
   * import assert from "node:assert";
   * import { HttpSource } from "./http_source.ts";
   * await using server = Deno.serve({ port: 0, onListen() {} }, (req) =>
   *   new URL(req.url).pathname === "/latest"
   *     ? Response.redirect(new URL("/v2/disk.raw", req.url), 302)
   *     : new Response("ab", { status: 206, headers: { "content-range": "bytes 0-1/2" } }));
   * await using src = await HttpSource.open(`http://localhost:${server.addr.port}/latest`);
   * assert.strictEqual(new URL(src.url).pathname, "/v2/disk.raw");
   * ```
   */
  get url(): string {
    return this.#client.url;
  }

  /**
   * Opens the resource with one Range request for its first 1 MiB, which
   * gives the size and answers the reads that fall inside them (format
   * detection, the qcow2 header) without more requests.
   *
   * @param url The resource.
   * @param options Headers, fetch, signal, idle timeout, retries.
   * @returns The source.
   * @throws {IoError} `RANGE_NOT_SUPPORTED` when the server ignores ranges;
   * else when the request fails (`Cannot fetch URL: ...`): an answer that
   * is not 2xx (`HTTP`), a redirect the rules refuse (`HTTP`), an encoded
   * body (`HTTP`), a silence longer than the idle timeout (`TIMEOUT`),
   * network failures past the retries (`NETWORK`, `fetch`'s error as
   * `cause`).
   * @throws {RangeError} For an idle timeout or retry delay out of range.
   */
  static async open(
    url: string,
    options: HttpSourceOptions = {},
  ): Promise<HttpSource> {
    const opened = await HttpSource.openOrStream(url, options);
    if (opened instanceof HttpSource) return opened;
    await opened.body.cancel();
    throw new IoError(
      "RANGE_NOT_SUPPORTED",
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
   * @param options Headers, fetch, signal, idle timeout, retries.
   * @returns A source, or the body, its length when the server gave one,
   * and the URL that answered.
   * @throws {RangeError} For an idle timeout or retry delay out of range.
   * @throws {IoError} When the request fails or the status is not 2xx.
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
    const client = new HttpClient(url, options);
    const what = `Cannot fetch ${url}`;
    const first = await client.retrying(
      what,
      () => client.send(`bytes=0-${PREFIX_BYTES - 1}`),
    );
    const res = first.res;
    if (res.status === 416) {
      // An empty resource: no range of it can be satisfied.
      await first.close();
      const total = /\*\/(\d+)/.exec(res.headers.get("content-range") ?? "");
      if (total && Number(total[1]) === 0) {
        return new HttpSource(client, 0, new Uint8Array(0), false);
      }
    }
    if (res.ok && res.status !== 206) {
      // Ranges are not served: this response is the whole resource.
      return bodyOf(client, first);
    }
    if (res.status !== 206) {
      await first.close();
      throw new IoError("HTTP", `${what}: ${answered(res)}`);
    }
    const range = parseContentRange(res.headers.get("content-range"));
    if (
      !range || range.total === undefined || range.start !== 0 ||
      range.end >= range.total
    ) {
      await first.close();
      throw new IoError(
        "RANGE_NOT_SUPPORTED",
        `Cannot read ${url} at random offsets: the server ${
          range?.start ? "sent another range" : "did not give the total size"
        }`,
      );
    }
    // The first bytes as the first answer brings them (no more than were
    // asked for), the rest, should it break, with more Range requests.
    const prefix = new Uint8Array(Math.min(range.total, PREFIX_BYTES));
    await readRange(client, 0, prefix, range.total, what, first);
    return new HttpSource(
      client,
      range.total,
      prefix,
      options.fetchAhead ?? true,
    );
  }

  /**
   * Reads `length` bytes at `offset`: from the bytes fetched when opening
   * when they hold the range, else with one Range request.
   *
   * @param offset Start offset.
   * @param length Bytes wanted.
   * @returns The bytes (shorter at the end of the resource).
   * @throws {IoError} When the request fails (`Cannot read N bytes at X of
   * URL: ...`), the server ignores the range, or the resource changed.
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    const want = Math.max(0, Math.min(length, this.size - offset));
    if (want === 0) return Promise.resolve(new Uint8Array(0));
    if (offset + want <= this.#prefix.length) {
      return Promise.resolve(this.#prefix.slice(offset, offset + want));
    }
    // Reads running forward are answered from pieces fetched ahead,
    // several at a time (one connection each).
    const ahead = this.#window?.read(offset, want);
    if (ahead) return ahead;
    return this.#batched(offset, want);
  }

  /**
   * Reads `into.length` bytes at `offset` into `into`, as
   * {@linkcode HttpSource.read} reads them: the bytes fetched ahead are
   * copied from the window's pieces, whose memory goes round, instead of
   * being handed out in a new buffer.
   *
   * @param offset Start offset.
   * @param into Where the bytes go.
   * @returns The number of bytes read (fewer at the end of the resource).
   * @throws {IoError} As {@linkcode HttpSource.read}.
   *
   * @example Read into a buffer used again
   * ```ts
   * import assert from "node:assert";
   * import { HttpSource } from "./http_source.ts";
   * const body = new Uint8Array(64).map((_, i) => i);
   * await using server = Deno.serve({ port: 0, onListen() {} }, (req) => {
   *   const m = /bytes=(\d+)-(\d+)/.exec(req.headers.get("range") ?? "")!;
   *   const [a, b] = [Number(m[1]), Math.min(Number(m[2]), body.length - 1)];
   *   return new Response(body.slice(a, b + 1), {
   *     status: 206,
   *     headers: { "content-range": `bytes ${a}-${b}/${body.length}` },
   *   });
   * });
   * await using src = await HttpSource.open(`http://localhost:${server.addr.port}/disk`);
   * const into = new Uint8Array(8);
   * assert.strictEqual(await src.readInto(60, into), 4);
   * assert.deepStrictEqual(into.subarray(0, 4), new Uint8Array([60, 61, 62, 63]));
   * ```
   */
  async readInto(offset: number, into: Uint8Array): Promise<number> {
    const want = Math.max(0, Math.min(into.length, this.size - offset));
    if (want === 0) return 0;
    if (offset + want <= this.#prefix.length) {
      into.set(this.#prefix.subarray(offset, offset + want));
      return want;
    }
    const ahead = this.#window?.read(offset, want, into);
    if (ahead) return (await ahead).length;
    into.set(await this.#batched(offset, want));
    return want;
  }

  /** A read outside the window, merged with the reads asked for with it. */
  #batched(offset: number, want: number): Promise<Uint8Array> {
    // Reads asked for together (a reader running ahead) wait for the end of
    // this turn of the event loop, then go out merged where they are close:
    // on a distant server, round trips cost more than a few extra bytes.
    return new Promise((resolve, reject) => {
      if (this.#batch.length === 0) setTimeout(() => this.#flush(), 0);
      this.#batch.push({ offset, length: want, resolve, reject });
    });
  }

  /**
   * The whole resource as a byte stream, in one request to the URL that
   * answered when it was opened (for reading it through, where Range
   * requests of a few MiB would cost round trips). A transfer that breaks
   * resumes with a Range request from where it stopped.
   *
   * @returns The body, the size and the URL.
   * @throws {IoError} When the request fails, or the resource is not the
   * one opened (`CHANGED`: another size, ETag or Last-Modified).
   *
   * @example Read a resource through after probing its first bytes
   * ```ts
   * import assert from "node:assert";
   * import { HttpSource } from "./http_source.ts";
   * const body = "0123456789";
   * await using server = Deno.serve({ port: 0, onListen() {} }, (req) => {
   *   const m = /bytes=(\d+)-(\d+)/.exec(req.headers.get("range") ?? "");
   *   if (!m) return new Response(body);
   *   const [a, b] = [Number(m[1]), Math.min(Number(m[2]), body.length - 1)];
   *   return new Response(body.slice(a, b + 1), {
   *     status: 206,
   *     headers: { "content-range": `bytes ${a}-${b}/${body.length}` },
   *   });
   * });
   * await using src = await HttpSource.open(`http://localhost:${server.addr.port}/disk`);
   * const { body: stream, size } = await src.stream();
   * assert.strictEqual(size, 10);
   * assert.strictEqual(await new Response(stream).text(), body);
   * ```
   */
  async stream(): Promise<HttpBody> {
    const client = this.#client;
    const what = `Cannot fetch ${this.name}`;
    const first = await client.retrying(what, async () => {
      const answer = await client.send(undefined);
      const length = answer.res.headers.get("content-length");
      const problem = answer.res.status !== 200
        ? new Failure(answered(answer.res), false, "HTTP")
        : length !== null && Number(length) !== this.size
        ? new Failure(
          `its size changed from ${this.size} to ${length} bytes`,
          false,
          "CHANGED",
        )
        : undefined;
      if (problem !== undefined) {
        await answer.close();
        throw problem;
      }
      return answer;
    });
    return bodyOf(client, first, this.size);
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

  /** `[offset, offset + want)`, with Range requests. */
  async #fetchRange(offset: number, want: number): Promise<Uint8Array> {
    const into = new Uint8Array(want);
    await this.#fetchInto(offset, into);
    return into;
  }

  /** Fills `into` with the bytes at `offset`, with Range requests. */
  #fetchInto(
    offset: number,
    into: Uint8Array | ByteTarget,
    signal?: AbortSignal,
  ): Promise<void> {
    return readRange(
      this.#client,
      offset,
      into,
      this.size,
      `Cannot read ${into.length} bytes at ${offset} of ${this.name}`,
      undefined,
      signal,
    );
  }

  /** Stops the requests fetching ahead (a read waiting for one fails). */
  close(): void {
    this.#closing.abort(new Error("source closed"));
    this.#window?.clear();
  }

  /**
   * Same as {@linkcode HttpSource.close}, and waits for the requests
   * fetching ahead to end.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    const pending = this.#window?.pending() ?? [];
    this.close();
    await Promise.allSettled(pending);
  }
}

/**
 * Fills `into` with the bytes at `offset` of a resource of `total` bytes:
 * one Range request, and more when the answer is shorter or breaks (each
 * from where the last stopped). `first` is an answer already received for
 * the start of the range. A body is never read past the range asked for.
 */
async function readRange(
  client: HttpClient,
  offset: number,
  bytes: Uint8Array | ByteTarget,
  total: number,
  what: string,
  first?: Answer,
  signal?: AbortSignal,
): Promise<void> {
  const into = bytes instanceof Uint8Array ? bufferTarget(bytes) : bytes;
  let have = 0;
  let pending = first;
  while (have < into.length) {
    await client.retrying(what, async () => {
      const from = offset + have;
      const last = offset + into.length - 1;
      const answer = pending ??
        await client.send(`bytes=${from}-${last}`, signal);
      pending = undefined;
      const range = await rangeOf(answer, from, total, what);
      // Bytes past the range asked for are not read.
      const stop = Math.min(range.end, last) + 1 - offset;
      const before = have;
      await readInto(answer, into, have, stop, (n) => {
        have += n;
      });
      if (have < stop) {
        throw new Failure(
          `the transfer ended after ${have - before} of the ${
            stop - before
          } bytes the server announced`,
          true,
          "NETWORK",
        );
      }
    }, () => have);
  }
}

/**
 * The range an answer to a Range request for bytes from `from` holds:
 * a 206 whose Content-Range starts there, of a resource of `total` bytes.
 */
async function rangeOf(
  answer: Answer,
  from: number,
  total: number,
  what: string,
): Promise<ContentRange> {
  const res = answer.res;
  const header = res.headers.get("content-range");
  const range = res.status === 206 ? parseContentRange(header) : undefined;
  if (range && range.start === from && range.total === total) return range;
  await answer.close();
  if (res.status !== 206) {
    if (res.ok) {
      throw new IoError(
        "RANGE_NOT_SUPPORTED",
        `${what}: the server ignored a Range request`,
      );
    }
    throw new Failure(answered(res), false, "HTTP");
  }
  if (range && range.start !== from) {
    throw new IoError(
      "RANGE_NOT_SUPPORTED",
      `${what}: the server sent bytes from ${range.start}`,
    );
  }
  if (range?.total !== undefined) {
    throw new Failure(
      `its size changed from ${total} to ${range.total} bytes`,
      false,
      "CHANGED",
    );
  }
  throw new Failure(
    `the server answered 206 with Content-Range ${
      header === null ? "missing" : `"${header}"`
    }, not a range of the ${total} bytes`,
    false,
    "HTTP",
  );
}

/**
 * A resource's body as a stream, its length when the server gave one,
 * and the URL that answered.
 *
 * @example A transfer cut short fails
 * ```ts
 * import assert from "node:assert";
 * import { fetchStream } from "./http_source.ts";
 * await using server = Deno.serve({ port: 0, onListen() {} }, () =>
 *   new Response(ReadableStream.from([new TextEncoder().encode("ab")]), { headers: { "content-length": "5" } }));
 * const { body } = await fetchStream(`http://localhost:${server.addr.port}/`, { retryDelays: [] });
 * await assert.rejects(new Response(body).arrayBuffer());
 * ```
 */
export interface HttpBody {
  /**
   * The bytes; a transfer that breaks resumes with a Range request from
   * where it stopped, and fails (naming the URL) when it cannot.
   */
  body: ReadableStream<Uint8Array>;
  /** Content-Length, when given. */
  size: number | undefined;
  /** The URL that answered, after redirects. */
  url: string;
}

/**
 * Fetches a resource as a byte stream (for raw input, or a qcow2 image from
 * a server without Range support), under the same rules as
 * {@linkcode HttpSource}: redirects, identity encoding, idle timeout. A
 * dropped connection resumes with a Range request from where it stopped;
 * a server that then answers 200 (it cannot resume) or another resource
 * (another size, ETag or Last-Modified) fails the stream.
 *
 * @param url The resource.
 * @param options Headers, fetch, signal, idle timeout, retries.
 * @returns The body stream, its length when the server gave one, and the
 * URL that answered.
 * @throws {RangeError} For an idle timeout or retry delay out of range.
 * @throws {IoError} When the request fails or the status is not 2xx.
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
  const client = new HttpClient(url, options);
  const first = await client.retrying(`Cannot fetch ${url}`, async () => {
    const answer = await client.send(undefined);
    if (!answer.res.ok || !answer.res.body) {
      await answer.close();
      throw new Failure(answered(answer.res), false, "HTTP");
    }
    return answer;
  });
  return bodyOf(client, first);
}

/**
 * The body of a 2xx answer for the whole resource, as a stream that
 * resumes where it broke; `size` is the resource's size when known
 * (else the answer's Content-Length).
 */
function bodyOf(client: HttpClient, first: Answer, size?: number): HttpBody {
  const length = first.res.headers.get("content-length");
  const total = size ??
    (length !== null && /^\d{1,16}$/.test(length) ? Number(length) : undefined);
  const what = `Cannot read ${client.name}`;
  let seen = 0;
  let current: Answer | undefined = first;
  const next = async (): Promise<Uint8Array | undefined> => {
    try {
      current ??= await resume(client, seen, total);
      const chunk = await current.next();
      if (chunk.done) {
        await current.close();
        current = undefined;
        if (total !== undefined && seen < total) {
          throw new Failure(
            `the transfer ended after ${seen} of ${total} bytes`,
            true,
            "NETWORK",
          );
        }
        return undefined;
      }
      // Never more than the resource's size.
      return total === undefined
        ? chunk.value
        : chunk.value.subarray(0, total - seen);
    } catch (err) {
      await current?.close();
      current = undefined;
      throw err;
    }
  };
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const chunk = await client.retrying(what, next, () => seen);
      if (chunk === undefined) {
        controller.close();
        return;
      }
      seen += chunk.length;
      controller.enqueue(chunk);
      if (seen === total) {
        await current?.close();
        current = undefined;
        controller.close();
      }
    },
    cancel: async () => {
      await current?.close();
      current = undefined;
    },
  }, { highWaterMark: 0 });
  return { body, size: total, url: client.url };
}

/**
 * A new answer for the rest of a resource whose transfer broke after
 * `seen` bytes: a Range request from there, which must be answered with
 * that range of a resource of the same size.
 */
async function resume(
  client: HttpClient,
  seen: number,
  total: number | undefined,
): Promise<Answer> {
  const answer = await client.send(seen === 0 ? undefined : `bytes=${seen}-`);
  const res = answer.res;
  const range = parseContentRange(res.headers.get("content-range"));
  const problem = !res.ok
    ? new Failure(answered(res), false, "HTTP")
    : seen === 0
    ? undefined
    : res.status !== 206
    ? new Failure(
      `the transfer broke after ${seen} bytes, and the server answered ${res.status} to a Range request for the rest: it cannot resume`,
      false,
      "RANGE_NOT_SUPPORTED",
    )
    : range?.start !== seen
    ? new Failure(
      `the transfer broke after ${seen} bytes, and the server resumed it at ${
        range?.start ?? "an unknown offset"
      }`,
      false,
      "HTTP",
    )
    : total !== undefined && range.total !== undefined && range.total !== total
    ? new Failure(
      `its size changed from ${total} to ${range.total} bytes`,
      false,
      "CHANGED",
    )
    : undefined;
  if (problem !== undefined) {
    await answer.close();
    throw problem;
  }
  return answer;
}
