/**
 * The VMDK image type: a hosted sparse file (monolithicSparse,
 * streamOptimized) or a text descriptor naming its extent files
 * (monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, vmfs), and
 * the parent it names. Every extent file and the parent are followed
 * through the walk's reference gate, never opened here.
 *
 * @module
 */

import { hex, InternalError, Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type { GuestImage } from "../image.ts";
import type { ImageType, OpenContext } from "../image_type.ts";
import { readExact } from "../_bounds.ts";
import { SourceHoles } from "../_file_status.ts";
import {
  DESC_SIZE,
  type Descriptor,
  descriptorText,
  MAX_DESCRIPTOR_BYTES,
  parseDescriptor,
} from "./descriptor.ts";
import { type VmdkExtent, VmdkImage } from "./image.ts";
import { SparseExtent, VMDK3_MAGIC, VMDK4_MAGIC } from "./sparse.ts";

/** The createTypes of a descriptor file QEMU opens. */
const DESCRIPTOR_TYPES = [
  "monolithicFlat",
  "vmfs",
  "vmfsSparse",
  "seSparse",
  "twoGbMaxExtentSparse",
  "twoGbMaxExtentFlat",
];

/** Where a sparse file's embedded descriptor is read for CIDs and parent. */
const EMBEDDED_DESCRIPTOR_OFFSET = 0x200;

/**
 * Opens a VMDK image: its sparse header or its descriptor, its extents
 * and its parent.
 *
 * @example Open a monolithicSparse image by path
 * ```ts ignore
 * import { openImage } from "../open.ts";
 * await using image = await openImage("disk.vmdk", { format: "vmdk" });
 * ```
 */
export const vmdkType: ImageType = {
  name: "vmdk",
  open: openVmdk,
};

async function openVmdk(
  source: RandomAccessSource,
  context: OpenContext,
): Promise<GuestImage> {
  if (context.snapshot !== undefined) {
    throw new RangeError(
      `Cannot open image: ${context.name} is VMDK and has no internal snapshots`,
    );
  }
  const name = context.name;
  if (source.size < 4) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: ${name} (${source.size} bytes) is too small for a VMDK image`,
      { offset: 0 },
    );
  }
  const head = await readExact(source, 0, 4, `VMDK magic of ${name}`);
  const magic = new DataView(head.buffer, head.byteOffset).getUint32(0);
  const owned: RandomAccessSource[] = [];
  let backing: GuestImage | undefined;
  try {
    let extents: VmdkExtent[];
    let desc: Descriptor;
    let createType: string;
    if (magic === VMDK4_MAGIC || magic === VMDK3_MAGIC) {
      const sparse = await SparseExtent.open(source, name, context.cacheBytes);
      if (sparse.header.capacity === 0 && sparse.header.descOffset !== 0) {
        throw new Qcow2Error(
          "UNSUPPORTED_FEATURE",
          `Cannot open image: ${name} is a sparse file of capacity 0 holding a descriptor at sector ${sparse.header.descOffset}, which is not supported`,
          { offset: 12, field: "capacity" },
        );
      }
      createType = sparse.header.compressed
        ? "streamOptimized"
        : "monolithicSparse";
      desc = await readDescriptor(
        source,
        EMBEDDED_DESCRIPTOR_OFFSET,
        DESC_SIZE,
        name,
      );
      extents = [{
        start: 0,
        length: sparse.header.capacity * 512,
        type: "",
        name,
        kind: "sparse",
        sparse,
      }];
    } else {
      desc = await readDescriptor(source, 0, MAX_DESCRIPTOR_BYTES, name);
      if (desc.createType === undefined) {
        throw new Qcow2Error(
          "BAD_MAGIC",
          `Cannot open image: ${name} is neither a VMDK sparse file nor a descriptor with a createType`,
          { offset: 0 },
        );
      }
      createType = desc.createType;
      if (!DESCRIPTOR_TYPES.includes(createType)) {
        throw new Qcow2Error(
          "UNSUPPORTED_FEATURE",
          `Cannot open image: VMDK createType "${
            createType.slice(0, 64)
          }" of ${name} is not supported`,
          { field: "createType" },
        );
      }
      extents = await openExtents(desc, context, owned);
    }
    if (desc.cid === undefined || desc.parentCid === undefined) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open image: the descriptor of ${name} has no ${
          desc.cid === undefined ? "CID" : "parentCID"
        }`,
        { field: desc.cid === undefined ? "CID" : "parentCID" },
      );
    }
    if (desc.parentHint !== undefined) {
      try {
        backing = await context.backing(desc.parentHint, "vmdk");
      } catch (err) {
        throw referenceError(err, "parentFileNameHint");
      }
    }
    // QEMU reads nothing through a parent whose CID is not the child's
    // parentCID (the parent changed after the child was made).
    if (
      context.purpose === "read" && backing instanceof VmdkImage &&
      backing.cid !== desc.parentCid
    ) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot open image: the parentCID ${
          hex(desc.parentCid, "bare")
        } of ${name} is not the CID ${
          hex(backing.cid ?? 0, "bare")
        } of its parent ${backing.name} (the parent changed after the child was made)`,
        { field: "parentCID" },
      );
    }
    return new VmdkImage({
      source,
      name,
      ownsSource: context.ownsSource,
      createType,
      cid: desc.cid,
      parentCid: desc.parentCid,
      parentHint: desc.parentHint,
      extents,
      owned,
      backing,
    });
  } catch (err) {
    for (const s of owned) await s.close?.();
    await backing?.close();
    throw err;
  }
}

/** Reads and parses a descriptor: up to `max` bytes from `offset`. */
async function readDescriptor(
  source: RandomAccessSource,
  offset: number,
  max: number,
  name: string,
): Promise<Descriptor> {
  const length = Math.max(0, Math.min(max, source.size - offset));
  const bytes = await readExact(
    source,
    offset,
    length,
    `VMDK descriptor of ${name}`,
  );
  return parseDescriptor(descriptorText(bytes), name);
}

/**
 * A reference refusal in VMDK's words: an extent file, not a data file,
 * and `-f vmdk` to follow it.
 */
function referenceError(err: unknown, field: string): unknown {
  if (!(err instanceof Qcow2Error)) return err;
  return new Qcow2Error(
    err.code,
    err.message.replace("external data file", "VMDK extent file")
      .replace("-f qcow2", "-f vmdk"),
    { cause: err, field },
  );
}

/** Opens a descriptor's extents through the walk, end to end from 0. */
async function openExtents(
  desc: Descriptor,
  context: OpenContext,
  owned: RandomAccessSource[],
): Promise<VmdkExtent[]> {
  if (desc.extents.length === 0) {
    throw new Qcow2Error(
      "CORRUPT",
      `Cannot open image: the descriptor of ${context.name} names no RW extent`,
      { field: "extent" },
    );
  }
  const extents: VmdkExtent[] = [];
  let start = 0;
  for (const line of desc.extents) {
    if (line.type === "VMFSSPARSE" || line.type === "SESPARSE") {
      throw new Qcow2Error(
        "UNSUPPORTED_FEATURE",
        `Cannot open image: ${line.type} extent "${line.file}" of ${context.name} is not supported`,
        { field: "extent" },
      );
    }
    let opened;
    try {
      // An extent is part of the image: opened even to describe it.
      opened = await context.dataFile(line.file, true);
    } catch (err) {
      throw referenceError(err, "extent");
    }
    const src = opened.source;
    if (src === undefined) {
      throw new InternalError(
        `Cannot open extent ${opened.name}: the walk did not open it`,
      );
    }
    owned.push(src);
    const base = { start, type: line.type, name: opened.name };
    let extent: VmdkExtent;
    if (line.type === "SPARSE") {
      const sparse = await SparseExtent.open(
        src,
        opened.name,
        context.cacheBytes,
      );
      extent = {
        ...base,
        length: sparse.header.capacity * 512,
        kind: "sparse",
        sparse,
      };
    } else {
      extent = {
        ...base,
        length: line.sectors * 512,
        kind: "flat",
        source: src,
        fileOffset: line.offset * 512,
        holes: new SourceHoles(src),
      };
    }
    start += extent.length;
    if (!Number.isSafeInteger(start)) {
      throw new Qcow2Error(
        "OUT_OF_RANGE",
        `Cannot open image: the extents of ${context.name} add up past 2^53 bytes (at "${line.file}", ${
          hex(start)
        })`,
        { field: "extent" },
      );
    }
    extents.push(extent);
  }
  return extents;
}
