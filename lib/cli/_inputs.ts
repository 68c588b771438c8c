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

/** An image argument, ready for `imageInfo`, `checkImage`, `mapImage`... */
export interface NamedImage extends AsyncDisposable {
  /** What the tool is given: the path, or the opened URL. */
  input: ImageInput;
}

/**
 * Opens an image argument: a path stays a path (the tool opens and closes
 * it); a URL becomes an {@linkcode HttpSource} closed on disposal.
 */
export async function openNamed(
  name: string,
  http: HttpTransport,
): Promise<NamedImage> {
  if (!isHttpUrl(name)) {
    return { input: name, [Symbol.asyncDispose]: () => Promise.resolve() };
  }
  const source = await HttpSource.open(name, http);
  return {
    input: source,
    [Symbol.asyncDispose]: async () => await source.close(),
  };
}
