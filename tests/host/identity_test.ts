// A file Deno opened is opened a second time by path for the calls Deno
// does not have (lseek SEEK_DATA/SEEK_HOLE, copy_file_range, pread), and
// that descriptor is used only when it is the very file Deno opened:
// device and inode read from the descriptor itself, a regular file. A name
// replaced in between (another file renamed over it) is refused: its holes
// would be mapped onto the first file, and its bytes copied instead.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { OutputFile } from "../../lib/host/output_file.ts";
import { loadLibc, O_RDONLY } from "../../lib/host/_libc.ts";
import { hostFiles } from "../../lib/io/host_files.ts";

const MiB = 1024 * 1024;
const ON_LINUX = Deno.build.os === "linux";

/** `dir/holey` (4 MiB, data at 1 MiB only) and `dir/full` (4 MiB of data). */
async function twoFiles(dir: string): Promise<{ holey: string; full: string }> {
  const holey = join(dir, "holey");
  {
    using f = await Deno.open(holey, { write: true, create: true });
    await f.truncate(4 * MiB);
    await f.seek(MiB, Deno.SeekMode.Start);
    await f.write(new Uint8Array(65536).fill(1));
  }
  const full = join(dir, "full");
  await Deno.writeFile(full, new Uint8Array(4 * MiB).fill(2));
  return { holey, full };
}

Deno.test({
  name:
    "libc opens a name again only when it still leads to the file Deno opened",
  ignore: !ON_LINUX,
  async fn() {
    const libc = loadLibc();
    assert.ok(libc, "libc with FFI granted");
    await using dir = await tempDir();
    const { holey, full } = await twoFiles(dir.path);
    await using source = await FileSource.open(holey);
    const opened = source.identity!;
    const fd = libc.openChecked(holey, O_RDONLY, opened);
    assert.notStrictEqual(fd, undefined);
    libc.close(fd!);
    // The name now leads to another file: refused.
    await Deno.rename(full, holey);
    assert.strictEqual(libc.openChecked(holey, O_RDONLY, opened), undefined);
    const now = await Deno.stat(holey);
    const other = libc.openChecked(holey, O_RDONLY, {
      dev: now.dev,
      ino: now.ino!,
    });
    assert.notStrictEqual(other, undefined);
    libc.close(other!);
    // A directory with its own identity is no regular file: refused.
    const d = await Deno.stat(dir.path);
    assert.strictEqual(
      libc.openChecked(dir.path, O_RDONLY, { dev: d.dev, ino: d.ino! }),
      undefined,
    );
  },
});

Deno.test({
  name: "libc's device numbers are Deno's, on another device than the disk",
  ignore: !ON_LINUX,
  fn() {
    const libc = loadLibc()!;
    // The disk, and procfs (major 0 and a minor of its own).
    for (const path of [Deno.execPath(), "/proc/version"]) {
      const info = Deno.statSync(path);
      const fd = libc.openChecked(path, O_RDONLY, {
        dev: info.dev,
        ino: info.ino!,
      });
      assert.notStrictEqual(fd, undefined, path);
      libc.close(fd!);
    }
  },
});

Deno.test({
  name:
    "a hole probe and a kernel copy are refused once the source's name leads to another file",
  ignore: !ON_LINUX,
  async fn() {
    await using dir = await tempDir();
    const { holey, full } = await twoFiles(dir.path);
    await using source = await FileSource.open(holey);
    const files = hostFiles()!;
    // Still the file opened: the probe sees the hole before 1 MiB, and
    // the copy runs.
    const probe = files.holeProbe(source);
    assert.ok(probe);
    const first = probe.find(0);
    probe.close();
    assert.ok(first !== undefined && first !== "enxio", String(first));
    assert.ok(first.data > 0 && first.data <= MiB, JSON.stringify(first));
    const before = await OutputFile.create(join(dir.path, "before"));
    try {
      assert.strictEqual(await before.copyFrom(source, MiB, 0, 65536), true);
    } finally {
      await before.abort();
    }
    // Replaced: no probe (everything counts as data, which reading the
    // opened file gets right), no copy (the caller reads and writes).
    await Deno.rename(full, holey);
    assert.strictEqual(files.holeProbe(source), undefined);
    const after = await OutputFile.create(join(dir.path, "after"));
    try {
      assert.strictEqual(await after.copyFrom(source, MiB, 0, 65536), false);
    } finally {
      await after.abort();
    }
    // The source still reads the file it opened.
    assert.deepStrictEqual(
      await source.read(MiB, 4),
      new Uint8Array([1, 1, 1, 1]),
    );
  },
});
