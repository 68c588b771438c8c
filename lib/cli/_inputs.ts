// Images named on the command line of the inspection commands: a path is
// handed to the tool as is; an http(s) URL is opened here with Range
// requests, so that the tool reads the metadata and what it needs only.
// The file access of the runtime (what mod.ts installs), without the rest
// of the library: a command that inspects starts sooner.
import "../host/file_source.ts";
import {
  HttpSource,
  type HttpTransport,
  isHttpUrl,
} from "../io/http_source.ts";
import type { ImageInput } from "../tools/input.ts";
import type { ImageFormat } from "../reader/open.ts";
import { parseImageName, secretIds } from "./_image_name.ts";
import { parseFormat } from "./_args.ts";
import { UsageError } from "./_util.ts";

/** An image argument, ready for `imageInfo`, `checkImage`, `mapImage`... */
export interface NamedImage extends AsyncDisposable {
  /** What the tool is given: the path, or the opened URL. */
  input: ImageInput;
}

/**
 * Refuses `-` as an image argument of a command that reads images at
 * random offsets: it would be taken for a file named "-", and said to be
 * missing.
 *
 * @param name The image argument.
 * @param command The command, for the message.
 * @throws {UsageError} For `-`.
 */
export function refuseStandardInput(name: string, command: string): void {
  if (name !== "-") return;
  throw new UsageError(
    `Cannot open image -: ${command} does not read standard input (only convert does); give a file or an http(s) URL`,
  );
}

/**
 * Opens an image argument: a path stays a path (the tool opens and closes
 * it); a URL becomes an {@linkcode HttpSource} closed on disposal; `-` is
 * refused (see {@linkcode refuseStandardInput}).
 */
export async function openNamed(
  name: string,
  http: HttpTransport,
  command: string,
): Promise<NamedImage> {
  refuseStandardInput(name, command);
  if (!isHttpUrl(name)) {
    return { input: name, [Symbol.asyncDispose]: () => Promise.resolve() };
  }
  const source = await HttpSource.open(name, http);
  return {
    input: source,
    [Symbol.asyncDispose]: async () => await source.close(),
  };
}

/**
 * The file and format an image argument names, in qemu-img's syntax
 * (`file:`, `json:{...}`, `--image-opts`; see _image_name.ts), with -f.
 * `metadataOnly`: the command reads the image's metadata only (info,
 * check), so a `data-file.filename` option is taken.
 *
 * @throws {UsageError} For a name we do not take, or a format given twice
 * differently.
 */
export async function namedFile(
  name: string,
  values: { format?: string; "image-opts"?: boolean; object?: string[] },
  metadataOnly: boolean,
): Promise<{ path: string; format: ImageFormat | undefined }> {
  const named = parseImageName(name, {
    imageOpts: values["image-opts"],
    secrets: secretIds(values.object ?? []),
  });
  if (named.dataFile !== undefined) {
    // info and check read the image's own metadata only: the data file is
    // not read, but it must be there, as qemu-img opens it. A command that
    // reads guest data would have to read it: refused there.
    if (!metadataOnly) {
      throw new UsageError(
        `Cannot open image ${name}: option "data-file.filename" is only taken by info and check`,
      );
    }
    const info = await Deno.stat(named.dataFile).catch(() => undefined);
    if (!info?.isFile) {
      throw new UsageError(
        `Cannot open image ${name}: data file ${named.dataFile} is not a file`,
      );
    }
  }
  if (
    named.format !== undefined && values.format !== undefined &&
    named.format !== values.format
  ) {
    throw new UsageError(
      `Cannot open image ${name}: its driver "${named.format}" is not the format -f gives ("${values.format}")`,
    );
  }
  return {
    path: named.path,
    format: parseFormat(named.format ?? values.format, "-f"),
  };
}
