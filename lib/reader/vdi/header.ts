/**
 * The VDI (VirtualBox) header and block map, as QEMU's `block/vdi.c` reads
 * them: pure functions over bytes.
 *
 * ```text
 * Offset  Size  Field (little endian)
 * 0x000   64    text ("<<< Oracle VM VirtualBox Disk Image >>>\n")
 * 0x040   4     signature 0xbeda107f
 * 0x044   4     version (0x00010001: 1.1, the one read)
 * 0x048   4     header_size
 * 0x04c   4     image_type (1 dynamic, 2 static, 3 undo, 4 differencing)
 * 0x050   4     image_flags
 * 0x054   256   description
 * 0x154   4     offset_bmap (block map, sector aligned)
 * 0x158   4     offset_data (first block, sector aligned)
 * 0x15c   12    cylinders, heads, sectors (legacy geometry, unused)
 * 0x168   4     sector_size (512)
 * 0x16c   4     unused
 * 0x170   8     disk_size (bytes)
 * 0x178   4     block_size (1 MiB)
 * 0x17c   4     block_extra
 * 0x180   4     blocks_in_image
 * 0x184   4     blocks_allocated
 * 0x188   16    uuid_image
 * 0x198   16    uuid_last_snap
 * 0x1a8   16    uuid_link (must be null: no links)
 * 0x1b8   16    uuid_parent (must be null: no differencing images)
 * ```
 *
 * The block map holds one u32 per block: the index of the block in the
 * data area (`offset_data + index * block_size`), or
 * {@linkcode VDI_UNALLOCATED} / {@linkcode VDI_DISCARDED}, which read as
 * zeros.
 *
 * @module
 */

import { hex, Qcow2Error } from "../../format/errors.ts";
import { viewOf } from "../../bytes/binary.ts";

/** Bytes of the header QEMU reads (one sector). */
export const VDI_HEADER_SIZE = 512;
/** The signature at 0x40. */
export const VDI_SIGNATURE = 0xbeda107f;
/** Version 1.1, the only one QEMU reads. */
export const VDI_VERSION_1_1 = 0x00010001;
/** `image_type` of a dynamic image: blocks allocated as written. */
export const VDI_TYPE_DYNAMIC = 1;
/** `image_type` of a static image: every block allocated at creation. */
export const VDI_TYPE_STATIC = 2;
/** A block map entry for a block never written: reads as zeros. */
export const VDI_UNALLOCATED = 0xffffffff;
/** A block map entry for a discarded block: reads as zeros. */
export const VDI_DISCARDED = 0xfffffffe;
/** The only sector size QEMU reads. */
export const VDI_SECTOR_SIZE = 512;
/** The only block size QEMU reads (1 MiB). */
export const VDI_BLOCK_SIZE = 1024 * 1024;
/** Most blocks an image may have (QEMU's VDI_BLOCKS_IN_IMAGE_MAX). */
export const VDI_MAX_BLOCKS = 0x3fffffff;

const FIELD = {
  signature: 0x40,
  version: 0x44,
  imageType: 0x4c,
  offsetBmap: 0x154,
  offsetData: 0x158,
  sectorSize: 0x168,
  diskSize: 0x170,
  blockSize: 0x178,
  blocksInImage: 0x180,
  blocksAllocated: 0x184,
  uuidLink: 0x1a8,
  uuidParent: 0x1b8,
} as const;

const TYPE_NAMES: Record<number, string> = {
  1: "dynamic",
  2: "static",
  3: "undo",
  4: "differencing",
};

/** A parsed and validated VDI header. */
export interface VdiHeader {
  /** `VDI_TYPE_DYNAMIC` or `VDI_TYPE_STATIC`. */
  imageType: number;
  /** Host offset of the block map. */
  offsetBmap: number;
  /** Host offset of block index 0. */
  offsetData: number;
  /** Virtual size: `disk_size` rounded up to whole sectors, as QEMU does. */
  diskSize: number;
  /** Block size in bytes. */
  blockSize: number;
  /** Entries of the block map. */
  blocksInImage: number;
  /** Blocks the header counts as allocated. */
  blocksAllocated: number;
}

function refuse(
  code:
    | "UNSUPPORTED_VERSION"
    | "UNSUPPORTED_FEATURE"
    | "UNALIGNED"
    | "OUT_OF_RANGE",
  reason: string,
  offset: number,
  field: string,
): Qcow2Error {
  return new Qcow2Error(code, `Cannot open VDI image: ${reason}`, {
    offset,
    field,
  });
}

/**
 * Parses and validates a VDI header with QEMU's rules (version 1.1,
 * sector-aligned block map and data, 512-byte sectors, 1 MiB blocks, a
 * block map large enough for the disk, no link or parent UUID).
 *
 * @param bytes The first 512 bytes of the file.
 * @returns The header.
 * @throws {Qcow2Error} `BAD_MAGIC`, `UNSUPPORTED_VERSION`,
 * `UNSUPPORTED_FEATURE`, `UNALIGNED` or `OUT_OF_RANGE`, naming the field.
 *
 * @example A header with the wrong signature
 * ```ts
 * import assert from "node:assert";
 * import { parseVdiHeader } from "./header.ts";
 * assert.throws(() => parseVdiHeader(new Uint8Array(512)), /bad signature 0x0/);
 * ```
 */
export function parseVdiHeader(bytes: Uint8Array): VdiHeader {
  const v = viewOf(bytes);
  const u32 = (at: number) => v.getUint32(at, true);
  const signature = u32(FIELD.signature);
  if (signature !== VDI_SIGNATURE) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot open VDI image: bad signature ${hex(signature)} (expected ${
        hex(VDI_SIGNATURE)
      })`,
      { offset: FIELD.signature, field: "signature" },
    );
  }
  const version = u32(FIELD.version);
  if (version !== VDI_VERSION_1_1) {
    throw refuse(
      "UNSUPPORTED_VERSION",
      `version ${version >>> 16}.${version & 0xffff} is not supported (1.1 is)`,
      FIELD.version,
      "version",
    );
  }
  const imageType = u32(FIELD.imageType);
  if (imageType !== VDI_TYPE_DYNAMIC && imageType !== VDI_TYPE_STATIC) {
    const name = TYPE_NAMES[imageType];
    throw refuse(
      "UNSUPPORTED_FEATURE",
      `image type ${imageType}${
        name ? ` (${name})` : ""
      } is not supported (dynamic or static are)`,
      FIELD.imageType,
      "image_type",
    );
  }
  const offsetBmap = u32(FIELD.offsetBmap);
  const offsetData = u32(FIELD.offsetData);
  for (
    const [field, at, value] of [
      ["offset_bmap", FIELD.offsetBmap, offsetBmap],
      ["offset_data", FIELD.offsetData, offsetData],
    ] as const
  ) {
    if (value % VDI_SECTOR_SIZE !== 0) {
      throw refuse(
        "UNALIGNED",
        `${field} ${hex(value)} is not a multiple of ${VDI_SECTOR_SIZE}`,
        at,
        field,
      );
    }
  }
  const sectorSize = u32(FIELD.sectorSize);
  if (sectorSize !== VDI_SECTOR_SIZE) {
    throw refuse(
      "UNSUPPORTED_FEATURE",
      `sector size ${sectorSize} is not ${VDI_SECTOR_SIZE}`,
      FIELD.sectorSize,
      "sector_size",
    );
  }
  const blockSize = u32(FIELD.blockSize);
  if (blockSize !== VDI_BLOCK_SIZE) {
    throw refuse(
      "UNSUPPORTED_FEATURE",
      `block size ${blockSize} is not ${VDI_BLOCK_SIZE}`,
      FIELD.blockSize,
      "block_size",
    );
  }
  const blocksInImage = u32(FIELD.blocksInImage);
  if (blocksInImage > VDI_MAX_BLOCKS) {
    throw refuse(
      "OUT_OF_RANGE",
      `blocks_in_image ${blocksInImage} is out of range [0, ${VDI_MAX_BLOCKS}]`,
      FIELD.blocksInImage,
      "blocks_in_image",
    );
  }
  const rawSize = v.getBigUint64(FIELD.diskSize, true);
  const room = BigInt(blocksInImage) * BigInt(blockSize);
  if (rawSize > room) {
    throw refuse(
      "OUT_OF_RANGE",
      `disk_size ${rawSize} is larger than the ${blocksInImage} blocks of the block map hold (${room})`,
      FIELD.diskSize,
      "disk_size",
    );
  }
  for (
    const [field, at] of [
      ["uuid_link", FIELD.uuidLink],
      ["uuid_parent", FIELD.uuidParent],
    ] as const
  ) {
    if (bytes.subarray(at, at + 16).some((b) => b !== 0)) {
      throw refuse(
        "UNSUPPORTED_FEATURE",
        `${field} is not null (differencing and linked images are not supported)`,
        at,
        field,
      );
    }
  }
  // room <= 0x3fffffff MiB < 2^50: a safe integer.
  const diskSize = Number(rawSize);
  return {
    imageType,
    offsetBmap,
    offsetData,
    diskSize: Math.ceil(diskSize / VDI_SECTOR_SIZE) * VDI_SECTOR_SIZE,
    blockSize,
    blocksInImage,
    blocksAllocated: u32(FIELD.blocksAllocated),
  };
}

/**
 * Whether a block map entry names a block in the data area.
 *
 * @param entry The entry.
 * @returns False for {@linkcode VDI_UNALLOCATED} and
 * {@linkcode VDI_DISCARDED}.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isAllocated, VDI_DISCARDED } from "./header.ts";
 * assert.ok(isAllocated(0) && !isAllocated(VDI_DISCARDED));
 * ```
 */
export function isAllocated(entry: number): boolean {
  return entry < VDI_DISCARDED;
}
