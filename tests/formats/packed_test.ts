// Compressed downloads and tar archives as sources: gzip, xz and zstd
// streams and tar archives of one disk (plain, compressed, GNU sparse),
// made with the system tools, converted from a file, a pipe and HTTP
// without Range, judged by qemu-img; then memory, --disk, and hostile
// archives.
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
import { assertBounded, peakKiB, sparseDisk } from "./_memory.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

const TOOLS = ["qemu-img", "gzip", "xz", "zstd", "tar", "bzip2"];
export const packedTest = toolTest(
  TOOLS.join("/"),
  TOOLS.every((t) => has(t)) && has("qemu-io"),
  "apt-get install qemu-utils gzip xz-utils zstd tar bzip2",
);

/** Runs `sh -c SCRIPT` in `cwd`. */
async function sh(
  script: string,
  cwd: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command("sh", {
    args: ["-c", script],
    cwd,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

async function ok(script: string, cwd: string): Promise<string> {
  const r = await sh(script, cwd);
  assert.strictEqual(r.code, 0, `${script}:\n${r.stdout}${r.stderr}`);
  return r.stderr;
}

const cli = `deno run -A ${CLI}`;

/**
 * A sparse raw disk of `size` bytes: runs of random data, of a pattern, of
 * written zeros, and holes, at seeded places.
 */
async function makeDisk(path: string, size: number, seed = 7): Promise<void> {
  const file = await Deno.open(path, { write: true, create: true });
  await file.truncate(size);
  let x = seed;
  const next = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
  const run = 192 * 1024;
  for (let at = 0; at + run * 2 <= size; at += run * 3) {
    const kind = next() % 4;
    if (kind === 3) continue; // a hole
    const bytes = new Uint8Array(run - 512 * (next() % 8));
    for (let i = 0; i < bytes.length && kind !== 2; i++) {
      bytes[i] = kind === 0 ? next() >>> 24 : 97 + (i % 26);
    }
    await file.seek(at + 512 * (next() % 16), Deno.SeekMode.Start);
    for (let w = 0; w < bytes.length;) w += await file.write(bytes.subarray(w));
  }
  file.close();
}

/** How each packed file is made from disk.raw (or disk.qcow2) in `dir`. */
const PACKINGS: { file: string; make: string; inner?: "qcow2" }[] = [
  { file: "disk.raw.gz", make: "gzip -c disk.raw > disk.raw.gz" },
  { file: "disk.raw.xz", make: "xz -T1 -c disk.raw > disk.raw.xz" },
  { file: "disk.raw.zst", make: "zstd -q -c disk.raw > disk.raw.zst" },
  {
    // As pzstd writes: a skippable frame first, then frames; one more
    // skippable frame between two frames (zstd -d itself is the judge).
    file: "framed.raw.zst",
    make:
      "printf '\\120\\052\\115\\030\\004\\000\\000\\000\\000\\000\\060\\000' > framed.raw.zst" +
      " && head -c 3145728 disk.raw | zstd -q -c >> framed.raw.zst" +
      " && printf '\\137\\052\\115\\030\\000\\000\\000\\000' >> framed.raw.zst" +
      " && tail -c +3145729 disk.raw | zstd -q --no-check -c >> framed.raw.zst" +
      " && zstd -q -d -c framed.raw.zst | cmp - disk.raw",
  },
  { file: "disk.tar", make: "tar cf disk.tar disk.raw" },
  { file: "disk.tar.gz", make: "tar czf disk.tar.gz disk.raw" },
  { file: "disk.tar.xz", make: "tar cJf disk.tar.xz disk.raw" },
  {
    // Google Compute Engine's way: an old GNU sparse member, gzip.
    file: "gce.tar.gz",
    make: "tar --format=oldgnu -Sczf gce.tar.gz disk.raw",
  },
  {
    file: "pax-sparse.tar",
    make: "tar --format=posix -Scf pax-sparse.tar disk.raw",
  },
  {
    file: "disk.qcow2.xz",
    make: "xz -T1 -c disk.qcow2 > disk.qcow2.xz",
    inner: "qcow2",
  },
  {
    file: "qcow2.tar.zst",
    make: "tar cf - disk.qcow2 | zstd -q -c > qcow2.tar.zst",
    inner: "qcow2",
  },
];

/** A directory with disk.raw (6 MiB), disk.qcow2 and every packing of them. */
async function packedDir(dir: string): Promise<void> {
  await makeDisk(join(dir, "disk.raw"), 6 << 20);
  await qemuImg(
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    join(dir, "disk.raw"),
    join(dir, "disk.qcow2"),
  );
  for (const p of PACKINGS) await ok(p.make, dir);
}

for (const p of PACKINGS) {
  packedTest(
    `convert reads ${p.file} from a file, a pipe and HTTP without Range`,
    async () => {
      await using tmp = await tempDir();
      const dir = tmp.path;
      await packedDir(dir);
      const raw = join(dir, "disk.raw");
      // From the file: qcow2, judged by qemu-img; raw, byte for byte.
      const notice = await ok(
        `${cli} convert --verbose ${p.file} file.qcow2`,
        dir,
      );
      assert.match(notice, /unpacking it as it is read/);
      assert.strictEqual(notice.trim().split("\n").length, p.inner ? 3 : 2);
      await qemuCompareIdentical(raw, join(dir, "file.qcow2"));
      await qemuCheckClean(join(dir, "file.qcow2"));
      await ok(`${cli} convert -q -O raw ${p.file} file.raw`, dir);
      await ok("cmp disk.raw file.raw", dir);
      // From a pipe.
      await ok(`cat ${p.file} | ${cli} convert -q - pipe.qcow2`, dir);
      await qemuCompareIdentical(raw, join(dir, "pipe.qcow2"));
      await qemuCheckClean(join(dir, "pipe.qcow2"));
      await ok(`cat ${p.file} | ${cli} convert -q -O raw - pipe.raw`, dir);
      await ok("cmp disk.raw pipe.raw", dir);
      // Over HTTP, from a server without Range support.
      await using server = serveFiles({ [p.file]: join(dir, p.file) }, {
        ranges: false,
      });
      await ok(`${cli} convert -q ${server.url(p.file)} http.qcow2`, dir);
      await qemuCompareIdentical(raw, join(dir, "http.qcow2"));
      await qemuCheckClean(join(dir, "http.qcow2"));
      // One request, answered whole: the body is unpacked as it comes.
      assert.strictEqual(server.requests.length, 1, `${server.requests}`);
    },
  );
}

packedTest("openImageStream unpacks a compressed qcow2 stream", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  await makeDisk(join(dir, "disk.raw"), 2 << 20);
  await qemuImg(
    "convert",
    "-O",
    "qcow2",
    join(dir, "disk.raw"),
    join(dir, "d.qcow2"),
  );
  await ok("gzip -c d.qcow2 > d.qcow2.gz", dir);
  const { openImageStream } = await import("../../mod.ts");
  const file = await Deno.open(join(dir, "d.qcow2.gz"));
  await using opened = await openImageStream(file.readable);
  const want = await Deno.readFile(join(dir, "disk.raw"));
  assert.deepStrictEqual(await opened.image.readAt(0, want.length), want);
});

packedTest(
  "--disk picks a member; two disks without it are refused",
  async () => {
    await using tmp = await tempDir();
    const dir = tmp.path;
    await makeDisk(join(dir, "a.raw"), 1 << 20, 1);
    await makeDisk(join(dir, "b.raw"), 2 << 20, 2);
    await ok(
      "printf '<ovf/>' > vm.ovf && tar czf two.tar.gz vm.ovf a.raw b.raw",
      dir,
    );
    await ok("tar czf one.tar.gz vm.ovf b.raw", dir);
    // The only disk (the OVF descriptor is not one).
    await ok(`${cli} convert -q one.tar.gz one.qcow2`, dir);
    await qemuCompareIdentical(join(dir, "b.raw"), join(dir, "one.qcow2"));
    // Named.
    await ok(`${cli} convert -q --disk b.raw two.tar.gz b.qcow2`, dir);
    await qemuCompareIdentical(join(dir, "b.raw"), join(dir, "b.qcow2"));
    await ok(
      `cat two.tar.gz | ${cli} convert -q --disk ./a.raw - a.qcow2`,
      dir,
    );
    await qemuCompareIdentical(join(dir, "a.raw"), join(dir, "a.qcow2"));
    // Two disks, none named: refused, nothing written.
    const two = await sh(`${cli} convert two.tar.gz x.qcow2`, dir);
    assert.strictEqual(two.code, 1);
    assert.match(
      lastLine(two.stderr),
      /^qcow2pipe: Cannot read tar archive two\.tar\.gz \(inside gzip-compressed\): it holds more than one disk \("a\.raw", "b\.raw"\): name one with --disk NAME \(at offset \d+\)$/,
    );
    assert.ok(!(await exists(join(dir, "x.qcow2"))));
    // A name that is not there.
    const missing = await sh(
      `${cli} convert --disk c.raw two.tar.gz x.qcow2`,
      dir,
    );
    assert.strictEqual(missing.code, 1);
    assert.match(
      lastLine(missing.stderr),
      /^qcow2pipe: Cannot read tar archive .*: no member named "c\.raw" \(it holds "vm\.ovf", "a\.raw", "b\.raw"\) \(at offset \d+\)$/,
    );
    // --disk on something that is no archive.
    const bare = await sh(`${cli} convert --disk a.raw a.raw x.qcow2`, dir);
    assert.strictEqual(bare.code, 1);
    assert.match(lastLine(bare.stderr), /is not a tar archive/);
  },
);

packedTest("bzip2 is named and refused in one line", async () => {
  await using tmp = await tempDir();
  await makeDisk(join(tmp.path, "disk.raw"), 1 << 20);
  await ok("bzip2 -k disk.raw", tmp.path);
  const r = await sh(`${cli} convert disk.raw.bz2 out.qcow2`, tmp.path);
  assert.strictEqual(r.code, 1);
  assert.strictEqual(
    r.stderr.trim(),
    "qcow2pipe: Cannot open image: disk.raw.bz2 is bzip2-compressed; qcow2pipe decompresses gzip, xz and zstd (bunzip2 -c it into qcow2pipe convert -)",
  );
});

packedTest("-f raw reads a compressed file's bytes as they are", async () => {
  await using tmp = await tempDir();
  await makeDisk(join(tmp.path, "disk.raw"), 1 << 20);
  await ok("gzip -c disk.raw > disk.gz && truncate -s 512 disk.gz", tmp.path);
  await ok(`${cli} convert -q -f raw -O raw disk.gz same.raw`, tmp.path);
  await ok("cmp disk.gz same.raw", tmp.path);
});

function lastLine(text: string): string {
  return text.trim().split("\n").at(-1) ?? "";
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

packedTest(
  "memory stays bounded: 1 GiB .tar.gz and .zst, 256 MiB .xz",
  async () => {
    await using tmp = await tempDir();
    const dir = tmp.path;
    await sparseDisk(join(dir, "small.raw"), 64 << 20);
    await sparseDisk(join(dir, "large.raw"), 1 << 30);
    await ok(
      "tar czf small.tar.gz small.raw && tar czf large.tar.gz large.raw && zstd -q -k small.raw large.raw",
      dir,
    );
    const cases: [string, string, string][] = [
      ["small.tar.gz", "large.tar.gz", "large.raw"],
      ["small.raw.zst", "large.raw.zst", "large.raw"],
    ];
    const check = async ([a, b, raw]: [string, string, string]) => {
      const small = await peakKiB(dir, a);
      const large = await peakKiB(dir, b);
      await qemuCompareIdentical(join(dir, raw), join(dir, "out.qcow2"));
      // The large input is 16 times the small one.
      assertBounded(small, large, b);
    };
    for (const c of cases) await check(c);
    await Deno.remove(join(dir, "large.raw"));
    await sparseDisk(join(dir, "mid.raw"), 256 << 20);
    await ok("xz -0 -T1 -k small.raw mid.raw", dir);
    await check(["small.raw.xz", "mid.raw.xz", "mid.raw"]);
  },
);
