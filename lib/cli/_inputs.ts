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
 * check), so a `data-file.filename` option is taken. `noSecretLookup`:
 * the command looks no secret up (info), so `encrypt.key-secret` needs no
 * `--object secret`.
 *
 * @throws {UsageError} For a name we do not take, or a format given twice
 * differently.
 */
export async function namedFile(
  name: string,
  values: { format?: string; "image-opts"?: boolean; object?: string[] },
  metadataOnly: boolean,
  noSecretLookup = false,
): Promise<
  { path: string; format: ImageFormat | undefined; keySecret?: string }
> {
  const named = parseImageName(name, {
    imageOpts: values["image-opts"],
    secrets: secretIds(values.object ?? []),
    noSecretLookup,
  });
  if (named.dataFile !== undefined) {
    // info and check read the image's own metadata only: the data file is
    // not read, but it must be there, as qemu-img opens it. A command that
    // reads guest data would have to read it: refused there.
    if (!metadataOnly) refuseDataFile(name);
    const info = await Deno.stat(named.dataFile).catch(() => undefined);
    if (!info?.isFile) {
      throw new UsageError(
        `Cannot open image ${name}: data file ${named.dataFile} is not a file`,
      );
    }
  }
  return {
    path: named.path,
    format: parseFormat(agreedFormat(name, named.format, values.format), "-f"),
    keySecret: named.keySecret,
  };
}

/** What a SRC of convert names: a file and its format, or zeros. */
export interface SourceName {
  /** The file (or URL, or `-`) to read. */
  path: string;
  /** The format the name or -f gives, or undefined to probe. */
  format: ImageFormat | undefined;
  /** A `null-co` source: this many zero bytes, no file. */
  zeros?: number;
}

/**
 * A SRC of convert in qemu-img's syntax (see {@linkcode namedFile}), where
 * the `null-co` driver (zeros of a size) is taken too.
 *
 * @param name SRC as given.
 * @param format The format -f gives.
 * @param imageOpts --image-opts: SRC is `key=value,...` options.
 * @returns The file (or zeros) and format it names.
 * @throws {UsageError} For a name we do not take, or a driver that is not
 * the format -f gives.
 */
export function sourceName(
  name: string,
  format: ImageFormat | undefined,
  imageOpts: boolean | undefined,
): SourceName {
  const named = parseImageName(name, { imageOpts, nullSource: true });
  if (named.dataFile !== undefined) refuseDataFile(name);
  if (named.zeros !== undefined) {
    agreedFormat(name, "null-co", format);
    return { path: named.path, format: "raw", zeros: named.zeros };
  }
  return {
    path: named.path,
    format: parseFormat(agreedFormat(name, named.format, format), "-f"),
  };
}

function refuseDataFile(name: string): never {
  throw new UsageError(
    `Cannot open image ${name}: option "data-file.filename" is only taken by info and check`,
  );
}

/** The format a name's driver gives, which must be the one -f gives. */
function agreedFormat(
  name: string,
  driver: string | undefined,
  format: string | undefined,
): string | undefined {
  if (driver !== undefined && format !== undefined && driver !== format) {
    throw new UsageError(
      `Cannot open image ${name}: its driver "${driver}" is not the format -f gives ("${format}")`,
    );
  }
  return driver ?? format;
}
