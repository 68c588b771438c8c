// `qcow2pipe map`: the guest ranges of an image, as `qemu-img map` lists
// them, in its human form or its JSON form.
import {
  formatMapEntryHuman,
  formatMapEntryJson,
  MAP_HUMAN_HEADER,
} from "../tools/map_text.ts";
import { mapImageEntries } from "../tools/map.ts";
import { expectPositionals, OutBuffer } from "./_args.ts";
import { inQemuWords, parseSize, warn } from "./_util.ts";
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

export const MAP_HELP =
  `Usage: qcow2pipe map [-f FMT] [--output=human|json] [--start-offset N] [--max-length N] [--http-timeout S] [-U] IMG

List the guest ranges of an image and its backing chain, as "qemu-img map"
does. The default form is qemu-img's: one line for each range that holds
data, with the host offset it is mapped to and the file holding it; an
image with compressed or encrypted clusters has no such offsets and is
refused, as qemu-img refuses it. The JSON form is exactly
"qemu-img map --output=json": every range, which image of the chain
answers (depth), whether it is allocated there (present), reads as zeros
and holds data. IMG is a file or an http(s) URL (read with Range
requests: the metadata, never the data).

Options:
${formatHelp("  -f, --format FMT", 26, "IMG")}
      --output FMT        human (default) or json: "qemu-img map
                          --output=json"
      --json              the same as --output=json
      --start-offset N    start at guest offset N (default 0)
      --max-length N      map at most N bytes
${httpTimeoutHelp(26)}
  -U, --force-share       accepted, as qemu-img takes it: images are read
                          without locks
      --image-opts        IMG is qemu-img's options: driver=FMT,file.filename=PATH
                          (json:{...} and file:PATH names are taken too)
      --object SECRET     secret,id=ID,... for encrypt.key-secret=ID (never read)
  -h, --help              show this help

Sizes take the suffixes k, M, G, T (powers of 1024).`;

export async function mapCommand(args: string[]): Promise<number> {
  const { values, positionals } = getopt("map", args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    json: { type: "boolean" },
    "start-offset": { type: "string" },
    "max-length": { type: "string" },
    ...HTTP_OPTIONS,
    ...NAMING_OPTIONS,
  });
  if (values.help) {
    console.log(MAP_HELP);
    return 0;
  }
  const [name] = expectPositionals("map image", positionals, ["IMG"]);
  const json = outputFormat("map image", values.output, values.json) ===
    "json";
  const start = values["start-offset"] === undefined
    ? undefined
    : parseSize(values["start-offset"], "--start-offset");
  const length = values["max-length"] === undefined
    ? undefined
    : parseSize(values["max-length"], "--max-length");
  const out = new OutBuffer();
  const { path, format } = await namedFile(name, values, false);
  const http = httpTransport("map image", values["http-timeout"]);
  await using image = await openNamed(path, http, "map");
  const entries = mapImageEntries(image.input, {
    start,
    length,
    format,
    http,
  });
  if (!json) await out.add(MAP_HUMAN_HEADER);
  try {
    return await printEntries(entries, out, json);
  } catch (err) {
    throw inQemuWords(err, path);
  }
}

/** Prints the map's entries; the exit status. */
async function printEntries(
  entries: ReturnType<typeof mapImageEntries>,
  out: OutBuffer,
  json: boolean,
): Promise<number> {
  let first = true;
  for await (const e of entries) {
    if (json) {
      await out.add((first ? "[" : ",\n") + formatMapEntryJson(e));
      first = false;
      continue;
    }
    const line = formatMapEntryHuman(e);
    if (line === undefined) {
      // qemu-img prints the lines before it and gives up here, exit 1.
      await out.flush();
      warn(
        "qcow2pipe: File contains external, encrypted or compressed clusters.",
      );
      return 1;
    }
    await out.add(line);
  }
  if (json) await out.add("]\n");
  await out.flush();
  return 0;
}
