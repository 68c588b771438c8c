// Malformed, unsupported and broken images, built by QEMU and then cut or
// patched: each must end in a thrown Qcow2Error naming the problem, at
// open or at read time, through every read path, never a hang or a crash.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, readAt, tempDir } from "../_qemu.ts";
import {
  assertQcow2Rejects,
  assertSameBytes,
  expandSegments,
  expandStream,
  headerOf,
  mixedBytes,
  patchFile,
  patternFile,
  prng,
  qemuImg,
  qemuIoAll,
  qemuRaw,
  u32,
  u64,
} from "./_helpers.ts";
import { openImage, type OpenImageOptions } from "../../lib/reader/open.ts";
import { CodecPool } from "../../lib/codec/pool.ts";
import { mapImage } from "../../lib/tools/map.ts";
import { readFormatsText } from "../../lib/reader/formats.ts";
import { imageInfo } from "../../lib/tools/info.ts";
import type { Qcow2ErrorCode } from "../../lib/format/errors.ts";
import type { Qcow2Header } from "../../lib/format/header.ts";
import { decodeL1Entry } from "../../lib/format/l1.ts";
import { decodeL2Entry, type L2Entry } from "../../lib/format/l2.ts";
import { compressedRange } from "../../lib/format/compressed.ts";
import { geometryOf } from "../../lib/format/geometry.ts";

const KiB = 1024;
const MiB = 1024 * 1024;

/** Where QEMU put an image's tables and clusters. */
interface Layout {
  header: Qcow2Header;
  cs: number;
  l1Offset: number;
  /** Host offset of the L2 table of L1 entry 0. */
  l2Offset: number;
  /** Decoded L2 entries of that table, with where each is stored. */
  entries: Array<{ guest: number; at: number; entry: L2Entry }>;
}

async function layoutOf(path: string): Promise<Layout> {
  const header = await headerOf(path);
  const g = geometryOf(header);
  const l1 = await readAt(path, header.l1TableOffset, header.l1Size * 8);
  const l2Offset = decodeL1Entry(l1, 0).l2Offset;
  const table = await readAt(path, l2Offset, g.clusterSize);
  const entries = [];
  for (let i = 0; i < g.l2Entries; i++) {
    const entry = decodeL2Entry(table, i, {
      clusterBits: g.clusterBits,
      extendedL2: g.extendedL2,
      dataFile: g.dataFile,
    });
    if (entry.type === "unallocated") continue;
    entries.push({
      guest: i * g.clusterSize,
      at: l2Offset + i * g.l2EntrySize,
      entry,
    });
  }
  return {
    header,
    cs: g.clusterSize,
    l1Offset: header.l1TableOffset,
    l2Offset,
    entries,
  };
}

/**
 * An image with normal data clusters first, then compressed clusters last
 * in the file: 1 MiB, 64 KiB clusters.
 */
async function sample(
  dir: string,
  name: string,
  opts = "cluster_size=65536",
): Promise<string> {
  const img = join(dir, name);
  await qemuImg("create", "-q", "-f", "qcow2", "-o", opts, img, String(MiB));
  const pat = await patternFile(dir, 1);
  await qemuIoAll(img, [
    `write -q -s ${pat} 0 ${128 * KiB}`,
    `write -q -c -s ${pat} ${256 * KiB} ${64 * KiB}`,
    `write -q -c -P 0x33 ${512 * KiB} ${64 * KiB}`,
  ]);
  return img;
}

/** Asserts that opening fails with a Qcow2Error. */
function failsToOpen(
  path: string | Uint8Array,
  code: Qcow2ErrorCode,
  fragment: string | RegExp,
  options?: OpenImageOptions,
) {
  return assertQcow2Rejects(() => openImage(path, options), code, fragment);
}

/**
 * Asserts that the image opens but reading it fails with a Qcow2Error
 * through every path: random reads, segments without a pool, the stream
 * with a pool (and, when `extents`, listing extents).
 */
async function failsToRead(
  path: string,
  code: Qcow2ErrorCode,
  fragment: string | RegExp,
  opts: { extents?: boolean } = {},
) {
  await using image = await openImage(path);
  await assertQcow2Rejects(
    () => image.readAt(0, image.virtualSize),
    code,
    fragment,
  );
  await assertQcow2Rejects(
    () => expandSegments(image, { chunkSize: 65536 }),
    code,
    fragment,
  );
  {
    await using pool = new CodecPool({ workers: 2 });
    await assertQcow2Rejects(() => expandStream(image, pool), code, fragment);
  }
  if (opts.extents) {
    await assertQcow2Rejects(
      () => Array.fromAsync(image.extents()),
      code,
      fragment,
    );
  }
}

qemuTest("malformed: truncated at every structure", async () => {
  await using dir = await tempDir();
  const img = await sample(dir.path, "img.qcow2");
  const full = await Deno.readFile(img);
  const l = await layoutOf(img);
  const data = l.entries.filter((e) => e.entry.type === "normal");
  const compressed = l.entries.filter((e) => e.entry.type === "compressed");
  assert.strictEqual(data.length, 2);
  assert.strictEqual(compressed.length, 2);
  // QEMU allocated in this order; the cuts below rely on it.
  assert.ok(l.l1Offset < l.l2Offset);
  assert.ok(l.l2Offset < data[0].entry.hostOffset);
  assert.ok(data[1].entry.hostOffset < compressed[0].entry.hostOffset);
  const cut = join(dir.path, "cut.qcow2");
  const cutAt = async (n: number) =>
    await Deno.writeFile(cut, full.slice(0, n));

  // Inside the header and its extensions: refused at open.
  for (
    const [n, code, fragment] of [
      [50, "TRUNCATED", "shorter than the 72-byte header"],
      [100, "TRUNCATED", "shorter than the 104-byte v3 header"],
      [108, "TRUNCATED", "header_length 112"],
      [120, "TRUNCATED", "inside the header extensions"],
      [300, "TRUNCATED", "inside the header extensions"],
      [4096, "TRUNCATED", "L1 table"],
      [l.l1Offset, "TRUNCATED", "L1 table"],
      [l.l1Offset + 4, "TRUNCATED", "ends past the end of the file"],
    ] as const
  ) {
    await cutAt(n);
    await failsToOpen(cut, code, fragment);
    await failsToOpen(full.slice(0, n), code, fragment);
  }
  // Too short to carry the magic and a version (qemu-img probes 4 bytes of
  // magic as raw too: its probe reads version 0 past the end): only a
  // forced qcow2 open can tell.
  for (const n of [3, 4]) {
    await cutAt(n);
    {
      await using raw = await openImage(cut);
      assert.strictEqual(raw.format, "raw");
    }
    await failsToOpen(cut, "TRUNCATED", "72-byte header", { format: "qcow2" });
  }

  // Inside the L2 table: refused when reading.
  await cutAt(l.l2Offset + 100);
  await failsToRead(
    cut,
    "TRUNCATED",
    /L2 table at 0x[0-9a-f]+ .*end of the file/,
    {
      extents: true,
    },
  );
  // Before a data cluster.
  await cutAt(data[1].entry.hostOffset);
  await failsToRead(
    cut,
    "TRUNCATED",
    `maps to host offset 0x${
      data[1].entry.hostOffset.toString(16)
    }, past the end of the file`,
    { extents: true },
  );
  // Before a compressed cluster.
  await cutAt(compressed[0].entry.hostOffset);
  await failsToRead(cut, "TRUNCATED", "compressed cluster for guest offset", {
    extents: true,
  });
  // Inside compressed data (the payload itself, not the sector slack).
  const range = compressedRange(compressed[1].entry.compressed!);
  await cutAt(range.offset + 16);
  await failsToRead(
    cut,
    "DECOMPRESS",
    `guest offset 0x${compressed[1].guest.toString(16)}`,
  );
});

qemuTest(
  "malformed: truncated inside the last data cluster reads zeros, as QEMU does",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "img.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", img, String(MiB));
    const pat = await patternFile(dir.path, 3);
    await qemuIoAll(img, [`write -q -s ${pat} 0 ${200 * KiB}`]);
    const l = await layoutOf(img);
    const last = Math.max(...l.entries.map((e) => e.entry.hostOffset));
    const full = await Deno.readFile(img);
    assert.strictEqual(full.length, last + l.cs, "the data cluster is last");
    await Deno.writeFile(img, full.slice(0, last + 1000));
    const want = await qemuRaw(img, dir.path);
    await using image = await openImage(img);
    assertSameBytes(await image.readAt(0, image.virtualSize), want, "readAt");
    assertSameBytes(await expandSegments(image), want, "segments");
  },
);

qemuTest("malformed: table offsets past the end or unaligned", async () => {
  await using dir = await tempDir();
  const img = await sample(dir.path, "base.qcow2");
  const orig = await Deno.readFile(img);
  const l = await layoutOf(img);
  const path = join(dir.path, "bad.qcow2");
  const fresh = async () => await Deno.writeFile(path, orig);
  const COPIED = 1n << 63n;

  // L1 table offset past the end of the file.
  await fresh();
  await patchFile(path, 40, u64(1 << 30));
  await failsToOpen(path, "TRUNCATED", "L1 table at 0x40000000");
  // Unaligned L1 table offset.
  await fresh();
  await patchFile(path, 40, u64(l.l1Offset + 512));
  await failsToOpen(path, "UNALIGNED", "l1_table_offset");

  // L1 entry pointing past the end of the file.
  await fresh();
  await patchFile(path, l.l1Offset, u64(COPIED | (1n << 40n)));
  await failsToRead(path, "TRUNCATED", "L2 table at 0x10000000000", {
    extents: true,
  });
  // L1 entry not aligned to a cluster.
  await fresh();
  await patchFile(path, l.l1Offset, u64(COPIED | BigInt(l.l2Offset + 512)));
  await failsToRead(
    path,
    "UNALIGNED",
    "not aligned to the cluster size 65536",
    {
      extents: true,
    },
  );
  // L1 entry pointing at the L1 table itself.
  await fresh();
  await patchFile(path, l.l1Offset, u64(COPIED | BigInt(l.l1Offset)));
  await failsToRead(path, "CORRUPT", "overlaps the L1 table", {
    extents: true,
  });
  // L1 entry pointing at the refcount table.
  await fresh();
  await patchFile(
    path,
    l.l1Offset,
    u64(COPIED | BigInt(l.header.refcountTableOffset)),
  );
  await failsToRead(path, "CORRUPT", "overlaps the refcount table", {
    extents: true,
  });

  const data = l.entries.find((e) => e.entry.type === "normal")!;
  // L2 entry pointing past the end of the file.
  await fresh();
  await patchFile(path, data.at, u64(COPIED | (1n << 40n)));
  await failsToRead(path, "TRUNCATED", "maps to host offset 0x10000000000", {
    extents: true,
  });
  // L2 entry not aligned to a cluster.
  await fresh();
  await patchFile(
    path,
    data.at,
    u64(COPIED | BigInt(data.entry.hostOffset + 4096)),
  );
  await failsToRead(
    path,
    "UNALIGNED",
    "which is not aligned to the cluster size",
    {
      extents: true,
    },
  );
  // Compressed descriptor pointing past the end of the file.
  const comp = l.entries.find((e) => e.entry.type === "compressed")!;
  await fresh();
  const raw = await readAt(path, comp.at, 8);
  const hi = new DataView(raw.buffer).getUint32(0);
  // Keep the sector count, move the offset to 1 GiB.
  await patchFile(path, comp.at, u32((hi & ~0x3fffff) | 0));
  await patchFile(path, comp.at + 4, u32(1 << 30));
  await failsToRead(path, "TRUNCATED", "starts at host offset 0x40000000", {
    extents: true,
  });

  // Snapshot table past the end of the file.
  await fresh();
  await patchFile(path, 60, u32(1));
  await patchFile(path, 64, u64(1 << 30));
  await failsToOpen(path, "TRUNCATED", "snapshot 0");
});

qemuTest("malformed: absurd header fields", async () => {
  await using dir = await tempDir();
  const img = await sample(dir.path, "base.qcow2");
  const orig = await Deno.readFile(img);
  const path = join(dir.path, "bad.qcow2");
  const cases: Array<[number, Uint8Array, Qcow2ErrorCode, string]> = [
    [36, u32(0x7fffffff), "OUT_OF_RANGE", "l1_size 2147483647"],
    [36, u32(0), "OUT_OF_RANGE", "l1_size 0 is too small"],
    [56, u32(0xffffffff), "OUT_OF_RANGE", "refcount_table_clusters 4294967295"],
    [56, u32(0), "OUT_OF_RANGE", "refcount_table_clusters 0"],
    [20, u32(30), "OUT_OF_RANGE", "cluster_bits 30"],
    [20, u32(8), "OUT_OF_RANGE", "cluster_bits 8"],
    [24, u64(1n << 60n), "OUT_OF_RANGE", "size"],
    [0, u32(0x514649fa), "BAD_MAGIC", "magic 0x514649fa"],
    [4, u32(4), "UNSUPPORTED_VERSION", "version 4"],
    [4, u32(1), "UNSUPPORTED_VERSION", "version 1"],
    [72, u64(1n << 5n), "UNSUPPORTED_FEATURE", "bit 5"],
    [72, u64(1n << 63n), "UNSUPPORTED_FEATURE", "bit 63"],
    [72, u64(2n), "CORRUPT", "corrupt bit"],
    [32, u32(1), "ENCRYPTED", "AES"],
    [32, u32(7), "OUT_OF_RANGE", "crypt_method 7"],
    [96, u32(7), "OUT_OF_RANGE", "refcount_order 7"],
    [100, u32(201), "OUT_OF_RANGE", "header_length 201"],
    // Longer than the header cluster: lib/format calls it truncated.
    [100, u32(1 << 20), "TRUNCATED", "header_length 1048576"],
    [60, u32(70000), "OUT_OF_RANGE", "nb_snapshots 70000"],
  ];
  for (const [at, bytes, code, fragment] of cases) {
    await Deno.writeFile(path, orig);
    await patchFile(path, at, bytes);
    await failsToOpen(path, code, fragment, { format: "qcow2" });
    // Bytes in memory fail the same way.
    await failsToOpen(await Deno.readFile(path), code, fragment, {
      format: "qcow2",
    });
  }
  // Without a forced format a bad magic is not qcow2 at all: QEMU's
  // probing would call it raw too.
  await Deno.writeFile(path, orig);
  await patchFile(path, 0, u32(0x514649fa));
  await using raw = await openImage(path);
  assert.strictEqual(raw.format, "raw");
  // A raw disk is the file rounded up to whole sectors, as QEMU opens it.
  assert.strictEqual(raw.virtualSize, Math.ceil(orig.length / 512) * 512);
  assert.strictEqual(raw.virtualSize, (await imageInfo(path)).virtualSize);
});

qemuTest("malformed: encrypted images (LUKS and AES)", async () => {
  await using dir = await tempDir();
  const luks = join(dir.path, "luks.qcow2");
  // QEMU benchmarks PBKDF2 on creation and fails when thread CPU time is
  // too coarse to measure ("Unable to get accurate CPU usage"): retry.
  for (let attempt = 1;; attempt++) {
    try {
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=abc",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        luks,
        String(MiB),
      );
      break;
    } catch (err) {
      if (attempt >= 5 || !/accurate CPU usage/.test(String(err))) throw err;
    }
  }
  assert.strictEqual((await headerOf(luks)).cryptMethod, 2);
  await failsToOpen(luks, "ENCRYPTED", "LUKS");
  const aes = join(dir.path, "aes.qcow2");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "--object",
    "secret,id=sec0,data=abc",
    "-o",
    "encryption=on,encrypt.key-secret=sec0",
    aes,
    String(MiB),
  );
  assert.strictEqual((await headerOf(aes)).cryptMethod, 1);
  await failsToOpen(aes, "ENCRYPTED", "AES");
  // An encrypted backing file is refused too.
  const top = join(dir.path, "top.qcow2");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-u",
    "-b",
    luks,
    "-F",
    "qcow2",
    top,
    String(MiB),
  );
  await failsToOpen(top, "ENCRYPTED", "LUKS");
});

qemuTest("malformed: backing chains that loop or are missing", async () => {
  await using dir = await tempDir();
  const mk = async (name: string, backing?: string) => {
    const p = join(dir.path, name);
    const args = ["create", "-q", "-f", "qcow2"];
    if (backing) args.push("-u", "-b", backing, "-F", "qcow2");
    await qemuImg(...args, p, String(MiB));
    return p;
  };
  // An image whose backing file is itself.
  const self = await mk("self.qcow2");
  await qemuImg("rebase", "-u", "-b", "self.qcow2", "-F", "qcow2", self);
  await failsToOpen(self, "BACKING", "loops back");
  // A -> B -> A.
  const a = await mk("a.qcow2");
  const b = await mk("b.qcow2", "a.qcow2");
  await qemuImg("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a);
  await failsToOpen(a, "BACKING", "loops back");
  await failsToOpen(b, "BACKING", "loops back");
  // A loop through another spelling of the same file (a symlink).
  await Deno.symlink(join(dir.path, "c.qcow2"), join(dir.path, "link.qcow2"));
  const c = await mk("c.qcow2");
  const d = await mk("d.qcow2", "link.qcow2");
  await qemuImg("rebase", "-u", "-b", "d.qcow2", "-F", "qcow2", c);
  await failsToOpen(d, "BACKING", "loops back");
  // A long chain, and the depth limit.
  let below = await mk("chain0.qcow2");
  for (let i = 1; i <= 4; i++) below = await mk(`chain${i}.qcow2`, below);
  {
    await using ok = await openImage(below);
    assert.strictEqual(ok.virtualSize, MiB);
  }
  await failsToOpen(below, "BACKING", "deeper than 3 images", {
    maxBackingDepth: 3,
  });
  // A missing backing file.
  const orphan = await mk("orphan.qcow2", "gone.qcow2");
  await failsToOpen(orphan, "BACKING", `gone.qcow2": no such file`);
  // A missing raw backing file, named by a relative path.
  const orphan2 = join(dir.path, "orphan2.qcow2");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-u",
    "-b",
    "sub/missing.raw",
    "-F",
    "raw",
    orphan2,
    String(MiB),
  );
  await failsToOpen(orphan2, "BACKING", "missing.raw");
});

qemuTest(
  "malformed: a backing format we cannot read is refused by the reader and the tools",
  async () => {
    await using dir = await tempDir();
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      join(dir.path, "base.qcow2"),
      "1M",
    );
    const img = join(dir.path, "over.qcow2");
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-b",
      "base.qcow2",
      "-F",
      "qed",
      img,
      "1M",
    );
    const why =
      `Cannot open backing file "base.qcow2": backing format "qed" is not supported (${
        readFormatsText("or", "qcow2")
      })`;
    await failsToOpen(img, "BACKING", why);
    await assertQcow2Rejects(
      () => mapImage(img),
      "BACKING",
      `"qed" is not supported`,
    );
  },
);

for (const type of ["zlib", "zstd"]) {
  qemuTest(`malformed: garbage in a ${type} compressed cluster`, async () => {
    await using dir = await tempDir();
    const img = await sample(
      dir.path,
      "img.qcow2",
      `cluster_size=65536,compression_type=${type}`,
    );
    const orig = await Deno.readFile(img);
    const l = await layoutOf(img);
    const comp = l.entries.filter((e) => e.entry.type === "compressed");
    assert.strictEqual(comp.length, 2);
    const rand = prng(7);
    const garbage: Array<[string, (n: number) => Uint8Array]> = [
      ["0xff", (n) => new Uint8Array(n).fill(0xff)],
      ["zeros", (n) => new Uint8Array(n)],
      ["random", (n) => Uint8Array.from({ length: n }, () => rand() * 256)],
      // Valid-looking text where compressed data should be.
      ["text", (n) => mixedBytes(n, 3)],
    ];
    for (const [label, make] of garbage) {
      for (const target of comp) {
        const r = compressedRange(target.entry.compressed!);
        await Deno.writeFile(img, orig);
        await patchFile(img, r.offset, make(r.length));
        await failsToRead(
          img,
          "DECOMPRESS",
          `guest offset 0x${
            target.guest.toString(16)
          } of ${img}: ${type} cluster`,
        );
        // Reads that avoid the broken cluster still work.
        await using image = await openImage(img);
        assert.strictEqual(
          (await image.readAt(0, 128 * KiB)).length,
          128 * KiB,
          label,
        );
      }
    }
    // Only the tail of the payload is broken (the stream ends too early).
    const r = compressedRange(comp[0].entry.compressed!);
    await Deno.writeFile(img, orig);
    await patchFile(img, r.offset + 8, new Uint8Array(r.length - 8));
    await failsToRead(img, "DECOMPRESS", `${type}`);
  });
}

qemuTest("malformed: snapshot that does not exist", async () => {
  await using dir = await tempDir();
  const img = await sample(dir.path, "img.qcow2");
  await failsToOpen(img, "BAD_SNAPSHOT", `"nope": no snapshot`, {
    snapshot: "nope",
  });
  await failsToOpen(img, "BAD_SNAPSHOT", "(snapshots: none)", {
    snapshot: "1",
  });
  await qemuImg("snapshot", "-c", "one", img);
  await qemuImg("snapshot", "-c", "two", img);
  await failsToOpen(img, "BAD_SNAPSHOT", `1 "one", 2 "two"`, {
    snapshot: "three",
  });
  await failsToOpen(img, "BAD_SNAPSHOT", `"3"`, { snapshot: "3" });
  // A raw image has no snapshots at all.
  const raw = join(dir.path, "disk.raw");
  await Deno.writeFile(raw, new Uint8Array(4096));
  await assert.rejects(openImage(raw, { snapshot: "x" }), RangeError);
});
