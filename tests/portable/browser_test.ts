// The web page (web/index.html with the bundle) in headless Chromium,
// driven like a user: pick a generated raw file, convert it to zstd qcow2,
// download the result, show its info; then to zlib qcow2; then load the
// downloaded zstd image and expand it to raw. qemu-img check and compare
// judge the downloads (libqcow and 7-Zip too where they read the format),
// and screenshots of the finished page go to test-output/browser/. Then a
// qcow2 whose backing files the user picks, the options (cluster size,
// level, sparsify), and the page without its bundle.

import assert from "node:assert";
import { basename, join } from "node:path";
import {
  createQcow2,
  qemuCheckClean,
  qemuCompareIdentical,
  qemuIo,
  tempDir,
} from "../_qemu.ts";
import { CHROMIUM, QEMU, toolTest } from "../_tools.ts";
import { buildBundle } from "../_bundle.ts";
import { Chromium } from "../_chromium.ts";
import { assertOtherReaders } from "../_readers.ts";
import { MiB, mixedBytes, qemuInfo, verifyImage } from "../writer/_helpers.ts";
import { serveWeb } from "../../web/serve.ts";

const OUTPUT = new URL("../../test-output/browser/", import.meta.url).pathname;

/** Saves a PNG of the whole page as test-output/browser/`name`. */
async function screenshot(browser: Chromium, name: string): Promise<void> {
  await Deno.mkdir(OUTPUT, { recursive: true });
  await Deno.writeFile(
    join(OUTPUT, name),
    await browser.page.screenshot({ fullPage: true }),
  );
}

/** The page's options, set as a user would before converting. */
interface PageOptions {
  /** Bytes, one of the cluster size menu's. */
  clusterSize?: number;
  /** What is typed in the level field ("" for the default). */
  level?: string;
  sparsify?: boolean;
}

/**
 * Picks `file`, converts it to `target` in the page (with `options`),
 * downloads the result.
 */
async function convertInPage(
  browser: Chromium,
  downloads: string,
  file: string | undefined,
  target: "qcow2" | "zlib" | "zstd" | "raw",
  options: PageOptions = {},
): Promise<{ name: string; path: string; status: string }> {
  const page = browser.page;
  if (file) {
    await page.evaluate(`document.body.dataset.state = "picking"`);
    await browser.pickFiles("#file", [file]);
    await browser.waitFor(
      `document.body.dataset.state === "ready"`,
      "the file to be read",
    );
  }
  await page.click(`input[name=target][value=${target}]`);
  await page.select("#cluster-size", String(options.clusterSize ?? 65536));
  await page.evaluate(
    `document.getElementById("level").value = ${
      JSON.stringify(options.level ?? "")
    }`,
  );
  if (
    await page.evaluate(`document.getElementById("sparsify").checked`) !==
      (options.sparsify ?? false)
  ) {
    await page.click("#sparsify");
  }
  await page.click("#convert");
  const state = await browser.waitFor<string>(
    `["done", "error"].includes(document.body.dataset.state) && document.body.dataset.state`,
    `the conversion to ${target}`,
  );
  if (state !== "done") {
    const error = await page.evaluate(
      `document.getElementById("error").textContent`,
    );
    throw new Error(
      `The page failed to convert to ${target}: ${error}\n${
        browser.console.join("\n")
      }`,
    );
  }
  const status = await page.evaluate(
    `document.getElementById("status").textContent`,
  ) as string;
  const saved = await browser.download(
    downloads,
    () => page.click("#download"),
  );
  return { ...saved, status };
}

/**
 * A temporary directory for one test, with a downloads folder in it and
 * the bundle built into it.
 */
async function workspace(): Promise<
  { path: string; downloads: string; bundle: string } & AsyncDisposable
> {
  const dir = await tempDir();
  try {
    const downloads = join(dir.path, "downloads");
    await Deno.mkdir(downloads);
    const bundle = await buildBundle(join(dir.path, "qcow2pipe.js"));
    return Object.assign(dir, { downloads, bundle });
  } catch (err) {
    await dir[Symbol.asyncDispose]();
    throw err;
  }
}

toolTest(
  "browser: the page converts a raw file to zstd qcow2 in headless Chromium; qemu-img judges the download",
  [CHROMIUM, QEMU],
  async () => {
    await using dir = await workspace();
    const { downloads, bundle } = dir;
    // Text, noise, runs and zero runs, with a tail that is not a whole sector.
    const raw = mixedBytes(12 * MiB + 1234, 4242);
    const rawPath = join(dir.path, "disk.raw");
    await Deno.writeFile(rawPath, raw);

    await using server = serveWeb({ port: 0, bundle, onListen() {} });
    const url = `http://127.0.0.1:${server.addr.port}/`;
    await using browser = await Chromium.launch(downloads);
    await browser.page.goto(url);
    await browser.waitFor(
      `document.body.dataset.state === "idle"`,
      "the page to start",
    );
    // A browser has no node:zlib: fflate and zstd-codec, on Web Workers.
    const env = await browser.page.evaluate(
      `document.getElementById("env").textContent`,
    ) as string;
    assert.match(env, /zlib on fflate/);
    assert.match(env, /zstd on zstd-codec \(WebAssembly\)/);
    assert.match(env, /; [1-9]\d* workers?\./);

    // raw -> zstd qcow2
    const zstd = await convertInPage(browser, downloads, rawPath, "zstd");
    assert.strictEqual(zstd.name, "disk.qcow2");
    assert.match(zstd.status, /written to private file system/);
    await verifyImage(dir.path, zstd.path, raw, {
      compression: "zstd",
      clusterSize: 65536,
      refcountBits: 16,
    });
    await qemuCompareIdentical(rawPath, zstd.path);
    await assertOtherReaders(zstd.path, raw, "zstd", dir.path);
    await browser.page.click("#show-info");
    const info = await browser.waitFor<string>(
      `!document.getElementById("info").hidden && document.getElementById("info").textContent`,
      "the info",
    );
    assert.match(info, /file format: qcow2/);
    assert.match(info, /compression type: zstd/);
    assert.match(info, /No errors were found on the image\./);
    await screenshot(browser, "zstd-done.png");

    // the same file -> zlib qcow2
    const zlib = await convertInPage(browser, downloads, undefined, "zlib");
    await verifyImage(dir.path, zlib.path, raw, {
      compression: "zlib",
      clusterSize: 65536,
      refcountBits: 16,
    });
    await assertOtherReaders(zlib.path, raw, "zlib", dir.path);
    await screenshot(browser, "zlib-done.png");

    // the downloaded zstd image (under its name again) -> raw
    const qcow2Path = join(dir.path, "disk.qcow2");
    await Deno.copyFile(zstd.path, qcow2Path);
    const back = await convertInPage(browser, downloads, qcow2Path, "raw");
    assert.strictEqual(back.name, "disk.raw");
    const bytes = await Deno.readFile(back.path);
    const padded = new Uint8Array(Math.ceil(raw.length / 512) * 512);
    padded.set(raw);
    assert.strictEqual(bytes.length, padded.length);
    assert.ok(bytes.every((b, i) => b === padded[i]), "expanded raw differs");
    await qemuCompareIdentical(rawPath, back.path, ["raw", "raw"]);
    await screenshot(browser, "raw-done.png");
    console.log(`screenshots in ${OUTPUT}`);
  },
);

/** Serves web/ with `bundle` and opens the page in a fresh Chromium. */
async function openPage(
  bundle: string,
  downloads?: string,
): Promise<
  { browser: Chromium; server: Deno.HttpServer } & AsyncDisposable
> {
  const server = serveWeb({ port: 0, bundle, onListen() {} });
  const browser = await Chromium.launch(downloads);
  const opened = {
    browser,
    server,
    async [Symbol.asyncDispose]() {
      await browser.close();
      await server.shutdown();
    },
  };
  try {
    await browser.page.goto(`http://127.0.0.1:${server.addr.port}/`);
    await browser.waitFor(
      `["idle", "broken"].includes(document.body.dataset.state)`,
      "the page to start",
    );
  } catch (err) {
    await opened[Symbol.asyncDispose]();
    throw err;
  }
  return opened;
}

/** The text of the element with this id. */
function textOf(browser: Chromium, id: string): Promise<string> {
  return browser.page.evaluate(
    `document.getElementById(${JSON.stringify(id)}).textContent`,
  ) as Promise<string>;
}

toolTest(
  "browser: a qcow2 with backing files, or an external data file, converts once the user picks them (by name, one at a time); qemu-img compares the download with the chain",
  [CHROMIUM, QEMU],
  async () => {
    await using dir = await workspace();
    const { downloads, bundle } = dir;
    // base <- mid (named relatively) <- top (names mid by its absolute path)
    const base = await createQcow2(dir.path, "base.qcow2", "4M");
    await qemuIo(base, ["write -P 0x11 0 1M", "write -P 0x22 2M 512k"]);
    const over = (name: string, backing: string) =>
      createQcow2(dir.path, name, "4M", "-b", backing, "-F", "qcow2");
    const mid = await over("mid.qcow2", "base.qcow2");
    await qemuIo(mid, ["write -P 0x33 512k 1M"]);
    const top = await over("top.qcow2", mid);
    await qemuIo(top, ["write -P 0x44 3M 64k"]);
    const other = join(dir.path, "other.raw");
    await Deno.writeFile(other, new Uint8Array(4096).fill(0x55));

    await using opened = await openPage(bundle, downloads);
    const { browser } = opened;
    const page = browser.page;
    const state = () => page.evaluate(`document.body.dataset.state`);
    const needs = async (path: string) => {
      await browser.waitFor(
        `document.body.dataset.state === "needs-backing"`,
        `the page to ask for ${path}`,
      );
      assert.ok(
        (await textOf(browser, "backing-needed")).includes(
          `backing file, "${path}": pick the file named ${basename(path)} `,
        ),
        await textOf(browser, "backing-needed"),
      );
      assert.strictEqual(await textOf(browser, "error"), "", "no error shown");
      assert.strictEqual(
        await page.evaluate(`document.getElementById("convert").disabled`),
        true,
      );
    };
    await browser.pickFiles("#file", [top]);
    await needs(mid);
    await screenshot(browser, "backing-asked.png");
    // A file of another name answers nothing.
    await browser.pickFiles("#backing", [other]);
    await needs(mid);
    await browser.pickFiles("#backing", [mid]);
    await needs(base);
    await browser.pickFiles("#backing", [base]);
    await browser.waitFor(
      `document.body.dataset.state === "ready"`,
      "the chain to open",
    );
    assert.match(
      await textOf(browser, "input"),
      /backing files .*mid\.qcow2.*base\.qcow2/,
    );
    assert.match(
      await textOf(browser, "backing-list"),
      /other\.raw, mid\.qcow2, base\.qcow2/,
    );
    assert.strictEqual(await state(), "ready");

    const out = await convertInPage(browser, downloads, undefined, "zstd");
    assert.strictEqual(out.name, "top.qcow2");
    await qemuCheckClean(out.path);
    await qemuCompareIdentical(top, out.path, ["qcow2", "qcow2"]);
    assert.strictEqual(
      (await qemuInfo(out.path))["backing-filename"],
      undefined,
    );
    await screenshot(browser, "backing-done.png");

    // An external data file is asked for the same way.
    const data = join(dir.path, "data.raw");
    const ext = await createQcow2(
      dir.path,
      "ext.qcow2",
      "2M",
      "-o",
      `data_file=${data}`,
    );
    await qemuIo(ext, ["write -P 0x66 64k 300k"]);
    await page.evaluate(`document.body.dataset.state = "picking"`);
    await browser.pickFiles("#file", [ext]);
    await browser.waitFor(
      `document.body.dataset.state === "needs-backing"`,
      "the page to ask for the data file",
    );
    assert.ok(
      (await textOf(browser, "backing-needed")).includes(
        `read through an external data file, "${data}": pick the file named data.raw `,
      ),
      await textOf(browser, "backing-needed"),
    );
    await browser.pickFiles("#backing", [data]);
    await browser.waitFor(
      `document.body.dataset.state === "ready"`,
      "the image and its data file to open",
    );
    const fromData = await convertInPage(browser, downloads, undefined, "raw");
    await qemuCompareIdentical(fromData.path, ext, ["raw", "qcow2"]);
  },
);

toolTest(
  "browser: the page's cluster size, level and sparsify reach the library; qemu-img judges the downloads",
  [CHROMIUM, QEMU],
  async () => {
    await using dir = await workspace();
    const { downloads, bundle } = dir;
    // A bare swap area whose free pages hold old bytes: sparsify keeps the
    // header page and drops the rest.
    const size = 8 * MiB;
    const swap = new Uint8Array(size).fill(0x5a);
    const view = new DataView(swap.buffer);
    view.setUint32(1024, 1, true); // version 1
    view.setUint32(1028, size / 4096 - 1, true); // last_page
    swap.set(new TextEncoder().encode("SWAPSPACE2"), 4096 - 10);
    const swapPath = join(dir.path, "swap.raw");
    await Deno.writeFile(swapPath, swap);
    const kept = new Uint8Array(size);
    kept.set(swap.subarray(0, 4096));
    const keptPath = join(dir.path, "kept.raw");
    await Deno.writeFile(keptPath, kept);

    await using opened = await openPage(bundle, downloads);
    const { browser } = opened;
    const zstd = await convertInPage(browser, downloads, swapPath, "zstd", {
      clusterSize: 4096,
      level: "19",
      sparsify: true,
    });
    assert.match(zstd.status, /zstd level 19, 4 KiB clusters/);
    assert.match(
      zstd.status,
      /Sparsify: 8\.0 MiB of free space dropped \(swap: 8\.0 MiB free\)/,
    );
    await qemuCheckClean(zstd.path);
    await qemuCompareIdentical(keptPath, zstd.path);
    const info = await qemuInfo(zstd.path);
    assert.strictEqual(info["cluster-size"], 4096);
    assert.strictEqual(
      info["format-specific"].data["compression-type"],
      "zstd",
    );
    await screenshot(browser, "options-done.png");

    // Without sparsify, 2 MiB clusters, zlib at level 1: the old bytes stay.
    const zlib = await convertInPage(browser, downloads, undefined, "zlib", {
      clusterSize: 2 * MiB,
      level: "1",
    });
    assert.match(zlib.status, /zlib level 1, 2 MiB clusters/);
    assert.doesNotMatch(zlib.status, /Sparsify/);
    await qemuCheckClean(zlib.path);
    await qemuCompareIdentical(swapPath, zlib.path);
    assert.strictEqual((await qemuInfo(zlib.path))["cluster-size"], 2 * MiB);

    // To raw with sparsify: the free space reads as zeros.
    const raw = await convertInPage(browser, downloads, undefined, "raw", {
      sparsify: true,
    });
    assert.match(raw.status, /Sparsify: 8\.0 MiB/);
    assert.deepStrictEqual(await Deno.readFile(raw.path), kept);

    // A level out of the codec's range is the library's refusal, shown.
    await assert.rejects(
      convertInPage(browser, downloads, undefined, "zstd", { level: "23" }),
      /failed to convert to zstd: Cannot .*level 23 is out of range \[1, 22\]/,
    );
  },
);

toolTest(
  "browser: without its bundle (served elsewhere, or opened from disk) the page says what is wrong instead of looking ready",
  [CHROMIUM],
  async () => {
    await using dir = await tempDir();
    await using opened = await openPage(join(dir.path, "no-such-bundle.js"));
    const { browser } = opened;
    assert.strictEqual(
      await browser.page.evaluate(`document.body.dataset.state`),
      "broken",
    );
    const missing = await browser.waitFor<string>(
      `!document.getElementById("broken").hidden && document.getElementById("broken").textContent`,
      "the page to say what is wrong",
    );
    assert.match(
      missing,
      /qcow2pipe\.js, the library this page runs, is missing beside this page \(http:\/\/127\.0\.0\.1:\d+\/qcow2pipe\.js: HTTP 404\)/,
    );
    assert.match(missing, /deno task bundle/);
    assert.strictEqual(
      await browser.page.evaluate(`document.getElementById("file").disabled`),
      true,
    );
    await screenshot(browser, "no-bundle.png");

    const index = new URL("../../web/index.html", import.meta.url).href;
    await browser.page.goto(index);
    const fromDisk = await browser.waitFor<string>(
      `document.body.dataset.state === "broken" && document.getElementById("broken").textContent`,
      "the page opened from disk to say so",
    );
    assert.match(fromDisk, /opened from disk \(file:\/\/\)/);
    assert.match(fromDisk, /deno task web/);
  },
);
