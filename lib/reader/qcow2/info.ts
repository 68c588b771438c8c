/**
 * What `qemu-img info` says of a qcow2 image: the generic fields from its
 * header, and its format-specific section (compat, compression type,
 * refcounts, features, data file, bitmaps, encryption), as typed fields
 * and as QEMU's `format-specific` object.
 *
 * @module
 */

import {
  AUTOCLEAR,
  COMPAT,
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  INCOMPAT,
} from "../../format/constants.ts";
import { Qcow2Error } from "../../format/errors.ts";
import {
  backingFormat,
  dataFileName,
  type Qcow2Header,
} from "../../format/header.ts";
import { BITMAP_FLAGS } from "../../format/bitmaps.ts";
import { qcow2VirtualSize } from "../../format/geometry.ts";
import {
  LUKS_HEADER_LENGTH,
  type LuksInfo,
  parseLuksHeader,
} from "../../format/luks.ts";
import type { SnapshotEntry } from "../../format/snapshot.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type { ImageDescription, InfoValue, SnapshotInfo } from "../image.ts";
import { readPadded } from "../read.ts";
import { bitmapDirectoryOf, readBitmapDirectory } from "./bitmaps.ts";
import { readSnapshotTable } from "./snapshots.ts";

/**
 * A persistent dirty bitmap.
 *
 * @example The bitmaps of an image (ours has none)
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { type BitmapInfo, imageInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { workers: 1 }));
 * const bitmaps: BitmapInfo[] = info.qcow2?.bitmaps ?? [];
 * assert.strictEqual(bitmaps.length, 0);
 * ```
 */
export interface BitmapInfo {
  /** Name. */
  name: string;
  /** Bytes of guest disk per bit. */
  granularity: number;
  /** `in-use` (not saved cleanly) and `auto` (enabled), in that order. */
  flags: ("in-use" | "auto")[];
}

/**
 * The qcow2 part of `imageInfo`'s answer.
 *
 * @example What kind of qcow2 an image is
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { imageInfo, type Qcow2Info } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { compression: "zstd", workers: 1 }));
 * const q: Qcow2Info = info.qcow2!;
 * assert.deepStrictEqual([q.compat, q.compressionType, q.refcountBits], ["1.1", "zstd", 16]);
 * ```
 */
export interface Qcow2Info {
  /** `0.10` (version 2) or `1.1` (version 3). */
  compat: "0.10" | "1.1";
  /** Compression type of compressed clusters. */
  compressionType: "zlib" | "zstd";
  /** Refcount width in bits. */
  refcountBits: number;
  /** Version 3: lazy refcounts enabled. */
  lazyRefcounts?: boolean;
  /** Version 3: the corrupt bit. */
  corrupt?: boolean;
  /** Version 3: extended L2 entries (subclusters). */
  extendedL2?: boolean;
  /** External data file name, as stored. */
  dataFile?: string;
  /** With a data file: whether it is a valid raw image. */
  dataFileRaw?: boolean;
  /** Persistent bitmaps (version 3, when there are any). */
  bitmaps?: BitmapInfo[];
  /** Encryption: `aes` or `luks`, with the LUKS header's public fields. */
  encrypt?: { format: "aes" } | ({ format: "luks" } & LuksInfo);
}

/**
 * Describes a qcow2 image from its header (read for inspection), snapshot
 * table, bitmap directory and crypto header.
 *
 * @param source The image file.
 * @param header Its header.
 * @param snapshots Its snapshots when already read; else the table is
 * read here, as QEMU inspects it (zero-filled past the end of the file).
 * @returns The description; `details` is a {@linkcode Qcow2Info}.
 * @throws {Qcow2Error} When the bitmap directory or crypto header is
 * malformed (QEMU does not open such an image either).
 */
export async function describeQcow2(
  source: RandomAccessSource,
  header: Qcow2Header,
  snapshots: SnapshotEntry[] | undefined,
): Promise<ImageDescription> {
  const v3 = header.version === 3;
  const description: ImageDescription = {
    virtualSize: qcow2VirtualSize(header.size),
    dirty: (header.incompatibleFeatures & INCOMPAT.DIRTY) !== 0n,
    clusterSize: 2 ** header.clusterBits,
    snapshots: [],
  };
  if (header.cryptMethod !== CRYPT_METHOD.NONE) description.encrypted = true;
  if (header.backingFile) {
    description.backingFile = header.backingFile;
    const fmt = backingFormat(header);
    if (fmt !== undefined) description.backingFormat = fmt;
  }
  const entries = snapshots ??
    (await readSnapshotTable(source, header, { inspection: true })).entries;
  description.snapshots = entries.map(snapshotInfo);
  const q: Qcow2Info = {
    compat: v3 ? "1.1" : "0.10",
    compressionType: header.compressionType === COMPRESSION_TYPE.ZSTD
      ? "zstd"
      : "zlib",
    refcountBits: 2 ** header.refcountOrder,
  };
  if (v3) {
    q.lazyRefcounts =
      (header.compatibleFeatures & COMPAT.LAZY_REFCOUNTS) !== 0n;
    q.corrupt = (header.incompatibleFeatures & INCOMPAT.CORRUPT) !== 0n;
    q.extendedL2 = (header.incompatibleFeatures & INCOMPAT.EXTENDED_L2) !== 0n;
    const data = dataFileName(header);
    if (data !== undefined) q.dataFile = data;
    if ((header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n) {
      q.dataFileRaw =
        (header.autoclearFeatures & AUTOCLEAR.DATA_FILE_RAW) !== 0n;
    }
    const dir = bitmapDirectoryOf(header);
    if (dir) {
      q.bitmaps = (await readBitmapDirectory(source, dir, header)).map((b) => {
        const flags: BitmapInfo["flags"] = [];
        if (b.flags & BITMAP_FLAGS.IN_USE) flags.push("in-use");
        if (b.flags & BITMAP_FLAGS.AUTO) flags.push("auto");
        return { name: b.name, granularity: 2 ** b.granularityBits, flags };
      });
    }
  }
  if (header.cryptMethod === CRYPT_METHOD.AES) q.encrypt = { format: "aes" };
  if (header.cryptMethod === CRYPT_METHOD.LUKS) {
    const ext = header.extensions.find((e) => e.kind === "crypto-header");
    if (!ext || ext.kind !== "crypto-header") {
      throw new Qcow2Error(
        "BAD_EXTENSION",
        "Cannot open image: it is LUKS encrypted but has no crypto header extension",
      );
    }
    const luks = parseLuksHeader(
      await readPadded(
        source,
        ext.offset,
        Math.max(ext.length, LUKS_HEADER_LENGTH),
      ),
    );
    q.encrypt = { format: "luks", ...luks };
  }
  description.specific = { type: "qcow2", data: qcow2Specific(q) };
  description.details = q;
  return description;
}

/** A snapshot table entry as `info` lists it. */
function snapshotInfo(s: SnapshotEntry): SnapshotInfo {
  const snap: SnapshotInfo = {
    id: s.id,
    name: s.name,
    vmStateSize: s.vmStateSize,
    dateSec: s.dateSec,
    dateNsec: s.dateNsec,
    vmClockNsec: s.vmClockNsec,
  };
  if (s.icount !== undefined && s.icount !== -1n) snap.icount = s.icount;
  return snap;
}

type InfoObject = { [key: string]: InfoValue };

/** QEMU's ImageInfoSpecificQCow2, keys in QAPI schema order. */
function qcow2Specific(q: Qcow2Info): InfoObject {
  const o: InfoObject = { compat: q.compat };
  if (q.dataFile !== undefined) o["data-file"] = q.dataFile;
  if (q.dataFileRaw !== undefined) o["data-file-raw"] = q.dataFileRaw;
  if (q.extendedL2 !== undefined) o["extended-l2"] = q.extendedL2;
  if (q.lazyRefcounts !== undefined) o["lazy-refcounts"] = q.lazyRefcounts;
  if (q.corrupt !== undefined) o.corrupt = q.corrupt;
  o["refcount-bits"] = q.refcountBits;
  if (q.encrypt !== undefined) {
    const e = q.encrypt;
    if (e.format === "aes") o.encrypt = { format: "aes" };
    else {
      const luks: InfoObject = {
        format: "luks",
        "cipher-alg": e.cipherAlg,
        "cipher-mode": e.cipherMode,
        "ivgen-alg": e.ivgenAlg,
      };
      if (e.ivgenHashAlg !== undefined) luks["ivgen-hash-alg"] = e.ivgenHashAlg;
      luks["hash-alg"] = e.hashAlg;
      luks["payload-offset"] = e.payloadOffset;
      luks["master-key-iters"] = e.masterKeyIters;
      luks.uuid = e.uuid;
      luks.slots = e.slots.map((s) => {
        const slot: InfoObject = { active: s.active };
        if (s.iters !== undefined) slot.iters = s.iters;
        if (s.stripes !== undefined) slot.stripes = s.stripes;
        slot["key-offset"] = s.keyOffset;
        return slot;
      });
      o.encrypt = luks;
    }
  }
  if (q.bitmaps !== undefined) {
    o.bitmaps = q.bitmaps.map((b) => ({
      name: b.name,
      granularity: b.granularity,
      flags: [...b.flags],
    }));
  }
  o["compression-type"] = q.compressionType;
  return o;
}
