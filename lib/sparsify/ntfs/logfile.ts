/**
 * Whether an NTFS journal (`$LogFile`) says the volume was shut down
 * cleanly. A volume with transactions still to replay has metadata on disk
 * (the MFT and `$Bitmap` among it) that Windows will change before it
 * reads anything: such a volume is left as it is.
 *
 * The journal starts with two restart pages (at 0 and at the system page
 * size). An emptied journal (every probed block starting with 0xffffffff,
 * as mkntfs and ntfs-3g leave it) is clean. Otherwise the more recent
 * valid restart page decides: clean when no log client is in use or the
 * restart area has RESTART_VOLUME_IS_CLEAN.
 *
 * ```text
 * restart page header (a multi-sector record, magic "RSTR" or "CHKD"):
 *  0x10 system page size (u32)   0x14 log page size (u32)
 *  0x18 restart area offset (u16)   0x1a minor version (s16)   0x1c major version (s16)
 * restart area:
 *  0x00 current LSN (u64)   0x08 log clients (u16)   0x0a client free list (u16)
 *  0x0c client in-use list (u16; 0xffff: none)   0x0e flags (u16; 2: volume is clean)
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import { applyFixups, FIXUP_STRIDE } from "./record.ts";

/** Bytes of the journal read: enough for both restart pages of the largest page size handled. */
export const LOGFILE_HEAD_BYTES = 128 * 1024;
/** Largest restart page handled. */
const MAX_PAGE = 64 * 1024;

const MAGIC_RSTR = 0x52545352;
const MAGIC_CHKD = 0x444b4843;
const MAGIC_RCRD = 0x44524352;
const MAGIC_EMPTY = 0xffffffff;
const NO_CLIENT = 0xffff;
const RESTART_VOLUME_IS_CLEAN = 0x0002;
/** Restart area fields. */
const RA = {
  CURRENT_LSN: 0x00,
  LOG_CLIENTS: 0x08,
  CLIENT_IN_USE: 0x0c,
  FLAGS: 0x0e,
  SIZE: 0x30,
} as const;

/** A valid restart page: its LSN and what its restart area says. */
interface Restart {
  at: number;
  lsn: bigint;
  inUse: number;
  flags: number;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** The restart page at `at`, or undefined when it is not a valid one. */
function restartAt(bytes: Uint8Array, at: number): Restart | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const pageSize = view.getUint32(at + 0x10, true);
  const logPageSize = view.getUint32(at + 0x14, true);
  if (
    !isPowerOfTwo(pageSize) || pageSize < FIXUP_STRIDE ||
    pageSize > MAX_PAGE || !isPowerOfTwo(logPageSize) ||
    logPageSize < FIXUP_STRIDE || (at !== 0 && at !== pageSize) ||
    at + pageSize > bytes.length
  ) return undefined;
  const minor = view.getInt16(at + 0x1a, true);
  const major = view.getInt16(at + 0x1c, true);
  if (!((major === 1 && minor === 1) || (major === 2 && minor === 0))) {
    return undefined;
  }
  const page = bytes.slice(at, at + pageSize);
  try {
    applyFixups(page, "restart page");
  } catch (err) {
    if (err instanceof Refusal) return undefined;
    throw err;
  }
  const pv = new DataView(page.buffer);
  const raOfs = pv.getUint16(0x18, true);
  const usaEnd = pv.getUint16(4, true) + 2 * pv.getUint16(6, true);
  if (raOfs % 8 !== 0 || raOfs < usaEnd || raOfs + RA.SIZE > pageSize) {
    return undefined;
  }
  const clients = pv.getUint16(raOfs + RA.LOG_CLIENTS, true);
  const inUse = pv.getUint16(raOfs + RA.CLIENT_IN_USE, true);
  if (inUse !== NO_CLIENT && inUse >= clients) return undefined;
  return {
    at,
    lsn: pv.getBigUint64(raOfs + RA.CURRENT_LSN, true),
    inUse,
    flags: pv.getUint16(raOfs + RA.FLAGS, true),
  };
}

/**
 * Checks that the journal says the volume is clean.
 *
 * @param bytes The journal's first bytes (up to {@linkcode LOGFILE_HEAD_BYTES}).
 * @returns `empty` or `clean`.
 * @throws {Refusal} When the journal has transactions to replay, or no
 * valid restart page although it is not empty.
 *
 * @example An emptied journal is clean; one with a client in use is not
 * ```ts
 * import assert from "node:assert";
 * import { checkLogFile } from "./logfile.ts";
 * assert.strictEqual(checkLogFile(new Uint8Array(65536).fill(0xff)), "empty");
 * const page = new Uint8Array(65536).fill(0xff);
 * const v = new DataView(page.buffer);
 * v.setUint32(0, 0x52545352, true); // RSTR
 * v.setUint16(4, 0x1e, true); // update sequence array
 * v.setUint16(6, 9, true);
 * v.setUint16(0x1e, 1, true); // update sequence number
 * for (let i = 0; i < 8; i++) v.setUint16(i * 512 + 510, 1, true);
 * v.setUint32(0x10, 4096, true); // system page size
 * v.setUint32(0x14, 4096, true);
 * v.setUint16(0x18, 0x40, true); // restart area
 * v.setInt16(0x1a, 1, true);
 * v.setInt16(0x1c, 1, true);
 * v.setUint16(0x40 + 8, 1, true); // one client
 * v.setUint16(0x40 + 0x0c, 0, true); // in use
 * v.setUint16(0x40 + 0x0e, 0, true); // not clean
 * assert.throws(() => checkLogFile(page), /not cleanly shut down/);
 * ```
 */
export function checkLogFile(bytes: Uint8Array): "empty" | "clean" {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let empty = true;
  const found: Restart[] = [];
  for (let at = 0; at + FIXUP_STRIDE <= bytes.length;) {
    const magic = view.getUint32(at, true);
    if (magic !== MAGIC_EMPTY) empty = false;
    else if (!empty) break;
    if (magic === MAGIC_RCRD) break;
    if (magic === MAGIC_RSTR || magic === MAGIC_CHKD) {
      const r = restartAt(bytes, at);
      if (r) found.push(r);
      if (found.length === 2) break;
    }
    at = at === 0 ? FIXUP_STRIDE : at * 2;
  }
  if (empty) return "empty";
  if (found.length === 0) {
    throw new Refusal(
      "$LogFile is not empty and has no valid restart page: the journal cannot be read",
    );
  }
  const latest = found.reduce((a, b) => (b.lsn > a.lsn ? b : a));
  if (
    latest.inUse !== NO_CLIENT && !(latest.flags & RESTART_VOLUME_IS_CLEAN)
  ) {
    throw new Refusal(
      `$LogFile says the volume was not cleanly shut down (restart page at byte ${latest.at}: a client in use, flags ${
        hex(latest.flags)
      }); Windows would replay the journal`,
    );
  }
  return "clean";
}
