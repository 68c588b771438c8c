// The error contract (lib/format/errors.ts) from the caller's side: each
// failure a user of the public API (mod.ts, core.ts, the tools) can meet
// rejects with the class the contract names, carries its code and cause,
// and names the input in its message.

import assert from "node:assert";
import { join } from "node:path";
import {
  CodecPool,
  convert,
  convertToBytes,
  expandToPath,
  FileSource,
  type HostWrite,
  HttpSource,
  imageReadable,
  InternalError,
  IoError,
  type IoErrorCode,
  openImage,
  OutputFile,
  Qcow2Error,
  type Qcow2ErrorCode,
  type RandomAccessSource,
} from "../mod.ts";
import { checkImage, imageInfo } from "../lib/tools/mod.ts";
import {
  describeError,
  EXIT_INTERNAL,
  inQemuWords,
  reportError,
  UsageError,
} from "../lib/cli/_util.ts";
import { tempDir } from "./_qemu.ts";
import { serveFiles } from "./streams/_server.ts";

/** The rejection of `p`, which must reject. */
async function rejection(p: Promise<unknown> | (() => unknown)) {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (err) {
    assert.ok(err instanceof Error, `not an Error: ${String(err)}`);
    return err;
  }
  assert.fail("it did not fail");
}

/** Asserts an IoError with `code`, naming `input`, and its cause's class. */
function assertIo(
  err: Error,
  code: IoErrorCode,
  input: string,
  cause?: new (...args: never[]) => Error,
): IoError {
  assert.ok(err instanceof IoError, `${err.name}: ${err.message}`);
  assert.strictEqual(err.code, code, err.message);
  assert.ok(err.message.startsWith("Cannot "), err.message);
  assert.ok(err.message.includes(input), `${err.message} names no ${input}`);
  assert.ok(!err.message.includes("\n"), err.message);
  if (cause) {
    assert.ok(err.cause instanceof cause, `cause: ${String(err.cause)}`);
  }
  return err;
}

/** Asserts a Qcow2Error with `code`. */
function assertContent(err: Error, code: Qcow2ErrorCode): Qcow2Error {
  assert.ok(err instanceof Qcow2Error, `${err.name}: ${err.message}`);
  assert.strictEqual(err.code, code, err.message);
  assert.ok(err.message.startsWith("Cannot "), err.message);
  return err;
}

/** A qcow2 header of version 9: content no reader accepts. */
function version9(): Uint8Array {
  const bytes = new Uint8Array(512);
  bytes.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 9]);
  return bytes;
}

const RAW = new Uint8Array(256 * 1024).fill(7);

Deno.test("convert() rejects bad options with RangeError naming the option and value", async () => {
  const run = (options: Record<string, unknown>) => {
    const { writable } = new TransformStream<HostWrite, HostWrite>();
    return rejection(convert(new Blob([RAW]).stream(), writable, options));
  };
  const lz4 = await run({ compression: "lz4" });
  assert.ok(lz4 instanceof RangeError, String(lz4));
  assert.match(lz4.message, /^Cannot .*compression "lz4"/);
  const size = await run({ clusterSize: 3 });
  assert.ok(size instanceof RangeError, String(size));
  assert.match(size.message, /^Cannot .*cluster size 3\b/);
  const workers = await rejection(() => new CodecPool({ workers: -1 }));
  assert.ok(workers instanceof RangeError, String(workers));
  assert.match(workers.message, /-1/);
});

Deno.test("a closed CodecPool rejects jobs with TypeError", async () => {
  const pool = new CodecPool({ workers: 1 });
  await pool.close();
  const err = await rejection(
    pool.compress({ type: "zstd" }, new Uint8Array(65536), 65536),
  );
  assert.ok(err instanceof TypeError, String(err));
  assert.match(err.message, /^Cannot run codec job: the pool is closed$/);
});

Deno.test("openImage() and HttpSource reject bad options with RangeError", async () => {
  const snap = await rejection(
    openImage(new Uint8Array(512), { format: "raw", snapshot: "s1" }),
  );
  assert.ok(snap instanceof RangeError, String(snap));
  assert.match(
    snap.message,
    /^Cannot open image: .* is raw and has no snapshots$/,
  );
  const url = "http://127.0.0.1:9/disk.qcow2";
  const idle = await rejection(HttpSource.open(url, { idleTimeout: 0 }));
  assert.ok(idle instanceof RangeError, String(idle));
  assert.ok(
    idle.message.includes(url) && idle.message.includes("idleTimeout 0"),
  );
});

Deno.test("an image whose content is bad rejects with Qcow2Error", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "v9.qcow2");
  await Deno.writeFile(path, version9());
  const opened = await rejection(openImage(path));
  assertContent(opened, "UNSUPPORTED_VERSION");
  // The message names the field and the file; the code stays.
  assert.strictEqual(
    opened.message,
    `Cannot parse header of ${path}: version 9 is not supported (expected 2 or 3)`,
  );
  assertContent(await rejection(imageInfo(path)), "UNSUPPORTED_VERSION");
  // Bytes have no name to give.
  const bytes = await rejection(openImage(version9(), { format: "qcow2" }));
  assertContent(bytes, "UNSUPPORTED_VERSION");
  assert.strictEqual(
    bytes.message,
    "Cannot parse header: version 9 is not supported (expected 2 or 3)",
  );
});

Deno.test("a missing or unusable file rejects with IoError and the OS error as cause", async () => {
  await using dir = await tempDir();
  const missing = join(dir.path, "missing.qcow2");
  assertIo(
    await rejection(openImage(missing)),
    "NOT_FOUND",
    missing,
    Deno.errors.NotFound,
  );
  assertIo(
    await rejection(FileSource.open(missing)),
    "NOT_FOUND",
    missing,
    Deno.errors.NotFound,
  );
  assertIo(await rejection(openImage(dir.path)), "NOT_A_FILE", dir.path);
  const nowhere = join(dir.path, "no-dir", "out.qcow2");
  assertIo(
    await rejection(OutputFile.create(nowhere)),
    "NOT_FOUND",
    nowhere,
    Deno.errors.NotFound,
  );
  for (const tool of [imageInfo, checkImage]) {
    assertIo(
      await rejection(tool(missing)),
      "NOT_FOUND",
      missing,
      Deno.errors.NotFound,
    );
  }
});

Deno.test("a file the process may not read rejects with IoError PERMISSION", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "secret.raw");
  await Deno.writeFile(path, new Uint8Array(512));
  const script = join(dir.path, "open.ts");
  await Deno.writeTextFile(
    script,
    `import { openImage } from ${
      JSON.stringify(new URL("../mod.ts", import.meta.url).href)
    };
try {
  await openImage(Deno.args[0]);
  console.log("opened");
} catch (e) {
  console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message, cause: e.cause?.name }));
}
`,
  );
  // Without --allow-read: Deno refuses the open, as the OS refuses an
  // unreadable file (which root could read anyway).
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--no-lock", script, path],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert.ok(out.success);
  const seen = JSON.parse(new TextDecoder().decode(out.stdout));
  assert.strictEqual(seen.name, "IoError");
  assert.strictEqual(seen.code, "PERMISSION");
  assert.ok(seen.message.startsWith(`Cannot open image ${path}: `));
  assert.ok(["NotCapable", "PermissionDenied"].includes(seen.cause));
});

Deno.test("an existing output with noClobber rejects with IoError EXISTS", async () => {
  await using dir = await tempDir();
  const path = join(dir.path, "kept.raw");
  await Deno.writeFile(path, new Uint8Array([9]));
  assertIo(
    await rejection(OutputFile.create(path, { noClobber: true })),
    "EXISTS",
    path,
  );
  await using image = await openImage(await convertToBytes(RAW));
  const err = await rejection(expandToPath(image, path, { noClobber: true }));
  assertIo(err, "EXISTS", path);
  assert.strictEqual(
    err.message,
    `Cannot write ${path}: the file exists and is kept (no-clobber)`,
  );
  assert.deepStrictEqual(await Deno.readFile(path), new Uint8Array([9]));
});

Deno.test("HTTP failures reject with IoError: status, no Range, refused connection, silence", async () => {
  await using server = serveFiles({ "disk.raw": RAW }, { ranges: false });
  const gone = server.url("gone.qcow2");
  const http404 = await rejection(
    openImage(gone, { http: { retryDelays: [] } }),
  );
  assertIo(http404, "HTTP", gone);
  assert.match(http404.message, /the server answered 404\b/);
  assertIo(await rejection(HttpSource.open(gone)), "HTTP", gone);

  const whole = server.url("disk.raw");
  assertIo(
    await rejection(HttpSource.open(whole)),
    "RANGE_NOT_SUPPORTED",
    whole,
  );
  assertIo(await rejection(openImage(whole)), "RANGE_NOT_SUPPORTED", whole);

  const closed = Deno.serve({ port: 0, onListen() {} }, () => new Response());
  const port = closed.addr.port;
  await closed.shutdown();
  const refused = `http://127.0.0.1:${port}/disk.raw`;
  assertIo(
    await rejection(HttpSource.open(refused, { retryDelays: [] })),
    "NETWORK",
    refused,
    TypeError,
  );

  const { promise: released, resolve: release } = Promise.withResolvers<
    void
  >();
  await using silent = Deno.serve({ port: 0, onListen() {} }, async () => {
    await released;
    return new Response("late");
  });
  const quiet = `http://127.0.0.1:${silent.addr.port}/disk.raw`;
  try {
    assertIo(
      await rejection(
        HttpSource.open(quiet, { idleTimeout: 200, retryDelays: [] }),
      ),
      "TIMEOUT",
      quiet,
    );
  } finally {
    release();
  }
});

Deno.test("a source that fails under the reader surfaces its IoError as cause", async () => {
  const qcow2 = await convertToBytes(RAW);
  let broken = false;
  const source: RandomAccessSource = {
    size: qcow2.length,
    name: "flaky.qcow2",
    read: (offset, length) =>
      broken
        ? Promise.reject(
          new IoError("OTHER", "Cannot read flaky.qcow2: input/output error"),
        )
        : Promise.resolve(qcow2.slice(offset, offset + length)),
  };
  await using image = await openImage(source);
  broken = true;
  const err = assertIo(
    await rejection(new Response(imageReadable(image)).arrayBuffer()),
    "OTHER",
    "flaky.qcow2",
  );
  assert.ok(err.cause instanceof IoError, String(err.cause));
});

Deno.test("the CLI words each class in one line and exits 70 only for an internal error", () => {
  const bug = new InternalError(
    "Cannot write the L2 tables: table 3 was not placed",
  );
  assert.strictEqual(
    describeError(bug),
    "Cannot write the L2 tables: table 3 was not placed (an internal error: a bug in qcow2pipe, not a fault of the input; please report it with the command line and the output of QCOW2PIPE_DEBUG=1)",
  );
  const missing = new IoError(
    "NOT_FOUND",
    "Cannot open image a.raw: no such file",
    { cause: new Deno.errors.NotFound("No such file or directory") },
  );
  assert.strictEqual(
    describeError(missing),
    "Cannot open image a.raw: no such file",
  );
  assert.strictEqual(reportError(bug, 2), EXIT_INTERNAL);
  assert.strictEqual(reportError(missing, 2), 2);
  assert.strictEqual(reportError(new RangeError("Cannot convert: x"), 1), 1);
});

Deno.test("the CLI shows names in errors by printable(): one line per line it means, the reason kept", () => {
  const evil = "evil\x1b[31mRED\nsecond line";
  const shown = "evil\\x1b[31mRED\\nsecond line";
  // Our classes: the whole message, escaped, where the first line used to
  // be cut at the name's newline.
  for (
    const err of [
      new Qcow2Error(
        "BACKING",
        `Cannot open backing file "${evil}": no such file`,
      ),
      new IoError(
        "NOT_FOUND",
        `Cannot open backing file "${evil}": no such file`,
      ),
      new RangeError(`Cannot open backing file "${evil}": no such file`),
      new UsageError(`Cannot open backing file "${evil}": no such file`),
    ]
  ) {
    assert.strictEqual(
      describeError(err),
      `Cannot open backing file "${shown}": no such file`,
    );
  }
  const bug = describeError(new InternalError(`Cannot place ${evil}: taken`));
  assert.ok(bug.startsWith(`Cannot place ${shown}: taken (an internal error`));
  // qemu-img's words keep their two lines (the reason and the hint), the
  // name escaped in the first.
  const worded = inQemuWords(
    new Qcow2Error("BAD_SNAPSHOT", "Cannot open image: snapshot 0", {
      qemu: { reason: "Too much extra metadata", hint: "Use check -r all" },
    }),
    `a\nb.qcow2`,
  );
  assert.strictEqual(
    describeError(worded),
    "Could not open 'a\\nb.qcow2': Too much extra metadata\nUse check -r all",
  );
  // Anything else: its first line, escaped.
  assert.strictEqual(
    describeError(new Error(`Cannot go \x1b[2J\nstack`)),
    "Cannot go \\x1b[2J",
  );
});
