// Readers of qcow2 other than QEMU, as judges of the images we write:
// libqcow (Debian's python3-libqcow, `import pyqcow`) and 7-Zip (`7zz x`).
// Neither reads zstd-compressed images (libqcow 20201213 refuses incompatible
// feature bit 3, "compression type"; 7-Zip 26 lists the image but says
// "Unsupported method"), so for those the judgement is that they refuse
// with those words, not that they read something else.

import assert from "node:assert";
import { join } from "node:path";
import { runStatus } from "./_qemu.ts";
import { PYQCOW, PYTHON, SEVEN_ZIP, withTool } from "./_tools.ts";

/** The guest content an image of `raw` must read as: padded to 512 bytes. */
export async function expectedDigest(raw: Uint8Array): Promise<string> {
  const padded = new Uint8Array(Math.ceil(raw.length / 512) * 512);
  padded.set(raw);
  return hex(await crypto.subtle.digest("SHA-256", padded));
}

function hex(buf: ArrayBuffer): string {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

const PYQCOW_READ = `
import hashlib, json, sys
import pyqcow
f = pyqcow.file()
try:
    f.open(sys.argv[1])
    size = f.get_media_size()
    h = hashlib.sha256()
    left = size
    while left > 0:
        data = f.read_buffer(min(left, 4 << 20))
        if not data:
            raise IOError("short read at %d" % (size - left))
        h.update(data)
        left -= len(data)
    print(json.dumps({"size": size, "sha256": h.hexdigest()}))
except Exception as e:
    print(json.dumps({"error": str(e)}))
`;

/** What libqcow reads from an image: its size and digest, or its error. */
export async function pyqcowRead(
  image: string,
): Promise<{ size: number; sha256: string } | { error: string }> {
  const out = await runStatus(PYTHON, ["-c", PYQCOW_READ, image]);
  const text = out.stdout.trim();
  assert.ok(
    out.code === 0 && text.startsWith("{"),
    `pyqcow on ${image} failed: ${out.stderr}`,
  );
  return JSON.parse(text);
}

/** What `7zz x` extracts from an image: the disk's digest, or its output. */
export async function sevenZipExtract(
  image: string,
  dir: string,
): Promise<{ size: number; sha256: string } | { error: string }> {
  const into = await Deno.makeTempDir({ dir, prefix: "7zz-" });
  try {
    const out = await runStatus("7zz", ["x", "-y", `-o${into}`, image]);
    if (out.code !== 0) return { error: out.stdout + out.stderr };
    const files = await Array.fromAsync(Deno.readDir(into));
    assert.strictEqual(files.length, 1, `7zz extracted ${files.length} files`);
    const disk = await Deno.readFile(join(into, files[0].name));
    return {
      size: disk.length,
      sha256: hex(await crypto.subtle.digest("SHA-256", disk)),
    };
  } finally {
    await Deno.remove(into, { recursive: true });
  }
}

/**
 * libqcow and 7-Zip judge an image we wrote from `raw`: they read exactly
 * the raw bytes (zero-padded to 512), or, for zstd, refuse the compression
 * type in their own words. A missing reader is reported (a failure under
 * CI).
 */
export async function assertOtherReaders(
  image: string,
  raw: Uint8Array,
  compression: "none" | "zlib" | "zstd",
  scratch: string,
): Promise<void> {
  const want = await expectedDigest(raw);
  const size = Math.ceil(raw.length / 512) * 512;
  await withTool(PYQCOW, async () => {
    const got = await pyqcowRead(image);
    if (compression === "zstd") {
      assert.ok("error" in got, "libqcow read a zstd image");
      assert.match(
        got.error,
        /unsupported incompatible features flags: 0x00000008/,
      );
    } else {
      assert.deepStrictEqual(got, { size, sha256: want }, `libqcow: ${image}`);
    }
  });
  await withTool(SEVEN_ZIP, async () => {
    const got = await sevenZipExtract(image, scratch);
    if (compression === "zstd") {
      assert.ok("error" in got, "7-Zip extracted a zstd image");
      assert.match(got.error, /Method = ZSTD/);
      assert.match(got.error, /Unsupported method/);
    } else {
      assert.deepStrictEqual(got, { size, sha256: want }, `7-Zip: ${image}`);
    }
  });
}
