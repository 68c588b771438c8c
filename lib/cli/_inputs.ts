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
