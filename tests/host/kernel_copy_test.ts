// The CLI's raw → qcow2 and qcow2 → raw on real file systems (ext4, XFS,
// btrfs, loop-mounted: root only), judged by qemu-img: the bytes it writes
// itself, with all permissions, with only read, write and FFI, and without
// FFI; the source on the output's file system and on another. Which path
// moved the bytes is seen, not timed: strace records every
// copy_file_range and pread64 (the kernel copy and the parallel reads run
// only with FFI), and on XFS and btrfs a kernel copy within one file
// system shares the extents of the source, which filefrag reports.

import assert from "node:assert";
import { basename, join } from "node:path";
import { qemuCheckClean, qemuCompareIdentical, tempDir } from "../_qemu.ts";
import {
  assertSameRaw,
  FILE_SYSTEMS,
  type Fs,
  hasSharedExtents,
  makeImage,
  mountFs,
  moved,
  traceCli,
  tracedFsTest,
} from "./_file_systems.ts";

/** The permission sets, and whether each grants FFI. */
const PERMISSIONS = [
  { label: "all", flags: ["-A"], ffi: true },
  { label: "ffi", flags: ["-R", "-W", "--allow-ffi"], ffi: true },
  { label: "plain", flags: ["-R", "-W"], ffi: false },
] as const;

type Permissions = typeof PERMISSIONS[number];

/**
 * raw → qcow2 of `from/plain.raw` and qcow2 → raw of `from/src.qcow2` into
 * `to`: qemu-img's bytes, and the calls that moved them.
 */
async function convertBothWays(
  from: { dir: string; fs: Fs },
  to: { dir: string; fs: Fs },
  perms: Permissions,
): Promise<void> {
  const plain = join(from.dir, "plain.raw");
  const name = `${perms.label}-from-${basename(from.dir)}`;
  const qcow2 = join(to.dir, `${name}.qcow2`);
  const forward = await traceCli(perms.flags, [
    "convert",
    "-q",
    "-O",
    "qcow2",
    plain,
    qcow2,
  ]);
  await qemuCompareIdentical(plain, qcow2, ["raw", "qcow2"]);
  await qemuCheckClean(qcow2);
  const reads = moved(forward.calls, plain, to.dir);
  // With FFI the raw source is read by pread(2), several at once; without,
  // by Deno's read(2) alone.
  if (perms.ffi) assert.ok(reads.preads > 0, JSON.stringify(reads));
  else assert.strictEqual(reads.preads, 0);

  const src = join(from.dir, "src.qcow2");
  const raw = join(to.dir, `${name}.raw`);
  const back = await traceCli(perms.flags, [
    "convert",
    "-q",
    "-O",
    "raw",
    src,
    raw,
  ]);
  await assertSameRaw(join(from.dir, "qemu.raw"), raw);
  const copies = moved(back.calls, src, to.dir);
  if (!perms.ffi) {
    assert.deepStrictEqual(copies, { copied: 0, failed: [], preads: 0 });
  } else if (from.dir === to.dir) {
    assert.ok(copies.copied > 0, JSON.stringify(copies));
    assert.deepStrictEqual(copies.failed, []);
  } else {
    // Across file systems the kernel copies or refuses with EXDEV (Linux
    // 6.18 refuses even between two ext4); either way the copy was tried,
    // and a refusal left the bytes to the read/write path.
    assert.ok(copies.copied + copies.failed.length > 0, JSON.stringify(copies));
    for (const errno of copies.failed) assert.strictEqual(errno, "EXDEV");
  }
  // XFS and btrfs copy within one file system by sharing extents: proof
  // that the kernel copied, and that without FFI it did not.
  if (from.dir === to.dir && from.fs !== "ext4") {
    assert.strictEqual(await hasSharedExtents(raw), perms.ffi);
  }
}

tracedFsTest(
  "convert copies in the kernel and reads in parallel only with FFI, and writes qemu-img's bytes on ext4, XFS and btrfs",
  async (t) => {
    await using dir = await tempDir();
    await using stack = new AsyncDisposableStack();
    const at = {} as Record<Fs | "ext4b", { dir: string; fs: Fs }>;
    for (const fs of FILE_SYSTEMS) {
      at[fs] = { dir: stack.use(await mountFs(dir.path, fs)).path, fs };
      await makeImage(at[fs].dir);
    }
    // A second ext4: another file system of the same type.
    const ext4b = stack.use(await mountFs(dir.path, "ext4", "ext4b"));
    at.ext4b = { dir: ext4b.path, fs: "ext4" };
    for (const fs of FILE_SYSTEMS) {
      for (const perms of PERMISSIONS) {
        await t.step(`${fs}, ${perms.flags.join(" ")}`, async () => {
          await convertBothWays(at[fs], at[fs], perms);
        });
      }
    }
    for (
      const [from, to] of [
        ["xfs", "ext4"],
        ["ext4", "btrfs"],
        ["btrfs", "xfs"],
        ["ext4", "ext4b"],
      ] as const
    ) {
      for (const perms of PERMISSIONS) {
        await t.step(
          `from ${from} to ${to}, ${perms.flags.join(" ")}`,
          async () => {
            await convertBothWays(at[from], at[to], perms);
          },
        );
      }
    }
  },
);
