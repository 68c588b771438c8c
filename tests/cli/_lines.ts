// Real qemu-img command lines, run once with `qemu-img` and once with our
// CLI in its place, each in a directory of its own holding the same
// images (hard links to one set of fixtures made by qemu-img and qemu-io),
// and judged by qemu-img: the same output and exit status, or output
// images that qemu-img finds identical, clean and alike.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCheckClean, qemuImg, qemuIo, runStatus } from "../_qemu.ts";
import { serveFiles, type TestServer } from "../streams/_server.ts";
import { pattern } from "../tools/_helpers.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;
const MiB = 1024 * 1024;

/** What a run printed and returned. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** How qemu-img judges a line. */
export type Judge =
  /** The same standard output and exit status. */
  | { kind: "output" }
  /** Output images with the same content, clean, with the same settings. */
  | {
    kind: "image";
    dst: string;
    format: "raw" | "qcow2";
    /** Compressed clusters expected in both (or in neither). */
    compressed?: boolean;
    /**
     * Also the same: `bytes`, the two files byte for byte; `size`, their
     * sizes; `map`, `map --output=json` with host offsets left out (and
     * neighbours alike once they are out, joined).
     */
    same?: "bytes" | "size" | "map";
  }
  /** A delta image: as "image", over the same chain, and no larger. */
  | { kind: "delta"; dst: string }
  /** Both refuse: non-zero exit, no output image. */
  | { kind: "refused"; dst: string }
  /**
   * Both fail with qemu-img's words: the same exit status and the same
   * message, the program's name left out.
   */
  | { kind: "message" };

/** One command line, and how it is judged. */
export interface Line {
  /** qemu-img's arguments, split on spaces; `$URL/` names the server. */
  line: string;
  judge: Judge;
  /** Fixtures copied (not linked), as the line writes into them. */
  copy?: string[];
  /** Directories made first. */
  mkdir?: string[];
  /**
   * The line has -p: both print qemu-img's steps on standard output
   * (`    (NN.NN/100%)` and a carriage return). `exact`: the same steps;
   * otherwise the same first and last step, and the same text once the
   * steps are taken out.
   */
  progress?: boolean | "exact";
}

/** The images every line can name, made by qemu-img and qemu-io. */
export interface Fixtures extends AsyncDisposable {
  dir: string;
  server: TestServer;
  names: string[];
}

/**
 * Builds the fixtures:
 * - disk.raw: 8 MiB with data, written zeros and holes
 * - disk.qcow2: the same through qemu-img, with snapshots "first" (ID 1)
 *   and "1" (ID 2), then changed
 * - packed.qcow2: disk.raw compressed by qemu-img
 * - copy.qcow2: disk.qcow2's current state converted again by qemu-img
 * - big.qcow2: an empty 16 MiB image
 * - base.qcow2, base.raw: a base image; new.raw: base with clusters
 *   changed, zeroed over data, written over holes, and 1 MiB more
 * - top.qcow2: over base.qcow2, with writes of its own
 * - target.raw (12 MiB of data) and zero.raw (12 MiB of zeros): existing
 *   targets for -n
 * - the images of makeBrokenImages()
 */
export async function makeFixtures(): Promise<Fixtures> {
  const dir = await Deno.makeTempDir({ prefix: "qcow2pipe-lines-" });
  const at = (name: string) => join(dir, name);
  const disk = new Uint8Array(8 * MiB);
  disk.set(pattern(MiB, 1), 0);
  disk.set(pattern(512 * 1024, 2), 3 * MiB);
  disk.set(pattern(1000, 3), 8 * MiB - 1000);
  {
    // Written zeros at 5 MiB (allocated), holes elsewhere.
    using f = await Deno.open(at("disk.raw"), { write: true, create: true });
    await f.truncate(disk.length);
    for (const [start, end] of [[0, MiB], [3 * MiB, 3.5 * MiB]]) {
      await f.seek(start, Deno.SeekMode.Start);
      await f.write(disk.subarray(start, end));
    }
    await f.seek(5 * MiB, Deno.SeekMode.Start);
    await f.write(new Uint8Array(256 * 1024));
    await f.seek(8 * MiB - 1000, Deno.SeekMode.Start);
    await f.write(disk.subarray(8 * MiB - 1000));
  }
  await qemuImg(
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    at("disk.raw"),
    at("disk.qcow2"),
  );
  await qemuImg("snapshot", "-c", "first", at("disk.qcow2"));
  await qemuIo(at("disk.qcow2"), ["write -q -P 0x21 0 64k"]);
  await qemuImg("snapshot", "-c", "1", at("disk.qcow2"));
  await qemuIo(at("disk.qcow2"), [
    "write -q -P 0x22 0 64k",
    "write -q -P 0x23 6M 64k",
  ]);
  await qemuImg(
    "convert",
    "-f",
    "qcow2",
    "-O",
    "qcow2",
    at("disk.qcow2"),
    at("copy.qcow2"),
  );
  await qemuImg(
    "convert",
    "-c",
    "-f",
    "raw",
    "-O",
    "qcow2",
    at("disk.raw"),
    at("packed.qcow2"),
  );
  await qemuImg("create", "-q", "-f", "qcow2", at("big.qcow2"), "16M");

  await Deno.link(at("disk.raw"), at("base.raw"));
  await qemuImg(
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    at("disk.raw"),
    at("base.qcow2"),
  );
  const now = new Uint8Array(9 * MiB);
  now.set(disk);
  now.fill(0x77, MiB / 2 + 100, MiB / 2 + 300); // changed inside data
  now.fill(0, 128 * 1024, 256 * 1024); // zeroed over data
  now.fill(0x42, 6 * MiB, 6 * MiB + 70_000); // written over a hole
  now.fill(0x43, 8 * MiB + 5, 8 * MiB + 9); // past the base's end
  await Deno.writeFile(at("new.raw"), now);

  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    "base.qcow2",
    "-F",
    "qcow2",
    at("top.qcow2"),
    "8M",
  );
  await qemuIo(at("top.qcow2"), [
    "write -q -P 0x31 1M 100k",
    "write -q -z 3M 64k",
  ]);
  await Deno.writeFile(at("target.raw"), pattern(12 * MiB, 9));
  {
    using f = await Deno.open(at("zero.raw"), { write: true, create: true });
    await f.truncate(12 * MiB);
  }
  await makeBrokenImages(dir);
  const names = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  const served: Record<string, Uint8Array> = {};
  for (const name of ["disk.raw", "disk.qcow2", "top.qcow2", "base.qcow2"]) {
    served[name] = await Deno.readFile(at(name));
  }
  const server = serveFiles(served);
  return {
    dir,
    server,
    names,
    async [Symbol.asyncDispose]() {
      await server[Symbol.asyncDispose]();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Overwrites bytes of a file at `offset`. */
async function patch(path: string, offset: number, bytes: Uint8Array) {
  using f = await Deno.open(path, { write: true });
  await f.seek(offset, Deno.SeekMode.Start);
  await f.write(bytes);
}

/** A big-endian unsigned integer of `length` bytes. */
function be(value: bigint, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = length - 1; i >= 0; i--, value >>= 8n) {
    out[i] = Number(value & 0xffn);
  }
  return out;
}

/**
 * Images qemu-img refuses to open, or reads in its own way, made by
 * qemu-img and changed in one field (the conditions of iotests 036, 043,
 * 054, 080 and 114):
 * - feature.qcow2: incompatible feature bit 63 set
 * - shortl1.qcow2: l1_size 0 for a 64 MiB disk
 * - huge.qcow2: a virtual size of 2^60 bytes
 * - loop.qcow2: its own backing file
 * - twofmt.qcow2: two backing format extensions, raw then foo
 * - named.qcow2: bit 63 set, and named "Test feature" by a second feature
 *   name table, of one entry cut short
 */
async function makeBrokenImages(dir: string) {
  const at = (name: string) => join(dir, name);
  for (
    const [name, size] of [["feature", "1M"], ["shortl1", "64M"], [
      "huge",
      "4G",
    ], ["loop", "1M"]]
  ) {
    await qemuImg("create", "-q", "-f", "qcow2", at(`${name}.qcow2`), size);
  }
  await patch(at("feature.qcow2"), 72, be(1n << 63n, 8));
  await patch(at("shortl1.qcow2"), 36, be(0n, 4));
  await patch(at("huge.qcow2"), 24, be(1n << 60n, 8));
  await qemuImg(
    "rebase",
    "-u",
    "-b",
    "loop.qcow2",
    "-F",
    "qcow2",
    at("loop.qcow2"),
  );
  const create = "create -q -f qcow2 -b base.raw -F raw".split(" ");
  await qemuImg(...create, at("twofmt.qcow2"), "8M");
  await addExtension(at("twofmt.qcow2"), 0xe2792aca, "foo");
  // Bit 63 named by a feature name table of one entry cut short (iotest
  // 036): its name without the padding of a whole entry.
  await qemuImg("create", "-q", "-f", "qcow2", at("named.qcow2"), "1M");
  await patch(at("named.qcow2"), 72, be(1n << 63n, 8));
  await addExtension(at("named.qcow2"), 0x6803f857, "\x00\x3fTest feature");
}

/**
 * Adds a header extension before the end marker of a qcow2 image made by
 * qemu-img (a later one of a kind replaces an earlier one in QEMU's eyes):
 * the end marker and the backing file name after it move on.
 */
async function addExtension(path: string, type: number, data: string) {
  const bytes = await Deno.readFile(path);
  const view = new DataView(bytes.buffer);
  let end = view.getUint32(100);
  while (view.getUint32(end) !== 0) {
    end += 8 + Math.ceil(view.getUint32(end + 4) / 8) * 8;
  }
  const body = new Uint8Array([...data].map((c) => c.charCodeAt(0)));
  const ext = new Uint8Array(8 + Math.ceil(body.length / 8) * 8);
  ext.set(be(BigInt(type), 4), 0);
  ext.set(be(BigInt(body.length), 4), 4);
  ext.set(body, 8);
  const nameAt = Number(view.getBigUint64(8));
  const tail = bytes.slice(end, Math.max(end + 8, nameAt + view.getUint32(16)));
  await patch(path, end, new Uint8Array([...ext, ...tail]));
  if (nameAt !== 0) await patch(path, 8, be(BigInt(nameAt + ext.length), 8));
}

async function runIn(
  cwd: string,
  cmd: string,
  args: string[],
): Promise<RunResult> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/**
 * Runs qemu-img in `cwd`. Over http(s), QEMU 7.2's curl driver sometimes
 * never finishes a transfer (seen here in about one run of ten, against
 * Deno's and Node's HTTP servers alike): such a run is killed after 60 s
 * and run again, up to three times. Only the reference is retried; our
 * CLI's run is never repeated.
 */
async function runQemuImg(cwd: string, args: string[]): Promise<RunResult> {
  if (!args.some((a) => /^https?:\/\//.test(a))) {
    return await runIn(cwd, "qemu-img", args);
  }
  for (let attempt = 1;; attempt++) {
    const r = await runIn(cwd, "timeout", [
      "-s",
      "KILL",
      "60",
      "qemu-img",
      ...args,
    ]);
    if (r.code !== 137 || attempt === 3) return r;
  }
}

/** A directory with the fixtures linked (or copied) in. */
async function workDir(fx: Fixtures, line: Line, side: string) {
  const dir = await Deno.makeTempDir({ dir: fx.dir, prefix: `${side}-` });
  for (const name of fx.names) {
    if (line.copy?.includes(name)) {
      await Deno.copyFile(join(fx.dir, name), join(dir, name));
    } else {
      await Deno.link(join(fx.dir, name), join(dir, name));
    }
  }
  for (const d of line.mkdir ?? []) await Deno.mkdir(join(dir, d));
  return dir;
}

/** The words of a line, with the server's URL in place of `$URL/`. */
export function words(fx: Fixtures, line: string): string[] {
  return line.replaceAll("$URL/", fx.server.url("")).split(" ");
}

/** What qemu-img's `info --output=json` says that the settings decide. */
function settings(info: Record<string, unknown>) {
  const data = ((info["format-specific"] as Record<string, unknown>)
    ?.data ?? {}) as Record<string, unknown>;
  return {
    format: info.format,
    "virtual-size": info["virtual-size"],
    "cluster-size": info["cluster-size"],
    "backing-filename": info["backing-filename"],
    "backing-filename-format": info["backing-filename-format"],
    compat: data.compat,
    "compression-type": data["compression-type"],
    "refcount-bits": data["refcount-bits"],
    "lazy-refcounts": data["lazy-refcounts"],
    "extended-l2": data["extended-l2"],
  };
}

async function qemuJson(...args: string[]) {
  return JSON.parse(await qemuImg(...args));
}

/** Runs a line with qemu-img and with our CLI, and has qemu-img judge. */
export async function judgeLine(fx: Fixtures, line: Line): Promise<void> {
  const args = words(fx, line.line);
  const [q, o] = await Promise.all([
    workDir(fx, line, "q"),
    workDir(fx, line, "o"),
  ]);
  const [theirs, ours] = await Promise.all([
    runQemuImg(q, args),
    runIn(o, Deno.execPath(), ["run", "-A", "--quiet", CLI, ...args]),
  ]);
  const what = `${line.line}\nqemu-img: ${theirs.stderr}\nours: ${ours.stderr}`;
  const judge = line.judge;
  if (judge.kind === "refused") {
    assert.notStrictEqual(theirs.code, 0, what);
    assert.notStrictEqual(ours.code, 0, what);
    assert.strictEqual(ours.stderr.trimEnd().split("\n").length, 1, what);
    await assert.rejects(Deno.stat(join(o, judge.dst)), Deno.errors.NotFound);
    return;
  }
  assert.strictEqual(ours.code, theirs.code, what);
  if (judge.kind === "message") {
    const message = (r: RunResult) =>
      r.stderr.replace(/^(qemu-img|qcow2pipe): /gm, "");
    assert.notStrictEqual(ours.code, 0, what);
    assert.strictEqual(message(ours), message(theirs), what);
    return;
  }
  if (line.progress === true) {
    const step = /^ {4}\(\d+\.\d\d\/100%\)\r/;
    const steps = (out: string) => out.match(/ {4}\(\d+\.\d\d\/100%\)\r/g);
    assert.match(ours.stdout, step, what);
    assert.strictEqual(
      steps(ours.stdout)?.[0],
      steps(theirs.stdout)?.[0],
      what,
    );
    assert.strictEqual(
      steps(ours.stdout)?.at(-1),
      steps(theirs.stdout)?.at(-1),
    );
    const text = (out: string) =>
      out.replaceAll(/ {4}\(\d+\.\d\d\/100%\)\r/g, "");
    assert.strictEqual(text(ours.stdout), text(theirs.stdout), what);
  } else {
    assert.strictEqual(ours.stdout, theirs.stdout, what);
  }
  // qemu-img prints nothing on standard error after a success, and no
  // more do we, off a terminal.
  if (ours.code === 0) assert.strictEqual(ours.stderr, theirs.stderr, what);
  if (judge.kind === "output") {
    if (ours.code !== 0) {
      assert.strictEqual(ours.stderr.trimEnd().split("\n").length, 1, what);
    }
    return;
  }
  assert.strictEqual(theirs.code, 0, what);
  const format = judge.kind === "delta" ? "qcow2" : judge.format;
  const [a, b] = [join(q, judge.dst), join(o, judge.dst)];
  // The same guest content, each image read through its own chain.
  const same = await runStatus("qemu-img", [
    "compare",
    "-f",
    format,
    "-F",
    format,
    a,
    b,
  ]);
  assert.strictEqual(same.code, 0, `${what}\n${same.stdout}${same.stderr}`);
  if (format === "raw") return;
  await qemuCheckClean(b);
  const chain = judge.kind === "delta" ? ["--backing-chain"] : [];
  const [ti, oi] = await Promise.all(
    [a, b].map((p) => qemuJson("info", "--output=json", ...chain, p)),
  );
  const list = (x: unknown) => (Array.isArray(x) ? x : [x]).map(settings);
  assert.deepStrictEqual(list(oi), list(ti), what);
  if (judge.kind === "image") {
    const [tc, oc] = await Promise.all(
      [a, b].map((p) => qemuJson("check", "--output=json", p)),
    );
    const compressed = (r: Record<string, number>) =>
      (r["compressed-clusters"] ?? 0) > 0;
    assert.strictEqual(compressed(tc), judge.compressed ?? false, what);
    assert.strictEqual(compressed(oc), compressed(tc), what);
    if (judge.same === "bytes") {
      const [ta, ob] = await Promise.all([a, b].map((p) => Deno.readFile(p)));
      assert.ok(
        ta.length === ob.length && ta.every((x, i) => x === ob[i]),
        `${what}\nthe files differ`,
      );
    } else if (judge.same === "size") {
      const [ts, os] = await Promise.all([a, b].map((p) => Deno.stat(p)));
      assert.strictEqual(os.size, ts.size, what);
    } else if (judge.same === "map") {
      const map = async (p: string) => {
        const runs: Record<string, unknown>[] = [];
        const extents = JSON.parse(await qemuImg("map", "--output=json", p));
        for (const { offset: _, start, length, ...flags } of extents) {
          const last = runs.at(-1);
          if (last && JSON.stringify(last.flags) === JSON.stringify(flags)) {
            (last.length as number) += length;
          } else runs.push({ start, length, flags });
        }
        return runs;
      };
      assert.deepStrictEqual(await map(b), await map(a), what);
    }
  } else {
    // Ours holds only what differs from the base: no larger than QEMU's.
    const [ts, os] = await Promise.all([Deno.stat(a), Deno.stat(b)]);
    assert.ok(os.size <= ts.size, `${what}\nours ${os.size} > ${ts.size}`);
  }
}
