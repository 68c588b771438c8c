/**
 * Whether an XFS internal log is clean: nothing the kernel would replay at
 * mount. The kernel finds the head of the log from the cycle number that
 * starts every 512-byte log block, then the last record header before the
 * head, and calls the log clean when that record ends exactly at the head,
 * holds one operation, and that operation is an unmount record
 * (`xlog_find_tail`, `xlog_check_unmount_rec`). Here the whole log is read
 * and must have the one shape a clean log has, so that no way of searching
 * for the head can find another: blocks `[0, head)` carry cycle `c`,
 * blocks `[head, end)` cycle `c - 1` (0 before the log first wrapped), and
 * the last record before the head is that unmount record. Anything else,
 * a fully zeroed log included, is refused.
 *
 * ```text
 * record header (a 512-byte block):
 *   0 magic 0xFEEDBABE  4 cycle u32  8 version u32 (1, 2)  12 len u32 (data bytes)
 *  16 lsn u64 (cycle << 32 | block)  24 tail_lsn u64  32 crc  36 prev_block
 *  40 num_logops u32  44 cycle_data[64]  300 fmt  304 fs_uuid[16]  320 size u32
 * op header (first bytes of the data): 0 tid u32  4 len u32  8 clientid u8  9 flags u8
 * ```
 *
 * @module
 */

import { hex, Refusal } from "../_region.ts";
import type { XfsReader } from "./reader.ts";
import { BBSIZE, Fields } from "./superblock.ts";

/** `XLOG_HEADER_MAGIC_NUM`. */
const LOG_MAGIC = 0xfeedbabe;
/** `XLOG_UNMOUNT_TRANS` in an op header's flags. */
const UNMOUNT_TRANS = 0x20;
/** `XLOG_VERSION_2` bit of h_version. */
const LOG_VERSION_2 = 2;
/** Bytes of cycle data one header block covers (`XLOG_HEADER_CYCLE_SIZE`). */
const HEADER_CYCLE_SIZE = 32 * 1024;
/** Bytes of log read at a time. */
const WINDOW = 1 << 20;

/** What the check found, for the report. */
export interface LogState {
  /** Log blocks (512 bytes). */
  blocks: number;
  /** Where the next record would go. */
  head: number;
  /** Cycle number at the head. */
  cycle: number;
}

/**
 * Reads the internal log whole and checks that it is clean.
 *
 * @param xr The reader.
 * @returns Where the head is.
 * @throws {Refusal} When the log is not provably clean.
 */
export async function checkLogClean(xr: XfsReader): Promise<LogState> {
  const { sb } = xr;
  const [agno, agbno] = xr.splitFsb(sb.logstart, "log");
  const start = xr.byteOf(agno, agbno);
  const bytes = sb.logblocks * sb.blockSize;
  const n = bytes / BBSIZE;
  let c0 = -1; // cycle of block 0
  let head = -1; // first block of the second cycle run
  let tailCycle = -1;
  let lastHdrBefore = -1; // last header in [0, head)
  let lastHdrAfter = -1; // last header in [head, n)
  for (let off = 0; off < bytes; off += WINDOW) {
    const len = Math.min(WINDOW, bytes - off);
    const buf = await xr.read(start + off, len, "log");
    const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
    for (let at = 0; at < len; at += BBSIZE) {
      const blk = (off + at) / BBSIZE;
      let cycle = view.getUint32(at);
      const isHdr = cycle === LOG_MAGIC;
      if (isHdr) cycle = view.getUint32(at + 4);
      if (blk === 0) {
        c0 = cycle;
        if (c0 === 0) {
          throw new Refusal(
            "log is zeroed (no unmount record): cannot prove it clean",
          );
        }
      } else if (head < 0 && cycle !== c0) {
        head = blk;
        tailCycle = cycle;
        if (tailCycle !== c0 - 1) {
          throw new Refusal(
            `log block ${blk} has cycle ${cycle} after blocks of cycle ${c0}: not a clean log`,
          );
        }
      } else if (head >= 0 && cycle !== tailCycle) {
        throw new Refusal(
          `log block ${blk} has cycle ${cycle} where ${tailCycle} is expected: not a clean log`,
        );
      }
      if (isHdr) {
        if (head < 0) lastHdrBefore = blk;
        else lastHdrAfter = blk;
      }
    }
  }
  if (head < 0) head = 0; // one cycle throughout: the head is at the start
  const rec = head === 0 || lastHdrBefore < 0
    ? lastHdrAfter >= 0 ? lastHdrAfter : lastHdrBefore
    : lastHdrBefore;
  if (rec < 0) throw new Refusal("log holds no record header");
  const rb = await readLogBlock(xr, start, rec, n);
  const h = new Fields(rb, "log record header");
  const version = h.u32(8);
  if (version !== 1 && version !== 2) {
    throw new Refusal(`log record at block ${rec} has version ${version}`);
  }
  const len = h.u32(12);
  const size = h.u32(320);
  let hblks = 1;
  if (version & LOG_VERSION_2 && size > HEADER_CYCLE_SIZE) {
    hblks = Math.ceil(size / HEADER_CYCLE_SIZE);
  }
  if (len > bytes || hblks > n) {
    throw new Refusal(`log record at block ${rec} is longer than the log`);
  }
  const after = (rec + hblks + Math.ceil(len / BBSIZE)) % n;
  const ops = h.u32(40);
  if (after !== head || ops !== 1) {
    throw new Refusal(
      `log is dirty: its last record (block ${rec}, ${ops} operations) is not an unmount record ending at the head (block ${head})`,
    );
  }
  const ob = await readLogBlock(xr, start, (rec + hblks) % n, n);
  const flags = ob[9];
  if (!(flags & UNMOUNT_TRANS)) {
    throw new Refusal(
      `log is dirty: its last record (block ${rec}) is not an unmount record (op flags ${
        hex(flags)
      })`,
    );
  }
  return { blocks: n, head, cycle: c0 };
}

function readLogBlock(
  xr: XfsReader,
  start: number,
  blk: number,
  n: number,
): Promise<Uint8Array> {
  if (blk < 0 || blk >= n) {
    throw new Refusal(`log block ${blk} is outside the log`);
  }
  return xr.read(start + blk * BBSIZE, BBSIZE, "log record");
}
