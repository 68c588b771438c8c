// The input disk for bench/compare.ts: an ext4 filesystem made from /usr,
// cached in bench/.cache/.

import {
  CACHE,
  exists,
  gib,
  log,
  MiB,
  mib,
  must,
  sh,
} from "./_compare_util.ts";

export interface DiskMeta {
  virtualSize: number;
  dirs: string[];
  treeBytes: number;
  allocated: number;
  hardlinked: boolean;
  builtAt: string;
}

/** Directories to take from /usr, in order of preference. */
export function candidateDirs(): string[] {
  const fixed = [
    "/usr/bin",
    "/usr/sbin",
    "/usr/include",
    "/usr/libexec",
    "/usr/share",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/python3",
    "/usr/lib/python3.11",
    "/usr/lib/python3.12",
    "/usr/lib/gcc",
    "/usr/lib/git-core",
    "/usr/lib/node_modules",
    "/usr/local",
  ];
  let rest: string[] = [];
  try {
    rest = [...Deno.readDirSync("/usr/lib")].filter((e) => e.isDirectory)
      .map((e) => `/usr/lib/${e.name}`).sort();
  } catch {
    // no /usr/lib
  }
  return [...fixed, ...rest.filter((d) => !fixed.includes(d))];
}

export async function duBytes(path: string): Promise<number> {
  const out = await sh("du", ["-sk", path]);
  return Number(out.stdout.split(/\s+/)[0] ?? 0) * 1024;
}

export async function diskUsage(path: string): Promise<number> {
  const info = await Deno.stat(path);
  return (info.blocks ?? 0) * 512;
}

/**
 * Builds `disk-<size>.raw`: an ext4 filesystem from /usr directories
 * filling about half of the virtual size, unless it is cached already.
 */
export async function buildDisk(
  virtualSize: number,
): Promise<[string, DiskMeta]> {
  const name = `disk-${virtualSize / MiB}M`;
  const path = `${CACHE}${name}.raw`;
  const metaPath = `${CACHE}${name}.json`;
  if (await exists(path) && await exists(metaPath)) {
    const meta = JSON.parse(await Deno.readTextFile(metaPath)) as DiskMeta;
    log(`Using cached disk ${path} (${meta.dirs.join(" ")})`);
    return [path, meta];
  }
  const target = virtualSize / 2;
  log(
    `Building ${gib(virtualSize)} ext4 disk with about ${
      gib(target)
    } of /usr ...`,
  );
  const chosen: { dir: string; bytes: number }[] = [];
  let total = 0;
  for (const dir of candidateDirs()) {
    if (!await exists(dir)) continue;
    if (chosen.some((c) => dir.startsWith(`${c.dir}/`))) continue;
    const bytes = await duBytes(dir);
    if (bytes === 0 || total + bytes > target * 1.05) continue;
    chosen.push({ dir, bytes });
    total += bytes;
    if (total > target * 0.95) break;
  }
  if (chosen.length === 0) {
    throw new Error("Cannot build the disk: no readable directory in /usr");
  }
  const tree = `${CACHE}tree-${name}`;
  await Deno.remove(tree, { recursive: true }).catch(() => {});
  let hardlinked = true;
  for (const { dir } of chosen) {
    const parent = `${tree}${dir.slice(0, dir.lastIndexOf("/"))}`;
    await Deno.mkdir(parent, { recursive: true });
    let out = await sh("cp", ["-al", dir, `${parent}/`]);
    if (out.code !== 0) {
      hardlinked = false;
      log(`  cp -al ${dir} failed (${out.stderr.trim()}); copying instead`);
      await Deno.remove(`${tree}${dir}`, { recursive: true }).catch(() => {});
      out = await sh("cp", ["-a", dir, `${parent}/`]);
      if (out.code !== 0) {
        throw new Error(`Cannot copy ${dir}: ${out.stderr.trim()}`);
      }
    }
  }
  const tmp = `${path}.tmp`;
  try {
    for (;;) {
      await Deno.remove(tmp).catch(() => {});
      await must("truncate", ["-s", String(virtualSize), tmp]);
      const out = await sh("mkfs.ext4", ["-q", "-F", "-d", tree, tmp]);
      if (out.code === 0) break;
      const dropped = chosen.pop();
      if (!dropped || chosen.length === 0) {
        throw new Error(`Cannot make the filesystem: ${out.stderr.trim()}`);
      }
      log(
        `  mkfs.ext4 failed (${out.stderr.trim()}); leaving out ${dropped.dir}`,
      );
      total -= dropped.bytes;
      await Deno.remove(`${tree}${dropped.dir}`, { recursive: true });
    }
  } finally {
    // Removes only the tree's links, never the files in /usr.
    await Deno.remove(tree, { recursive: true }).catch(() => {});
  }
  await Deno.rename(tmp, path);
  const meta: DiskMeta = {
    virtualSize,
    dirs: chosen.map((c) => c.dir),
    treeBytes: total,
    allocated: await diskUsage(path),
    hardlinked,
    builtAt: new Date().toISOString(),
  };
  await Deno.writeTextFile(metaPath, JSON.stringify(meta, null, 2));
  log(
    `  ${path}: ${meta.dirs.join(" ")}; ${mib(meta.allocated)} allocated`,
  );
  return [path, meta];
}

/** The same disk with a sparse tail: 4x the virtual size, same data. */
export async function buildBigDisk(
  path: string,
  virtualSize: number,
): Promise<string> {
  const big = path.replace(/\.raw$/, "-x4.raw");
  if (await exists(big)) return big;
  log(`Building ${gib(4 * virtualSize)} copy with a sparse tail ...`);
  await must("cp", ["--sparse=always", path, `${big}.tmp`]);
  await must("truncate", ["-s", String(4 * virtualSize), `${big}.tmp`]);
  await Deno.rename(`${big}.tmp`, big);
  return big;
}
