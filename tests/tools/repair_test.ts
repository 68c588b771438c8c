// check -r leaks|all against qemu-img check -r on images broken on purpose:
// leaks, refcounts too high, too low and zero (a rebuild), the corrupt and
// dirty bits, L2 entries past the end of the file or over metadata, every
// refcount width, snapshots. Each image is repaired twice, by us and by
// qemu-img, on copies under the same name: same lines, same summary, same
// exit status; then qemu-img check says the same of both copies and
// qemu-img compare finds the same guest data. A repair cut short at each
// of its writes leaves an image qemu-img check -r all repairs, data intact.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  be64,
  cli,
  hostClusterOf,
  l2EntryAt,
  layoutOf,
  makeImage,
  patch,
  qemuImg,
  qemuIo,
  qemuStatus,
  readAt,
  setRefcount,
  smallMixedImage,
  u64At,
} from "./_helpers.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import {
  parseSnapshotTable,
  serializeSnapshotEntry,
  snapshotEntryLength,
} from "../../lib/format/snapshot.ts";
import { concatBytes } from "../../lib/bytes/binary.ts";
import { type ImageFile, repairImage } from "../../lib/tools/mod.ts";

const KiB = 1024;
const CS = 64 * KiB;

/** A small image with data, compressed and zero clusters. */
const base = smallMixedImage;

/** stderr lines but the program's own last words (`qemu-img: …`). */
function problemLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) =>
    l !== "" && !l.startsWith("qemu-img:") && !l.startsWith("qcow2pipe:")
  );
}

/**
 * Repairs copies of `path` with our check -r and qemu-img's, under the
 * same name, and asserts the same output, exit status, later check and
 * guest data. Returns our run.
 */
async function assertRepairLikeQemu(
  path: string,
  mode: "leaks" | "all",
  flags: string[] = [],
): Promise<{ code: number; stdout: string; stderr: string; ours: string }> {
  const dir = path + ".d";
  const q = join(dir, "q"), o = join(dir, "o");
  await Deno.mkdir(q, { recursive: true });
  await Deno.mkdir(o, { recursive: true });
  await Deno.copyFile(path, join(q, "x.qcow2"));
  await Deno.copyFile(path, join(o, "x.qcow2"));
  const args = ["check", "-r", mode, ...flags, "x.qcow2"];
  const theirs = await new Deno.Command("qemu-img", {
    args,
    cwd: q,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const ours = await cli(args, { cwd: o });
  const dec = new TextDecoder();
  const where = `check -r ${mode} ${flags.join(" ")} of ${path}`;
  assert.strictEqual(
    ours.code,
    theirs.code,
    `${where}: exit status (ours: ${ours.stderr}; qemu-img: ${
      dec.decode(theirs.stderr)
    })`,
  );
  assert.strictEqual(
    ours.stdout,
    dec.decode(theirs.stdout),
    `${where}: stdout`,
  );
  assert.deepStrictEqual(
    problemLines(ours.stderr),
    problemLines(dec.decode(theirs.stderr)),
    `${where}: messages`,
  );
  // The images left behind: qemu-img says the same of both, and their
  // guest data is the same.
  const after = [];
  for (const d of [q, o]) {
    const r = await new Deno.Command("qemu-img", {
      args: ["check", "x.qcow2"],
      cwd: d,
      stdout: "piped",
      stderr: "piped",
    }).output();
    after.push({
      code: r.code,
      stdout: dec.decode(r.stdout),
      stderr: dec.decode(r.stderr),
    });
  }
  assert.deepStrictEqual(after[1], after[0], `${where}: qemu-img check after`);
  const cmp = await qemuStatus(
    "compare",
    "-f",
    "qcow2",
    "-F",
    "qcow2",
    join(q, "x.qcow2"),
    join(o, "x.qcow2"),
  );
  assert.strictEqual(cmp.code, 0, `${where}: compare ${cmp.stdout}`);
  return { ...ours, ours: join(o, "x.qcow2") };
}

/** assertRepairLikeQemu() with -r leaks, then -r all: both exit with `code`. */
async function repairBoth(path: string, code: number): Promise<void> {
  for (const mode of ["leaks", "all"] as const) {
    const r = await assertRepairLikeQemu(path, mode);
    assert.strictEqual(r.code, code, `-r ${mode}`);
  }
}

/** The incompatible feature bits of a v3 image. */
async function incompatible(path: string): Promise<bigint> {
  return await u64At(path, 72);
}

for (const bits of [1, 8, 16, 32, 64]) {
  qemuTest(
    `check -r: leaks and refcounts too high with refcount_bits=${bits} are freed as qemu-img frees them`,
    async () => {
      await using dir = await tempDir();
      const img = await base(join(dir.path, "a.qcow2"), [
        `refcount_bits=${bits}`,
      ]);
      // A cluster nothing references but with a refcount: discard one.
      const freed = (await hostClusterOf(img, 64 * KiB)) / CS;
      await qemuIo(img, ["discard -q 64k 64k"]);
      await setRefcount(img, freed, 1);
      if (bits > 1) {
        await setRefcount(img, (await hostClusterOf(img, 0)) / CS, 2);
      }
      for (const mode of ["leaks", "all"] as const) {
        const r = await assertRepairLikeQemu(img, mode);
        assert.strictEqual(r.code, 0);
        assert.match(r.stderr, new RegExp(`Repairing cluster ${freed} `));
        assert.match(r.stdout, /leaked clusters/);
      }
      const j = await assertRepairLikeQemu(img, "leaks", ["--output=json"]);
      assert.strictEqual(JSON.parse(j.stdout)["leaks-fixed"], bits > 1 ? 2 : 1);
    },
  );
}

for (const bits of [1, 16, 64]) {
  qemuTest(
    `check -r: a cluster in use with refcount 0 (refcount_bits=${bits}) is rebuilt by -r all, refused by -r leaks, as in qemu-img`,
    async () => {
      await using dir = await tempDir();
      const img = await base(join(dir.path, "a.qcow2"), [
        `refcount_bits=${bits}`,
      ]);
      await setRefcount(
        img,
        (await hostClusterOf(img, 3 * 1024 * KiB)) / CS,
        0,
      );
      await setRefcount(
        img,
        (await hostClusterOf(img, 64 * KiB)) / CS,
        bits === 1 ? 0 : 2,
      );
      const leaks = await assertRepairLikeQemu(img, "leaks");
      assert.strictEqual(leaks.code, 1);
      assert.match(leaks.stderr, /ERROR need to rebuild refcount structures/);
      const all = await assertRepairLikeQemu(img, "all");
      assert.strictEqual(all.code, 0);
      assert.match(all.stderr, /Rebuilding refcount structure/);
    },
  );
}

qemuTest(
  "check -r: a refcount table entry zeroed is rebuilt as qemu-img rebuilds it",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    const l = await layoutOf(img);
    await patch(img, l.reftableOffset, be64(0));
    const all = await assertRepairLikeQemu(img, "all");
    assert.strictEqual(all.code, 0);
    const json = await assertRepairLikeQemu(img, "all", ["--output=json"]);
    assert.ok(JSON.parse(json.stdout)["corruptions-fixed"] > 0);
  },
);

for (const bits of [16, 64]) {
  qemuTest(
    `check -r all: a rebuild over many refcount blocks (512-byte clusters, refcount_bits=${bits}) places them where qemu-img does`,
    async () => {
      await using dir = await tempDir();
      const img = await makeImage(
        join(dir.path, "a.qcow2"),
        "8M",
        ["cluster_size=512", `refcount_bits=${bits}`],
        ["write -q -P 7 0 3M", "write -q -c -P 8 5M 256k"],
      );
      await qemuImg("snapshot", "-c", "s1", img);
      await qemuIo(img, ["write -q -P 9 1M 512k"]);
      const l = await layoutOf(img);
      await patch(img, l.reftableOffset + 8, be64(0));
      await setRefcount(img, (await hostClusterOf(img, 0)) / 512, 0);
      const r = await assertRepairLikeQemu(img, "all");
      assert.match(r.stderr, /Rebuilding refcount structure/);
      await assertRepairLikeQemu(img, "all", ["--output=json"]);
    },
  );
}

qemuTest(
  "check -r: refcounts too low under a snapshot are raised by -r all, reported twice by -r leaks",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    await qemuImg("snapshot", "-c", "s1", img);
    await qemuIo(img, ["write -q -P 9 3M 64k"]);
    const shared = (await hostClusterOf(img, 0)) / CS;
    await setRefcount(img, shared, 1);
    const leaks = await assertRepairLikeQemu(img, "leaks");
    assert.strictEqual(leaks.code, 2);
    const line = `ERROR cluster ${shared} refcount=1 reference=2`;
    assert.strictEqual(leaks.stderr.split(line).length, 3, leaks.stderr);
    const all = await assertRepairLikeQemu(img, "all");
    assert.strictEqual(all.code, 0);
    assert.match(all.stderr, /Repairing cluster/);
  },
);

qemuTest(
  "check -r: COPIED flags wrong on their own are fixed by -r leaks and -r all",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    const at = await l2EntryAt(img, 0);
    await patch(img, at, be64((await u64At(img, at)) & ~(1n << 63n)));
    const l = await layoutOf(img);
    await patch(
      img,
      l.l1Offset,
      be64((await u64At(img, l.l1Offset)) & ~(1n << 63n)),
    );
    await repairBoth(img, 0);
  },
);

qemuTest(
  "check -r: an L2 entry past the end of the file stays a corruption, as in qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    const at = await l2EntryAt(img, 64 * KiB);
    await patch(img, at, be64((1n << 63n) | BigInt(64 * CS)));
    await repairBoth(img, 2);
  },
);

qemuTest(
  "check -r: an L2 entry over the L1 table and over a refcount block is repaired as qemu-img repairs it",
  async () => {
    await using dir = await tempDir();
    for (const target of ["l1", "refblock"] as const) {
      const img = await base(join(dir.path, `${target}.qcow2`));
      const l = await layoutOf(img);
      const over = target === "l1"
        ? l.l1Offset
        : Number((await u64At(img, l.reftableOffset)) & ~0x1ffn);
      const at = await l2EntryAt(img, 128 * KiB);
      await patch(img, at, be64((1n << 63n) | BigInt(over)));
      for (const mode of ["leaks", "all"] as const) {
        await assertRepairLikeQemu(img, mode);
      }
    }
  },
);

qemuTest(
  "check -r: the corrupt bit is cleared when nothing is left broken, kept otherwise",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    await patch(img, 72, be64((await incompatible(img)) | 2n));
    const clean = await assertRepairLikeQemu(img, "leaks");
    assert.strictEqual((await incompatible(clean.ours)) & 2n, 0n);
    // With a corruption -r leaks cannot fix, the bit stays.
    const low = join(dir.path, "low.qcow2");
    await Deno.copyFile(img, low);
    await setRefcount(low, (await hostClusterOf(low, 0)) / CS, 0);
    const kept = await assertRepairLikeQemu(low, "leaks");
    assert.strictEqual((await incompatible(kept.ours)) & 2n, 2n);
    const fixed = await assertRepairLikeQemu(low, "all");
    assert.strictEqual((await incompatible(fixed.ours)) & 2n, 0n);
  },
);

qemuTest(
  "check -r: unknown auto-clear bits are dropped as qemu-img drops them, known ones kept",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    await patch(img, 88, be64((1n << 63n) | 1n));
    for (const mode of ["leaks", "all"] as const) {
      const r = await assertRepairLikeQemu(img, mode);
      const theirs = r.ours.replace(/\/o\/x\.qcow2$/, "/q/x.qcow2");
      assert.strictEqual(await u64At(r.ours, 88), await u64At(theirs, 88));
      assert.strictEqual(await u64At(r.ours, 88), 1n);
    }
  },
);

qemuTest(
  "check -r: a lazy-refcounts image left dirty is repaired by -r all and marked clean",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(
      join(dir.path, "a.qcow2"),
      "4M",
      ["lazy_refcounts=on"],
    );
    await qemuIo(img, ["write -q -P 5 0 512k", "abort"]).catch(() => {});
    assert.strictEqual((await incompatible(img)) & 1n, 1n, "dirty bit");
    // -r leaks cannot repair refcounts of 0 (they need -r all): the bit
    // stays, so the next writer repairs first (qemu-img clears it when it
    // closes the image, repaired or not).
    const leaks = await assertRepairLikeQemu(img, "leaks");
    assert.strictEqual(leaks.code, 1);
    assert.strictEqual((await incompatible(leaks.ours)) & 1n, 1n);
    const all = await assertRepairLikeQemu(img, "all");
    assert.strictEqual(all.code, 0);
    assert.strictEqual((await incompatible(all.ours)) & 1n, 0n);
  },
);

qemuTest(
  "check -r: -q prints the lines only, a bad mode and an image with a data file are refused in one line",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    await setRefcount(img, (await hostClusterOf(img, 0)) / CS, 2);
    const quiet = await assertRepairLikeQemu(img, "leaks", ["-q"]);
    assert.strictEqual(quiet.stdout, "");
    const bad = await cli(["check", "-r", "some", img]);
    assert.strictEqual(bad.code, 1);
    assert.strictEqual(bad.stderr.trim().split("\n").length, 1);
    assert.match(bad.stderr, /expecting 'leaks' or 'all'/);
    const data = await makeImage(join(dir.path, "d.qcow2"), "1M", [
      `data_file=${join(dir.path, "d.raw")}`,
    ]);
    const before = await readAt(data, 0, 4096);
    const refused = await cli(["check", "-r", "all", data]);
    assert.strictEqual(refused.code, 1);
    assert.strictEqual(refused.stderr.trim().split("\n").length, 1);
    assert.match(refused.stderr, /external data file/);
    assert.deepStrictEqual(await readAt(data, 0, 4096), before);
    // Plain check never opens the image for writing: a read-only file.
    await Deno.chmod(img, 0o444);
    const ro = await cli(["check", img], {
      flags: ["--allow-read", "--allow-env"],
    });
    assert.strictEqual(ro.code, (await qemuStatus("check", img)).code);
    assert.doesNotMatch(ro.stderr, /permission|denied/i);
  },
);

/**
 * A preallocated zero cluster at guest 1.5 MiB whose L2 entry points 512
 * bytes into its cluster: holding no data, -r all makes it a zero entry.
 */
async function unalignZeroEntry(img: string): Promise<void> {
  await qemuIo(img, ["write -q -P 7 1536k 64k", "write -q -z 1536k 64k"]);
  const at = await l2EntryAt(img, 1536 * KiB);
  await patch(img, at, be64((await u64At(img, at)) + 512n));
}

for (const extendedL2 of [false, true]) {
  qemuTest(
    `check -r all: an unaligned L2 entry${
      extendedL2 ? " (extended L2)" : ""
    } without data becomes a zero entry, one with data stays an error, as in qemu-img`,
    async () => {
      await using dir = await tempDir();
      const opts = extendedL2 ? ["extended_l2=on"] : [];
      const img = await makeImage(join(dir.path, "a.qcow2"), "2M", opts);
      await unalignZeroEntry(img);
      // Checked only, the entry is an error; the same with data in it,
      // which -r all leaves (the image stays unreadable there).
      const checked = await sameCheckLines(img, []);
      assert.match(checked, /^ERROR offset=[0-9a-f]+: Preallocated/m);
      const fixed = await assertRepairLikeQemu(img, "all");
      assert.match(fixed.stderr, /^Repairing offset=[0-9a-f]+: Preallocated/m);
      assert.strictEqual(fixed.code, 0);
      const data = await makeImage(join(dir.path, "d.qcow2"), "2M", opts);
      await qemuIo(data, ["write -q -P 7 1M 64k"]);
      const at = await l2EntryAt(data, 1024 * KiB);
      await patch(data, at, be64((await u64At(data, at)) + 512n));
      const kept = await sameCheckLines(data, ["-r", "all"]);
      assert.match(kept, /^ERROR offset=[0-9a-f]+: Data cluster/m);
    },
  );
}

/**
 * Runs check (with `flags`) on copies of `path` with ours and qemu-img's
 * and asserts the same exit status, summary and lines; returns our stderr.
 */
async function sameCheckLines(path: string, flags: string[]): Promise<string> {
  const copy = `${path}.${flags.length}.qcow2`;
  await Deno.copyFile(path, copy);
  const theirs = await qemuStatus("check", ...flags, copy);
  await Deno.copyFile(path, copy);
  const ours = await cli(["check", ...flags, copy]);
  assert.strictEqual(ours.code, theirs.code, `check ${flags}: exit status`);
  assert.strictEqual(ours.stdout, theirs.stdout, `check ${flags}: stdout`);
  assert.deepStrictEqual(
    problemLines(ours.stderr),
    problemLines(theirs.stderr),
    `check ${flags}: lines`,
  );
  return ours.stderr;
}

/** info refuses the image with qemu-img's words and status; our stderr. */
async function sameInfoError(img: string): Promise<string> {
  const theirs = await qemuStatus("info", img);
  const ours = await cli(["info", img]);
  assert.notStrictEqual(theirs.code, 0);
  assert.strictEqual(ours.code, theirs.code);
  assert.strictEqual(
    ours.stderr.replace(/^qcow2pipe:/, "qemu-img:"),
    theirs.stderr,
  );
  return ours.stderr;
}

/** Big-endian u32 bytes. */
function be32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v);
  return b;
}

/** The first snapshot table entry of `img` rewritten without extra data. */
async function dropExtraData(img: string): Promise<void> {
  const at = Number(await u64At(img, 64));
  const count = Number(await u64At(img, 56) & 0xffffffffn);
  const entries = parseSnapshotTable(await readAt(img, at, CS), count);
  entries[0] = { ...entries[0], extraData: new Uint8Array(0) };
  await patch(img, at, new Uint8Array(CS));
  await patch(img, at, concatBytes(entries.map(serializeSnapshotEntry)));
}

/**
 * An image with snapshots s0 and s1 whose first entry has no extra data
 * (as a version 2 image may have), its header then made version 3: the
 * entry is incomplete, as iotest 261 makes one.
 */
async function incompleteSnapshot(img: string): Promise<string> {
  await makeImage(img, "4M", ["compat=0.10"], ["write -q -P 1 0 64k"]);
  await qemuImg("snapshot", "-c", "s0", img);
  await qemuImg("snapshot", "-c", "s1", img);
  await dropExtraData(img);
  await patch(img, 4, be32(3)); // version 3
  await patch(img, 96, be32(4)); // refcount_order: 16 bits
  await patch(img, 100, be32(104)); // header_length
  return img;
}

qemuTest(
  "check -r all: an incomplete snapshot table entry is completed and the table rewritten, as qemu-img does",
  async () => {
    await using dir = await tempDir();
    const img = await incompleteSnapshot(join(dir.path, "a.qcow2"));
    const checked = await sameCheckLines(img, []);
    assert.match(checked, /^ERROR snapshot table entry 0 is incomplete$/m);
    const r = await assertRepairLikeQemu(img, "all");
    assert.match(r.stderr, /^Repairing snapshot table entry 0 is incomplete$/m);
    assert.strictEqual(r.code, 0);
    // The same snapshots afterwards, now with a disk size and no icount.
    const theirs = await qemuStatus(
      "snapshot",
      "-l",
      img.replace("a.qcow2", "a.qcow2.d/q/x.qcow2"),
    );
    const ours = await qemuStatus("snapshot", "-l", r.ours);
    assert.strictEqual(
      ours.stdout.replace(/\S+\.qcow2/, ""),
      theirs.stdout.replace(/\S+\.qcow2/, ""),
    );
    assert.deepStrictEqual(
      await snapshotData(r.ours),
      await snapshotData(img.replace("a.qcow2", "a.qcow2.d/q/x.qcow2")),
    );
  },
);

qemuTest(
  "check and info: too much extra data in a snapshot entry is refused in qemu-img's words, and check -r all cuts it as qemu-img does",
  async () => {
    await using dir = await tempDir();
    const img = await makeImage(join(dir.path, "a.qcow2"), "4M", [], [
      "write -q -P 1 0 64k",
    ]);
    await qemuImg("snapshot", "-c", "s0", img);
    await qemuImg("snapshot", "-c", "s1", img);
    const at = Number(await u64At(img, 64));
    const first = (await readAt(img, at, CS)).slice();
    const second = at + snapshotEntryLength(first, 0);
    await patch(img, second + 36, be32(0x10000));
    const info = await sameInfoError(img);
    assert.match(
      info,
      /Too much extra metadata in snapshot table entry 1\nYou can force-remove/,
    );
    const checked = await sameCheckLines(img, []);
    assert.match(
      checked,
      /ERROR failed to read the snapshot table: Too much extra metadata/,
    );
    assert.match(checked, /Check failed: File too large/);
    const r = await assertRepairLikeQemu(img, "all");
    assert.match(
      r.stderr,
      /^Discarding too much extra metadata in snapshot table entry 1 \(65536 > 1024\)$/m,
    );
    assert.strictEqual(r.code, 0);
  },
);

qemuTest(
  "check -r all: snapshots past QEMU's count limit are dropped as qemu-img drops them",
  async () => {
    await using dir = await tempDir();
    // Version 2: entries of zeros are valid snapshots there.
    const img = await makeImage(join(dir.path, "a.qcow2"), "64M", [
      "compat=0.10",
    ]);
    const table = 1024 * KiB;
    const count = 65537;
    await patch(img, 64, be64(table));
    await patch(img, 60, be32(count));
    const end = table + 40 * count;
    await Deno.truncate(img, end);
    for (let c = table / CS; c < Math.ceil(end / CS); c++) {
      await setRefcount(img, c, 1);
    }
    await sameInfoError(img);
    const checked = await sameCheckLines(img, []);
    assert.match(
      checked,
      /ERROR snapshot table too large\nYou can force-remove all 1 overhanging/,
    );
    const r = await assertRepairLikeQemu(img, "all");
    assert.match(r.stderr, /^Discarding 1 overhanging snapshots$/m);
    assert.strictEqual(Number(await u64At(r.ours, 56) & 0xffffffffn), 65536);
  },
);

/** The guest data of snapshot s1, as qemu-img reads it. */
async function snapshotData(path: string): Promise<Uint8Array> {
  const raw = path + ".s1.raw";
  await qemuImg("convert", "-l", "snapshot.name=s1", "-O", "raw", path, raw);
  const bytes = await Deno.readFile(raw);
  await Deno.remove(raw);
  return bytes;
}

/** An image file that stops (throws) at its `limit`-th write. */
class CutFile implements ImageFile {
  writes = 0;
  constructor(readonly inner: FileSource, readonly limit: number) {}
  get size(): number {
    return this.inner.size;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.inner.read(offset, length);
  }
  writeAt(offset: number, data: Uint8Array): Promise<void> {
    if (++this.writes >= this.limit) {
      return Promise.reject(new Error("power cut"));
    }
    return this.inner.writeAt(offset, data);
  }
  sync(): Promise<void> {
    return this.inner.sync();
  }
}

for (
  const [name, breakIt] of [
    ["leaks and a refcount too low", async (img: string) => {
      await setRefcount(img, (await hostClusterOf(img, 0)) / CS, 3);
      await setRefcount(
        img,
        (await hostClusterOf(img, 3 * 1024 * KiB)) / CS,
        0,
      );
      const at = await l2EntryAt(img, 128 * KiB);
      await patch(img, at, be64((await u64At(img, at)) & ~(1n << 63n)));
      await patch(img, 72, be64((await incompatible(img)) | 2n));
    }],
    ["a refcount table entry zeroed", async (img: string) => {
      await patch(img, (await layoutOf(img)).reftableOffset, be64(0));
    }],
    ["an unaligned preallocated zero entry", unalignZeroEntry],
    ["an incomplete snapshot table entry", dropExtraData],
  ] as const
) {
  qemuTest(
    `check -r all cut short at each write (${name}) leaves an image qemu-img repairs, data intact`,
    async () => {
      await using dir = await tempDir();
      const img = await base(join(dir.path, "a.qcow2"));
      await qemuImg("snapshot", "-c", "s1", img);
      await breakIt(img);
      // The reference: qemu-img's repair of a copy.
      const ref = join(dir.path, "ref.qcow2");
      await Deno.copyFile(img, ref);
      await qemuStatus("check", "-r", "all", ref);
      const refSnapshot = await snapshotData(ref);
      let total = 0;
      for (let limit = 1;; limit++) {
        const copy = join(dir.path, `cut${limit}.qcow2`);
        await Deno.copyFile(img, copy);
        await using inner = await FileSource.open(copy, copy, { write: true });
        const file = new CutFile(inner, limit);
        let finished = false;
        try {
          await repairImage(file, { mode: "all" });
          finished = true;
        } catch (err) {
          assert.strictEqual((err as Error).message, "power cut");
        }
        let r = await qemuStatus("check", "-r", "all", copy);
        // When qemu-img rewrites the snapshot table in the same run, a
        // leaked cluster can remain (3: leaks only, no harm to data), as
        // our repair leaves it too from the same image; the next run frees it.
        if (r.code === 3) r = await qemuStatus("check", "-r", "all", copy);
        assert.strictEqual(r.code, 0, `cut at write ${limit}: ${r.stderr}`);
        const cmp = await qemuStatus("compare", ref, copy);
        assert.strictEqual(cmp.code, 0, `cut at write ${limit}: ${cmp.stdout}`);
        assert.deepStrictEqual(
          await snapshotData(copy),
          refSnapshot,
          `cut at write ${limit}: snapshot s1`,
        );
        await Deno.remove(copy);
        if (finished) {
          total = file.writes;
          break;
        }
      }
      assert.ok(total > 1, `the repair wrote ${total} times`);
    },
  );
}

qemuTest(
  "check -r: other formats as qemu-img treats them (VHDX checked, VDI, VMDK, raw exit 63), never written",
  async () => {
    await using dir = await tempDir();
    for (const format of ["vhdx", "vdi", "vmdk", "raw"]) {
      const img = join(dir.path, `a.${format}`);
      await qemuImg("create", "-q", "-f", format, img, "1M");
      const before = await Deno.readFile(img);
      const theirs = await qemuStatus("check", "-f", format, "-r", "all", img);
      const ours = await cli(["check", "-f", format, "-r", "all", img]);
      assert.strictEqual(ours.code, theirs.code, format);
      assert.strictEqual(ours.stdout, theirs.stdout, format);
      assert.deepStrictEqual(await Deno.readFile(img), before, format);
    }
  },
);

qemuTest(
  "check -r: a refcount block past the end of the file is an error, and -r all grows the file as qemu-img does",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "a.qcow2"));
    const l = await layoutOf(img);
    const end = (await Deno.stat(img)).size;
    await patch(img, l.reftableOffset + 8, be64(end + 4 * CS));
    const leaks = await assertRepairLikeQemu(img, "leaks");
    assert.match(leaks.stderr, /ERROR refcount block 1 is outside image/);
    const all = await assertRepairLikeQemu(img, "all");
    assert.match(all.stderr, /Repairing refcount block 1 is outside image/);
    assert.strictEqual((await Deno.stat(all.ours)).size, end + 5 * CS);
  },
);
