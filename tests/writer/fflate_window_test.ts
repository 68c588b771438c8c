// The fflate backend deflates with a 32 KiB window, wider than the 4 KiB
// (windowBits -12) QEMU initializes its inflater with. QEMU inflates a whole
// cluster in one call into the cluster buffer, so back-references up to
// 32 KiB into the bytes already produced are valid for it. This test pins
// that down: clusters built from 8 KiB blocks repeated at 8 KiB distances
// (only matchable beyond 4 KiB) must compress and read back identically in
// qemu-img.

import assert from "node:assert";
import { join } from "node:path";
import { qemuTest, tempDir } from "../_qemu.ts";
import { randomBytes, verifyImage } from "./_helpers.ts";
import { convertToBytes } from "../../lib/writer/convert.ts";

qemuTest(
  "fflate zlib clusters with back-references beyond 4 KiB read identically in QEMU",
  async () => {
    await using dir = await tempDir();
    const cs = 65536;
    const input = new Uint8Array(4 * cs);
    for (let k = 0; k < 4; k++) {
      const block = randomBytes(8192, k + 1);
      for (let j = 0; j < cs / 8192; j++) input.set(block, k * cs + j * 8192);
    }
    const bytes = await convertToBytes(input, {
      compression: "zlib",
      backend: "fflate",
      workers: 0,
    });
    const image = join(dir.path, "far.qcow2");
    await Deno.writeFile(image, bytes);
    const { check } = await verifyImage(dir.path, image, input, {
      compression: "zlib",
      clusterSize: cs,
      refcountBits: 16,
    });
    // Only far matches make these clusters compressible: all four are stored
    // compressed, so the test exercises what it claims.
    assert.strictEqual(check["compressed-clusters"], 4, JSON.stringify(check));
  },
);
