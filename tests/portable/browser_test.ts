// The web page (web/index.html with the bundle) in headless Chromium,
// driven like a user: pick a generated raw file, convert it to zstd qcow2,
// download the result, show its info; then to zlib qcow2; then load the
// downloaded zstd image and expand it to raw. qemu-img check and compare
// judge the downloads (libqcow and 7-Zip too where they read the format),
// and screenshots of the finished page go to test-output/browser/.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCompareIdentical, tempDir } from "../_qemu.ts";
import { CHROMIUM, QEMU, toolTest } from "../_tools.ts";
import { buildBundle } from "../_bundle.ts";
import { Chromium } from "../_chromium.ts";
import { assertOtherReaders } from "../_readers.ts";
import { MiB, mixedBytes, verifyImage } from "../writer/_helpers.ts";
import { serveWeb } from "../../web/serve.ts";

const OUTPUT = new URL("../../test-output/browser/", import.meta.url).pathname;

/** Saves a PNG of the whole page as test-output/browser/`name`. */
async function screenshot(browser: Chromium, name: string): Promise<void> {
  await Deno.writeFile(
    join(OUTPUT, name),
    await browser.page.screenshot({ fullPage: true }),
  );
}

/** Picks `file`, converts it to `target` in the page, downloads the result. */
async function convertInPage(
  browser: Chromium,
  downloads: string,
  file: string | undefined,
  target: "qcow2" | "zlib" | "zstd" | "raw",
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

toolTest(
  "browser: the page converts a raw file to zstd qcow2 in headless Chromium; qemu-img judges the download",
  [CHROMIUM, QEMU],
  async () => {
    await using dir = await tempDir();
    await Deno.mkdir(OUTPUT, { recursive: true });
    const downloads = join(dir.path, "downloads");
    await Deno.mkdir(downloads);
    const bundle = await buildBundle(join(dir.path, "qcow2pipe.js"));
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
