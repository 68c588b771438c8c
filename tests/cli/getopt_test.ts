// The option reader shared by the commands (lib/cli/_getopt.ts) and the
// `-o key=value,...` splitter (lib/cli/_create_options.ts): qemu-img's
// (glibc getopt_long's, QemuOpts') rules, and the errors for the rest.

import assert from "node:assert";
import { getopt } from "../../lib/cli/_getopt.ts";
import {
  createOptionsHelp,
  parseCreateOptions,
  splitOptionList,
} from "../../lib/cli/_create_options.ts";
import { UsageError } from "../../lib/cli/_util.ts";

const SPECS = {
  format: { type: "string", short: "f" },
  compressed: { type: "boolean", short: "c" },
  progress: { type: "boolean", short: "p" },
  options: { type: "string", short: "o", multiple: true },
  "start-offset": { type: "string" },
  "start-length": { type: "string" },
  salvage: { type: "boolean", unsupported: "errors stop the run" },
  cache: { type: "string", short: "t", choices: ["none", "writeback"] },
} as const;

Deno.test("getopt() reads short options as getopt does: bundles, attached and detached values", () => {
  const r = getopt("convert", ["-pcfqcow2", "a", "-o", "-x", "b"], SPECS);
  assert.deepStrictEqual(r.values, {
    progress: true,
    compressed: true,
    format: "qcow2",
    options: ["-x"],
  });
  assert.deepStrictEqual(r.positionals, ["a", "b"]);
});

Deno.test("getopt() reads long options with = or a separate value, and unique prefixes", () => {
  const r = getopt("map", [
    "--format=raw",
    "--start-o",
    "-5",
    "--comp",
    "x",
  ], SPECS);
  assert.deepStrictEqual(r.values, {
    format: "raw",
    "start-offset": "-5",
    compressed: true,
  });
  assert.deepStrictEqual(r.positionals, ["x"]);
});

Deno.test("getopt() keeps every -o, and takes operands anywhere until --", () => {
  const r = getopt("convert", [
    "in",
    "-o",
    "a=1",
    "-oc=2",
    "--",
    "-c",
    "-",
  ], SPECS);
  assert.deepStrictEqual(r.values.options, ["a=1", "c=2"]);
  assert.strictEqual(r.values.compressed, undefined);
  assert.deepStrictEqual(r.positionals, ["in", "-c", "-"]);
});

Deno.test("getopt() refuses unknown, ambiguous, unsupported and incomplete options in one line each", () => {
  const cases: [string[], RegExp][] = [
    [
      ["--bogus"],
      /^Cannot parse convert arguments: Unknown option '--bogus' \(see convert --help\)$/,
    ],
    [["-x"], /Unknown option '-x'/],
    [
      ["--start", "1"],
      /Option '--start' is ambiguous \(--start-offset, --start-length\)/,
    ],
    [
      ["--salvage"],
      /^Cannot convert: --salvage is not supported \(errors stop the run\)$/,
    ],
    [["--sal"], /^Cannot convert: --salvage is not supported/],
    [["-f"], /Option '-f' needs a value/],
    [["--format"], /Option '--format' needs a value/],
    [["--progress=yes"], /Option '--progress' does not take a value/],
    [
      ["-t", "bogus"],
      /^Cannot convert: -t "bogus" is not one of none, writeback$/,
    ],
  ];
  for (const [args, pattern] of cases) {
    assert.throws(() => getopt("convert", args, SPECS), (err: Error) => {
      assert.ok(err instanceof UsageError);
      assert.match(err.message, pattern);
      return true;
    });
  }
});

Deno.test("getopt() takes an option with choices for any of them", () => {
  assert.deepStrictEqual(getopt("convert", ["-tnone"], SPECS).values, {
    cache: "none",
  });
});

Deno.test("splitOptionList() splits -o as QEMU does: ,, is a comma, a bare key is on", () => {
  assert.deepStrictEqual(
    splitOptionList(["backing_file=a,,b.qcow2,lazy_refcounts", "size=1M"]),
    [["backing_file", "a,b.qcow2"], ["lazy_refcounts", "on"], ["size", "1M"]],
  );
  // qemu-img's "Invalid option list": empty, a leading comma, a comma
  // left open at the end; an even run of commas at the end is a comma.
  for (const list of ["", ",help", ",,", "backing_file=a,", "a=b,,,"]) {
    assert.throws(
      () => splitOptionList([list]),
      new RegExp(`^UsageError: Invalid option list: ${list}$`),
    );
  }
  assert.deepStrictEqual(splitOptionList(["backing_file=a,,"]), [
    ["backing_file", "a,"],
  ]);
});

Deno.test("parseCreateOptions() takes the keys it writes, the last value of a key winning", () => {
  assert.deepStrictEqual(
    parseCreateOptions([
      "cluster_size=4k,compression_type=zstd,refcount_bits=8",
      "backing_file=base.qcow2,backing_fmt=raw,cluster_size=2M",
      "compat=v3,lazy_refcounts=false,extended_l2=off,preallocation=off",
    ], "qcow2"),
    {
      clusterSize: 2 << 20,
      compressionType: "zstd",
      refcountBits: 8,
      backingFile: "base.qcow2",
      backingFormat: "raw",
      compat: "v3",
      lazyRefcounts: false,
      preallocation: "off",
    },
  );
  assert.deepStrictEqual(
    parseCreateOptions(
      ["compat=0.10,lazy_refcounts,preallocation=full"],
      "qcow2",
    ),
    { compat: "v2", lazyRefcounts: true, preallocation: "full" },
  );
  assert.deepStrictEqual(parseCreateOptions(["preallocation=off"], "raw"), {
    preallocation: "off",
  });
});

Deno.test("parseCreateOptions() names the key it refuses and why", () => {
  const cases: [string, "raw" | "qcow2", RegExp][] = [
    ["compat=0.9", "qcow2", /-o compat: "0\.9" is not 0\.10, v2, 1\.1 or v3/],
    [
      "lazy_refcounts=maybe",
      "qcow2",
      /lazy_refcounts: "maybe" is not on or off/,
    ],
    ["extended_l2=maybe", "qcow2", /-o extended_l2: "maybe" is not on or off/],
    ["preallocation=some", "raw", /preallocation: "some" is not off, metadata/],
    [
      "data_file=x.raw",
      "qcow2",
      /-o data_file is not supported \(external data files/,
    ],
    ["encrypt.format=luks", "qcow2", /-o encrypt\.format is not supported/],
    ["size=1G", "qcow2", /-o size is not supported/],
    [
      "cluster_size=64k",
      "raw",
      /-o cluster_size applies to qcow2 output only, and the output is raw/,
    ],
    [
      "compression_type=lz4",
      "qcow2",
      /compression_type: "lz4" is not zlib or zstd/,
    ],
    ["backing_fmt=vmdk", "qcow2", /backing_fmt: "vmdk" is not raw or qcow2/],
    [
      "bogus=1",
      "qcow2",
      /-o bogus is not an option of qcow2 images \(see -o help\)/,
    ],
  ];
  for (const [list, format, pattern] of cases) {
    assert.throws(() => parseCreateOptions([list], format), pattern);
  }
});

Deno.test("createOptionsHelp() lists the format's keys, and the file's with a target, in qemu-img's layout", () => {
  const qcow2 = createOptionsHelp("qcow2", false);
  assert.match(qcow2, /^Supported qcow2 options:\n/);
  assert.match(qcow2, /^ {2}compression_type=<str> - /m);
  assert.match(qcow2, /^ {2}cluster_size=<size> {4}- /m);
  assert.doesNotMatch(qcow2, /nocow/);
  assert.match(createOptionsHelp("qcow2", true), /^Supported options:\n/);
  assert.match(createOptionsHelp("qcow2", true), /^ {2}nocow=/m);
  assert.strictEqual(
    createOptionsHelp("raw", false),
    "Supported raw options:\n  size=<size>            - Virtual disk size\n\n" +
      "The protocol level may support further options.\n" +
      "Specify the target filename to include those options.\n",
  );
});
