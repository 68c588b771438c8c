// Serves the web page (web/index.html, web/app.js) and the bundle
// (dist/qcow2pipe.js, built by `deno task bundle`) on the loopback
// interface: `deno task web` builds the bundle and runs this.
//
//   deno run --allow-net=127.0.0.1 --allow-read=. web/serve.ts [--port N]

import { parseArgs } from "node:util";

/** Options of {@linkcode serveWeb}. */
export interface WebServerOptions {
  /** TCP port; 0 picks a free one. @default {8017} */
  port?: number;
  /** Path of the bundle to serve as /qcow2pipe.js. @default {"dist/qcow2pipe.js" beside web/} */
  bundle?: string;
  /** Called with the page's URL once listening. */
  onListen?: (url: string) => void;
}

const WEB = new URL(".", import.meta.url);
const FILES: Record<string, { url: URL; type: string }> = {
  "/": { url: new URL("index.html", WEB), type: "text/html; charset=utf-8" },
  "/index.html": {
    url: new URL("index.html", WEB),
    type: "text/html; charset=utf-8",
  },
  "/app.js": {
    url: new URL("app.js", WEB),
    type: "text/javascript; charset=utf-8",
  },
};

/**
 * Starts the page's server on 127.0.0.1.
 *
 * @param options Port, bundle path, listen callback.
 * @returns The server; `shutdown()` it (or `await using`) when done.
 */
export function serveWeb(
  options: WebServerOptions = {},
): Deno.HttpServer<Deno.NetAddr> {
  const bundle = options.bundle ??
    new URL("../dist/qcow2pipe.js", WEB).pathname;
  return Deno.serve({
    hostname: "127.0.0.1",
    port: options.port ?? 8017,
    onListen: ({ port }) => options.onListen?.(`http://127.0.0.1:${port}/`),
  }, async (req) => {
    const path = new URL(req.url).pathname;
    const headers = { "cache-control": "no-store" };
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("Method not allowed\n", { status: 405, headers });
    }
    if (path === "/qcow2pipe.js") {
      try {
        return new Response(await Deno.readFile(bundle), {
          headers: { ...headers, "content-type": "text/javascript" },
        });
      } catch {
        return new Response(
          `${bundle} is missing: run \`deno task bundle\`\n`,
          { status: 404, headers },
        );
      }
    }
    const file = FILES[path];
    if (!file) return new Response("Not found\n", { status: 404, headers });
    return new Response(await Deno.readFile(file.url), {
      headers: { ...headers, "content-type": file.type },
    });
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { port: { type: "string", default: "8017" } },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`Cannot serve: port ${values.port} is not in [0, 65535]`);
    Deno.exit(2);
  }
  serveWeb({
    port,
    onListen: (url) => console.log(`qcow2pipe page: ${url}`),
  });
}
