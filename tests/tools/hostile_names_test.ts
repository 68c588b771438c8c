// Names that hold control characters (a backing file, a data file, a
// snapshot, a tar member named by a hostile image; a file named on the
// command line) reach the terminal shown by printable(): no escape byte,
// no line break of their own, and the reason after them kept. qemu-img is
// the reference for everything else on those lines: with the name shown
// its way swapped for ours, the outputs are the same.

import assert from "node:assert";
import { join } from "node:path";
import { has, qemuTest, tempDir, toolTest } from "../_qemu.ts";
import { printable } from "../../lib/format/errors.ts";
import { assertOneLineError, cli, qemuIn } from "./_helpers.ts";

/** The backing file name of the issue: colours, then a second line. */
const EVIL = "evil\x1b[31mRED\nsecond line";
/** How it is shown. */
const SHOWN = "evil\\x1b[31mRED\\nsecond line";

const tarTest = toolTest(
  "qemu-img/tar",
  has("qemu-img") && has("tar"),
  "apt-get install qemu-utils tar",
);

/** Asserts that no escape byte and no line break of a name got out. */
function assertNoRawName(r: { stdout: string; stderr: string }): void {
  for (const text of [r.stdout, r.stderr]) {
    assert.ok(
      !text.includes("\x1b"),
      `an escape byte: ${JSON.stringify(text)}`,
    );
    assert.ok(!/(^|\n)second line/.test(text), JSON.stringify(text));
  }
}

/** An image whose backing file is named EVIL, made by qemu-img. */
async function evilImage(dir: string): Promise<void> {
  const made = await qemuIn(
    dir,
    ...["create", "-f", "qcow2", "-u", "-b", EVIL, "-F", "raw", "ev.qcow2"],
    "1M",
  );
  assert.strictEqual(made.code, 0, made.stderr);
}

qemuTest(
  "a backing file named with an escape sequence and a newline: convert, map and compare say why, on one line",
  async () => {
    await using dir = await tempDir();
    await evilImage(dir.path);
    const missing = new RegExp(
      `^qcow2pipe: Cannot open backing file "${
        SHOWN.replaceAll("\\", "\\\\").replace("[", "\\[")
      }": no such file$`,
    );
    const runs: [string[], number][] = [
      [["convert", "-O", "raw", "ev.qcow2", "ev.raw"], 1],
      [["convert", "-O", "qcow2", "ev.qcow2", "ev2.qcow2"], 1],
      [["map", "ev.qcow2"], 1],
      [["map", "--output=json", "ev.qcow2"], 1],
      [["compare", "ev.qcow2", "ev.qcow2"], 2],
    ];
    for (const [args, code] of runs) {
      const r = await cli(args, { cwd: dir.path });
      assert.strictEqual(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assertNoRawName(r);
      assertOneLineError(r, missing);
    }
  },
);

qemuTest(
  "a backing file named with an escape sequence and a newline: info, map, check and compare print it escaped, the rest as qemu-img",
  async () => {
    await using dir = await tempDir();
    await evilImage(dir.path);
    // What qemu-img prints, with the name shown our way: the rest is the same.
    const same = async (args: string[]) => {
      const ours = await cli(args, { cwd: dir.path });
      const theirs = await qemuIn(dir.path, ...args);
      assertNoRawName(ours);
      assert.strictEqual(ours.code, theirs.code, ours.stderr);
      assert.strictEqual(ours.stdout, theirs.stdout.replaceAll(EVIL, SHOWN));
      return ours;
    };
    const info = await same(["info", "ev.qcow2"]);
    assert.match(
      info.stdout,
      /^backing file: evil\\x1b\[31mRED\\nsecond line$/m,
    );
    // JSON escapes it already, as qemu-img's does.
    await same(["info", "--output=json", "ev.qcow2"]);
    // With the backing file there, its name is the map's File column and a
    // whole `image:` line of the chain.
    const backing = await qemuIn(dir.path, "create", "-f", "raw", EVIL, "1M");
    assert.strictEqual(backing.code, 0, backing.stderr);
    const io = await new Deno.Command("qemu-io", {
      args: ["-f", "raw", "-c", "write -P 7 0 64k", EVIL],
      cwd: dir.path,
      stdout: "null",
    }).output();
    assert.ok(io.success);
    const map = await same(["map", "ev.qcow2"]);
    assert.match(map.stdout, /0x10000 +0 +evil\\x1b\[31mRED\\nsecond line\n$/);
    await same(["info", "--backing-chain", "ev.qcow2"]);
    await same(["check", "ev.qcow2"]);
    await same(["compare", "ev.qcow2", EVIL]);
  },
);

qemuTest(
  "a data file and a snapshot named with control characters are shown escaped by info, snapshot -l and convert",
  async () => {
    await using dir = await tempDir();
    const data = "d\x1b]0;title\x07\u202e.raw";
    const made = await qemuIn(
      dir.path,
      ...["create", "-f", "qcow2", "-o", `data_file=${data}`, "df.qcow2", "1M"],
    );
    assert.strictEqual(made.code, 0, made.stderr);
    const info = await cli(["info", "df.qcow2"], { cwd: dir.path });
    assert.strictEqual(info.code, 0, info.stderr);
    assert.match(
      info.stdout,
      /^ {4}data file: d\\x1b\]0;title\\x07\\u202e\.raw$/m,
    );
    for (const c of ["\x1b", "\x07", "\u202e"]) {
      assert.ok(!info.stdout.includes(c), info.stdout);
    }
    await Deno.remove(join(dir.path, data));
    const convert = await cli(["convert", "-O", "raw", "df.qcow2", "o.raw"], {
      cwd: dir.path,
    });
    assertOneLineError(
      convert,
      /Cannot open external data file "d\\x1b\]0;title\\x07\\u202e\.raw"/,
    );

    const tag = "s\x1b[2J\ny";
    const snap = await qemuIn(
      dir.path,
      "create",
      "-f",
      "qcow2",
      "sn.qcow2",
      "1M",
    );
    assert.strictEqual(snap.code, 0, snap.stderr);
    assert.strictEqual(
      (await qemuIn(dir.path, "snapshot", "-c", tag, "sn.qcow2")).code,
      0,
    );
    for (const args of [["snapshot", "-l", "sn.qcow2"], ["info", "sn.qcow2"]]) {
      const r = await cli(args, { cwd: dir.path });
      assert.strictEqual(r.code, 0, r.stderr);
      assert.ok(!r.stdout.includes("\x1b"), r.stdout);
      const rows = r.stdout.split("\n").filter((l) => /^1 /.test(l));
      assert.strictEqual(rows.length, 1, r.stdout);
      assert.match(rows[0], /^1 {9}s\\x1b\[2J\\ny +0 B /);
    }
  },
);

qemuTest(
  "a file named on the command line with a newline gives one line, whatever the command",
  async () => {
    await using dir = await tempDir();
    const name = "a\nb.qcow2";
    const runs: [string[], number, RegExp][] = [
      [["info", name], 1, /Cannot open image a\\nb\.qcow2: no such file$/],
      [["map", name], 1, /Cannot open image a\\nb\.qcow2: no such file$/],
      [["check", name], 1, /Cannot open image a\\nb\.qcow2: no such file$/],
      [
        ["compare", name, name],
        2,
        /Cannot open image a\\nb\.qcow2: no such file$/,
      ],
      [
        ["snapshot", "-l", name],
        1,
        /Cannot open image a\\nb\.qcow2: no such file$/,
      ],
      [
        ["convert", "-O", "raw", name, "o.raw"],
        1,
        /Cannot open image a\\nb\.qcow2: no such file$/,
      ],
      // A json: name whose filename holds a newline, escaped in its JSON.
      [
        ["info", 'json:{"file":{"driver":"file","filename":"x\\ny"}}'],
        1,
        /Cannot open image x\\ny: no such file$/,
      ],
      [["convert", "-O", "raw", "/dev/null", "no-dir\n/o.raw"], 1, /no-dir\\n/],
    ];
    for (const [args, code, pattern] of runs) {
      const r = await cli(args, { cwd: dir.path });
      assert.strictEqual(r.code, code, `${JSON.stringify(args)}: ${r.stderr}`);
      assertOneLineError(r, pattern);
    }
    // The summary of a conversion names DST the same way.
    const r = await cli([
      "convert",
      "--verbose",
      "-f",
      "raw",
      "-O",
      "raw",
      "/dev/null",
      "o\n.raw",
    ], {
      cwd: dir.path,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, /^qcow2pipe: wrote o\\n\.raw: .*\n$/);
  },
);

tarTest(
  "a tar member named with control characters is shown escaped in convert's notice and errors",
  async () => {
    await using dir = await tempDir();
    await Deno.mkdir(join(dir.path, "t"));
    const member = "m\x1b[5m\nn.qcow2";
    const made = await qemuIn(
      join(dir.path, "t"),
      "create",
      "-f",
      "qcow2",
      member,
      "1M",
    );
    assert.strictEqual(made.code, 0, made.stderr);
    const tar = await new Deno.Command("tar", {
      args: ["cf", "../d.tar", member],
      cwd: join(dir.path, "t"),
    }).output();
    assert.ok(tar.success);
    const r = await cli(["convert", "-O", "raw", "d.tar", "o.raw"], {
      cwd: dir.path,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.ok(!r.stderr.includes("\x1b"), r.stderr);
    assert.match(
      r.stderr,
      /^qcow2pipe: d\.tar is a tar archive: unpacking it as it is read; reading its member "m\\x1b\[5m\\nn\.qcow2"$/m,
    );
    const wrong = await cli(
      ["convert", "--disk", "zz\n", "-O", "raw", "d.tar", "o.raw"],
      { cwd: dir.path },
    );
    assertOneLineError(
      wrong,
      /no member named "zz\\n" \(it holds "m\\x1b\[5m\\nn\.qcow2"\)/,
    );
    assert.strictEqual(printable(member), "m\\x1b[5m\\nn.qcow2");
  },
);
