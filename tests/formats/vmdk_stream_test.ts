// streamOptimized VMDK and OVA (a tar of an .ovf and a streamOptimized
// .vmdk) from a pipe and over HTTP without Range: decoded in one pass,
// nothing spooled but what precedes the grains, judged by qemu-img; memory
// bounded; grains out of order within the window; hostile streams refused
// in one line.
import assert from "node:assert";
import { join } from "node:path";
import {
  has,
  qemuCheckClean,
  qemuCompareIdentical,
  qemuImg,
  tempDir,
  toolTest,
} from "../_qemu.ts";
import { serveFiles } from "../streams/_server.ts";
import { runCli } from "../writer/_cli.ts";
import { mixedRaw } from "../reader/_helpers.ts";
import {
  hostileLoop,
  type Mutation,
  nastyU32,
  nastyU64,
  qemuConvert,
  setU32,
  setU64,
} from "./_oracle.ts";
import { vmwareStream } from "./_stream_vmdk.ts";
import { assertBounded, peakKiB, sparseDisk } from "./_memory.ts";
import { openImageStream } from "../../lib/reader/stream_open.ts";
import { readSegments } from "../../lib/reader/segments.ts";

const MiB = 1024 * 1024;

const streamTest = toolTest(
  "qemu-img/tar",
  has("qemu-img") && has("tar"),
  "apt-get install qemu-utils tar",
);

const ONE_PASS = /is a streamOptimized vmdk: decoding it in one pass/;

/** Real data with zero runs; the size is not a multiple of the grain. */
function disk(): Uint8Array {
  return mixedRaw(9 * MiB + 7 * 512, 96 * 1024, 24);
}

/** qemu-img's streamOptimized VMDK of a raw file. */
async function streamOptimizedOf(
  raw: string,
  vmdk: string,
  ...extra: string[]
) {
  await qemuImg(
    "convert",
    ...extra,
    "-f",
    "raw",
    "-O",
    "vmdk",
    "-o",
    "subformat=streamOptimized",
    raw,
    vmdk,
  );
}

/** The guest bytes qemu-img reads from a VMDK file. */
async function qemuRaw(dir: string, vmdk: string): Promise<Uint8Array> {
  const out = join(dir, "qemu.raw");
  await qemuConvert("-f", "vmdk", "-O", "raw", vmdk, out);
  const bytes = await Deno.readFile(out);
  await Deno.remove(out);
  return bytes;
}

/** The images of one disk: qemu-img's (in order and -W), VMware's, OVAs. */
async function images(dir: string, raw: Uint8Array) {
  const rawPath = join(dir, "disk.raw");
  await Deno.writeFile(rawPath, raw);
  const made: Record<string, string> = {};
  const runs: [string, string[]][] = [["qemu.vmdk", []], [
    "qemu-w.vmdk",
    ["-W"],
  ]];
  for (const [name, extra] of runs) {
    made[name] = join(dir, name);
    await streamOptimizedOf(rawPath, made[name], ...extra);
  }
  made["vmware.vmdk"] = join(dir, "vmware.vmdk");
  await Deno.writeFile(made["vmware.vmdk"], vmwareStream(raw));
  // As ovftool packs them: the .ovf first, then the disk.
  await Deno.writeTextFile(
    join(dir, "appliance.ovf"),
    '<?xml version="1.0"?>\n<Envelope><References><File ovf:href="disk1.vmdk"/></References></Envelope>\n',
  );
  for (
    const [ova, from] of [["qemu.ova", "qemu.vmdk"], [
      "vmware.ova",
      "vmware.vmdk",
    ]]
  ) {
    await Deno.copyFile(made[from], join(dir, "disk1.vmdk"));
    const tar = await new Deno.Command("tar", {
      args: ["cf", ova, "appliance.ovf", "disk1.vmdk"],
      cwd: dir,
    }).output();
    assert.strictEqual(tar.code, 0, new TextDecoder().decode(tar.stderr));
    made[ova] = join(dir, ova);
  }
  await Deno.remove(join(dir, "disk1.vmdk"));
  return made;
}

streamTest(
  "streamOptimized VMDK and OVA convert in one pass from a pipe and over HTTP without Range, as qemu-img reads them",
  async () => {
    await using tmp = await tempDir();
    const dir = tmp.path;
    const raw = disk();
    const made = await images(dir, raw);
    // qemu-img reads each VMDK as the disk (the oracle for both layouts).
    for (const name of ["qemu.vmdk", "qemu-w.vmdk", "vmware.vmdk"]) {
      assert.deepStrictEqual(await qemuRaw(dir, made[name]), raw, name);
    }
    await using server = serveFiles(
      Object.fromEntries(Object.entries(made).map(([k, v]) => [k, v])),
      { ranges: false },
    );
    const outRaw = join(dir, "out.raw");
    const outQcow2 = join(dir, "out.qcow2");
    for (const name of Object.keys(made)) {
      for (const via of ["pipe", "http"]) {
        const input = via === "pipe" ? "-" : server.url(name);
        const stdin = via === "pipe"
          ? await Deno.readFile(made[name])
          : undefined;
        const r = await runCli(["convert", "-O", "raw", input, outRaw], {
          stdin,
        });
        assert.strictEqual(r.code, 0, `${name} ${via}: ${r.stderr}`);
        assert.match(r.stderr, ONE_PASS, `${name} ${via}`);
        assert.doesNotMatch(r.stderr, /spooled it whole/);
        assert.deepStrictEqual(
          await Deno.readFile(outRaw),
          raw,
          `${name} ${via}`,
        );
        const q = await runCli(["convert", "-q", input, outQcow2], { stdin });
        assert.strictEqual(q.code, 0, `${name} ${via} qcow2: ${q.stderr}`);
        await qemuCompareIdentical(outRaw, outQcow2);
        await qemuCheckClean(outQcow2);
      }
    }
    for (const name of Object.keys(made)) {
      assert.ok(server.requests.some((r) => r.includes(name)), name);
    }
  },
);

streamTest(
  "openImageStream() reads a streamOptimized VMDK in one pass, spooling only what precedes its grains",
  async () => {
    const raw = disk();
    for (const bytes of [vmwareStream(raw)]) {
      await using opened = await openImageStream(chunked(bytes));
      assert.strictEqual(opened.onePass, true);
      assert.ok(opened.spoolBytes <= 128 * 512, `spooled ${opened.spoolBytes}`);
      const out = new Uint8Array(raw.length);
      for await (const s of readSegments(opened.image)) {
        if (s.data) out.set(s.data, s.offset);
      }
      assert.deepStrictEqual(out, raw);
    }
  },
);

streamTest(
  "grains out of guest order by more than the window are refused in one line: convert from a file",
  async () => {
    const raw = new Uint8Array(48 * MiB);
    for (let at = 0; at < raw.length; at += MiB) {
      raw.fill(1 + (at >> 20), at, at + 4096);
    }
    // Within the window: read.
    const near = vmwareStream(raw, {
      order: (g) => [...g.slice(0, 8)].reverse().concat(g.slice(8)),
    });
    await using ok = await openImageStream(chunked(near));
    let n = 0;
    for await (const s of readSegments(ok.image)) n += s.length;
    assert.strictEqual(n, raw.length);
    // The first grain last: 47 MiB behind.
    const far = vmwareStream(raw, { order: (g) => [...g.slice(1), g[0]] });
    await using bad = await openImageStream(chunked(far));
    await assert.rejects(
      async () => {
        for await (const _ of readSegments(bad.image));
      },
      (err: Error) => {
        assert.match(
          err.message,
          /^Cannot read <stream> in one pass: the grain of guest offset 0x0 \(at 0x[0-9a-f]+\) comes after the grains up to guest offset 0x[0-9a-f]+, out of order by more than 32 MiB: convert it from a file$/,
        );
        return true;
      },
    );
  },
);

/** A stream of 64 KiB chunks, as a pipe gives them. */
function chunked(bytes: Uint8Array): ReadableStream<Uint8Array> {
  const chunks = [];
  for (let at = 0; at < bytes.length; at += 65536) {
    chunks.push(bytes.subarray(at, at + 65536));
  }
  return ReadableStream.from(chunks);
}

/** A sparse disk of `size` bytes, and its streamOptimized VMDK. */
async function sparseVmdk(dir: string, name: string, size: number) {
  const path = join(dir, `${name}.raw`);
  await sparseDisk(path, size, 5);
  await streamOptimizedOf(path, join(dir, `${name}.vmdk`));
  return path;
}

streamTest(
  "memory stays bounded: a 4 GiB streamOptimized VMDK from a pipe peaks as a 64 MiB one does",
  async () => {
    await using tmp = await tempDir();
    const dir = tmp.path;
    await sparseVmdk(dir, "small", 64 * MiB);
    const largeRaw = await sparseVmdk(dir, "large", 4096 * MiB);
    const small = await peakKiB(dir, "small.vmdk");
    const large = await peakKiB(dir, "large.vmdk");
    await qemuCompareIdentical(largeRaw, join(dir, "out.qcow2"));
    assertBounded(small, large, "4 GiB");
  },
);

/** Reads a stream through openImageStream to its end. */
async function streamAll(bytes: Uint8Array): Promise<void> {
  await using opened = await openImageStream(chunked(bytes), {
    format: "vmdk",
  });
  let at = 0;
  for await (const s of readSegments(opened.image, { chunkSize: MiB })) {
    assert.strictEqual(s.offset, at);
    at += s.length;
  }
  assert.strictEqual(at, opened.image.virtualSize);
}

/** Sector offsets of every marker of a stream, from its grains on. */
function markers(bytes: Uint8Array): number[] {
  const v = new DataView(bytes.buffer, bytes.byteOffset);
  const out: number[] = [];
  for (let at = 128 * 512; at + 16 <= bytes.length;) {
    out.push(at);
    const value = Number(v.getBigUint64(at, true));
    const size = v.getUint32(at + 8, true);
    if (size === 0 && v.getUint32(at + 12, true) === 0) break;
    at = size
      ? Math.ceil((at + 12 + size) / 512) * 512
      : at + 512 + value * 512;
  }
  return out;
}

streamTest(
  "hostile streamOptimized streams are refused in one line, in bounded time and memory",
  async () => {
    await using tmp = await tempDir();
    const raw = mixedRaw(2 * MiB + 512, 64 * 1024, 9);
    await Deno.writeFile(join(tmp.path, "d.raw"), raw);
    const qemuVmdk = join(tmp.path, "d.vmdk");
    await streamOptimizedOf(join(tmp.path, "d.raw"), qemuVmdk);
    const bases = [
      vmwareStream(raw, { granularity: 16 }),
      await Deno.readFile(qemuVmdk),
    ];
    for (const base of bases) {
      const at = markers(base);
      const pick = (rand: () => number) => at[Math.floor(rand() * at.length)];
      const mutations: Mutation[] = [
        (b, r) => setU64(b, pick(r), nastyU64(r), true), // lba / sectors
        (b, r) => setU32(b, pick(r) + 8, nastyU32(r), true), // size
        (b, r) => setU32(b, pick(r) + 12, nastyU32(r), true), // type
        (b, r) => b.subarray(0, Math.floor(r() * b.length)), // truncated
        (b, r) =>
          setU64(
            b,
            [12, 20, 28, 36, 56, 64][Math.floor(r() * 6)],
            nastyU64(r),
            true,
          ),
        (b, r) => setU32(b, 44, nastyU32(r), true),
        (b, r) => {
          const out = b.slice();
          out[Math.floor(r() * out.length)] ^= 1 << Math.floor(r() * 8);
          return out;
        },
        (b, r) => {
          // A marker repeated: an endless run of metadata, grains twice.
          const m = Math.min(pick(r), b.length);
          const len = 512 * (1 + Math.floor(r() * 8));
          const piece = b.subarray(m, m + len);
          const copies = Array.from({ length: 64 }, () => piece);
          const out = new Uint8Array(b.length + piece.length * 64);
          out.set(b.subarray(0, m));
          let o = m;
          for (const c of copies) {
            out.set(c, o);
            o += c.length;
          }
          out.set(b.subarray(m), o);
          return out;
        },
      ];
      const summary = await hostileLoop(
        base,
        "vmdk",
        mutations,
        300,
        24,
        (bytes) => [() => streamAll(bytes)],
      );
      assert.ok(summary.refused > 100, `refused ${summary.refused}`);
      assert.ok(summary.opened > 0, `opened ${summary.opened}`);
    }
  },
);

streamTest(
  "a streamOptimized VMDK naming a parent is not read in one pass: its parent is refused as a probed stream's",
  async () => {
    await using tmp = await tempDir();
    const raw = mixedRaw(MiB, 64 * 1024, 3);
    const bytes = vmwareStream(raw);
    const text = new TextDecoder().decode(bytes.subarray(512, 1024));
    const at = text.indexOf('createType="streamOptimized"');
    const hint = 'parentFileNameHint="base.vmdk"\n';
    const patched = bytes.slice();
    patched.set(
      new TextEncoder().encode(hint + text.slice(at)).subarray(0, 512 - at),
      512 + at,
    );
    const r = await runCli(
      ["convert", "-O", "raw", "-", join(tmp.path, "o.raw")],
      { stdin: patched },
    );
    assert.strictEqual(r.code, 1, r.stderr);
    assert.doesNotMatch(r.stderr, ONE_PASS);
    assert.strictEqual(
      r.stderr.trim(),
      'qcow2pipe: Cannot open backing file "base.vmdk": standard input is not in a directory that could hold it',
    );
  },
);

streamTest(
  "grain tables that disagree with where the grains are fail in one line naming both",
  async () => {
    await using tmp = await tempDir();
    const raw = mixedRaw(2 * MiB, 64 * 1024, 5);
    raw.fill(7, 0, 4096); // grain 0 holds data
    const read = async (bytes: Uint8Array) => {
      await using opened = await openImageStream(chunked(bytes));
      for await (const _ of readSegments(opened.image));
    };
    // VMware's layout: the table (after the grains) names a sector off by one.
    const vmware = vmwareStream(raw);
    const v = new DataView(vmware.buffer);
    const marks = markers(vmware);
    const table =
      marks.find((at) =>
        v.getUint32(at + 8, true) === 0 && v.getUint32(at + 12, true) === 1
      )! + 512;
    v.setUint32(table, v.getUint32(table, true) + 1, true);
    await assert.rejects(() => read(vmware), (err: Error) => {
      assert.match(
        err.message,
        /^Cannot read <stream>: grain table 0 at 0x[0-9a-f]+ maps \d+ grains of guest \[0x0, 0x200000\) \(the first at 0x[0-9a-f]+\), but the stream held \d+ there \(the first at 0x10000\)$/,
      );
      return true;
    });
    // QEMU's layout: the table before the grains names another place.
    await Deno.writeFile(join(tmp.path, "d.raw"), raw);
    const path = join(tmp.path, "d.vmdk");
    await streamOptimizedOf(join(tmp.path, "d.raw"), path);
    const qemu = await Deno.readFile(path);
    const q = new DataView(qemu.buffer);
    const gt = q.getUint32(Number(q.getBigUint64(56, true)) * 512, true) * 512;
    q.setUint32(gt, q.getUint32(gt, true) + 1, true);
    await assert.rejects(() => read(qemu), (err: Error) => {
      assert.match(
        err.message,
        /^Cannot read <stream>: the grain at 0x10000 is for guest offset 0x0, which the grain tables place at 0x10200$/,
      );
      return true;
    });
  },
);
