// Helpers shared by bench/compare.ts and its parts: running commands,
// formatting, and what the machine is.

export const ROOT = new URL("..", import.meta.url).pathname;
export const CACHE = new URL("./.cache/", import.meta.url).pathname;
export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

// ---------------------------------------------------------------- helpers

export interface Output {
  code: number;
  stdout: string;
  stderr: string;
}

export async function sh(
  cmd: string,
  args: string[],
  cwd = ROOT,
): Promise<Output> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** Runs a command that must succeed; returns its stdout. */
export async function must(
  cmd: string,
  args: string[],
  cwd = ROOT,
): Promise<string> {
  const out = await sh(cmd, args, cwd);
  if (out.code !== 0) {
    throw new Error(
      `Cannot run ${cmd} ${
        args.join(" ")
      }: exit ${out.code}: ${out.stderr.trim()}`,
    );
  }
  return out.stdout;
}

export async function have(
  cmd: string,
  args = ["--version"],
): Promise<boolean> {
  try {
    return (await sh(cmd, args)).code === 0;
  } catch {
    return false;
  }
}

/**
 * A disk image built once into `path` and described by `path.json`: the
 * description recorded last time, unless `rebuild`; else a new empty file
 * of `bytes` that `build` fills and describes, the description recorded
 * once it is done (an interrupted build is built again).
 */
export async function cachedDisk<T>(
  path: string,
  bytes: number,
  rebuild: boolean,
  build: (path: string) => Promise<T>,
): Promise<T> {
  const meta = `${path}.json`;
  if (!rebuild) {
    try {
      return JSON.parse(await Deno.readTextFile(meta)) as T;
    } catch {
      // not built yet
    }
  }
  await Deno.mkdir(CACHE, { recursive: true });
  await Deno.remove(meta).catch(() => {});
  await Deno.remove(path).catch(() => {});
  {
    using f = await Deno.open(path, { create: true, write: true });
    await f.truncate(bytes);
  }
  const disk = await build(path);
  await Deno.writeTextFile(meta, JSON.stringify(disk));
  return disk;
}

export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

export function log(line: string): void {
  console.error(line);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(bytes >= 100 * MiB ? 0 : 1)} MiB`;
}

export function gib(bytes: number): string {
  return `${(bytes / GiB).toFixed(2)} GiB`;
}

export async function loadavg(): Promise<number> {
  try {
    return Number((await Deno.readTextFile("/proc/loadavg")).split(" ")[0]);
  } catch {
    return NaN;
  }
}

// ---------------------------------------------------------------- machine

export interface Machine {
  date: string;
  cpu: string;
  cores: number;
  ramGiB: number;
  kernel: string;
  deno: string;
  qemu: string;
  mkfs: string;
  workDirFs: string;
  /** The code measured: commit, and uncommitted changes under lib/. */
  code: string;
  busyProcesses: string[];
}

/** `HEAD` and how many files under lib/ differ from it (shared tree). */
async function codeVersion(): Promise<string> {
  const head = await sh("git", ["rev-parse", "--short", "HEAD"]);
  if (head.code !== 0) return "not a git checkout";
  const dirty =
    (await sh("git", ["status", "--porcelain", "lib", "cli.ts", "mod.ts"]))
      .stdout.split("\n").filter((l) => l.trim() !== "").length;
  return `commit ${head.stdout.trim()}${
    dirty > 0 ? ` + ${dirty} uncommitted file(s) in lib/, cli.ts, mod.ts` : ""
  }`;
}

/** Processes other than this one using over 20% CPU right now. */
export async function busyProcesses(): Promise<string[]> {
  const out = await sh("ps", ["-eo", "pid,pcpu,comm", "--sort=-pcpu"]);
  return out.stdout.split("\n").slice(1).map((l) => l.trim().split(/\s+/))
    .filter((f) =>
      f.length >= 3 && Number(f[1]) > 20 && Number(f[0]) !== Deno.pid &&
      f[2] !== "ps"
    )
    .map((f) => `${f[2]} (pid ${f[0]}, ${f[1]}% CPU)`);
}

export async function machine(): Promise<Machine> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const meminfo = await Deno.readTextFile("/proc/meminfo").catch(() => "");
  const memKiB = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  const df = (await sh("df", ["-T", ROOT])).stdout.trim().split("\n").at(-1)
    ?.split(/\s+/);
  const mkfs = (await sh("mkfs.ext4", ["-V"])).stderr.split("\n")[0];
  return {
    date: new Date().toISOString(),
    cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? "unknown",
    cores: navigator.hardwareConcurrency,
    ramGiB: Math.round(memKiB / 1024 / 1024 * 10) / 10,
    kernel: (await sh("uname", ["-r"])).stdout.trim(),
    deno: Deno.version.deno,
    qemu: (await sh("qemu-img", ["--version"])).stdout.split("\n")[0],
    mkfs: mkfs.trim(),
    workDirFs: df ? `${df[1]} on ${df[0]} (mounted at ${df.at(-1)})` : "?",
    code: await codeVersion(),
    busyProcesses: await busyProcesses(),
  };
}

/** Issue 26's bound on our peak resident memory, on every path. */
export const RSS_TARGET = 160 * 1024 * 1024;
