// The requests behind HttpSource and fetchStream, made so that a server
// cannot abuse them: redirects are followed here (at most MAX_REDIRECTS,
// http(s) only, never from https down to http, and for a request that must
// stay on its origin never to another one); only identity encoding is
// accepted; every wait for the network has an idle timeout; a body is read
// up to the bytes asked for and no further; a dropped connection or a 5xx
// answer is tried again after a pause, from where it stopped.

import { IoError, type IoErrorCode } from "../format/errors.ts";
import { ioCode, ioReason } from "./os_errors.ts";

/**
 * The largest request that reads are merged into, in bytes: `HttpSource`
 * merges reads asked for together up to this, and `--sparsify` asks a
 * remote source for this much at once.
 */
export const MERGE_MAX = 16 * 1024 * 1024;

/** The most redirects one request follows. */
export const MAX_REDIRECTS = 10;

/**
 * How long a request may wait for its answer or the next bytes of its
 * body, by default, in milliseconds.
 */
export const DEFAULT_IDLE_TIMEOUT = 30_000;

/** Pauses before the second, third and fourth attempts, in ms. */
export const DEFAULT_RETRY_DELAYS: readonly number[] = [500, 1000, 2000];

/** The longest timer a runtime keeps (setTimeout's 32-bit limit), in ms. */
const MAX_TIMER = 2 ** 31 - 1;

/** The most retries accepted in `retryDelays`. */
const MAX_RETRIES = 100;

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

/**
 * Request headers that carry credentials: sent to the origin of the URL
 * they were given with, never to another origin a redirect leads to.
 */
const CREDENTIAL_HEADERS = ["authorization", "cookie", "proxy-authorization"];

/** How requests are made (the fields of `HttpSourceOptions`). */
export interface RequestOptions {
  headers?: HeadersInit;
  fetch?: typeof fetch;
  signal?: AbortSignal;
  idleTimeout?: number;
  retryDelays?: readonly number[];
  stayOnOrigin?: boolean;
}

/**
 * Why an attempt failed, in words that follow "Cannot read ... of URL: ".
 * `retry` says whether another attempt may succeed (a dropped connection,
 * a 5xx answer); `code` is the IoError's code it becomes. Private to this
 * folder: {@linkcode HttpClient.retrying} turns it into an IoError.
 */
export class Failure extends Error {
  readonly retry: boolean;
  readonly code: IoErrorCode;
  constructor(
    reason: string,
    retry: boolean,
    code: IoErrorCode,
    cause?: unknown,
  ) {
    super(reason, { cause });
    this.retry = retry;
    this.code = code;
  }
}

/** What the server answered: "the server answered 404 Not Found". */
export function answered(res: Response): string {
  return `the server answered ${res.status}${
    res.statusText ? " " + res.statusText : ""
  }`;
}

/** A `Content-Range: bytes START-END/TOTAL` header, TOTAL maybe `*`. */
export interface ContentRange {
  start: number;
  end: number;
  total: number | undefined;
}

/** Parses Content-Range; undefined when absent or not a byte range. */
export function parseContentRange(
  value: string | null,
): ContentRange | undefined {
  const m = value
    ? /^bytes\s+(\d{1,16})-(\d{1,16})\/(\d{1,16}|\*)$/i.exec(value.trim())
    : null;
  if (!m) return undefined;
  const range = {
    start: Number(m[1]),
    end: Number(m[2]),
    total: m[3] === "*" ? undefined : Number(m[3]),
  };
  return range.end < range.start ? undefined : range;
}

/**
 * Aborts a request when no bytes come for `ms`: armed only while waiting
 * for the network, so a consumer that reads slowly is not taken for a
 * silent server.
 */
class Watchdog {
  readonly signal: AbortSignal;
  #controller = new AbortController();
  #ms: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #expired = false;

  constructor(ms: number, outer: AbortSignal | undefined) {
    this.#ms = ms;
    this.signal = outer
      ? AbortSignal.any([outer, this.#controller.signal])
      : this.#controller.signal;
  }

  /** Waits for `promise`, for at most the idle timeout. */
  async wait<T>(promise: Promise<T>): Promise<T> {
    this.#timer = setTimeout(() => {
      this.#expired = true;
      this.#controller.abort(new Error("idle timeout"));
    }, this.#ms);
    try {
      return await promise;
    } catch (err) {
      if (this.#expired) {
        throw new Failure(
          `no data came for ${this.#ms / 1000} s`,
          false,
          "TIMEOUT",
          err,
        );
      }
      throw err;
    } finally {
      clearTimeout(this.#timer);
    }
  }

  /** Releases the request (its body, if still open, is dropped). */
  stop(): void {
    clearTimeout(this.#timer);
    this.#controller.abort(new Error("request done"));
  }
}

/** One answer: the response, its body read through the watchdog. */
export interface Answer {
  res: Response;
  /** Reads the next chunk of the body, within the idle timeout. */
  next(): Promise<ReadableStreamReadResult<Uint8Array>>;
  /**
   * Reads the next bytes of the body into `into` (at most its length),
   * within the idle timeout: how many, 0 at the end. Not to be mixed
   * with `next()` on one answer.
   */
  fill(into: Uint8Array): Promise<number>;
  /** Drops what is left of the body. */
  close(): Promise<void>;
}

/** The ETag and Last-Modified of the first answer, to notice a change. */
interface Validators {
  etag: string | null;
  lastModified: string | null;
}

/**
 * Requests for one resource: where it was named, where it answered, and
 * how it may be reached. The first answer fixes the URL (after its
 * redirects); later requests go there, and may only be redirected within
 * its origin.
 */
export class HttpClient {
  /** The URL as named, for messages. */
  readonly name: string;
  #url: string;
  #settled = false;
  #headers: Headers;
  #credentialOrigin: string;
  #fetch: typeof fetch;
  #signal: AbortSignal | undefined;
  #idleTimeout: number;
  #retryDelays: readonly number[];
  #stayOnOrigin: boolean;
  #validators: Validators | undefined;

  /**
   * @throws {RangeError} For an idle timeout or a retry delay out of range.
   */
  constructor(name: string, options: RequestOptions) {
    const idle = options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT;
    if (!(idle > 0 && idle <= MAX_TIMER)) {
      throw new RangeError(
        `Cannot fetch ${name}: idleTimeout ${idle} ms is out of range (0, ${MAX_TIMER}]`,
      );
    }
    const delays = options.retryDelays ?? DEFAULT_RETRY_DELAYS;
    if (delays.length > MAX_RETRIES) {
      throw new RangeError(
        `Cannot fetch ${name}: retryDelays has ${delays.length} entries, more than ${MAX_RETRIES}`,
      );
    }
    for (const d of delays) {
      if (!(d >= 0 && d <= MAX_TIMER)) {
        throw new RangeError(
          `Cannot fetch ${name}: retry delay ${d} ms is out of range [0, ${MAX_TIMER}]`,
        );
      }
    }
    this.name = name;
    this.#url = name;
    this.#headers = new Headers(options.headers);
    this.#credentialOrigin = new URL(name).origin;
    this.#fetch = options.fetch ?? fetch;
    this.#signal = options.signal;
    this.#idleTimeout = idle;
    this.#retryDelays = delays;
    this.#stayOnOrigin = options.stayOnOrigin ?? false;
  }

  /** The URL that answered the first request, or the name before that. */
  get url(): string {
    return this.#url;
  }

  /**
   * Sends a GET for `range` (`bytes=START-END`, `bytes=START-`, or the
   * whole resource), following redirects as the rules allow. A 5xx answer
   * is a retryable failure; a 2xx answer in an encoding other than
   * identity, or from a resource that changed since the first answer, is
   * refused; any other answer is the caller's to judge.
   */
  async send(
    range: string | undefined,
    signal?: AbortSignal,
  ): Promise<Answer> {
    const start = this.#url;
    const origin = new URL(start).origin;
    // The first request may be redirected anywhere (download links are),
    // unless it asks for a file an image names; once a URL has answered,
    // requests stay on its origin.
    const keepOrigin = this.#settled || this.#stayOnOrigin;
    let url = start;
    for (let hops = 0;; hops++) {
      let answer = await this.#fetchOnce(url, range, "manual", signal);
      let res = answer.res;
      if (REDIRECT_STATUSES.has(res.status) && res.headers.has("location")) {
        await answer.close();
        url = this.#redirect(
          { start, from: url },
          res,
          hops,
          keepOrigin ? origin : undefined,
        );
        continue;
      }
      if (res.type === "opaqueredirect") {
        // A browser hides where a redirect leads until it has followed it
        // (and keeps other origins' answers from us unless they allow it):
        // there, the URL that answered is judged once it has.
        await answer.close();
        answer = await this.#fetchOnce(url, range, "follow", signal);
        res = answer.res;
        const to = res.url || url;
        try {
          this.#allowed(
            url === start ? "it" : url,
            new URL(url),
            new URL(to),
            keepOrigin ? origin : undefined,
          );
        } catch (err) {
          await answer.close();
          throw err;
        }
        url = to;
      }
      if (!this.#settled) {
        this.#url = url;
        this.#settled = true;
      }
      try {
        if (res.status >= 500) throw new Failure(answered(res), true, "HTTP");
        if (res.ok) {
          checkEncoding(res);
          this.#checkUnchanged(res);
        }
      } catch (err) {
        await answer.close();
        throw err;
      }
      return answer;
    }
  }

  /** Request headers: the caller's (credentials only to their origin), Range, identity. */
  #headersFor(url: string, range: string | undefined): Headers {
    const headers = new Headers(this.#headers);
    if (new URL(url).origin !== this.#credentialOrigin) {
      for (const name of CREDENTIAL_HEADERS) headers.delete(name);
    }
    if (range !== undefined) headers.set("range", range);
    else headers.delete("range");
    // An encoded body would not be the bytes of the resource (and offsets
    // into it would mean nothing).
    headers.set("accept-encoding", "identity");
    return headers;
  }

  /** Where a redirect leads, when the rules allow following it. */
  #redirect(
    { start, from }: { start: string; from: string },
    res: Response,
    hops: number,
    origin: string | undefined,
  ): string {
    const location = res.headers.get("location")!;
    let to: URL;
    try {
      to = new URL(location, from);
    } catch {
      throw new Failure(
        `${
          from === start ? "it" : from
        } answered ${res.status} with a Location that is not a URL ("${location}")`,
        false,
        "HTTP",
      );
    }
    const who = from === start ? "it" : from;
    if (hops + 1 > MAX_REDIRECTS) {
      throw new Failure(
        `${who} redirects to ${to.href}: more than ${MAX_REDIRECTS} redirects`,
        false,
        "HTTP",
      );
    }
    this.#allowed(who, new URL(from), to, origin);
    return to.href;
  }

  /**
   * Refuses a redirect from `from` to `to` that leaves http(s), goes from
   * https to plain http, or leaves `origin` when one must be kept.
   */
  #allowed(
    who: string,
    from: URL,
    to: URL,
    origin: string | undefined,
  ): void {
    const refuse = (why: string) =>
      new Failure(`${who} redirects to ${to.href}: ${why}`, false, "HTTP");
    if (to.protocol !== "http:" && to.protocol !== "https:") {
      throw refuse(`only http(s) URLs are followed`);
    }
    if (from.protocol === "https:" && to.protocol === "http:") {
      throw refuse(`it would leave https for plain http`);
    }
    if (origin !== undefined && to.origin !== origin) {
      throw refuse(
        this.#settled
          ? `another origin than ${origin}, which answered before`
          : `another origin than ${origin}, and a file an image names must stay on the origin it was asked from`,
      );
    }
  }

  /**
   * One fetch, within the idle timeout; a network failure may be retried.
   * `signal` aborts this request only (the client's signal aborts all).
   */
  async #fetchOnce(
    url: string,
    range: string | undefined,
    redirect: RequestRedirect,
    signal: AbortSignal | undefined,
  ): Promise<Answer> {
    const outer = signal && this.#signal
      ? AbortSignal.any([this.#signal, signal])
      : signal ?? this.#signal;
    const watch = new Watchdog(this.#idleTimeout, outer);
    try {
      const res = await watch.wait(this.#fetch(url, {
        headers: this.#headersFor(url, range),
        redirect,
        signal: watch.signal,
      }));
      return answerOf(res, watch);
    } catch (err) {
      watch.stop();
      if (err instanceof Failure) throw err;
      // fetch rejects with a TypeError when the network fails; anything
      // else (the caller's abort, a missing permission) is final.
      const network = err instanceof TypeError && !outer?.aborted;
      throw new Failure(
        ioReason(err),
        network,
        network ? "NETWORK" : ioCode(err),
        err,
      );
    }
  }

  /** Refuses an answer whose ETag or Last-Modified changed since the first. */
  #checkUnchanged(res: Response): void {
    const now = {
      etag: res.headers.get("etag"),
      lastModified: res.headers.get("last-modified"),
    };
    const was = this.#validators;
    if (!was) {
      this.#validators = now;
      return;
    }
    for (
      const [key, header] of [
        ["etag", "ETag"],
        ["lastModified", "Last-Modified"],
      ] as const
    ) {
      if (was[key] !== null && now[key] !== null && was[key] !== now[key]) {
        throw new Failure(
          `it changed on the server while being read (${header} ${
            was[key]
          } became ${now[key]})`,
          false,
          "CHANGED",
        );
      }
    }
  }

  /**
   * Runs `attempt` until it succeeds, trying again after each retryable
   * failure, with the pauses of `retryDelays`; an attempt that moved
   * `progress` forward starts the count again. Failures are worded
   * `${what}: ${reason}`, as an IoError with the failure's code and cause.
   */
  async retrying<T>(
    what: string,
    attempt: () => Promise<T>,
    progress: () => number = () => 0,
  ): Promise<T> {
    let failures = 0;
    let reached = progress();
    for (;;) {
      try {
        return await attempt();
      } catch (err) {
        if (!(err instanceof Failure)) throw err;
        if (progress() > reached) {
          reached = progress();
          failures = 0;
        }
        if (!err.retry || failures >= this.#retryDelays.length) {
          const tries = err.retry && failures > 0
            ? ` (${failures + 1} attempts)`
            : "";
          throw new IoError(err.code, `${what}: ${err.message}${tries}`, {
            cause: err.cause,
          });
        }
        await pause(this.#retryDelays[failures++], this.#signal);
      }
    }
  }
}

/**
 * Where a body's bytes go: one buffer, or pieces of memory taken as the
 * bytes come (the read window's pieces).
 */
export interface ByteTarget {
  /** Bytes it holds. */
  readonly length: number;
  /**
   * Memory for the bytes from `at` on: at least one, at most `max`; a
   * promise when the holder has none to give yet (the body waits).
   */
  region(at: number, max: number): Uint8Array | Promise<Uint8Array>;
}

/** A buffer as a {@linkcode ByteTarget}. */
export function bufferTarget(into: Uint8Array): ByteTarget {
  return {
    length: into.length,
    region: (at, max) => into.subarray(at, at + max),
  };
}

/**
 * Reads the body of `answer` into `into` from `at` until `end` or the
 * body ends, then drops the rest of the body: no more than asked for is
 * ever read. A transfer that breaks is a retryable failure.
 *
 * @returns The bytes read.
 */
export async function readInto(
  answer: Answer,
  into: ByteTarget,
  at: number,
  end: number,
  onBytes: (n: number) => void = () => {},
): Promise<number> {
  let have = at;
  try {
    while (have < end) {
      const n = await answer.fill(await into.region(have, end - have));
      if (n === 0) break;
      have += n;
      onBytes(n);
    }
  } finally {
    await answer.close();
  }
  return have - at;
}

/**
 * Bytes of the buffer a body is read into before being copied where it
 * goes (one per answer being read; Deno's fetch gives 64 KiB at most a
 * read).
 */
const FILL_BUFFER = 64 * 1024;

/** Those buffers, once their answer is read, for the next answers. */
const spareFillBuffers: ArrayBuffer[] = [];
/** The most kept. */
const SPARE_FILL_BUFFERS = 16;

/**
 * An answer whose body reads go through the watchdog.
 *
 * `fill()` reads a byte stream body (a runtime's fetch) with a BYOB
 * reader into one buffer, kept for the next answer, then copies: a default reader
 * hands out a new buffer for every chunk (64 KiB in Deno), and expanding
 * a 189 MB image over HTTP left a hundred MiB of those to the collector
 * at any time. A body that is not a byte stream is read by chunks, and
 * what does not fit in `into` is kept for the next call.
 */
function answerOf(res: Response, watch: Watchdog): Answer {
  const body = res.body;
  let reader:
    | ReadableStreamDefaultReader<Uint8Array>
    | ReadableStreamBYOBReader
    | undefined;
  let closed = false;
  let received = 0;
  /** With a BYOB reader: the buffer it reads into (moved by each read). */
  let scratch: ArrayBuffer | undefined;
  /** With a default reader: the rest of a chunk `into` had no room for. */
  let rest: Uint8Array | undefined;
  const read = async <T extends ArrayBufferView>(
    pending: Promise<ReadableStreamReadResult<T>>,
  ): Promise<ReadableStreamReadResult<T>> => {
    try {
      const next = await watch.wait(pending);
      if (!next.done) received += next.value.byteLength;
      return next;
    } catch (err) {
      if (err instanceof Failure || !(err instanceof TypeError)) throw err;
      throw new Failure(
        `the transfer broke after ${received} bytes (${ioReason(err)})`,
        true,
        "NETWORK",
        err,
      );
    }
  };
  const defaultReader = () =>
    (reader ??= body!.getReader()) as ReadableStreamDefaultReader<Uint8Array>;
  return {
    res,
    next() {
      if (!body || closed) {
        return Promise.resolve({ done: true, value: undefined });
      }
      return read(defaultReader().read());
    },
    async fill(into) {
      if (!body || closed || into.length === 0) return 0;
      if (reader === undefined) {
        try {
          reader = body.getReader({ mode: "byob" });
          scratch = spareFillBuffers.pop() ?? new ArrayBuffer(FILL_BUFFER);
        } catch {
          reader = body.getReader(); // not a byte stream
        }
      }
      if (scratch !== undefined) {
        const byob = reader as ReadableStreamBYOBReader;
        const view = new Uint8Array(
          scratch,
          0,
          Math.min(into.length, FILL_BUFFER),
        );
        const next = await read(byob.read(view));
        if (next.done) return 0;
        scratch = next.value.buffer as ArrayBuffer;
        into.set(next.value);
        return next.value.length;
      }
      let chunk = rest;
      rest = undefined;
      if (chunk === undefined) {
        const next = await read(defaultReader().read());
        if (next.done) return 0;
        chunk = next.value;
      }
      const n = Math.min(chunk.length, into.length);
      into.set(chunk.subarray(0, n));
      if (n < chunk.length) rest = chunk.subarray(n);
      return n;
    },
    async close() {
      if (closed) return;
      closed = true;
      // A buffer a read still holds is detached here (0 bytes): not kept.
      if (
        scratch?.byteLength === FILL_BUFFER &&
        spareFillBuffers.length < SPARE_FILL_BUFFERS
      ) spareFillBuffers.push(scratch);
      scratch = rest = undefined;
      await (reader ?? body?.getReader())?.cancel().catch(() => {});
      watch.stop();
    },
  };
}

/** Refuses a body in any encoding but identity. */
function checkEncoding(res: Response): void {
  const encoding = res.headers.get("content-encoding");
  if (encoding !== null && encoding.trim().toLowerCase() !== "identity") {
    throw new Failure(
      `the server sent it with Content-Encoding: ${encoding}, and only identity is accepted (encoded bytes are not the resource's bytes)`,
      false,
      "HTTP",
    );
  }
}

/** Waits `ms`, or until `signal` aborts. */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}
