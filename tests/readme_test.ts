// The README's examples are tests, so that a wrong one fails CI. Its
// TypeScript blocks are type-checked and run by `deno task test` itself
// (`deno test --doc` collects the code blocks of README.md, each as its own
// test: `README.md#87-117.ts`). Here every shell line that can run offline
// runs as written (the permissions it shows included) in a folder holding
// the files it reads, with a loopback server standing in for example.org.
// The command synopses run too, with their placeholders filled in, to show
// that the permissions they list are enough.

import assert from "node:assert";
import { join } from "node:path";
import { qemuImg, qemuTest, tempDir } from "./_qemu.ts";
import { serveFiles } from "./streams/_server.ts";
import { mixedBytes } from "./writer/_helpers.ts";
import { NAMED_FORMATS } from "../lib/cli/_convert_settings.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const README = Deno.readTextFileSync(join(ROOT, "README.md"));

/** The fenced blocks of one language, with their first line number. */
function codeBlocks(lang: string): { line: number; body: string }[] {
  const blocks: { line: number; body: string }[] = [];
  const lines = README.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== "```" + lang) continue;
    const start = i + 1;
    while (i + 1 < lines.length && lines[i + 1] !== "```") i++;
    blocks.push({
      line: start + 1,
      body: lines.slice(start, i + 1).join("\n"),
    });
    i++;
  }
  return blocks;
}

/** Lines not run, and why. */
const NOT_RUN: [RegExp, string][] = [
  [/^npx /, "installs Deno from npm"],
  [/^deno install -g /, "installs the command for the user"],
  [
    /^deno task npm /,
    "installs the npm package globally (tests/portable/npm_package_test.ts installs the tarball in a folder)",
  ],
  [/^FUZZ_CASES=/, "a long fuzz run (the fuzz test runs in CI)"],
  [/\/dev\/sdX/, "writes a block device"],
];

/** A synopsis line with its placeholders filled in, or the line as is. */
function fillIn(line: string): string {
  if (!/ \[|\bIMG\b| A B$/.test(line)) return line;
  const filled = line
    .replaceAll(/ \[[^\]]*\]/g, "")
    .replace(/ SRC\|- DST\|-$/, " disk.raw out.qcow2")
    .replace(/ IMG$/, " disk.qcow2")
    .replace(/ A B$/, " disk.qcow2 disk.raw");
  return / demo$/.test(filled) ? `${filled} --size 1` : filled;
}

/** Files a line writes: convert's DST and `>` redirections. */
function writes(line: string): string[] {
  const out: string[] = [];
  for (const segment of line.split("|")) {
    const redirect = />\s*(\S+)/.exec(segment);
    if (redirect) out.push(redirect[1]);
    const words = segment.replace(/>\s*\S+/, "").trim().split(/\s+/);
    if (words.includes("convert")) out.push(words.at(-1)!);
  }
  return out;
}

qemuTest(
  "README: the shell examples run offline as written, with the permissions they show",
  async () => {
    await using dir = await tempDir();
    const fixtures = join(dir.path, "fixtures");
    await Deno.mkdir(fixtures);
    const raw = mixedBytes(2 * 1024 * 1024, 11, 64 * 1024);
    await Deno.writeFile(join(fixtures, "disk.raw"), raw);
    await qemuImg(
      "convert",
      "-O",
      "qcow2",
      join(fixtures, "disk.raw"),
      join(fixtures, "disk.qcow2"),
    );
    await Deno.copyFile(
      join(fixtures, "disk.qcow2"),
      join(fixtures, "old.qcow2"),
    );
    await Deno.copyFile(
      join(fixtures, "disk.qcow2"),
      join(fixtures, "vm.qcow2"),
    );
    await qemuImg(
      "snapshot",
      "-c",
      "before-upgrade",
      join(fixtures, "vm.qcow2"),
    );
    // The delta example: a base image, and the disk changed since.
    await Deno.copyFile(
      join(fixtures, "disk.qcow2"),
      join(fixtures, "base.qcow2"),
    );
    const changed = raw.slice();
    changed.fill(0x5c, 70_000, 90_000);
    await Deno.writeFile(join(fixtures, "new.raw"), changed);
    // An OVA as ovftool packs it: the .ovf, then a streamOptimized disk.
    await qemuImg(
      "convert",
      "-O",
      "vmdk",
      "-o",
      "subformat=streamOptimized",
      join(fixtures, "disk.raw"),
      join(dir.path, "disk1.vmdk"),
    );
    await Deno.writeTextFile(join(dir.path, "appliance.ovf"), "<Envelope/>\n");
    const tar = await new Deno.Command("tar", {
      args: ["cf", "appliance.ova", "appliance.ovf", "disk1.vmdk"],
      cwd: dir.path,
    }).output();
    assert.strictEqual(tar.code, 0, new TextDecoder().decode(tar.stderr));
    await using server = serveFiles({
      "disk.raw": raw,
      "disk.qcow2": await Deno.readFile(join(fixtures, "disk.qcow2")),
      "appliance.ova": await Deno.readFile(join(dir.path, "appliance.ova")),
    });

    const lines: { line: number; command: string }[] = [];
    for (const block of codeBlocks("sh")) {
      block.body.split("\n").forEach((text, i) => {
        // `cmd  # or: other` gives two commands; other comments are dropped.
        const [command, comment] = text.split(/\s+#\s*/, 2);
        lines.push({ line: block.line + i, command });
        const alternative = /^or: (.*)$/.exec(comment ?? "");
        if (alternative) {
          lines.push({ line: block.line + i, command: alternative[1] });
        }
      });
    }
    let ran = 0;
    for (const { line, command } of lines) {
      const skip = NOT_RUN.find(([pattern]) => pattern.test(command));
      if (skip) continue;
      const runnable = fillIn(command)
        .replaceAll(" cli.ts ", ` ${join(ROOT, "cli.ts")} `)
        .replaceAll("https://example.org/", server.url(""));
      const cwd = join(dir.path, `line-${line}-${ran}`);
      await Deno.mkdir(cwd);
      const written = writes(command);
      for (const entry of Deno.readDirSync(fixtures)) {
        if (!written.includes(entry.name)) {
          await Deno.copyFile(
            join(fixtures, entry.name),
            join(cwd, entry.name),
          );
        }
      }
      const out = await new Deno.Command("bash", {
        args: ["-o", "pipefail", "-c", runnable],
        cwd,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const said = new TextDecoder().decode(out.stderr) +
        new TextDecoder().decode(out.stdout);
      assert.strictEqual(out.code, 0, `README.md:${line}: ${command}\n${said}`);
      assert.doesNotMatch(
        said,
        /NotCapable|Requires \w+ access/,
        `README.md:${line}`,
      );
      if (/ demo /.test(runnable)) {
        assert.match(
          said,
          /qemu-img check +No errors were found/,
          "demo ran qemu-img",
        );
      }
      ran++;
    }
    // The guide's examples and the seven synopses.
    assert.ok(ran >= 18, `${ran} lines ran`);
  },
);

Deno.test("README: each library example runs with the permissions its first line states, and imports the package by its name", async () => {
  const examples = codeBlocks("ts");
  assert.ok(examples.length >= 4, `${examples.length} examples`);
  // Under the repository, so that the package's name resolves to mod.ts
  // as deno.json's name and exports say.
  const scratch = join(ROOT, ".scratch");
  await Deno.mkdir(scratch, { recursive: true });
  for (const { line, body } of examples) {
    const stated = /^\/\/ Permissions: (.*)$/m.exec(body.split("\n")[0]);
    assert.ok(stated, `README.md:${line} says which permissions it needs`);
    assert.doesNotMatch(body, /from "\.\.?\//, `README.md:${line}`);
    assert.match(body, /from "@qcow2pipe\/qcow2pipe(\/\w+)?"/);
    const flags = stated[1].match(/(?<![\w-])-[A-Z]\b/g) ?? [];
    const file = join(scratch, `readme-${line}-${crypto.randomUUID()}.ts`);
    await Deno.writeTextFile(file, body);
    try {
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--no-prompt", "--quiet", ...flags, file],
        cwd: ROOT,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
      const said = new TextDecoder().decode(out.stderr);
      assert.strictEqual(
        out.code,
        0,
        `README.md:${line} with ${flags.join(" ") || "no flags"}: ${said}`,
      );
    } finally {
      await Deno.remove(file);
    }
  }
});

Deno.test("README: the DST names that say a format are the ones convert reads them from", () => {
  for (const [format, extensions] of Object.entries(NAMED_FORMATS)) {
    const listed = `${
      extensions.map((e) => "`" + e + "`").join(" ")
    } ${format}`;
    assert.ok(README.includes(listed), `README lists ${listed}`);
  }
});
