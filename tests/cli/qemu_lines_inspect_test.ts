// qemu-img info, check, map and compare command lines, in both output
// forms, on files and URLs, run with qemu-img and with our CLI in its
// place: the same standard output and exit status (tests/cli/_lines.ts).

import assert from "node:assert";
import { join } from "node:path";
import {
  createQcow2,
  qemuImg,
  qemuTest,
  runStatus,
  tempDir,
} from "../_qemu.ts";
import { cli } from "../tools/_helpers.ts";
import { judgeLine, type Line, makeFixtures } from "./_lines.ts";

const SAME: Line["judge"] = { kind: "output" };

const LINES: string[] = [
  "info disk.qcow2",
  "info --output=json disk.qcow2",
  "info --output json disk.raw",
  "info --output=human -f raw disk.raw",
  "info -U --backing-chain top.qcow2",
  "info --backing-chain --output=json top.qcow2",
  "info --format=qcow2 packed.qcow2",
  "info $URL/disk.qcow2",
  "info --output=json $URL/disk.qcow2",
  "info --backing-chain --output=json $URL/top.qcow2",
  "info $URL/disk.raw",
  "check disk.qcow2",
  "check --output=json disk.qcow2",
  "check -q disk.qcow2",
  "check -U -f qcow2 top.qcow2",
  "check -T none disk.qcow2",
  "check --output=json packed.qcow2",
  "check disk.raw",
  "check $URL/disk.qcow2",
  "check --output=json $URL/top.qcow2",
  "map disk.qcow2",
  "map --output=json disk.qcow2",
  "map --output=json --start-offset=1M --max-length=2M disk.qcow2",
  "map --output=human -U top.qcow2",
  "map --output=json top.qcow2",
  "map disk.raw",
  "map --output=json -f raw disk.raw",
  "map packed.qcow2",
  "map $URL/disk.qcow2",
  "map --output=json $URL/top.qcow2",
  "compare disk.raw base.qcow2",
  "compare -f raw -F qcow2 disk.raw base.qcow2",
  "compare disk.raw new.raw",
  "compare -q disk.raw new.raw",
  "compare disk.qcow2 big.qcow2",
  "compare -s disk.qcow2 copy.qcow2",
  "compare -s disk.raw base.qcow2",
  "compare -s disk.qcow2 big.qcow2",
  "compare -s -q disk.raw base.qcow2",
  "compare -s -f qcow2 -F qcow2 top.qcow2 base.qcow2",
  "compare -U $URL/disk.qcow2 disk.raw",
  "compare $URL/top.qcow2 $URL/base.qcow2",
  "compare -s $URL/disk.qcow2 copy.qcow2",
  "compare -T writethrough disk.raw base.qcow2",
  // qemu-img's names of a local file
  "info file:disk.qcow2",
  "info json:{'driver':'qcow2','file':{'driver':'file','filename':'disk.qcow2'}}",
  'info --output=json json:{"file":{"filename":"top.qcow2"}}',
  "info --backing-chain --image-opts driver=qcow2,file.driver=file,file.filename=top.qcow2",
  "check --image-opts driver=qcow2,file.filename=disk.qcow2",
  "check --object secret,id=sec0,data=x --image-opts driver=qcow2,file.filename=disk.qcow2,encrypt.key-secret=sec0",
  "map --output=json --image-opts file.filename=top.qcow2",
];

/** Lines judged otherwise: errors in qemu-img's words, progress. */
const OTHER_LINES: Line[] = [
  // an image qemu-img reads its own way: the last backing format wins
  { line: "info twofmt.qcow2", judge: SAME },
  { line: "info --output=json twofmt.qcow2", judge: SAME },
  // refused in qemu-img's words
  { line: "info feature.qcow2", judge: { kind: "message" } },
  { line: "check feature.qcow2", judge: { kind: "message" } },
  { line: "info named.qcow2", judge: { kind: "message" } },
  { line: "map shortl1.qcow2", judge: { kind: "message" } },
  { line: "info shortl1.qcow2", judge: { kind: "message" } },
  { line: "info huge.qcow2", judge: { kind: "message" } },
  { line: "info --backing-chain loop.qcow2", judge: { kind: "message" } },
  // names of something else than a local file: refused in one line
  {
    line:
      "info --image-opts driver=qcow2,file.filename=top.qcow2,backing.file.filename=disk.raw",
    judge: { kind: "refused", dst: "none" },
  },
  {
    line: 'info json:{"driver":"qcow2","file":"disk.qcow2"}',
    judge: { kind: "refused", dst: "none" },
  },
  // -p: qemu-img's first and last steps
  { line: "compare -p disk.raw base.qcow2", judge: SAME, progress: true },
  { line: "compare -p disk.raw new.raw", judge: SAME, progress: true },
];

qemuTest(
  "qemu-img info/check/map/compare lines: the same output with our CLI in qemu-img's place",
  async (t) => {
    await using fx = await makeFixtures();
    for (const line of LINES) {
      await t.step(line, () => judgeLine(fx, { line, judge: SAME }));
    }
    for (const line of OTHER_LINES) {
      await t.step(line.line, () => judgeLine(fx, line));
    }
  },
);

qemuTest(
  "info and check --image-opts with data-file.filename: qemu-img's output; map refuses it, a missing data file is refused",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "t.qcow2");
    await createQcow2(dir.path, "t.qcow2", "1M", "-o", `data_file=${img}.data`);
    await qemuImg("amend", "-o", "data_file=foo", img);
    const opts = `data-file.filename=${img}.data,file.filename=${img}`;
    for (const args of [["info"], ["check"], ["info", "--output=json"]]) {
      const line = [...args, "--image-opts", opts];
      const theirs = await runStatus("qemu-img", line);
      const ours = await cli(line);
      assert.strictEqual(ours.code, theirs.code, line.join(" "));
      assert.strictEqual(ours.stdout, theirs.stdout, line.join(" "));
    }
    for (
      const line of [
        ["map", "--image-opts", opts],
        [
          "info",
          "--image-opts",
          `data-file.filename=${img}.gone,file.filename=${img}`,
        ],
      ]
    ) {
      const ours = await cli(line);
      assert.strictEqual(ours.code, 1, line.join(" "));
      assert.strictEqual(ours.stderr.trimEnd().split("\n").length, 1);
      assert.match(ours.stderr, /data-file\.filename|data file/);
    }
  },
);

qemuTest(
  "info takes encrypt.key-secret without --object on a LUKS image and names it by its options, as qemu-img's info does (iotest 198); check refuses it, as qemu-img's does",
  async () => {
    await using dir = await tempDir();
    const img = join(dir.path, "luks.qcow2");
    await qemuImg(
      "create",
      "-q",
      "--object",
      "secret,id=sec0,data=123456",
      "-f",
      "qcow2",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
      img,
      "4M",
    );
    const opts = `driver=qcow2,file.filename=${img},encrypt.key-secret=sec0`;
    for (const args of [["info"], ["info", "--output=json"]]) {
      const line = [...args, "--image-opts", opts];
      const theirs = await runStatus("qemu-img", line);
      const ours = await cli(line);
      assert.strictEqual(ours.code, 0, `${line.join(" ")}: ${ours.stderr}`);
      assert.strictEqual(theirs.code, 0, line.join(" "));
      // The image named by its options (json:{...}), as qemu-img names
      // it, and the LUKS header described the same.
      assert.strictEqual(ours.stdout, theirs.stdout, line.join(" "));
      assert.match(ours.stdout, /format"?: "?luks/);
    }
    const line = ["check", "--image-opts", opts];
    const theirs = await runStatus("qemu-img", line);
    const ours = await cli(line);
    assert.strictEqual(theirs.code, 1);
    assert.strictEqual(ours.code, 1);
    assert.strictEqual(ours.stderr.trimEnd().split("\n").length, 1);
    assert.match(ours.stderr, /no secret with id 'sec0'/);
  },
);
