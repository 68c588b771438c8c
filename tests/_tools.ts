// Other programs some tests run besides QEMU: Node, headless Chromium,
// libqcow (pyqcow) and 7-Zip. As with qemuTest, a test that needs one is
// skipped with a visible message when it is absent, except under CI
// (CI=true), where its absence fails the test.

import { HAVE_QEMU } from "./_qemu.ts";

/** A program a test needs, and how to install it. */
export interface Tool {
  /** Name for messages. */
  name: string;
  /** Whether it runs here. */
  available: boolean;
  /** The Debian package that provides it. */
  install: string;
}

function runs(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).outputSync().success;
  } catch {
    return false;
  }
}

/** The Python interpreter that has Debian's pyqcow module. */
export const PYTHON = "/usr/bin/python3";

/** qemu-img and qemu-io, the judges. */
export const QEMU: Tool = {
  name: "qemu-img",
  available: HAVE_QEMU,
  install: "qemu-utils",
};
/** Node.js (the bundle test needs 20 or newer). */
export const NODE: Tool = {
  name: "node",
  available: runs("node", [
    "-e",
    "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)",
  ]),
  install: "nodejs (20 or newer)",
};
/** Debian's headless-capable Chromium. */
export const CHROMIUM: Tool = {
  name: "chromium",
  available: runs("chromium", ["--version"]),
  install: "chromium",
};
/** libqcow's Python binding. */
export const PYQCOW: Tool = {
  name: "pyqcow",
  available: runs(PYTHON, ["-c", "import pyqcow"]),
  install: "python3-libqcow",
};
/** 7-Zip's command-line program. */
export const SEVEN_ZIP: Tool = {
  name: "7zz",
  available: runs("7zz", ["i"]),
  install: "7zip",
};

const IN_CI = (Deno.env.get("CI") ?? "") !== "" &&
  Deno.env.get("CI") !== "false";
const warned = new Set<string>();

/**
 * Registers a test that needs `tools`. Outside CI a missing tool skips it
 * with a message on stderr; under CI the test runs and fails naming it.
 */
export function toolTest(
  name: string,
  tools: Tool[],
  fn: (t: Deno.TestContext) => Promise<void> | void,
): void {
  const missing = tools.filter((t) => !t.available);
  if (missing.length > 0 && !IN_CI) {
    for (const tool of missing) {
      if (warned.has(tool.name)) continue;
      warned.add(tool.name);
      console.error(
        `${tool.name} not found: skipping tests that need it (apt-get install ${tool.install})`,
      );
    }
    Deno.test({ name, ignore: true, fn });
    return;
  }
  Deno.test(name, async (t) => {
    if (missing.length > 0) {
      throw new Error(
        `${
          missing.map((t) => t.name).join(", ")
        } required under CI but not found`,
      );
    }
    await fn(t);
  });
}

/**
 * Runs `check` against a tool inside a test that is already running: when
 * the tool is missing, says so on stderr and returns (fails under CI).
 */
export async function withTool(
  tool: Tool,
  check: () => Promise<void>,
): Promise<void> {
  if (!tool.available) {
    if (IN_CI) throw new Error(`${tool.name} required under CI but not found`);
    console.error(`${tool.name} not found: that check is skipped`);
    return;
  }
  await check();
}
