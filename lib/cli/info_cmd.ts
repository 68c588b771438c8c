// `qcow2pipe info`: what `qemu-img info` prints, in its human or JSON form.
import { formatImageInfo, formatImageInfoJson, imageInfo } from "../../mod.ts";
import { expectPositionals, parseCommand, writeOut } from "./_args.ts";

export const INFO_HELP = `Usage: qcow2pipe info [--json] [--backing-chain] IMG

Describe a disk image (qcow2 or raw) as "qemu-img info" does: format,
virtual size, disk size, cluster size, backing file, snapshots and the
qcow2 specifics (compat, compression type, lazy refcounts, refcount bits,
corrupt bit, extended L2, data file, bitmaps, encryption).

Options:
      --json            print "qemu-img info --output=json" (same keys)
      --backing-chain   describe every image of the backing chain
  -h, --help            show this help`;

export async function infoCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand("info", args, {
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
  const info = await imageInfo(path, { backingChain: chain });
  await writeOut(
    values.json
      ? formatImageInfoJson(info, chain) + "\n"
      : formatImageInfo(info, chain),
  );
  return 0;
}
