// checkImage against qemu-img check on images broken on purpose: refcounts
// patched up and down (every refcount width), a refcount table entry
// zeroed, two L2 entries sharing a cluster, leaked clusters, unaligned and
// out-of-file offsets, reserved bits, OFLAG_COPIED mismatches, refcount
// overflow, broken snapshot and refcount table entries. The exit status,
// the counts and every message must be QEMU's.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import {
  assertCheckLikeQemu,
  be64,
  getRefcount,
  hostClusterOf,
  l2EntryAt,
  layoutOf,
  makeImage,
  patch,
  qemuImg,
  qemuStatus,
  readAt,
  refcountSlot,
  setRefcount,
  smallMixedImage,
  u64At,
} from "./_helpers.ts";
import { checkImage, imageInfo, mapImage } from "../../lib/tools/mod.ts";
import { Qcow2Error } from "../../mod.ts";

const KiB = 1024;
const CS = 64 * KiB;

/** A small image with data, compressed and zero clusters. */
const base = smallMixedImage;

async function xorEntry(path: string, at: number, bits: bigint): Promise<void> {
  await patch(path, at, be64((await u64At(path, at)) ^ bits));
}

for (const bits of [1, 4, 16, 64]) {
  qemuTest(
    `check: refcounts patched down and up with refcount_bits=${bits} match qemu-img`,
    async () => {
      await using dir = await tempDir();
      const down = await base(join(dir.path, "down.qcow2"), [
        `refcount_bits=${bits}`,
      ]);
      const cluster = (await hostClusterOf(down, 0)) / CS;
      assert.strictEqual(await getRefcount(down, cluster), 1);
      await setRefcount(down, cluster, 0);
      let r = await assertCheckLikeQemu(down);
      assert.strictEqual(r.exitCode, 2);
      assert.ok(
        r.messages.includes(`ERROR cluster ${cluster} refcount=0 reference=1`),
      );
      assert.ok(
        r.messages.some((m) => m.startsWith("ERROR OFLAG_COPIED data cluster")),
      );

      if (bits > 1) {
        const up = await base(join(dir.path, "up.qcow2"), [
          `refcount_bits=${bits}`,
        ]);
        const c = (await hostClusterOf(up, 64 * KiB)) / CS;
        await setRefcount(up, c, 3);
        r = await assertCheckLikeQemu(up);
        assert.strictEqual(r.exitCode, 2); // leak, plus OFLAG_COPIED now wrong
        assert.strictEqual(r.leaks, 1);
        assert.ok(
          r.messages.includes(`Leaked cluster ${c} refcount=3 reference=1`),
        );
      }
    },
  );
}

qemuTest(
  "check: a 64-bit refcount of 2^64 - 1 is printed in full, as qemu-img prints it",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "r64.qcow2"), ["refcount_bits=64"]);
    const cluster = (await hostClusterOf(img, 0)) / CS;
    await patch(
      img,
      (await refcountSlot(img, cluster)).offset,
      be64(2n ** 64n - 1n),
    );
    const r = await assertCheckLikeQemu(img);
    assert.ok(
      r.messages.includes(
        `Leaked cluster ${cluster} refcount=18446744073709551615 reference=1`,
      ),
      r.messages.join("\n"),
    );
    assert.ok(
      r.messages.some((m) =>
        m.startsWith("ERROR OFLAG_COPIED data cluster") &&
        m.endsWith("refcount=18446744073709551615")
      ),
    );
  },
);

qemuTest(
  "check: a zeroed refcount table entry and shared L2 entries match qemu-img",
  async () => {
    await using dir = await tempDir();
    const rt = await base(join(dir.path, "rt.qcow2"));
    await patch(rt, (await layoutOf(rt)).reftableOffset, be64(0));
    let r = await assertCheckLikeQemu(rt);
    assert.strictEqual(r.exitCode, 2);
    assert.ok(r.corruptions >= 8);

    const dup = await base(join(dir.path, "dup.qcow2"));
    const shared = (await hostClusterOf(dup, 0)) / CS;
    const orphan = (await hostClusterOf(dup, 64 * KiB)) / CS;
    await patch(
      dup,
      await l2EntryAt(dup, 64 * KiB),
      await readAt(dup, await l2EntryAt(dup, 0), 8),
    );
    r = await assertCheckLikeQemu(dup);
    assert.strictEqual(r.exitCode, 2);
    assert.ok(
      r.messages.includes(`ERROR cluster ${shared} refcount=1 reference=2`),
    );
    assert.ok(
      r.messages.includes(`Leaked cluster ${orphan} refcount=1 reference=0`),
    );

    // With 1-bit refcounts the second reference overflows QEMU's table.
    const one = await base(join(dir.path, "one.qcow2"), ["refcount_bits=1"]);
    await patch(
      one,
      await l2EntryAt(one, 64 * KiB),
      await readAt(one, await l2EntryAt(one, 0), 8),
    );
    r = await assertCheckLikeQemu(one);
    assert.ok(
      r.messages.some((m) => m.startsWith("ERROR: overflow cluster offset=0x")),
    );
  },
);

qemuTest(
  "check: leaked clusters only give exit status 3 like qemu-img",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "leak.qcow2"));
    const clusters = Math.ceil((await Deno.stat(img)).size / CS);
    {
      using f = await Deno.open(img, { write: true });
      await f.truncate((clusters + 3) * CS);
    }
    await setRefcount(img, clusters + 1, 1);
    await setRefcount(img, clusters + 2, 2);
    const r = await assertCheckLikeQemu(img);
    assert.strictEqual(r.exitCode, 3);
    assert.strictEqual(r.leaks, 2);
    assert.strictEqual(r.corruptions, 0);
    assert.strictEqual(r.imageEndOffset, (clusters + 3) * CS);
  },
);

qemuTest(
  "check: broken L1/L2 entries (unaligned, past the end, reserved bits, flags) match qemu-img",
  async () => {
    await using dir = await tempDir();
    const cases: [string, (p: string) => Promise<void>][] = [
      [
        "unaligned-data",
        async (p) => await xorEntry(p, await l2EntryAt(p, 0), 0x200n),
      ],
      [
        "past-eof",
        async (p) =>
          await patch(
            p,
            await l2EntryAt(p, 3 * 1024 * KiB),
            be64(0x8000000040000000n),
          ),
      ],
      ["reserved", async (p) => {
        await xorEntry(p, await l2EntryAt(p, 0), 2n);
        await xorEntry(p, (await layoutOf(p)).l1Offset, 1n);
      }],
      [
        "compressed-copied",
        async (p) =>
          await xorEntry(p, await l2EntryAt(p, 1024 * KiB), 1n << 63n),
      ],
      [
        "copied-cleared",
        async (p) => await xorEntry(p, await l2EntryAt(p, 0), 1n << 63n),
      ],
      [
        "l1-unaligned",
        async (p) => await xorEntry(p, (await layoutOf(p)).l1Offset, 0x200n),
      ],
      ["unaligned-zero", async (p) => {
        const at = await l2EntryAt(p, 2 * 1024 * KiB);
        await patch(
          p,
          at,
          be64(
            0x8000000000000000n | BigInt(await hostClusterOf(p, 0)) | 0x201n,
          ),
        );
      }],
    ];
    for (const [name, breakIt] of cases) {
      const img = await base(join(dir.path, `${name}.qcow2`));
      await breakIt(img);
      const r = await assertCheckLikeQemu(img);
      assert.strictEqual(r.exitCode, 2, name);
      // info still works: only the header is read.
      assert.strictEqual((await imageInfo(img)).format, "qcow2");
    }
    // qemu-img map gives up on an unaligned data cluster; so do we.
    const bad = join(dir.path, "unaligned-data.qcow2");
    assert.strictEqual((await qemuStatus("map", "--output=json", bad)).code, 1);
    await assert.rejects(
      mapImage(bad),
      (e: Error) => e instanceof Qcow2Error && /unaligned/.test(e.message),
    );
  },
);

qemuTest(
  "check: broken refcount table entries and snapshot L1 tables match qemu-img",
  async () => {
    await using dir = await tempDir();
    const reserved = await base(join(dir.path, "rt-reserved.qcow2"));
    await xorEntry(reserved, (await layoutOf(reserved)).reftableOffset, 1n);
    assert.strictEqual((await assertCheckLikeQemu(reserved)).exitCode, 2);

    const outside = await base(join(dir.path, "rt-outside.qcow2"));
    await patch(
      outside,
      (await layoutOf(outside)).reftableOffset + 8,
      be64(1n << 32n),
    );
    let r = await assertCheckLikeQemu(outside);
    assert.ok(r.messages.includes("ERROR refcount block 1 is outside image"));

    // An unaligned refcount block cannot be read: check errors, exit 1.
    const unaligned = await base(join(dir.path, "rt-unaligned.qcow2"));
    await xorEntry(
      unaligned,
      (await layoutOf(unaligned)).reftableOffset,
      0x200n,
    );
    r = await assertCheckLikeQemu(unaligned);
    assert.strictEqual(r.exitCode, 1);
    assert.ok(r.checkErrors > 0);

    const snap = await base(join(dir.path, "snap.qcow2"));
    await qemuImg("snapshot", "-c", "s1", snap);
    await qemuImg("snapshot", "-c", "s2", snap);
    const table = Number(await u64At(snap, 64));
    await xorEntry(snap, table, 0x200n); // first snapshot's L1 table offset
    r = await assertCheckLikeQemu(snap);
    assert.ok(
      r.messages.some((m) =>
        /^ERROR snapshot 1 \(s1\) l1_offset=0x[0-9a-f]+: L1 table is not cluster aligned/
          .test(m)
      ),
    );
  },
);

qemuTest(
  "check: refcounts shared with snapshots and extended L2 bitmaps match qemu-img",
  async () => {
    await using dir = await tempDir();
    const snap = await base(join(dir.path, "snap.qcow2"));
    await qemuImg("snapshot", "-c", "s1", snap);
    const shared = (await hostClusterOf(snap, 64 * KiB)) / CS;
    assert.strictEqual(await getRefcount(snap, shared), 2);
    await setRefcount(snap, shared, 1);
    let r = await assertCheckLikeQemu(snap);
    assert.ok(
      r.messages.includes(`ERROR cluster ${shared} refcount=1 reference=2`),
    );

    const ext = await makeImage(join(dir.path, "ext.qcow2"), "4M", [
      "extended_l2=on",
    ], [
      "write -q -P 1 0 64k",
      "write -q -P 2 1M 4k",
    ]);
    assert.strictEqual((await assertCheckLikeQemu(ext)).exitCode, 0);
    // Subcluster 0 both allocated and zero; an unallocated cluster with
    // allocation bits.
    await patch(ext, (await l2EntryAt(ext, 0)) + 8, be64(0x0000000100000001n));
    await patch(
      ext,
      (await l2EntryAt(ext, 2 * 1024 * KiB)) + 8,
      be64(0x0000000000000004n),
    );
    r = await assertCheckLikeQemu(ext);
    assert.strictEqual(r.exitCode, 2);
    assert.ok(
      r.messages.includes(
        "ERROR: Unallocated cluster has non-zero subcluster allocation map",
      ),
    );
  },
);

qemuTest(
  "check: problems in L2 tables shared by the active L1 and three snapshots are found once per L1, as qemu-img finds them",
  async () => {
    await using dir = await tempDir();
    const snap = await base(join(dir.path, "shared.qcow2"));
    for (const name of ["s1", "s2", "s3"]) {
      await qemuImg("snapshot", "-c", name, snap);
    }
    // Reserved bits on a data entry, an unaligned data offset, the COPIED
    // flag on a compressed entry, and an offset far past the end of the
    // file: the walk of the shared table meets each four times.
    await xorEntry(snap, await l2EntryAt(snap, 0), 0x2n);
    await xorEntry(snap, await l2EntryAt(snap, 64 * KiB), 0x200n);
    await xorEntry(snap, await l2EntryAt(snap, 1024 * KiB), 1n << 63n);
    await patch(
      snap,
      await l2EntryAt(snap, 3 * 1024 * KiB),
      be64(0x8000_0100_0000_0000n),
    );
    const r = await assertCheckLikeQemu(snap);
    assert.strictEqual(r.exitCode, 2);
    const count = (re: RegExp) => r.messages.filter((m) => re.test(m)).length;
    assert.strictEqual(
      count(/^ERROR found l2 entry with reserved bits set/),
      4,
    );
    assert.strictEqual(count(/cluster is not properly aligned/), 4);
    assert.strictEqual(count(/exceeding the end of the file/), 4);
    assert.strictEqual(count(/copied flag must never be set/), 4);
  },
);

qemuTest(
  "check: memory is bounded by the file size, checked before allocating",
  async () => {
    await using dir = await tempDir();
    const img = await base(join(dir.path, "img.qcow2"));
    const clusters = (await Deno.stat(img)).size / CS;
    const r = await checkImage(img, { maxClusters: clusters - 1 });
    assert.strictEqual(r.exitCode, 1);
    assert.match(
      r.failure!,
      new RegExp(
        `${clusters} clusters, more than the limit of ${clusters - 1}`,
      ),
    );
    assert.strictEqual(
      (await checkImage(img, { maxClusters: clusters })).exitCode,
      0,
    );
  },
);
