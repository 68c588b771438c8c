// Fetches QEMU's qemu-iotests from the Debian source package of the
// installed qemu-utils, with Debian's patches applied, into iotests/.cache/.

/** The harness's cache (gitignored): the source package, runs, results. */
export const CACHE = new URL("./.cache/", import.meta.url).pathname;
/** Where the source package is unpacked. */
const SOURCE = `${CACHE}src/qemu`;
/** The folder of QEMU's `check` script inside the unpacked source. */
export const IOTESTS = `${SOURCE}/tests/qemu-iotests`;

/** Runs a command, inheriting stdout and stderr; throws if it fails. */
export async function must(cmd: string, args: string[], cwd?: string) {
  const { code } = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) {
    throw new Error(`Cannot run ${cmd} ${args.join(" ")}: exit status ${code}`);
  }
}

/** Runs a command and returns its standard output, trimmed. */
export async function read(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stderr: "inherit" })
    .output();
  if (out.code !== 0) {
    throw new Error(
      `Cannot run ${cmd} ${args.join(" ")}: exit status ${out.code}`,
    );
  }
  return new TextDecoder().decode(out.stdout).trim();
}

/** Whether a path exists. */
const exists = (path: string) => Deno.stat(path).then(() => true, () => false);

const SOURCES_DIR = "/etc/apt/sources.list.d";

/** The apt source files: sources.list and every file of sources.list.d. */
async function aptSourceFiles(): Promise<string[]> {
  const files = ["/etc/apt/sources.list"];
  for await (const e of Deno.readDir(SOURCES_DIR)) {
    if (/\.(list|sources)$/.test(e.name)) {
      files.push(`${SOURCES_DIR}/${e.name}`);
    }
  }
  return files.filter((f) => {
    try {
      return Deno.statSync(f).isFile;
    } catch {
      return false;
    }
  });
}

/**
 * Adds `deb-src` lines matching the Debian `deb` entries, if none is there:
 * a deb822 `.sources` stanza with `Types: deb` becomes one with
 * `Types: deb-src`, a one-line `deb URI SUITE …` a `deb-src` line.
 */
async function ensureDebSrc(): Promise<void> {
  const files = await aptSourceFiles();
  const texts = await Promise.all(files.map((f) => Deno.readTextFile(f)));
  if (texts.some((t) => /^\s*(deb-src\b|Types:.*\bdeb-src\b)/m.test(t))) return;
  const stanzas: string[] = [];
  const lines: string[] = [];
  files.forEach((file, i) => {
    if (file.endsWith(".sources")) {
      for (const stanza of texts[i].split(/\n\s*\n/)) {
        if (/^Types:\s*deb\s*$/m.test(stanza) && /debian/.test(stanza)) {
          stanzas.push(
            stanza.trim().replace(/^Types:\s*deb\s*$/m, "Types: deb-src"),
          );
        }
      }
    } else {
      for (const line of texts[i].split("\n")) {
        if (/^deb\s+\S*debian\S*\s/.test(line)) {
          lines.push(line.replace(/^deb\b/, "deb-src"));
        }
      }
    }
  });
  if (stanzas.length === 0 && lines.length === 0) {
    throw new Error(
      "Cannot fetch the qemu source package: no Debian deb entry in /etc/apt to derive a deb-src entry from",
    );
  }
  if (Deno.uid() !== 0) {
    throw new Error(
      `Cannot add a deb-src entry without root: add to ${SOURCES_DIR}/qcow2pipe-iotests.sources:\n${
        stanzas.join("\n\n")
      }${lines.join("\n")}`,
    );
  }
  if (stanzas.length > 0) {
    await Deno.writeTextFile(
      `${SOURCES_DIR}/qcow2pipe-iotests.sources`,
      stanzas.join("\n\n") + "\n",
    );
  }
  if (lines.length > 0) {
    await Deno.writeTextFile(
      `${SOURCES_DIR}/qcow2pipe-iotests.list`,
      lines.join("\n") + "\n",
    );
  }
  console.error(`iotests: added deb-src entries in ${SOURCES_DIR}`);
  await must("apt-get", ["update", "-qq"]);
}

/**
 * Makes sure the suite is unpacked: the source package of the installed
 * qemu-utils (its source version: a binNMU suffix such as `+b3` is the
 * binary's own), downloaded with `apt-get source --download-only` and
 * unpacked with `dpkg-source -x`, which applies Debian's patches.
 */
export async function ensureSuite(): Promise<void> {
  if (await exists(`${IOTESTS}/check`)) return;
  const version = await read("dpkg-query", [
    "-W",
    "-f",
    "${source:Version}",
    "qemu-utils",
  ]);
  await ensureDebSrc();
  const dir = `${CACHE}src`;
  await Deno.mkdir(dir, { recursive: true });
  await must("apt-get", [
    "source",
    "--download-only",
    `qemu=${version}`,
  ], dir);
  const dsc = `qemu_${version.replace(/^\d+:/, "")}.dsc`;
  await must("dpkg-source", ["-x", dsc, "qemu"], dir);
}
