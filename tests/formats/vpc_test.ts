// VHD (QEMU's vpc) read as qemu-img reads it: fixed, dynamic (with and
// without force_size), creator applications that size the disk by
// current_size, and differencing images (built here from the spec, since
// qemu-img cannot create them), judged by qemu-img and 7-Zip.

import assert from "node:assert";
import { join } from "node:path";
import {
  qemuCheckClean,
  qemuImg,
  qemuIo,
  qemuTest,
  tempDir,
} from "../_qemu.ts";
import { SEVEN_ZIP, withTool } from "../_tools.ts";
import { cli } from "../tools/_helpers.ts";
import { runCli } from "../writer/_cli.ts";
import { assertCheckAsQemu } from "./_oracle.ts";
import { serveFiles } from "../streams/_server.ts";
import { openImage } from "../../lib/reader/open.ts";
import { Qcow2Error } from "../../lib/format/errors.ts";
import { prng } from "../../lib/_prng.ts";

const MiB = 1 << 20;

/** A raw disk with data, written zeros and holes, several patterns. */
async function makeDisk(dir: string): Promise<string> {
  const raw = join(dir, "disk.raw");
  await qemuImg("create", "-q", "-f", "raw", raw, "6M");
  await qemuIo(raw, [
    "write -P 0x11 0 1M",
    "write -P 0 1M 512k",
    "write -P 0x22 3200k 100k",
    "write -P 0x33 4607k 3k",
    "write -P 0x44 6140k 4k",
  ], "raw");
  return raw;
}

/** Sets a footer field and fixes its checksum, at offset 0 and at the end. */
async function patchFooters(
  path: string,
  edit: (footer: Uint8Array, view: DataView) => void,
): Promise<void> {
  const bytes = await Deno.readFile(path);
  const places = [bytes.length - 512];
  if (new TextDecoder().decode(bytes.subarray(0, 8)) === "conectix") {
    places.push(0);
  }
  for (const at of places) {
    const footer = bytes.subarray(at, at + 512);
    const view = new DataView(bytes.buffer, at, 512);
    edit(footer, view);
    fixChecksum(footer, 64);
  }
  await Deno.writeFile(path, bytes);
}

function fixChecksum(bytes: Uint8Array, at: number): void {
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(at, 0);
  let sum = 0;
  for (const b of bytes) sum += b;
  new DataView(bytes.buffer, bytes.byteOffset).setUint32(at, ~sum >>> 0);
}

/** `[start, end, class]` runs of a `map --output=json`, merged. */
function coverage(json: string): [number, number, string][] {
  const out: [number, number, string][] = [];
  for (const e of JSON.parse(json)) {
    const cls = `data=${e.data} zero=${e.zero}`;
    const last = out.at(-1);
    if (last && last[1] === e.start && last[2] === cls) {
      last[1] += e.length;
    } else out.push([e.start, e.start + e.length, cls]);
  }
  return out;
}

async function ours(args: string[]): Promise<string> {
  const r = await cli(args);
  assert.strictEqual(r.code, 0, `cli ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** The format, virtual size and disk size lines of an `info`. */
function sizeLines(text: string): string[] {
  return text.split("\n").filter((l) =>
    /^(file format|virtual size|disk size|cluster_size):/.test(l)
  );
}

/**
 * Asserts `info`'s size lines equal qemu-img's, once the file's blocks are
 * allocated (delayed allocation changes the disk size under a reader).
 */
async function assertInfoSizes(vhd: string, name: string): Promise<void> {
  using file = await Deno.open(vhd, { read: true, write: true });
  await file.sync();
  const text = await ours(["info", "-f", "vpc", vhd]);
  const theirs = await qemuImg("info", "-f", "vpc", vhd);
  assert.deepStrictEqual(sizeLines(text), sizeLines(theirs), `${name}: info`);
  // All of it, and the JSON.
  assert.strictEqual(text, theirs, `${name}: info`);
  assert.strictEqual(
    await ours(["info", "-f", "vpc", "--output=json", vhd]),
    await qemuImg("info", "-f", "vpc", "--output=json", vhd),
    `${name}: info JSON`,
  );
}

/** Checks a VHD against qemu-img: raw bytes, qcow2, info, map. */
async function judge(dir: string, vhd: string, name: string): Promise<void> {
  const expected = join(dir, `${name}.qemu.raw`);
  await qemuImg("convert", "-f", "vpc", "-O", "raw", vhd, expected);
  // (a) raw expansion, byte for byte.
  const raw = join(dir, `${name}.ours.raw`);
  await ours(["convert", "-f", "vpc", "-O", "raw", vhd, raw]);
  assert.deepStrictEqual(
    await Deno.readFile(raw),
    await Deno.readFile(expected),
    `${name}: raw`,
  );
  // (b) qcow2, judged by qemu-img compare and check.
  const qcow2 = join(dir, `${name}.qcow2`);
  await ours(["convert", "-f", "vpc", "-O", "qcow2", vhd, qcow2]);
  await qemuImg("compare", "-f", "vpc", "-F", "qcow2", vhd, qcow2);
  await qemuCheckClean(qcow2);
  // (c) info: format, virtual size, disk size (and cluster_size); check:
  // "This image format does not support checks" (63), as qemu-img says.
  await assertInfoSizes(vhd, name);
  assert.strictEqual(await assertCheckAsQemu(vhd, { format: "vpc" }), 63);
  // (d) map: the same data and zero coverage.
  assert.deepStrictEqual(
    coverage(await ours(["map", "-f", "vpc", "--output=json", vhd])),
    coverage(await qemuImg("map", "-f", "vpc", "--output=json", vhd)),
    `${name}: map`,
  );
}

/** 7-Zip's reading of a VHD: the bytes it extracts. */
async function sevenZip(dir: string, vhd: string): Promise<Uint8Array> {
  const out = join(dir, `7z-${crypto.randomUUID()}`);
  const run = async (args: string[]) => {
    const r = await new Deno.Command("7zz", {
      args,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(r.stdout) +
      new TextDecoder().decode(r.stderr);
    assert.ok(r.success, `7zz ${args.join(" ")}: ${text}`);
    assert.match(text, /Everything is Ok/);
  };
  await run(["t", vhd]);
  await run(["x", "-y", `-o${out}`, vhd]);
  const [file] = await Array.fromAsync(Deno.readDir(out));
  return await Deno.readFile(join(out, file.name));
}

qemuTest(
  "vpc: fixed and dynamic VHDs read as qemu-img reads them (raw, qcow2, info, map, 7-Zip)",
  async () => {
    await using dir = await tempDir();
    const raw = await makeDisk(dir.path);
    const cases: [string, string[]][] = [
      ["fixed", ["-o", "subformat=fixed"]],
      ["dynamic", ["-o", "subformat=dynamic"]],
      ["fixed-force", ["-o", "subformat=fixed,force_size=on"]],
      ["dynamic-force", ["-o", "subformat=dynamic,force_size=on"]],
    ];
    for (const [name, opts] of cases) {
      const vhd = join(dir.path, `${name}.vhd`);
      await qemuImg("convert", "-f", "raw", "-O", "vpc", ...opts, raw, vhd);
      await judge(dir.path, vhd, name);
      await withTool(SEVEN_ZIP, async () => {
        const extracted = await sevenZip(dir.path, vhd);
        const mine = await Deno.readFile(join(dir.path, `${name}.ours.raw`));
        // 7-Zip sizes the disk by current_size; qemu-img may use the CHS
        // geometry: the bytes they share are the same.
        const n = Math.min(extracted.length, mine.length);
        assert.deepStrictEqual(mine.subarray(0, n), extracted.subarray(0, n));
      });
    }
  },
);

qemuTest(
  "vpc: the virtual size is CHS or current_size by the creator application, as qemu-img decides",
  async () => {
    await using dir = await tempDir();
    const raw = await makeDisk(dir.path);
    for (const sub of ["fixed", "dynamic"]) {
      const made = join(dir.path, `${sub}.vhd`);
      await qemuImg(
        "convert",
        "-O",
        "vpc",
        "-o",
        `subformat=${sub}`,
        raw,
        made,
      );
      const bytes = await Deno.readFile(made);
      // current_size a little below the CHS size, so the two answers differ.
      for (
        const app of ["win ", "d2v ", "qem2", "CTXS", "tap\0", "vpc ", "qemu"]
      ) {
        const name = `${sub}-${app.replace("\0", "").trim()}`;
        const vhd = join(dir.path, `${name}.vhd`);
        await Deno.writeFile(vhd, bytes);
        await patchFooters(vhd, (footer, view) => {
          footer.set(new TextEncoder().encode(app), 28);
          view.setBigUint64(48, BigInt(6 * MiB - 4096));
        });
        if (app === "win " || app === "qemu") {
          await judge(dir.path, vhd, name);
        } else {
          await assertInfoSizes(vhd, name);
        }
        const info = JSON.parse(
          await ours(["info", "-f", "vpc", "--output=json", vhd]),
        );
        const chs = ["vpc ", "qemu"].includes(app);
        assert.strictEqual(
          info["virtual-size"],
          chs ? 6301696 : 6 * MiB - 4096,
          name,
        );
      }
      // The largest geometry means current_size, whoever made the image.
      const max = join(dir.path, `${sub}-maxchs.vhd`);
      await Deno.writeFile(max, bytes);
      await patchFooters(max, (footer, view) => {
        view.setUint16(56, 65535);
        footer[58] = 16;
        footer[59] = 255;
        view.setBigUint64(48, BigInt(6 * MiB - 4096));
      });
      await judge(dir.path, max, `${sub}-maxchs`);
    }
  },
);

qemuTest(
  "vpc: a VHD from a pipe and over HTTP (with and without Range support) converts as from a file",
  async () => {
    await using dir = await tempDir();
    const raw = await makeDisk(dir.path);
    const files: Record<string, Uint8Array> = {};
    for (const sub of ["fixed", "dynamic"]) {
      const vhd = join(dir.path, `${sub}.vhd`);
      await qemuImg("convert", "-O", "vpc", "-o", `subformat=${sub}`, raw, vhd);
      files[`${sub}.vhd`] = await Deno.readFile(vhd);
    }
    const expected = join(dir.path, "expected.raw");
    await qemuImg(
      "convert",
      "-f",
      "vpc",
      "-O",
      "raw",
      join(dir.path, "dynamic.vhd"),
      expected,
    );
    const want = await Deno.readFile(expected);
    const out = join(dir.path, "out.raw");
    // A fixed VHD probes as raw, in qemu-img too: it needs -f vpc.
    for (
      const [name, f] of [["dynamic.vhd", []], ["fixed.vhd", ["-f", "vpc"]]]
    ) {
      const piped = await runCli(["convert", ...f, "-O", "raw", "-", out], {
        stdin: files[name as string],
      });
      assert.strictEqual(piped.code, 0, piped.stderr);
      assert.deepStrictEqual(
        await Deno.readFile(out),
        want,
        `${name} from a pipe`,
      );
      for (const ranges of [true, false]) {
        await using server = serveFiles(files, { ranges });
        const r = await runCli([
          "convert",
          ...f,
          "-O",
          "raw",
          server.url(name as string),
          out,
        ]);
        assert.strictEqual(r.code, 0, r.stderr);
        assert.deepStrictEqual(
          await Deno.readFile(out),
          want,
          `${name} over HTTP (ranges: ${ranges})`,
        );
      }
    }
  },
);

// ---------------------------------------------------------------------------
// Differencing images, written from the spec.

const BLOCK = 2 * MiB;

interface DiffSpec {
  /** The parent's footer (its UUID, size and geometry are taken). */
  parent: Uint8Array;
  /** Runs this image holds: [guest offset, length, byte]; sector aligned. */
  runs: [number, number, number][];
  /** Parent locators: platform code and the text (encoded as the platform wants). */
  locators: [string, string][];
  /** The parent name in the header. */
  parentName: string;
  /** Parent UUID to name instead of the parent's. */
  parentUuid?: Uint8Array;
}

/** Writes a differencing VHD holding `runs` over `parent`. */
function differencing(spec: DiffSpec): Uint8Array {
  const pv = new DataView(spec.parent.buffer, spec.parent.byteOffset, 512);
  const size = Number(pv.getBigUint64(48));
  const entries = Math.ceil(size / BLOCK);
  const batBytes = Math.ceil(entries * 4 / 512) * 512;
  const locatorAt = 1536 + batBytes;
  const blocksAt = locatorAt + 512 * spec.locators.length;
  const used = [...new Set(spec.runs.map(([o]) => Math.floor(o / BLOCK)))]
    .sort((a, b) => a - b);
  const total = blocksAt + used.length * (512 + BLOCK) + 512;
  const file = new Uint8Array(total);
  const view = new DataView(file.buffer);
  // Footer: the parent's, as a differencing disk with a new UUID.
  const footer = spec.parent.slice(0, 512);
  const fv = new DataView(footer.buffer);
  fv.setBigUint64(16, 512n);
  fv.setUint32(60, 4);
  crypto.getRandomValues(footer.subarray(68, 84));
  fixChecksum(footer, 64);
  file.set(footer, 0);
  file.set(footer, total - 512);
  // Dynamic header.
  const h = file.subarray(512, 1536);
  const hv = new DataView(file.buffer, 512, 1024);
  h.set(new TextEncoder().encode("cxsparse"), 0);
  hv.setBigUint64(8, 0xffffffffffffffffn);
  hv.setBigUint64(16, 1536n);
  hv.setUint32(24, 0x00010000);
  hv.setUint32(28, entries);
  hv.setUint32(32, BLOCK);
  h.set(spec.parentUuid ?? spec.parent.subarray(68, 84), 40);
  hv.setUint32(56, pv.getUint32(24));
  for (let i = 0; i < spec.parentName.length; i++) {
    hv.setUint16(64 + 2 * i, spec.parentName.charCodeAt(i));
  }
  spec.locators.forEach(([platform, text], i) => {
    const data = platform.startsWith("W2")
      ? Uint8Array.from(
        text.split("").flatMap((
          c,
        ) => [c.charCodeAt(0) & 255, c.charCodeAt(0) >> 8]),
      )
      : new TextEncoder().encode(text);
    const at = locatorAt + 512 * i;
    file.set(data, at);
    const e = 576 + 24 * i;
    h.set(new TextEncoder().encode(platform), e);
    hv.setUint32(e + 4, 512);
    hv.setUint32(e + 8, data.length);
    hv.setBigUint64(e + 16, BigInt(at));
  });
  // BAT, bitmaps and data.
  for (let i = 0; i < entries; i++) view.setUint32(1536 + 4 * i, 0xffffffff);
  used.forEach((b, k) => {
    const at = blocksAt + k * (512 + BLOCK);
    view.setUint32(1536 + 4 * b, at / 512);
  });
  for (const [offset, length, byte] of spec.runs) {
    const b = Math.floor(offset / BLOCK);
    const at = blocksAt + used.indexOf(b) * (512 + BLOCK);
    const inBlock = offset - b * BLOCK;
    file.fill(byte, at + 512 + inBlock, at + 512 + inBlock + length);
    for (let s = inBlock / 512; s < (inBlock + length) / 512; s++) {
      file[at + (s >> 3)] |= 0x80 >> (s & 7);
    }
  }
  fixChecksum(h, 36);
  return file;
}

const DIFF_RUNS: [number, number, number][] = [
  [0, 4096, 0xa1], // over the parent's data
  [512 * 100, 512 * 33, 0], // zeros written over data
  [MiB + 512 * 7, 512, 0xa2], // one sector
  [2 * MiB + 512 * 3, 64 * 1024, 0xa3], // a block the parent has
  [4 * MiB + 4096, 8192, 0xa4], // a block the parent does not allocate
  [6 * MiB - 1024, 1024, 0xa5], // the last sectors
];

/** The same writes on a qcow2 overlay of the parent: qemu-img's answer. */
async function overlay(dir: string, parent: string): Promise<string> {
  const top = join(dir, "overlay.qcow2");
  await qemuImg("create", "-q", "-f", "qcow2", "-b", parent, "-F", "vpc", top);
  await qemuIo(
    top,
    DIFF_RUNS.map(([o, l, b]) => `write -P ${b} ${o} ${l}`),
  );
  return top;
}

qemuTest(
  "vpc: a differencing VHD reads through its parent as the same writes on a qcow2 overlay do (raw, qcow2, map, 7-Zip)",
  async () => {
    await using dir = await tempDir();
    const raw = await makeDisk(dir.path);
    const base = join(dir.path, "base.vhd");
    await qemuImg(
      "convert",
      "-O",
      "vpc",
      "-o",
      "subformat=dynamic,force_size=on",
      raw,
      base,
    );
    const parent = await Deno.readFile(base);
    const diff = join(dir.path, "diff.vhd");
    await Deno.writeFile(
      diff,
      differencing({
        parent,
        runs: DIFF_RUNS,
        locators: [["W2ku", "C:\\vms\\base.vhd"], ["W2ru", ".\\base.vhd"]],
        parentName: "C:\\vms\\base.vhd",
      }),
    );
    const top = await overlay(dir.path, base);
    const expected = join(dir.path, "expected.raw");
    await qemuImg("convert", "-O", "raw", top, expected);
    // (a) the raw bytes, probed (the parent is beside it) and named.
    for (const f of [[], ["-f", "vpc"]]) {
      const out = join(dir.path, "diff.raw");
      await ours(["convert", ...f, "-O", "raw", diff, out]);
      assert.deepStrictEqual(
        await Deno.readFile(out),
        await Deno.readFile(expected),
      );
    }
    // (b) qcow2, judged against the overlay.
    const q = join(dir.path, "diff.qcow2");
    await ours(["convert", "-O", "qcow2", diff, q]);
    await qemuImg("compare", "-F", "qcow2", "-f", "qcow2", top, q);
    await qemuCheckClean(q);
    // (c) info: the size, the block size and the parent followed.
    const info = await ours(["info", diff]);
    assert.match(info, /^file format: vpc$/m);
    assert.match(info, /^virtual size: 6 MiB \(6291456 bytes\)$/m);
    assert.match(
      info,
      /^backing file: base\.vhd \(actual path: .*\/base\.vhd\)$/m,
    );
    const chain = await ours(["info", "--backing-chain", diff]);
    assert.match(chain, /^image: .*\/base\.vhd$/m);
    // compare: ours and qemu-img's, against the overlay.
    assert.match(await ours(["compare", diff, top]), /Images are identical\./);
    await qemuImg("compare", "-f", "qcow2", "-F", "qcow2", top, q);
    // (d) map: where the overlay and its parent hold data and zeros.
    assert.deepStrictEqual(
      coverage(await ours(["map", "--output=json", diff])),
      coverage(await qemuImg("map", "--output=json", top)),
    );
    // (e) 7-Zip follows the parent too.
    await withTool(SEVEN_ZIP, async () => {
      assert.deepStrictEqual(
        await sevenZip(dir.path, diff),
        await Deno.readFile(expected),
      );
    });
  },
);

qemuTest(
  "vpc: a differencing VHD's parent goes through the reference gate (locators, UUID, containment)",
  async () => {
    await using dir = await tempDir();
    const raw = await makeDisk(dir.path);
    await Deno.mkdir(join(dir.path, "sub"));
    const base = join(dir.path, "base.vhd");
    await qemuImg(
      "convert",
      "-O",
      "vpc",
      "-o",
      "subformat=dynamic,force_size=on",
      raw,
      base,
    );
    const parent = await Deno.readFile(base);
    const write = async (name: string, spec: Partial<DiffSpec>) => {
      const path = join(dir.path, name);
      await Deno.writeFile(
        path,
        differencing({
          parent,
          runs: DIFF_RUNS,
          locators: [],
          parentName: "",
          ...spec,
        }),
      );
      return path;
    };
    const fails = async (path: string, re: RegExp, format?: "vpc") => {
      await assert.rejects(
        openImage(path, { format }),
        (e: unknown) =>
          e instanceof Qcow2Error && re.test(e.message) &&
          !e.message.includes("\n"),
      );
    };
    // A MacX URL, or the header's name alone.
    const mac = await write("mac.vhd", {
      locators: [["MacX", `file://localhost${base}`]],
    });
    await using m = await openImage(mac, { format: "vpc" });
    assert.strictEqual(m.backing?.name, base);
    const named = await write("named.vhd", { parentName: "base.vhd" });
    await using n = await openImage(named);
    assert.strictEqual(n.backing?.name, join(dir.path, "base.vhd"));
    // A relative locator that climbs out of a probed image's directory.
    const climbing = join(dir.path, "sub", "up.vhd");
    await Deno.rename(
      await write("up.vhd", { locators: [["W2ru", "..\\base.vhd"]] }),
      climbing,
    );
    await fails(
      climbing,
      /Cannot open backing file "\.\.\/base\.vhd": it is outside the directory/,
    );
    await using up = await openImage(climbing, { format: "vpc" });
    assert.ok(up.backing);
    // Only Windows absolute paths: nothing to follow here.
    const windows = await write("win.vhd", {
      locators: [["W2ku", "C:\\vms\\base.vhd"]],
      parentName: "C:\\vms\\base.vhd",
    });
    await fails(windows, /only by Windows absolute paths/, "vpc");
    // A parent that is not the disk named by UUID.
    const other = await write("other.vhd", {
      parentName: "base.vhd",
      parentUuid: new Uint8Array(16).fill(7),
    });
    await fails(
      other,
      /its UUID [0-9a-f]{32} is not the parent UUID 07070707/,
      "vpc",
    );
    // A missing parent, and a chain that loops.
    await fails(
      await write("missing.vhd", { parentName: "gone.vhd" }),
      /"[^"]*gone\.vhd": no such file/,
      "vpc",
    );
    const self = join(dir.path, "self.vhd");
    const looped = differencing({
      parent,
      runs: DIFF_RUNS,
      locators: [],
      parentName: "self.vhd",
    });
    looped.set(looped.subarray(68, 84), 512 + 40); // names itself by UUID too
    fixChecksum(looped.subarray(512, 1536), 36);
    await Deno.writeFile(self, looped);
    await fails(self, /loops back/, "vpc");
  },
);

// ---------------------------------------------------------------------------
// Hostile images.

/** Opens and reads an image a little: a Qcow2Error or nothing. */
async function tryRead(bytes: Uint8Array): Promise<string | undefined> {
  try {
    await using image = await openImage(bytes, { format: "vpc" });
    let n = 0;
    for await (const e of image.extents()) {
      if (++n > 64) break;
      const len = Math.min(e.length, 65536);
      await image.readAt(e.offset, len);
    }
    return undefined;
  } catch (err) {
    if (!(err instanceof Qcow2Error)) throw err;
    assert.ok(!err.message.includes("\n"), err.message);
    assert.match(err.message, /^Cannot [a-z]/);
    return err.message;
  }
}

qemuTest(
  "vpc: truncated, out-of-range and mutated images (dynamic and differencing) fail with one-line errors in bounded time",
  async () => {
    await using dir = await tempDir();
    const raw = await makeDisk(dir.path);
    const dyn = join(dir.path, "d.vhd");
    const fixed = join(dir.path, "f.vhd");
    await qemuImg("convert", "-O", "vpc", raw, dyn);
    await qemuImg("convert", "-O", "vpc", "-o", "subformat=fixed", raw, fixed);
    const d = await Deno.readFile(dyn);
    const f = await Deno.readFile(fixed);
    const expect = async (bytes: Uint8Array, re: RegExp) => {
      const msg = await tryRead(bytes);
      assert.ok(msg !== undefined && re.test(msg), `${msg} !~ ${re}`);
    };
    const withHeader = (edit: (v: DataView) => void) => {
      const b = d.slice();
      edit(new DataView(b.buffer, 512, 1024));
      fixChecksum(b.subarray(512, 1536), 36);
      return b;
    };
    await expect(d.slice(0, 100), /fewer than a VHD footer/);
    await expect(d.slice(0, d.length - 4096), /past the end of the file/);
    await expect(f.slice(0, f.length - 1), /no VHD footer/);
    await expect(
      f.slice(f.length - 1024),
      /virtual size \d+ runs past its footer/,
    );
    const badSum = d.slice();
    badSum[40] ^= 1;
    await expect(badSum, /checksum 0x[0-9a-f]{8} is not the footer's/);
    await expect(
      withHeader((v) => v.setUint32(28, 0x7fffffff)),
      /max_table_entries 2147483647 is out of range/,
    );
    await expect(
      withHeader((v) => v.setUint32(28, 1)),
      /too few for virtual size/,
    );
    await expect(
      withHeader((v) => v.setUint32(32, 3000)),
      /block size 3000 is not a power of two/,
    );
    await expect(
      withHeader((v) => v.setBigUint64(16, 1n << 40n)),
      /BAT at .* ends past the end/,
    );
    const batPast = d.slice();
    new DataView(batPast.buffer).setUint32(1536, 0x7fffffff);
    await expect(
      batPast,
      /BAT entry 0 puts block 0 at .* past the end of the file/,
    );
    const huge = d.slice();
    await Deno.writeFile(dyn, huge);
    await patchFooters(dyn, (footer, v) => {
      footer.set(new TextEncoder().encode("win "), 28);
      v.setBigUint64(48, 1n << 50n);
    });
    const big = await Deno.readFile(dyn);
    await expect(big, /larger than 2040 GiB/);
    // Seeded mutations, checksums fixed as an attacker would.
    const rand = prng(24);
    const started = performance.now();
    for (let i = 0; i < 200; i++) {
      const b = d.slice();
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) {
        // Mostly the footer, header and BAT; now and then a bitmap.
        const at = Math.floor(rand() * (i % 4 === 0 ? 3584 : 2560));
        b[at] = Math.floor(rand() * 256);
      }
      fixChecksum(b.subarray(0, 512), 64);
      fixChecksum(b.subarray(512, 1536), 36);
      await tryRead(b);
    }
    // A differencing image beside its parent: header, locators, bitmaps.
    const base = join(dir.path, "base.vhd");
    await qemuImg("convert", "-O", "vpc", "-o", "force_size=on", raw, base);
    const diff = differencing({
      parent: await Deno.readFile(base),
      runs: DIFF_RUNS,
      locators: [["W2ru", ".\\base.vhd"], ["MacX", `file://localhost${base}`]],
      parentName: "base.vhd",
    });
    const mutant = join(dir.path, "mutant.vhd");
    const metaEnd = 1536 + 512 * 3 + 512;
    for (let i = 0; i < 100; i++) {
      const b = diff.slice();
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) {
        b[Math.floor(rand() * metaEnd)] = Math.floor(rand() * 256);
      }
      fixChecksum(b.subarray(0, 512), 64);
      fixChecksum(b.subarray(512, 1536), 36);
      await Deno.writeFile(mutant, b);
      try {
        await using image = await openImage(mutant, { format: "vpc" });
        for await (const e of image.extents()) {
          await image.readAt(e.offset, Math.min(e.length, 65536));
        }
      } catch (err) {
        if (!(err instanceof Qcow2Error)) throw err;
        assert.ok(!err.message.includes("\n"), err.message);
      }
    }
    assert.ok(performance.now() - started < 60_000, "mutations took too long");
  },
);
