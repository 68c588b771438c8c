/**
 * What a filesystem module provides, and the modules there are. A module
 * recognizes its filesystem from the first bytes of a partition, reads the
 * metadata it needs through a {@linkcode RegionReader}, checks it, and
 * lists the free ranges; anything it does not trust ends in a `Refusal`
 * and the partition is copied as it is. Adding a filesystem means adding
 * a module here.
 *
 * @module
 */

import { IoError } from "../format/errors.ts";
import { type Partition, Refusal, type RegionReader } from "./_region.ts";
import type { ContentsReport, FreeRange, VolumeReport } from "./report.ts";
import { ext4Module } from "./ext4/ext4.ts";
import { swapModule } from "./swap.ts";
import { ntfsModule } from "./ntfs/ntfs.ts";
import { fatModule } from "./fat/fat.ts";
import { btrfsModule } from "./btrfs/btrfs.ts";
import { xfsModule } from "./xfs/xfs.ts";
import { createLvmModule } from "./lvm/lvm.ts";

/** The result of a module's analysis of one partition. */
export interface FilesystemAnalysis {
  /** What was found: `ext4`, `swap`, `fat32`. */
  found: string;
  /** Details for the report (block size, groups, features). */
  detail: string;
  /** Bytes that {@linkcode FilesystemAnalysis.ranges} will list. */
  freeBytes: number;
  /**
   * The free ranges, relative to the partition, in order and not
   * overlapping. Metadata is read again through `region` (the same reads
   * as the analysis made) and checked again.
   *
   * @throws {IoError} `CHANGED` when the metadata changed since the
   * analysis (a module may also end in a `Refusal` then:
   * {@linkcode rangesOf} turns it into that IoError).
   */
  ranges(region: RegionReader): AsyncGenerator<FreeRange>;
  /** The volumes of a container (an LVM2 PV's LVs), each with its own report. */
  volumes?: VolumeReport[];
}

/** A filesystem kind that can be mapped. */
export interface FilesystemModule {
  /** Name in reports. */
  readonly name: string;
  /** Bytes from the start of a partition that `detect` looks at. */
  readonly headBytes: number;
  /** Whether a partition starting with `head` holds this filesystem. */
  detect(head: Uint8Array): boolean;
  /**
   * The partition type a table must give for the signature to be trusted
   * (a bare disk has no type and needs none). A signature of a few bytes,
   * such as swap's, could be written into any partition; its type is an
   * independent word.
   */
  readonly partitionType?: "swap";
  /**
   * Reads and checks the metadata.
   *
   * @throws {Refusal} To leave the partition as it is, saying why.
   */
  analyze(region: RegionReader): Promise<FilesystemAnalysis>;
}

/** The filesystems that are mapped, tried in this order. */
export const FILESYSTEMS: readonly FilesystemModule[] = [
  ext4Module,
  btrfsModule,
  swapModule,
  ntfsModule,
  fatModule,
  xfsModule,
  createLvmModule(analyzeContents),
];

/**
 * Signatures of filesystems and containers that are recognized but not
 * mapped, so that the report can name them: `[name, offset, bytes]`.
 */
export const KNOWN_SIGNATURES: ReadonlyArray<[string, number, string]> = [
  ["exfat", 3, "EXFAT   "],
  ["LUKS", 0, "LUKS\xba\xbe"],
  ["iso9660", 0x8001, "CD001"],
];

/** Bytes of a partition's start needed to recognize anything listed here. */
export const HEAD_BYTES: number = Math.max(
  ...FILESYSTEMS.map((m) => m.headBytes),
  ...KNOWN_SIGNATURES.map(([, at, sig]) => at + sig.length),
);

/**
 * Names what a partition holds when no module maps it.
 *
 * @param head The partition's first bytes.
 * @returns The name of a recognized signature, or `unknown`.
 */
export function recognize(head: Uint8Array): string {
  for (const [name, at, sig] of KNOWN_SIGNATURES) {
    if (hasSignature(head, at, sig)) return name;
  }
  return "unknown";
}

/**
 * Whether `head` holds the signature `sig` (one byte per character) at
 * offset `at`.
 *
 * @param head A partition's first bytes.
 * @param at Where the signature is.
 * @param sig The signature.
 * @returns Whether it is there.
 */
export function hasSignature(
  head: Uint8Array,
  at: number,
  sig: string,
): boolean {
  if (head.length < at + sig.length) return false;
  for (let i = 0; i < sig.length; i++) {
    if (head[at + i] !== sig.charCodeAt(i)) return false;
  }
  return true;
}

/** What {@linkcode analyzeContents} found: the report, and the analysis when mapped. */
export interface ContentsResult {
  /** What was found and what became of it. */
  report: ContentsReport;
  /** The analysis of a mapped region. */
  analysis?: FilesystemAnalysis;
}

/**
 * Recognizes and analyzes what a region holds with the first module that
 * detects it. Refusals become an `untouched` report saying why, and so
 * does a region that more than one module detects (a filesystem's
 * signature left beside another's): which one the guest reads is not
 * known. Other errors (I/O) are thrown.
 *
 * @param region The region (a partition, a bare disk, a logical volume).
 * @param table The partition's type as its table gives it, when the region
 * is a partition: a signature its type does not confirm is not trusted.
 * @returns The report and, when mapped, the analysis.
 * @throws {IoError} When the region cannot be read.
 *
 * @example A region with no filesystem is left as it is
 * ```ts
 * import assert from "node:assert";
 * import { RegionReader } from "./_region.ts";
 * import { analyzeContents } from "./filesystem.ts";
 * const bytes = new Uint8Array(1 << 16);
 * const disk = { size: bytes.length, read: (o: number, n: number) => Promise.resolve(bytes.subarray(o, o + n)) };
 * const { report } = await analyzeContents(new RegionReader(disk, 0, bytes.length));
 * assert.deepStrictEqual(report, {
 *   found: "unknown", status: "untouched", freeBytes: 0,
 *   reason: "no filesystem that --sparsify handles was found",
 * });
 * ```
 */
export async function analyzeContents(
  region: RegionReader,
  table?: Pick<Partition, "type" | "typeKind">,
): Promise<ContentsResult> {
  const untouched = (found: string, reason: string): ContentsResult => ({
    report: { found, status: "untouched", reason, freeBytes: 0 },
  });
  let head: Uint8Array;
  try {
    head = await region.head(HEAD_BYTES);
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    return untouched("unknown", err.message);
  }
  // Two signatures at once (a filesystem made over another without
  // wiping it, or bytes crafted to look like both) leave the region as it
  // is, as blkid calls such a result ambivalent: the free space of one
  // may be the other's live data.
  const modules = FILESYSTEMS.filter((m) => m.detect(head));
  const others = KNOWN_SIGNATURES.filter(([, at, sig]) =>
    hasSignature(head, at, sig)
  ).map(([name]) => name);
  const names = [...new Set([...modules.map((m) => m.name), ...others])];
  if (modules.length === 0) {
    const found = recognize(head);
    return untouched(
      found,
      found === "unknown"
        ? "no filesystem that --sparsify handles was found"
        : `${found} is not handled`,
    );
  }
  if (names.length > 1) {
    return untouched(
      names[0],
      `signatures of ${
        names.join(" and ")
      } were both found: which one the region holds is ambiguous`,
    );
  }
  const [module] = modules;
  // A signature the partition table does not confirm (swap in a partition
  // typed NTFS) is not trusted; a bare disk or a logical volume has no
  // type to disagree.
  if (
    module.partitionType && table?.typeKind !== undefined &&
    table.typeKind !== module.partitionType
  ) {
    return untouched(
      module.name,
      `a ${module.name} signature in a partition whose type (${table.type}) does not say ${module.partitionType}: not trusted`,
    );
  }
  try {
    const analysis = await module.analyze(region);
    return {
      report: {
        found: analysis.found,
        detail: analysis.detail,
        status: "mapped",
        freeBytes: analysis.freeBytes,
      },
      analysis,
    };
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    return untouched(err.found ?? module.name, err.message);
  }
}

/**
 * The free ranges of an analysis, as the public API lists them: a refusal
 * while they are listed means that the metadata read again no longer
 * passes the checks it passed in the analysis, which is an IoError
 * (`CHANGED`); a `Refusal` never leaves this folder.
 */
export async function* rangesOf(
  analysis: FilesystemAnalysis,
  region: RegionReader,
): AsyncGenerator<FreeRange> {
  try {
    yield* analysis.ranges(region);
  } catch (err) {
    if (!(err instanceof Refusal)) throw err;
    throw new IoError(
      "CHANGED",
      `Cannot sparsify: the ${analysis.found} metadata changed since it was checked (${err.message})`,
    );
  }
}
