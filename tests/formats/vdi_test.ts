// VDI (VirtualBox) images, dynamic and static, made by qemu-img and held to
// qemu-img and 7-Zip; discarded blocks; refusals; hostile input.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import { checkImage } from "../../lib/tools/check.ts";
import { mixedRaw } from "../reader/_helpers.ts";
import { assertOneLineError, runCli } from "../writer/_cli.ts";
import { openImage } from "../../lib/reader/open.ts";
import { Qcow2Error } from "../../lib/format/errors.ts";
import {
  assertCheckAsQemu,
  holdToOracles,
  hostileLoop,
  type Mutation,
  nastyU32,
  nastyU64,
  qemuConvert,
  setU32,
  setU64,
} from "./_oracle.ts";

const MiB = 1024 * 1024;

/** A raw disk with text, noise, a fill pattern and zeros, and a hole. */
async function sourceDisk(dir: string, size: number): Promise<string> {
  const path = join(dir, "disk.raw");
  const bytes = mixedRaw(size, 192 * 1024, size);
  // A whole zero block and a partly zero one.
  bytes.fill(0, 2 * MiB, 3 * MiB);
  bytes.fill(0, 4 * MiB + 4096, 4 * MiB + 300_000);
  await Deno.writeFile(path, bytes.subarray(0, size - 1536));
  await Deno.truncate(path, size); // a hole at the end
  return path;
}

for (
  const [subformat, options] of [["dynamic", []], ["static", [
    "-o",
    "static=on",
  ]]] as const
) {
  qemuTest(
    `VDI ${subformat}: convert, info, map and a qcow2 copy agree with qemu-img and 7-Zip`,
    async () => {
      await using dir = await tempDir();
      // Not a whole number of 1 MiB blocks.
      const raw = await sourceDisk(dir.path, 6 * MiB + 7 * 512);
      const vdi = join(dir.path, `${subformat}.vdi`);
      await qemuConvert("-O", "vdi", ...options, raw, vdi);
      await holdToOracles(vdi, dir.path, { format: "vdi", sevenZip: true });
    },
  );
}

qemuTest("VDI: a discarded block reads as zeros, as in qemu-img", async () => {
  await using dir = await tempDir();
  const raw = await sourceDisk(dir.path, 4 * MiB);
  const vdi = join(dir.path, "discarded.vdi");
  await qemuConvert("-O", "vdi", raw, vdi);
  const bytes = await Deno.readFile(vdi);
  const bmap = new DataView(bytes.buffer).getUint32(0x154, true);
  // Block 1 is allocated (it holds data); mark it discarded.
  assert.notStrictEqual(
    new DataView(bytes.buffer).getUint32(bmap + 4, true),
    0xffffffff,
  );
  new DataView(bytes.buffer).setUint32(bmap + 4, 0xfffffffe, true);
  await Deno.writeFile(vdi, bytes);
  await holdToOracles(vdi, dir.path, { format: "vdi" });
});

qemuTest(
  "VDI check: block map entries shared, out of range, past the end of the file, and a wrong blocks_allocated, as qemu-img check reports them",
  async (t) => {
    await using dir = await tempDir();
    const raw = await sourceDisk(dir.path, 6 * MiB);
    const vdi = join(dir.path, "clean.vdi");
    await qemuConvert("-O", "vdi", raw, vdi);
    const good = await Deno.readFile(vdi);
    const view = new DataView(good.buffer);
    const bmap = view.getUint32(0x154, true);
    const entry = (i: number) => view.getUint32(bmap + 4 * i, true);
    // Blocks 0, 1 and 4 hold data, 2 is zeros (not allocated).
    assert.deepStrictEqual([0, 1, 2, 4].map(entry), [0, 1, 0xffffffff, 3]);
    const entries = (values: [number, number][]) => {
      let out: Uint8Array = good;
      for (const [i, v] of values) out = setU32(out, bmap + 4 * i, v, true);
      return out;
    };
    const cases: [string, Uint8Array, number][] = [
      ["shared", entries([[1, 0]]), 2],
      ["too large", entries([[4, 6]]), 2],
      ["blocks_allocated", setU32(good, 0x184, 9, true), 2],
      ["several", entries([[0, 3], [1, 3], [2, 70], [5, 0xfffffffe]]), 2],
      ["past the end of the file", entries([[2, 5]]), 2],
      ["clean", good, 0],
    ];
    for (const [name, bytes, status] of cases) {
      await t.step(name, async () => {
        const path = join(dir.path, `${name}.vdi`);
        await Deno.writeFile(path, bytes);
        assert.strictEqual(await assertCheckAsQemu(path), status);
      });
    }
    await t.step("a block map running past the end of the file", async () => {
      // 1 KiB: the header and one sector of map; 1000 entries, the rest
      // read as 0 (block 0, shared 998 times).
      const small = join(dir.path, "small.vdi");
      await qemuImg("create", "-q", "-f", "vdi", small, "1M");
      await Deno.writeFile(
        small,
        setU32(await Deno.readFile(small), 0x180, 1000, true),
      );
      assert.strictEqual(await assertCheckAsQemu(small), 2);
      const r = await checkImage(small);
      assert.strictEqual(r.corruptions, 999);
    });
  },
);

qemuTest("VDI: refusals are one line naming the field", async () => {
  await using dir = await tempDir();
  const raw = await sourceDisk(dir.path, 2 * MiB);
  const vdi = join(dir.path, "a.vdi");
  await qemuConvert("-O", "vdi", raw, vdi);
  const good = await Deno.readFile(vdi);
  const cases: [string, Uint8Array, RegExp, string][] = [
    [
      "version",
      setU32(good, 0x44, 0x00010000, true),
      /version 1\.0 is not supported/,
      "UNSUPPORTED_VERSION",
    ],
    [
      "differencing",
      setU32(setU32(good, 0x4c, 4, true), 0x1b8, 1, true),
      /image type 4 \(differencing\) is not supported/,
      "UNSUPPORTED_FEATURE",
    ],
    [
      "parent",
      setU32(good, 0x1b8, 1, true),
      /uuid_parent is not null/,
      "UNSUPPORTED_FEATURE",
    ],
    [
      "block size",
      setU32(good, 0x178, 4096, true),
      /block size 4096 is not 1048576/,
      "UNSUPPORTED_FEATURE",
    ],
    [
      "disk size",
      setU64(good, 0x170, 1n << 40n, true),
      /disk_size 1099511627776 is larger than the 2 blocks/,
      "OUT_OF_RANGE",
    ],
    [
      "truncated block",
      good.subarray(0, good.length - 4096),
      /block 1 \(guest offset 0x1[0-9a-f]+\) maps to host offset 0x[0-9a-f]+, past the end of the file/,
      "TRUNCATED",
    ],
    [
      "truncated header",
      good.subarray(0, 300),
      /Cannot read VDI header of \S+: 512 bytes at 0x0 run past the end/,
      "TRUNCATED",
    ],
  ];
  for (const [what, bytes, message, code] of cases) {
    const path = join(dir.path, `bad-${what.replace(" ", "-")}.vdi`);
    await Deno.writeFile(path, bytes);
    await assert.rejects(
      async () => {
        await using image = await openImage(path, { format: "vdi" });
        await image.readAt(0, image.virtualSize);
      },
      (err: unknown) => {
        assert.ok(err instanceof Qcow2Error, `${what}: ${err}`);
        assert.strictEqual(err.code, code, what);
        assert.match(err.message, message, what);
        return true;
      },
    );
    assertOneLineError(
      await runCli(["convert", "-O", "raw", path, join(dir.path, "x.raw")]),
      message,
    );
  }
});

qemuTest(
  "VDI: 200 hostile mutations each end in one line, in bounded time and memory",
  async () => {
    await using dir = await tempDir();
    const raw = await sourceDisk(dir.path, 3 * MiB + 512);
    const vdi = join(dir.path, "base.vdi");
    await qemuConvert("-O", "vdi", raw, vdi);
    const base = await Deno.readFile(vdi);
    const bmapAt = new DataView(base.buffer).getUint32(0x154, true);
    const headerU32 = [0x44, 0x4c, 0x154, 0x158, 0x168, 0x178, 0x180, 0x184];
    const mutations: Mutation[] = [
      (b, r) => b.subarray(0, Math.floor(r() * b.length)),
      (b, r) =>
        setU32(
          b,
          headerU32[Math.floor(r() * headerU32.length)],
          nastyU32(r),
          true,
        ),
      (b, r) => setU64(b, 0x170, nastyU64(r), true),
      (b, r) => setU32(b, bmapAt + 4 * Math.floor(r() * 5), nastyU32(r), true),
      (b, r) => {
        const out = b.slice();
        out[Math.floor(r() * 512)] ^= 1 << Math.floor(r() * 8);
        return out;
      },
    ];
    const summary = await hostileLoop(base, "vdi", mutations, 200, 24);
    assert.ok(
      summary.refused > 0 && summary.opened > 0,
      JSON.stringify(summary),
    );
    assert.ok(summary.codes.has("TRUNCATED"), [...summary.codes].join());
  },
);
