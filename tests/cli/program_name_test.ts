// Messages name the program as a wrapper that runs us under another name
// says (QCOW2PIPE_PROGRAM_NAME): qemu-iotests' expected outputs start
// qemu-img's lines with the name it was run as, and iotests/ runs us so.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";

const CLI = new URL("../../cli.ts", import.meta.url).pathname;

/** `deno run PERMISSIONS cli.ts info MISSING` with `env`: its stderr. */
async function infoOfMissing(
  permissions: string[],
  env: Record<string, string>,
): Promise<{ code: number; stderr: string }> {
  await using dir = await tempDir();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...permissions, CLI, "info", join(dir.path, "missing.qcow2")],
    env,
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("cli: messages start with the name QCOW2PIPE_PROGRAM_NAME gives, where the environment may be read", async () => {
  const named = await infoOfMissing(["-A"], {
    QCOW2PIPE_PROGRAM_NAME: "qemu-img",
  });
  assert.strictEqual(named.code, 1);
  assert.match(named.stderr, /^qemu-img: .*missing\.qcow2/);
  assert.doesNotMatch(named.stderr, /qcow2pipe: /);

  // Without the variable, or without permission to read it (no prompt, no
  // failure), or with a name that is not a plain word: our own name.
  for (
    const [permissions, env] of [
      [["-A"], {}],
      [["-R"], { QCOW2PIPE_PROGRAM_NAME: "qemu-img" }],
      [["-A"], { QCOW2PIPE_PROGRAM_NAME: "a b\u001b[2J" }],
    ] as const
  ) {
    const r = await infoOfMissing([...permissions], env);
    assert.strictEqual(r.code, 1, r.stderr);
    assert.match(r.stderr, /^qcow2pipe: .*missing\.qcow2/, r.stderr);
  }
});
