// The stream stage's read-ahead keeps what a filesystem module read, to
// list its free ranges later: a read made again (a hostile filesystem can
// make a module read one block many times) must be kept once, or memory
// grows with the number of reads instead of the read-ahead.

import assert from "node:assert";
import { Lookahead } from "../../lib/sparsify/_lookahead.ts";

Deno.test("Lookahead keeps a read made again once", async () => {
  const disk = new Uint8Array(4 << 20).map((_, i) => i * 7);
  const input = ReadableStream.from([disk]).getReader();
  const la = new Lookahead(input, 8 << 20, disk.length);
  la.retain();
  for (let i = 0; i < 400; i++) await la.reader.read(1 << 20, 1 << 20);
  await la.reader.read(3 << 20, 4096);
  assert.strictEqual(la.retainedBytes, (1 << 20) + 4096);
  const kept = la.retained();
  assert.deepStrictEqual(
    await kept.read((1 << 20) + 5, 10),
    disk.subarray((1 << 20) + 5, (1 << 20) + 15),
  );
  assert.deepStrictEqual(
    await kept.read(3 << 20, 4096),
    disk.subarray(3 << 20, (3 << 20) + 4096),
  );
  await assert.rejects(kept.read(0, 10), /were not kept/);
  input.releaseLock();
});
