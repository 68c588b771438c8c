// What a command loads before it reads a byte: the modules its code reaches
// through static imports, as Deno's own module graph (`deno info --json`)
// records them. Code behind `import()` (another format's reader, a codec
// backend, --sparsify's file systems, a stream's unpackers, the streamable
// writer) is evaluated only when the run needs it, so `--version`, `info`
// and a plain convert start without compiling it. The graph is checked,
// not the time.
import assert from "node:assert";
import { fileURLToPath } from "node:url";
import { run } from "../_qemu.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

interface GraphModule {
  specifier: string;
  dependencies?: {
    code?: { specifier?: string };
    isDynamic?: boolean;
  }[];
}

/** The files (relative to the repository) `entry` reaches statically. */
async function staticClosure(entry: string): Promise<string[]> {
  const json = await run(Deno.execPath(), ["info", "--json", ROOT + entry]);
  const graph = JSON.parse(json) as {
    roots: string[];
    modules: GraphModule[];
  };
  const bySpecifier = new Map(graph.modules.map((m) => [m.specifier, m]));
  const reached = new Set<string>();
  const queue = [...graph.roots];
  while (queue.length > 0) {
    const specifier = queue.pop()!;
    if (reached.has(specifier)) continue;
    reached.add(specifier);
    for (const dep of bySpecifier.get(specifier)?.dependencies ?? []) {
      const target = dep.code?.specifier;
      if (target && !dep.isDynamic) queue.push(target);
    }
  }
  const root = new URL(`file://${ROOT}`).href;
  return [...reached].filter((s) => s.startsWith(root) || s.startsWith("node:"))
    .map((s) => s.startsWith(root) ? s.slice(root.length) : s).sort();
}

/** The files of `files` under any of `folders` (paths with a trailing /). */
function under(files: string[], folders: string[]): string[] {
  return files.filter((f) => folders.some((d) => f.startsWith(d)));
}

/** The readers of the formats other than qcow2, each loaded when met. */
const OTHER_READERS = ["raw", "qcow", "vdi", "vmdk", "vpc", "vhdx"]
  .map((f) => `lib/reader/${f}/`);

/** Code only some runs need, for every command. */
const ON_DEMAND = [
  "lib/sparsify/",
  "lib/reader/packed/tar.ts",
  "lib/reader/packed/unpack.ts",
  "lib/reader/stream_open.ts",
  "lib/writer/streamable.ts",
  ...OTHER_READERS,
];

/** A codec's backend, loaded with the first codec of its kind. */
function isCodecBackend(file: string): boolean {
  return /^lib\/codec\/_(\w+_backend|zstd_wasm|native_context)\.ts$/.test(
    file,
  );
}

Deno.test("cli: --version and --help reach no reader, writer, codec or tool", async () => {
  const files = await staticClosure("lib/cli/main.ts");
  assert.deepStrictEqual(
    under(files, [
      "lib/reader/",
      "lib/writer/",
      "lib/codec/",
      "lib/tools/",
      "lib/sparsify/",
    ]),
    [],
  );
  assert.ok(files.includes("lib/cli/_util.ts"), files.join("\n"));
});

Deno.test("cli: each command reaches only the code every run of it needs", async () => {
  for (
    const command of [
      "info",
      "check",
      "map",
      "compare",
      "convert",
      "measure",
      "snapshot",
      "create",
    ]
  ) {
    const files = await staticClosure(`lib/cli/${command}_cmd.ts`);
    assert.ok(files.includes("lib/reader/formats.ts"), command);
    assert.deepStrictEqual(
      [...under(files, ON_DEMAND), ...files.filter(isCodecBackend)],
      [],
      `${command} reaches these statically`,
    );
  }
  // Describing, mapping and comparing write nothing (and reach no codec
  // backend, above); qcow2's reader loads when the image is qcow2. Nor do they start Deno's
  // Node compatibility layer (any node: module), with file access loaded.
  for (const command of ["info", "map", "compare"]) {
    const files = [
      ...await staticClosure(`lib/cli/${command}_cmd.ts`),
      ...await staticClosure("lib/host/file_source.ts"),
    ];
    assert.deepStrictEqual(
      under(files, ["lib/writer/", "lib/reader/qcow2/", "node:"]),
      [],
      `${command} reaches these statically`,
    );
  }
});

Deno.test("the format registry and the codec factory load their parts on use", async () => {
  const registry = await staticClosure("lib/reader/formats.ts");
  assert.deepStrictEqual(
    under(registry, [...OTHER_READERS, "lib/reader/qcow2/"]),
    [],
  );
  const codecs = await staticClosure("lib/codec/codecs.ts");
  assert.deepStrictEqual(codecs.filter(isCodecBackend), []);
  // The codec worker's own start: the pool and the job runner, no backend
  // until its first job names one.
  const worker = await staticClosure("lib/codec/pool.ts");
  assert.deepStrictEqual(worker.filter(isCodecBackend), []);
  assert.ok(worker.includes("lib/codec/_worker_side.ts"), worker.join("\n"));
});
