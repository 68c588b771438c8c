// VMDK images made by qemu-img, read by qcow2pipe: every subformat qemu-img
// writes, a child naming its parent, and hostile images.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuIo, qemuTest, run, tempDir } from "../_qemu.ts";
import { SEVEN_ZIP, withTool } from "../_tools.ts";
import { assertCheckAsQemu } from "./_oracle.ts";
import { checkImage } from "../../lib/tools/check.ts";
import { BytesSource } from "../../lib/io/source.ts";
import { assertOneLineError, runCli } from "../writer/_cli.ts";
import { serveFiles } from "../streams/_server.ts";
import { openImage } from "../../mod.ts";
import { Qcow2Error } from "../../lib/format/errors.ts";
import { prng } from "../../lib/_prng.ts";

const SUBFORMATS = [
  "monolithicSparse",
  "streamOptimized",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
] as const;

/** Formats 7-Zip reads (it refuses streamOptimized: "Unsupported method"). */
const SEVEN_ZIP_READS = new Set<string>([
  "monolithicSparse",
  "monolithicFlat",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
]);

/**
 * A 6 MiB raw disk with data, zeros and holes: a patterned first MiB, a
 * run of 0xab not on a grain boundary, a random 4 KiB block, a short tail
 * before a trailing hole.
 */
async function writeDisk(path: string, seed = 1): Promise<void> {
  const disk = new Uint8Array(6 << 20);
  for (let i = 0; i < 1 << 20; i++) disk[i] = (i * 7 + 3) & 255;
  disk.fill(0xab, 2 << 20, (2 << 20) + 100_000);
  const random = prng(seed);
  for (let i = 0; i < 4096; i++) {
    disk[(3 << 20) + 4096 + i] = Math.floor(random() * 256);
  }
  disk.fill(0x11, (5 << 20) + 200_000, (5 << 20) + 200_700);
  const file = await Deno.open(path, {
    write: true,
    create: true,
    truncate: true,
  });
  try {
    // The zero stretches stay holes in the file.
    for (
      const [from, to] of [[0, 1 << 20], [2 << 20, 3 << 20], [
        3 << 20,
        (3 << 20) + 8192,
      ], [5 << 20, (5 << 20) + 262144]]
    ) {
      await file.seek(from, Deno.SeekMode.Start);
      await file.write(disk.subarray(from, to));
    }
    await file.truncate(disk.length);
  } finally {
    file.close();
  }
}

/**
 * A streamOptimized image as VMware writes it: the header's gd_offset says
 * GD_AT_END, and a footer (footer marker, header copy with the real
 * gd_offset, end-of-stream marker) ends the file. qemu-img writes the real
 * offset in the header and no footer.
 */
function withFooter(stream: Uint8Array): Uint8Array {
  const out = new Uint8Array(stream.length + 1536);
  out.set(stream);
  const view = new DataView(out.buffer);
  const end = stream.length;
  view.setBigUint64(end, 1n, true); // footer marker: one sector, size 0
  view.setUint32(end + 12, 3, true); // MARKER_FOOTER
  out.set(stream.subarray(0, 512), end + 512);
  view.setBigUint64(56, 0xffffffffffffffffn, true); // GD_AT_END
  return out;
}

/** `qemu-img map --output=json` entries, or ours. */
interface MapEntry {
  start: number;
  length: number;
  depth: number;
  zero: boolean;
  data: boolean;
}

/** Runs of (depth, zero, data), adjacent runs that agree merged. */
function coverage(entries: MapEntry[]): string[] {
  const runs: MapEntry[] = [];
  for (const e of entries) {
    const last = runs.at(-1);
    if (
      last && last.start + last.length === e.start &&
      last.depth === e.depth && last.zero === e.zero && last.data === e.data
    ) {
      last.length += e.length;
    } else runs.push({ ...e });
  }
  return runs.map((r) =>
    `${r.start}+${r.length} depth ${r.depth} ${r.data ? "data" : "-"} ${
      r.zero ? "zero" : "-"
    }`
  );
}

/** `qemu-img convert -O vmdk -o subformat=SUBFORMAT DISK IMAGE`. */
async function toVmdk(
  disk: string,
  subformat: string,
  image: string,
): Promise<void> {
  await qemuImg(
    "convert",
    "-O",
    "vmdk",
    "-o",
    `subformat=${subformat}`,
    disk,
    image,
  );
}

async function cli(args: string[]): Promise<string> {
  const r = await runCli(args);
  assert.strictEqual(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
  return new TextDecoder().decode(r.stdout);
}

/** The info lines both tools print alike for every VMDK. */
function infoLines(text: string): string[] {
  return text.split("\n").filter((l) => /^(file format|virtual size):/.test(l));
}

/** The disk size line. */
function diskSize(text: string): string | undefined {
  return text.split("\n").find((l) => l.startsWith("disk size:"));
}

/**
 * Asserts `info` (text and JSON: disk size with the extent files added
 * up, cluster_size, the format-specific block and its extents) and `check`
 * say what qemu-img's say of `image`.
 */
async function assertDescribesAsQemu(image: string, label: string) {
  const ours = await cli(["info", image]);
  const theirs = await qemuImg("info", image);
  assert.deepStrictEqual(infoLines(ours), infoLines(theirs), label);
  assert.strictEqual(ours, theirs, label);
  assert.strictEqual(
    await cli(["info", "--output=json", image]),
    await qemuImg("info", "--output=json", image),
    label,
  );
  assert.strictEqual(await assertCheckAsQemu(image), 0, label);
  return { ours, theirs };
}

/** Asserts that our reading of `image` is qemu-img's, through every command. */
async function assertReadsAsQemu(dir: string, image: string, label: string) {
  const want = join(dir, `${label}.qemu.raw`);
  await qemuImg("convert", "-O", "raw", image, want);
  const got = join(dir, `${label}.ours.raw`);
  await cli(["convert", "-q", "-O", "raw", image, got]);
  assert.ok(
    await sameFiles(got, want),
    `${label}: convert -O raw differs from qemu-img's`,
  );
  const qcow2 = join(dir, `${label}.qcow2`);
  await cli(["convert", "-q", "-O", "qcow2", image, qcow2]);
  await qemuImg("compare", "-q", image, qcow2);
  await qemuImg("check", "-q", qcow2);
  const { ours, theirs } = await assertDescribesAsQemu(image, label);
  const oursMap = JSON.parse(await cli(["map", "--output=json", image]));
  const theirMap = JSON.parse(await qemuImg("map", "--output=json", image));
  assert.deepStrictEqual(coverage(oursMap), coverage(theirMap), label);
  return { want, ours, theirs };
}

async function sameFiles(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

for (const subformat of SUBFORMATS) {
  qemuTest(
    `vmdk ${subformat}: convert, info and map read it as qemu-img does; 7-Zip agrees`,
    async () => {
      await using dir = await tempDir();
      const disk = join(dir.path, "disk.raw");
      await writeDisk(disk);
      const image = join(dir.path, "d.vmdk");
      await toVmdk(disk, subformat, image);
      const { want, ours, theirs } = await assertReadsAsQemu(
        dir.path,
        image,
        subformat,
      );
      assert.ok(await sameFiles(want, disk));
      // The disk size adds up the extent files, as qemu-img's does.
      assert.strictEqual(diskSize(ours), diskSize(theirs));
      assert.match(ours, new RegExp(`create type: ${subformat}`));
      if (SEVEN_ZIP_READS.has(subformat)) {
        await withTool(SEVEN_ZIP, async () => {
          const out = join(dir.path, "7z");
          await run("7zz", ["t", image]);
          await run("7zz", ["x", "-y", `-o${out}`, image]);
          assert.ok(await sameFiles(join(out, "d.img"), want));
        });
      }
    },
  );
}

qemuTest(
  "vmdk vmfs and multi-extent descriptors: info (disk size of every extent file, cluster_size, extents) and check as qemu-img's",
  async (t) => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    await t.step("vmfs", async () => {
      const flat = join(dir.path, "f.vmdk");
      await toVmdk(disk, "monolithicFlat", flat);
      // A vmfs descriptor names its one VMFS extent without an offset.
      const vmfs = join(dir.path, "vmfs.vmdk");
      await Deno.writeTextFile(
        vmfs,
        (await Deno.readTextFile(flat))
          .replace('createType="monolithicFlat"', 'createType="vmfs"')
          .replace(/ FLAT ("f-flat\.vmdk") 0/, " VMFS $1"),
      );
      const { want, ours } = await assertReadsAsQemu(dir.path, vmfs, "vmfs");
      assert.ok(await sameFiles(want, disk));
      assert.match(ours, /create type: vmfs\n[^]*format: VMFS/);
    });
    // 5 GiB: three extents of at most 2 GiB, data across the first seam.
    for (const subformat of ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"]) {
      await t.step(subformat, async () => {
        const image = join(dir.path, `${subformat}.vmdk`);
        await qemuImg(
          "create",
          "-q",
          "-f",
          "vmdk",
          "-o",
          `subformat=${subformat}`,
          image,
          "5G",
        );
        await qemuIo(image, ["write -P 7 2047M 4M"], "vmdk");
        // Described, not read: a conversion of 5 GiB would take minutes.
        const { ours } = await assertDescribesAsQemu(image, subformat);
        assert.strictEqual(ours.match(/^ {8}\[\d\]:$/gm)?.length, 3);
      });
    }
  },
);

qemuTest(
  "vmdk check: grains and flat extents past the end of their file, as qemu-img check reports them",
  async (t) => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    const make = async (subformat: string, name: string) => {
      const image = join(dir.path, `${name}.vmdk`);
      await toVmdk(disk, subformat, image);
      return image;
    };
    /** Sets entry `index` of grain table `table` of a sparse file. */
    const setGte = async (
      file: string,
      table: number,
      index: number,
      value: (size: number) => number,
    ) => {
      const bytes = await Deno.readFile(file);
      const view = new DataView(bytes.buffer);
      const gd = Number(view.getBigUint64(56, true)) * 512;
      const gt = view.getUint32(gd + 4 * table, true) * 512;
      assert.ok(gt > 0, `${file}: grain table ${table} is allocated`);
      view.setUint32(gt + 4 * index, value(bytes.length), true);
      await Deno.writeFile(file, bytes);
    };
    const past = (size: number) => Math.ceil(size / 512) + 3;
    const cases: [string, () => Promise<string>, number][] = [
      ["monolithicSparse grain past the end", async () => {
        const image = await make("monolithicSparse", "ms");
        await setGte(image, 0, 20, past);
        return image;
      }, 1],
      [
        "monolithicSparse grain table past the end (read as zeros)",
        async () => {
          const image = await make("monolithicSparse", "gt");
          const bytes = await Deno.readFile(image);
          const view = new DataView(bytes.buffer);
          const gd = Number(view.getBigUint64(56, true)) * 512;
          view.setUint32(gd, Math.ceil(bytes.length / 512) + 100, true);
          await Deno.writeFile(image, bytes);
          return image;
        },
        0,
      ],
      ["streamOptimized grain past the end", async () => {
        const image = await make("streamOptimized", "so");
        await setGte(image, 0, 5, past);
        return image;
      }, 1],
      ["monolithicFlat extent file emptied", async () => {
        const image = await make("monolithicFlat", "mf");
        await Deno.truncate(join(dir.path, "mf-flat.vmdk"), 0);
        return image;
      }, 1],
      ["monolithicFlat extent starting past its file", async () => {
        const image = await make("monolithicFlat", "mo");
        await Deno.writeTextFile(
          image,
          (await Deno.readTextFile(image)).replace(
            /( FLAT "mo-flat\.vmdk") 0/,
            "$1 99999",
          ),
        );
        return image;
      }, 1],
      [
        "twoGbMaxExtentSparse grain of the second extent past its end",
        async () => {
          const image = join(dir.path, "two.vmdk");
          await qemuImg(
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            image,
            "5G",
          );
          await qemuIo(image, ["write -P 7 2047M 4M"], "vmdk");
          // Its second table, so that the first one (not allocated) is stepped over.
          const second = join(dir.path, "two-s002.vmdk");
          const bytes = await Deno.readFile(second);
          const view = new DataView(bytes.buffer);
          const gd = Number(view.getBigUint64(56, true)) * 512;
          view.setUint32(gd + 4 * 7, view.getUint32(gd, true), true);
          view.setUint32(gd, 0, true);
          await Deno.writeFile(second, bytes);
          await setGte(second, 7, 9, past);
          return image;
        },
        1,
      ],
    ];
    for (const [name, make, status] of cases) {
      await t.step(name, async () => {
        assert.strictEqual(await assertCheckAsQemu(await make()), status);
      });
    }
  },
);

qemuTest(
  "vmdk streamOptimized with GD_AT_END: the grain directory is found through the footer",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    const image = join(dir.path, "s.vmdk");
    await toVmdk(disk, "streamOptimized", image);
    const footed = join(dir.path, "footed.vmdk");
    await Deno.writeFile(footed, withFooter(await Deno.readFile(image)));
    const { want } = await assertReadsAsQemu(dir.path, footed, "footed");
    assert.ok(await sameFiles(want, disk));
  },
);

qemuTest(
  "vmdk: a child naming its parent (parentFileNameHint) reads through it, zeroed grains as zeros",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    const base = join(dir.path, "base.vmdk");
    await qemuImg("convert", "-O", "vmdk", disk, base);
    const child = join(dir.path, "child.vmdk");
    await qemuImg(
      "create",
      "-q",
      "-f",
      "vmdk",
      "-o",
      "zeroed_grain=on",
      "-b",
      "base.vmdk",
      "-F",
      "vmdk",
      child,
    );
    await qemuIo(child, [
      "write -P 0x55 1M 128k",
      "write -z 0 64k",
      "write -z 2M 128k",
      "write -P 0x66 5000k 4k",
    ], "vmdk");
    const { ours } = await assertReadsAsQemu(dir.path, child, "child");
    assert.match(ours, /backing file: base\.vmdk/);
    assert.match(ours, /backing file format: vmdk/);
    // The parent is a reference: a probed child leaves its directory only
    // when -f vmdk is given.
    const moved = join(dir.path, "sub");
    await Deno.mkdir(moved);
    const outside = join(moved, "child.vmdk");
    // The embedded descriptor (sectors 1 to 20), its hint made absolute.
    const bytes = await Deno.readFile(child);
    const area = bytes.subarray(512, 512 + 20 * 512);
    const text = new TextDecoder().decode(area).replace(/\0+$/, "");
    const edited = new TextEncoder().encode(
      text.replace(
        'parentFileNameHint="base.vmdk"',
        `parentFileNameHint="${base}"`,
      ),
    );
    area.fill(0);
    area.set(edited);
    await Deno.writeFile(outside, bytes);
    assertOneLineError(
      await runCli(["convert", "-O", "raw", outside, join(dir.path, "x.raw")]),
      /Cannot open backing file .*outside the directory.*-f vmdk/,
    );
    // A parent written after the child was made has a new CID: qemu-img
    // reads nothing through it, and we refuse it.
    await qemuIo(base, ["write -P 1 0 512"], "vmdk");
    await assert.rejects(
      qemuImg("convert", "-O", "raw", child, join(dir.path, "q.raw")),
    );
    assertOneLineError(
      await runCli(["convert", "-O", "raw", child, join(dir.path, "o.raw")]),
      /parentCID [0-9a-f]+ of .*child\.vmdk is not the CID [0-9a-f]+ of its parent/,
    );
  },
);

qemuTest(
  "vmdk: a descriptor's extent outside its directory is refused unless -f vmdk is given",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    const image = join(dir.path, "d.vmdk");
    await toVmdk(disk, "monolithicFlat", image);
    const sub = join(dir.path, "sub");
    await Deno.mkdir(sub);
    const desc = (await Deno.readTextFile(image)).replace(
      '"d-flat.vmdk"',
      `"${join(dir.path, "d-flat.vmdk")}"`,
    );
    await Deno.writeTextFile(join(sub, "d.vmdk"), desc);
    const out = join(dir.path, "out.raw");
    assertOneLineError(
      await runCli(["convert", "-O", "raw", join(sub, "d.vmdk"), out]),
      /Cannot open VMDK extent file ".*d-flat\.vmdk": it is outside the directory of .*-f vmdk/,
    );
    await cli([
      "convert",
      "-q",
      "-f",
      "vmdk",
      "-O",
      "raw",
      join(sub, "d.vmdk"),
      out,
    ]);
    assert.ok(await sameFiles(out, disk));
  },
);

qemuTest(
  "vmdk: streamOptimized and monolithicSparse from a pipe and over HTTP",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    for (const subformat of ["streamOptimized", "monolithicSparse"]) {
      const image = join(dir.path, `${subformat}.vmdk`);
      await toVmdk(disk, subformat, image);
      const out = join(dir.path, "out.raw");
      const piped = await runCli(["convert", "-q", "-O", "raw", "-", out], {
        stdin: await Deno.readFile(image),
      });
      assert.strictEqual(piped.code, 0, piped.stderr);
      assert.ok(await sameFiles(out, disk), `${subformat} from a pipe`);
      await Deno.remove(out);
      for (const ranges of [true, false]) {
        await using server = serveFiles({ "d.vmdk": image }, { ranges });
        await cli(["convert", "-q", "-O", "raw", server.url("d.vmdk"), out]);
        assert.ok(await sameFiles(out, disk), `${subformat} over HTTP`);
        await Deno.remove(out);
      }
    }
  },
);

qemuTest(
  "vmdk: createTypes and extents not read are refused in one line naming them",
  async () => {
    await using dir = await tempDir();
    const cases: Array<[string, RegExp]> = [
      [
        'version=1\nCID=1\nparentCID=ffffffff\ncreateType="fullDevice"\nRW 2048 FLAT "x" 0\n',
        /VMDK createType "fullDevice" of .* is not supported/,
      ],
      [
        'version=1\nCID=1\nparentCID=ffffffff\ncreateType="vmfsSparse"\nRW 2048 VMFSSPARSE "x-delta.vmdk"\n',
        /VMFSSPARSE extent "x-delta\.vmdk" of .* is not supported/,
      ],
      [
        'version=1\nCID=1\nparentCID=ffffffff\ncreateType="seSparse"\nRW 2048 SESPARSE "x-sesparse.vmdk"\n',
        /SESPARSE extent "x-sesparse\.vmdk" of .* is not supported/,
      ],
      [
        'version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "x"\n',
        /invalid extent line "RW 2048 FLAT "x""/,
      ],
      [
        'version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n',
        /names no RW extent/,
      ],
    ];
    for (const [i, [text, pattern]] of cases.entries()) {
      const path = join(dir.path, `c${i}.vmdk`);
      await Deno.writeTextFile(path, text);
      assertOneLineError(
        await runCli(["convert", "-O", "raw", path, join(dir.path, "o.raw")]),
        pattern,
      );
    }
  },
);

/** Reads everything an image holds, bounded: every extent, data up to 16 MiB. */
async function readAll(bytes: Uint8Array): Promise<void> {
  await using image = await openImage(bytes);
  let budget = 16 << 20;
  let extents = 0;
  for await (const e of image.extents()) {
    if (++extents > 100_000) break;
    if (e.kind === "data" || e.kind === "compressed") {
      const n = Math.min(e.length, budget);
      if (n > 0) await image.readAt(e.offset, n);
      budget -= n;
    }
  }
}

/** Hostile bytes must fail with a one-line Qcow2Error or read. */
async function assertContained(bytes: Uint8Array, what: string) {
  const started = performance.now();
  // A read, and a check (which reads grain tables as QEMU does).
  const check = async () => {
    const r = await checkImage(new BytesSource(bytes, "t.vmdk"), {
      format: "vmdk",
    });
    assert.ok([0, 1].includes(r.exitCode), `${what}: check ${r.exitCode}`);
  };
  for (const op of [() => readAll(bytes), check]) {
    try {
      await op();
    } catch (err) {
      if (!(err instanceof Qcow2Error)) {
        throw new Error(`${what}: ${(err as Error)?.stack ?? err}`);
      }
      assert.ok(!err.message.includes("\n"), `${what}: ${err.message}`);
      assert.match(err.message, /^Cannot /, what);
    }
  }
  assert.ok(performance.now() - started < 10_000, `${what}: too slow`);
}

function setU32(b: Uint8Array, at: number, v: number) {
  new DataView(b.buffer, b.byteOffset).setUint32(at, v, true);
}
function setU64(b: Uint8Array, at: number, v: bigint) {
  new DataView(b.buffer, b.byteOffset).setBigUint64(at, v, true);
}

qemuTest(
  "vmdk hostile: truncated files, tables past the end, huge counts and seeded mutations fail in one line",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await writeDisk(disk);
    const images: Record<string, Uint8Array> = {};
    for (const subformat of ["monolithicSparse", "streamOptimized"]) {
      const image = join(dir.path, `${subformat}.vmdk`);
      await toVmdk(disk, subformat, image);
      images[subformat] = await Deno.readFile(image);
    }
    const sparse = images.monolithicSparse;
    const stream = images.streamOptimized;
    const named: Array<[string, Uint8Array, RegExp]> = [];
    const edit = (base: Uint8Array, f: (b: Uint8Array) => void) => {
      const b = base.slice();
      f(b);
      return b;
    };
    named.push([
      "capacity past 2^53",
      edit(sparse, (b) => setU64(b, 12, 1n << 60n)),
      /capacity/,
    ]);
    named.push([
      "huge capacity: grain directory past the end",
      edit(sparse, (b) => setU64(b, 12, 1n << 40n)),
      /grain directory|grain_offset|capacity/,
    ]);
    named.push([
      "num_gtes_per_gt 0x10000",
      edit(sparse, (b) => setU32(b, 44, 0x10000)),
      /num_gtes_per_gt 65536 is out of range/,
    ]);
    named.push([
      "granularity 0",
      edit(sparse, (b) => setU64(b, 20, 0n)),
      /granularity 0 sectors/,
    ]);
    named.push([
      "grain directory past the end",
      edit(sparse, (b) => setU64(b, 56, 0xfffffffn)),
      /grain directory at .* past the end/,
    ]);
    named.push([
      "version 4",
      edit(sparse, (b) => setU32(b, 4, 4)),
      /VMDK version 4 is not supported/,
    ]);
    named.push([
      "truncated before the grains",
      sparse.slice(0, 4096),
      /truncated|past the end/,
    ]);
    const footed = withFooter(stream);
    named.push([
      "stream footer cut off",
      footed.slice(0, footed.length - 512),
      /invalid footer/,
    ]);
    named.push([
      "footer's gd_offset past the end",
      edit(footed, (b) => setU64(b, b.length - 1024 + 56, 0xfffffffn)),
      /grain directory at .* past the end/,
    ]);
    named.push([
      "compressed grain marker size 0",
      edit(stream, (b) => {
        // The first grain follows the header and descriptor sectors.
        const grainOffset = Number(
          new DataView(b.buffer).getBigUint64(64, true),
        ) * 512;
        setU32(b, grainOffset + 8, 0);
      }),
      /marker says 0 bytes/,
    ]);
    named.push([
      "compressed grain garbled",
      edit(stream, (b) => {
        const at = Number(new DataView(b.buffer).getBigUint64(64, true)) *
          512;
        b.fill(0x5a, at + 14, at + 200);
      }),
      /Cannot read guest offset 0x0/,
    ]);
    for (const [what, bytes, pattern] of named) {
      await assert.rejects(
        readAll(bytes),
        (err: unknown) =>
          err instanceof Qcow2Error && pattern.test(err.message) &&
          !err.message.includes("\n"),
        what,
      );
    }
    // Seeded mutations of the metadata an attacker controls: the header,
    // the embedded descriptor, the grain directory and tables, markers and
    // the footer.
    const random = prng(24);
    const int = (n: number) => Math.floor(random() * n);
    for (let i = 0; i < 200; i++) {
      const base = [sparse, stream, footed][i % 3];
      const b = base.slice();
      const metaEnd = Math.min(
        b.length,
        Number(new DataView(b.buffer).getBigUint64(64, true)) * 512 + 4096,
      );
      const flips = 1 + int(8);
      for (let f = 0; f < flips; f++) {
        const region = int(3);
        const at = region === 0
          ? int(512)
          : region === 1
          ? int(metaEnd)
          : b.length - 1 - int(Math.min(b.length, 2048));
        b[at] = int(256);
      }
      const cut = int(5) === 0 ? int(b.length) : b.length;
      await assertContained(b.subarray(0, cut), `mutation ${i}`);
    }
  },
);
