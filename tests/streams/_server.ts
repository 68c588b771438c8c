// A loopback HTTP server for the stream tests and the HTTP benchmark
// (bench/_compare_http.ts): serves files with or without Range support,
// can fail in the middle of a transfer, redirect, or answer as a test's
// own handler says, and can play a distant object store: a pause before
// each answer, and each TCP connection's bandwidth capped (a token bucket
// per connection, as CDNs and object stores cap them).

export interface ServeOptions {
  /** Answer Range requests with 206 (default true). */
  ranges?: boolean;
  /** Cut the connection after this many body bytes of any response. */
  failAfter?: number;
  /** Send a Content-Length header (default true). */
  contentLength?: boolean;
  /**
   * Stop sending each response body after this many bytes, until
   * `resume()` (the client sees a transfer in progress for as long as the
   * test needs).
   */
  pauseAfter?: number;
  /**
   * Offsets into the served files at which the connection is cut, each
   * once: the response that reaches one sends the bytes before it and
   * breaks (a flaky network).
   */
  dropAt?: number[];
  /** Paths answered with `302` to the given Location. */
  redirects?: Record<string, string>;
  /**
   * Answers a request before the files do (a hostile server); undefined
   * lets the files answer.
   */
  intercept?: (
    req: Request,
    path: string,
  ) => Response | undefined | Promise<Response | undefined>;
  /** Milliseconds to wait before answering each request. */
  latency?: number;
  /**
   * Bytes per second each TCP connection may send (its body bytes, a
   * token bucket per connection holding at most a 64 KiB burst); no cap
   * when undefined.
   */
  connectionRate?: number;
}

/** What the server saw of the connections it answered on. */
export interface ConnectionStats {
  /** TCP connections that sent a request. */
  seen: number;
  /** The most connections with a request being answered at one time. */
  maxConcurrent: number;
  /**
   * The most bytes asked for at one time: the sizes of the ranges (or
   * whole files) of the requests being answered together.
   */
  maxBytesAsked: number;
}

export interface TestServer extends AsyncDisposable {
  url(name: string): string;
  /** Requests seen, as "METHOD path range". */
  requests: string[];
  /** Body bytes sent. */
  bytesSent: number;
  /** Lets paused responses (`pauseAfter`) continue. */
  resume(): void;
  /** Connections seen so far. */
  readonly connections: ConnectionStats;
  /** Forgets the requests, bytes and connections seen so far. */
  reset(): void;
}

/** Chunks a paced body is sent in, and the burst its bucket holds. */
const PACE_CHUNK = 64 * 1024;

/**
 * A token bucket per connection: `take(n)` resolves once the connection
 * may send `n` more bytes at `rate` bytes per second.
 */
class Pacer {
  #rate: number;
  /** When each connection's bucket is next full enough, in ms. */
  #ready = new Map<string, number>();

  constructor(rate: number) {
    if (!(rate > 0)) throw new RangeError(`connectionRate ${rate} is not > 0`);
    this.#rate = rate;
  }

  async take(connection: string, n: number): Promise<void> {
    const now = performance.now();
    const burst = (PACE_CHUNK / this.#rate) * 1000;
    const start = Math.max(now - burst, this.#ready.get(connection) ?? 0);
    const ready = start + (n / this.#rate) * 1000;
    this.#ready.set(connection, ready);
    if (ready > now) await new Promise((r) => setTimeout(r, ready - now));
  }
}

/** A served file: its bytes, or the path of a local file read as asked. */
export type Served = Uint8Array | string;

/** Reads `[start, start + length)` of a served file, a chunk at a time. */
interface Reader {
  read(at: number, length: number): Promise<Uint8Array>;
  close(): void;
}

function readerOf(file: Served): Reader {
  if (typeof file !== "string") {
    return {
      read: (at, length) => Promise.resolve(file.slice(at, at + length)),
      close() {},
    };
  }
  let opened: Deno.FsFile | undefined;
  return {
    async read(at, length) {
      opened ??= await Deno.open(file);
      await opened.seek(at, Deno.SeekMode.Start);
      const out = new Uint8Array(length);
      let have = 0;
      while (have < length) {
        const n = await opened.read(out.subarray(have));
        if (n === null) break;
        have += n;
      }
      return out.subarray(0, have);
    },
    close() {
      opened?.close();
      opened = undefined;
    },
  };
}

/**
 * Serves `files` (name → bytes, or the path of a local file) on 127.0.0.1
 * on a free port.
 */
export function serveFiles(
  files: Record<string, Served>,
  options: ServeOptions = {},
): TestServer {
  const ranges = options.ranges ?? true;
  const state = { requests: [] as string[], bytesSent: 0 };
  const pacer = options.connectionRate === undefined
    ? undefined
    : new Pacer(options.connectionRate);
  // Requests being answered, by connection ("address:port" of the client).
  const active = new Map<string, number>();
  const seen = new Set<string>();
  const stats = { maxConcurrent: 0, bytesAsked: 0, maxBytesAsked: 0 };
  const answering = (connection: string, bytes: number) => {
    seen.add(connection);
    active.set(connection, (active.get(connection) ?? 0) + 1);
    stats.maxConcurrent = Math.max(stats.maxConcurrent, active.size);
    stats.bytesAsked += bytes;
    stats.maxBytesAsked = Math.max(stats.maxBytesAsked, stats.bytesAsked);
    if (Deno.env.get("DEBUG_SERVE")) {
      console.error(
        `${
          performance.now().toFixed(0)
        } + ${connection} ${bytes} active ${active.size} asked ${stats.bytesAsked}`,
      );
    }
  };
  const answered = (connection: string, bytes: number) => {
    const n = active.get(connection)! - 1;
    if (n === 0) active.delete(connection);
    else active.set(connection, n);
    stats.bytesAsked -= bytes;
    if (Deno.env.get("DEBUG_SERVE")) {
      console.error(
        `${
          performance.now().toFixed(0)
        } - ${connection} ${bytes} active ${active.size} asked ${stats.bytesAsked}`,
      );
    }
  };
  const resumed = Promise.withResolvers<void>();
  const drops = [...options.dropAt ?? []].sort((a, b) => a - b);
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (req, info) => {
      const path = new URL(req.url).pathname.slice(1);
      const range = req.headers.get("range");
      const connection = `${info.remoteAddr.hostname}:${info.remoteAddr.port}`;
      state.requests.push(`${req.method} ${path} ${range ?? ""}`.trim());
      if (options.latency) {
        await new Promise((r) => setTimeout(r, options.latency));
      }
      const own = await options.intercept?.(req, path);
      if (own) return own;
      const to = options.redirects?.[path];
      if (to !== undefined) {
        return new Response(null, { status: 302, headers: { location: to } });
      }
      const file = files[path];
      if (file === undefined) {
        return new Response("not found", { status: 404 });
      }
      const length = typeof file === "string"
        ? Deno.statSync(file).size
        : file.length;
      let status = 200;
      let start = 0;
      let end = length - 1;
      const headers = new Headers();
      if (ranges) headers.set("accept-ranges", "bytes");
      if (range && ranges) {
        const m = /^bytes=(\d+)-(\d*)$/.exec(range);
        if (m) {
          start = Number(m[1]);
          end = m[2] === "" ? length - 1 : Math.min(Number(m[2]), length - 1);
          if (start >= length) {
            return new Response(null, {
              status: 416,
              headers: { "content-range": `bytes */${length}` },
            });
          }
          status = 206;
          headers.set("content-range", `bytes ${start}-${end}/${length}`);
        }
      }
      const size = end + 1 - start;
      if (options.contentLength ?? true) {
        headers.set("content-length", String(size));
      }
      if (req.method === "HEAD") {
        // A HEAD answer has no body.
        return new Response(null, { status, headers });
      }
      const failAfter = options.failAfter;
      let sent = 0;
      const reader = readerOf(file);
      answering(connection, size);
      let finished = false;
      const finish = () => {
        reader.close();
        if (!finished) answered(connection, size);
        finished = true;
      };
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (options.pauseAfter !== undefined && sent >= options.pauseAfter) {
            await resumed.promise;
          }
          if (sent >= size) {
            finish();
            controller.close();
            return;
          }
          // Files on disk go in larger chunks: fewer reads of a 1 GiB one;
          // a paced body in the chunks its bucket refills by.
          const chunk = pacer
            ? PACE_CHUNK
            : typeof file === "string"
            ? 1024 * 1024
            : 64 * 1024;
          let n = Math.min(chunk, size - sent);
          const drop = drops.find((d) => d >= start + sent && d <= end);
          if (drop !== undefined) {
            if (drop === start + sent) {
              drops.splice(drops.indexOf(drop), 1);
              finish();
              controller.error(new Error("simulated network failure"));
              return;
            }
            n = Math.min(n, drop - start - sent);
          }
          if (options.pauseAfter !== undefined && sent < options.pauseAfter) {
            n = Math.min(n, options.pauseAfter - sent);
          }
          if (failAfter !== undefined) {
            if (sent >= failAfter) {
              finish();
              controller.error(new Error("simulated failure"));
              return;
            }
            n = Math.min(n, failAfter - sent);
          }
          await pacer?.take(connection, n);
          controller.enqueue(await reader.read(start + sent, n));
          sent += n;
          state.bytesSent += n;
        },
        cancel: finish,
      });
      return new Response(stream, { status, headers });
    },
  );
  return {
    url: (name) => `http://127.0.0.1:${server.addr.port}/${name}`,
    get requests() {
      return state.requests;
    },
    get bytesSent() {
      return state.bytesSent;
    },
    resume: () => resumed.resolve(),
    get connections() {
      return {
        seen: seen.size,
        maxConcurrent: stats.maxConcurrent,
        maxBytesAsked: stats.maxBytesAsked,
      };
    },
    reset() {
      state.requests = [];
      state.bytesSent = 0;
      seen.clear();
      stats.maxConcurrent = active.size;
      stats.maxBytesAsked = stats.bytesAsked;
    },
    async [Symbol.asyncDispose]() {
      resumed.resolve();
      await server.shutdown();
    },
  };
}
