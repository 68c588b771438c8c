// info, map and check against qemu-img on images with the optional
// features: snapshots, persistent bitmaps, backing chains, external data
// files, preallocation, lazy refcounts, encryption, header bits, odd sizes
// and raw files.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertCheckLikeQemu,
  assertInfoLikeQemu,
  assertMapLikeQemu,
  be64,
  createEncrypted,
  makeImage,
  mixedWrites,
  patch,
  qemuImg,
  qemuStatus,
  readAt,
  runStatus,
  u64At,
} from "./_helpers.ts";
import { checkImage, imageInfo, mapImage } from "../../lib/tools/mod.ts";
import { parseHeader } from "../../lib/format/mod.ts";
import { Qcow2Error } from "../../mod.ts";

const MiB = 1024 * 1024;

qemuTest(
  "tools: snapshots (dates, VM state, clock, icount) match qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(
      join(dir.path, "snap.qcow2"),
      "4M",
      [],
      mixedWrites(4 * MiB, 65536),
    );
    await qemuImg("snapshot", "-c", "first", img);
    await runStatus("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -q -P 0x77 0 128k",
      img,
    ]);
    await qemuImg("snapshot", "-c", "a-much-longer-snapshot-name", img);
    // Give the first snapshot a VM state, a guest clock and an icount.
    const table = Number(await u64At(img, 64));
    await patch(
      img,
      table + 16,
      new Uint8Array([0x5f, 0x5e, 0x10, 0x00, 0, 0, 0x30, 0x39]),
    );
    await patch(img, table + 24, be64(3_723_456_789_000n));
    await patch(img, table + 32, new Uint8Array([0, 0x50, 0, 0]));
    const extra = new DataView((await readAt(img, table + 36, 4)).buffer)
      .getUint32(0);
    assert.ok(extra >= 24, "QEMU 7.2 writes 24 bytes of extra data");
    await patch(img, table + 40, be64(5 * MiB + 123));
    await patch(img, table + 56, be64(12345));
    await assertInfoLikeQemu(img);
    await assertMapLikeQemu(img);
    const check = await assertCheckLikeQemu(img);
    assert.strictEqual(check.exitCode, 0);
    const info = await imageInfo(img);
    assert.deepStrictEqual(info.snapshots.map((s) => s.name), [
      "first",
      "a-much-longer-snapshot-name",
    ]);
    assert.strictEqual(info.snapshots[0].vmStateSize, 5 * MiB + 123);
    assert.strictEqual(info.snapshots[0].icount, 12345n);
    assert.strictEqual(info.snapshots[0].vmClockNsec, 3_723_456_789_000n);
  },
);

qemuTest(
  "tools: persistent bitmaps (auto, disabled, in use) match qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(join(dir.path, "bm.qcow2"), "8M", [], [
      "write -q -P 1 0 1M",
    ]);
    await qemuImg("bitmap", "--add", img, "enabled");
    await qemuImg(
      "bitmap",
      "--add",
      "-g",
      "128k",
      "--disable",
      img,
      "disabled",
    );
    await qemuImg("bitmap", "--add", "-g", "1M", img, "third");
    await runStatus("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -q -P 2 2M 1M",
      img,
    ]);
    await assertInfoLikeQemu(img);
    await assertMapLikeQemu(img);
    assert.strictEqual((await assertCheckLikeQemu(img)).exitCode, 0);
    // Mark "third" in use (as after a crash): qemu-img info shows "in-use".
    const header = parseHeader(await readAt(img, 0, 65536));
    const ext = header.extensions.find((e) => e.kind === "bitmaps");
    assert.ok(ext && ext.kind === "bitmaps");
    let at = ext.directoryOffset;
    for (let i = 0; i < 2; i++) {
      const e = new DataView((await readAt(img, at, 24)).buffer);
      at += Math.ceil((24 + e.getUint32(20) + e.getUint16(18)) / 8) * 8;
    }
    await patch(img, at + 12, new Uint8Array([0, 0, 0, 3]));
    await assertInfoLikeQemu(img);
    const info = await imageInfo(img);
    assert.deepStrictEqual(
      info.qcow2?.bitmaps?.map((b) => [b.name, b.granularity, b.flags]),
      [
        ["enabled", 65536, ["auto"]],
        ["disabled", 131072, []],
        ["third", 1048576, ["in-use", "auto"]],
      ],
    );
    // Bitmaps of an image whose autoclear bit was cleared are ignored, and
    // their clusters leak.
    await patch(img, 88, be64(0));
    await assertInfoLikeQemu(img);
    const leaked = await assertCheckLikeQemu(img);
    assert.strictEqual(leaked.exitCode, 3);
    assert.ok(leaked.leaks >= 4);
  },
);

qemuTest(
  "tools: backing chains (qcow2 and raw, relative names, short backing) match qemu-img",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.raw");
    await Deno.writeFile(base, new Uint8Array(3 * MiB + 1000).fill(0x42));
    const mid = await makeImage(join(dir.path, "mid.qcow2"), "6M", [
      "backing_file=base.raw",
      "backing_fmt=raw",
    ], [
      "write -q -P 0x10 64k 64k",
      "write -q -z 1M 64k",
      "write -q -c -P 0x11 2M 64k",
    ]);
    await Deno.mkdir(join(dir.path, "sub"));
    const top = await makeImage(join(dir.path, "sub", "top.qcow2"), "8M", [
      "backing_file=../mid.qcow2",
      "backing_fmt=qcow2",
    ], [
      "write -q -P 0x20 0 32k",
      "write -q -P 0x21 5M 64k",
    ]);
    // top's backing file is outside sub/: followed when the format is
    // given (a probed top is refused, tests/reader/untrusted_test.ts).
    await assert.rejects(mapImage(top), /pass -f qcow2 to follow it/);
    for (const img of [mid, top]) {
      const format = img === top ? "qcow2" : undefined;
      await assertInfoLikeQemu(img, { format });
      await assertInfoLikeQemu(img, { chain: true, format });
      await assertMapLikeQemu(img, { format });
      assert.strictEqual((await assertCheckLikeQemu(img)).exitCode, 0);
    }
    const info = await imageInfo(top, { backingChain: true, format: "qcow2" });
    assert.strictEqual(info.backingFilename, "../mid.qcow2");
    assert.strictEqual(
      info.fullBackingFilename,
      `${dir.path}/sub/../mid.qcow2`,
    );
    assert.deepStrictEqual(info.chain?.map((i) => i.format), ["qcow2", "raw"]);
    const map = await mapImage(top, { format: "qcow2" });
    assert.deepStrictEqual([...new Set(map.map((e) => e.depth))].sort(), [
      0,
      1,
      2,
    ]);
    // A missing backing file: info still works (QEMU does not open it), map does not.
    await Deno.remove(base);
    await assertInfoLikeQemu(mid);
    await assert.rejects(
      mapImage(mid),
      (e: Error) => e instanceof Qcow2Error && /base\.raw/.test(e.message),
    );
    await assert.rejects(imageInfo(mid, { backingChain: true }), Qcow2Error);
  },
);

qemuTest(
  "tools: external data files (raw and not) match qemu-img",
  async () => {
    await using dir = await tempDir();
    const a = await makeImage(join(dir.path, "a.qcow2"), "4M", [
      `data_file=${join(dir.path, "a.data")}`,
      "data_file_raw=on",
    ], [
      "write -q -P 1 0 64k",
      "write -q -z 1M 64k",
    ]);
    const b = await makeImage(join(dir.path, "b.qcow2"), "4M", [
      `data_file=${join(dir.path, "b.data")}`,
    ], [
      "write -q -P 1 64k 64k",
      "write -q -z 1M 64k",
      "write -q -P 2 3M 4k",
    ]);
    for (const img of [a, b]) {
      await assertInfoLikeQemu(img);
      await assertMapLikeQemu(img);
      const check = await assertCheckLikeQemu(img);
      assert.strictEqual(check.exitCode, 0);
      assert.ok(check.allocatedClusters > 0);
    }
    assert.strictEqual((await imageInfo(a)).qcow2?.dataFileRaw, true);
    assert.strictEqual(
      (await imageInfo(b)).qcow2?.dataFile,
      join(dir.path, "b.data"),
    );
  },
);

qemuTest(
  "tools: preallocation (metadata, falloc, full) matches qemu-img",
  async () => {
    await using dir = await tempDir();
    for (const mode of ["metadata", "falloc", "full"]) {
      const img = await makeImage(join(dir.path, `${mode}.qcow2`), "3M", [
        `preallocation=${mode}`,
      ], [
        "write -q -P 5 1M 64k",
        "write -q -z 2M 64k",
      ]);
      await assertInfoLikeQemu(img);
      await assertMapLikeQemu(img);
      assert.strictEqual((await assertCheckLikeQemu(img)).exitCode, 0, mode);
    }
    // With metadata preallocation, QEMU asks the file system: never-written
    // clusters are holes in the file and map as zero data.
    const map = await mapImage(join(dir.path, "metadata.qcow2"));
    assert.ok(map.some((e) => e.data && e.zero));
    assert.ok(map.some((e) => e.data && !e.zero));
  },
);

qemuTest(
  "tools: lazy refcounts after a crash: dirty flag and refcount errors match qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(join(dir.path, "lazy.qcow2"), "4M", [
      "lazy_refcounts=on",
    ]);
    // SIGKILL after a write: the refcounts were never written back.
    const killed = await runStatus("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -q -P 1 0 256k",
      "-c",
      "sigraise 9",
      img,
    ]);
    assert.notStrictEqual(killed.code, 0);
    await assertInfoLikeQemu(img);
    await assertMapLikeQemu(img);
    const check = await assertCheckLikeQemu(img);
    assert.strictEqual(check.exitCode, 2);
    assert.ok(
      check.messages.some((m) =>
        /^ERROR cluster \d+ refcount=0 reference=1$/.test(m)
      ),
    );
    const info = await imageInfo(img);
    assert.strictEqual(info.dirty, true);
    assert.strictEqual(info.qcow2?.lazyRefcounts, true);
  },
);

qemuTest(
  "tools: corrupt bit and encrypted images get info; unknown features are refused like qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(join(dir.path, "c.qcow2"), "4M", [], [
      "write -q -P 1 0 64k",
    ]);
    await patch(img, 72, be64(2)); // corrupt bit
    await assertInfoLikeQemu(img);
    await assertMapLikeQemu(img);
    assert.strictEqual((await assertCheckLikeQemu(img)).exitCode, 0);
    assert.strictEqual((await imageInfo(img)).qcow2?.corrupt, true);

    const luks = join(dir.path, "luks.qcow2");
    await createEncrypted(luks, "luks");
    await assertInfoLikeQemu(luks);
    const info = await imageInfo(luks);
    assert.strictEqual(info.encrypted, true);
    assert.ok(
      info.qcow2?.encrypt?.format === "luks" &&
        info.qcow2.encrypt.slots.length === 8,
    );
    // qemu-img check and map need the key; we do not: the metadata is clear.
    assert.strictEqual((await checkImage(luks)).exitCode, 0);
    assert.strictEqual((await qemuStatus("check", luks)).code, 1);

    const aes = join(dir.path, "aes.qcow2");
    await createEncrypted(aes, "aes");
    await assertInfoLikeQemu(aes);

    const unknown = await makeImage(join(dir.path, "u.qcow2"), "4M");
    await patch(unknown, 72, be64(1n << 40n));
    assert.strictEqual((await qemuStatus("info", unknown)).code, 1);
    for (const tool of [imageInfo, checkImage, mapImage]) {
      await assert.rejects(
        tool(unknown),
        (e: Error) =>
          e instanceof Qcow2Error && e.message.startsWith("Cannot ") &&
          /bit 40/.test(e.message),
      );
    }
  },
);

qemuTest(
  "tools: odd and zero virtual sizes, raw files and holes match qemu-img",
  async () => {
    await using dir = await tempDir();
    const zero = await makeImage(join(dir.path, "zero.qcow2"), "0");
    await assertInfoLikeQemu(zero);
    await assertMapLikeQemu(zero);
    await assertCheckLikeQemu(zero);
    // A size that is not a multiple of 512: QEMU sees whole sectors only.
    const odd = await makeImage(join(dir.path, "odd.qcow2"), "1M");
    await patch(odd, 24, be64(MiB + 1000));
    await assertInfoLikeQemu(odd);
    await assertMapLikeQemu(odd);
    await assertCheckLikeQemu(odd);
    assert.strictEqual((await imageInfo(odd)).virtualSize, MiB + 512);

    const raw = join(dir.path, "sparse.raw");
    {
      using f = await Deno.open(raw, { write: true, create: true });
      await f.truncate(8 * MiB + 1000);
      await f.seek(3 * MiB, Deno.SeekMode.Start);
      await f.write(new Uint8Array(70000).fill(9));
    }
    await assertInfoLikeQemu(raw);
    await assertMapLikeQemu(raw);
    const r = await checkImage(raw);
    assert.strictEqual(r.exitCode, 63);
    assert.strictEqual((await qemuStatus("check", raw)).code, 63);
    const map = await mapImage(raw);
    assert.ok(
      map.length >= 3 && map.every((e) => e.present && e.offset === e.start),
    );
  },
);
