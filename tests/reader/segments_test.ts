import assert from "node:assert";
import { join } from "node:path";
import { openImage } from "../../lib/reader/open.ts";
import { readSegments } from "../../lib/reader/segments.ts";
import { FileSource } from "../../lib/io/file_source.ts";
import { convertToBytes } from "../../lib/writer/qcow2_writer.ts";
import { tempDir } from "../_qemu.ts";
import { CodecPool } from "../../lib/codec/pool.ts";

/** 8 MiB with data runs of 1 to 7 clusters between holes. */
function scattered(): Uint8Array {
  const raw = new Uint8Array(8 << 20);
  let at = 0;
  for (let run = 1; at < raw.length; run = run % 7 + 1) {
    const end = Math.min(raw.length, at + run * 65536);
    for (let i = at; i < end; i += 512) raw[i] = 1 + (i >> 9) % 251;
    at = end + 65536 * (run % 3 + 1);
  }
  return raw;
}

Deno.test("readSegments({ reuseBuffers }) reads the same bytes as without, into a few buffers used again", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  const path = join(dir.path, "s.qcow2");
  await Deno.writeFile(path, await convertToBytes(raw, { workers: 1 }));
  for (const reuseBuffers of [false, true]) {
    await using source = await FileSource.open(path);
    await using image = await openImage(source, { format: "qcow2" });
    const got = new Uint8Array(raw.length);
    const buffers = new Set<ArrayBufferLike>();
    let segments = 0;
    for await (
      const s of readSegments(image, {
        reuseBuffers,
        chunkSize: 1 << 20,
        maxInFlight: 4,
      })
    ) {
      if (!s.data) continue;
      got.set(s.data, s.offset); // done with it before asking for the next
      buffers.add(s.data.buffer);
      segments++;
    }
    assert.deepStrictEqual(got, raw);
    assert.ok(segments > 20, `${segments} data segments`);
    if (reuseBuffers) {
      assert.ok(
        buffers.size < segments / 2,
        `${buffers.size} buffers for ${segments} segments`,
      );
    } else {
      assert.strictEqual(buffers.size, segments);
    }
  }
});

Deno.test("readSegments({ reuseBuffers }) decompresses into buffers used again: the same bytes, zlib and zstd, on workers and inline", async () => {
  await using dir = await tempDir();
  const raw = scattered();
  // Text-like bytes so that the clusters compress.
  for (let i = 0; i < raw.length; i += 4096) {
    if (raw[i] !== 0) raw.fill(raw[i], i, i + 1000);
  }
  for (const compression of ["zlib", "zstd"] as const) {
    const path = join(dir.path, `${compression}.qcow2`);
    await Deno.writeFile(
      path,
      await convertToBytes(raw, { compression, workers: 1 }),
    );
    for (const workers of [0, 2]) {
      await using pool = new CodecPool({ workers });
      await using source = await FileSource.open(path);
      await using image = await openImage(source, { format: "qcow2" });
      const got = new Uint8Array(raw.length);
      let segments = 0;
      for await (
        const s of readSegments(image, {
          pool,
          reuseBuffers: true,
          chunkSize: 256 << 10,
          maxInFlight: 3,
        })
      ) {
        if (!s.data) continue;
        got.set(s.data, s.offset); // done with it before asking for the next
        segments++;
      }
      assert.ok(segments > 10, `${segments} data segments`);
      assert.deepStrictEqual(got, raw, `${compression}, ${workers} workers`);
    }
  }
});
