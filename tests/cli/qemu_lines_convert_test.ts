// qemu-img convert command lines, in every mode, run with qemu-img and with
// our CLI in its place; qemu-img judges the images each wrote
// (tests/cli/_lines.ts).

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, runStatus, tempDir } from "../_qemu.ts";
import { cli } from "../tools/_helpers.ts";
import { judgeLine, type Line, makeFixtures } from "./_lines.ts";

const LINES: Line[] = [
  // raw to qcow2: sparse, compressed (zlib, zstd), cluster and refcount sizes
  {
    line: "convert -O qcow2 disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -f raw -O qcow2 disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -c -O qcow2 disk.raw out.qcow2",
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
    },
  },
  {
    line:
      "convert -p -c -f raw -O qcow2 -o compression_type=zstd disk.raw out.qcow2",
    progress: true,
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
    },
  },
  {
    line: "convert -pc -Oqcow2 -fraw disk.raw out.qcow2",
    progress: true,
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
    },
  },
  {
    line:
      "convert -O qcow2 -o cluster_size=2M,refcount_bits=8 disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line:
      "convert -O qcow2 -o cluster_size=4k -o compat=1.1,lazy_refcounts=off,extended_l2=off,preallocation=off disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line:
      "convert -c -O qcow2 -o compression_type=zstd,cluster_size=512 disk.raw out.qcow2",
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
    },
  },
  {
    line: "convert -q -m 4 -W -O qcow2 disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert disk.raw -O qcow2 out.qcow2 -q",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  // qcow2 to raw and to qcow2 (snapshots present, chains flattened)
  {
    line: "convert -O raw disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -U -f qcow2 -O raw disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -O qcow2 disk.qcow2 out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -c -O qcow2 top.qcow2 out.qcow2",
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
    },
  },
  {
    line: "convert -O raw packed.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  // internal snapshots
  {
    line: "convert -O raw -l snapshot.name=first disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -O raw -l snapshot.id=2 disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -O raw -l snapshot.name=1 disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -O raw -l snapshot.id=2,snapshot.name=1 disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -O qcow2 -l first disk.qcow2 out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -O raw -l snapshot.id=1,snapshot.name=1 disk.qcow2 out.raw",
    judge: { kind: "refused", dst: "out.raw" },
  },
  // delta images over a qcow2 base and a raw base, from -B and from -o
  {
    line: "convert -O qcow2 -B base.qcow2 -F qcow2 new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line:
      "convert -O qcow2 -o backing_file=base.qcow2,backing_fmt=qcow2 new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line: "convert -c -O qcow2 -B base.qcow2 -F qcow2 new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line:
      "convert -c -O qcow2 -o compression_type=zstd -B base.qcow2 -F qcow2 new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line: "convert -f raw -O qcow2 -B base.raw -F raw new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line: "convert -O qcow2 -B ../base.qcow2 -F qcow2 new.raw sub/delta.qcow2",
    mkdir: ["sub"],
    judge: { kind: "delta", dst: "sub/delta.qcow2" },
  },
  {
    line:
      "convert -O qcow2 -B base.qcow2 -F qcow2 -o backing_file=other.qcow2 new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line: "convert -O qcow2 -B base.qcow2 new.raw delta.qcow2",
    judge: { kind: "refused", dst: "delta.qcow2" },
  },
  {
    line: "convert -O raw -B base.qcow2 -F qcow2 new.raw delta.raw",
    judge: { kind: "refused", dst: "delta.raw" },
  },
  // into an existing raw target
  {
    line: "convert -n -O raw disk.qcow2 target.raw",
    copy: ["target.raw"],
    judge: { kind: "image", dst: "target.raw", format: "raw" },
  },
  {
    line: "convert -n -O raw top.qcow2 target.raw",
    copy: ["target.raw"],
    judge: { kind: "image", dst: "target.raw", format: "raw" },
  },
  {
    line: "convert -n -f raw -O raw disk.raw target.raw",
    copy: ["target.raw"],
    judge: { kind: "image", dst: "target.raw", format: "raw" },
  },
  {
    line: "convert -n --target-is-zero -O raw disk.qcow2 zero.raw",
    copy: ["zero.raw"],
    judge: { kind: "image", dst: "zero.raw", format: "raw" },
  },
  {
    line: "convert --target-is-zero -O raw disk.qcow2 out.raw",
    judge: { kind: "refused", dst: "out.raw" },
  },
  {
    line: "convert -n -O raw disk.qcow2 missing.raw",
    judge: { kind: "refused", dst: "missing.raw" },
  },
  // over HTTP
  {
    line: "convert -O raw $URL/disk.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -c -O qcow2 $URL/top.qcow2 out.qcow2",
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
    },
  },
  {
    line: "convert -f raw -O qcow2 $URL/disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  // qemu-img's defaults and accepted options
  {
    line: "convert disk.qcow2 out.disk",
    judge: { kind: "image", dst: "out.disk", format: "raw" },
  },
  {
    line: "convert -t none -T writeback -O qcow2 disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -p -O qcow2 disk.qcow2 out.qcow2",
    progress: "exact",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -p -O raw top.qcow2 out.raw",
    progress: "exact",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  // several SRCs, read one after the other
  {
    line: "convert -O qcow2 disk.qcow2 base.raw top.qcow2 out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line: "convert -O raw disk.raw packed.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -l first -O raw disk.qcow2 disk.qcow2 out.raw",
    judge: { kind: "refused", dst: "out.raw" },
  },
  {
    line: "convert -t bogus -O qcow2 disk.raw out.qcow2",
    judge: { kind: "refused", dst: "out.qcow2" },
  },
  // -n into an existing qcow2 image: the same file as qemu-img's
  {
    line: "convert -n -O qcow2 disk.raw big.qcow2",
    copy: ["big.qcow2"],
    judge: { kind: "image", dst: "big.qcow2", format: "qcow2", same: "bytes" },
  },
  {
    line: "convert -n -O qcow2 top.qcow2 big.qcow2",
    copy: ["big.qcow2"],
    judge: { kind: "image", dst: "big.qcow2", format: "qcow2", same: "bytes" },
  },
  {
    line: "convert -n -S 0 -O qcow2 disk.qcow2 big.qcow2",
    copy: ["big.qcow2"],
    judge: { kind: "image", dst: "big.qcow2", format: "qcow2", same: "bytes" },
  },
  {
    line: "convert -n --target-is-zero -O qcow2 disk.raw big.qcow2",
    copy: ["big.qcow2"],
    judge: { kind: "image", dst: "big.qcow2", format: "qcow2", same: "bytes" },
  },
  {
    line: "convert -n -O qcow2 disk.raw copy.qcow2",
    copy: ["copy.qcow2"],
    judge: { kind: "image", dst: "copy.qcow2", format: "qcow2", same: "map" },
  },
  {
    line: "convert -n -O qcow2 base.raw packed.qcow2",
    copy: ["packed.qcow2"],
    judge: { kind: "image", dst: "packed.qcow2", format: "qcow2", same: "map" },
  },
  // -S, -o compat, lazy_refcounts, preallocation
  {
    line: "convert -S 0 -O qcow2 disk.qcow2 out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "map" },
  },
  {
    line: "convert -S 4k -O qcow2 -o cluster_size=1k disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "map" },
  },
  {
    line: "convert -c -S 0 -O qcow2 disk.raw out.qcow2",
    judge: {
      kind: "image",
      dst: "out.qcow2",
      format: "qcow2",
      compressed: true,
      same: "map",
    },
  },
  {
    line: "convert -O qcow2 -o compat=0.10 disk.qcow2 out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "map" },
  },
  {
    line:
      "convert -O qcow2 -B base.qcow2 -F qcow2 -o compat=0.10 new.raw delta.qcow2",
    judge: { kind: "delta", dst: "delta.qcow2" },
  },
  {
    line:
      "convert -O qcow2 -o lazy_refcounts=on,cluster_size=4k disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  ...["metadata", "falloc", "full"].map((mode): Line => ({
    line: `convert -O qcow2 -o preallocation=${mode} disk.raw out.qcow2`,
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "size" },
  })),
  // -o help as qemu-img lists it
  {
    line: "convert -O qcow2 -o help disk.raw out.qcow2",
    judge: { kind: "output" },
  },
  { line: "convert -O qcow2 -o help", judge: { kind: "output" } },
  { line: "convert -o help", judge: { kind: "output" } },
  { line: "convert -O raw -o ? disk.raw out.raw", judge: { kind: "output" } },
  // refused in qemu-img's words
  {
    line: "convert -O qcow2 -o cluster_size=4k, disk.raw out.qcow2",
    judge: { kind: "message" },
  },
  {
    line: "convert -O qcow2 -o ,help disk.raw out.qcow2",
    judge: { kind: "message" },
  },
  { line: "convert -C -S 4k disk.raw out.raw", judge: { kind: "message" } },
  {
    line: "convert -C -c -O qcow2 disk.raw out.qcow2",
    judge: { kind: "message" },
  },
  { line: "convert -O bochs disk.raw out.img", judge: { kind: "message" } },
  {
    line: "convert -O qcow2 -B base.qcow2 disk.raw base.raw out.qcow2",
    judge: { kind: "message" },
  },
  {
    line: "convert -n -O qcow2 -o preallocation=metadata disk.raw big.qcow2",
    judge: { kind: "message" },
  },
  {
    line: "convert -O qcow2 -B base.qcow2 new.raw delta.qcow2",
    judge: { kind: "message" },
  },
  { line: "convert -O raw feature.qcow2 out.raw", judge: { kind: "message" } },
  // SRC in qemu-img's names of a local file, and null-co's zeros
  {
    line:
      "convert -O raw json:{'driver':'qcow2','file':{'driver':'file','filename':'disk.qcow2'}} out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line: "convert -O qcow2 file:top.qcow2 out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2" },
  },
  {
    line:
      "convert --image-opts -O qcow2 driver=raw,file.driver=file,file.filename=disk.raw out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "map" },
  },
  {
    line:
      "convert --image-opts -O raw driver=qcow2,file.filename=base.qcow2 file.filename=top.qcow2 out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line:
      "convert -O qcow2 -S 512 json:{'driver':'null-co','size':1048576,'read-zeroes':true} out.qcow2",
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "map" },
  },
  {
    line:
      'convert -O qcow2 -S 0 json:{"driver":"null-co","size":"3M","read-zeroes":"on"} out.qcow2',
    judge: { kind: "image", dst: "out.qcow2", format: "qcow2", same: "map" },
  },
  {
    line:
      "convert --image-opts -O raw driver=null-co,size=64k,read-zeroes=on out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line:
      "convert -O raw disk.raw json:{'driver':'null-co','size':4096,'read-zeroes':true} out.raw",
    judge: { kind: "image", dst: "out.raw", format: "raw" },
  },
  {
    line:
      "convert -f qcow2 -O raw json:{'driver':'raw','file':{'filename':'disk.raw'}} out.raw",
    judge: { kind: "refused", dst: "out.raw" },
  },
  // refused by both
  {
    line: "convert -c -O raw disk.raw out.raw",
    judge: { kind: "refused", dst: "out.raw" },
  },
  {
    line: "convert -O qcow2 -o cluster_size=3000 disk.raw out.qcow2",
    judge: { kind: "refused", dst: "out.qcow2" },
  },
  {
    line: "convert -O qcow2 -o bogus=1 disk.raw out.qcow2",
    judge: { kind: "refused", dst: "out.qcow2" },
  },
  {
    line: "convert -O qcow2 -m 0 disk.raw out.qcow2",
    judge: { kind: "refused", dst: "out.qcow2" },
  },
];

qemuTest(
  "qemu-img convert lines: the same images with our CLI in qemu-img's place",
  async (t) => {
    await using fx = await makeFixtures();
    for (const line of LINES) {
      await t.step(line.line, () => judgeLine(fx, line));
    }
  },
);

qemuTest(
  "convert SRC names qemu-img takes that we refuse in one line: a backing file, another protocol, null-co's undefined bytes",
  async () => {
    await using fx = await makeFixtures();
    await using out = await tempDir();
    const at = (name: string) => join(fx.dir, name);
    const top = { filename: at("top.qcow2") };
    const refused = [
      { driver: "qcow2", file: top, backing: null },
      { driver: "qcow2", file: { driver: "blkdebug", image: top } },
      {
        driver: "qcow2",
        file: top,
        backing: { driver: "raw", file: { filename: at("disk.raw") } },
      },
      { driver: "null-co", size: 4096 },
      { driver: "null-co", size: 4096, "read-zeroes": true, "latency-ns": 5 },
    ].map((o) => `json:${JSON.stringify(o)}`);
    for (const [i, src] of refused.entries()) {
      // qemu-img takes each of them.
      const theirs = await runStatus("qemu-img", [
        "convert",
        "-O",
        "raw",
        src,
        join(out.path, `q${i}.raw`),
      ]);
      assert.strictEqual(theirs.code, 0, `${src}: ${theirs.stderr}`);
      const dst = join(out.path, "out.raw");
      const ours = await cli(["convert", "-O", "raw", src, dst]);
      assert.strictEqual(ours.code, 1, src);
      assert.strictEqual(ours.stderr.trimEnd().split("\n").length, 1, src);
      assert.match(ours.stderr, /^qcow2pipe: Cannot open image json:/, src);
      await assert.rejects(Deno.stat(dst), Deno.errors.NotFound);
    }
  },
);
