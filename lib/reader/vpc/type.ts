/**
 * The VHD image type (QEMU's `vpc`): finding the footer, reading the
 * dynamic disk header and its BAT, following a differencing image's
 * parent through the chain walk.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type { GuestImage } from "../image.ts";
import type { ImageType, OpenContext } from "../image_type.ts";
import { readExact } from "../_bounds.ts";
import {
  bitmapBytes,
  parseDynamicHeader,
  parseFooter,
  VHD_BAT_UNUSED,
  VHD_DYNAMIC_HEADER_SIZE,
  VHD_FOOTER_COOKIE,
  VHD_FOOTER_SIZE,
  VHD_SECTOR,
  VHD_TYPE,
  type VhdFooter,
  type VhdSubformat,
  vhdVirtualSize,
} from "./layout.ts";
import { type VhdBlockMap, VpcImage } from "./image.ts";
import { parentName } from "./parent.ts";

/** The largest BAT read (entries covering the virtual disk): 32 MiB. */
export const MAX_BAT_BYTES = 32 * 1024 * 1024;
/** The smallest block size read: below it QEMU and the spec place data differently. */
export const MIN_BLOCK_SIZE = 4096;
/** QEMU's limit on BAT entries (`INT_MAX / 4`). */
const MAX_TABLE_ENTRIES = 0x1fffffff;

/**
 * Opens a VHD image: fixed, dynamic or differencing.
 *
 * @example Open a dynamic VHD made by qemu-img
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../../../mod.ts";
 * const dir = await Deno.makeTempDir();
 * await new Deno.Command("qemu-img", { args: ["create", "-q", "-f", "vpc", `${dir}/d.vhd`, "4M"] }).output();
 * await using image = await openImage(`${dir}/d.vhd`);
 * assert.strictEqual(image.format, "vpc");
 * assert.strictEqual(image.virtualSize, 4212736); // 4 MiB rounded up to a CHS geometry
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export const vpcType: ImageType = {
  name: "vpc",
  open: openVpc,
};

const SUBFORMATS: Record<number, VhdSubformat> = {
  [VHD_TYPE.FIXED]: "fixed",
  [VHD_TYPE.DYNAMIC]: "dynamic",
  [VHD_TYPE.DIFFERENCING]: "differencing",
};

async function openVpc(
  source: RandomAccessSource,
  context: OpenContext,
): Promise<GuestImage> {
  if (context.snapshot !== undefined) {
    throw new RangeError(
      `Cannot open image: ${context.name} is a VHD and has no snapshots`,
    );
  }
  const { footer, at } = await findFooter(source, context.name);
  const subformat = SUBFORMATS[footer.diskType];
  if (subformat === undefined) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot open image: VHD disk type ${footer.diskType} is not 2 (fixed), 3 (dynamic) or 4 (differencing)`,
      { offset: at + 60, field: "disk_type" },
    );
  }
  // A dynamic disk starts with a copy of its footer; a fixed disk does not.
  if ((at === 0) !== (subformat !== "fixed")) {
    throw new Qcow2Error(
      "CORRUPT",
      at === 0
        ? "Cannot open image: the footer copy at offset 0 says the disk is fixed, whose footer is only at the end"
        : `Cannot open image: the footer at ${
          hex(at)
        } says the disk is ${subformat}, but offset 0 holds no copy of it`,
      { offset: at + 60, field: "disk_type" },
    );
  }
  const virtualSize = vhdVirtualSize(footer);
  const base = {
    source,
    name: context.name,
    footer,
    subformat,
    virtualSize,
    cacheBytes: context.cacheBytes,
    ownsSource: context.ownsSource,
  };
  if (subformat === "fixed") {
    if (context.purpose !== "describe" && virtualSize > at) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open image: the fixed disk's virtual size ${virtualSize} runs past its footer at ${
          hex(at)
        }`,
        { offset: at + 48, field: "current_size" },
      );
    }
    return new VpcImage({
      ...base,
      blocks: undefined,
      parentName: undefined,
      backing: undefined,
    });
  }
  if (footer.dataOffset > BigInt(source.size)) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: the dynamic disk header at ${footer.dataOffset} (footer data_offset) is past the end of the file (${source.size} bytes)`,
      { offset: 16, field: "data_offset" },
    );
  }
  const headerAt = Number(footer.dataOffset);
  const header = parseDynamicHeader(
    await readHeader(source, headerAt),
    headerAt,
  );
  const blocks = await readBlockMap(source, header, headerAt, virtualSize);
  if (subformat === "dynamic") {
    return new VpcImage({
      ...base,
      blocks,
      parentName: undefined,
      backing: undefined,
    });
  }
  let name: string;
  try {
    name = await parentName(source, header);
  } catch (err) {
    if (context.purpose !== "describe" || !(err instanceof Qcow2Error)) {
      throw err;
    }
    name = header.parentName;
  }
  const backing = context.purpose === "describe" && name === ""
    ? undefined
    : await context.backing(name, "vpc");
  try {
    checkParent(backing, header.parentUuid, name, headerAt);
    return new VpcImage({ ...base, blocks, parentName: name, backing });
  } catch (err) {
    await backing?.close();
    throw err;
  }
}

/**
 * The footer: a copy at offset 0 (dynamic and differencing disks), else at
 * the end of the file (fixed disks), as QEMU looks for it.
 */
async function findFooter(
  source: RandomAccessSource,
  name: string,
): Promise<{ footer: VhdFooter; at: number }> {
  const size = source.size;
  if (size < VHD_FOOTER_SIZE) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: ${name} has ${size} bytes, fewer than a VHD footer (512)`,
      { offset: 0 },
    );
  }
  const head = await readExact(source, 0, VHD_FOOTER_SIZE, "VHD footer");
  let at = 0;
  let bytes = head;
  if (!hasCookie(head)) {
    at = size - VHD_FOOTER_SIZE;
    bytes = await readExact(source, at, VHD_FOOTER_SIZE, "VHD footer");
    if (!hasCookie(bytes)) {
      throw new Qcow2Error(
        "BAD_MAGIC",
        `Cannot open image: ${name} has no VHD footer ("conectix") at offset 0 or at ${
          hex(at)
        }`,
        { offset: at, field: "cookie" },
      );
    }
  }
  return { footer: parseFooter(bytes, at), at };
}

function hasCookie(bytes: Uint8Array): boolean {
  for (let i = 0; i < 8; i++) {
    if (bytes[i] !== VHD_FOOTER_COOKIE.charCodeAt(i)) return false;
  }
  return true;
}

async function readHeader(
  source: RandomAccessSource,
  at: number,
): Promise<Uint8Array> {
  if (at + VHD_DYNAMIC_HEADER_SIZE > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: the dynamic disk header at ${
        hex(at)
      } (footer data_offset) ends past the end of the file (${source.size} bytes)`,
      { offset: 16, field: "data_offset" },
    );
  }
  return await readExact(
    source,
    at,
    VHD_DYNAMIC_HEADER_SIZE,
    "dynamic disk header",
  );
}

/**
 * Checks the dynamic header's block geometry as QEMU does, and reads the
 * BAT entries that cover the virtual disk; every allocated block (bitmap
 * and data) must lie inside the file.
 */
async function readBlockMap(
  source: RandomAccessSource,
  header: ReturnType<typeof parseDynamicHeader>,
  headerAt: number,
  virtualSize: number,
): Promise<VhdBlockMap> {
  const { blockSize, maxTableEntries, tableOffset } = header;
  const field = (name: string, offset: number) => ({
    field: name,
    offset: headerAt + offset,
  });
  if (blockSize < MIN_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw new Qcow2Error(
      blockSize >= VHD_SECTOR && (blockSize & (blockSize - 1)) === 0
        ? "UNSUPPORTED_FEATURE"
        : "OUT_OF_RANGE",
      `Cannot open image: block size ${blockSize} is not a power of two in [${MIN_BLOCK_SIZE}, 2^31]`,
      field("block_size", 32),
    );
  }
  if (maxTableEntries > MAX_TABLE_ENTRIES) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image: max_table_entries ${maxTableEntries} is out of range [0, ${MAX_TABLE_ENTRIES}]`,
      field("max_table_entries", 28),
    );
  }
  if (maxTableEntries * blockSize < virtualSize) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image: the BAT's ${maxTableEntries} blocks of ${blockSize} bytes are too few for virtual size ${virtualSize}`,
      field("max_table_entries", 28),
    );
  }
  if (tableOffset + maxTableEntries * 4 > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: the BAT at ${
        hex(tableOffset)
      } with ${maxTableEntries} entries ends past the end of the file (${source.size} bytes)`,
      field("table_offset", 16),
    );
  }
  const needed = Math.ceil(virtualSize / blockSize);
  if (needed * 4 > MAX_BAT_BYTES) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image: the BAT needs ${needed} entries for virtual size ${virtualSize}, more than ${
        MAX_BAT_BYTES / 4
      }`,
      field("block_size", 32),
    );
  }
  const raw = needed > 0
    ? await readExact(source, tableOffset, needed * 4, "BAT")
    : new Uint8Array(0);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.length);
  const bat = new Uint32Array(needed);
  const bitmapSize = bitmapBytes(blockSize);
  for (let i = 0; i < needed; i++) {
    const entry = view.getUint32(i * 4);
    bat[i] = entry;
    if (entry === VHD_BAT_UNUSED) continue;
    const end = entry * VHD_SECTOR + bitmapSize + blockSize;
    if (end > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot open image: BAT entry ${i} puts block ${i} at ${
          hex(entry * VHD_SECTOR)
        }, ending at ${
          hex(end)
        }, past the end of the file (${source.size} bytes)`,
        { offset: tableOffset + i * 4, field: "bat" },
      );
    }
  }
  return { blockSize, bitmapSize, bat };
}

/** A differencing image's parent must be the disk it names by UUID. */
function checkParent(
  backing: GuestImage | undefined,
  parentUuid: string,
  name: string,
  headerAt: number,
): void {
  if (!(backing instanceof VpcImage) || /^0+$/.test(parentUuid)) return;
  if (backing.footer.uuid !== parentUuid) {
    throw new Qcow2Error(
      "BACKING",
      `Cannot open backing file "${name}": its UUID ${backing.footer.uuid} is not the parent UUID ${parentUuid} the differencing image names`,
      { offset: headerAt + 40, field: "parent_uuid" },
    );
  }
}
