// Real file systems for the tests of the in-kernel copy (not a test file):
// ext4, XFS and btrfs made on files and loop-mounted (root only), an image
// with data, holes, a zero cluster and a compressed cluster with qemu-img's
// own expansion of it, the CLI run under strace to see which system calls
// moved the bytes, and the shared extents filefrag reports.

import assert from "node:assert";
import { dirname, join } from "node:path";
import { HAVE_QEMU, qemuImg, qemuIo, runStatus, toolTest } from "../_qemu.ts";
import { canLoop, have, loop, mount, sh } from "../sparsify/_disks.ts";
import { SMALL_FS_ENV } from "../sparsify/_xfs.ts";
import { mixedBytes } from "../reader/_helpers.ts";

export const MiB = 1024 * 1024;
/** Guest size of the test image. */
export const SIZE = 48 * MiB;
/** The file systems the copy is tried on. */
export const FILE_SYSTEMS = ["ext4", "xfs", "btrfs"] as const;
export type Fs = typeof FILE_SYSTEMS[number];

const MKFS: Record<Fs, [string, string[], Record<string, string>?]> = {
  ext4: ["mkfs.ext4", ["-q", "-F"]],
  xfs: ["mkfs.xfs", ["-q", "-f"], SMALL_FS_ENV],
  btrfs: ["mkfs.btrfs", ["-q", "-f"]],
};

const HAVE_FILE_SYSTEMS = canLoop() && HAVE_QEMU &&
  FILE_SYSTEMS.every((fs) => have(MKFS[fs][0]));

/** Registers a test needing root, loop devices, the three mkfs and qemu-img. */
export const fsTest = toolTest(
  "root with loop devices, mkfs.ext4/xfs/btrfs, qemu-img",
  HAVE_FILE_SYSTEMS,
  "run as root; apt-get install e2fsprogs xfsprogs btrfs-progs qemu-utils",
);

/** {@linkcode fsTest}, and strace and filefrag to see how bytes moved. */
export const tracedFsTest = toolTest(
  "root with loop devices, mkfs.ext4/xfs/btrfs, qemu-img, strace, filefrag",
  HAVE_FILE_SYSTEMS && have("strace") && have("filefrag"),
  "run as root; apt-get install e2fsprogs xfsprogs btrfs-progs qemu-utils strace",
);

/** A loop-mounted file system of `type` at `dir/name`, gone on dispose. */
export async function mountFs(
  dir: string,
  type: Fs,
  name: string = type,
): Promise<{ path: string } & AsyncDisposable> {
  const image = join(dir, `${name}.img`);
  await Deno.writeFile(image, new Uint8Array());
  await Deno.truncate(image, 320 * MiB);
  const [cmd, args, env] = MKFS[type];
  await sh(cmd, [...args, image], { env });
  const stack = new AsyncDisposableStack();
  try {
    const dev = stack.use(await loop(image, 0, 320 * MiB));
    const path = join(dir, name);
    stack.use(await mount(dev.dev, path, "rw", type));
    return { path, [Symbol.asyncDispose]: () => stack.disposeAsync() };
  } catch (err) {
    await stack.disposeAsync();
    throw err;
  }
}

/**
 * In `dir`: `plain.raw`, a sparse raw file (two runs of data, holes
 * between); `src.qcow2`, qemu-img's conversion of it with a zero cluster
 * written inside the first run and a compressed cluster in a hole; and
 * `qemu.raw`, qemu-img's expansion of that image.
 */
export async function makeImage(
  dir: string,
): Promise<{ plain: string; qcow2: string; raw: string }> {
  const plain = join(dir, "plain.raw");
  {
    using f = await Deno.open(plain, { write: true, create: true });
    await f.truncate(SIZE);
    await f.write(mixedBytes(16 * MiB, 26));
    await f.seek(40 * MiB, Deno.SeekMode.Start);
    await f.write(mixedBytes(MiB + 4096, 27));
  }
  const qcow2 = join(dir, "src.qcow2");
  await qemuImg("convert", "-q", "-f", "raw", "-O", "qcow2", plain, qcow2);
  await qemuIo(qcow2, ["write -z 1M 64k", "write -c -P 0x5a 20M 64k"]);
  const raw = join(dir, "qemu.raw");
  await qemuImg("convert", "-q", "-O", "raw", qcow2, raw);
  return { plain, qcow2, raw };
}

/** Asserts `cmp` finds the files identical, and qemu-img compare too. */
export async function assertSameRaw(
  expected: string,
  actual: string,
): Promise<void> {
  const r = await runStatus("cmp", [expected, actual]);
  assert.strictEqual(r.code, 0, r.stdout + r.stderr);
  const q = await runStatus("qemu-img", [
    "compare",
    "-f",
    "raw",
    "-F",
    "raw",
    expected,
    actual,
  ]);
  assert.match(q.stdout, /Images are identical\./, q.stdout + q.stderr);
}

/** One system call strace saw: its name, its first descriptor's path, its result. */
export interface Syscall {
  name: string;
  /** The path behind the first argument (strace -y). */
  from: string;
  /** The path behind the third argument, for copy_file_range. */
  to?: string;
  result: number;
  /** The error name when `result` is -1 (`EXDEV`). */
  errno?: string;
}

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

/**
 * `deno run PERMISSIONS cli.ts ARGS` under `strace -f`, recording every
 * copy_file_range and pread64 (each thread to its own file, so no call is
 * split); the calls, and the CLI's stdout. Asserts the CLI succeeded.
 */
export async function traceCli(
  permissions: readonly string[],
  args: readonly string[],
): Promise<{ calls: Syscall[]; stdout: Uint8Array }> {
  const dir = await Deno.makeTempDir();
  try {
    const prefix = join(dir, "trace");
    const r = await new Deno.Command("strace", {
      args: [
        "-f",
        "-ff",
        "--seccomp-bpf",
        "-y",
        "-s",
        "0",
        "-qq",
        "-e",
        "trace=copy_file_range,pread64",
        "-o",
        prefix,
        Deno.execPath(),
        "run",
        ...permissions,
        CLI,
        ...args,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.strictEqual(r.code, 0, new TextDecoder().decode(r.stderr));
    const calls: Syscall[] = [];
    for await (const entry of Deno.readDir(dir)) {
      const text = await Deno.readTextFile(join(dir, entry.name));
      for (const line of text.split("\n")) {
        const call = parseCall(line);
        if (call) calls.push(call);
      }
    }
    return { calls, stdout: r.stdout };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * `copy_file_range(26</d/src.qcow2>, [327680], 27</d/.o.raw.1.partial>,
 * [0], 1572864, 0) = 1572864` or `pread64(13</d/plain.raw>, ""..., 2097152,
 * 0) = 2097152`; `= -1 EXDEV (...)` when it failed.
 */
function parseCall(line: string): Syscall | undefined {
  const head = /^(copy_file_range|pread64)\(\d+<([^>]*)>/.exec(line);
  const tail = /\) = (-?\d+)(?: (E[A-Z0-9]+) \(.*\))?$/.exec(line);
  if (!head || !tail) return undefined;
  const call: Syscall = {
    name: head[1],
    from: head[2],
    result: Number(tail[1]),
  };
  if (tail[2]) call.errno = tail[2];
  if (head[1] === "copy_file_range") {
    call.to = /^[^,]*, \[\d+\], \d+<([^>]*)>/.exec(line)?.[1];
  }
  return call;
}

/** How a run moved the bytes of `source` into a file in `outDir`. */
export interface Moved {
  /** copy_file_range calls from `source` that copied bytes. */
  copied: number;
  /** Those that failed, by error name. */
  failed: string[];
  /** pread64 calls on `source` that read bytes. */
  preads: number;
}

/** Sums up the calls on `source` (and, for copies, into `outDir`). */
export function moved(calls: Syscall[], source: string, outDir: string): Moved {
  const out: Moved = { copied: 0, failed: [], preads: 0 };
  for (const c of calls) {
    if (c.from !== source) continue;
    if (c.name === "pread64" && c.result > 0) out.preads++;
    if (c.name !== "copy_file_range") continue;
    if (c.to === undefined || dirname(c.to) !== outDir) continue;
    if (c.result > 0) out.copied++;
    else if (c.result < 0) out.failed.push(c.errno ?? "?");
  }
  return out;
}

/** Whether filefrag reports an extent of `path` shared with another file. */
export async function hasSharedExtents(path: string): Promise<boolean> {
  return /\bshared\b/.test(await sh("filefrag", ["-v", path]));
}
