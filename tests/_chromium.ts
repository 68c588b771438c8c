// Headless Chromium driven over the DevTools protocol, with Deno's own
// WebSocket (no dependency): launch Debian's `chromium` with a fresh
// profile, attach to its page, navigate, evaluate, set file inputs, click,
// wait for downloads, take screenshots. Used by the browser test and by
// bench/browser_speed.ts.

import { join } from "node:path";

/** The flags the browser runs with (as root, in a container, offline). */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--window-size=1000,900",
];

/** How long a single wait may take before the run is declared hung. */
const HANG_MS = 300_000;

interface Pending {
  resolve: (value: Record<string, unknown>) => void;
  reject: (err: Error) => void;
}

type Listener = (params: Record<string, unknown>, session?: string) => void;

/** A DevTools protocol connection to the browser. */
class Connection {
  #ws: WebSocket;
  #next = 1;
  #pending = new Map<number, Pending>();
  #listeners = new Map<string, Set<Listener>>();
  #closed: Promise<void>;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (event) => this.#receive(JSON.parse(event.data));
    this.#closed = new Promise((resolve) => {
      ws.onclose = () => {
        for (const p of this.#pending.values()) {
          p.reject(new Error("DevTools connection closed"));
        }
        this.#pending.clear();
        resolve();
      };
    });
  }

  static open(url: string): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(new Connection(ws));
      ws.onerror = (e) =>
        reject(
          new Error(`Cannot connect to ${url}: ${(e as ErrorEvent).message}`),
        );
    });
  }

  #receive(msg: {
    id?: number;
    result?: Record<string, unknown>;
    error?: { message: string };
    method?: string;
    params?: Record<string, unknown>;
    sessionId?: string;
  }): void {
    if (msg.id !== undefined) {
      const p = this.#pending.get(msg.id);
      if (!p) return;
      this.#pending.delete(msg.id);
      if (msg.error) p.reject(new Error(msg.error.message));
      else p.resolve(msg.result ?? {});
      return;
    }
    for (const l of this.#listeners.get(msg.method ?? "") ?? []) {
      l(msg.params ?? {}, msg.sessionId);
    }
  }

  send(
    method: string,
    params: Record<string, unknown> = {},
    sessionId?: string,
  ): Promise<Record<string, unknown>> {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, {
        resolve,
        reject: (err) => reject(new Error(`${method}: ${err.message}`)),
      });
      this.#ws.send(JSON.stringify({ id, method, params, sessionId }));
    });
  }

  on(method: string, listener: Listener): () => void {
    let set = this.#listeners.get(method);
    if (!set) this.#listeners.set(method, set = new Set());
    set.add(listener);
    return () => set.delete(listener);
  }

  async close(): Promise<void> {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.close();
    await this.#closed;
  }
}

/** Rejects with `what` if `promise` has not settled within the hang bound. */
function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${what}: no answer within ${HANG_MS} ms`)),
        HANG_MS,
      );
    }),
  ]).finally(() => clearTimeout(timer));
}

/** A headless Chromium with one page attached. */
export class Chromium implements AsyncDisposable {
  #child: Deno.ChildProcess;
  #profile: string;
  #conn: Connection;
  #session: string;
  #stderr: Promise<string>;
  /** Console messages and uncaught exceptions of the page, for diagnosis. */
  readonly console: string[] = [];

  private constructor(
    child: Deno.ChildProcess,
    profile: string,
    conn: Connection,
    session: string,
    stderr: Promise<string>,
  ) {
    this.#child = child;
    this.#profile = profile;
    this.#conn = conn;
    this.#session = session;
    this.#stderr = stderr;
    conn.on("Runtime.consoleAPICalled", (p) => {
      const args = p.args as { value?: unknown; description?: string }[];
      this.console.push(
        `${p.type}: ${args.map((a) => a.value ?? a.description).join(" ")}`,
      );
    });
    conn.on("Runtime.exceptionThrown", (p) => {
      const d = p.exceptionDetails as {
        text: string;
        exception?: { description?: string };
      };
      this.console.push(`exception: ${d.exception?.description ?? d.text}`);
    });
  }

  /**
   * Starts `chromium` with a fresh profile and attaches to its page.
   *
   * @param downloads Directory downloads are saved into (by GUID).
   */
  static async launch(downloads?: string): Promise<Chromium> {
    const profile = await Deno.makeTempDir({ prefix: "qcow2pipe-chromium-" });
    const child = new Deno.Command("chromium", {
      args: [
        ...CHROMIUM_FLAGS,
        `--user-data-dir=${profile}`,
        "--remote-debugging-port=0",
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(child.stderr).text();
    try {
      const port = await bounded(
        (async () => {
          // Chromium writes the port it picked and the browser's path here.
          const file = join(profile, "DevToolsActivePort");
          for (;;) {
            try {
              const [port, path] = (await Deno.readTextFile(file)).split("\n");
              if (path) return `ws://127.0.0.1:${port}${path}`;
            } catch {
              // not yet written
            }
            await new Promise((r) => setTimeout(r, 50));
          }
        })(),
        "chromium start",
      );
      const conn = await Connection.open(port);
      const { targetInfos } = await conn.send("Target.getTargets") as {
        targetInfos: { targetId: string; type: string }[];
      };
      const page = targetInfos.find((t) => t.type === "page");
      if (!page) throw new Error("Chromium has no page");
      const { sessionId } = await conn.send("Target.attachToTarget", {
        targetId: page.targetId,
        flatten: true,
      }) as { sessionId: string };
      const browser = new Chromium(child, profile, conn, sessionId, stderr);
      await browser.send("Page.enable");
      await browser.send("Runtime.enable");
      if (downloads) {
        await conn.send("Browser.setDownloadBehavior", {
          behavior: "allowAndName",
          downloadPath: downloads,
          eventsEnabled: true,
        });
      }
      return browser;
    } catch (err) {
      try {
        child.kill();
      } catch {
        // already gone
      }
      await child.status;
      const log = (await stderr).split("\n").slice(-20).join("\n");
      await Deno.remove(profile, { recursive: true }).catch(() => {});
      throw new Error(`${(err as Error).message}\nchromium stderr:\n${log}`, {
        cause: err,
      });
    }
  }

  /** Sends a DevTools command to the page. */
  send(
    method: string,
    params: Record<string, unknown> = {},
  ): Promise<Record<string, unknown>> {
    return bounded(this.#conn.send(method, params, this.#session), method);
  }

  /** Loads `url` and waits for its load event. */
  async navigate(url: string): Promise<void> {
    let off = () => {};
    const loaded = new Promise<void>((resolve) => {
      off = this.#conn.on("Page.loadEventFired", (_p, session) => {
        if (session === this.#session) resolve();
      });
    });
    const { errorText } = await this.send("Page.navigate", { url }) as {
      errorText?: string;
    };
    if (errorText) throw new Error(`Cannot load ${url}: ${errorText}`);
    await bounded(loaded, `load ${url}`);
    off();
  }

  /** Evaluates an expression in the page (awaiting a promise) and returns its value. */
  async evaluate<T = unknown>(expression: string): Promise<T> {
    const { result, exceptionDetails } = await this.send("Runtime.evaluate", {
      expression,
      awaitPromise: true,
      returnByValue: true,
    }) as {
      result: { value?: T };
      exceptionDetails?: { text: string; exception?: { description?: string } };
    };
    if (exceptionDetails) {
      throw new Error(
        `In the page: ${
          exceptionDetails.exception?.description ?? exceptionDetails.text
        }`,
      );
    }
    return result.value as T;
  }

  /** Polls `expression` until it is truthy; returns its value. */
  async waitFor<T>(expression: string, what: string): Promise<T> {
    return await bounded(
      (async () => {
        for (;;) {
          const value = await this.evaluate<T>(expression);
          if (value) return value;
          await new Promise((r) => setTimeout(r, 100));
        }
      })(),
      `wait for ${what}`,
    );
  }

  /** Gives the file input matched by `selector` these files (fires `change`). */
  async setFiles(selector: string, files: string[]): Promise<void> {
    const { root } = await this.send("DOM.getDocument") as {
      root: { nodeId: number };
    };
    const { nodeId } = await this.send("DOM.querySelector", {
      nodeId: root.nodeId,
      selector,
    }) as { nodeId: number };
    if (!nodeId) throw new Error(`No element matches ${selector}`);
    await this.send("DOM.setFileInputFiles", { nodeId, files });
  }

  /** Clicks the element matched by `selector`. */
  async click(selector: string): Promise<void> {
    await this.evaluate(
      `document.querySelector(${JSON.stringify(selector)}).click()`,
    );
  }

  /**
   * Runs `start` (which should begin a download) and waits for the
   * download to complete; returns its suggested name and saved path.
   */
  async download(
    dir: string,
    start: () => Promise<void>,
  ): Promise<{ name: string; path: string }> {
    let name = "";
    const offs: (() => void)[] = [];
    const done = new Promise<string>((resolve, reject) => {
      offs.push(this.#conn.on("Browser.downloadWillBegin", (p) => {
        name = p.suggestedFilename as string;
      }));
      offs.push(this.#conn.on("Browser.downloadProgress", (p) => {
        if (p.state === "completed") resolve(p.guid as string);
        if (p.state === "canceled") reject(new Error("download canceled"));
      }));
    });
    await start();
    const guid = await bounded(done, "download");
    for (const off of offs) off();
    return { name, path: join(dir, guid) };
  }

  /** Saves a PNG of the whole page. */
  async screenshot(path: string): Promise<void> {
    const { data } = await this.send("Page.captureScreenshot", {
      format: "png",
      captureBeyondViewport: true,
    }) as { data: string };
    await Deno.writeFile(
      path,
      Uint8Array.from(atob(data), (c) => c.charCodeAt(0)),
    );
  }

  /** Closes the browser and removes its profile. */
  async close(): Promise<void> {
    await this.#conn.send("Browser.close").catch(() => {});
    await this.#conn.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const exited = await Promise.race([
      this.#child.status.then(() => true),
      new Promise<false>((r) => timer = setTimeout(() => r(false), 10_000)),
    ]);
    clearTimeout(timer);
    if (!exited) {
      this.#child.kill("SIGKILL");
      await this.#child.status;
    }
    await this.#stderr.catch(() => "");
    await Deno.remove(this.#profile, { recursive: true }).catch(() => {});
  }

  /** Same as {@linkcode Chromium.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
