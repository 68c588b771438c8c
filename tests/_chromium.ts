// Headless Chromium for the browser test and bench/browser_speed.ts, driven
// by puppeteer-core (mapped in deno.json, pinned in deno.lock) through
// Debian's `chromium`: one page with a fixed viewport, its console kept for
// diagnosis, every wait bounded, and downloads saved into a directory.
// Puppeteer has no API for waiting on a download, so that part sends the
// DevTools protocol's Browser.setDownloadBehavior through puppeteer's own
// session.
import puppeteer, {
  type Browser,
  type CDPSession,
  type Page,
} from "puppeteer-core";
import { join } from "node:path";

/** Flags beyond puppeteer's own (as root, in a container, offline). */
const CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic"];

/** How long a single wait may take before the run is declared hung. */
const HANG_MS = 300_000;

/**
 * Where `chromium` is on PATH (where tests/_tools.ts found it): puppeteer
 * wants the file itself.
 */
function chromiumPath(): string {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    const path = join(dir || ".", "chromium");
    try {
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not in this directory
    }
  }
  throw new Error(
    "Cannot launch chromium: not found on PATH (apt-get install chromium)",
  );
}

/** A headless Chromium with one page. */
export class Chromium implements AsyncDisposable {
  /** The browser. */
  readonly browser: Browser;
  /** Its page: navigate, evaluate, click, upload and screenshot through it. */
  readonly page: Page;
  /** Console messages and uncaught exceptions of the page, for diagnosis. */
  readonly console: string[] = [];
  #session: CDPSession | undefined;

  private constructor(browser: Browser, page: Page, session?: CDPSession) {
    this.browser = browser;
    this.page = page;
    this.#session = session;
    page.on("console", (message) => {
      this.console.push(`${message.type()}: ${message.text()}`);
    });
    page.on("pageerror", (error) => {
      this.console.push(
        `exception: ${error instanceof Error ? error.message : error}`,
      );
    });
  }

  /**
   * Starts `chromium` with a fresh profile and opens a page.
   *
   * @param downloads Directory downloads are saved into (by GUID).
   */
  static async launch(downloads?: string): Promise<Chromium> {
    const browser = await puppeteer.launch({
      executablePath: chromiumPath(),
      headless: true,
      args: CHROMIUM_FLAGS,
      defaultViewport: { width: 1000, height: 900 },
      protocolTimeout: HANG_MS,
    });
    try {
      const page = (await browser.pages())[0] ?? await browser.newPage();
      page.setDefaultTimeout(HANG_MS);
      let session: CDPSession | undefined;
      if (downloads) {
        session = await browser.target().createCDPSession();
        await session.send("Browser.setDownloadBehavior", {
          behavior: "allowAndName",
          downloadPath: downloads,
          eventsEnabled: true,
        });
      }
      return new Chromium(browser, page, session);
    } catch (err) {
      await browser.close();
      throw err;
    }
  }

  /** Polls `expression` in the page until it is truthy; returns its value. */
  async waitFor<T>(expression: string, what: string): Promise<T> {
    try {
      const handle = await this.page.waitForFunction(expression, {
        polling: 100,
      });
      return await handle.jsonValue() as T;
    } catch (err) {
      throw new Error(`Cannot wait for ${what}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** Picks `files` in the file input matched by `selector`, as a user would. */
  async pickFiles(selector: string, files: string[]): Promise<void> {
    const [chooser] = await Promise.all([
      this.page.waitForFileChooser(),
      this.page.click(selector),
    ]);
    await chooser.accept(files);
  }

  /**
   * Runs `start` (which should begin a download) and waits for the
   * download to complete; returns its suggested name and saved path.
   */
  async download(
    dir: string,
    start: () => Promise<void>,
  ): Promise<{ name: string; path: string }> {
    const session = this.#session;
    if (!session) {
      throw new Error(
        "Cannot download: Chromium was launched without a directory",
      );
    }
    const names = new Map<string, string>();
    const onBegin = (p: { guid: string; suggestedFilename: string }) => {
      names.set(p.guid, p.suggestedFilename);
    };
    let onProgress = (_: { guid: string; state: string }) => {};
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = new Promise<string>((resolve, reject) => {
      onProgress = (p) => {
        if (p.state === "completed") resolve(p.guid);
        if (p.state === "canceled") {
          reject(new Error("Cannot download: canceled"));
        }
      };
      timer = setTimeout(
        () =>
          reject(new Error(`Cannot download: not done within ${HANG_MS} ms`)),
        HANG_MS,
      );
    });
    // Rejected before it is awaited (a download canceled while `start`
    // runs) is still handled, by the await below.
    done.catch(() => {});
    session.on("Browser.downloadWillBegin", onBegin);
    session.on("Browser.downloadProgress", onProgress);
    try {
      await start();
      const guid = await done;
      return { name: names.get(guid) ?? "", path: join(dir, guid) };
    } finally {
      clearTimeout(timer);
      session.off("Browser.downloadWillBegin", onBegin);
      session.off("Browser.downloadProgress", onProgress);
    }
  }

  /** Closes the browser (puppeteer removes its profile). */
  async close(): Promise<void> {
    await this.browser.close();
  }

  /** Same as {@linkcode Chromium.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
