// `qcow2pipe map`: the guest ranges of an image, as `qemu-img map` lists
// them (JSON identical to --output=json), or as a table.
import {
  formatMapEntryJson,
  type MapEntry,
  mapImageEntries,
} from "../../mod.ts";
import {
  expectPositionals,
  OutBuffer,
  parseCommand,
  parseFormat,
} from "./_args.ts";
import { parseSize } from "./_util.ts";

export const MAP_HELP =
  `Usage: qcow2pipe map [-f FMT] [--json] [--start-offset N] [--max-length N] IMG

List the guest ranges of an image and its backing chain: which image of
the chain answers (depth), whether it is allocated there (present), reads
as zeros, holds data, and at which host offset. The JSON form is exactly
"qemu-img map --output=json"; the default form is a table of every range.

Options:
  -f FMT                  format of IMG: raw or qcow2 (default: probed; a
                          probed image may only lead to files in its own
                          directory)
      --json              print "qemu-img map --output=json"
      --start-offset N    start at guest offset N (default 0)
      --max-length N      map at most N bytes
  -h, --help              show this help

Sizes take the suffixes k, M, G, T (powers of 1024).`;

function hex(n: number): string {
  return n === 0 ? "0" : "0x" + n.toString(16);
}

function kind(e: MapEntry): string {
  if (!e.present) return "unallocated";
  if (e.compressed) return "compressed";
  if (e.zero) return "zero";
  return e.data ? "data" : "zero";
}

export async function mapCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand("map", args, {
    format: { type: "string", short: "f" },
    json: { type: "boolean" },
    "start-offset": { type: "string" },
    "max-length": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(MAP_HELP);
    return 0;
  }
  const [path] = expectPositionals("map image", positionals, ["IMG"]);
  const start = values["start-offset"] === undefined
    ? undefined
    : parseSize(values["start-offset"], "--start-offset");
  const length = values["max-length"] === undefined
    ? undefined
    : parseSize(values["max-length"], "--max-length");
  const out = new OutBuffer();
  let first = true;
  if (!values.json) {
    await out.add(
      `${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}${
        "Depth".padEnd(7)
      }${"Type".padEnd(13)}File\n`,
    );
  }
  const format = parseFormat(values.format, "-f");
  for await (const e of mapImageEntries(path, { start, length, format })) {
    if (values.json) {
      await out.add((first ? "[" : ",\n") + formatMapEntryJson(e));
    } else {
      await out.add(
        `${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${
          (e.offset === undefined ? "-" : hex(e.offset)).padEnd(16)
        }${String(e.depth).padEnd(7)}${kind(e).padEnd(13)}${e.file ?? "-"}\n`,
      );
    }
    first = false;
  }
  if (values.json) await out.add("]\n");
  await out.flush();
  return 0;
}
