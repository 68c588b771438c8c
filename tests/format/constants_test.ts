// The format constants, checked against QEMU: bytes of images qemu-img made,
// read at the offsets the specification gives without the format functions
// (which use the constants), the feature name table QEMU writes into every
// v3 image, and the limits qemu-img accepts and refuses. A wrong constant
// fails here even when the code that uses it is changed to match. The limits
// QEMU applies only to images it did not write (MAX_REFTABLE_BYTES,
// MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_DATA, MAX_BITMAPS) are checked through
// the exact errors in validate_test.ts and snapshot_test.ts.
import assert from "node:assert";
import { constants as zlibConstants, inflateRawSync } from "node:zlib";
import {
  createQcow2,
  qemuImg,
  qemuIo,
  qemuTest,
  readAt,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import {
  AUTOCLEAR,
  COMPAT,
  COMPRESSED_SECTOR_SIZE,
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  ENTRY,
  EXTENSION,
  FEATURE_NAME_ENTRY_LENGTH,
  INCOMPAT,
  INCOMPAT_KNOWN,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFCOUNT_ORDER,
  MIN_CLUSTER_BITS,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  QCOW2_MAGIC,
  REFTABLE_RESERVED_LO,
  SUBCLUSTERS_PER_CLUSTER,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from "../../lib/format/constants.ts";

const view = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset);

/** The (high, low) u32 halves of the big-endian u64 at `at`. */
function halves(b: Uint8Array, at: number): [number, number] {
  return [view(b).getUint32(at), view(b).getUint32(at + 4)];
}

/** The host offset an L1 or standard L2 entry holds, through the masks. */
function entryOffset([hi, lo]: [number, number]): number {
  return (hi & ENTRY.OFFSET_HI) * 2 ** 32 + ((lo & ENTRY.OFFSET_LO) >>> 0);
}

/**
 * The header extensions from `start`, walked as the specification lays
 * them out (u32 type, u32 length, data padded to 8 bytes) up to the end
 * marker, a type of 0, which is included.
 */
function extensions(
  header: Uint8Array,
  start: number,
): { type: number; data: Uint8Array }[] {
  const out = [];
  for (let at = start;;) {
    const type = view(header).getUint32(at);
    const length = view(header).getUint32(at + 4);
    out.push({ type, data: header.subarray(at + 8, at + 8 + length) });
    if (type === 0) return out;
    at += 8 + Math.ceil(length / 8) * 8;
  }
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

/**
 * Asserts two byte arrays are equal, naming the first difference
 * (node:assert's diff of two 64 KiB arrays takes gigabytes to build).
 */
function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string) {
  let i = 0;
  while (i < expected.length && actual[i] === expected[i]) i++;
  if (i === expected.length && actual.length === expected.length) return;
  assert.fail(
    `${what}: ${actual.length} bytes, expected ${expected.length}; the first difference is at byte ${i}`,
  );
}

qemuTest(
  "QCOW2_MAGIC, V3_HEADER_LENGTH, V3_MIN_HEADER_LENGTH and COMPRESSION_TYPE are what qemu-img writes, where the specification puts them",
  async () => {
    await using dir = await tempDir();
    for (
      const [type, value] of [
        ["zlib", COMPRESSION_TYPE.ZLIB],
        ["zstd", COMPRESSION_TYPE.ZSTD],
      ] as const
    ) {
      const path = await createQcow2(
        dir.path,
        `${type}.qcow2`,
        "1M",
        "-o",
        `compression_type=${type}`,
      );
      const head = await readAt(path, 0, 4096);
      assert.strictEqual(view(head).getUint32(0), QCOW2_MAGIC);
      assert.strictEqual(view(head).getUint32(4), 3, "version");
      // header_length (bytes 100-103).
      assert.strictEqual(view(head).getUint32(100), V3_HEADER_LENGTH);
      // compression_type is the byte after the minimal v3 header; padding
      // follows up to header_length, then the first extension.
      assert.strictEqual(head[V3_MIN_HEADER_LENGTH], value, type);
      assert.deepStrictEqual(
        [...head.subarray(V3_MIN_HEADER_LENGTH + 1, V3_HEADER_LENGTH)],
        new Array(V3_HEADER_LENGTH - V3_MIN_HEADER_LENGTH - 1).fill(0),
      );
      const exts = extensions(head, V3_HEADER_LENGTH);
      assert.strictEqual(exts.at(-1)!.type, EXTENSION.END);
      // incompatible_features (bytes 72-79).
      assert.strictEqual(
        view(head).getBigUint64(72),
        type === "zstd" ? INCOMPAT.COMPRESSION_TYPE : 0n,
      );
    }
  },
);

qemuTest(
  "V2_HEADER_LENGTH: the header extensions of a compat=0.10 image start right after it",
  async () => {
    await using dir = await tempDir();
    await qemuImg("create", "-q", "-f", "raw", `${dir.path}/base.raw`, "1M");
    const path = await createQcow2(
      dir.path,
      "v2.qcow2",
      "1M",
      "-o",
      "compat=0.10",
      "-b",
      "base.raw",
      "-F",
      "raw",
    );
    const head = await readAt(path, 0, 4096);
    assert.strictEqual(view(head).getUint32(4), 2, "version");
    const exts = extensions(head, V2_HEADER_LENGTH);
    assert.deepStrictEqual(exts.map((e) => e.type), [
      EXTENSION.BACKING_FORMAT,
      EXTENSION.END,
    ]);
    assert.strictEqual(text(exts[0].data), "raw");
  },
);

qemuTest(
  "INCOMPAT, COMPAT, AUTOCLEAR, INCOMPAT_KNOWN and FEATURE_NAME_ENTRY_LENGTH agree with the feature name table qemu-img writes",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(dir.path, "a.qcow2", "1M");
    const head = await readAt(path, 0, 4096);
    const table = extensions(head, V3_HEADER_LENGTH).find((e) =>
      e.type === EXTENSION.FEATURE_TABLE
    );
    assert.ok(table, "no feature name table extension");
    assert.strictEqual(table.data.length % FEATURE_NAME_ENTRY_LENGTH, 0);
    const qemu: string[] = [];
    for (let at = 0; at < table.data.length; at += FEATURE_NAME_ENTRY_LENGTH) {
      const entry = table.data.subarray(at, at + FEATURE_NAME_ENTRY_LENGTH);
      const name = text(entry.subarray(2)).replace(/\0+$/, "");
      assert.match(name, /^[ -~]+$/, "a name runs into the next entry");
      qemu.push(`${entry[0]}:${1n << BigInt(entry[1])}:${name}`);
    }
    const ours = [
      [0, INCOMPAT.DIRTY, "dirty bit"],
      [0, INCOMPAT.CORRUPT, "corrupt bit"],
      [0, INCOMPAT.DATA_FILE, "external data file"],
      [0, INCOMPAT.COMPRESSION_TYPE, "compression type"],
      [0, INCOMPAT.EXTENDED_L2, "extended L2 entries"],
      [1, COMPAT.LAZY_REFCOUNTS, "lazy refcounts"],
      [2, AUTOCLEAR.BITMAPS, "bitmaps"],
      [2, AUTOCLEAR.DATA_FILE_RAW, "raw external data"],
    ] as const;
    // Every bit the constants name is listed, so none goes unchecked.
    assert.strictEqual(
      ours.length,
      [INCOMPAT, COMPAT, AUTOCLEAR].flatMap(Object.keys).length,
    );
    assert.deepStrictEqual(
      qemu.toSorted(),
      ours.map(([type, bit, name]) => `${type}:${bit}:${name}`).toSorted(),
    );
    // QEMU 7.2 names every incompatible feature it knows, as we do.
    const qemuIncompat = qemu.filter((e) => e.startsWith("0:"))
      .map((e) => BigInt(e.split(":")[1])).reduce((a, b) => a | b);
    assert.strictEqual(INCOMPAT_KNOWN, qemuIncompat);
  },
);

qemuTest(
  "the feature bits, crypt methods and extensions qemu-img writes for each option are the ones the constants name",
  async () => {
    await using dir = await tempDir();
    await qemuImg("create", "-q", "-f", "raw", `${dir.path}/base.raw`, "1M");
    const secret = ["--object", "secret,id=sec0,data=123456", "-o"];
    const dataFile = `${dir.path}/data.raw`;
    const cases: {
      args: string[];
      after?: (path: string) => Promise<unknown>;
      incompat?: bigint;
      compat?: bigint;
      autoclear?: bigint;
      crypt?: number;
      ext?: [number, string?];
    }[] = [
      { args: [] },
      { args: ["-o", "lazy_refcounts=on"], compat: COMPAT.LAZY_REFCOUNTS },
      { args: ["-o", "extended_l2=on"], incompat: INCOMPAT.EXTENDED_L2 },
      {
        // qemu-img creates a relative data file name in its working
        // directory: name it by its full path.
        args: ["-o", `data_file=${dataFile},data_file_raw=on`],
        incompat: INCOMPAT.DATA_FILE,
        autoclear: AUTOCLEAR.DATA_FILE_RAW,
        ext: [EXTENSION.DATA_FILE, dataFile],
      },
      {
        args: [],
        after: (path) => qemuImg("bitmap", "--add", path, "b0"),
        autoclear: AUTOCLEAR.BITMAPS,
        ext: [EXTENSION.BITMAPS],
      },
      {
        args: ["-b", "base.raw", "-F", "raw"],
        ext: [EXTENSION.BACKING_FORMAT, "raw"],
      },
      {
        args: [
          ...secret,
          "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        ],
        crypt: CRYPT_METHOD.LUKS,
        ext: [EXTENSION.CRYPTO_HEADER],
      },
      {
        args: [...secret, "encrypt.format=aes,encrypt.key-secret=sec0"],
        crypt: CRYPT_METHOD.AES,
      },
    ];
    for (const [i, c] of cases.entries()) {
      const what = c.args.join(" ") || (c.after ? "bitmap --add" : "plain");
      const path = await createQcow2(dir.path, `${i}.qcow2`, "1M", ...c.args);
      await c.after?.(path);
      const head = await readAt(path, 0, 4096);
      const v = view(head);
      assert.strictEqual(v.getBigUint64(72), c.incompat ?? 0n, what);
      assert.strictEqual(v.getBigUint64(80), c.compat ?? 0n, what);
      assert.strictEqual(v.getBigUint64(88), c.autoclear ?? 0n, what);
      assert.strictEqual(
        v.getUint32(32),
        c.crypt ?? CRYPT_METHOD.NONE,
        `${what}: crypt_method`,
      );
      const exts = extensions(head, v.getUint32(100));
      const types = exts.map((e) => e.type);
      assert.deepStrictEqual(
        types.filter((t) => t !== EXTENSION.FEATURE_TABLE),
        c.ext ? [c.ext[0], EXTENSION.END] : [EXTENSION.END],
        what,
      );
      if (c.ext?.[1] !== undefined) {
        const ext = exts.find((e) => e.type === c.ext![0])!;
        assert.strictEqual(text(ext.data), c.ext[1], what);
      }
    }
  },
);

qemuTest(
  "MIN/MAX_CLUSTER_BITS, MIN_EXTENDED_L2_CLUSTER_BITS, MAX_REFCOUNT_ORDER, MAX_BACKING_FILE_NAME and MAX_L1_BYTES are the limits qemu-img enforces",
  async () => {
    await using dir = await tempDir();
    let n = 0;
    const accepts = async (size: number | string, ...args: string[]) => {
      const path = `${dir.path}/${n++}.qcow2`;
      const r = await runStatus("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        ...args,
        path,
        String(size),
      ]);
      await Deno.remove(path).catch(() => {});
      return r.code === 0;
    };
    const limit = async (
      what: string,
      ok: [number | string, ...string[]],
      refused: [number | string, ...string[]],
    ) => {
      assert.ok(await accepts(...ok), `qemu-img refuses ${what}`);
      assert.ok(!await accepts(...refused), `qemu-img accepts ${what} + 1`);
    };
    const cluster = (bits: number, extra = "") =>
      ["-o", `cluster_size=${2 ** bits}${extra}`] as const;
    await limit(
      "MIN_CLUSTER_BITS",
      ["1M", ...cluster(MIN_CLUSTER_BITS)],
      ["1M", ...cluster(MIN_CLUSTER_BITS - 1)],
    );
    await limit(
      "MAX_CLUSTER_BITS",
      ["1M", ...cluster(MAX_CLUSTER_BITS)],
      ["1M", ...cluster(MAX_CLUSTER_BITS + 1)],
    );
    await limit(
      "MIN_EXTENDED_L2_CLUSTER_BITS",
      ["1M", ...cluster(MIN_EXTENDED_L2_CLUSTER_BITS, ",extended_l2=on")],
      ["1M", ...cluster(MIN_EXTENDED_L2_CLUSTER_BITS - 1, ",extended_l2=on")],
    );
    await limit(
      "MAX_REFCOUNT_ORDER",
      ["1M", "-o", `refcount_bits=${2 ** MAX_REFCOUNT_ORDER}`],
      ["1M", "-o", `refcount_bits=${2 ** (MAX_REFCOUNT_ORDER + 1)}`],
    );
    // -u: the backing file is named, not opened.
    const name = (bytes: number) =>
      "a/".repeat(bytes / 2) + "b".repeat(bytes % 2);
    await limit(
      "MAX_BACKING_FILE_NAME",
      ["1M", "-u", "-F", "raw", "-b", name(MAX_BACKING_FILE_NAME)],
      ["1M", "-u", "-F", "raw", "-b", name(MAX_BACKING_FILE_NAME + 1)],
    );
    // The largest disk whose L1 table fits, at 64 KiB clusters (an L2
    // table of 8192 entries maps 512 MiB).
    const largest = (MAX_L1_BYTES / 8) * (65536 / 8) * 65536;
    await limit("MAX_L1_BYTES", [largest], [largest + 65536]);
  },
);

qemuTest(
  "ENTRY masks read the L1 and L2 tables qemu wrote: COPIED, offsets below and above 4 GiB, zero clusters",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(dir.path, "a.qcow2", "1M");
    await qemuIo(path, ["write -P 0x11 0 64k", "write -z 64k 64k"]);
    const file = await Deno.readFile(path);
    const l1 = halves(file, Number(view(file).getBigUint64(40)));
    assert.ok((l1[0] & ENTRY.COPIED_HI) !== 0, "L1 COPIED");
    assert.strictEqual(l1[0] & ENTRY.L1_RESERVED_HI, 0);
    assert.strictEqual(l1[1] & ENTRY.L1_RESERVED_LO, 0);
    const l2 = entryOffset(l1);
    const data = halves(file, l2);
    assert.ok((data[0] & ENTRY.COPIED_HI) !== 0, "L2 COPIED");
    assert.strictEqual(data[0] & ENTRY.COMPRESSED_HI, 0);
    assert.strictEqual(data[0] & ENTRY.L2_RESERVED_HI, 0);
    assert.strictEqual(data[1] & (ENTRY.L2_RESERVED_LO | ENTRY.ZERO_LO), 0);
    const host = entryOffset(data);
    assertBytes(
      file.subarray(host, host + 65536),
      new Uint8Array(65536).fill(0x11),
      "the data cluster the L2 entry points to",
    );
    // A zero cluster with no host cluster: only the zero flag is set.
    assert.deepStrictEqual(halves(file, l2 + 8), [0, ENTRY.ZERO_LO]);

    // Host offsets past 4 GiB use the high half: the last cluster of a
    // 6 GiB image with preallocated metadata, against qemu-img map.
    const big = await createQcow2(
      dir.path,
      "big.qcow2",
      "6G",
      "-o",
      "preallocation=metadata",
    );
    const head = await readAt(big, 0, 512);
    const l1Size = view(head).getUint32(36);
    const l1Last = halves(
      await readAt(big, Number(view(head).getBigUint64(40)), l1Size * 8),
      (l1Size - 1) * 8,
    );
    const l2Table = await readAt(big, entryOffset(l1Last), 65536);
    const last = entryOffset(halves(l2Table, 65536 - 8));
    const guest = 6 * 2 ** 30 - 65536;
    const map: { start: number; length: number; offset?: number }[] = JSON
      .parse(await qemuImg("map", "--output=json", big));
    const extent = map.find((e) =>
      e.start <= guest && guest < e.start + e.length
    )!;
    assert.ok(last > 2 ** 32, `host offset ${last} is below 4 GiB`);
    assert.strictEqual(last, extent.offset! + guest - extent.start);
  },
);

qemuTest(
  "ENTRY.COMPRESSED_HI and COMPRESSED_SECTOR_SIZE locate the compressed clusters qemu-img convert -c wrote, to the sector",
  async () => {
    await using dir = await tempDir();
    // Eight clusters that deflate to about half: 16 symbols, pseudo-random.
    const raw = new Uint8Array(8 * 65536);
    let x = 1;
    for (let i = 0; i < raw.length; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      raw[i] = 0x41 + (x >>> 28);
    }
    await Deno.writeFile(`${dir.path}/in.raw`, raw);
    const path = `${dir.path}/c.qcow2`;
    await qemuImg(
      "convert",
      "-c",
      "-f",
      "raw",
      "-O",
      "qcow2",
      `${dir.path}/in.raw`,
      path,
    );
    const file = await Deno.readFile(path);
    const l2 = entryOffset(halves(file, Number(view(file).getBigUint64(40))));
    // Specification: with 64 KiB clusters the host offset is bits 0-53 and
    // bits 54-61 count the 512-byte sectors after the first.
    const spans = [];
    for (let i = 0; i < 8; i++) {
      const [hi, lo] = halves(file, l2 + i * 8);
      assert.ok((hi & ENTRY.COMPRESSED_HI) !== 0, `cluster ${i} compressed`);
      const entry = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
      const offset = Number(entry & ((1n << 54n) - 1n));
      const sectors = Number((entry >> 54n) & 0xffn) + 1;
      const end = offset - (offset % COMPRESSED_SECTOR_SIZE) +
        sectors * COMPRESSED_SECTOR_SIZE;
      const cluster = inflateRawSync(
        file.subarray(offset, Math.min(end, file.length)),
        { finishFlush: zlibConstants.Z_SYNC_FLUSH },
      );
      assertBytes(
        new Uint8Array(cluster),
        raw.subarray(i * 65536, (i + 1) * 65536),
        `cluster ${i}`,
      );
      spans.push({ offset, end });
    }
    // QEMU packs compressed clusters back to back: each starts in the last
    // sector of the one before it, or right after it.
    spans.sort((a, b) => a.offset - b.offset);
    let packed = 0;
    for (let i = 1; i < spans.length; i++) {
      const [a, b] = [spans[i - 1], spans[i]];
      if (b.offset - a.offset >= 65536) continue; // a metadata cluster between
      assert.ok(
        b.offset > a.end - COMPRESSED_SECTOR_SIZE && b.offset <= a.end,
        `compressed cluster at ${b.offset} is not in the last sector of the one at ${a.offset} (ends at ${a.end})`,
      );
      packed++;
    }
    assert.ok(packed >= 4, `only ${packed} clusters were packed together`);
  },
);

qemuTest(
  "SUBCLUSTERS_PER_CLUSTER is the number of bits in the allocation and zero bitmaps qemu-io fills",
  async () => {
    await using dir = await tempDir();
    const path = await createQcow2(
      dir.path,
      "x.qcow2",
      "1M",
      "-o",
      "extended_l2=on",
    );
    const sub = 65536 / SUBCLUSTERS_PER_CLUSTER;
    // The second subcluster written, the last one zeroed.
    await qemuIo(path, [
      `write -P 0x22 ${sub} ${sub}`,
      `write -z ${65536 - sub} ${sub}`,
    ]);
    const file = await Deno.readFile(path);
    const l2 = entryOffset(halves(file, Number(view(file).getBigUint64(40))));
    // The second u64 of an extended entry: zero bitmap high, allocation low.
    const [zero, alloc] = halves(file, l2 + 8);
    assert.strictEqual(alloc, 1 << 1);
    assert.strictEqual(zero, 2 ** (SUBCLUSTERS_PER_CLUSTER - 1));
    const host = entryOffset(halves(file, l2));
    assertBytes(
      file.subarray(host + sub, host + 2 * sub),
      new Uint8Array(sub).fill(0x22),
      "the second subcluster",
    );
  },
);

/** The u64 a pair of (high, low) u32 masks selects. */
function mask(hi: number, lo: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

Deno.test("ENTRY and REFTABLE_RESERVED_LO masks split each entry into disjoint fields that cover all 64 bits", () => {
  const all = (1n << 64n) - 1n;
  const disjointCover = (fields: bigint[]) => {
    assert.strictEqual(fields.reduce((a, b) => a | b), all);
    assert.strictEqual(fields.reduce((a, b) => a + b), all);
  };
  const offset = mask(ENTRY.OFFSET_HI, ENTRY.OFFSET_LO);
  const copied = mask(ENTRY.COPIED_HI, 0);
  // L1: reserved, L2 offset, reserved, COPIED.
  disjointCover([
    offset,
    mask(ENTRY.L1_RESERVED_HI, ENTRY.L1_RESERVED_LO),
    copied,
  ]);
  // Standard L2: zero, reserved, offset, reserved, COMPRESSED, COPIED.
  disjointCover([
    mask(0, ENTRY.ZERO_LO),
    mask(ENTRY.L2_RESERVED_HI, ENTRY.L2_RESERVED_LO),
    offset,
    mask(ENTRY.COMPRESSED_HI, 0),
    copied,
  ]);
  // Refcount table: reserved below the smallest cluster, offset above.
  assert.strictEqual(REFTABLE_RESERVED_LO, 2 ** MIN_CLUSTER_BITS - 1);
  assert.strictEqual(ENTRY.L1_RESERVED_LO, REFTABLE_RESERVED_LO);
});
