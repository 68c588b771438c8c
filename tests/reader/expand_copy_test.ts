// Expanding qcow2 to raw with the data copied file to file in the kernel
// (copy_file_range through FFI), judged by qemu-img: the library's
// expansion on ext4, XFS and btrfs (loop-mounted, so root is needed), an
// existing output replaced, and where the copy does not apply (a block
// device, standard output, holes of a preallocated image). The CLI with
// and without FFI, and across file systems: tests/host/kernel_copy_test.ts.

import assert from "node:assert";
import { join } from "node:path";
import { FileSource } from "../../lib/host/file_source.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { expandToPath } from "../../lib/reader/expand_to_path.ts";
import { openImage } from "../../lib/reader/open.ts";
import {
  createQcow2,
  qemuCompareIdentical,
  qemuIo,
  tempDir,
} from "../_qemu.ts";
import { loop } from "../sparsify/_disks.ts";
import {
  assertSameRaw,
  FILE_SYSTEMS,
  type Fs,
  fsTest,
  makeImage,
  MiB,
  mountFs,
  SIZE,
} from "../host/_file_systems.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

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

const WITH_FFI = ["-A"];

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
          await assertSameRaw(raw, join(at[fs], "lib.raw"));
        },
      );
    }
    await t.step(
      "an existing output is replaced whole at the end",
      async () => {
        const out = join(at.xfs, "old.raw");
        await Deno.writeFile(out, new Uint8Array(SIZE + MiB).fill(0xee));
        const before = await Deno.stat(out);
        await cliExpand(WITH_FFI, join(at.xfs, "src.qcow2"), out);
        assert.notStrictEqual((await Deno.stat(out)).ino, before.ino);
        await assertSameRaw(raw, out);
        const names = [...Deno.readDirSync(at.xfs)].map((e) => e.name);
        assert.deepStrictEqual(names.filter((n) => n.endsWith(".partial")), []);
      },
    );
    await t.step("a block device is written, not copied into", async () => {
      const backing = join(at.ext4, "device.bin");
      await Deno.writeFile(backing, new Uint8Array(SIZE).fill(0xee));
      await using dev = await loop(backing, 0, SIZE);
      await cliExpand(WITH_FFI, join(at.ext4, "src.qcow2"), dev.dev);
      await assertSameRaw(raw, backing);
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
