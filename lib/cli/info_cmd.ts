// `qcow2pipe info`: what `qemu-img info` prints, in its human or JSON form.
import { formatImageInfo, formatImageInfoJson, imageInfo } from "../../mod.ts";
import {
  expectPositionals,
  parseCommand,
  parseFormat,
  writeOut,
} from "./_args.ts";

export const INFO_HELP =
  `Usage: qcow2pipe info [-f FMT] [--json] [--backing-chain] IMG

Describe a disk image (qcow2 or raw) as "qemu-img info" does: format,
virtual size, disk size, cluster size, backing file, snapshots and the
qcow2 specifics (compat, compression type, lazy refcounts, refcount bits,
corrupt bit, extended L2, data file, bitmaps, encryption).

Options:
  -f FMT                format of IMG: raw or qcow2 (default: probed; a
                        probed image may only lead to files in its own
                        directory)
      --json            print "qemu-img info --output=json" (same keys)
      --backing-chain   describe every image of the backing chain
  -h, --help            show this help`;

export async function infoCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand("info", args, {
    format: { type: "string", short: "f" },
    json: { type: "boolean" },
    "backing-chain": { type: "boolean" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(INFO_HELP);
    return 0;
  }
  const [path] = expectPositionals("describe image", positionals, ["IMG"]);
  const chain = values["backing-chain"] ?? false;
  const format = parseFormat(values.format, "-f");
  const info = await imageInfo(path, { backingChain: chain, format });
  await writeOut(
    values.json
      ? formatImageInfoJson(info, chain) + "\n"
      : formatImageInfo(info, chain),
  );
  return 0;
}
