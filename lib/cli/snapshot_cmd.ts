// `qcow2pipe snapshot -l`: the internal snapshots of an image, listed as
// `qemu-img snapshot -l` lists them. Creating, applying and deleting
// snapshots are qemu-img's.
import { imageInfo } from "../tools/info.ts";
import { formatSnapshotList } from "../tools/info_text.ts";
import { expectPositionals, parseFormat, writeOut } from "./_args.ts";
import {
  formatHelp,
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
  INSPECT_OPTIONS,
} from "./_getopt.ts";
import { openNamed } from "./_inputs.ts";

const WRITES = "snapshots are listed, not changed; use qemu-img snapshot";

export const SNAPSHOT_HELP = `Usage: qcow2pipe snapshot -l [-f FMT] [-U] IMG

List the internal snapshots of IMG as "qemu-img snapshot -l" does (ID,
tag, VM state size, date in local time, VM clock, instruction count);
nothing for an image without snapshots. -a, -c and -d (apply, create,
delete) are not provided: qcow2pipe does not change images in place.

Options:
  -l, --list            list the snapshots
${formatHelp("  -f, --format FMT", 24, "IMG")}
${httpTimeoutHelp(24)}
  -q, --quiet           accepted, as qemu-img takes it
  -U, --force-share     accepted, as qemu-img takes it
  -h, --help            show this help`;

export async function snapshotCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("snapshot", args, {
    list: { type: "boolean", short: "l" },
    format: { type: "string", short: "f" },
    quiet: { type: "boolean", short: "q" },
    apply: { type: "string", short: "a", unsupported: WRITES },
    create: { type: "string", short: "c", unsupported: WRITES },
    delete: { type: "string", short: "d", unsupported: WRITES },
    ...HTTP_OPTIONS,
    ...INSPECT_OPTIONS,
  });
  if (values.help) {
    console.log(SNAPSHOT_HELP);
    return 0;
  }
  const [path] = expectPositionals("list snapshots", positionals, ["IMG"]);
  const format = parseFormat(values.format, "-f");
  const http = httpTransport("list snapshots", values["http-timeout"]);
  await using image = await openNamed(path, http, "snapshot");
  const info = await imageInfo(image.input, {
    format,
    http,
    allocatedSize: () => Promise.resolve(undefined),
  });
  // As qemu-img: without -l, the image is opened and nothing is printed.
  if (values.list) await writeOut(formatSnapshotList(info.snapshots));
  return 0;
}
