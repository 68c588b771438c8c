// A flaky network during a 1 GiB transfer: the server cuts the connection
// several times, in the middle of responses, and the CLI resumes each time
// from where it stopped (a Range request), with output identical to the
// local original: for a raw disk streamed in one GET, and for a qcow2
// image read with Range requests. The files are sparse (128 MiB of data in
// a few extents: deleting a file of many small extents takes half a minute
// on a file system mounted with discard) and the output goes through a
// pipe to cmp, so that the disk does not set the pace.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCompareIdentical, qemuImg, qemuTest, tempDir } from "../_qemu.ts";
import { CLI } from "../writer/_cli.ts";
import { serveFiles } from "./_server.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * The data of the disk: 16 MiB at the start of every 128 MiB, each sector
 * stamped with its guest offset (a resume at a wrong offset moves every
 * stamp after it, so it cannot go unseen); the rest reads as zeros.
 */
const REGION = 16 * MiB;
const REGION_EVERY = 128 * MiB;

/** Offsets to cut at: inside data regions and responses, off chunk boundaries. */
const CUTS = [
  128 * MiB + 5 * MiB + 12_345,
  384 * MiB + 7,
  640 * MiB + 9 * MiB + 4099,
  896 * MiB + 15 * MiB + 1,
];

/** Writes the stamped regions, the 64 KiB block at guest offset G at `host(G)`. */
async function stamp(
  path: string,
  host: (guest: number) => number,
): Promise<void> {
  using file = await Deno.open(path, { write: true });
  const block = new Uint8Array(64 * 1024);
  const view = new DataView(block.buffer);
  for (let region = 0; region < GiB; region += REGION_EVERY) {
    for (let at = region; at < region + REGION; at += block.length) {
      for (let sector = 0; sector < block.length; sector += 512) {
        view.setBigUint64(sector, BigInt(at + sector), true);
        view.setUint32(sector + 8, 0xf1a4e, true);
      }
      await file.seek(host(at), Deno.SeekMode.Start);
      await file.write(block);
    }
  }
}

/** The sparse 1 GiB raw disk, stamped. */
async function stampedDisk(path: string): Promise<void> {
  await Deno.writeFile(path, new Uint8Array(0));
  await Deno.truncate(path, GiB);
  await stamp(path, (guest) => guest);
}

/**
 * A qcow2 image of the same disk in which every cluster is allocated (the
 * reader fetches 1 GiB of clusters), yet sparse: qemu-img preallocates the
 * metadata, and the data goes where qemu-img map says each cluster is.
 */
async function stampedImage(path: string, raw: string): Promise<void> {
  await qemuImg(
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "preallocation=metadata",
    path,
    String(GiB),
  );
  const map = JSON.parse(
    await qemuImg("map", "--output=json", "-f", "qcow2", path),
  ) as { start: number; length: number; offset?: number }[];
  assert.ok(map.every((e) => e.offset !== undefined), "all allocated");
  await stamp(path, (guest) => {
    const e = map.find((e) => guest >= e.start && guest < e.start + e.length)!;
    return e.offset! + guest - e.start;
  });
  await qemuCompareIdentical(raw, path);
}

/**
 * Runs `convert -q URL -O raw -` into `cmp - ORIGINAL`: the exit status
 * of both, and what they said.
 */
async function convertAndCompare(
  url: string,
  original: string,
): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command("bash", {
    args: [
      "-o",
      "pipefail",
      "-c",
      'set -e; "$0" run -A --quiet "$1" convert -q "$2" -O raw - | cmp - "$3"',
      Deno.execPath(),
      CLI,
      url,
      original,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stderr: new TextDecoder().decode(out.stdout) +
      new TextDecoder().decode(out.stderr),
  };
}

qemuTest(
  "convert survives a connection cut 4 times while streaming a 1 GiB raw disk, with identical output",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await stampedDisk(disk);
    await using server = serveFiles({ "disk.raw": disk }, { dropAt: CUTS });
    const r = await convertAndCompare(server.url("disk.raw"), disk);
    assert.strictEqual(r.code, 0, r.stderr);
    // One GET through, resumed where each cut fell.
    assert.deepStrictEqual(server.requests, [
      "GET disk.raw bytes=0-1048575",
      "GET disk.raw",
      ...CUTS.map((at) => `GET disk.raw bytes=${at}-`),
    ]);
    assert.ok(server.bytesSent >= GiB + MiB, `${server.bytesSent} bytes sent`);
  },
);

qemuTest(
  "convert survives a connection cut 4 times while reading a 1 GiB qcow2 image with Range requests, with identical output",
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.raw");
    await stampedDisk(disk);
    const image = join(dir.path, "disk.qcow2");
    await stampedImage(image, disk);
    await using server = serveFiles({ "disk.qcow2": image }, {
      dropAt: CUTS,
    });
    const r = await convertAndCompare(server.url("disk.qcow2"), disk);
    assert.strictEqual(r.code, 0, r.stderr);
    // Each cut range was asked for again from where it broke.
    for (const at of CUTS) {
      assert.ok(
        server.requests.some((line) =>
          line.startsWith(`GET disk.qcow2 bytes=${at}-`)
        ),
        `resumed at ${at}: ${server.requests.join(", ")}`,
      );
    }
    assert.ok(server.requests.every((line) => line.includes("bytes=")));
    assert.ok(server.bytesSent >= GiB, `${server.bytesSent} bytes sent`);
  },
);
