// The VHDX log, as far as opening read-only needs it: QEMU's checks of the
// header's log fields, and whether the log holds entries of the current
// log (the image was not closed cleanly and Hyper-V or `qemu-img check -r
// all` would replay them). Replaying is not done here: such an image is
// refused.

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { readExact } from "../_bounds.ts";
import {
  LOG_ALIGN,
  LOG_ENTRY_HEADER_SIZE,
  LOG_SECTOR_SIZE,
  parseLogEntryHeader,
  type VhdxHeader,
  ZERO_GUID,
} from "./layout.ts";

/** The largest log scanned for live entries (Hyper-V and QEMU make 1 MiB logs). */
export const MAX_LOG_SCAN = 64 * 1024 * 1024;

/**
 * Checks the current header's log fields as QEMU does, and refuses an image
 * whose log holds entries of its current log GUID (a log that needs
 * replaying). An entry counts when it starts with `loge` on a 4 KiB
 * boundary of the log, names the header's log GUID and has a length that
 * fits the log; QEMU generates a new log GUID for every session, so entries
 * of earlier sessions do not match.
 *
 * @param source The image file.
 * @param header The current header.
 * @param name The image, for messages.
 * @throws {Qcow2Error} For log fields out of range, and with code
 * `UNSUPPORTED_FEATURE` for a log that needs replaying.
 */
export async function checkLog(
  source: RandomAccessSource,
  header: VhdxHeader,
  name: string,
): Promise<void> {
  const field = (f: string, at: number) => ({
    field: f,
    offset: header.offset + at,
  });
  if (header.logOffset < LOG_ALIGN || header.logOffset % LOG_ALIGN !== 0) {
    throw new Qcow2Error(
      "UNALIGNED",
      `Cannot open image ${name}: log_offset ${
        hex(header.logOffset)
      } in header ${header.index} is not a non-zero multiple of 1 MiB`,
      field("log_offset", 72),
    );
  }
  if (header.logVersion !== 0) {
    throw new Qcow2Error(
      "UNSUPPORTED_VERSION",
      `Cannot open image ${name}: log_version ${header.logVersion} in header ${header.index} is not 0`,
      field("log_version", 64),
    );
  }
  if (header.logGuid === ZERO_GUID || header.logLength === 0) return;
  if (header.logLength % LOG_ALIGN !== 0) {
    throw new Qcow2Error(
      "UNALIGNED",
      `Cannot open image ${name}: log_length ${header.logLength} in header ${header.index} is not a multiple of 1 MiB`,
      field("log_length", 68),
    );
  }
  const dirty = (why: string) =>
    new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot open image ${name}: the VHDX log at ${
        hex(header.logOffset)
      } ${why}: the image was not closed cleanly; replay the log with Hyper-V or 'qemu-img check -r all' first`,
      field("log_guid", 48),
    );
  if (header.logLength > MAX_LOG_SCAN) {
    throw dirty(
      `(${header.logLength} bytes, log GUID ${header.logGuid}) is too large to scan`,
    );
  }
  if (header.logOffset + header.logLength > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image ${name}: the VHDX log at ${
        hex(header.logOffset)
      } (${header.logLength} bytes) ends past the end of the file (${source.size} bytes)`,
      field("log_offset", 72),
    );
  }
  const log = await readExact(
    source,
    header.logOffset,
    header.logLength,
    `VHDX log of ${name}`,
  );
  for (let at = 0; at < log.length; at += LOG_SECTOR_SIZE) {
    const entry = parseLogEntryHeader(
      log.subarray(at, at + LOG_ENTRY_HEADER_SIZE),
    );
    if (
      entry !== undefined && entry.logGuid === header.logGuid &&
      entry.entryLength > 0 && entry.entryLength % LOG_SECTOR_SIZE === 0 &&
      entry.entryLength <= log.length
    ) {
      throw dirty(
        `holds an entry of log ${header.logGuid} at ${
          hex(header.logOffset + at)
        }`,
      );
    }
  }
}
