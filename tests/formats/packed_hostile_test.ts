// Hostile archives and compressed streams: each ends in a one-line
// Qcow2Error, in bounded time and memory, extracting nothing.
import assert from "node:assert";
import { bytesOnly, Qcow2Error, unpackStream } from "../../mod.ts";
import { printable } from "../../lib/format/errors.ts";
import { MAX_TAR_ENTRIES } from "../../lib/reader/packed/tar.ts";
import { prng } from "../../lib/_prng.ts";

/** A tar header block with a valid checksum. */
function header(
  name: string,
  size: string | Uint8Array,
  type = "0",
  extra: (b: Uint8Array) => void = () => {},
): Uint8Array {
  const b = new Uint8Array(512);
  const put = (at: number, text: string) =>
    b.set(new TextEncoder().encode(text), at);
  put(0, name);
  put(100, "0000644\0");
  if (typeof size === "string") put(124, size);
  else b.set(size, 124);
  put(156, type);
  put(257, "ustar\u000000");
  extra(b);
  fixChecksum(b);
  return b;
}

function fixChecksum(b: Uint8Array): void {
  b.fill(0x20, 148, 156);
  const sum = b.reduce((a, x) => a + x, 0);
  b.set(
    new TextEncoder().encode(sum.toString(8).padStart(6, "0") + "\0 "),
    148,
  );
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Unpacks and reads everything that must succeed. */
async function drainBytes(bytes: Uint8Array): Promise<Uint8Array> {
  const unpacked = await unpackStream(ReadableStream.from([bytes]));
  return new Uint8Array(
    await new Response(bytesOnly(unpacked.stream)).arrayBuffer(),
  );
}

/** Unpacks and reads everything; the error, or undefined. */
async function drain(
  bytes: Uint8Array | ReadableStream<Uint8Array>,
  disk?: string,
): Promise<unknown> {
  try {
    const stream = bytes instanceof Uint8Array
      ? ReadableStream.from([bytes])
      : bytes;
    const unpacked = await unpackStream(stream, { name: "evil", disk });
    for await (const _ of unpacked.stream) { /* read */ }
    return undefined;
  } catch (err) {
    return err;
  }
}

async function refused(
  bytes: Uint8Array | ReadableStream<Uint8Array>,
  pattern: RegExp,
  disk?: string,
): Promise<void> {
  const err = await drain(bytes, disk);
  assert.ok(err instanceof Qcow2Error, `not a Qcow2Error: ${err} (${pattern})`);
  assert.ok(!err.message.includes("\n"), err.message);
  assert.match(err.message, pattern);
}

const END = new Uint8Array(1024);

Deno.test("tar: a size larger than the archive is a truncated member, streamed not allocated", async () => {
  await refused(
    concat(header("disk.raw", "77777777777\0"), new Uint8Array(4096)),
    /^Cannot read tar archive evil: it ends inside "disk\.raw", after 4096 of its 8589934591 bytes/,
  );
  // Base-256 sizes: a huge one streams the same way; a negative one is refused.
  const huge = new Uint8Array(12);
  huge[0] = 0x80;
  huge.fill(0xff, 7); // 2^40 - 1
  await refused(
    concat(header("disk.raw", huge), new Uint8Array(512)),
    /it ends inside "disk\.raw", after 512 of its/,
  );
  const negative = new Uint8Array(12).fill(0xff);
  await refused(
    concat(header("disk.raw", negative), END),
    /the size field .* is not a number/,
  );
});

Deno.test("tar: garbage numeric fields and checksums are one-line errors", async () => {
  await refused(
    concat(header("disk.raw", "12x45\0"), END),
    /^Cannot read tar archive evil: the size field "12x45.*" is not a number \(at offset 0\)$/,
  );
  await refused(
    concat(header("disk.raw", "-0000001000\0"), END),
    /the size field .* is not a number/,
  );
  const bad = header("a", "00000001000\0");
  const second = header("b", "00000000000\0");
  second[0] ^= 1; // checksum no longer matches
  await refused(
    concat(bad, new Uint8Array(512), second, END),
    /a header's checksum does not match \(at offset 1024\)/,
  );
});

Deno.test("tar: path tricks are names only, nothing is extracted", async () => {
  const data = new Uint8Array(512).fill(9);
  for (const name of ["../../etc/passwd", "/etc/shadow", "a/../../b\nc"]) {
    const u = await unpackStream(
      ReadableStream.from([concat(header(name, "00000001000\0"), data, END)]),
      { name: "evil" },
    );
    assert.strictEqual(u.member, name);
    const bytes = new Uint8Array(
      await new Response(u.stream as ReadableStream<Uint8Array>).arrayBuffer(),
    );
    assert.deepStrictEqual(bytes, data);
  }
  // A name with a newline is quoted in messages as it is, for a program to
  // find; shown by printable(), the message is one line.
  const err = await drain(
    concat(
      header("x\ny", "00000001000\0"),
      data,
      header("z", "00000001000\0"),
      data,
      END,
    ),
  );
  assert.ok(err instanceof Qcow2Error, String(err));
  assert.ok(err.message.includes('more than one disk ("x\ny", "z")'));
  assert.match(printable(err.message), /more than one disk \("x\\ny", "z"\)/);
  assert.ok(!printable(err.message).includes("\n"));
});

Deno.test("tar: many entries are capped", async () => {
  const empty = header("d/", "00000000000\0", "5");
  let sent = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent++ > MAX_TAR_ENTRIES + 10) controller.close();
      else controller.enqueue(empty);
    },
  });
  await refused(stream, /more than 100000 entries before the disk/);
});

Deno.test("tar: pax and GNU metadata are capped and checked", async () => {
  await refused(
    concat(header("h", "77777777\0", "x"), END),
    /a metadata entry of 16777215 bytes is larger than 1048576/,
  );
  const pax = new TextEncoder().encode("99999 path=x\n");
  const padded = concat(pax, new Uint8Array(512 - pax.length));
  await refused(
    concat(
      header("h", `${pax.length.toString(8).padStart(11, "0")}\0`, "x"),
      padded,
      END,
    ),
    /a pax record at byte 0 of its header is malformed/,
  );
  const size = new TextEncoder().encode("29 size=99999999999999999999\n");
  await refused(
    concat(
      header("h", `${size.length.toString(8).padStart(11, "0")}\0`, "x"),
      concat(size, new Uint8Array(512 - size.length)),
      header("disk", "00000000000\0"),
      END,
    ),
    /the pax size "99999999999999999999" is not a number/,
  );
});

Deno.test("tar: a sparse map out of order or past the size is refused", async () => {
  const entry = (o: string, n: string) => (b: Uint8Array) => {
    b.set(new TextEncoder().encode(o), 386);
    b.set(new TextEncoder().encode(n), 398);
    b.set(new TextEncoder().encode("00000010000\0"), 483); // realsize 4096
  };
  await refused(
    concat(
      header(
        "s",
        "00000001000\0",
        "S",
        entry("00000020000\0", "00000001000\0"),
      ),
      new Uint8Array(512),
      END,
    ),
    /region \[8192, \+512\) out of order or past its size 4096/,
  );
  await refused(
    concat(
      header(
        "s",
        "00000002000\0",
        "S",
        entry("00000000000\0", "00000001000\0"),
      ),
      new Uint8Array(1024),
      END,
    ),
    /maps 512 bytes, but 1024 are stored/,
  );
});

Deno.test("no disk, --disk without an archive, empty archives", async () => {
  await refused(END, /^Cannot read disk "x": evil is not a tar archive/, "x");
  await refused(
    concat(header("d/", "00000000000\0", "5"), END),
    /^Cannot read tar archive evil: no disk in it \(it holds no file\)/,
  );
});

/** Compressed bytes of `data` made by the runtime (gzip) or a tool. */
async function gzip(data: Uint8Array<ArrayBuffer>): Promise<Uint8Array> {
  return new Uint8Array(
    await new Response(
      new Response(data.slice()).body!.pipeThrough(
        new CompressionStream("gzip"),
      ),
    ).arrayBuffer(),
  );
}

function tool(cmd: string, data: Uint8Array): Promise<Uint8Array> {
  return toolArgs(cmd, ["-c"], data);
}

async function toolArgs(
  cmd: string,
  args: string[],
  data: Uint8Array,
): Promise<Uint8Array> {
  const child = new Deno.Command(cmd, {
    args,
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(data);
  await w.close();
  return (await child.output()).stdout;
}

Deno.test("truncated and corrupt gzip, xz and zstd are one-line errors", async () => {
  const data = new Uint8Array(1 << 20);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7919) >> 5;
  const packed = {
    gzip: await gzip(data),
    xz: await tool("xz", data),
    zstd: await tool("zstd", data),
  };
  for (const [name, bytes] of Object.entries(packed)) {
    await refused(
      bytes.subarray(0, bytes.length >> 1),
      new RegExp(
        `^Cannot decompress evil: its ${name} data is corrupt or truncated`,
      ),
    );
    const flipped = bytes.slice();
    flipped[bytes.length >> 1] ^= 0x55;
    flipped[(bytes.length >> 1) + 1] ^= 0xaa;
    await refused(flipped, /^Cannot decompress evil: its \w+ data is corrupt/);
  }
});

Deno.test("zstd cut at every header and at random points is refused, never short", async () => {
  const data = new Uint8Array(300_000);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7919) >> 5;
  // Two frames with checksums and one without, so that cuts fall in the
  // frame headers, the block headers, the blocks and the checksums.
  const zst = concat(
    await tool("zstd", data),
    await tool("zstd", data.subarray(0, 70_000)),
    await toolArgs("zstd", ["-c", "--no-check"], data.subarray(0, 1000)),
  );
  const next = prng(8878);
  // (Fewer than 4 bytes are no zstd magic: a 3-byte raw disk.)
  const cuts = new Set<number>([4, 5, 6, 7, 8, 9, 10, zst.length - 1]);
  while (cuts.size < 60) cuts.add(4 + Math.floor(next() * (zst.length - 4)));
  for (const cut of cuts) {
    await refused(
      zst.subarray(0, cut),
      /^Cannot decompress evil: its zstd data is corrupt or truncated/,
    );
  }
  const whole = await drainBytes(zst);
  assert.strictEqual(whole.length, 371_000);
});

Deno.test("a cut .tar.zst is refused: by its frames, and by the archive's sizes", async () => {
  const data = new Uint8Array(1 << 20);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7919) >> 5;
  const tar = concat(header("disk.raw", "00004000000\0"), data, END);
  const zst = await tool("zstd", tar);
  await refused(
    zst.subarray(0, zst.length >> 1),
    /^Cannot decompress evil: its zstd data is corrupt or truncated \(it ends inside a frame/,
  );
  // Cut at the end of a frame, the archive's sizes tell.
  const frames = concat(
    await tool("zstd", tar.subarray(0, 40_000)),
    await tool("zstd", tar.subarray(40_000, 80_000)),
  );
  await refused(
    frames,
    /it ends inside "disk\.raw", after \d+ of its 1048576 bytes/,
  );
});

Deno.test("200 seeded mutations of a tar.gz header: one-line errors, the member, or not a tar", async () => {
  const data = new Uint8Array(2048).fill(3);
  const clean = concat(header("disk.raw", "00000004000\0"), data, END);
  const next = prng(24);
  const random = { int: (n: number) => Math.floor(next() * n) };
  const seen = { refused: 0, member: 0, notTar: 0 };
  for (let i = 0; i < 200; i++) {
    const tar = clean.slice();
    for (let m = 0; m < 1 + random.int(4); m++) {
      tar[random.int(512)] = random.int(256);
    }
    if (random.int(2) === 0) fixChecksum(tar.subarray(0, 512));
    try {
      const unpacked = await unpackStream(
        ReadableStream.from([await gzip(tar)]),
        { name: "evil" },
      );
      const bytes = new Uint8Array(
        await new Response(bytesOnly(unpacked.stream)).arrayBuffer(),
      );
      if (unpacked.layers.includes("tar")) {
        // Whatever the header now says, what comes out is the archive's
        // bytes after it, never more than the archive holds.
        assert.ok(bytes.length <= tar.length - 512, `mutation ${i}`);
        assert.ok(bytes.every((b, k) => b === tar[512 + k]), `mutation ${i}`);
        seen.member++;
      } else {
        assert.deepStrictEqual(bytes, tar, `mutation ${i}`);
        seen.notTar++;
      }
    } catch (err) {
      assert.ok(err instanceof Qcow2Error, `mutation ${i}: ${err}`);
      assert.ok(!err.message.includes("\n"), err.message);
      seen.refused++;
    }
  }
  assert.ok(
    seen.refused > 0 && seen.member > 0 && seen.notTar > 0,
    JSON.stringify(seen),
  );
});
