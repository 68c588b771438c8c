// One image model: the reader and the tools agree on the virtual size, on
// who closes a source, and open each input once.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import { openImage } from "../../lib/reader/open.ts";
import { expandToFile } from "../../lib/reader/expand.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import type { RandomAccessSource } from "../../lib/io/source.ts";
import { imageInfo } from "../../lib/tools/info.ts";
import { checkImage } from "../../lib/tools/check.ts";
import { mapImage } from "../../lib/tools/map.ts";
import { compareImages } from "../../lib/tools/compare.ts";

/** A source over a file that counts its close() calls. */
async function spied(
  path: string,
): Promise<RandomAccessSource & { closed: number; close(): void }> {
  const file = await FileSource.open(path);
  const spy = {
    closed: 0,
    name: path,
    get size() {
      return file.size;
    },
    read: (offset: number, length: number) => file.read(offset, length),
    close() {
      spy.closed++;
      file.close();
    },
  };
  return spy;
}

qemuTest(
  "model: a 1000-byte raw image is 1024 bytes to openImage, imageInfo and qemu-img convert alike",
  async () => {
    await using dir = await tempDir();
    const raw = join(dir.path, "odd.raw");
    const bytes = new Uint8Array(1000).map((_, i) => (i * 7 + 1) & 0xff);
    await Deno.writeFile(raw, bytes);
    await using image = await openImage(raw);
    assert.strictEqual(image.virtualSize, 1024);
    assert.strictEqual((await imageInfo(raw)).virtualSize, 1024);
    await using fromBytes = await openImage(bytes);
    assert.strictEqual(fromBytes.virtualSize, 1024);

    const ours = join(dir.path, "ours.raw");
    const theirs = join(dir.path, "theirs.raw");
    await expandToFile(image, await OutputFile.create(ours));
    await qemuImg("convert", "-f", "raw", "-O", "raw", raw, theirs);
    const want = await Deno.readFile(theirs);
    assert.strictEqual(want.length, 1024);
    assert.deepStrictEqual(await Deno.readFile(ours), want);
    assert.deepStrictEqual(await image.readAt(990, 34), want.subarray(990));
  },
);

qemuTest(
  "model: a source passed in is never closed by openImage or the tools; what they open by name is",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.raw");
    const top = join(dir.path, "top.qcow2");
    await Deno.writeFile(base, new Uint8Array(1 << 20).fill(3));
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base.raw",
      "-F",
      "raw",
      top,
      "1M",
    );
    const opened: { closed: number }[] = [];
    const openSource = async (name: string) => {
      const s = await spied(name);
      opened.push(s);
      return s;
    };

    for (const path of [top, base]) {
      const mine = await spied(path);
      const image = await openImage(mine, {
        format: path === top ? "qcow2" : "raw",
        references: "auto",
        openSource,
      });
      assert.strictEqual((await image.readAt(0, 1))[0], 3);
      await image.close();
      assert.strictEqual(mine.closed, 0, `${path}: the caller's source`);
      assert.strictEqual((await mine.read(0, 1)).length, 1, "still readable");
      mine.close();
    }
    // The backing file the reader opened by name is closed with the image.
    assert.strictEqual(opened.length, 1);
    assert.strictEqual(opened[0].closed, 1);

    // A failed open leaves the caller's source open too.
    const garbage = join(dir.path, "garbage.qcow2");
    await Deno.writeFile(garbage, new Uint8Array(512));
    const bad = await spied(garbage);
    await assert.rejects(openImage(bad, { format: "qcow2" }));
    assert.strictEqual(bad.closed, 0);
    bad.close();

    // The tools follow the same rule.
    const mine = await spied(top);
    await imageInfo(mine, { format: "qcow2" });
    await checkImage(mine, { format: "qcow2" });
    await mapImage(mine, { format: "qcow2", references: "auto" });
    await compareImages(mine, base, {
      formats: ["qcow2", "raw"],
      references: "auto",
    });
    assert.strictEqual(mine.closed, 0);
    mine.close();

    // What openImage opens by name, it closes: count this process's file
    // descriptors on this test's files (other tests run in this process).
    const fds = () =>
      [...Deno.readDirSync("/proc/self/fd")].filter((e) => {
        try {
          return Deno.readLinkSync(`/proc/self/fd/${e.name}`)
            .startsWith(dir.path);
        } catch {
          return false; // closed meanwhile
        }
      }).length;
    const before = fds();
    const image = await openImage(top);
    assert.strictEqual(fds(), before + 2, "the image and its backing file");
    await image.close();
    assert.strictEqual(fds(), before);
    await imageInfo(top, { backingChain: true });
    await checkImage(top);
    await mapImage(top);
    await compareImages(top, base);
    assert.strictEqual(fds(), before, "the tools close what they open");
  },
);

qemuTest(
  "model: compareImages opens each input and its backing file once",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.raw");
    await Deno.writeFile(base, new Uint8Array(1 << 20).fill(5));
    const tops = ["a.qcow2", "b.qcow2"].map((n) => join(dir.path, n));
    for (const top of tops) {
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.raw",
        "-F",
        "raw",
        top,
        "1M",
      );
    }
    const opens: string[] = [];
    const openSource = async (name: string) => {
      opens.push(name);
      return await spied(name);
    };
    const [a, b] = await Promise.all(tops.map(spied));
    const headerReads = [0, 0];
    for (const [i, s] of [a, b].entries()) {
      const read = s.read;
      s.read = (offset, length) => {
        if (offset === 0) headerReads[i]++;
        return read(offset, length);
      };
    }
    const result = await compareImages(a, b, {
      formats: ["qcow2", "qcow2"],
      references: "auto",
      openSource,
    });
    assert.strictEqual(result.identical, true);
    assert.deepStrictEqual(opens, [base, base], "one backing open per input");
    // One open reads the header (and the magic, when probing): before, a
    // second open of each input read it again.
    const once = [0, 0];
    for (const [i, top] of tops.entries()) {
      const s = await spied(top);
      const read = s.read;
      s.read = (offset, length) => {
        if (offset === 0) once[i]++;
        return read(offset, length);
      };
      await using image = await openImage(s, {
        format: "qcow2",
        references: "auto",
        openSource: (n) => spied(n),
      });
      assert.strictEqual(image.virtualSize, 1 << 20);
      s.close();
    }
    assert.deepStrictEqual(headerReads, once);
    a.close();
    b.close();
  },
);
