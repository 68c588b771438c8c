// Attacks on the reference rules, built for real: a probed image must not
// reach a file outside its directory, whatever links and `..` its names go
// through, through the CLI (convert, info, map, compare, check) and the
// library (openImage and the tools); a probed image from standard input
// follows no file at all. Each attack reads a canary file made here outside
// the image directory; no canary byte may show in any output. The
// legitimate cases (a subdirectory, a link inside to a file inside, a hard
// link, -f qcow2 with an absolute name) keep working and read what qemu-img
// reads.

import assert from "node:assert";
import { join } from "node:path";
import { FileSource, openImage, Qcow2Error } from "../../mod.ts";
import {
  checkImage,
  compareImages,
  imageInfo,
  mapImage,
} from "../../lib/tools/mod.ts";
import { qemuImg, qemuIo, qemuTest } from "../_qemu.ts";
import {
  assertOneLineError,
  CLI,
  partialFiles,
  runCli,
} from "../writer/_cli.ts";

const MiB = 1024 * 1024;
const CANARY = "QCOW2PIPE-CANARY ";
const decoder = new TextDecoder("latin1");

/** One MiB of canary text: any byte of it in an output is a leak. */
function canaryBytes(): Uint8Array {
  return new TextEncoder().encode(CANARY.repeat(MiB / CANARY.length + 1))
    .subarray(0, MiB);
}

function assertNoCanary(what: string, bytes: Uint8Array | string): void {
  const text = typeof bytes === "string" ? bytes : decoder.decode(bytes);
  assert.ok(!text.includes("CANARY"), `${what} holds canary bytes`);
}

interface Scene extends AsyncDisposable {
  root: string;
  /** The image directory. */
  img: string;
  /** root/sys: plays /etc; root/sys/sub plays /etc/ssl. */
  sys: string;
  canary: string;
}

/** `qemu-img create -f qcow2 -u -b NAME -F FMT path 1M`. */
async function overlay(path: string, backing: string, fmt = "raw") {
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-u",
    "-b",
    backing,
    "-F",
    fmt,
    path,
    "1M",
  );
}

/** Runs a QEMU tool in `cwd`; throws with its stderr when it fails. */
async function qemuIn(cwd: string, cmd: string, ...args: string[]) {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "null" })
    .output();
  assert.ok(
    out.success,
    `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`,
  );
}

/**
 * An image with an external data file whose stored name is `name`: made
 * by qemu-img, run in the image's directory, with a placeholder name of the
 * same length (every cluster written, so every cluster reads from the data
 * file), then the name's bytes patched.
 */
async function withDataFile(path: string, name: string): Promise<void> {
  const dir = path.slice(0, path.lastIndexOf("/"));
  const placeholder = "d".repeat(name.length);
  const out = await new Deno.Command("qemu-img", {
    args: [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      `data_file=${placeholder}`,
      path,
      "1M",
    ],
    cwd: dir,
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  // qemu-img 7.2 opens a relative data file name from the working
  // directory (a backing file name, from the image's).
  await qemuIn(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", path);
  await Deno.remove(join(dir, placeholder));
  const bytes = await Deno.readFile(path);
  const at = decoder.decode(bytes.subarray(0, 65536)).indexOf(placeholder);
  assert.ok(at > 0, "data file name stored");
  bytes.set(new TextEncoder().encode(name), at);
  await Deno.writeFile(path, bytes);
}

/**
 * root/sys/canary (outside the image directory), root/sys/sub, and in
 * root/img: base.raw (0x5a), sub/base.qcow2, a/b/ (directories inside).
 */
async function scene(): Promise<Scene> {
  const root = await Deno.realPath(
    await Deno.makeTempDir({ prefix: "qcow2pipe-refs-" }),
  );
  const img = join(root, "img");
  const sys = join(root, "sys");
  await Deno.mkdir(join(sys, "sub"), { recursive: true });
  await Deno.mkdir(join(img, "sub"), { recursive: true });
  await Deno.mkdir(join(img, "a", "b"), { recursive: true });
  const canary = join(sys, "canary");
  await Deno.writeFile(canary, canaryBytes());
  await Deno.writeFile(join(img, "base.raw"), new Uint8Array(MiB).fill(0x5a));
  return {
    root,
    img,
    sys,
    canary,
    async [Symbol.asyncDispose]() {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

interface AttackCase {
  /** The image, in the image directory. */
  image: string;
  what: "backing file" | "external data file";
  /** The name as stored. */
  stored: string;
  /** The image that names it (for a chain, not the top). */
  referrer?: string;
}

/** Builds every attack image in `s.img`; returns them. */
async function attacks(s: Scene): Promise<AttackCase[]> {
  const { img, sys } = s;
  // A link in the image directory to a system directory one level down.
  await Deno.symlink(join(sys, "sub"), join(img, "lnk"));
  await overlay(join(img, "dotdot.qcow2"), "lnk/../canary");
  await withDataFile(join(img, "data.qcow2"), "lnk/../canary");
  // A link to a link: l1 -> l2 -> ../sys/sub (relative targets).
  await Deno.symlink("../sys/sub", join(img, "l2"));
  await Deno.symlink("l2", join(img, "l1"));
  await overlay(join(img, "nested.qcow2"), "l1/../canary");
  // A link to a directory inside, then `..` until outside.
  await Deno.symlink("a", join(img, "up"));
  await overlay(join(img, "twice.qcow2"), "up/../../sys/canary");
  await Deno.symlink("a/b", join(img, "deep"));
  await overlay(join(img, "thrice.qcow2"), "deep/../../../sys/canary");
  // An absolute link to the file itself.
  await Deno.symlink(s.canary, join(img, "abslink"));
  await overlay(join(img, "abslink.qcow2"), "abslink");
  // A chain whose second image does the trick (the top names it qcow2).
  await overlay(join(img, "mid.qcow2"), "lnk/../canary");
  await overlay(join(img, "chain.qcow2"), "mid.qcow2", "qcow2");
  // A missing file past a link: said to be outside, not missing (no
  // oracle for which host files exist).
  await overlay(join(img, "missing.qcow2"), "lnk/../nothere");
  return [
    { image: "dotdot.qcow2", what: "backing file", stored: "lnk/../canary" },
    {
      image: "data.qcow2",
      what: "external data file",
      stored: "lnk/../canary",
    },
    { image: "nested.qcow2", what: "backing file", stored: "l1/../canary" },
    {
      image: "twice.qcow2",
      what: "backing file",
      stored: "up/../../sys/canary",
    },
    {
      image: "thrice.qcow2",
      what: "backing file",
      stored: "deep/../../../sys/canary",
    },
    { image: "abslink.qcow2", what: "backing file", stored: "abslink" },
    {
      image: "chain.qcow2",
      what: "backing file",
      stored: "lnk/../canary",
      referrer: "mid.qcow2",
    },
    { image: "missing.qcow2", what: "backing file", stored: "lnk/../nothere" },
  ];
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/** The one line that refuses a case: the file, the image, the way out. */
function refusal(s: Scene, c: AttackCase): RegExp {
  return new RegExp(
    `Cannot open ${c.what} "${
      escape(c.stored)
    }": it is outside the directory of ${
      escape(join(s.img, c.referrer ?? c.image))
    }; its format was probed: pass -f qcow2 to follow it$`,
  );
}

qemuTest(
  "references: links then .. cannot lead a probed image out of its directory (CLI)",
  async (t) => {
    await using s = await scene();
    const cases = await attacks(s);
    for (const c of cases) {
      const src = join(s.img, c.image);
      const before = await Deno.readFile(src);
      await t.step(`${c.image}: ${c.what} "${c.stored}"`, async () => {
        const pattern = refusal(s, c);
        const out = join(s.root, `${c.image}.out.raw`);
        const convert = await runCli(["convert", "-O", "raw", src, out]);
        assertOneLineError(convert, pattern);
        assertNoCanary("convert stderr", convert.stderr);
        await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
        assert.deepStrictEqual(await partialFiles(s.root), []);

        const map = await runCli(["map", "--output=json", src]);
        assertOneLineError(map, pattern);
        assert.strictEqual(map.stdout.length, 0);

        const compare = await runCli([
          "compare",
          src,
          join(s.img, "base.raw"),
        ]);
        assert.strictEqual(compare.code, 2, compare.stderr);
        const lines = compare.stderr.trim().split("\n");
        assert.strictEqual(lines.length, 1, compare.stderr);
        assert.match(lines[0], pattern);
        assertNoCanary("compare stdout", compare.stdout);

        if (c.what === "backing file") {
          const info = await runCli(["info", "--backing-chain", src]);
          assertOneLineError(info, pattern);
          assertNoCanary("info stdout", info.stdout);
        }
        // check reads the image itself only (as qemu-img check does for
        // the chain): it follows nothing, so nothing leaks.
        const check = await runCli(["check", src]);
        assert.strictEqual(check.code, 0, check.stderr);
        assertNoCanary("check stdout", check.stdout);
        assert.deepStrictEqual(await Deno.readFile(src), before);
      });
    }
    // -f qcow2 is QEMU's rules: the same names lead where qemu-img goes,
    // which shows each case really reaches the canary.
    for (const c of cases.filter((c) => c.image !== "missing.qcow2")) {
      const src = join(s.img, c.image);
      const theirs = join(s.root, `${c.image}.qemu.raw`);
      const ours = join(s.root, `${c.image}.ours.raw`);
      await qemuIn(
        s.img,
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        src,
        theirs,
      );
      const r = await runCli([
        "convert",
        "-q",
        "-f",
        "qcow2",
        src,
        ours,
        "-O",
        "raw",
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      const expected = await Deno.readFile(theirs);
      assert.deepStrictEqual(expected, canaryBytes(), c.image);
      assert.deepStrictEqual(await Deno.readFile(ours), expected, c.image);
    }
  },
);

qemuTest(
  "references: links then .. cannot lead a probed image out of its directory (library)",
  async () => {
    await using s = await scene();
    const cases = await attacks(s);
    for (const c of cases) {
      const src = join(s.img, c.image);
      const pattern = refusal(s, c);
      const untrusted = (err: unknown) => {
        assert.ok(err instanceof Qcow2Error, String(err));
        assert.strictEqual(err.code, "UNTRUSTED_REFERENCE");
        assert.match(err.message, pattern);
        return true;
      };
      const opened: string[] = [];
      const openSource = async (name: string) => {
        opened.push(name);
        return await FileSource.open(name);
      };
      await assert.rejects(openImage(src), untrusted);
      await assert.rejects(openImage(src, { openSource }), untrusted);
      await assert.rejects(mapImage(src, { openSource }), untrusted);
      await assert.rejects(
        compareImages(src, join(s.img, "base.raw"), { openSource }),
        untrusted,
      );
      if (c.what === "backing file") {
        await assert.rejects(
          imageInfo(src, { backingChain: true, openSource }),
          untrusted,
        );
      }
      // Nothing outside was opened: for the chain, only mid.qcow2, by its
      // real path.
      assert.deepStrictEqual(
        [...new Set(opened)],
        c.referrer ? [join(s.img, c.referrer)] : [],
      );
      // "contained" holds an image whose format is given to the same rule.
      await assert.rejects(
        openImage(src, { format: "qcow2", references: "contained" }),
        /is outside the directory of .* \(references: "contained"\)$/,
      );
    }
  },
);

qemuTest(
  "references: legitimate names inside the directory open, by their real paths, as qemu-img reads them",
  async () => {
    await using s = await scene();
    const { img } = s;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      join(img, "sub", "base.qcow2"),
      "1M",
    );
    await qemuIo(join(img, "sub", "base.qcow2"), ["write -P 0x42 0 64k"]);
    await overlay(join(img, "subdir.qcow2"), "sub/base.qcow2", "qcow2");
    // A relative link inside to a file inside.
    await Deno.symlink("base.raw", join(img, "cur.raw"));
    await overlay(join(img, "linked.qcow2"), "cur.raw");
    // A link to a directory two levels inside, then `..` twice: the OS
    // lands back in the directory (a text check would call it outside).
    await Deno.symlink("a/b", join(img, "in"));
    await overlay(join(img, "updown.qcow2"), "in/../../base.raw");
    // A hard link inside to a file outside: a directory entry inside is
    // inside (whoever made it chose to put that file in the directory; an
    // image cannot make one).
    const shared = join(s.sys, "shared.raw");
    await Deno.writeFile(shared, new Uint8Array(MiB).fill(0x6b));
    await Deno.link(shared, join(img, "hard.raw"));
    await overlay(join(img, "hard.qcow2"), "hard.raw");
    // An external data file reached through a link inside.
    await Deno.symlink("a", join(img, "alias"));
    await withDataFile(join(img, "data-in.qcow2"), "alias/data.img");
    await Deno.writeFile(
      join(img, "a", "data.img"),
      new Uint8Array(MiB).fill(0x77),
    );

    const cases: [string, string][] = [
      ["subdir.qcow2", join(img, "sub", "base.qcow2")],
      ["linked.qcow2", join(img, "base.raw")],
      ["updown.qcow2", join(img, "base.raw")],
      ["hard.qcow2", join(img, "hard.raw")],
      ["data-in.qcow2", join(img, "a", "data.img")],
    ];
    for (const [image, realPath] of cases) {
      const src = join(img, image);
      const expected = join(s.root, `${image}.qemu.raw`);
      await qemuIn(
        img,
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        src,
        expected,
      );
      const out = join(s.root, `${image}.raw`);
      const r = await runCli(["convert", "-q", "-O", "raw", src, out]);
      assert.strictEqual(r.code, 0, `${image}: ${r.stderr}`);
      assert.deepStrictEqual(
        await Deno.readFile(out),
        await Deno.readFile(expected),
        image,
      );
      // The file opened is the real path that was checked.
      const opened: string[] = [];
      await using image_ = await openImage(src, {
        openSource: async (name) => {
          opened.push(name);
          return await FileSource.open(name);
        },
      });
      assert.deepStrictEqual(opened, [realPath], image);
      assert.deepStrictEqual(
        await image_.readAt(0, MiB),
        await Deno.readFile(expected),
      );
    }
    // map names the backing file as qemu-img does (the name, not the real
    // path), and finds the same ranges.
    for (const image of ["linked.qcow2", "updown.qcow2"]) {
      const ours = await runCli(["map", image], { cwd: img });
      const theirs = await new Deno.Command("qemu-img", {
        args: ["map", image],
        cwd: img,
        stdout: "piped",
      }).output();
      assert.strictEqual(ours.code, 0, ours.stderr);
      assert.strictEqual(
        new TextDecoder().decode(ours.stdout),
        new TextDecoder().decode(theirs.stdout),
      );
    }
    // -f qcow2 with an absolute name outside: QEMU's rules.
    await overlay(join(img, "absolute.qcow2"), s.canary);
    const out = join(s.root, "abs.raw");
    const given = await runCli([
      "convert",
      "-q",
      "-f",
      "qcow2",
      "-O",
      "raw",
      join(img, "absolute.qcow2"),
      out,
    ]);
    assert.strictEqual(given.code, 0, given.stderr);
    assert.deepStrictEqual(await Deno.readFile(out), canaryBytes());
    // A missing file inside is missing (and said so by its name).
    await overlay(join(img, "orphan.qcow2"), "sub/gone.raw");
    assertOneLineError(
      await runCli(["convert", "-O", "raw", join(img, "orphan.qcow2"), out]),
      new RegExp(
        `Cannot open backing file "${
          escape(join(img, "sub/gone.raw"))
        }": no such file$`,
      ),
    );
  },
);

qemuTest(
  "references: a probed image from standard input follows no file, whatever the working directory",
  async () => {
    await using s = await scene();
    await Deno.symlink(join(s.sys, "sub"), join(s.img, "lnk"));
    const rel = join(s.root, "rel.qcow2");
    const abs = join(s.root, "abs.qcow2");
    await overlay(rel, "lnk/../canary");
    await overlay(abs, s.canary);
    for (
      const [image, stored, cwd] of [
        [rel, "lnk/../canary", s.img],
        [abs, s.canary, s.img],
        // A service started in / : every absolute name is "inside" it.
        [abs, s.canary, "/"],
      ]
    ) {
      const out = join(s.root, "out.raw");
      const r = await runCli(["convert", "-", "-O", "raw", out], {
        stdin: await Deno.readFile(image),
        cwd,
      });
      assertOneLineError(
        r,
        new RegExp(
          `Cannot open backing file "${
            escape(stored)
          }": standard input has no directory that could hold it; its format was probed: pass -f qcow2 to follow it$`,
        ),
      );
      await assert.rejects(Deno.stat(out), Deno.errors.NotFound);
    }
    // With -f qcow2, QEMU's rules against the working directory: the
    // relative name through the link reaches the canary, as qemu-img does.
    const out = join(s.root, "given.raw");
    const r = await runCli([
      "convert",
      "-q",
      "-f",
      "qcow2",
      "-",
      "-O",
      "raw",
      out,
    ], {
      stdin: await Deno.readFile(rel),
      cwd: s.img,
    });
    assert.strictEqual(r.code, 0, r.stderr);
    assert.deepStrictEqual(await Deno.readFile(out), canaryBytes());
  },
);

qemuTest(
  "references: a probed stream naming a file is refused at its first cluster, the rest never read",
  async () => {
    await using s = await scene();
    const image = join(s.root, "abs.qcow2");
    await overlay(image, s.canary);
    const head = await Deno.readFile(image);
    // With and without a snapshot to read (-l spools a stream whole).
    for (const snapshot of [[], ["-l", "1"]]) {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          "--quiet",
          CLI,
          "convert",
          ...snapshot,
          "-",
          "-O",
          "raw",
          join(s.root, "o.raw"),
        ],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      const writer = child.stdin.getWriter();
      // The header, then up to 1 GiB more: a run that spooled the stream
      // before deciding would take it all.
      let sent = 0;
      let broken = false;
      try {
        await writer.write(head);
        const zeros = new Uint8Array(MiB);
        for (; sent < 1024 * MiB; sent += zeros.length) {
          await writer.write(zeros);
        }
        await writer.close();
      } catch (err) {
        assert.ok(err instanceof Deno.errors.BrokenPipe, String(err));
        broken = true;
      }
      const out = await child.output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.strictEqual(out.code, 1, stderr);
      assert.match(
        stderr,
        /^qcow2pipe: Cannot open backing file "[^"]+": standard input has no directory that could hold it/,
      );
      assert.ok(broken, "the CLI stopped reading standard input");
      assert.ok(sent < 64 * MiB, `${sent} bytes were taken before the refusal`);
    }
  },
);

qemuTest(
  "references: loops are caught by what the files are, before they are opened again",
  async () => {
    await using s = await scene();
    const { img } = s;
    // a -> b -> a, each name spelled another way: ./a.qcow2 and a link.
    await overlay(join(img, "a.qcow2"), "b.qcow2", "qcow2");
    await overlay(join(img, "b.qcow2"), "./link-a.qcow2", "qcow2");
    await Deno.symlink("a.qcow2", join(img, "link-a.qcow2"));
    // A self-loop spelled through a directory and back.
    await overlay(join(img, "self.qcow2"), "sub/../self.qcow2", "qcow2");
    for (const [image, opens] of [["a.qcow2", 1], ["self.qcow2", 0]] as const) {
      const src = join(img, image);
      for (const format of ["auto", "qcow2"] as const) {
        const opened: string[] = [];
        const openSource = async (name: string) => {
          opened.push(name);
          return await FileSource.open(name);
        };
        await assert.rejects(
          mapImage(src, { format, openSource }),
          /the backing chain loops back/,
        );
        await assert.rejects(
          imageInfo(src, { format, backingChain: true, openSource }),
          /the backing chain loops back/,
        );
        await assert.rejects(
          openImage(src, { format, openSource }),
          /the backing chain loops back/,
        );
        assert.strictEqual(opened.length, 3 * opens, `${image}: ${opened}`);
      }
      for (
        const args of [["map"], ["info", "--backing-chain"], [
          "convert",
          "-O",
          "raw",
        ]]
      ) {
        const r = await runCli([
          ...args,
          src,
          ...(args[0] === "convert" ? [join(s.root, "o.raw")] : []),
        ]);
        assertOneLineError(
          r,
          args[0] === "info"
            // qemu-img's words for the loop `info --backing-chain` finds
            ? /^qcow2pipe: Backing file '[^']+' creates an infinite loop\.$/
            : /Cannot open backing file "[^"]+": the backing chain loops back to /,
        );
      }
    }
  },
);

qemuTest(
  "references: every command refuses a chain that loops through a hard link before opening it again",
  async () => {
    await using s = await scene();
    const { img } = s;
    // a -> b -> hard, a hard link to a: another name, no link to resolve,
    // the same device and inode.
    await overlay(join(img, "a.qcow2"), "b.qcow2", "qcow2");
    await overlay(join(img, "b.qcow2"), "hard.qcow2", "qcow2");
    await Deno.link(join(img, "a.qcow2"), join(img, "hard.qcow2"));
    const src = join(img, "a.qcow2");
    const loops = /the backing chain loops back to /;
    for (const format of ["auto", "qcow2"] as const) {
      const opened: string[] = [];
      const openSource = async (name: string) => {
        opened.push(name);
        return await FileSource.open(name);
      };
      const commands: [string, () => Promise<unknown>][] = [
        ["openImage", () => openImage(src, { format, openSource })],
        [
          "imageInfo",
          () => imageInfo(src, { format, backingChain: true, openSource }),
        ],
        ["mapImage", () => mapImage(src, { format, openSource })],
        [
          "compareImages",
          () =>
            compareImages(src, join(img, "base.raw"), {
              formats: [format, "raw"],
              openSource,
            }),
        ],
      ];
      for (const [what, run] of commands) {
        opened.length = 0;
        await assert.rejects(run(), loops, what);
        // b.qcow2 only: hard.qcow2 is known for a.qcow2 before it is opened.
        assert.deepStrictEqual(opened, [join(img, "b.qcow2")], what);
      }
      // check reads the image's own metadata: it follows no file, so a
      // loop cannot hold it (qemu-img check recurses down this chain).
      const checked = await checkImage(src, { format });
      assert.strictEqual(checked.exitCode, 0, checked.failure);
    }
    for (
      const args of [
        ["map", src],
        ["info", "--backing-chain", src],
        ["convert", "-O", "raw", src, join(s.root, "o.raw")],
      ]
    ) {
      assertOneLineError(
        await runCli(args),
        // qemu-img's words for the loop `info --backing-chain` finds
        args[0] === "info" ? /creates an infinite loop\.$/ : loops,
      );
    }
    const compare = await runCli(["compare", src, join(img, "base.raw")]);
    assert.strictEqual(compare.code, 2, compare.stderr);
    assert.match(compare.stderr.trim(), loops);
    assert.strictEqual(compare.stderr.trim().split("\n").length, 1);
    const check = await runCli(["check", src]);
    assert.strictEqual(check.code, 0, check.stderr);
    await assert.rejects(
      Deno.stat(join(s.root, "o.raw")),
      Deno.errors.NotFound,
    );
  },
);

qemuTest(
  "references: a link swapped in between the check and the open is caught on the opened file",
  async () => {
    await using s = await scene();
    const { img } = s;
    await Deno.writeFile(join(img, "sub", "base.raw"), new Uint8Array(MiB));
    await Deno.copyFile(s.canary, join(s.sys, "sub", "base.raw"));
    await overlay(join(img, "top.qcow2"), "sub/base.raw");
    // The opener swaps sub/ for a link out just before opening the real
    // path that was checked: what it opens is then the outside file.
    const openSource = async (path: string) => {
      assert.strictEqual(path, join(img, "sub", "base.raw"));
      await Deno.rename(join(img, "sub"), join(img, "sub.old"));
      await Deno.symlink(join(s.sys, "sub"), join(img, "sub"));
      return await FileSource.open(path);
    };
    await assert.rejects(
      openImage(join(img, "top.qcow2"), { openSource }),
      (err) => {
        assert.ok(err instanceof Qcow2Error);
        assert.strictEqual(err.code, "UNTRUSTED_REFERENCE");
        assert.match(
          err.message,
          /^Cannot open backing file "[^"]*sub\/base\.raw": it changed while it was opened/,
        );
        return true;
      },
    );
  },
);

qemuTest(
  "references: without file access names are only names, and none may climb with ..",
  async () => {
    await using s = await scene();
    const images: Record<string, string> = {};
    for (
      const name of [
        "sub/base.raw",
        "a/../base.raw",
        "/x/base.raw",
        "a/..\\..\\x",
      ]
    ) {
      const path = join(s.root, `${Object.keys(images).length}.qcow2`);
      await overlay(path, name);
      images[name] = path;
    }
    // A fresh process with core.ts alone: no file module is loaded.
    const script = `
      const core = await import(${
      JSON.stringify(new URL("../../core.ts", import.meta.url).href)
    });
      const images = ${JSON.stringify(images)};
      for (const [name, path] of Object.entries(images)) {
        const opened = [];
        const openSource = (n) => {
          opened.push(n);
          return Promise.resolve(new core.BytesSource(new Uint8Array(1 << 20), n));
        };
        try {
          const image = await core.openImage(await Deno.readFile(path), { relativeTo: "/vm/", openSource });
          await image.close();
          console.log(name, "opened", opened.join(","));
        } catch (err) {
          console.log(name, err.code, err.message);
        }
      }
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
    assert.deepStrictEqual(lines, [
      "sub/base.raw opened /vm/sub/base.raw",
      `a/../base.raw UNTRUSTED_REFERENCE Cannot open backing file "a/../base.raw": its name has a ".." component, which cannot be resolved without file access; its format was probed: pass -f qcow2 to follow it`,
      `/x/base.raw UNTRUSTED_REFERENCE Cannot open backing file "/x/base.raw": it is outside the directory of <buffer>; its format was probed: pass -f qcow2 to follow it`,
      `a/..\\..\\x UNTRUSTED_REFERENCE Cannot open backing file "a/..\\..\\x": its name has a ".." component, which cannot be resolved without file access; its format was probed: pass -f qcow2 to follow it`,
    ]);
  },
);
