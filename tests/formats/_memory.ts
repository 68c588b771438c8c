// Peak memory of a conversion through a pipe, and the sparse disks the
// memory tests compare: a small input and a large one must peak alike.
import assert from "node:assert";

const RSS_CLI = new URL("./_rss_cli.ts", import.meta.url).pathname;

/**
 * Peak resident memory (KiB) of `cat FILE | convert -q --workers 1 - out.qcow2`
 * run in `dir`.
 */
export async function peakKiB(dir: string, file: string): Promise<number> {
  const out = await new Deno.Command("sh", {
    args: [
      "-c",
      `cat ${file} | "${Deno.execPath()}" run -A ${RSS_CLI} convert -q --workers 1 - out.qcow2`,
    ],
    cwd: dir,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const stdout = dec.decode(out.stdout);
  assert.strictEqual(out.code, 0, stdout + dec.decode(out.stderr));
  const { code, peakKiB } = JSON.parse(stdout.trim().split("\n").at(-1)!);
  assert.strictEqual(code, 0);
  return peakKiB;
}

/**
 * Bounded, not proportional: the large input's peak stays within a
 * quarter of the small one's more, or within 256 MiB (the garbage
 * collector's slack varies from run to run: peaks of 113 to 172 MiB were
 * seen).
 */
export function assertBounded(small: number, large: number, what: string) {
  assert.ok(
    large < Math.max(small * 1.25 + 16 * 1024, 256 * 1024),
    `peak ${large} KiB for ${what} vs ${small} KiB for the small input`,
  );
}

/** Sparse-ish: a 256 KiB run of seeded data every 16 MiB, the rest holes. */
export async function sparseDisk(
  path: string,
  size: number,
  seed = 3,
): Promise<void> {
  const file = await Deno.open(path, { write: true, create: true });
  await file.truncate(size);
  let x = seed;
  const data = new Uint8Array(256 * 1024);
  for (let at = 0; at < size; at += 16 << 20) {
    for (let i = 0; i < data.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      data[i] = x >>> 24;
    }
    await file.seek(at, Deno.SeekMode.Start);
    for (let w = 0; w < data.length;) w += await file.write(data.subarray(w));
  }
  file.close();
}
