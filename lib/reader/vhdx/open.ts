// Reading a VHDX file's metadata into one model, in QEMU's order: the file
// identifier, the current header, the log, region table 1, the metadata
// items, the BAT; every offset checked against the file and the regions.

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { viewOf } from "../../bytes/binary.ts";
import { readExact } from "../_bounds.ts";
import {
  BAT_GUID,
  batEntry,
  BLOCK_SIZE_MAX,
  BLOCK_SIZE_MIN,
  BLOCK_STATE,
  chooseHeader,
  FILE_SIGNATURE,
  HEADER1_OFFSET,
  HEADER2_OFFSET,
  HEADER_SECTION_SIZE,
  HEADER_SIZE,
  ITEM,
  MAX_SECTORS_PER_BLOCK,
  MAX_VIRTUAL_SIZE,
  METADATA_GUID,
  type MetadataEntry,
  PARAMS_HAS_PARENT,
  PARAMS_LEAVE_BLOCKS_ALLOCATED,
  parseMetadataTable,
  parseParentLocator,
  parseRegionTable,
  type Region,
  REGION_TABLE_OFFSET,
  SB_BLOCK_PRESENT,
  TABLE_SIZE,
  u64,
  type VhdxHeader,
} from "./layout.ts";
import { checkLog } from "./log.ts";

/** What the reader knows of a VHDX image once opened. */
export interface VhdxLayout {
  /** The current header. */
  header: VhdxHeader;
  /** Payload block size in bytes (a power of two in [1 MiB, 256 MiB]). */
  blockSize: number;
  /** Logical sector size: 512 or 4096. */
  logicalSectorSize: number;
  /** `virtual_disk_size` as stored. */
  virtualDiskSize: number;
  /** Payload blocks per sector bitmap block (the BAT's interleave). */
  chunkRatio: number;
  /** Payload blocks of the disk. */
  dataBlocks: number;
  /** The parent locator of a differencing image. */
  parent: ParentLocator | undefined;
  /** Whether blocks stay allocated (a fixed image). */
  leaveBlocksAllocated: boolean;
  /** The BAT region. */
  batRegion: Region;
  /** Every entry of region table 1, in order. */
  regions: Region[];
  /** BAT entries, payload and sector bitmap entries counted. */
  batEntries: number;
  /** The BAT entries read (payload and sector bitmap entries interleaved). */
  bat: DataView;
}

/**
 * Reads and checks a VHDX image's metadata.
 *
 * @param source The image file.
 * @param name The image, for messages.
 * @param check Opened for `check` (QEMU's `BDRV_O_CHECK`): the blocks the
 * BAT names are left for the check (`checkVhdx`) to judge.
 * @returns The layout.
 * @throws {Qcow2Error} When the image is malformed, its log needs
 * replaying, or it is a differencing image.
 */
export async function readVhdx(
  source: RandomAccessSource,
  name: string,
  check = false,
): Promise<VhdxLayout> {
  const read = (offset: number, length: number, what: string) =>
    readExact(source, offset, length, `${what} of ${name}`);
  const ident = await read(0, 8, "VHDX file identifier");
  if (new TextDecoder("latin1").decode(ident) !== FILE_SIGNATURE) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot open image ${name}: it does not start with "${FILE_SIGNATURE}"`,
      { offset: 0, field: "signature" },
    );
  }
  const header = chooseHeader(
    await read(HEADER1_OFFSET, HEADER_SIZE, "VHDX header 1"),
    await read(HEADER2_OFFSET, HEADER_SIZE, "VHDX header 2"),
    name,
  );
  await checkLog(source, header, name);

  const regions = parseRegionTable(
    await read(REGION_TABLE_OFFSET, TABLE_SIZE, "VHDX region table"),
    name,
  );
  // The areas nothing else may overlap: the header section, then the log
  // and every region as they are registered (QEMU's vhdx_region_check).
  const taken: { start: number; end: number; what: string }[] = [
    { start: 0, end: HEADER_SECTION_SIZE, what: "the header section" },
  ];
  let sorted = false;
  const claim = (start: number, length: number, what: string, at: number) => {
    const end = start + length;
    const hit = overlapping(taken, start, end, sorted);
    if (hit) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open image ${name}: ${what} [${hex(start)}, ${
          hex(end)
        }) overlaps ${hit.what}`,
        { offset: at },
      );
    }
  };
  if (header.logLength > 0) {
    claim(header.logOffset, header.logLength, "the log", header.offset + 72);
    taken.push({
      start: header.logOffset,
      end: header.logOffset + header.logLength,
      what: "the log",
    });
  }
  let bat: Region | undefined;
  let metadata: Region | undefined;
  for (const [i, r] of regions.entries()) {
    const at = REGION_TABLE_OFFSET + 16 + i * 32;
    const what = r.guid === BAT_GUID
      ? "the BAT region"
      : r.guid === METADATA_GUID
      ? "the metadata region"
      : `region ${r.guid}`;
    if (r.length > 0) {
      claim(r.offset, r.length, what, at);
      taken.push({ start: r.offset, end: r.offset + r.length, what });
    }
    if (r.guid === BAT_GUID || r.guid === METADATA_GUID) {
      if ((r.guid === BAT_GUID ? bat : metadata) !== undefined) {
        throw new Qcow2Error(
          "CORRUPT",
          `Cannot open image ${name}: the region table lists ${what} twice (entry ${i})`,
          { offset: at, field: "region_table" },
        );
      }
      if (r.guid === BAT_GUID) bat = r;
      else metadata = r;
    } else if (r.required) {
      throw new Qcow2Error(
        "UNSUPPORTED_FEATURE",
        `Cannot open image ${name}: region table entry ${i} is a required region ${r.guid} that is not known`,
        { offset: at, field: "region_table" },
      );
    }
  }
  if (bat === undefined || metadata === undefined) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot open image ${name}: the region table has no ${
        bat === undefined ? "BAT" : "metadata"
      } region`,
      { offset: REGION_TABLE_OFFSET, field: "region_table" },
    );
  }

  const md = await readMetadata(source, name, metadata);
  const blockSize = md.blockSize;
  const chunkRatio = MAX_SECTORS_PER_BLOCK * md.logicalSectorSize / blockSize;
  const dataBlocks = Math.ceil(md.virtualDiskSize / blockSize);
  // A differencing image has a sector bitmap entry after every chunk.
  const batEntries = md.parent
    ? Math.ceil(dataBlocks / chunkRatio) * (chunkRatio + 1)
    : dataBlocks + Math.floor((dataBlocks - 1) / chunkRatio);
  if (batEntries * 8 > bat.length) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image ${name}: the BAT region (${bat.length} bytes) is too small for ${batEntries} entries (virtual disk size ${md.virtualDiskSize}, block size ${blockSize})`,
      { offset: bat.offset, field: "length" },
    );
  }
  if (bat.offset + batEntries * 8 > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image ${name}: the BAT at ${
        hex(bat.offset)
      } with ${batEntries} entries ends past the end of the file (${source.size} bytes)`,
      { offset: bat.offset, field: "file_offset" },
    );
  }
  const batBytes = await read(bat.offset, batEntries * 8, "VHDX BAT");
  /** A payload or bitmap block lies in the file, clear of the regions. */
  const checkBlock = (
    index: number,
    offset: number,
    length: number,
    what: string,
  ) => {
    const at = bat.offset + index * 8;
    if (offset + length > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open image ${name}: BAT entry ${index} puts ${what} at ${
          hex(offset)
        }, past the end of the file (${source.size} bytes)`,
        { offset: at, field: "bat" },
      );
    }
    claim(offset, length, `${what} (BAT entry ${index})`, at);
  };
  // The areas are disjoint: sorted, a block is checked by binary search.
  taken.sort((a, b) => a.start - b.start);
  sorted = true;
  const view = viewOf(batBytes);
  const virtualSize = Math.floor(md.virtualDiskSize / 512) * 512;
  for (let block = 0; block < (check ? 0 : dataBlocks); block++) {
    const index = block + Math.floor(block / chunkRatio);
    const e = batEntry(view, index);
    const partial = md.parent !== undefined &&
      e.state === BLOCK_STATE.PARTIALLY_PRESENT;
    if (e.state !== BLOCK_STATE.FULLY_PRESENT && !partial) continue;
    // The last block may be partial (QEMU wrote such files).
    const length = Math.min(blockSize, virtualSize - block * blockSize);
    checkBlock(index, e.offset, length, `block ${block}`);
    if (partial) {
      const chunk = Math.floor(block / chunkRatio);
      const bitmap = chunk * (chunkRatio + 1) + chunkRatio;
      const b = batEntry(view, bitmap);
      if (b.state !== SB_BLOCK_PRESENT) {
        throw new Qcow2Error(
          "CORRUPT",
          `Cannot open image ${name}: block ${block} is PARTIALLY_PRESENT but its sector bitmap (BAT entry ${bitmap}) has state ${b.state}, not present`,
          { offset: bat.offset + bitmap * 8, field: "bat" },
        );
      }
    }
  }
  if (md.parent && !check) {
    for (let chunk = 0; chunk * chunkRatio < dataBlocks; chunk++) {
      const index = chunk * (chunkRatio + 1) + chunkRatio;
      const b = batEntry(view, index);
      if (b.state === SB_BLOCK_PRESENT) {
        checkBlock(
          index,
          b.offset,
          SECTOR_BITMAP_SIZE,
          `sector bitmap ${chunk}`,
        );
      }
    }
  }
  return {
    header,
    blockSize,
    logicalSectorSize: md.logicalSectorSize,
    virtualDiskSize: md.virtualDiskSize,
    chunkRatio,
    dataBlocks,
    parent: md.parent,
    leaveBlocksAllocated: md.leaveBlocksAllocated,
    batRegion: bat,
    regions,
    batEntries,
    bat: view,
  };
}

/**
 * An area of `taken` that overlaps `[start, end)`: by binary search when
 * `taken` is `sorted` (disjoint, by start: for the blocks), else by a scan
 * (for the regions, at most 2049 of them).
 */
function overlapping<T extends { start: number; end: number }>(
  taken: T[],
  start: number,
  end: number,
  sorted: boolean,
): T | undefined {
  if (!sorted) return taken.find((t) => start < t.end && t.start < end);
  let lo = 0;
  let hi = taken.length;
  // The last area starting before `end`.
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (taken[mid].start < end) lo = mid + 1;
    else hi = mid;
  }
  const t = taken[lo - 1];
  return t !== undefined && start < t.end ? t : undefined;
}

/** What a differencing image's parent locator says (keys QEMU's spec names). */
export interface ParentLocator {
  /** `parent_linkage`: the parent's `data_write_guid`, in braces. */
  linkage: string | undefined;
  /** `relative_path`, as Windows writes it (`.\\parent.vhdx`). */
  relativePath: string | undefined;
  /** `absolute_win32_path` (`C:\\...` or `\\?\\...`). */
  absoluteWin32Path: string | undefined;
}

/**
 * The parent's name as the image gives it: `relative_path`, with Windows'
 * backslashes read as slashes (`.\\parent.vhdx` is `./parent.vhdx`).
 *
 * @param locator The parent locator.
 * @returns The name, or undefined when there is no relative path.
 */
export function parentPath(locator: ParentLocator): string | undefined {
  const relative = locator.relativePath;
  return relative ? relative.replaceAll("\\", "/") : undefined;
}

/** The largest parent locator read (the spec's metadata item limit). */
const MAX_LOCATOR_BYTES = 1024 * 1024;

/** Bytes of a sector bitmap block. */
export const SECTOR_BITMAP_SIZE = 1024 * 1024;

/** The metadata items the reader uses. */
interface Metadata {
  blockSize: number;
  parent: ParentLocator | undefined;
  leaveBlocksAllocated: boolean;
  virtualDiskSize: number;
  logicalSectorSize: number;
}

/** Reads the metadata table and the items QEMU requires, and checks them. */
async function readMetadata(
  source: RandomAccessSource,
  name: string,
  region: Region,
): Promise<Metadata> {
  const entries = parseMetadataTable(
    await readExact(
      source,
      region.offset,
      TABLE_SIZE,
      `VHDX metadata table of ${name}`,
    ),
    region.offset,
    name,
  );
  const found = new Map<string, MetadataEntry>();
  const known = new Set<string>(Object.values(ITEM));
  for (const [i, e] of entries.entries()) {
    const at = { offset: region.offset + 32 + i * 32, field: "metadata_table" };
    if (known.has(e.guid)) {
      if (found.has(e.guid)) {
        throw new Qcow2Error(
          "CORRUPT",
          `Cannot open image ${name}: the metadata table lists item ${e.guid} twice (entry ${i})`,
          at,
        );
      }
      found.set(e.guid, e);
    } else if (e.required) {
      throw new Qcow2Error(
        "UNSUPPORTED_FEATURE",
        `Cannot open image ${name}: metadata entry ${i} is a required item ${e.guid} that is not known`,
        at,
      );
    }
  }
  const item = async (guid: string, what: string, size: number) => {
    const e = found.get(guid);
    if (e === undefined) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open image ${name}: the metadata table has no ${what} item`,
        { offset: region.offset, field: "metadata_table" },
      );
    }
    return viewOf(
      await readExact(
        source,
        region.offset + e.offset,
        size,
        `VHDX ${what} metadata item of ${name}`,
      ),
    );
  };
  const params = await item(ITEM.FILE_PARAMETERS, "file parameters", 8);
  const sizeItem = await item(ITEM.VIRTUAL_DISK_SIZE, "virtual disk size", 8);
  await item(ITEM.PAGE83_DATA, "page 83 data", 16);
  const logical = await item(
    ITEM.LOGICAL_SECTOR_SIZE,
    "logical sector size",
    4,
  );
  await item(ITEM.PHYSICAL_SECTOR_SIZE, "physical sector size", 4);
  const flags = params.getUint32(4, true);
  const paramsAt = region.offset + found.get(ITEM.FILE_PARAMETERS)!.offset;
  let parent: ParentLocator | undefined;
  if ((flags & PARAMS_HAS_PARENT) !== 0) {
    const e = found.get(ITEM.PARENT_LOCATOR);
    if (e === undefined) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open image ${name}: the file parameters at ${
          hex(paramsAt)
        } say it has a parent but there is no parent locator`,
        { offset: paramsAt + 4, field: "has_parent" },
      );
    }
    const where = region.offset + e.offset;
    if (e.length < 20 || e.length > MAX_LOCATOR_BYTES) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot open image ${name}: parent locator length ${e.length} at ${
          hex(where)
        } is out of range [20, ${MAX_LOCATOR_BYTES}]`,
        { offset: where, field: "parent_locator" },
      );
    }
    const keys = parseParentLocator(
      await readExact(
        source,
        where,
        e.length,
        `VHDX parent locator of ${name}`,
      ),
      where,
      name,
    );
    parent = {
      linkage: keys.get("parent_linkage"),
      relativePath: keys.get("relative_path"),
      absoluteWin32Path: keys.get("absolute_win32_path"),
    };
  }
  const blockSize = params.getUint32(0, true);
  if (
    blockSize < BLOCK_SIZE_MIN || blockSize > BLOCK_SIZE_MAX ||
    (blockSize & (blockSize - 1)) !== 0
  ) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image ${name}: block_size ${blockSize} at ${
        hex(paramsAt)
      } is not a power of two in [${BLOCK_SIZE_MIN}, ${BLOCK_SIZE_MAX}]`,
      { offset: paramsAt, field: "block_size" },
    );
  }
  const logicalSectorSize = logical.getUint32(0, true);
  if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image ${name}: logical sector size ${logicalSectorSize} is not 512 or 4096`,
      { field: "logical_sector_size" },
    );
  }
  const virtualDiskSize = u64(sizeItem, 0);
  if (virtualDiskSize < 512 || virtualDiskSize > MAX_VIRTUAL_SIZE) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image ${name}: virtual disk size ${virtualDiskSize} is out of range [512, ${MAX_VIRTUAL_SIZE}]`,
      { field: "virtual_disk_size" },
    );
  }
  return {
    blockSize,
    parent,
    leaveBlocksAllocated: (flags & PARAMS_LEAVE_BLOCKS_ALLOCATED) !== 0,
    virtualDiskSize,
    logicalSectorSize,
  };
}
