// Untrusted images: a raw disk whose guest wrote a qcow2 header naming a
// host file must not make us read that file (QEMU's CVE-2008-2004). A
// probed image may only lead to files inside its own directory; `-f qcow2`
// restores QEMU's rules; `-f raw` reads the disk as the raw bytes it is.

import assert from "node:assert";
import { join } from "node:path";
import { openImage, Qcow2Error } from "../../mod.ts";
import { imageInfo, mapImage } from "../../lib/tools/mod.ts";
import { qemuCompareIdentical, qemuImg, qemuIo, qemuTest } from "../_qemu.ts";
import { assertOneLineError, partialFiles, runCli } from "../writer/_cli.ts";
import { serveFiles } from "../streams/_server.ts";
import { prng } from "./_helpers.ts";

const MiB = 1024 * 1024;

/** Bytes no image here holds by chance: the "host secret". */
function secretBytes(): Uint8Array {
  const next = prng(0x5ec2e7);
  const out = new Uint8Array(MiB);
  for (let i = 0; i < out.length; i++) out[i] = next() & 0xff;
  return out;
}

/** Pads a qcow2 file to 1 MiB: a raw disk whose first bytes a guest wrote. */
async function asRawDisk(path: string): Promise<void> {
  const bytes = await Deno.readFile(path);
  const disk = new Uint8Array(MiB);
  disk.set(bytes.subarray(0, MiB));
  await Deno.writeFile(path, disk);
}

interface Attack {
  root: string;
  img: string;
  secret: string;
  secretBytes: Uint8Array;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * `root/secret/secret.img` (the host file) and, in `root/img/`, raw disks
 * that are qcow2 headers naming it: by absolute path (abs.raw), by a
 * relative path with `../` (rel.raw), and as an external data file
 * (data.raw, every cluster mapped into it).
 */
async function attack(): Promise<Attack> {
  const root = await Deno.makeTempDir({ prefix: "qcow2pipe-untrusted-" });
  const img = join(root, "img");
  const secret = join(root, "secret", "secret.img");
  await Deno.mkdir(img);
  await Deno.mkdir(join(root, "secret"));
  const bytes = secretBytes();
  await Deno.writeFile(secret, bytes);
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    secret,
    "-F",
    "raw",
    join(img, "abs.raw"),
    "1M",
  );
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    "../secret/secret.img",
    "-F",
    "raw",
    join(img, "rel.raw"),
    "1M",
  );
  // The data file: mapped cluster by cluster, then replaced by the secret.
  const dataFile = join(root, "secret", "data.img");
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    `data_file=${dataFile}`,
    join(img, "data.raw"),
    "1M",
  );
  await qemuIo(join(img, "data.raw"), ["write -P 0x11 0 1M"]);
  await Deno.writeFile(dataFile, bytes);
  for (const name of ["abs.raw", "rel.raw", "data.raw"]) {
    await asRawDisk(join(img, name));
  }
  return {
    root,
    img,
    secret,
    secretBytes: bytes,
    async [Symbol.asyncDispose]() {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

const CASES = [
  { disk: "abs.raw", what: "backing file", names: /secret\/secret\.img/ },
  { disk: "rel.raw", what: "backing file", names: /\.\.\/secret\/secret\.img/ },
  {
    disk: "data.raw",
    what: "external data file",
    names: /secret\/data\.img/,
  },
];

/** The line that refuses a probed image's reference. */
function refusal(what: string, names: RegExp): RegExp {
  return new RegExp(
    `Cannot open ${what} "[^"]*${names.source}[^"]*": it is outside the directory of .*pass -f qcow2 to follow it`,
  );
}

qemuTest(
  "untrusted: convert refuses a raw disk's host references unless -f says",
  async (t) => {
    await using a = await attack();
    for (const { disk, what, names } of CASES) {
      const src = join(a.img, disk);
      const before = await Deno.readFile(src);
      await t.step(`${disk}: probed, refused with one line`, async () => {
        for (const out of ["out.qcow2", "out.raw"]) {
          const r = await runCli(["convert", src, join(a.root, out)]);
          assertOneLineError(r, refusal(what, names));
          await assert.rejects(Deno.stat(join(a.root, out)));
        }
        assert.deepStrictEqual(await partialFiles(a.root), []);
      });
      await t.step(`${disk}: -f raw reads the disk's own bytes`, async () => {
        const out = join(a.root, `${disk}.qcow2`);
        const r = await runCli(["convert", "-q", "-f", "raw", src, out]);
        assert.strictEqual(r.code, 0, r.stderr);
        await qemuCompareIdentical(src, out, ["raw", "qcow2"]);
        const back = join(a.root, `${disk}.back`);
        const b = await runCli([
          "convert",
          "-q",
          "-f",
          "raw",
          src,
          "-O",
          "raw",
          back,
        ]);
        assert.strictEqual(b.code, 0, b.stderr);
        assert.deepStrictEqual(await Deno.readFile(back), before);
      });
      await t.step(`${disk}: -f qcow2 reads what QEMU reads`, async () => {
        const ours = join(a.root, `${disk}.ours.raw`);
        const theirs = join(a.root, `${disk}.qemu.raw`);
        const r = await runCli([
          "convert",
          "-q",
          "-f",
          "qcow2",
          src,
          "-O",
          "raw",
          ours,
        ]);
        assert.strictEqual(r.code, 0, r.stderr);
        await qemuImg("convert", "-f", "qcow2", "-O", "raw", src, theirs);
        const expected = await Deno.readFile(theirs);
        // The reference really holds the host file: the case is meaningful.
        assert.deepStrictEqual(expected, a.secretBytes);
        assert.deepStrictEqual(await Deno.readFile(ours), expected);
      });
      assert.deepStrictEqual(
        await Deno.readFile(src),
        before,
        "source unchanged",
      );
    }
  },
);

qemuTest(
  "untrusted: info, map and compare refuse the same references",
  async () => {
    await using a = await attack();
    for (const { disk, what, names } of CASES) {
      const src = join(a.img, disk);
      const pattern = refusal(what, names);
      const map = await runCli(["map", "--json", src]);
      assertOneLineError(map, pattern);
      const cmp = await runCli(["compare", src, a.secret]);
      assert.strictEqual(cmp.code, 2, cmp.stderr);
      assert.match(cmp.stderr.trim(), pattern);
      assert.strictEqual(cmp.stderr.trim().split("\n").length, 1);
      // With the format given as raw, the disk is its bytes.
      const rawMap = await runCli(["map", "--json", "-f", "raw", src]);
      assert.strictEqual(rawMap.code, 0, rawMap.stderr);
      const entries = JSON.parse(new TextDecoder().decode(rawMap.stdout));
      assert.strictEqual(entries.at(-1).start + entries.at(-1).length, MiB);
      const same = await runCli([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src,
        src,
      ]);
      assert.strictEqual(same.code, 0, same.stderr);
    }
    const chain = await runCli([
      "info",
      "--backing-chain",
      join(a.img, "abs.raw"),
    ]);
    assertOneLineError(chain, refusal("backing file", /secret\/secret\.img/));
    // info without the chain only names the backing file, as qemu-img does.
    const info = await runCli(["info", join(a.img, "abs.raw")]);
    assert.strictEqual(info.code, 0, info.stderr);
    assert.match(new TextDecoder().decode(info.stdout), /backing file: \//);
    const rawInfo = await runCli(["info", "-f", "raw", join(a.img, "abs.raw")]);
    assert.match(new TextDecoder().decode(rawInfo.stdout), /file format: raw/);
    // A format we do not read is a usage error, in every command.
    for (const command of ["convert", "info", "check", "map"]) {
      const args = command === "convert"
        ? [command, "-f", "vmdk", join(a.img, "abs.raw"), join(a.root, "x.raw")]
        : [command, "-f", "vmdk", join(a.img, "abs.raw")];
      assertOneLineError(
        await runCli(args),
        /Cannot parse -f: image format "vmdk" is not raw, qcow2/,
      );
    }
    // check: -f raw has no checks, as in qemu-img.
    const check = await runCli(["check", "-f", "raw", join(a.img, "abs.raw")]);
    assert.strictEqual(check.code, 63, check.stderr);
  },
);

qemuTest("untrusted: the library is safe by default", async () => {
  await using a = await attack();
  for (const { disk, what } of CASES) {
    const src = join(a.img, disk);
    await assert.rejects(openImage(src), (err) => {
      assert.ok(err instanceof Qcow2Error);
      assert.strictEqual(err.code, "UNTRUSTED_REFERENCE");
      assert.match(err.message, new RegExp(`Cannot open ${what}`));
      return true;
    });
    {
      await using raw = await openImage(src, { format: "raw" });
      assert.strictEqual(raw.format, "raw");
      assert.deepStrictEqual(
        await raw.readAt(0, MiB),
        await Deno.readFile(src),
      );
    }
    {
      await using given = await openImage(src, { format: "qcow2" });
      assert.deepStrictEqual(await given.readAt(0, MiB), a.secretBytes);
    }
    await assert.rejects(
      openImage(src, { format: "qcow2", references: "contained" }),
      /outside the directory/,
    );
    await assert.rejects(
      openImage(src, { format: "qcow2", references: "none" }),
      /turned off/,
    );
    await assert.rejects(mapImage(src), /pass -f qcow2/);
    const entries = await mapImage(src, { format: "raw" });
    assert.strictEqual(entries.at(-1)!.start + entries.at(-1)!.length, MiB);
  }
  await assert.rejects(
    imageInfo(join(a.img, "abs.raw"), { backingChain: true }),
    /pass -f qcow2/,
  );
  const given = await imageInfo(join(a.img, "abs.raw"), {
    backingChain: true,
    format: "qcow2",
  });
  assert.strictEqual(given.chain?.[0].filename, a.secret);
});

qemuTest(
  "untrusted: chains inside the directory open; links and ../ out do not",
  async () => {
    await using a = await attack();
    const sub = join(a.img, "base");
    await Deno.mkdir(sub);
    await qemuImg("create", "-q", "-f", "qcow2", join(sub, "b.qcow2"), "1M");
    await qemuIo(join(sub, "b.qcow2"), ["write -P 0x42 0 64k"]);
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base/b.qcow2",
      "-F",
      "qcow2",
      join(a.img, "top.qcow2"),
    );
    {
      await using image = await openImage(join(a.img, "top.qcow2"));
      assert.strictEqual((await image.readAt(0, 1))[0], 0x42);
    }
    // A symbolic link inside the directory that leads out of it.
    await Deno.symlink(join(a.root, "secret"), join(a.img, "link"));
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-b",
      "link/secret.img",
      "-F",
      "raw",
      join(a.img, "linked.qcow2"),
      "1M",
    );
    const r = await runCli([
      "convert",
      join(a.img, "linked.qcow2"),
      join(a.root, "o.raw"),
    ]);
    assertOneLineError(r, refusal("backing file", /link\/secret\.img/));
    const given = await runCli([
      "convert",
      "-q",
      "-f",
      "qcow2",
      join(a.img, "linked.qcow2"),
      join(a.root, "o.raw"),
    ]);
    assert.strictEqual(given.code, 0, given.stderr);
    assert.deepStrictEqual(
      await Deno.readFile(join(a.root, "o.raw")),
      a.secretBytes,
    );
  },
);

/** Turns an image's backing-format extension into an unknown one. */
async function dropBackingFormat(path: string): Promise<void> {
  const bytes = await Deno.readFile(path);
  const magic = [0xe2, 0x79, 0x2a, 0xca];
  for (let i = 104; i + 4 <= 65536; i += 8) {
    if (magic.every((b, k) => bytes[i + k] === b)) {
      bytes.set([0x0b, 0xad, 0xf0, 0x0d], i);
      await Deno.writeFile(path, bytes);
      return;
    }
  }
  throw new Error(`no backing format extension in ${path}`);
}

qemuTest(
  "untrusted: trust passes down a chain only through named formats",
  async () => {
    await using a = await attack();
    // top -> mid.qcow2 (same directory, named qcow2) -> the host file.
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      a.secret,
      "-F",
      "raw",
      join(a.img, "mid.qcow2"),
    );
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "mid.qcow2",
      "-F",
      "qcow2",
      join(a.img, "top.qcow2"),
    );
    const top = join(a.img, "top.qcow2");
    const out = join(a.root, "o.raw");
    // Probed top: mid is inside the directory, but its own reference is
    // held to mid's directory too, whatever format top names for it.
    const probed = await runCli(["convert", top, out]);
    assertOneLineError(probed, refusal("backing file", /secret\/secret\.img/));
    // Given top and named formats all the way: QEMU's rules.
    const given = await runCli(["convert", "-q", "-f", "qcow2", top, out]);
    assert.strictEqual(given.code, 0, given.stderr);
    assert.deepStrictEqual(await Deno.readFile(out), a.secretBytes);
    await Deno.remove(out);
    // Without a named format, mid is probed: held to its directory.
    await dropBackingFormat(top);
    const qemu = join(a.root, "qemu.raw");
    await qemuImg("convert", "-f", "qcow2", "-O", "raw", top, qemu);
    assert.deepStrictEqual(await Deno.readFile(qemu), a.secretBytes);
    const unnamed = await runCli(["convert", "-f", "qcow2", top, out]);
    assertOneLineError(unnamed, refusal("backing file", /secret\/secret\.img/));
  },
);

qemuTest(
  "untrusted: a probed qcow2 from standard input follows no file; with -f qcow2 names resolve against the working directory",
  async () => {
    await using a = await attack();
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      join(a.img, "base.qcow2"),
      "1M",
    );
    await qemuIo(join(a.img, "base.qcow2"), ["write -P 0x37 0 1M"]);
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base.qcow2",
      "-F",
      "qcow2",
      join(a.img, "top.qcow2"),
    );
    await qemuIo(join(a.img, "top.qcow2"), ["write -P 0x38 64k 64k"]);
    const top = await Deno.readFile(join(a.img, "top.qcow2"));
    const expected = join(a.root, "expected.raw");
    await qemuImg(
      "convert",
      "-f",
      "qcow2",
      "-O",
      "raw",
      join(a.img, "top.qcow2"),
      expected,
    );
    const out = join(a.root, "o.raw");
    // Probed: a pipe has no directory, so not even a name beside the
    // working directory's files is followed.
    const probed = await runCli(["convert", "-", "-O", "raw", out], {
      stdin: top,
      cwd: a.img,
    });
    assertOneLineError(
      probed,
      /Cannot open backing file "base\.qcow2": standard input has no directory that could hold it; its format was probed: pass -f qcow2 to follow it/,
    );
    await assert.rejects(Deno.stat(out));
    // -f qcow2: QEMU's rules, relative to the working directory.
    const given = await runCli(
      ["convert", "-q", "-f", "qcow2", "-", "-O", "raw", out],
      { stdin: top, cwd: a.img },
    );
    assert.strictEqual(given.code, 0, given.stderr);
    assert.deepStrictEqual(
      await Deno.readFile(out),
      await Deno.readFile(expected),
    );
    // From another directory the name is not found there, and the spool
    // directory is never searched.
    const elsewhere = await runCli(
      ["convert", "-q", "-f", "qcow2", "-", "-O", "raw", out + "2"],
      { stdin: top, cwd: a.root },
    );
    assertOneLineError(
      elsewhere,
      /Cannot open backing file "[^"]*base\.qcow2": no such file/,
    );
    assert.doesNotMatch(elsewhere.stderr, /qcow2pipe-stream-/);
    assert.ok(elsewhere.stderr.includes(join(a.root, "base.qcow2")));
    // A reference out of the working directory: refused when probed, QEMU's
    // rules with -f qcow2.
    const rel = await Deno.readFile(join(a.img, "rel.raw"));
    const refused = await runCli(["convert", "-", "-O", "raw", out + "3"], {
      stdin: rel,
      cwd: a.img,
    });
    assertOneLineError(
      refused,
      /Cannot open backing file "\.\.\/secret\/secret\.img": standard input has no directory .*pass -f qcow2/,
    );
    const allowed = await runCli(
      ["convert", "-q", "-f", "qcow2", "-", "-O", "raw", out + "4"],
      { stdin: rel, cwd: a.img },
    );
    assert.strictEqual(allowed.code, 0, allowed.stderr);
    assert.deepStrictEqual(await Deno.readFile(out + "4"), a.secretBytes);
    // -f raw from a pipe: the bytes as they are.
    const raw = await runCli([
      "convert",
      "-q",
      "-f",
      "raw",
      "-",
      "-O",
      "raw",
      out + "5",
    ], {
      stdin: rel,
      cwd: a.img,
    });
    assert.strictEqual(raw.code, 0, raw.stderr);
    assert.deepStrictEqual(await Deno.readFile(out + "5"), rel);
  },
);

qemuTest(
  "untrusted: over HTTP, names stay on the image's origin and never reach local files",
  async () => {
    await using a = await attack();
    const made: Record<string, Uint8Array> = {};
    const make = async (name: string, backing: string) => {
      const path = join(a.root, name.replaceAll("/", "_"));
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        backing,
        "-F",
        "raw",
        path,
        "1M",
      );
      made[name] = await Deno.readFile(path);
    };
    await make("img/abs.qcow2", "/secret/secret.img");
    await make("img/local.qcow2", `file://${a.secret}`);
    await make("img/other.qcow2", "http://127.0.0.2:9/secret.img");
    made["secret/secret.img"] = a.secretBytes;
    await using server = serveFiles(made);
    const out = join(a.root, "o.raw");
    // An absolute path resolves to the same origin: fetched from the server.
    const same = await runCli([
      "convert",
      "-q",
      server.url("img/abs.qcow2"),
      "-O",
      "raw",
      out,
    ]);
    assert.strictEqual(same.code, 0, same.stderr);
    assert.deepStrictEqual(await Deno.readFile(out), a.secretBytes);
    assert.ok(
      server.requests.some((r) => r.startsWith("GET secret/secret.img")),
    );
    // A local file is never read for a remote image, even with -f qcow2.
    for (const format of [[], ["-f", "qcow2"]]) {
      const local = await runCli([
        "convert",
        ...format,
        server.url("img/local.qcow2"),
        "-O",
        "raw",
        out + "2",
      ]);
      assertOneLineError(
        local,
        /an image read over HTTP may only name http\(s\) files/,
      );
    }
    // Another origin only with -f qcow2 (then it fails to connect).
    const other = await runCli([
      "convert",
      server.url("img/other.qcow2"),
      "-O",
      "raw",
      out + "3",
    ]);
    assertOneLineError(
      other,
      /it is on another origin than .*pass -f qcow2 to follow it/,
    );
    const otherGiven = await runCli([
      "convert",
      "-f",
      "qcow2",
      server.url("img/other.qcow2"),
      "-O",
      "raw",
      out + "3",
    ]);
    assertOneLineError(
      otherGiven,
      /Cannot open backing file "http:\/\/127\.0\.0\.2:9\/secret\.img"/,
    );
  },
);
