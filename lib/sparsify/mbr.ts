/**
 * The MBR partition table: four primary entries in sector 0, and logical
 * partitions in a chain of extended boot records (EBRs) inside an extended
 * partition.
 *
 * ```text
 * sector 0 (and every EBR), 512 bytes:
 *   0..445    boot code
 *   446..509  four 16-byte entries:
 *             +0 status (0x00, or 0x80 bootable)   +4 type
 *             +8 first LBA (u32 LE)                +12 sector count (u32 LE)
 *   510..511  signature 0x55 0xaa
 * EBR: entry 0 is the logical partition (first LBA relative to this EBR),
 *      entry 1 links the next EBR (first LBA relative to the extended partition)
 * ```
 *
 * @module
 */

import {
  type DiskReader,
  hex,
  type Partition,
  Refusal,
  type TableLayout,
} from "./_region.ts";

/** Bytes per MBR sector (LBA unit). */
export const MBR_SECTOR_SIZE = 512;
/** Offset of the four partition entries in a sector. */
export const MBR_ENTRIES_OFFSET = 446;
/** Size of one partition entry. */
export const MBR_ENTRY_SIZE = 16;
/** Offset of the boot signature 0x55 0xaa. */
export const MBR_SIGNATURE_OFFSET = 510;
/** Partition type of a GPT's protective MBR entry. */
export const MBR_TYPE_GPT_PROTECTIVE = 0xee;
/** Partition types of extended partitions (CHS, LBA, Linux). */
export const MBR_EXTENDED_TYPES: readonly number[] = [0x05, 0x0f, 0x85];
/** Partition type of Linux swap. */
export const MBR_TYPE_LINUX_SWAP = 0x82;
/** Most logical partitions followed in an EBR chain. */
export const MBR_MAX_LOGICAL = 256;

const TYPE_NAMES: Record<number, string> = {
  0x01: "FAT12",
  0x04: "FAT16",
  0x06: "FAT16",
  0x07: "NTFS/exFAT",
  0x0b: "FAT32",
  0x0c: "FAT32 LBA",
  0x0e: "FAT16 LBA",
  0x82: "Linux swap",
  0x83: "Linux",
  0x8e: "Linux LVM",
  0xef: "EFI System",
  0xfd: "Linux raid",
};

/** One of the four entries of a sector. */
export interface MbrEntry {
  /** Entry slot 0-3. */
  slot: number;
  /** Status byte: 0x00, or 0x80 for the bootable partition. */
  status: number;
  /** Partition type byte. */
  type: number;
  /** First sector (relative to what the sector's kind says). */
  firstLba: number;
  /** Number of sectors. */
  sectors: number;
}

/**
 * Reads the four entries of an MBR or EBR sector.
 *
 * @param sector At least 512 bytes.
 * @returns The entries (empty ones included), or `undefined` when the
 * sector has no boot signature or an entry's status byte is neither 0x00
 * nor 0x80 (boot code or a filesystem's boot sector, not a table).
 *
 * @example A one-partition MBR
 * ```ts
 * import assert from "node:assert";
 * import { parseMbrSector } from "./mbr.ts";
 * const sector = new Uint8Array(512);
 * const view = new DataView(sector.buffer);
 * sector[446 + 4] = 0x83; // Linux
 * view.setUint32(446 + 8, 2048, true);
 * view.setUint32(446 + 12, 20480, true);
 * sector.set([0x55, 0xaa], 510);
 * const [first] = parseMbrSector(sector)!;
 * assert.deepStrictEqual(first, { slot: 0, status: 0, type: 0x83, firstLba: 2048, sectors: 20480 });
 * ```
 */
export function parseMbrSector(sector: Uint8Array): MbrEntry[] | undefined {
  if (
    sector.length < MBR_SECTOR_SIZE ||
    sector[MBR_SIGNATURE_OFFSET] !== 0x55 ||
    sector[MBR_SIGNATURE_OFFSET + 1] !== 0xaa
  ) return undefined;
  const view = new DataView(sector.buffer, sector.byteOffset, sector.length);
  const entries: MbrEntry[] = [];
  for (let slot = 0; slot < 4; slot++) {
    const at = MBR_ENTRIES_OFFSET + slot * MBR_ENTRY_SIZE;
    const status = sector[at];
    if (status !== 0x00 && status !== 0x80) return undefined;
    entries.push({
      slot,
      status,
      type: sector[at + 4],
      firstLba: view.getUint32(at + 8, true),
      sectors: view.getUint32(at + 12, true),
    });
  }
  return entries;
}

/**
 * Names an MBR partition type for reports.
 *
 * @param type The type byte.
 * @returns A name such as `Linux swap`, or the byte in hex.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { mbrTypeName } from "./mbr.ts";
 * assert.strictEqual(mbrTypeName(0x82), "Linux swap");
 * assert.strictEqual(mbrTypeName(0x42), "0x42");
 * ```
 */
export function mbrTypeName(type: number): string {
  return TYPE_NAMES[type] ?? hex(type);
}

function typeKind(type: number): "swap" | "other" {
  return type === MBR_TYPE_LINUX_SWAP ? "swap" : "other";
}

function used(e: MbrEntry): boolean {
  return e.type !== 0 && e.sectors !== 0;
}

/**
 * The partitions of an MBR disk: primary entries numbered 1-4 by slot,
 * logical partitions numbered from 5 in chain order. Extended partitions
 * are containers and not listed.
 *
 * @param disk The disk.
 * @param entries The entries of sector 0 ({@linkcode parseMbrSector}).
 * @returns The partitions in table order, and the sectors of the table
 * (sector 0 and every EBR).
 * @throws {Refusal} For an entry starting at sector 0, more than one
 * extended partition, or a broken EBR chain (no signature, a loop, a
 * logical partition outside its extended partition).
 *
 * @example A disk with one primary partition
 * ```ts
 * import assert from "node:assert";
 * import { parseMbrSector, readMbrPartitions } from "./mbr.ts";
 * const disk = new Uint8Array(1 << 20);
 * const view = new DataView(disk.buffer);
 * disk[446 + 4] = 0x83;
 * view.setUint32(446 + 8, 2048, true);
 * view.setUint32(446 + 12, 0, true); // empty: not listed
 * disk[462 + 4] = 0x82;
 * view.setUint32(462 + 8, 1024, true);
 * view.setUint32(462 + 12, 512, true);
 * disk.set([0x55, 0xaa], 510);
 * const reader = { size: disk.length, read: (o: number, n: number) => Promise.resolve(disk.subarray(o, o + n)) };
 * const { partitions } = await readMbrPartitions(reader, parseMbrSector(disk)!);
 * assert.deepStrictEqual(partitions, [{ number: 2, offset: 1024 * 512, length: 512 * 512, type: "Linux swap", typeKind: "swap" }]);
 * ```
 */
export async function readMbrPartitions(
  disk: DiskReader,
  entries: MbrEntry[],
): Promise<TableLayout> {
  const out: Partition[] = [];
  const table = [{ offset: 0, length: MBR_SECTOR_SIZE }];
  const extended = entries.filter((e) =>
    used(e) && MBR_EXTENDED_TYPES.includes(e.type)
  );
  if (extended.length > 1) {
    throw new Refusal(
      `MBR has ${extended.length} extended partitions (at most one is allowed)`,
    );
  }
  for (const e of entries) {
    if (!used(e) || MBR_EXTENDED_TYPES.includes(e.type)) continue;
    if (e.firstLba === 0) {
      throw new Refusal(
        `MBR entry ${e.slot + 1} (type ${
          hex(e.type)
        }) starts at sector 0, over the table itself`,
      );
    }
    out.push({
      number: e.slot + 1,
      offset: e.firstLba * MBR_SECTOR_SIZE,
      length: e.sectors * MBR_SECTOR_SIZE,
      type: mbrTypeName(e.type),
      typeKind: typeKind(e.type),
    });
  }
  if (extended.length === 1) {
    const logical = await readLogical(disk, extended[0], table);
    out.push(...logical.partitions);
    if (logical.incomplete) {
      return { partitions: out, table, incomplete: logical.incomplete };
    }
  }
  return { partitions: out, table };
}

/**
 * Reads the EBR at sector `ebr`: its two entries, or why the chain cannot
 * be followed further yet (a stream that cannot reach it: the partitions
 * found so far are used, the rest of the chain is copied as it is).
 */
async function readEbr(
  disk: DiskReader,
  ebr: number,
): Promise<MbrEntry[] | string> {
  let sector: Uint8Array;
  try {
    sector = await disk.read(ebr * MBR_SECTOR_SIZE, MBR_SECTOR_SIZE);
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    return `logical partitions from the EBR at sector ${ebr} on were not read: ${err.message}`;
  }
  if (sector.length < MBR_SECTOR_SIZE) {
    throw new Refusal(
      `MBR EBR at sector ${ebr} lies past the end of the disk: truncated`,
    );
  }
  const entries = parseMbrSector(sector);
  if (!entries) {
    throw new Refusal(
      `MBR EBR at sector ${ebr} has no boot signature or a bad status byte`,
    );
  }
  return entries;
}

/** A logical partition, which must lie inside its extended partition. */
function logicalPartition(
  logical: MbrEntry,
  ebr: number,
  number: number,
  extStart: number,
  extEnd: number,
): Partition {
  const first = ebr + logical.firstLba;
  const end = first + logical.sectors;
  if (logical.firstLba === 0 || end > extEnd) {
    throw new Refusal(
      `MBR logical partition ${number} (sectors ${first}-${
        end - 1
      }) is not inside its extended partition (sectors ${extStart}-${
        extEnd - 1
      })`,
    );
  }
  return {
    number,
    offset: first * MBR_SECTOR_SIZE,
    length: logical.sectors * MBR_SECTOR_SIZE,
    type: mbrTypeName(logical.type),
    typeKind: typeKind(logical.type),
  };
}

/** Follows the EBR chain of an extended partition. */
async function readLogical(
  disk: DiskReader,
  ext: MbrEntry,
  table: TableLayout["table"],
): Promise<{ partitions: Partition[]; incomplete?: string }> {
  if (ext.firstLba === 0) {
    throw new Refusal("MBR extended partition starts at sector 0");
  }
  const extStart = ext.firstLba;
  const extEnd = ext.firstLba + ext.sectors;
  const out: Partition[] = [];
  const seen = new Set<number>();
  let ebr = extStart;
  for (let number = 5;; number++) {
    if (seen.has(ebr)) {
      throw new Refusal(`MBR EBR chain loops back to sector ${ebr}`);
    }
    if (seen.size >= MBR_MAX_LOGICAL) {
      throw new Refusal(
        `MBR EBR chain is longer than ${MBR_MAX_LOGICAL} logical partitions`,
      );
    }
    seen.add(ebr);
    table.push({ offset: ebr * MBR_SECTOR_SIZE, length: MBR_SECTOR_SIZE });
    const entries = await readEbr(disk, ebr);
    if (typeof entries === "string") {
      return { partitions: out, incomplete: entries };
    }
    const [logical, link] = entries;
    if (used(logical)) {
      out.push(logicalPartition(logical, ebr, number, extStart, extEnd));
    } else {
      number--; // an EBR without a partition takes no number
    }
    if (!used(link)) return { partitions: out };
    const next = extStart + link.firstLba;
    if (link.firstLba === 0 || next >= extEnd) {
      throw new Refusal(
        `MBR EBR at sector ${ebr} links to sector ${next}, outside its extended partition (sectors ${extStart}-${
          extEnd - 1
        })`,
      );
    }
    ebr = next;
  }
}
