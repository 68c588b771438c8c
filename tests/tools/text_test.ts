// Unit tests of the pieces behind the tools: QEMU's JSON key order and
// text forms, size_to_str(), %0.2f rounding, the compact refcount map,
// the LUKS header decoder and the file status of holes.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import { qemuImg } from "./_helpers.ts";
import {
  qdictOrder,
  qemuDump,
  qemuJson,
  sizeToStr,
  tdbHash,
} from "../../lib/tools/_qemu_text.ts";
import { RefcountMap } from "../../lib/tools/_refmap.ts";
import { parseLuksHeader } from "../../lib/format/luks.ts";
import type { HoleProbe } from "../../lib/io/host_files.ts";
import { openHoleProbe } from "../../lib/host/_holes.ts";
import { fileStatus } from "../../lib/reader/_file_status.ts";
import { type CheckResult, formatCheckResult } from "../../lib/tools/mod.ts";
import { Qcow2Error } from "../../mod.ts";

Deno.test("qemuJson() orders keys as a QDict and prints like QEMU's JSON writer", () => {
  // tdb_hash() buckets: "virtual-size" 309, "filename" 313, "dirty-flag" 501.
  assert.strictEqual(tdbHash("filename") % 512, 313);
  assert.deepStrictEqual(
    qdictOrder(["filename", "dirty-flag", "virtual-size"]),
    [
      "virtual-size",
      "filename",
      "dirty-flag",
    ],
  );
  assert.strictEqual(
    qemuJson({ filename: 'a"b\\c\n\u00e9\u{1f600}' }),
    '{\n    "filename": "a\\"b\\\\c\\n\\u00E9\\uD83D\\uDE00"\n}',
  );
  assert.strictEqual(
    qemuJson({ x: [1, true], e: [] }),
    '{\n    "x": [\n        1,\n        true\n    ],\n    "e": [\n    ]\n}',
  );
});

Deno.test("qemuJson() breaks hash ties as QEMU does: the key inserted last comes first", () => {
  // Find two keys in one bucket.
  const seen = new Map<number, string>();
  let pair: [string, string] | undefined;
  for (let i = 0; !pair; i++) {
    const key = `k${i}`;
    const b = tdbHash(key) % 512;
    if (seen.has(b)) pair = [seen.get(b)!, key];
    else seen.set(b, key);
  }
  assert.deepStrictEqual(qdictOrder(pair), [pair[1], pair[0]]);
});

Deno.test("qemuDump() prints nested values as qemu-img's human format", () => {
  assert.strictEqual(
    qemuDump({ "refcount-bits": 16, bitmaps: [{ flags: [], name: "b" }] }, 1),
    "    bitmaps:\n        [0]:\n            flags:\n            name: b\n    refcount bits: 16\n",
  );
});

Deno.test("sizeToStr() prints like QEMU's size_to_str()", () => {
  assert.strictEqual(sizeToStr(0), "0 B");
  assert.strictEqual(sizeToStr(999), "999 B");
  assert.strictEqual(sizeToStr(1000), "0.977 KiB");
  assert.strictEqual(sizeToStr(200704), "196 KiB");
  assert.strictEqual(sizeToStr(2297856), "2.19 MiB");
  assert.strictEqual(sizeToStr(2 ** 60), "1 EiB");
});

qemuTest(
  "sizeToStr() agrees with qemu-img info's virtual size line",
  async () => {
    await using dir = await tempDir();
    const path = join(dir.path, "s.raw");
    for (
      const size of [512, 1024000, 1047552, 1536, 5_000_000_000, 2 ** 40 - 512]
    ) {
      {
        using f = await Deno.open(path, { write: true, create: true });
        await f.truncate(size);
      }
      assert.match(
        await qemuImg("info", path),
        new RegExp(
          `^virtual size: ${
            sizeToStr(size).replace(".", "\\.")
          } \\(${size} bytes\\)$`,
          "m",
        ),
      );
    }
  },
);

Deno.test("formatCheckResult() rounds exact ties to even, as printf's %0.2f", () => {
  const r: CheckResult = {
    filename: "x",
    format: "qcow2",
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    imageEndOffset: 0,
    totalClusters: 800,
    allocatedClusters: 1,
    fragmentedClusters: 0,
    compressedClusters: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    messages: [],
    exitCode: 0,
  };
  assert.match(
    formatCheckResult(r),
    /^1\/800 = 0\.12% allocated, 0\.00% fragmented, 0\.00% compressed clusters$/m,
  );
  assert.match(
    formatCheckResult({ ...r, totalClusters: 3 }),
    /= 33\.33% allocated/,
  );
  assert.match(
    formatCheckResult({ ...r, allocatedClusters: 3, totalClusters: 800 }),
    /= 0\.38% allocated/,
  );
});

Deno.test("RefcountMap counts past 255, saturates at the refcount maximum and grows by one cluster", () => {
  const map = new RefcountMap(4, 300);
  for (let i = 0; i < 299; i++) assert.ok(map.increment(2));
  assert.strictEqual(map.get(2), 299);
  assert.ok(map.increment(2));
  assert.strictEqual(map.increment(2), false);
  assert.strictEqual(map.get(2), 300);
  const one = new RefcountMap(2, 1);
  assert.ok(one.increment(0));
  assert.strictEqual(one.increment(0), false);
  assert.strictEqual(one.size, 2);
  assert.ok(one.increment(2)); // just past the file
  assert.strictEqual(one.size, 3);
  assert.throws(() => one.increment(3), RangeError);
});

Deno.test("parseLuksHeader() decodes the public fields of a LUKS1 header", () => {
  const h = new Uint8Array(592);
  const v = new DataView(h.buffer);
  h.set([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
  v.setUint16(6, 1);
  const text = (at: number, s: string) =>
    h.set(new TextEncoder().encode(s), at);
  text(8, "aes");
  text(40, "cbc-essiv:sha256");
  text(72, "sha1");
  v.setUint32(104, 4096);
  v.setUint32(108, 16);
  v.setUint32(164, 1000);
  text(168, "0d5b1f2e-0000-4000-8000-000000000001");
  for (let i = 0; i < 8; i++) {
    v.setUint32(208 + i * 48, i === 1 ? 0x00ac71f3 : 0x0000dead);
    v.setUint32(212 + i * 48, 2000);
    v.setUint32(248 + i * 48, 8 + i * 512);
    v.setUint32(252 + i * 48, 4000);
  }
  const info = parseLuksHeader(h);
  assert.strictEqual(info.cipherAlg, "aes-128");
  assert.strictEqual(info.cipherMode, "cbc");
  assert.strictEqual(info.ivgenAlg, "essiv");
  assert.strictEqual(info.ivgenHashAlg, "sha256");
  assert.strictEqual(info.hashAlg, "sha1");
  assert.strictEqual(info.payloadOffset, 4096 * 512);
  assert.deepStrictEqual(info.slots[0], { active: false, keyOffset: 4096 });
  assert.deepStrictEqual(info.slots[1], {
    active: true,
    keyOffset: 520 * 512,
    iters: 2000,
    stripes: 4000,
  });
  h[0] = 0;
  assert.throws(() => parseLuksHeader(h), Qcow2Error);
});

Deno.test("fileStatus() answers as QEMU's file driver: data, holes, trailing hole, no information", () => {
  const probe = (answer: ReturnType<HoleProbe["find"]>): HoleProbe => ({
    find: () => answer,
    close() {},
  });
  assert.deepStrictEqual(
    fileStatus(probe({ data: 0, hole: 4096 }), 10240, 0, 8192),
    { zero: false, length: 4096, eof: false },
  );
  assert.deepStrictEqual(
    fileStatus(probe({ data: 8192, hole: 100 }), 10240, 100, 9000),
    { zero: true, length: 8092, eof: false },
  );
  assert.deepStrictEqual(fileStatus(probe("enxio"), 10240, 8192, 4096), {
    zero: true,
    length: 2048,
    eof: true,
  });
  assert.deepStrictEqual(fileStatus(undefined, 10240, 0, 20000), {
    zero: false,
    length: 10240,
    eof: true,
  });
  assert.deepStrictEqual(fileStatus(undefined, 10240, 10240, 512), {
    zero: false,
    length: 0,
    eof: true,
  });
});

Deno.test("openHoleProbe() finds the data and holes of a sparse file", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "sparse");
  {
    using f = await Deno.open(path, { write: true, create: true });
    await f.truncate(4 << 20);
    await f.seek(1 << 20, Deno.SeekMode.Start);
    await f.write(new Uint8Array(65536).fill(1));
  }
  const { dev, ino } = await Deno.stat(path);
  const probe = openHoleProbe(path, { dev, ino: ino! });
  if (probe === undefined) return; // no FFI here: nothing to learn
  try {
    const atStart = probe.find(0);
    assert.ok(atStart !== "enxio" && atStart !== undefined);
    // Either the file system reports the hole, or (no hole support) all data.
    if (atStart.data > 0) {
      assert.ok(atStart.data <= 1 << 20);
      const inData = probe.find(1 << 20);
      assert.ok(
        inData !== "enxio" && inData !== undefined && inData.data === 1 << 20 &&
          inData.hole > 1 << 20,
      );
    }
  } finally {
    probe.close();
  }
});
