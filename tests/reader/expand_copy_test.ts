// Expanding qcow2 to raw with the data copied file to file in the kernel
// (copy_file_range through FFI), judged by qemu-img: the same bytes as its
// own expansion on ext4, XFS and btrfs (loop-mounted, so root is needed),
// with and without --allow-ffi, across file systems, and where the copy
// does not apply (a block device, standard output).

import assert from "node:assert";
import { join } from "node:path";
import { FileSource } from "../../lib/host/file_source.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { expandToPath } from "../../lib/reader/expand_to_path.ts";
import { openImage } from "../../lib/reader/open.ts";
import {
  createQcow2,
  HAVE_QEMU,
  qemuCompareIdentical,
  qemuImg,
  qemuIo,
  runStatus,
  tempDir,
  toolTest,
} from "../_qemu.ts";
import { canLoop, have, loop, mount, sh } from "../sparsify/_disks.ts";
import { SMALL_FS_ENV } from "../sparsify/_xfs.ts";
import { mixedBytes } from "./_helpers.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;
const MiB = 1024 * 1024;
const SIZE = 48 * MiB;
const FILE_SYSTEMS = ["ext4", "xfs", "btrfs"] as const;
type Fs = typeof FILE_SYSTEMS[number];

const MKFS: Record<Fs, [string, string[], Record<string, string>?]> = {
  ext4: ["mkfs.ext4", ["-q", "-F"]],
  xfs: ["mkfs.xfs", ["-q", "-f"], SMALL_FS_ENV],
  btrfs: ["mkfs.btrfs", ["-q", "-f"]],
};

const fsTest = toolTest(
  "root with loop devices, mkfs.ext4/xfs/btrfs, qemu-img",
  canLoop() && HAVE_QEMU &&
    FILE_SYSTEMS.every((fs) => have(MKFS[fs][0])),
  "run as root; apt-get install e2fsprogs xfsprogs btrfs-progs qemu-utils",
);

/** A loop-mounted file system of `type` in `dir`, gone on dispose. */
async function mountFs(
  dir: string,
  type: Fs,
): Promise<{ path: string } & AsyncDisposable> {
  const image = join(dir, `${type}.img`);
  await Deno.writeFile(image, new Uint8Array());
  await Deno.truncate(image, 320 * MiB);
  const [cmd, args, env] = MKFS[type];
  await sh(cmd, [...args, image], { env });
  const stack = new AsyncDisposableStack();
  const dev = stack.use(await loop(image, 0, 320 * MiB));
  const path = join(dir, type);
  stack.use(await mount(dev.dev, path, "rw", type));
  return { path, [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

/**
 * A qcow2 image with runs of data, a zero cluster inside them, a
 * compressed cluster and unallocated space; and qemu-img's expansion.
 */
async function makeImage(dir: string): Promise<{ qcow2: string; raw: string }> {
  const plain = join(dir, "plain.raw");
  const bytes = new Uint8Array(SIZE);
  bytes.set(mixedBytes(16 * MiB, 26), 0);
  bytes.set(mixedBytes(MiB + 4096, 27), 40 * MiB);
  await Deno.writeFile(plain, bytes);
  const qcow2 = join(dir, "src.qcow2");
  await qemuImg("convert", "-q", "-f", "raw", "-O", "qcow2", plain, qcow2);
  await qemuIo(qcow2, ["write -z 1M 64k", "write -c -P 0x5a 20M 64k"]);
  const raw = join(dir, "qemu.raw");
  await qemuImg("convert", "-q", "-O", "raw", qcow2, raw);
  await Deno.remove(plain);
  return { qcow2, raw };
}

/** `deno run PERMISSIONS cli.ts convert -O raw SRC DST`; stdout. */
async function cliExpand(
  permissions: readonly string[],
  src: string,
  dst: string,
): Promise<Uint8Array> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, CLI, "convert", "-q", "-O", "raw", src, dst],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
  return r.stdout;
}

/** Asserts `cmp` finds the files identical, and qemu-img compare too. */
async function assertSame(expected: string, actual: string): Promise<void> {
  const r = await runStatus("cmp", [expected, actual]);
  assert.strictEqual(r.code, 0, r.stdout + r.stderr);
  await qemuCompareIdentical(expected, actual, ["raw", "raw"]);
}

const WITH_FFI = ["-A"];
const WITHOUT_FFI = ["-R", "-W"];

fsTest(
  "expanding copies data file to file on ext4, XFS and btrfs, the bytes qemu-img writes",
  async (t) => {
    await using dir = await tempDir();
    await using stack = new AsyncDisposableStack();
    const { qcow2, raw } = await makeImage(dir.path);
    const at = {} as Record<Fs, string>;
    for (const fs of FILE_SYSTEMS) {
      at[fs] = stack.use(await mountFs(dir.path, fs)).path;
      await Deno.copyFile(qcow2, join(at[fs], "src.qcow2"));
    }
    for (const fs of FILE_SYSTEMS) {
      const src = join(at[fs], "src.qcow2");
      await t.step(
        `${fs}: the output copies the data in the kernel`,
        async () => {
          await using source = await FileSource.open(src);
          const out = await OutputFile.create(join(at[fs], "probe.raw"));
          try {
            assert.strictEqual(await out.copyFrom(source, 0, 0, 65536), true);
          } finally {
            await out.abort();
          }
          await using image = await openImage(src);
          await expandToPath(image, join(at[fs], "lib.raw"));
          await assertSame(raw, join(at[fs], "lib.raw"));
        },
      );
      for (
        const [what, perms] of [
          ["with", WITH_FFI],
          ["without", WITHOUT_FFI],
        ] as const
      ) {
        await t.step(`${fs}: the CLI ${what} --allow-ffi`, async () => {
          const out = join(at[fs], `cli-${what}.raw`);
          await cliExpand(perms, src, out);
          await assertSame(raw, out);
        });
      }
    }
    await t.step(
      "a source on another file system than the output",
      async () => {
        for (
          const [from, to] of [["xfs", "ext4"], ["ext4", "btrfs"]] as const
        ) {
          const out = join(at[to], `from-${from}.raw`);
          await cliExpand(WITH_FFI, join(at[from], "src.qcow2"), out);
          await assertSame(raw, out);
        }
      },
    );
    await t.step(
      "an existing output is replaced whole at the end",
      async () => {
        const out = join(at.xfs, "old.raw");
        await Deno.writeFile(out, new Uint8Array(SIZE + MiB).fill(0xee));
        const before = await Deno.stat(out);
        await cliExpand(WITH_FFI, join(at.xfs, "src.qcow2"), out);
        assert.notStrictEqual((await Deno.stat(out)).ino, before.ino);
        await assertSame(raw, out);
        const names = [...Deno.readDirSync(at.xfs)].map((e) => e.name);
        assert.deepStrictEqual(names.filter((n) => n.endsWith(".partial")), []);
      },
    );
    await t.step("a block device is written, not copied into", async () => {
      const backing = join(at.ext4, "device.bin");
      await Deno.writeFile(backing, new Uint8Array(SIZE).fill(0xee));
      await using dev = await loop(backing, 0, SIZE);
      await cliExpand(WITH_FFI, join(at.ext4, "src.qcow2"), dev.dev);
      await assertSame(raw, backing);
    });
    await t.step("standard output gets the bytes in order", async () => {
      const bytes = await cliExpand(WITH_FFI, join(at.btrfs, "src.qcow2"), "-");
      assert.ok(bytes.length === SIZE, `${bytes.length} bytes`);
      assert.deepStrictEqual(bytes, await Deno.readFile(raw));
    });
  },
);

fsTest(
  "expanding an image preallocated with metadata copies no holes",
  async () => {
    await using dir = await tempDir();
    await using fs = await mountFs(dir.path, "xfs");
    const src = await createQcow2(
      fs.path,
      "prealloc.qcow2",
      "256M",
      "-o",
      "preallocation=metadata",
    );
    await qemuIo(src, ["write -P 0x11 128M 64k"]);
    const out = join(fs.path, "prealloc.raw");
    await cliExpand(WITH_FFI, src, out);
    const info = await Deno.stat(out);
    assert.strictEqual(info.size, 256 * MiB);
    assert.ok((info.blocks ?? 0) * 512 <= 4 * MiB, `${info.blocks} blocks`);
    await qemuCompareIdentical(src, out, ["qcow2", "raw"]);
  },
);
