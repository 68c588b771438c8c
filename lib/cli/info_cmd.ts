// `qcow2pipe info`: what `qemu-img info` prints, in its human or JSON form.
import { inQemuWords } from "./_util.ts";
import { qemuImageName } from "./_image_name.ts";
import { imageInfo } from "../tools/info.ts";
import { formatImageInfo, formatImageInfoJson } from "../tools/info_text.ts";
import { expectPositionals, writeOut } from "./_args.ts";
import {
  formatHelp,
  getopt,
  HTTP_OPTIONS,
  httpTimeoutHelp,
  httpTransport,
  NAMING_OPTIONS,
  outputFormat,
} from "./_getopt.ts";
import { namedFile, openNamed } from "./_inputs.ts";

export const INFO_HELP =
  `Usage: qcow2pipe info [-f FMT] [--output=human|json] [--backing-chain] [--http-timeout S] [-U] IMG

Describe a disk image (any format read, see -f) as "qemu-img info" does:
format, virtual size, disk size, cluster size, backing file, snapshots and the
qcow2 specifics (compat, compression type, lazy refcounts, refcount bits,
corrupt bit, extended L2, data file, bitmaps, encryption). IMG is a file
or an http(s) URL (read with Range requests: the header and the tables
described, nothing else).

Options:
${formatHelp("  -f, --format FMT", 24, "IMG")}
      --output FMT      human (default) or json: "qemu-img info
                        --output=json" (same keys)
      --json            the same as --output=json
      --backing-chain   describe every image of the backing chain
${httpTimeoutHelp(24)}
  -U, --force-share     accepted, as qemu-img takes it: images are read
                        without locks
      --image-opts      IMG is qemu-img's options: driver=FMT,file.filename=PATH
                        (json:{...} and file:PATH names are taken too)
      --object SECRET   secret,id=ID,... taken, never read (info reads no
                        encrypted data: encrypt.key-secret=ID needs none)
  -h, --help            show this help`;

export async function infoCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("info", args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    json: { type: "boolean" },
    "backing-chain": { type: "boolean" },
    ...HTTP_OPTIONS,
    ...NAMING_OPTIONS,
  });
  if (values.help) {
    console.log(INFO_HELP);
    return 0;
  }
  const [name] = expectPositionals("describe image", positionals, ["IMG"]);
  const output = outputFormat("describe image", values.output, values.json);
  const chain = values["backing-chain"] ?? false;
  const { path, format, keySecret } = await namedFile(
    name,
    values,
    true,
    true,
  );
  const http = httpTransport("describe image", values["http-timeout"]);
  await using image = await openNamed(path, http, "info");
  const info = await imageInfo(image.input, {
    backingChain: chain,
    format,
    http,
  }).catch((err) => {
    throw inQemuWords(err, path, chain);
  });
  info.filename = qemuImageName(info.filename, info.format, keySecret);
  await writeOut(
    output === "json"
      ? formatImageInfoJson(info, chain) + "\n"
      : formatImageInfo(info, chain),
  );
  return 0;
}
