// The selection of tests: iotests/selection.txt, one test a line, and each
// test of the suite left out on a line of its own starting with `-`, with
// the reason. `deno task iotests --select` writes it again.
import { IOTESTS } from "./_suite.ts";
import type { Outcome } from "./_check.ts";

/** The checked-in selection. */
export const SELECTION = new URL("./selection.txt", import.meta.url).pathname;

/** Reads the selected tests from selection.txt. */
export async function readSelection(): Promise<string[]> {
  const text = await Deno.readTextFile(SELECTION);
  return text.split("\n")
    .map((l) => l.replace(/#.*/, "").trim())
    .filter((l) => l !== "" && !l.startsWith("-"))
    .map((l) => l.split(/\s+/)[0]);
}

/** Why a test is not a candidate, from its script; undefined if it is one. */
function reasonToSkip(script: string): string | undefined {
  const formats = /_supported_fmt\s+([^\n]*)/.exec(script) ??
    /supported_fmts\s*=\s*\[([^\]]*)\]/.exec(script);
  if (!formats) return "states no supported format";
  if (!/qcow2|generic/.test(formats[1])) return "not a qcow2 test";
  if (
    /_launch_qemu|iotests\.VM\b|\bVM\(|\$QEMU\b|_launch_qsd|\$QSD\b|qemu_storage_daemon|QemuStorageDaemon/
      .test(script)
  ) return "needs a system emulator or the storage daemon";
  if (
    !/QEMU_IMG[^\n]*\b(convert|info|check|map|compare)\b|_check_test_img|_img_info|qemu_img[^\n]*\b(convert|info|check|map|compare)\b/
      .test(script)
  ) return "runs none of convert, info, check, map, compare";
  return undefined;
}

/** Every test of the suite: the numbered ones and those under tests/. */
async function allTests(): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(IOTESTS)) {
    if (e.isFile && /^\d{3}$/.test(e.name)) names.push(e.name);
  }
  for await (const e of Deno.readDir(`${IOTESTS}/tests`)) {
    if (e.isFile && !e.name.includes(".")) names.push(`tests/${e.name}`);
  }
  return names.sort();
}

/** The candidates (basenames) and the tests left out at once, with why. */
export async function candidates(): Promise<
  { chosen: string[]; left: [string, string][] }
> {
  const chosen: string[] = [];
  const left: [string, string][] = [];
  for (const name of await allTests()) {
    const reason = reasonToSkip(await Deno.readTextFile(`${IOTESTS}/${name}`));
    if (reason) left.push([name.replace(/^tests\//, ""), reason]);
    else chosen.push(name.replace(/^tests\//, ""));
  }
  return { chosen, left };
}

/**
 * Writes selection.txt: the candidates that pass with the real qemu-img,
 * and every other test with the reason it is left out.
 */
export async function writeSelection(
  found: { chosen: string[]; left: [string, string][] },
  real: (test: string) => Outcome,
): Promise<void> {
  const chosen: string[] = [];
  const left = [...found.left];
  for (const name of found.chosen) {
    const r = real(name);
    if (r.status === "pass") chosen.push(name);
    else if (r.status === "skip") {
      left.push([name, `not run with the real qemu-img: ${r.diff}`]);
    } else left.push([name, `fails with the real qemu-img: ${r.diff}`]);
  }
  left.sort((a, b) => a[0].localeCompare(b[0]));
  const text = [
    "# The qcow2 iotests `deno task iotests` runs: they run convert, info,",
    "# check, map or compare, need no system emulator, and pass with the real",
    "# qemu-img. Written by `deno task iotests --select`; each test left out",
    "# is on a line starting with '-', with the reason.",
    ...chosen,
    "",
    ...left.map(([n, r]) => `-${n}  ${r}`),
    "",
  ].join("\n");
  await Deno.writeTextFile(SELECTION, text);
  console.log(
    `iotests: ${chosen.length} selected, ${left.length} left out (${SELECTION})`,
  );
}
