// Golden tests: headers of images made by qemu-img, parsed with the format
// functions and checked against `qemu-img info` and the file's own bytes.
import assert from "node:assert";
import {
  createQcow2,
  qemuImg,
  qemuIo,
  qemuTest,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import {
  assertReadable,
  AUTOCLEAR,
  backingFormat,
  BITMAP_FLAGS,
  COMPAT,
  CRYPT_METHOD,
  dataFileName,
  EXTENSION,
  hasExtension,
  INCOMPAT,
  l1SizeFor,
  parseHeader,
  QEMU_FEATURE_NAMES,
  serializeHeader,
  serializeSnapshotEntry,
  validateHeader,
} from "../../lib/format/mod.ts";
import {
  bitmapDirectory,
  bytesAt,
  type Image,
  qemuInfo,
  readImage,
  snapshots,
} from "./_golden.ts";
import { assertQcow2Error } from "./_util.ts";

/**
 * Checks every header field `qemu-img info` reports, the extensions and
 * tables it implies, and that serializeHeader() reproduces the header
 * cluster byte for byte.
 */
async function checkHeader(path: string, readable = true): Promise<Image> {
  const img = await readImage(path);
  const info = await qemuInfo(path);
  const h = img.header;
  const data = info["format-specific"].data;
  const cs = img.geo.clusterSize;

  validateHeader(h);
  if (readable) assertReadable(h);

  assert.strictEqual(info["format-specific"].type, "qcow2");
  assert.strictEqual(h.size, info["virtual-size"]);
  assert.strictEqual(cs, info["cluster-size"]);
  assert.strictEqual(h.version, data.compat === "0.10" ? 2 : 3);
  assert.strictEqual(data.compat, h.version === 2 ? "0.10" : "1.1");
  assert.strictEqual(
    h.compressionType,
    { zlib: 0, zstd: 1 }[data["compression-type"]],
  );
  assert.strictEqual(2 ** h.refcountOrder, data["refcount-bits"]);
  assert.strictEqual(
    (h.incompatibleFeatures & INCOMPAT.DIRTY) !== 0n,
    info["dirty-flag"] ?? false,
  );
  if (h.version === 3) {
    assert.strictEqual(
      (h.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n,
      data["lazy-refcounts"],
    );
    assert.strictEqual(img.geo.extendedL2, data["extended-l2"]);
    assert.strictEqual(
      (h.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n,
      data.corrupt,
    );
    assert.strictEqual(
      (h.incompatibleFeatures & INCOMPAT.COMPRESSION_TYPE) !== 0n,
      h.compressionType !== 0,
    );
    assert.strictEqual(h.headerLength, 112);
  } else {
    assert.strictEqual(h.headerLength, 72);
    assert.strictEqual(h.refcountOrder, 4);
    assert.strictEqual(h.incompatibleFeatures, 0n);
  }

  // External data file.
  assert.strictEqual(dataFileName(h), data["data-file"]);
  assert.strictEqual(img.geo.dataFile, data["data-file"] !== undefined);
  assert.strictEqual(
    (h.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) !== 0n,
    data["data-file-raw"] ?? false,
  );

  // Backing file.
  assert.strictEqual(h.backingFile, info["backing-filename"]);
  assert.strictEqual(backingFormat(h), info["backing-filename-format"]);
  if (h.backingFile !== undefined) {
    assert.strictEqual(
      h.backingFileSize,
      new TextEncoder().encode(h.backingFile).length,
    );
  }

  // Tables the header points at.
  assert.ok(h.l1Size >= l1SizeFor(h.size, h.clusterBits, img.geo.extendedL2));
  assert.strictEqual(h.l1TableOffset % cs, 0);
  assert.strictEqual(h.refcountTableOffset % cs, 0);
  assert.ok(h.refcountTableClusters >= 1);
  bytesAt(img, h.refcountTableOffset, h.refcountTableClusters * cs);
  if (h.l1Size > 0) bytesAt(img, h.l1TableOffset, h.l1Size * 8);

  // Internal snapshots.
  const sns = snapshots(img);
  const infoSns = info.snapshots ?? [];
  assert.strictEqual(sns.length, infoSns.length);
  let at = h.snapshotsOffset;
  for (const [i, sn] of sns.entries()) {
    const q = infoSns[i];
    assert.strictEqual(sn.id, q.id);
    assert.strictEqual(sn.name, q.name);
    assert.strictEqual(sn.dateSec, q["date-sec"]);
    assert.strictEqual(sn.dateNsec, q["date-nsec"]);
    assert.strictEqual(
      sn.vmClockNsec,
      BigInt(q["vm-clock-sec"]) * 1_000_000_000n + BigInt(q["vm-clock-nsec"]),
    );
    assert.strictEqual(sn.vmStateSize, q["vm-state-size"]);
    if (q.icount !== undefined) assert.strictEqual(sn.icount, BigInt(q.icount));
    assert.strictEqual(sn.diskSize, h.size);
    assert.ok(
      sn.l1Size >= l1SizeFor(h.size, h.clusterBits, img.geo.extendedL2),
    );
    assert.strictEqual(sn.l1TableOffset % cs, 0);
    // Each entry serializes back to the bytes QEMU wrote (QEMU does not
    // write the padding after the last entry when the table ends the file).
    const bytes = serializeSnapshotEntry(sn);
    const n = Math.min(bytes.length, img.file.length - at);
    assert.deepStrictEqual(bytes.subarray(0, n), bytesAt(img, at, n));
    assert.ok(bytes.subarray(n).every((b) => b === 0));
    at += bytes.length;
  }

  // Persistent bitmaps.
  const bitmaps = bitmapDirectory(img);
  const infoBitmaps = data.bitmaps ?? [];
  assert.strictEqual(bitmaps.length, infoBitmaps.length);
  assert.strictEqual(hasExtension(h, EXTENSION.BITMAPS), bitmaps.length > 0);
  assert.strictEqual(
    (h.autoclearFeatures & AUTOCLEAR.BITMAPS) !== 0n,
    bitmaps.length > 0,
  );
  for (const [i, bm] of bitmaps.entries()) {
    const q = infoBitmaps[i];
    assert.strictEqual(bm.name, q.name);
    assert.strictEqual(2 ** bm.granularityBits, q.granularity);
    assert.strictEqual(bm.type, 1);
    const flags = [];
    if (bm.flags & BITMAP_FLAGS.IN_USE) flags.push("in-use");
    if (bm.flags & BITMAP_FLAGS.AUTO) flags.push("auto");
    assert.deepStrictEqual(flags.sort(), [...q.flags].sort());
    assert.strictEqual(
      bm.tableSize,
      Math.ceil(h.size / 2 ** bm.granularityBits / 8 / cs),
    );
  }

  // Feature name table: QEMU writes its names into v3 headers when they fit.
  for (const ext of h.extensions) {
    if (ext.kind === "feature-table") {
      assert.deepStrictEqual(ext.features, [...QEMU_FEATURE_NAMES]);
    }
    assert.notStrictEqual(ext.kind, "unknown");
  }

  // serializeHeader(parseHeader(bytes)) gives back the header area, and
  // the rest of the header cluster is zeros.
  const cluster = bytesAt(img, 0, cs);
  const again = serializeHeader(h);
  assert.deepStrictEqual(again, cluster.subarray(0, again.length));
  assert.ok(
    cluster.subarray(again.length).every((b) => b === 0),
    "header cluster has data after the serialized header",
  );
  assert.deepStrictEqual(parseHeader(again), h);
  return img;
}

interface Layout {
  name: string;
  make: (dir: string) => Promise<string>;
  check?: (img: Image, dir: string) => void;
}

const LAYOUTS: Layout[] = [
  {
    name: "a v2 image (compat=0.10)",
    make: (d) => createQcow2(d, "v2.qcow2", "1G", "-o", "compat=0.10"),
    check: ({ header }) => {
      assert.strictEqual(header.version, 2);
      assert.deepStrictEqual(header.extensions, []);
      assert.strictEqual(header.l1Size, 2);
    },
  },
  {
    name: "a v3 image with default options",
    make: (d) => createQcow2(d, "v3.qcow2", "1G"),
    check: ({ header }) => {
      assert.strictEqual(header.version, 3);
      assert.strictEqual(header.clusterBits, 16);
      assert.strictEqual(header.refcountOrder, 4);
      assert.strictEqual(header.compressionType, 0);
      assert.strictEqual(header.incompatibleFeatures, 0n);
      assert.strictEqual(header.compatibleFeatures, 0n);
      assert.strictEqual(header.autoclearFeatures, 0n);
      assert.strictEqual(header.refcountTableOffset, 0x10000);
      assert.strictEqual(header.refcountTableClusters, 1);
      assert.strictEqual(header.l1Size, 2);
      assert.strictEqual(header.nbSnapshots, 0);
      assert.strictEqual(header.snapshotsOffset, 0);
      assert.strictEqual(header.backingFileOffset, 0);
      assert.strictEqual(header.cryptMethod, 0);
    },
  },
  {
    name: "512-byte clusters",
    make: (d) => createQcow2(d, "c512.qcow2", "64M", "-o", "cluster_size=512"),
    check: ({ header }) => {
      assert.strictEqual(header.clusterBits, 9);
      assert.strictEqual(header.l1Size, 2048);
    },
  },
  {
    name:
      "4 KiB clusters and a size that is not a multiple of the cluster size",
    make: (d) =>
      createQcow2(
        d,
        "c4k.qcow2",
        String(512 * 195313),
        "-o",
        "cluster_size=4k",
      ),
    check: ({ header }) => {
      assert.strictEqual(header.clusterBits, 12);
      assert.strictEqual(header.size, 100000256);
    },
  },
  {
    name: "2 MiB clusters",
    make: (d) => createQcow2(d, "c2m.qcow2", "1T", "-o", "cluster_size=2M"),
    check: ({ header }) => {
      assert.strictEqual(header.clusterBits, 21);
      assert.strictEqual(header.l1Size, 2);
    },
  },
  ...[1, 2, 4, 8, 16, 32, 64].map((bits): Layout => ({
    name: `${bits}-bit refcounts (refcount_bits=${bits})`,
    make: (d) =>
      createQcow2(d, `rc${bits}.qcow2`, "256M", "-o", `refcount_bits=${bits}`),
    check: ({ header }) => {
      assert.strictEqual(1 << header.refcountOrder, bits);
    },
  })),
  {
    name: "zstd compression (compression_type=zstd)",
    make: (d) =>
      createQcow2(d, "zstd.qcow2", "1G", "-o", "compression_type=zstd"),
    check: ({ header }) => {
      assert.strictEqual(header.compressionType, 1);
      assert.strictEqual(
        header.incompatibleFeatures,
        INCOMPAT.COMPRESSION_TYPE,
      );
    },
  },
  {
    name: "extended L2 entries (extended_l2=on)",
    make: (d) => createQcow2(d, "ext.qcow2", "1G", "-o", "extended_l2=on"),
    check: ({ header, geo }) => {
      assert.strictEqual(header.incompatibleFeatures, INCOMPAT.EXTENDED_L2);
      assert.strictEqual(geo.subclusterSize, 2048);
      assert.strictEqual(header.l1Size, 4);
    },
  },
  {
    name: "extended L2 entries with 16 KiB clusters",
    make: (d) =>
      createQcow2(
        d,
        "ext16k.qcow2",
        "64M",
        "-o",
        "extended_l2=on,cluster_size=16k",
      ),
    check: ({ geo }) => {
      assert.strictEqual(geo.extendedL2, true);
      assert.strictEqual(geo.subclusterSize, 512);
    },
  },
  {
    name: "extended L2 entries with 2 MiB clusters",
    make: (d) =>
      createQcow2(
        d,
        "ext2m.qcow2",
        "1T",
        "-o",
        "extended_l2=on,cluster_size=2M",
      ),
    check: ({ geo }) => {
      assert.strictEqual(geo.subclusterSize, 65536);
    },
  },
  {
    name: "lazy refcounts (lazy_refcounts=on)",
    make: (d) => createQcow2(d, "lazy.qcow2", "1G", "-o", "lazy_refcounts=on"),
    check: ({ header }) => {
      assert.strictEqual(header.compatibleFeatures, COMPAT.LAZY_REFCOUNTS);
    },
  },
  {
    name: "a qcow2 backing file (-b base -F qcow2)",
    make: async (d) => {
      await createQcow2(d, "base.qcow2", "1G");
      return createQcow2(
        d,
        "top.qcow2",
        "2G",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
      );
    },
    check: ({ header }) => {
      assert.strictEqual(header.backingFile, "base.qcow2");
      assert.strictEqual(backingFormat(header), "qcow2");
      assert.strictEqual(header.size, 2 ** 31);
    },
  },
  {
    name: "a raw backing file with a long path (-F raw)",
    make: async (d) => {
      const base = `${d}/${"b".repeat(100)}.raw`;
      await qemuImg("create", "-q", "-f", "raw", base, "1M");
      return createQcow2(d, "top.qcow2", "1M", "-b", base, "-F", "raw");
    },
    check: ({ header }, d) => {
      assert.strictEqual(header.backingFile, `${d}/${"b".repeat(100)}.raw`);
      assert.strictEqual(backingFormat(header), "raw");
    },
  },
  {
    name: "a v2 image with a backing file",
    make: async (d) => {
      await createQcow2(d, "base.qcow2", "1G", "-o", "compat=0.10");
      return createQcow2(
        d,
        "top.qcow2",
        "1G",
        "-o",
        "compat=0.10",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
      );
    },
    check: ({ header }) => {
      assert.strictEqual(header.version, 2);
      assert.strictEqual(header.backingFile, "base.qcow2");
      assert.strictEqual(header.extensions.length, 1);
      assert.strictEqual(header.backingFileOffset, 72 + 8 + 8 + 8);
    },
  },
  {
    name: "a backing file and 512-byte clusters (no room for a feature table)",
    make: async (d) => {
      await createQcow2(d, "base.qcow2", "1M");
      return createQcow2(
        d,
        "top.qcow2",
        "1M",
        "-o",
        "cluster_size=512",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
      );
    },
    check: ({ header }) => {
      assert.strictEqual(header.backingFile, "base.qcow2");
      assert.ok(!hasExtension(header, EXTENSION.FEATURE_TABLE));
    },
  },
  {
    name: "an external data file (data_file=...)",
    make: (d) =>
      createQcow2(d, "df.qcow2", "1G", "-o", `data_file=${d}/df.raw`),
    check: ({ header }, d) => {
      assert.strictEqual(dataFileName(header), `${d}/df.raw`);
      assert.strictEqual(header.incompatibleFeatures, INCOMPAT.DATA_FILE);
      assert.strictEqual(header.autoclearFeatures, 0n);
    },
  },
  {
    name: "a raw external data file (data_file_raw=on)",
    make: (d) =>
      createQcow2(
        d,
        "dfr.qcow2",
        "1G",
        "-o",
        `data_file=${d}/dfr.raw,data_file_raw=on`,
      ),
    check: ({ header }) => {
      assert.strictEqual(header.autoclearFeatures, AUTOCLEAR.DATA_FILE_RAW);
    },
  },
  {
    name: "two internal snapshots (qemu-img snapshot -c)",
    make: async (d) => {
      const path = await createQcow2(d, "snap.qcow2", "1G");
      await qemuImg("snapshot", "-c", "first", path);
      await qemuIo(path, ["write -P 0x5a 0 64k"]);
      await qemuImg(
        "snapshot",
        "-c",
        "second snapshot with a longer name",
        path,
      );
      return path;
    },
    check: (img) => {
      assert.strictEqual(img.header.nbSnapshots, 2);
      const [a, b] = snapshots(img);
      assert.deepStrictEqual([a.id, a.name], ["1", "first"]);
      assert.deepStrictEqual(
        [b.id, b.name],
        ["2", "second snapshot with a longer name"],
      );
      assert.strictEqual(a.extraData.length, 24);
      assert.notStrictEqual(a.l1TableOffset, b.l1TableOffset);
      assert.notStrictEqual(a.l1TableOffset, img.header.l1TableOffset);
    },
  },
  {
    name: "a snapshot in a v2 image",
    make: async (d) => {
      const path = await createQcow2(
        d,
        "snap2.qcow2",
        "1G",
        "-o",
        "compat=0.10",
      );
      await qemuImg("snapshot", "-c", "only", path);
      return path;
    },
    check: (img) => {
      assert.strictEqual(img.header.nbSnapshots, 1);
      assert.strictEqual(snapshots(img)[0].name, "only");
    },
  },
  {
    name: "persistent bitmaps (qemu-img bitmap --add)",
    make: async (d) => {
      const path = await createQcow2(d, "bm.qcow2", "1G");
      await qemuImg("bitmap", "--add", "-g", "4096", path, "fine");
      await qemuImg("bitmap", "--add", path, "coarse");
      await qemuImg("bitmap", "--disable", path, "coarse");
      return path;
    },
    check: (img) => {
      const [fine, coarse] = bitmapDirectory(img);
      assert.strictEqual(fine.name, "fine");
      assert.strictEqual(fine.granularityBits, 12);
      assert.strictEqual(fine.flags, BITMAP_FLAGS.AUTO);
      assert.strictEqual(coarse.name, "coarse");
      assert.strictEqual(coarse.granularityBits, 16);
      assert.strictEqual(coarse.flags, 0);
    },
  },
  {
    name:
      "every feature at once (zstd, extended L2, lazy refcounts, 64-bit refcounts, backing file, bitmap, snapshot)",
    make: async (d) => {
      await createQcow2(d, "base.qcow2", "64M");
      const path = await createQcow2(
        d,
        "all.qcow2",
        "64M",
        "-o",
        "compression_type=zstd,extended_l2=on,lazy_refcounts=on,refcount_bits=64,cluster_size=16k",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
      );
      await qemuImg("bitmap", "--add", path, "b0");
      await qemuIo(path, ["write -P 1 0 32k", "write -c -P 2 64k 32k"]);
      await qemuImg("snapshot", "-c", "s", path);
      return path;
    },
    check: ({ header }) => {
      assert.strictEqual(header.incompatibleFeatures, 0b11000n);
      assert.strictEqual(header.compatibleFeatures, 1n);
      assert.strictEqual(header.autoclearFeatures, 1n);
      assert.strictEqual(header.refcountOrder, 6);
      assert.strictEqual(header.clusterBits, 14);
      assert.strictEqual(header.nbSnapshots, 1);
      assert.deepStrictEqual(
        header.extensions.map((e) => e.kind),
        ["backing-format", "feature-table", "bitmaps"],
      );
    },
  },
];

for (const layout of LAYOUTS) {
  qemuTest(
    `parseHeader() reads every field qemu-img info reports, and serializeHeader() reproduces the header cluster, for ${layout.name}`,
    async () => {
      await using dir = await tempDir();
      const path = await layout.make(dir.path);
      const img = await checkHeader(path);
      layout.check?.(img, dir.path);
    },
  );
}

qemuTest(
  "parseHeader() and validateHeader() accept a LUKS image made by qemu-img, and assertReadable() refuses it",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(
      dir.path,
      "luks.qcow2",
      "1M",
      "--object",
      "secret,id=sec0,data=123456",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
    );
    const img = await checkHeader(path, false);
    assert.strictEqual(img.header.cryptMethod, CRYPT_METHOD.LUKS);
    const crypto = img.header.extensions.find((e) =>
      e.kind === "crypto-header"
    );
    assert.ok(crypto && crypto.kind === "crypto-header");
    assert.strictEqual(crypto.offset % img.geo.clusterSize, 0);
    assert.ok(crypto.length > 0);
    // The LUKS header starts with its own magic "LUKS\xba\xbe".
    assert.deepStrictEqual(
      [...bytesAt(img, crypto.offset, 6)],
      [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe],
    );
    assertQcow2Error(() => assertReadable(img.header), {
      code: "ENCRYPTED",
      message:
        "Cannot open image: the image is encrypted (crypt_method 2, LUKS) and encryption is not supported",
    });
  },
);

qemuTest(
  "assertReadable() refuses an AES-encrypted image made by qemu-img",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(
      dir.path,
      "aes.qcow2",
      "1M",
      "--object",
      "secret,id=sec0,data=123456",
      "-o",
      "encrypt.format=aes,encrypt.key-secret=sec0",
    );
    const img = await checkHeader(path, false);
    assert.strictEqual(img.header.cryptMethod, CRYPT_METHOD.AES);
    assertQcow2Error(() => assertReadable(img.header), {
      code: "ENCRYPTED",
      message:
        "Cannot open image: the image is encrypted (crypt_method 1, AES) and encryption is not supported",
    });
  },
);

qemuTest(
  "parseHeader() reads the dirty bit QEMU leaves when it stops without closing a lazy-refcounts image",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(
      dir.path,
      "dirty.qcow2",
      "1M",
      "-o",
      "lazy_refcounts=on",
    );
    // qemu-io's "abort" command stops without closing the image.
    const out = await runStatus("sh", [
      "-c",
      'ulimit -c 0; exec qemu-io -f qcow2 -c "write 0 64k" -c abort "$1"',
      "sh",
      path,
    ]);
    assert.notStrictEqual(out.code, 0);
    const img = await checkHeader(path);
    assert.strictEqual(img.header.incompatibleFeatures, INCOMPAT.DIRTY);
    assertReadable(img.header);
  },
);

qemuTest(
  "assertReadable() refuses an image whose corrupt bit qemu-img info reports",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(dir.path, "corrupt.qcow2", "1M");
    const file = await Deno.open(path, { write: true });
    await file.seek(79, Deno.SeekMode.Start);
    await file.write(new Uint8Array([Number(INCOMPAT.CORRUPT)]));
    file.close();
    const img = await checkHeader(path, false); // info says "corrupt": true
    assert.strictEqual(
      (await qemuInfo(path))["format-specific"].data.corrupt,
      true,
    );
    assertQcow2Error(() => assertReadable(img.header), { code: "CORRUPT" });
  },
);

qemuTest(
  "assertReadable() refuses an unknown incompatible bit like qemu-img does, naming it from the feature table",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(dir.path, "future.qcow2", "1M");
    const file = await Deno.open(path, { write: true });
    await file.seek(79, Deno.SeekMode.Start);
    await file.write(new Uint8Array([0x20]));
    file.close();
    const q = await runStatus("qemu-img", ["info", path]);
    assert.notStrictEqual(q.code, 0);
    assert.match(q.stderr, /Unknown incompatible feature: 20/);
    const img = await readImage(path);
    validateHeader(img.header);
    assertQcow2Error(() => assertReadable(img.header), {
      code: "UNSUPPORTED_FEATURE",
      message:
        "Cannot open image: incompatible_features 0x20 has unknown bit 5",
    });
  },
);
