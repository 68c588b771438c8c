// The backing file format an overlay declares, shared by the reader and the
// inspection tools.

import { backingFormat, type Qcow2Header } from "../format/header.ts";
import { Qcow2Error } from "../format/errors.ts";

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
