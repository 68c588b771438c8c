// A loopback HTTP server for the stream tests: serves files with or without
// Range support, and can fail in the middle of a transfer.

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
}

export interface TestServer extends AsyncDisposable {
  url(name: string): string;
  /** Requests seen, as "METHOD path range". */
  requests: string[];
  /** Body bytes sent. */
  bytesSent: number;
  /** Lets paused responses (`pauseAfter`) continue. */
  resume(): void;
}

/** Serves `files` (name → bytes) on 127.0.0.1 on a free port. */
export function serveFiles(
  files: Record<string, Uint8Array>,
  options: ServeOptions = {},
): TestServer {
  const ranges = options.ranges ?? true;
  const state = { requests: [] as string[], bytesSent: 0 };
  const resumed = Promise.withResolvers<void>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => {
      const path = new URL(req.url).pathname.slice(1);
      const range = req.headers.get("range");
      state.requests.push(`${req.method} ${path} ${range ?? ""}`.trim());
      const body = files[path];
      if (!body) return new Response("not found", { status: 404 });
      let status = 200;
      let slice = body;
      const headers = new Headers();
      if (ranges) headers.set("accept-ranges", "bytes");
      if (range && ranges) {
        const m = /^bytes=(\d+)-(\d*)$/.exec(range);
        if (m) {
          const start = Number(m[1]);
          const end = m[2] === ""
            ? body.length - 1
            : Math.min(Number(m[2]), body.length - 1);
          if (start >= body.length) {
            return new Response(null, {
              status: 416,
              headers: { "content-range": `bytes */${body.length}` },
            });
          }
          slice = body.subarray(start, end + 1);
          status = 206;
          headers.set("content-range", `bytes ${start}-${end}/${body.length}`);
        }
      }
      if (options.contentLength ?? true) {
        headers.set(
          "content-length",
          String(slice.length),
        );
      }
      const failAfter = options.failAfter;
      let sent = 0;
      const stream = new ReadableStream<Uint8Array>({
        async pull(controller) {
          if (options.pauseAfter !== undefined && sent >= options.pauseAfter) {
            await resumed.promise;
          }
          if (sent >= slice.length) {
            controller.close();
            return;
          }
          let n = Math.min(64 * 1024, slice.length - sent);
          if (options.pauseAfter !== undefined && sent < options.pauseAfter) {
            n = Math.min(n, options.pauseAfter - sent);
          }
          if (failAfter !== undefined) {
            if (sent >= failAfter) {
              controller.error(new Error("simulated failure"));
              return;
            }
            n = Math.min(n, failAfter - sent);
          }
          controller.enqueue(slice.slice(sent, sent + n));
          sent += n;
          state.bytesSent += n;
        },
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
    async [Symbol.asyncDispose]() {
      resumed.resolve();
      await server.shutdown();
    },
  };
}
