// Hostile metadata that QEMU itself opens: tables that point at other
// metadata or share an L2 table read exactly as QEMU reads them (its reader
// does not police overlaps, its check does), and our check agrees with
// qemu-img check. Hostile sizes are refused by the CLI in one line, before
// any allocation of the claimed size: a virtual size near 2^63, a backing
// chain deeper than the limit.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuIo, qemuTest, runStatus, tempDir } from "../_qemu.ts";
import { assertOneLineError, runCli } from "../writer/_cli.ts";
import { patchFile, readU64At, u64 } from "../reader/_helpers.ts";
import { listDir } from "../writer/_helpers.ts";

const COPIED = 1n << 63n;

qemuTest(
  "hostile: tables pointing at metadata read as in QEMU, and check agrees",
  async () => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", base, "2G");
    await qemuIo(base, ["write -q -P 0x11 0 64k", "write -q -P 0x22 1G 64k"]);
    const orig = await Deno.readFile(base);
    const l1 = await readU64At(base, 40);
    const refcountTable = await readU64At(base, 48);
    const l2 = (await readU64At(base, l1)) % 2 ** 56;
    const cases: Array<[string, number, bigint]> = [
      // L1 entry 2 shares the L2 table of entry 0: guest 1 GiB and 0 alias.
      ["shared L2 table", l1 + 16, COPIED | BigInt(await readU64At(base, l1))],
      [
        "data cluster on the refcount table",
        l2 + 8,
        COPIED | BigInt(refcountTable),
      ],
      ["data cluster on its own L2 table", l2 + 16, COPIED | BigInt(l2)],
      ["data cluster at offset 0 (unallocated in v3)", l2 + 24, COPIED],
    ];
    for (const [what, at, value] of cases) {
      const img = join(dir.path, "hostile.qcow2");
      await Deno.writeFile(img, orig);
      await patchFile(img, at, u64(value));
      const want = join(dir.path, "qemu.raw");
      await qemuImg("convert", "-O", "raw", img, want);
      const got = join(dir.path, "ours.raw");
      const r = await runCli([
        "convert",
        "-q",
        "-O",
        "raw",
        img,
        got,
      ]);
      assert.strictEqual(r.code, 0, `${what}: ${r.stderr}`);
      const same = await runStatus("cmp", [want, got]);
      assert.strictEqual(
        same.code,
        0,
        `${what}: expansion differs from QEMU's`,
      );
      const q = await runStatus("qemu-img", ["check", img]);
      const ours = await runCli(["check", img]);
      assert.strictEqual(ours.code, q.code, `${what}: check exit code`);
      await Deno.remove(want);
    }
  },
);

qemuTest(
  "hostile: a virtual size near 2^63 is refused in one line",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "huge.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", img, "1M");
    await patchFile(img, 24, u64((1n << 63n) - 512n));
    for (
      const args of [
        ["info", img],
        ["map", img],
        ["compare", img, img],
        ["convert", "-O", "raw", img, join(dir.path, "out.raw")],
        ["convert", "--compress", "zstd", img, join(dir.path, "out.qcow2")],
      ]
    ) {
      const r = await runCli(args);
      // Our words, or qemu-img's where its tests expect them (iotest 054:
      // "Could not open 'IMG': Image is too big").
      const tooBig =
        /size 0x7ffffffffffffe00 is out of range|^qcow2pipe: Could not open '.*huge\.qcow2': Image is too big$/m;
      if (args[0] === "compare") {
        // qemu-img compare exits 2 when an image cannot be opened
        assert.strictEqual(r.code, 2, r.stderr);
        assert.match(r.stderr, tooBig);
      } else {
        assertOneLineError(r, tooBig);
      }
    }
    const check = await runCli(["check", img]);
    assert.strictEqual(check.code, 1, check.stderr);
    assert.deepStrictEqual(
      await listDir(dir.path),
      ["huge.qcow2"],
      "no output",
    );
  },
);

qemuTest(
  "hostile: a backing chain deeper than 256 images is refused",
  async () => {
    await using dir = await tempDir();
    // 300 images, each backed by the next: made by copying one and patching
    // its backing file name (same length in every copy).
    const name = (i: number) => `c${String(i).padStart(3, "0")}.qcow2`;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      join(dir.path, name(300)),
      "1M",
    );
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-b",
      name(300),
      "-F",
      "qcow2",
      join(dir.path, "template.qcow2"),
      "1M",
    );
    const template = await Deno.readFile(join(dir.path, "template.qcow2"));
    const at = await readU64At(join(dir.path, "template.qcow2"), 8);
    const encoder = new TextEncoder();
    for (let i = 0; i < 300; i++) {
      const copy = template.slice();
      copy.set(encoder.encode(name(i + 1)), at);
      await Deno.writeFile(join(dir.path, name(i)), copy);
    }
    const r = await runCli([
      "convert",
      "-O",
      "raw",
      join(dir.path, name(0)),
      join(dir.path, "out.raw"),
    ]);
    assertOneLineError(r, /deeper than 256 images/);
    // 256 deep is fine.
    const ok = await runCli(["info", join(dir.path, name(45))]);
    assert.strictEqual(ok.code, 0, ok.stderr);
  },
);
