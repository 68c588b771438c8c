// Following a backing or data file reference, shared by the reader and the
// inspection tools: the format an overlay declares, and opening the file.

import { backingFormat, type Qcow2Header } from "../format/header.ts";
import { Qcow2Error } from "../format/errors.ts";
import type { RandomAccessSource } from "../io/source.ts";
import { isNotFound } from "../io/_host_files.ts";
import { isHttpUrl } from "../io/http_source.ts";
import {
  followReference,
  type ReferencePolicy,
  type Referrer,
} from "./references.ts";

/**
 * The format named by the backing-format extension, if any; one we cannot
 * read (anything but qcow2 or raw) is refused naming `name`.
 */
export function declaredBackingFormat(
  header: Qcow2Header,
  name: string,
): "qcow2" | "raw" | undefined {
  const fmt = backingFormat(header);
  if (fmt !== undefined && fmt !== "qcow2" && fmt !== "raw") {
    throw new Qcow2Error(
      "BACKING",
      `Cannot open backing file "${name}": backing format "${fmt}" is not supported (qcow2 or raw)`,
    );
  }
  return fmt;
}

/**
 * Opens a backing or data file by its resolved name; a failure is a
 * `BACKING` error naming `what` and the file.
 */
export async function openRelated(
  openSource: (name: string) => Promise<RandomAccessSource>,
  path: string,
  what: string,
): Promise<RandomAccessSource> {
  let source: RandomAccessSource;
  try {
    source = await openSource(path);
  } catch (err) {
    const reason = isNotFound(err) ? "no such file" : (err as Error).message;
    throw new Qcow2Error(
      "BACKING",
      `Cannot open ${what} "${path}": ${reason}`,
      { cause: err },
    );
  }
  await checkAnswered(path, source, what);
  return source;
}

/**
 * Refuses (and closes) a source for the URL `path` that was answered from
 * another origin: the policy allowed `path`'s origin, and the origin that
 * counts is the one that answered. The default opener refuses such a
 * redirect before following it; this holds for any `openSource`.
 */
export async function checkAnswered(
  path: string,
  source: RandomAccessSource,
  what: string,
): Promise<void> {
  if (source.url === undefined || !isHttpUrl(path)) return;
  const asked = new URL(path).origin;
  if (new URL(source.url).origin === asked) return;
  await source.close?.();
  throw new Qcow2Error(
    "UNTRUSTED_REFERENCE",
    `Cannot open ${what} "${path}": it was answered by ${source.url}, on another origin than ${asked}`,
  );
}

/**
 * Where an overlay's backing file is and the format it declares, as the
 * policy allows; refused when the chain would grow deeper than `max`
 * images below the top one.
 */
export async function backingReference(
  referrer: Referrer,
  header: Qcow2Header,
  policy: ReferencePolicy,
  depth: number,
  max: number,
): Promise<{ path: string; declared: "qcow2" | "raw" | undefined }> {
  const name = header.backingFile!;
  if (depth + 1 > max) {
    throw new Qcow2Error(
      "BACKING",
      `Cannot open backing file "${name}": the backing chain is deeper than ${max} images`,
      { field: "backing_file_offset", offset: 8 },
    );
  }
  const declared = declaredBackingFormat(header, name);
  const path = await followReference(referrer, name, "backing file", policy);
  return { path, declared };
}
