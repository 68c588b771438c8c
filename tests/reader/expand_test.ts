import assert from "node:assert";
import { join } from "node:path";
import { expandToFile } from "../../lib/reader/expand.ts";
import { openImage } from "../../lib/reader/open.ts";
import { OutputFile } from "../../lib/io/output_file.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { qemuImg, qemuIo, qemuTest, tempDir } from "../_qemu.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

async function readAt(
  path: string,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  using file = await Deno.open(path);
  await file.seek(offset, Deno.SeekMode.Start);
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await file.read(out.subarray(done));
    if (n === null) break;
    done += n;
  }
  return out.subarray(0, done);
}

qemuTest(
  "convert expands a 4 TiB image with three written clusters to a sparse file of kilobytes",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "huge.qcow2");
    const TiB = 2 ** 40;
    await qemuImg("create", "-q", "-f", "qcow2", img, "4T");
    const spots = [0, 2 * TiB + 65536 * 3, 4 * TiB - 65536];
    await qemuIo(img, spots.map((at, i) => `write -P ${0x41 + i} ${at} 64k`));
    const out = join(dir.path, "huge.raw");
    const r = await new Deno.Command("deno", {
      args: ["run", "-A", CLI, "convert", "-q", img, out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
    const info = await Deno.stat(out);
    assert.strictEqual(info.size, 4 * TiB);
    assert.ok(
      (info.blocks ?? 0) * 512 <= 1024 * 1024,
      `${info.blocks} blocks on disk`,
    );
    for (const [i, at] of spots.entries()) {
      assert.ok(
        (await readAt(out, at, 65536)).every((b) => b === 0x41 + i),
        `cluster at ${at}`,
      );
    }
    assert.ok(
      (await readAt(out, 65536, 65536)).every((b) => b === 0),
      "the rest reads as zeros",
    );
  },
);

Deno.test("expandToFile() writes data runs whole and leaves zero blocks as holes", async () => {
  await using dir = await tempDir();
  // 1 MiB of data, 1 MiB of zeros, then 100 KiB and a bit of data. A raw
  // image reports everything as data, so the zero run is found by scanning.
  const raw = new Uint8Array(2 * 1024 * 1024 + 100 * 1024 + 123);
  raw.fill(5, 0, 1024 * 1024);
  raw.fill(6, 2 * 1024 * 1024);
  const path = join(dir.path, "out.raw");
  await using image = await openImage(raw); // a raw image: everything is data
  const written = await expandToFile(image, await OutputFile.create(path));
  assert.strictEqual(
    written,
    1024 * 1024 + 100 * 1024 + 123,
    "zero blocks were not written",
  );
  // Whole sectors, as qemu-img convert -f raw -O raw writes: the tail of the
  // last sector reads as zeros.
  const padded = new Uint8Array(Math.ceil(raw.length / 512) * 512);
  padded.set(raw);
  assert.deepStrictEqual(await Deno.readFile(path), padded);

  await using qcow2 = await openImage(
    await convertToBytes(raw, { clusterSize: 4096 }),
  );
  const path2 = join(dir.path, "out2.raw");
  await expandToFile(qcow2, await OutputFile.create(path2));
  assert.deepStrictEqual(
    (await Deno.readFile(path2)).subarray(0, raw.length),
    raw,
  );
});
